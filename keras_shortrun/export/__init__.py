"""Fixed-step samplers of keras_shortrun models as SavedModel and ONNX graphs.

    from keras_shortrun import export, zoo
    model = zoo.load("mnist_ebm")
    export.to_onnx(model, "sampler.onnx")                        # z0, noise -> x, K = the model's
    export.to_onnx(model, "fresh.onnx", noise="internal")        # z0 -> x, fresh noise each call
    export.to_saved_model(model, "sampler_savedmodel", graph="chain", steps=20)

The graphs of each family and their input and output names are listed in
``keras_shortrun.export.graphs``. Tracing needs the TensorFlow backend; ONNX
conversion uses tf2onnx with the handlers of ``tf2onnx_handlers`` for the
gradient ops of the chain. ``keras_shortrun.serving`` runs the ONNX files
without TensorFlow.
"""

from keras_shortrun.export.artifacts import MANIFEST
from keras_shortrun.export.artifacts import export_entry
from keras_shortrun.export.artifacts import verify_manifest
from keras_shortrun.export.graphs import FAMILIES
from keras_shortrun.export.graphs import NOISE_MODES
from keras_shortrun.export.graphs import ExportGraph
from keras_shortrun.export.graphs import build_graph
from keras_shortrun.export.tensorflow import DEFAULT_OPSET
from keras_shortrun.export.tensorflow import SUPPORTED_OPSETS
from keras_shortrun.export.tensorflow import TOLERANCE
from keras_shortrun.export.tensorflow import ExportError
from keras_shortrun.export.tensorflow import check_export_path
from keras_shortrun.export.tensorflow import check_inputs
from keras_shortrun.export.tensorflow import check_opset
from keras_shortrun.export.tensorflow import keras_sensitivity
from keras_shortrun.export.tensorflow import onnx_parity
from keras_shortrun.export.tensorflow import parity_report
from keras_shortrun.export.tensorflow import to_onnx
from keras_shortrun.export.tensorflow import to_saved_model
from keras_shortrun.models.family import TensorInfo

__all__ = [
    "DEFAULT_OPSET",
    "FAMILIES",
    "MANIFEST",
    "NOISE_MODES",
    "SUPPORTED_OPSETS",
    "TOLERANCE",
    "ExportError",
    "ExportGraph",
    "TensorInfo",
    "build_graph",
    "check_export_path",
    "check_inputs",
    "check_opset",
    "export_entry",
    "keras_sensitivity",
    "onnx_parity",
    "parity_report",
    "to_onnx",
    "to_saved_model",
    "verify_manifest",
]
