"""Building a stack of layers ahead of the first call, so that their weights exist (to load or count)."""


def build_in_order(layers, input_shape):
    """Builds ``layers`` one after another from ``input_shape`` (each on the previous one's output shape);
    returns the last output shape."""
    shape = tuple(input_shape)
    for layer in layers:
        layer.build(shape)
        shape = layer.compute_output_shape(shape)
    return shape
