"""Speed of one Langevin step: our compiled chain vs its floor vs the paper's eager PyTorch loop.

    python tools/bench_chain.py                      # 28x28x1, filters 32, batch 64, K 20, TF and JAX
    python tools/bench_chain.py --filters 8 --steps 5 --repeats 2   # smoke test
    python tools/bench_chain.py --grid --steps 5 --repeats 3        # the zoo architectures x batch 1, 64, 256
    python tools/bench_chain.py --grid --compare-loop --json runs.json   # + the other loop form; save for plots

For one energy net (``EnergyConvNet``, the same weights everywhere), batch and K:
(a) ms per step of ``ShortRunEBM.generate`` (the compiled chain), timed after a
warm-up call whose duration (trace + compile + run) is reported too; (b) ms of
one compiled forward+backward of the energy w.r.t. its input
(``backend.value_and_grad`` through ``backend.compile_method``: ``tf.function``
on TF, ``jax.jit`` on JAX), the floor of a step; (c) ms per step of the paper's
eager PyTorch loop (``enijkamp/short_run``, ``train_cifar10_minimal.py``)
on the same network. Each backend runs in its own subprocess; this one
process prints the table. Medians over ``--repeats`` (min in parentheses).
(c) needs PyTorch: ``pip install torch==2.13.0`` (the ``bench`` extra); ``--no-torch`` skips it.
``--torch-compile`` adds (d): the same update as one ``torch.compile``-d step
function. PyTorch runs on CUDA when it sees a GPU; JAX runs on its default
device, and on a GPU its row's share is of the device's own float32 matmul
rate (``jnp.dot`` of 8192 x 8192), measured in the JAX worker.
``--grid`` runs every net of ``GRID`` at every batch of ``--batches``. Every
row shows the achieved GFLOP/s of (a) (forward and input gradient, 2 x 2 x
multiply-adds of the convolutions per image) against the machine's float32
matmul rate measured in the same run (numpy, 2048 x 2048). ``--compare-loop``
also times (a') the chain in the other loop form (``LangevinChain(unroll=...)``:
unrolled where the default is a loop op, and the reverse) on the same weights.
``--json`` writes every measurement (``tools/plot_scaling.py`` draws them).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine import RESULT_PREFIX
from machine import run_worker_process

from keras_shortrun.training import cpu_model

KERAS_RUNTIMES = {  # name: (KERAS_BACKEND, extra environment)
    "tensorflow": ("tensorflow", {}),
    "tensorflow-xla": ("tensorflow", {"KERAS_SHORTRUN_TF_XLA": "1"}),  # XLA on the CPU too (opt-in)
    "jax": ("jax", {}),
}
GRID = (  # the zoo's energy architectures: (image size, channels, filters)
    (28, 1, 32),  # MNIST / Fashion-MNIST at the paper's width class
    (32, 3, 64),  # CIFAR-10, paper 1's nf=64
    (32, 3, 128),  # CIFAR-10, paper 1's nf=128
    (64, 3, 64),  # CelebA 64x64
)


def timed_ms(fn, repeats, per):
    """Milliseconds per unit of ``repeats`` calls of ``fn`` (each doing ``per`` units)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start) / per)
    return times


