"""The toy models and images the tests share, in one place: every family at 8x8x1 (the classifier's generator
draws 28x28x1), a few filters, chains of a few steps. Tests that need other sizes pass them in."""

import numpy as np

from keras_shortrun import LangevinChain
from keras_shortrun import ShortRunEBM
from keras_shortrun.models import ConvTransposeGenerator
from keras_shortrun.models import EnergyConvNet
from keras_shortrun.models import GenerativeClassifier
from keras_shortrun.models import MultiLayerLVM
from keras_shortrun.models import TopDownGenerator
from keras_shortrun.models import mlp_head
from keras_shortrun.models import posterior_chain
from keras_shortrun.models import thesis_chain


def tiny_ebm(steps=3, filters=4, seed=0, chain=None, **options):
    """Paper 1's EBM at toy size: 8x8x1 images, nf=``filters``, K=``steps`` with the paper's chain
    (``options``: ``with_convnet``'s, e.g. ``clip``), or with a ``LangevinChain`` of the settings ``chain``."""
    if chain is None:
        return ShortRunEBM.with_convnet(image_size=8, channels=1, filters=filters, steps=steps, seed=seed, **options)
    energy = EnergyConvNet(image_size=8, channels=1, filters=filters, name="energy")
    return ShortRunEBM(energy, (8, 8, 1), chain=LangevinChain(steps=steps, seed=seed, name="chain", **chain),
                       seed=seed, **options)


def tiny_lvm(steps=3, seed=0, every=1):
    """A two-layer LVM (latents 2 and 3) on 8x8x1 images, its step size learned every ``every`` batches."""
    generator = TopDownGenerator([2, 3], image_size=8, channels=1, width=8, name="generator")
    return MultiLayerLVM(generator, chain=posterior_chain(2, steps=steps, seed=seed), step_size_every=every,
                         step_size_batch=2, seed=seed)


def tiny_classifier(stage="head", steps=2, seed=0, step_size=0.1, prediction_chains=8, generative_weight=1.0,
                    dtype=None):
    """A 3-class generative classifier: latent 6, a generator to 28x28x1, an MLP head of width 5."""
    kwargs = {} if dtype is None else {"dtype": dtype}
    generator = ConvTransposeGenerator(6, 1, (4, 4, 2), name="generator", **kwargs)
    chain = thesis_chain(steps=steps, step_size=step_size, seed=seed)
    return GenerativeClassifier(generator, mlp_head(6, 3, (5,)), 3, sigma=0.5, chain=chain, stage=stage,
                                prediction_chains=prediction_chains, generative_weight=generative_weight, seed=seed)


def tiny_images(n=16, shape=(8, 8, 1), seed=0):
    """``n`` images ``(n, *shape)`` uniform in ``[-1, 1]``."""
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape)).astype("float32")
