from keras_shortrun.layers.coarse_to_fine import CoarseToFineChain
from keras_shortrun.layers.langevin import LangevinChain
from keras_shortrun.layers.langevin import gaussian_posterior_potential
from keras_shortrun.layers.langevin import paper_chain
from keras_shortrun.layers.langevin import posterior_chain
from keras_shortrun.layers.langevin import thesis_chain

__all__ = ["CoarseToFineChain", "LangevinChain", "gaussian_posterior_potential", "paper_chain", "posterior_chain",
           "thesis_chain"]
