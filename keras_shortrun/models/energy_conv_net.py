"""The paper-1 energy ConvNet, and PyTorch's default initialisation that it (and ``EnergyMLP``) start from."""

import math

import keras
import numpy as np
from keras import layers
from keras import ops

from keras_shortrun.models.building import build_in_order

ACTIVATIONS = ("leaky_relu", "silu")


def torch_default_init(fan_in):
    """PyTorch's default Conv/Linear init, ``U(+-1/sqrt(fan_in))`` for kernel and bias.

    The paper-1 chain takes gradient steps of coefficient 1 on the raw network
    output, so the energy's initial scale matters: this matches the paper's code.
    """
    bound = 1.0 / math.sqrt(fan_in)
    return {
        "kernel_initializer": keras.initializers.RandomUniform(-bound, bound),
        "bias_initializer": keras.initializers.RandomUniform(-bound, bound),
    }


@keras.saving.register_keras_serializable(package="keras_shortrun")
class EnergyConvNet(keras.layers.Layer):
    """The paper-1 energy ConvNet: image ``(B, H, W, C)`` -> energy ``(B,)``.

    Conv3x3 s1 (filters) then Conv4x4 s2 layers doubling the width (capped at
    8x filters) until the map is at most 4x4, then one valid convolution over
    the whole remaining map to a scalar; LeakyReLU between layers, no
    normalisation. At 32x32 this is exactly the official
    ``train_cifar10_minimal.py`` network (nf, 2nf, 4nf, 8nf, 4x4 valid); at
    28x28 the maps are 28-14-7-4; at 64x64 one more 8nf stage is added.
    The output is the energy ``E = -f`` of the paper's ``f``.

    Args:
        image_size: height = width of the input.
        channels: input channels.
        filters: ``nf``, width of the first layer.
        negative_slope: LeakyReLU slope (paper: 0.2).
        activation: ``"leaky_relu"`` (paper 1) or ``"silu"`` (smooth: the chain follows ``dE/dx``,
            whose LeakyReLU version is piecewise constant in each unit's input).
    """

    def __init__(self, image_size=32, channels=3, filters=64, negative_slope=0.2, activation="leaky_relu", **kwargs):
        super().__init__(**kwargs)
        if image_size < 4:
            raise ValueError(f"image_size must be >= 4, got {image_size}.")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}.")
        self.activation = activation
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.filters = int(filters)
        self.negative_slope = float(negative_slope)
        self.convs = [
            layers.Conv2D(
                self.filters, 3, padding="same", name="conv_0", dtype=self.dtype_policy,
                **torch_default_init(9 * self.channels),
            )
        ]
        size, width = self.image_size, self.filters
        while size > 4:
            size = math.ceil(size / 2)
            new_width = min(2 * width, 8 * self.filters)
            self.convs.append(
                layers.Conv2D(
                    new_width, 4, strides=2, padding="same", name=f"conv_{len(self.convs)}",
                    dtype=self.dtype_policy, **torch_default_init(16 * width),
                )
            )
            width = new_width
        self.convs.append(
            layers.Conv2D(
                1, size, padding="valid", name="energy_head", dtype=self.dtype_policy,
                **torch_default_init(size * size * width),
            )
        )

    def build(self, input_shape):
        expected = (self.image_size, self.image_size, self.channels)
        if tuple(input_shape[1:]) != expected:
            raise ValueError(f"EnergyConvNet expects images of shape (B, *{expected}), got {tuple(input_shape)}.")
        build_in_order(self.convs, input_shape)

    def call(self, x):
        for conv in self.convs[:-1]:
            x = conv(x)
            x = ops.silu(x) if self.activation == "silu" else ops.leaky_relu(x, self.negative_slope)
        return ops.squeeze(self.convs[-1](x), axis=(1, 2, 3))

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def widen_from(self, source, seed=None, symmetry_noise=0.01):
        """Loads a narrower ``EnergyConvNet`` ``source`` into this one so that both compute the same energy
        (Net2WiderNet, Chen, Goodfellow & Shlens, ICLR 2016): ``filters`` must be a multiple ``m`` of the
        source's. Every unit is copied ``m`` times; the next layer reads each copy with ``1/m`` of the
        source's weight plus a perturbation that sums to zero over the copies (``symmetry_noise`` times the
        layer's weight std), so the energy is unchanged and the copies' gradients differ. Both built."""
        same = ("image_size", "channels", "negative_slope", "activation")
        mismatched = not isinstance(source, EnergyConvNet) or any(getattr(source, k) != getattr(self, k) for k in same)
        if mismatched or self.filters % source.filters:
            raise ValueError(f"Cannot widen {source.name} into {self.name} (an EnergyConvNet of filters="
                             f"{self.filters}): {same} must match and filters must be a multiple.")
        copies = self.filters // source.filters
        rng = np.random.default_rng(seed)
        for index, (wide, narrow) in enumerate(zip(self.convs, source.convs)):
            kernel, bias = (np.asarray(w, "float64") for w in narrow.get_weights())
            if index > 0:  # the inputs are the previous layer's copies, tiled along the channel axis
                perturbation = rng.normal(size=(copies,) + kernel.shape) * symmetry_noise * kernel.std()
                perturbation -= perturbation.mean(axis=0)
                kernel = np.concatenate(list(kernel / copies + perturbation), axis=2)
            if index < len(self.convs) - 1:
                kernel, bias = np.tile(kernel, (1, 1, 1, copies)), np.tile(bias, copies)
            wide.set_weights([kernel.astype("float32"), bias.astype("float32")])

    def get_config(self):
        config = super().get_config()
        config.update(
            image_size=self.image_size,
            channels=self.channels,
            filters=self.filters,
            negative_slope=self.negative_slope,
            activation=self.activation,
        )
        return config
