"""tf2onnx handlers for the TensorFlow gradient ops that the Langevin chain's input gradient emits.

``value_and_grad`` on the TensorFlow backend records the energy's (or the
posterior's) backward pass with ``tf.GradientTape``, so the traced chain holds
gradient ops that tf2onnx 1.17 has no handler for; with a dynamic batch
grappler cannot fold the shape bookkeeping away either. Importing this module
registers, through tf2onnx's ``tf_op`` decorator, one handler per op:

- ``ShapeN`` (convolution gradients): one ``Shape`` per input.
- ``LeakyReluGrad``, ``ReluGrad``: ``Where(features > 0, g, alpha * g)``.
- ``TanhGrad`` (``tanh``, tanh-approximate GELU, Mish), ``SigmoidGrad``,
  ``SoftplusGrad`` (Softplus, Mish): their closed forms.
- ``BroadcastGradientArgs`` (gradients of broadcasting arithmetic): the
  reduction axes of each operand, as TensorFlow's ``BCast`` defines them.
- ``DynamicStitch`` with a repeated or scalar index (``reduced_shape`` in the
  gradient of ``reduce_sum``): replaces the stock handler, which assumes the
  indices are a permutation (and vectors).

Every handler needs opset 13 or newer (``Unsqueeze`` with axes as an input,
``ReduceSum`` with dynamic axes), so each is registered as ``version_13``.
They rely on tf2onnx internals: keep tf2onnx pinned (setup.cfg).
"""

import numpy as np
from onnx import helper
from onnx import onnx_pb
from tf2onnx import onnx_opset  # noqa: F401  (the stock handlers register first, so DynamicStitch's is replaced)
from tf2onnx import utils
from tf2onnx.handler import tf_op


def _replace(ctx, node, op_type, inputs, attr=None):
    """Replaces ``node`` (one output) by an ONNX ``op_type`` node producing the same output name."""
    output, shape, dtype = node.output[0], ctx.get_shape(node.output[0]), ctx.get_dtype(node.output[0])
    ctx.remove_node(node.name)
    ctx.make_node(op_type, inputs, attr=attr, name=node.name, outputs=[output], shapes=[shape], dtypes=[dtype])


def _const(ctx, value, dtype=np.int64):
    """A constant tensor's output name."""
    return ctx.make_const(utils.make_name("const"), np.array(value, dtype)).output[0]


def _scalar_like(ctx, reference, value):
    """A scalar constant of ``reference``'s dtype."""
    return _const(ctx, value, helper.tensor_dtype_to_np_dtype(ctx.get_dtype(reference)))


def _unsqueeze(ctx, name, axis):
    return ctx.make_node("Unsqueeze", [name, _const(ctx, [axis])]).output[0]


def _positive(ctx, features):
    """``features > 0`` as a boolean tensor."""
    return ctx.make_node("Greater", [features, _scalar_like(ctx, features, 0)]).output[0]


@tf_op("ShapeN")
class ShapeN:
    """``ShapeN(x_1, ..., x_n) -> shape(x_1), ..., shape(x_n)`` in the op's ``out_type``."""

    @classmethod
    def version_13(cls, ctx, node, **kwargs):
        inputs, outputs = list(node.input), list(node.output)
        dtypes = [ctx.get_dtype(out) for out in outputs]
        shapes = [ctx.get_shape(out) for out in outputs]
        ctx.remove_node(node.name)
        for index, (inp, out, dtype, shape) in enumerate(zip(inputs, outputs, dtypes, shapes)):
            full = ctx.make_node("Shape", [inp]).output[0]
            ctx.make_node(
                "Cast", [full], attr={"to": dtype}, name=f"{node.name}_{index}", outputs=[out],
                shapes=[shape], dtypes=[dtype],
            )


@tf_op(["LeakyReluGrad", "ReluGrad"])
class RectifierGrad:
    """``gradients * (features > 0 ? 1 : alpha)`` (``alpha = 0`` for ``ReluGrad``)."""

    @classmethod
    def version_13(cls, ctx, node, **kwargs):
        gradients, features = node.input
        alpha = node.get_attr_value("alpha", 0.0) if node.type == "LeakyReluGrad" else 0.0
        scaled = ctx.make_node("Mul", [gradients, _scalar_like(ctx, gradients, alpha)]).output[0]
        _replace(ctx, node, "Where", [_positive(ctx, features), gradients, scaled])


@tf_op("TanhGrad")
class TanhGrad:
    """``TanhGrad(y, dy) = dy * (1 - y^2)`` with ``y = tanh(x)``."""

    @classmethod
    def version_13(cls, ctx, node, **kwargs):
        y, dy = node.input
        square = ctx.make_node("Mul", [y, y]).output[0]
        derivative = ctx.make_node("Sub", [_scalar_like(ctx, y, 1), square]).output[0]
        _replace(ctx, node, "Mul", [dy, derivative])