def same_padding(size, kernel, stride):
    """Keras ``padding="same"``: ``(before, after)`` zeros on each spatial side."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


# Keras workers ---------------------------------------------------------------
def keras_worker(args):
    """Times (a) and (b) on the configured Keras backend; the first backend's run also writes the shared net."""
    import numpy as np

    backend_name = os.environ["KERAS_BACKEND"]
    if backend_name == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    import keras

    from keras_shortrun import backend
    from keras_shortrun.layers import LangevinChain
    from keras_shortrun.models import ShortRunEBM

    keras.utils.set_random_seed(args.seed)
    model = ShortRunEBM.with_convnet(
        image_size=args.image_size, channels=args.channels, filters=args.filters, steps=args.steps, seed=args.seed
    )
    energy = model.energy
    shared = Path(args.shared)
    if args.writes_net:
        write_shared_net(model, shared)
    else:
        with np.load(shared / "net.npz") as saved:
            energy.set_weights([saved[f"w{i}"] for i in range(len(energy.weights))])

    shape = (args.batch, args.image_size, args.image_size, args.channels)
    z = np.random.default_rng(args.seed).uniform(-1, 1, shape).astype("float32")
    first = time.perf_counter()
    model.generate(z, seed=args.seed, batch_size=args.batch)
    chain_first_s = time.perf_counter() - first
    chain_ms = timed_ms(lambda: model.generate(z, seed=args.seed, batch_size=args.batch), args.repeats, args.steps)
    other_loop = {}
    if args.compare_loop:
        unrolled = not model.chain._unrolled(args.steps)
        chain = LangevinChain.from_config({**model.chain.get_config(), "unroll": unrolled})
        other = ShortRunEBM(energy, model.data_shape, chain=chain, seed=args.seed)
        first = time.perf_counter()
        other.generate(z, seed=args.seed, batch_size=args.batch)
        other_loop = {"unrolled": unrolled, "first_s": time.perf_counter() - first,
                      "ms": timed_ms(lambda: other.generate(z, seed=args.seed, batch_size=args.batch),
                                     args.repeats, args.steps)}

    gradient = backend.compile_method(model, lambda x: backend.value_and_grad(energy, x))
    x = keras.ops.convert_to_tensor(z)

    def floor_steps():
        for _ in range(args.steps):
            keras.ops.convert_to_numpy(gradient(x)[1])  # waits for the result (JAX dispatches asynchronously)

    keras.ops.convert_to_numpy(gradient(x)[1])  # trace and compile
    floor_ms = timed_ms(floor_steps, args.repeats, args.steps)

    with np.load(shared / "net.npz") as saved:
        values, grads = gradient(keras.ops.convert_to_tensor(saved["x_check"]))
        parity = {
            "energy": float(np.abs(keras.ops.convert_to_numpy(values) - saved["energy_check"]).max()),
            "grad": float(np.abs(keras.ops.convert_to_numpy(grads) - saved["grad_check"]).max()),
        }
    versions, device_peak = {"keras": keras.__version__}, None
    if backend_name == "tensorflow":
        versions["tensorflow"] = tf.__version__
        threads = f"TF intra-op {tf.config.threading.get_intra_op_parallelism_threads()}"
    else:
        import jax
        import jaxlib

        versions.update(jax=jax.__version__, jaxlib=jaxlib.__version__)
        threads = f"JAX/XLA default pool ({jax.devices()[0].device_kind}, {jax.device_count()} device)"
        if jax.devices()[0].platform == "gpu":
            device_peak = jax_matmul_gflops()
    return {
        "device_peak_gflops": device_peak,
        "chain_first_s": chain_first_s, "chain_ms": chain_ms, "floor_ms": floor_ms, "other_loop": other_loop,
        "unrolled": bool(model.chain._unrolled(args.steps)),
        "parity": parity, "versions": versions, "threads": threads,
    }


def write_shared_net(model, shared):
    """Saves the energy's weights, its layer geometry and a reference energy/gradient for the other workers."""
    import keras
    import numpy as np

    from keras_shortrun import backend

    energy = model.energy
    x_check = np.random.default_rng(1).uniform(-1, 1, (4,) + model.data_shape).astype("float32")
    values, grads = backend.value_and_grad(energy, keras.ops.convert_to_tensor(x_check))
    np.savez(
        shared / "net.npz", x_check=x_check, energy_check=keras.ops.convert_to_numpy(values),
        grad_check=keras.ops.convert_to_numpy(grads), **{f"w{i}": w for i, w in enumerate(energy.get_weights())},
    )
    layers, size = [], model.data_shape[0]
    for conv in energy.convs:
        kernel, stride = conv.kernel_size[0], conv.strides[0]
        pad = same_padding(size, kernel, stride) if conv.padding == "same" else (0, 0)
        layers.append({"kernel": kernel, "stride": stride, "pad": pad, "filters": conv.filters})
        size = (size + sum(pad) - kernel) // stride + 1
    (shared / "layers.json").write_text(json.dumps({"layers": layers, "slope": energy.negative_slope}))


