"""Graph rewrites that make exported chains fast in onnxruntime without changing what they compute.

tf2onnx writes the TensorFlow while loop as an ONNX ``Loop`` whose state
carries every weight of the network (TensorFlow passes captured tensors as
loop variables), and the input gradient of each convolution as a
``ConvTranspose``. Both cost onnxruntime dearly on CPU: weights in the loop
state are not constants inside the body, so none of its Conv nodes gets the
blocked ``NCHWc`` kernels; and its ``ConvTranspose`` kernel is up to twice as
slow as a ``Conv`` of the same size. ``optimize`` applies:

- ``hoist_loop_invariants``: a loop variable that the body passes through
  unchanged becomes a constant of the body (an initializer used only by the
  loop moves inside) or a reference to the outer value.
- ``conv_transpose_as_conv``: a stride-1 ``ConvTranspose`` (the input
  gradient of a stride-1 convolution) with at least 8 output channels becomes
  a ``Conv`` with the flipped kernel. Strided ones stay: measured on this
  project's CPU, the sub-pixel rewrite (a Conv over the stride^2 output
  phases and ``DepthToSpace``) was 0-40 % slower, and so is a Conv with fewer
  output channels than the NCHWc block.

Each pass is exact up to float reassociation: ``tests/test_export.py`` runs
graphs before and after in onnxruntime.
"""

import copy

import numpy as np
import onnx
from onnx import helper
from onnx import numpy_helper


def _subgraphs(node):
    return [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]


def _used_names(graph):
    """Every name read by the nodes of ``graph`` and of its nested subgraphs, and its outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for sub in _subgraphs(node):
            names |= _used_names(sub)
    return names


def _rename_inputs(graph, old, new):
    """Makes every node of ``graph`` (and of nested subgraphs that do not shadow ``old``) read ``new``."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        for sub in _subgraphs(node):
            if old not in {v.name for v in sub.input} | {i.name for i in sub.initializer}:
                _rename_inputs(sub, old, new)


def _hoist_from(graph, loop):
    """Removes the pass-through state variables of one ``Loop`` node of ``graph``; returns how many."""
    body = _subgraphs(loop)[0]
    states = len(loop.input) - 2
    invariant = [j for j in range(states) if loop.input[2 + j] and body.output[1 + j].name == body.input[2 + j].name]
    if not invariant:
        return 0
    initializers = {i.name: i for i in graph.initializer}
    elsewhere = {o.name for o in graph.output}
    for node in graph.node:
        if node is not loop:
            elsewhere.update(node.input)
            for sub in _subgraphs(node):
                elsewhere |= _used_names(sub)
    for j in invariant:
        inner, outer = body.input[2 + j].name, loop.input[2 + j]
        if outer in initializers and outer not in elsewhere and list(loop.input).count(outer) == 1:
            moved = copy.deepcopy(initializers[outer])
            moved.name = inner
            body.initializer.append(moved)
            graph.initializer.remove(initializers[outer])
        else:
            _rename_inputs(body, inner, outer)
        final = loop.output[j]
        if final in elsewhere:  # the loop's final value of an invariant is its initial value
            _rename_inputs(graph, final, outer)
            for output in graph.output:
                if output.name == final:
                    graph.node.append(helper.make_node("Identity", [outer], [final]))
    keep = [j for j in range(states) if j not in set(invariant)]
    body_inputs = [body.input[0], body.input[1]] + [body.input[2 + j] for j in keep]
    body_outputs = [body.output[0]] + [body.output[1 + j] for j in keep] + list(body.output[1 + states :])
    loop_outputs = [loop.output[j] for j in keep] + list(loop.output[states:])
    loop_inputs = list(loop.input[:2]) + [loop.input[2 + j] for j in keep]
    del body.input[:], body.output[:], loop.input[:], loop.output[:]
    body.input.extend(body_inputs)
    body.output.extend(body_outputs)
    loop.input.extend(loop_inputs)
    loop.output.extend(loop_outputs)
    return len(invariant)


def hoist_loop_invariants(graph):
    """Turns every pass-through ``Loop`` state variable of ``graph`` (recursively) into a body constant or an
    outer-scope reference, in place; returns how many were removed."""
    count = 0
    for node in list(graph.node):
        for sub in _subgraphs(node):
            count += hoist_loop_invariants(sub)
        if node.op_type == "Loop":
            count += _hoist_from(graph, node)
    return count


