import keras

from keras_shortrun.layers import paper_chain  # the chain presets live beside LangevinChain
from keras_shortrun.layers import posterior_chain
from keras_shortrun.layers import thesis_chain
from keras_shortrun.models.classifier import GenerativeClassifier
from keras_shortrun.models.classifier import conv_net_baseline
from keras_shortrun.models.classifier import mlp_head
from keras_shortrun.models.classifier_presets import CONVNET_PRESETS
from keras_shortrun.models.classifier_presets import GENERATIVE_CLASSIFIER_PRESETS
from keras_shortrun.models.conv_encoder import ConvEncoder
from keras_shortrun.models.conv_transpose_generator import ConvTransposeGenerator
from keras_shortrun.models.ebm import ShortRunEBM
from keras_shortrun.models.ebm_presets import SHORT_RUN_EBM_PRESETS
from keras_shortrun.models.energy_conv_net import EnergyConvNet
from keras_shortrun.models.energy_mlp import EnergyMLP
from keras_shortrun.models.feature_presets import FEATURE_NET_PRESETS
from keras_shortrun.models.generator import TopDownGenerator
from keras_shortrun.models.lvm import MultiLayerLVM
from keras_shortrun.models.lvm_presets import MULTI_LAYER_LVM_PRESETS
from keras_shortrun.models.lvm_presets import VAE_PRESETS
from keras_shortrun.models.multiscale_energy import MultiscaleEnergy
from keras_shortrun.models.vae import VAE
from keras_shortrun.zoo.registry import register_presets

FAMILY_CLASSES = (ShortRunEBM, MultiLayerLVM, VAE, GenerativeClassifier)  # the model families (ShortRunFamily)

# The zoo's presets, each family's beside it (``*_presets.py``), registered with the class its entries build
# (keras-hub style). Their ``sha256`` pins the digests of each entry's files in code: ``zoo.load`` refuses an
# entry whose files differ, even if its ``metadata.json`` was edited to match; ``python tools/pin_zoo_hashes.py
# <entry>`` writes them after an export.
register_presets("ShortRunEBM", SHORT_RUN_EBM_PRESETS, ShortRunEBM)
register_presets("MultiLayerLVM", MULTI_LAYER_LVM_PRESETS, MultiLayerLVM)
register_presets("VAE", VAE_PRESETS, VAE)
register_presets("GenerativeClassifier", GENERATIVE_CLASSIFIER_PRESETS, GenerativeClassifier)
register_presets("ConvNet", CONVNET_PRESETS, keras.Model)
register_presets("FeatureNet", FEATURE_NET_PRESETS, keras.Model)

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
