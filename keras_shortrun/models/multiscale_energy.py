"""The energy of a coarse-to-fine chain: one energy per resolution."""

import keras

from keras_shortrun import seeds
from keras_shortrun.models.energy_conv_net import EnergyConvNet


@keras.saving.register_keras_serializable(package="keras_shortrun")
class MultiscaleEnergy(keras.layers.Layer):
    """One energy per resolution, chosen by the input's size: images ``(B, r, r, C)`` -> ``(B,)``.

    The potential of a ``CoarseToFineChain``: each stage's state goes to the energy of its own
    resolution. ``energies`` are layers with an ``image_size`` (e.g. ``EnergyConvNet``), one per size.
    """

    def __init__(self, energies, **kwargs):
        super().__init__(**kwargs)
        self.energies = [
            keras.saving.deserialize_keras_object(e) if isinstance(e, dict) else e for e in energies
        ]
        sizes = [e.image_size for e in self.energies]
        if not sizes or len(set(sizes)) != len(sizes):
            raise ValueError(f"MultiscaleEnergy needs one energy per distinct image size, got sizes {sizes}.")
        self.by_size = dict(zip(sizes, self.energies))

    @classmethod
    def with_convnets(cls, resolutions, channels=3, filters=16, activation="leaky_relu", **kwargs):
        """One ``EnergyConvNet`` per resolution, of width ``filters``: one int, or one per resolution."""
        widths = [filters] * len(resolutions) if isinstance(filters, int) else list(filters)
        if len(widths) != len(resolutions):
            raise ValueError(f"filters must be one int or one per resolution {tuple(resolutions)}, got {filters}.")
        return cls(
            [
                EnergyConvNet(image_size=r, channels=channels, filters=w, activation=activation, name=f"energy_{r}")
                for r, w in zip(resolutions, widths)
            ],
            **kwargs,
        )

    def widen_from(self, source, seed=None):
        """Loads a narrower (or equal) ``MultiscaleEnergy`` ``source`` of the same sizes into this one, each
        resolution's energy by ``EnergyConvNet.widen_from``: the same energy function, more capacity."""
        if not isinstance(source, MultiscaleEnergy) or sorted(source.by_size) != sorted(self.by_size):
            raise ValueError(f"Cannot widen {source.name} into a MultiscaleEnergy of sizes {sorted(self.by_size)}.")
        for size, energy in self.by_size.items():
            energy.widen_from(source.by_size[size], seed=seeds.stream(seed, f"widen_{size}"))

    @property
    def image_size(self):
        """The largest resolution (the data's)."""
        return max(self.by_size)

    def build(self, input_shape):
        for size, energy in self.by_size.items():
            if not energy.built:
                energy.build((input_shape[0], size, size) + tuple(input_shape[3:]))

    def call(self, x):
        size = x.shape[1]
        if size not in self.by_size:
            raise ValueError(f"No energy for images of size {size}; this one has sizes {sorted(self.by_size)}.")
        return self.by_size[size](x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self):
        config = super().get_config()
        config.update(energies=[keras.saving.serialize_keras_object(e) for e in self.energies])
        return config
