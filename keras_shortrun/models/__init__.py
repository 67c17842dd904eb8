from keras_shortrun.models.ebm import ShortRunEBM
from keras_shortrun.models.ebm import paper_chain
from keras_shortrun.models.energy import EnergyConvNet
from keras_shortrun.models.energy import EnergyMLP
from keras_shortrun.models.generator import TopDownGenerator
from keras_shortrun.models.lvm import MultiLayerLVM
from keras_shortrun.models.lvm import posterior_chain
from keras_shortrun.models.vae import VAE
from keras_shortrun.models.vae import ConvEncoder

__all__ = [
    "ConvEncoder",
    "EnergyConvNet",
    "EnergyMLP",
    "MultiLayerLVM",
    "ShortRunEBM",
    "TopDownGenerator",
    "VAE",
    "paper_chain",
    "posterior_chain",
]
