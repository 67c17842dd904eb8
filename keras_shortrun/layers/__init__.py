from keras_shortrun.layers.langevin import LangevinChain
from keras_shortrun.layers.langevin import gaussian_posterior_potential

__all__ = ["LangevinChain", "gaussian_posterior_potential"]
