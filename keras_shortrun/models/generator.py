"""Top-down generator with several latent layers (paper 2's architecture family)."""

import math

import keras
from keras import layers
from keras import ops

LOGVAR_RANGE = (-8.0, 4.0)


def base_resolution(image_size):
    """Resolution the latent layers act at: 7 for 28 px, else 4; ``image_size`` must be that times 2**n."""
    for base in (7, 4):
        ratio = image_size / base
        if ratio >= 1 and ratio == int(ratio) and (int(ratio) & (int(ratio) - 1)) == 0:
            return base
    raise ValueError(f"image_size must be 7 * 2**n or 4 * 2**n (28, 32, 64, ...), got {image_size}.")


@keras.saving.register_keras_serializable(package="keras_shortrun")
class ResidualBlock(layers.Layer):
    """``h + conv(gelu(conv(gelu(h))))`` with ``kernel_size`` convolutions, channels preserved."""

    def __init__(self, kernel_size=3, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = kernel_size

    def build(self, input_shape):
        width = input_shape[-1]
        self.conv1 = layers.Conv2D(width, self.kernel_size, padding="same", name="conv1")
        self.conv2 = layers.Conv2D(width, self.kernel_size, padding="same", name="conv2")
        self.conv1.build(input_shape)
        self.conv2.build(input_shape)

    def call(self, h):
        return h + self.conv2(ops.gelu(self.conv1(ops.gelu(h))))

    def get_config(self):
        return dict(super().get_config(), kernel_size=self.kernel_size)


@keras.saving.register_keras_serializable(package="keras_shortrun")
class TopDownGenerator(layers.Layer):
    """``g(eps_1, ..., eps_L) -> x``: a hierarchy of latent layers, top (``l = 0``) to bottom.

    Every chain variable is whitened, ``eps_l ~ N(0, I)``. The top layer is
    ``z_0 = eps_0``; each lower layer is ``z_l = mu_l(h) + exp(logvar_l(h) / 2) * eps_l``,
    computed from the feature map ``h`` of the layers above, and is added back
    to ``h`` (a skip sum) before a residual block (GELU convolutions). All latent
    layers act at a base resolution (7x7 for 28 px, 4x4 for 32 and 64 px); a
    stack of stride-2 transposed convolutions then upsamples to the image,
    ending in ``tanh`` (images in ``[-1, 1]``).

    Args:
        latent_dims: sizes of the latent layers, top first (paper 2, CelebA:
            ``[64, 64, 64, 96, 128]``).
        image_size: 28, 32 or 64 (any ``7 * 2**n`` or ``4 * 2**n``).
        channels: image channels.
        width: feature channels at the base resolution (halved by each
            upsampling after the first, at least 16).

    Call: ``latents``, a list of ``L`` tensors ``(B, latent_dims[l])`` -> images ``(B, H, W, channels)``.
    """

    def __init__(self, latent_dims=(16, 32, 64), image_size=28, channels=1, width=64, **kwargs):
        super().__init__(**kwargs)
        self.latent_dims = [int(d) for d in latent_dims]
        if not self.latent_dims or min(self.latent_dims) < 1:
            raise ValueError(f"latent_dims must be a non-empty list of positive sizes, got {latent_dims!r}.")
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.width = int(width)
        self.base = base_resolution(self.image_size)
        base_units = self.base * self.base * self.width
        self.project = [layers.Dense(base_units, name=f"project_{layer}") for layer in range(len(self.latent_dims))]
        self.blocks = [ResidualBlock(3, name=f"block_{layer}") for layer in range(len(self.latent_dims))]
        self.prior_heads = [
            layers.Dense(2 * d, kernel_initializer="zeros", name=f"prior_head_{layer}")
            for layer, d in enumerate(self.latent_dims[1:], start=1)
        ]
        ups = int(round(math.log2(self.image_size // self.base)))
        widths = [max(16, self.width // 2**i) for i in range(ups)]
        self.upsample = [
            layers.Conv2DTranspose(w, 4, strides=2, padding="same", name=f"up_{i}") for i, w in enumerate(widths)
        ]
        self.to_image = layers.Conv2D(self.channels, 3, padding="same", name="to_image")
        self.build(None)

    @property
    def image_shape(self):
        return (self.image_size, self.image_size, self.channels)

    def build(self, input_shape=None):
        feature_shape = (None, self.base, self.base, self.width)
        for layer, dim in enumerate(self.latent_dims):
            self.project[layer].build((None, dim))
            self.blocks[layer].build(feature_shape)
        for head in self.prior_heads:
            head.build((None, self.base * self.base * self.width))
        shape, resolution = feature_shape, self.base
        for up in self.upsample:
            up.build(shape)
            resolution *= 2
            shape = (None, resolution, resolution, up.filters)
        self.to_image.build(shape)
        self.built = True

    def _check(self, latents):
        if not isinstance(latents, (list, tuple)) or len(latents) != len(self.latent_dims):
            raise ValueError(
                f"Expected a list of {len(self.latent_dims)} latent tensors, got {type(latents).__name__}."
            )
        for layer, (z, dim) in enumerate(zip(latents, self.latent_dims)):
            if len(z.shape) != 2 or z.shape[1] != dim:
                raise ValueError(f"Latent layer {layer} must have shape (batch, {dim}), got {tuple(z.shape)}.")

    def call(self, latents):
        self._check(latents)
        batch = ops.shape(latents[0])[0]
        feature_shape = (batch, self.base, self.base, self.width)
        h = self.blocks[0](ops.reshape(self.project[0](latents[0]), feature_shape))
        for layer in range(1, len(self.latent_dims)):
            stats = self.prior_heads[layer - 1](ops.reshape(h, (batch, -1)))
            mean, logvar = ops.split(stats, 2, axis=-1)
            z = mean + ops.exp(0.5 * ops.clip(logvar, *LOGVAR_RANGE)) * latents[layer]
            h = self.blocks[layer](h + ops.reshape(self.project[layer](z), feature_shape))
        for up in self.upsample:
            h = ops.gelu(up(h))
        return ops.tanh(self.to_image(h))

    def get_config(self):
        return dict(
            super().get_config(),
            latent_dims=self.latent_dims,
            image_size=self.image_size,
            channels=self.channels,
            width=self.width,
        )