@tf_op("SigmoidGrad")
class SigmoidGrad:
    """``SigmoidGrad(y, dy) = dy * y * (1 - y)`` with ``y = sigmoid(x)``."""

    @classmethod
    def version_13(cls, ctx, node, **kwargs):
        y, dy = node.input
        complement = ctx.make_node("Sub", [_scalar_like(ctx, y, 1), y]).output[0]
        scaled = ctx.make_node("Mul", [dy, y]).output[0]
        _replace(ctx, node, "Mul", [scaled, complement])


@tf_op("SoftplusGrad")
class SoftplusGrad:
    """``SoftplusGrad(gradients, features) = gradients * sigmoid(features)``."""

    @classmethod
    def version_13(cls, ctx, node, **kwargs):
        gradients, features = node.input
        _replace(ctx, node, "Mul", [gradients, ctx.make_node("Sigmoid", [features]).output[0]])


@tf_op("BroadcastGradientArgs")
class BroadcastGradientArgs:
    """``BroadcastGradientArgs(s0, s1) -> (r0, r1)``: the axes each operand's gradient is summed over.

    TensorFlow's ``BCast`` left-pads both shapes with ones to the larger rank
    and reduces operand ``i`` over every axis where its padded shape is 1
    (size-1 axes that the other operand broadcasts, and those where both are 1).
    """

    @classmethod
    def version_13(cls, ctx, node, **kwargs):
        shapes = list(node.input)
        outputs = list(node.output)
        out_dtypes = [ctx.get_dtype(out) for out in outputs]
        ctx.remove_node(node.name)
        ranks = [ctx.make_node("Shape", [s]).output[0] for s in shapes]
        rank = ctx.make_node("Max", ranks).output[0]
        one = _scalar_like(ctx, shapes[0], 1)
        flat_shape = _const(ctx, [-1])
        for index, (shape, own_rank, out, dtype) in enumerate(zip(shapes, ranks, outputs, out_dtypes)):
            missing = ctx.make_node("Sub", [rank, own_rank]).output[0]
            fill = helper.make_tensor("value", ctx.get_dtype(shape), [1], [1])
            ones = ctx.make_node("ConstantOfShape", [missing], attr={"value": fill}).output[0]
            padded = ctx.make_node("Concat", [ones, shape], attr={"axis": 0}).output[0]
            axes = ctx.make_node("NonZero", [ctx.make_node("Equal", [padded, one]).output[0]]).output[0]
            flat = ctx.make_node("Reshape", [axes, flat_shape]).output[0]
            ctx.make_node("Cast", [flat], attr={"to": dtype}, name=f"{node.name}_{index}", outputs=[out],
                          shapes=[[-1]], dtypes=[dtype])


@tf_op("DynamicStitch")
class DynamicStitch:
    """``DynamicStitch(indices_1.., data_1..)``: ``out[indices_i[j]] = data_i[j]``, later entries winning.

    ``reduced_shape`` (the gradient of ``reduce_sum`` over some axes) stitches ``range(rank)`` with the
    axes, a scalar or a vector, so an index repeats; the stock handler scatters into as many rows as there
    are indices, which holds for permutations only. Here each output row ``p`` (``p <= max index``) gathers
    the last entry whose index is ``p``. Index inputs of rank 0 or 1.
    """

    @classmethod
    def version_13(cls, ctx, node, **kwargs):
        half = len(node.input) // 2
        flat_indices, rows = [], []
        for index, datum in zip(node.input[:half], node.input[half:]):
            shape = ctx.get_shape(index)
            rank = None if shape is None else len(shape)
            utils.make_sure(rank in (0, 1), "DynamicStitch: index %s must be a scalar or a vector", index)
            as_int64 = ctx.make_node("Cast", [index], attr={"to": onnx_pb.TensorProto.INT64}).output[0]
            flat_indices.append(_unsqueeze(ctx, as_int64, 0) if rank == 0 else as_int64)
            rows.append(_unsqueeze(ctx, datum, 0) if rank == 0 else datum)
        indices = ctx.make_node("Concat", flat_indices, attr={"axis": 0}).output[0]
        stacked = ctx.make_node("Concat", rows, attr={"axis": 0}).output[0]
        largest = ctx.make_node("ReduceMax", [indices], attr={"keepdims": 0}).output[0]
        count = ctx.make_node("Add", [largest, _const(ctx, 1)]).output[0]
        positions = ctx.make_node("Range", [_const(ctx, 0), count, _const(ctx, 1)]).output[0]
        matches = ctx.make_node("Equal", [_unsqueeze(ctx, positions, 1), _unsqueeze(ctx, indices, 0)]).output[0]
        as_int32 = ctx.make_node("Cast", [matches], attr={"to": onnx_pb.TensorProto.INT32}).output[0]
        last = ctx.make_node("ArgMax", [as_int32], attr={"axis": 1, "keepdims": 0, "select_last_index": 1})
        _replace(ctx, node, "Gather", [stacked, last.output[0]], attr={"axis": 0})


HANDLED_OPS = (
    "ShapeN", "LeakyReluGrad", "ReluGrad", "TanhGrad", "SigmoidGrad", "SoftplusGrad", "BroadcastGradientArgs",
    "DynamicStitch",
)
