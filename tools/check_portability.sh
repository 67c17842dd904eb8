#!/usr/bin/env bash
# Runs the numeric tests under the three CPU kernel sets a user's x86-64 machine may use:
#   default                    oneDNN, with this CPU's widest ISA (AVX-512 where there is one)
#   ONEDNN_MAX_CPU_ISA=AVX2    oneDNN limited to AVX2 kernels (other blockings, other float32 rounding)
#   TF_ENABLE_ONEDNN_OPTS=0    no oneDNN: TensorFlow's Eigen kernels
# A tolerance that holds only for the rounding of one kernel set fails here.
# Usage: bash tools/check_portability.sh [extra pytest arguments]   (about 35 minutes on 2 cores)
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
NUMERIC_TESTS=(tests/test_chain.py tests/test_ebm.py tests/test_lvm.py tests/test_classifier.py tests/test_metrics.py
               tests/test_export.py tests/test_serving.py tests/test_zoo.py tests/test_reliability.py
               tests/test_multiprocess.py)
status=0
summary=()
for kernels in "default" "ONEDNN_MAX_CPU_ISA=AVX2" "TF_ENABLE_ONEDNN_OPTS=0"; do
    settings=()
    [ "$kernels" != default ] && settings=("$kernels")
    echo "=== $kernels"
    log=$(mktemp)
    env "${settings[@]}" "$PYTHON" -m pytest -q -p no:cacheprovider "${NUMERIC_TESTS[@]}" "$@" 2>&1 | tee "$log" \
        | grep -E "^(FAILED|ERROR)|passed|failed"
    result=${PIPESTATUS[0]}
    summary+=("$kernels: $(grep -E "passed|failed" "$log" | tail -1) (exit $result)")
    rm -f "$log"
    [ "$result" -ne 0 ] && status=1
done
echo "=== summary"
printf '%s\n' "${summary[@]}"
exit $status
