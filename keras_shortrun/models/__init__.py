from keras_shortrun.models.ebm import ShortRunEBM
from keras_shortrun.models.ebm import paper_chain
from keras_shortrun.models.energy import EnergyConvNet
from keras_shortrun.models.energy import EnergyMLP

__all__ = ["EnergyConvNet", "EnergyMLP", "ShortRunEBM", "paper_chain"]
