"""The VAE's amortised encoder."""

import math

import keras
from keras import layers
from keras import ops

from keras_shortrun.models.building import build_in_order


@keras.saving.register_keras_serializable(package="keras_shortrun")
class ConvEncoder(layers.Layer):
    """``q(eps | x)``: stride-2 GELU convolutions and a dense head; ``(B, H, W, C)`` -> mean and log-variance,
    each ``(B, sum(latent_dims))``, over the whitened latents of every layer jointly."""

    def __init__(self, latent_dims, image_shape, width=32, **kwargs):
        super().__init__(**kwargs)
        self.latent_dims = [int(d) for d in latent_dims]
        self.image_shape = tuple(int(d) for d in image_shape)
        self.width = int(width)
        self.convs = [
            layers.Conv2D(self.width * 2**i, 4, strides=2, padding="same", name=f"conv_{i}") for i in range(3)
        ]
        self.head = layers.Dense(2 * sum(self.latent_dims), name="head")
        shape = build_in_order(self.convs, (None,) + self.image_shape)
        self.head.build((None, math.prod(shape[1:])))
        self.built = True

    def call(self, x):
        h = x
        for conv in self.convs:
            h = ops.gelu(conv(h))
        stats = self.head(ops.reshape(h, (ops.shape(x)[0], -1)))
        mean, logvar = ops.split(stats, 2, axis=-1)
        return mean, ops.clip(logvar, -10.0, 4.0)

    def get_config(self):
        return dict(
            super().get_config(), latent_dims=self.latent_dims, image_shape=list(self.image_shape), width=self.width
        )