# PyTorch worker --------------------------------------------------------------
def torch_worker(args):
    """Times (c): the paper's eager loop on the same net (weights from the first Keras worker)."""
    import numpy as np
    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shared = Path(args.shared)
    spec = json.loads((shared / "layers.json").read_text())
    modules, channels = [], args.channels
    for i, layer in enumerate(spec["layers"]):
        before, after = layer["pad"]
        if before == after:  # the paper's form: nn.Conv2d(..., k, s, p)
            modules.append(nn.Conv2d(channels, layer["filters"], layer["kernel"], layer["stride"], before))
        else:  # Keras "same" pads one more after than before on odd sizes: pad explicitly
            modules.append(nn.ZeroPad2d((before, after, before, after)))
            modules.append(nn.Conv2d(channels, layer["filters"], layer["kernel"], layer["stride"], 0))
        if i < len(spec["layers"]) - 1:
            modules.append(nn.LeakyReLU(spec["slope"]))
        channels = layer["filters"]
    net = nn.Sequential(*modules).to(device)
    with np.load(shared / "net.npz") as saved:
        convs = [m for m in net if isinstance(m, nn.Conv2d)]
        with torch.no_grad():
            for i, conv in enumerate(convs):
                conv.weight.copy_(torch.from_numpy(saved[f"w{2 * i}"].transpose(3, 2, 0, 1)))  # HWIO -> OIHW
                conv.bias.copy_(torch.from_numpy(saved[f"w{2 * i + 1}"]))
        x_check = torch.from_numpy(saved["x_check"].transpose(0, 3, 1, 2).copy()).to(device).requires_grad_(True)
        values = net(x_check).squeeze()
        (grads,) = torch.autograd.grad(values.sum(), [x_check])
        parity = {
            "energy": float(np.abs(values.detach().cpu().numpy() - saved["energy_check"]).max()),
            "grad": float(np.abs(grads.cpu().numpy().transpose(0, 2, 3, 1) - saved["grad_check"]).max()),
        }

    def f(x):
        return net(x).squeeze()

    shape = (args.batch, args.channels, args.image_size, args.image_size)

    def sample_q():  # as in train_cifar10_minimal.py
        x_k = torch.empty(shape, device=device).uniform_(-1, 1)
        x_k.requires_grad_(True)
        for _ in range(args.steps):
            f_prime = torch.autograd.grad(f(x_k).sum(), [x_k], retain_graph=True)[0]
            x_k.data += f_prime + 1e-2 * torch.randn_like(x_k)
        return x_k.detach()

    def step(x_k):  # one update, for torch.compile
        x_k = x_k.detach().requires_grad_(True)
        f_prime = torch.autograd.grad(f(x_k).sum(), [x_k])[0]
        return (x_k + f_prime + 1e-2 * torch.randn_like(x_k)).detach()

    compiled_step = torch.compile(step)

    def sample_compiled():
        x_k = torch.empty(shape, device=device).uniform_(-1, 1)
        for _ in range(args.steps):
            x_k = compiled_step(x_k)
        return x_k

    result = {"parity": parity, "versions": {"torch": torch.__version__}, "modules": [str(m) for m in net],
              "threads": f"torch {torch.get_num_threads()} ({device.type})"}
    for name, run in (("eager", sample_q), ("compiled", sample_compiled)):
        if name == "compiled" and not args.torch_compile:
            continue
        first = time.perf_counter()
        run()
        synchronize(torch, device)
        result[f"{name}_first_s"] = time.perf_counter() - first
        result[f"{name}_ms"] = timed_ms(lambda: (run(), synchronize(torch, device)), args.repeats, args.steps)  # noqa: B023
    return result


def synchronize(torch, device):
    """Waits for the device's queued work (CUDA runs asynchronously); nothing to do on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def chain_step_flops(layers, image_size, channels, batch):
    """FLOPs of one Langevin step: the energy's forward pass and its gradient w.r.t. the input, taken as
    2 x (2 FLOPs per multiply-add) x the convolutions' multiply-adds, times the batch."""
    macs, size, width = 0, image_size, channels
    for layer in layers:
        size = (size + sum(layer["pad"]) - layer["kernel"]) // layer["stride"] + 1
        macs += size * size * layer["kernel"] ** 2 * width * layer["filters"]
        width = layer["filters"]
    return 4 * macs * batch


def jax_matmul_gflops(size=8192, repeats=5):
    """float32 matmul rate of JAX's default device (the accelerator's reference peak), best of ``repeats``."""
    import jax
    import jax.numpy as jnp

    a, b = (jax.random.normal(jax.random.PRNGKey(i), (size, size), "float32") for i in range(2))
    matmul = jax.jit(jnp.dot)
    matmul(a, b).block_until_ready()
    best = min(timed_ms(lambda: matmul(a, b).block_until_ready(), repeats, 1))
    return 2 * size**3 / (best / 1e3) / 1e9


def matmul_peak_gflops(size=2048, repeats=5):
    """The machine's float32 matmul rate (numpy's BLAS, all cores), best of ``repeats``: the reference that
    the chain's achieved GFLOP/s is compared with."""
    import numpy as np

    a, b = (np.random.default_rng(i).standard_normal((size, size), dtype="float32") for i in range(2))
    a @ b
    best = min(timed_ms(lambda: a @ b, repeats, 1))
    return 2 * size**3 / (best / 1e3) / 1e9


