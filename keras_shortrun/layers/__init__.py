from keras_shortrun.layers.coarse_to_fine import CoarseToFineChain
from keras_shortrun.layers.langevin import LangevinChain
from keras_shortrun.layers.langevin import gaussian_posterior_potential

__all__ = ["CoarseToFineChain", "LangevinChain", "gaussian_posterior_potential"]
