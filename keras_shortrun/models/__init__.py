from keras_shortrun.layers import paper_chain  # the chain presets live beside LangevinChain
from keras_shortrun.layers import posterior_chain
from keras_shortrun.layers import thesis_chain
from keras_shortrun.models.classifier import ConvTransposeGenerator
from keras_shortrun.models.classifier import GenerativeClassifier
from keras_shortrun.models.classifier import conv_net_baseline
from keras_shortrun.models.classifier import mlp_head
from keras_shortrun.models.ebm import ShortRunEBM
from keras_shortrun.models.energy import EnergyConvNet
from keras_shortrun.models.energy import EnergyMLP
from keras_shortrun.models.energy import MultiscaleEnergy
from keras_shortrun.models.generator import TopDownGenerator
from keras_shortrun.models.lvm import MultiLayerLVM
from keras_shortrun.models.vae import VAE
from keras_shortrun.models.vae import ConvEncoder

FAMILY_CLASSES = (ShortRunEBM, MultiLayerLVM, VAE, GenerativeClassifier)  # the model families (ShortRunFamily)

__all__ = [
    "FAMILY_CLASSES",
    "ConvTransposeGenerator",
    "GenerativeClassifier",
    "conv_net_baseline",
    "mlp_head",
    "thesis_chain",
    "ConvEncoder",
    "EnergyConvNet",
    "EnergyMLP",
    "MultiscaleEnergy",
    "MultiLayerLVM",
    "ShortRunEBM",
    "TopDownGenerator",
    "VAE",
    "paper_chain",
    "posterior_chain",
]