# Driver ----------------------------------------------------------------------
def run_worker(kind, args, shared, writes_net=False):
    """Runs one worker in a fresh interpreter; returns its result dict, or an error string."""
    arguments = ["--worker", kind, "--shared", str(shared)] + (["--writes-net"] if writes_net else [])
    for flag in ("image_size", "channels", "filters", "batch", "steps", "repeats", "threads", "seed"):
        arguments += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    arguments += ["--compare-loop"] if args.compare_loop and kind != "torch" else []
    arguments += ["--torch-compile"] if args.torch_compile and kind == "torch" else []
    if kind == "torch":
        return run_worker_process(Path(__file__).resolve(), arguments, kind)
    backend, env = KERAS_RUNTIMES[kind]
    return run_worker_process(Path(__file__).resolve(), arguments, kind, backend=backend, env=env)


def summary(values):
    return f"{statistics.median(values):.2f} ({min(values):.2f})"


def config_rows(args, results, layers, peak):
    """Table rows of one net and batch: one per Keras backend, with (a), (b), (c), their ratios and (a)'s
    achieved GFLOP/s (and share of ``peak``)."""
    eager = results.get("torch") if isinstance(results.get("torch"), dict) else None
    eager_median = statistics.median(eager["eager_ms"]) if eager else None
    widths = "-".join(str(layer["filters"]) for layer in layers[:-1])
    flops = chain_step_flops(layers, args.image_size, args.channels, args.batch) if layers else None
    rows = []
    for kind in [k for k in args.backends if isinstance(results.get(k), dict)]:
        r = results[kind]
        a, b = statistics.median(r["chain_ms"]), statistics.median(r["floor_ms"])
        gflops = flops / (a / 1e3) / 1e9 if flops else None
        row_peak = r.get("device_peak_gflops") or peak
        loop = "unrolled" if r["unrolled"] else "loop op"
        row = [
            f"{args.image_size}x{args.image_size}x{args.channels} ({widths})", args.batch, f"{kind} ({loop})",
            summary(r["chain_ms"]), f"{r['chain_first_s']:.2f}", f"{r['chain_first_s'] - args.steps * a / 1e3:.2f}",
            summary(r["floor_ms"]), f"{a / b:.2f}", summary(eager["eager_ms"]) if eager else "n/a",
            f"{eager_median / a:.2f}" if eager else "n/a",
            f"{gflops:.3g} ({gflops / row_peak:.0%})" if gflops and row_peak else "n/a",
        ]
        if args.torch_compile:
            compiled = eager and eager.get("compiled_ms")
            row += [summary(compiled) if compiled else "n/a",
                    f"{statistics.median(compiled) / a:.2f}" if compiled else "n/a"]
        if args.compare_loop:
            other = r["other_loop"]
            row += [f"{summary(other['ms'])} {'unrolled' if other['unrolled'] else 'loop op'}",
                    f"{statistics.median(other['ms']) / a:.2f}"]
        rows.append(row)
    return rows


def notes(args, results):
    """Lines on failures, the PyTorch net's padding, and the weights' parity between the runtimes."""
    lines = [result for result in results.values() if isinstance(result, str)]
    eager = results.get("torch") if isinstance(results.get("torch"), dict) else None
    if eager:
        padded = [m for m in eager["modules"] if m.startswith("ZeroPad2d")]
        if padded:
            lines.append(f"PyTorch net pads explicitly where Keras 'same' pads asymmetrically ({len(padded)} layers).")
    writer = args.backends[0]
    keras_rows = [k for k in args.backends if isinstance(results.get(k), dict)]
    parity = {k: results[k]["parity"] for k in keras_rows + (["torch"] if eager else []) if k != writer}
    if parity:
        lines.append(f"Same net everywhere (weights from the {writer} run), max |diff| vs {writer} of energy / dE/dx "
                     "on 4 images: " + "; ".join(f"{k} {p['energy']:.1e} / {p['grad']:.1e}" for k, p in parity.items()))
    return lines


