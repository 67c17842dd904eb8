"""A small MLP energy for vector data."""

import keras
from keras import layers
from keras import ops

from keras_shortrun.models.building import build_in_order
from keras_shortrun.models.energy_conv_net import torch_default_init


@keras.saving.register_keras_serializable(package="keras_shortrun")
class EnergyMLP(keras.layers.Layer):
    """A small MLP energy for vector data ``(B, D)`` -> ``(B,)`` (toy densities, tests)."""

    def __init__(self, dim=2, hidden=(128, 128), negative_slope=0.2, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.negative_slope = float(negative_slope)
        fan_ins = (self.dim,) + self.hidden
        self.dense = [
            layers.Dense(units, name=f"dense_{i}", dtype=self.dtype_policy, **torch_default_init(fan_in))
            for i, (units, fan_in) in enumerate(zip(self.hidden + (1,), fan_ins))
        ]

    def build(self, input_shape):
        if tuple(input_shape[1:]) != (self.dim,):
            raise ValueError(f"EnergyMLP expects inputs of shape (B, {self.dim}), got {tuple(input_shape)}.")
        build_in_order(self.dense, input_shape)

    def call(self, x):
        for dense in self.dense[:-1]:
            x = ops.leaky_relu(dense(x), self.negative_slope)
        return ops.squeeze(self.dense[-1](x), axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim, hidden=list(self.hidden), negative_slope=self.negative_slope)
        return config