def _attributes(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


MIN_OUTPUT_CHANNELS = 8  # below this a Conv (NCHWc blocks of 8 or 16 channels) is slower than ConvTranspose


def _convertible(node, shapes):
    """The ``(kernel, pads)`` of a ``ConvTranspose`` that ``conv_transpose_as_conv`` rewrites, else ``None``:
    2-D, stride and dilation 1, one group, explicit pads below the kernel, and weights of a static shape
    ``(C_in, C_out, k, k)`` with ``C_out >= MIN_OUTPUT_CHANNELS``."""
    attrs = _attributes(node)
    kernel, weight = attrs.get("kernel_shape"), shapes.get(node.input[1])
    if kernel is None or len(kernel) != 2 or weight is None or len(weight) != 4:
        return None
    if any(v != 1 for key in ("strides", "dilations") for v in attrs.get(key, [1, 1])) or attrs.get("group", 1) != 1:
        return None
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or "output_shape" in attrs:
        return None
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if any(attrs.get("output_padding", [0, 0])) or any(p > k - 1 for p, k in zip(pads, kernel * 2)):
        return None
    if not isinstance(weight[1], int) or weight[1] < MIN_OUTPUT_CHANNELS:
        return None
    return kernel, pads


def _as_conv(node, kernel, pads):
    """A stride-1 ConvTranspose as a Conv: the kernel flipped in both spatial axes with its channel axes
    swapped (computed in the graph, so onnxruntime folds it), padded by ``k - 1 - pad``."""
    prefix = f"{node.name or node.output[0]}/as_conv"
    consts = {
        "starts": [-1, -1], "ends": [np.iinfo(np.int64).min] * 2, "axes": [2, 3], "steps": [-1, -1],
    }
    nodes = [helper.make_node("Constant", [], [f"{prefix}/{key}"], value=numpy_helper.from_array(
        np.asarray(value, np.int64), f"{prefix}/{key}")) for key, value in consts.items()]
    flipped, weight = f"{prefix}/flipped", f"{prefix}/weight"
    nodes.append(helper.make_node("Slice", [node.input[1], *(f"{prefix}/{key}" for key in consts)], [flipped],
                                  name=flipped))
    nodes.append(helper.make_node("Transpose", [flipped], [weight], name=weight, perm=[1, 0, 2, 3]))
    padding = [k - 1 - p for p, k in zip(pads, kernel * 2)]
    nodes.append(helper.make_node("Conv", [node.input[0], weight, *node.input[2:3]], list(node.output),
                                  name=f"{prefix}/conv", kernel_shape=list(kernel), pads=padding))
    return nodes


def _static_shapes(model):
    """Every tensor's static shape (dims as ints, or strings where symbolic) after ONNX shape inference,
    over the main graph and its subgraphs."""
    shapes = {}

    def collect(graph):
        for init in graph.initializer:
            shapes[init.name] = list(init.dims)
        for value in list(graph.value_info) + list(graph.input) + list(graph.output):
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
        for node in graph.node:
            for sub in _subgraphs(node):
                collect(sub)

    collect(onnx.shape_inference.infer_shapes(model).graph)
    return shapes


def conv_transpose_as_conv(model):
    """Rewrites, in place and in every subgraph, each ``ConvTranspose`` that ``_convertible`` accepts as a
    ``Conv`` (onnxruntime's Conv kernels, NCHWc among them, are up to twice as fast); returns how many."""
    shapes = _static_shapes(model)

    def rewrite(graph):
        count, nodes = 0, []
        for node in graph.node:
            for sub in _subgraphs(node):
                count += rewrite(sub)
            spec = _convertible(node, shapes) if node.op_type == "ConvTranspose" else None
            nodes.extend([node] if spec is None else _as_conv(node, *spec))
            count += spec is not None
        del graph.node[:]
        graph.node.extend(nodes)
        return count

    return rewrite(model.graph)


def optimize(model):
    """Applies every pass to ``model`` (an ONNX ``ModelProto``) in place; returns ``{pass: count}``."""
    return {
        "hoist_loop_invariants": hoist_loop_invariants(model.graph),
        "conv_transpose_as_conv": conv_transpose_as_conv(model),
    }