def report(args, runs, peak):
    """Prints one markdown table over every (net, batch) of ``runs`` (``[(args, results, layers)]``), then
    the notes, the machine, versions and threads."""
    import numpy as np

    print(f"\n## Langevin step: EnergyConvNet, K={args.steps}, {args.repeats} repeats\n")
    print("ms: median over repeats (min). (a) ShortRunEBM.generate, per step; (b) one compiled forward+backward")
    print("of the energy w.r.t. x; (c) the paper's eager PyTorch loop, per step. First call = trace + compile +")
    print("one chain run; compile ≈ first call - K x (a). The backend column names (a)'s loop form (the")
    print("library default); (a') with --compare-loop is the other one.\n")
    header = ["net", "batch", "backend", "(a) chain ms/step", "first call s", "≈ compile s", "(b) floor ms", "a/b",
              "(c) torch ms/step", "c/a", "(a) GFLOP/s (of matmul peak)"]
    if args.torch_compile:
        header += ["(d) torch.compile ms/step", "d/a"]
    if args.compare_loop:
        header += ["(a') other loop form ms/step", "a'/a"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for config_args, results, layers in runs:
        for row in config_rows(config_args, results, layers, peak):
            print("| " + " | ".join(str(cell) for cell in row) + " |")
    print()
    for config_args, results, _ in runs:
        for line in notes(config_args, results):
            print(f"- {config_args.image_size}px nf={config_args.filters} batch {config_args.batch}: {line}")
    if peak:
        print(f"float32 matmul rate of this machine (numpy, 2048x2048, best of 5): {peak:.1f} GFLOP/s.")
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    threads = set()
    for _, results, _ in runs:
        for result in results.values():
            if isinstance(result, dict):
                versions.update(result["versions"])
                threads.add(result["threads"])
    print(
        f"Machine: {cpu_model()}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), "
        f"{platform.system()} {platform.release()}."
    )
    print("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    print("Threads: " + "; ".join(sorted(threads)) + ".")
    print(f"Load average (1 min) before the run: {args.load_before:.2f}.")
    if args.load_before > 0.5:
        print(
            "WARNING: the CPU was busy; timings are not representative, PyTorch's least of all (its OpenMP "
            "threads spin-wait when other processes compete: OMP_WAIT_POLICY=PASSIVE softens that)."
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--filters", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="K, Langevin steps per chain")
    parser.add_argument("--repeats", type=int, default=10, help="timed chains (after one warm-up)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="TF intra-op and torch")
    parser.add_argument("--backends", default="tensorflow,jax", help="Keras backends, comma-separated "
                        f"({', '.join(KERAS_RUNTIMES)}); the first one's random weights are loaded by the others")
    parser.add_argument("--no-torch", action="store_true", help="skip (c)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", action="store_true", help="every net of GRID at every batch of --batches")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256], help="batches of --grid")
    parser.add_argument("--compare-loop", action="store_true", help="also time (a') the other loop form")
    parser.add_argument("--torch-compile", action="store_true",
                        help="also time (d): the PyTorch step under torch.compile (PyTorch runs on CUDA when present)")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--worker", choices=(*KERAS_RUNTIMES, "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--shared", help=argparse.SUPPRESS)
    parser.add_argument("--writes-net", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = torch_worker(args) if args.worker == "torch" else keras_worker(args)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not args.backends or not set(args.backends) <= set(KERAS_RUNTIMES):
        parser.error(f"--backends takes some of {KERAS_RUNTIMES}, got {args.backends}")
    args.load_before = os.getloadavg()[0]
    configs = ([dict(image_size=i, channels=c, filters=f, batch=b) for i, c, f in GRID for b in args.batches]
               if args.grid else [dict(image_size=args.image_size, channels=args.channels, filters=args.filters,
                                       batch=args.batch)])
    peak = matmul_peak_gflops()
    runs = []
    for config in configs:
        config_args = argparse.Namespace(**{**vars(args), **config})
        with tempfile.TemporaryDirectory() as shared:
            config_args.shared = Path(shared)
            results = {kind: run_worker(kind, config_args, config_args.shared, i == 0)
                       for i, kind in enumerate(args.backends)}
            if not args.no_torch and isinstance(results[args.backends[0]], dict):
                results["torch"] = run_worker("torch", config_args, config_args.shared)
            spec = config_args.shared / "layers.json"
            layers = json.loads(spec.read_text())["layers"] if spec.is_file() else []
        runs.append((config_args, results, layers))
        print(f"done: {config}", file=sys.stderr, flush=True)
    report(args, runs, peak)
    if args.json:
        args.json.write_text(json.dumps({
            "peak_gflops": peak, "steps": args.steps, "machine": cpu_model(),
            "runs": [{"image_size": a.image_size, "channels": a.channels, "filters": a.filters, "batch": a.batch,
                      "results": results, "layers": layers} for a, results, layers in runs],
        }, indent=1))


if __name__ == "__main__":
    main()
