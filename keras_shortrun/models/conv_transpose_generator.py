"""The generative classifier's generator (Fischer's thesis): transposed convolutions from a latent vector."""

import keras
from keras import layers
from keras import ops

from keras_shortrun.models.building import build_in_order
from keras_shortrun.validation import check_positive_int

THESIS_WIDTHS = (128, 128, 64)  # the thesis generator's hidden widths


@keras.saving.register_keras_serializable(package="keras_shortrun")
class ConvTransposeGenerator(layers.Layer):
    """The thesis generator: ``z (B, latent_dim)`` -> transposed convolutions ``w0@3x3``, ``w1@7x7``,
    ``w2@14x14``, ``channels@28x28`` with Mish between them and ``tanh`` at the end; images ``(B, 28, 28, C)``.

    Args:
        latent_dim: size of ``z`` (thesis: 200).
        channels: image channels.
        widths: the three hidden widths (thesis: ``THESIS_WIDTHS``).

    Call: ``z`` ``(B, latent_dim)`` or a one-element list of it (the chain's state).
    """

    def __init__(self, latent_dim=200, channels=1, widths=THESIS_WIDTHS, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.channels = check_positive_int(channels, "channels")
        self.widths = [check_positive_int(w, "widths[i]") for w in widths]
        if len(self.widths) != 3:
            raise ValueError(f"widths must have 3 entries, got {widths!r}.")
        self.deconvs = [
            layers.Conv2DTranspose(self.widths[0], 3, padding="valid", name="up_3"),
            layers.Conv2DTranspose(self.widths[1], 3, strides=2, padding="valid", name="up_7"),
            layers.Conv2DTranspose(self.widths[2], 4, strides=2, padding="same", name="up_14"),
            layers.Conv2DTranspose(self.channels, 4, strides=2, padding="same", name="up_28"),
        ]
        build_in_order(self.deconvs, (None, 1, 1, self.latent_dim))
        self.built = True

    @property
    def latent_dims(self):
        return [self.latent_dim]

    @property
    def image_shape(self):
        return (28, 28, self.channels)

    def call(self, z):
        if isinstance(z, (list, tuple)):
            if len(z) != 1:
                raise ValueError(f"Expected one latent tensor, got {len(z)}.")
            z = z[0]
        if len(z.shape) != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (batch, {self.latent_dim}), got {tuple(z.shape)}.")
        h = ops.reshape(z, (ops.shape(z)[0], 1, 1, self.latent_dim))
        for deconv in self.deconvs[:-1]:
            h = keras.activations.mish(deconv(h))
        return ops.tanh(self.deconvs[-1](h))

    def get_config(self):
        return dict(super().get_config(), latent_dim=self.latent_dim, channels=self.channels, widths=self.widths)
