"""Generative classifier: a generator and a classifier head on latents inferred by short-run Langevin (Fischer)."""

import math

import keras
import numpy as np
from keras import layers
from keras import ops

from keras_shortrun import backend
from keras_shortrun.layers import thesis_chain
from keras_shortrun.models.family import TensorInfo
from keras_shortrun.models.latent import LatentImageModel
from keras_shortrun.models.latent import ShortRunPosterior
from keras_shortrun.seeds import seed_generator
from keras_shortrun.validation import check_images
from keras_shortrun.validation import check_positive_int
from keras_shortrun.validation import is_array

STAGES = ("generator", "head", "joint")
UNLABELLED = -1  # the label of an unlabelled example in ``fit``'s ``y``


def check_labels(y, num_classes, name="y"):
    """Returns ``y`` as int32 ``(B,)`` with values in ``[-1, num_classes)`` (-1: unlabelled), or raises."""
    labels = np.asarray(y)
    if labels.dtype.kind not in "iu" and not (labels.dtype.kind == "f" and np.all(labels == np.round(labels))):
        raise ValueError(f"{name} must hold integer class labels, got dtype {labels.dtype}.")
    if labels.ndim != 1:
        raise ValueError(f"{name} must be a vector of class indices (B,), got shape {labels.shape} (one-hot?).")
    if labels.size and (labels.min() < UNLABELLED or labels.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) or be {UNLABELLED} (unlabelled), got values in "
            f"[{labels.min()}, {labels.max()}]."
        )
    return labels.astype("int32")


def mlp_head(input_dim, num_classes, hidden=(140, 80), name="head"):
    """The thesis classifier head: Dense layers ``hidden`` with Mish, then ``num_classes`` logits.
    ``(B, input_dim)`` -> ``(B, num_classes)``."""
    inputs = keras.Input((input_dim,))
    h = inputs
    for i, units in enumerate(hidden):
        h = layers.Dense(units, activation="mish", name=f"dense_{i}")(h)
    return keras.Model(inputs, layers.Dense(num_classes, name="logits")(h), name=name)


def conv_net_baseline(image_shape=(28, 28, 1), num_classes=10, widths=(32, 64), hidden=(140, 80)):
    """The thesis's ConvNet baseline: four 3x3 convolutions (two per width), a 2x2 max-pool after each pair,
    then the Mish MLP ``hidden`` and softmax probabilities. ``(B, H, W, C)`` in ``[-1, 1]`` -> ``(B, classes)``."""
    inputs = keras.Input(tuple(image_shape))
    h = inputs
    for i, width in enumerate(widths):
        for j in range(2):
            h = layers.Conv2D(width, 3, padding="same", activation="mish", name=f"conv_{i}_{j}")(h)
        h = layers.MaxPooling2D(2, name=f"pool_{i}")(h)
    h = layers.Flatten()(h)
    for i, units in enumerate(hidden):
        h = layers.Dense(units, activation="mish", name=f"dense_{i}")(h)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(h)
    return keras.Model(inputs, outputs, name="conv_net_baseline")


@keras.saving.register_keras_serializable(package="keras_shortrun")
class GenerativeClassifier(ShortRunPosterior, LatentImageModel, backend.TrainStepMixin, keras.Model):
    """``p(x | z) = N(g(z), sigma^2 I)``, ``z ~ N(0, I)``, and a head ``p(y | z) = softmax(h(z))`` on the
    latents a short-run chain infers from ``x``: ``p(y | x) ~ mean over chains of softmax(h(z_K(x)))``.

    Training runs in the thesis's three stages, chosen by ``set_stage`` (then ``compile`` again):

    - ``"generator"``: infer ``z_K`` (constant), step the generator on ``-log p(x, z_K)`` (nats per
      image); labels are not used, so every image counts.
    - ``"head"``: the generator is frozen; the head learns cross-entropy on ``z_K`` of labelled images.
    - ``"joint"``: the chain is differentiated (backpropagation through time): the cross-entropy of the
      labelled images reaches the head, the generator (through every chain step) and the step size;
      every image adds ``generative_weight * (-log p(x, z_K)) / pixels`` for the generator.

    ``fit(x, y)``: ``y`` holds class indices, ``-1`` for an unlabelled image; cross-entropy and accuracy
    average over the labelled images of a batch only.

    Args:
        generator: maps ``z`` (one latent group) to images, e.g. ``ConvTransposeGenerator``.
        head: maps ``(B, latent_dim)`` to ``(B, num_classes)`` logits, e.g. ``mlp_head``.
        num_classes: number of classes.
        sigma: observation noise (images in ``[-1, 1]``).
        chain: a one-group ``LangevinChain`` (default ``thesis_chain``: K=20, s=0.1, learnable).
        stage: the training stage, one of ``STAGES``.
        prediction_chains: independent chains averaged by ``call``/``predict``.
        generative_weight: weight of the per-pixel generative term in the joint stage.
        seed: seed of the prior draws and the chain noise.

    ``model(x)`` is the class probabilities ``(B, num_classes)`` averaged over ``prediction_chains``.
    """

    EXPORT_GRAPHS = ("classifier", "generator")

    def export_graph(self, graph, steps, noise, chains=None):
        """``generator`` (``generator_graph``), or ``classifier``: class probabilities ``(B, L)`` averaged over
        ``chains`` posterior chains per image (``predict_proba``'s layout: image ``b``'s chains are rows
        ``b * chains ... b * chains + chains - 1`` of the repeated batch; inputs ``x``, and ``z0 (B, n, D)``/
        ``noise (B, n, K, D)`` with ``noise="input"``)."""
        if graph == "generator":
            return self.generator_graph()

        def run(inputs, normal):
            z = self.graph_latents(ops.repeat(inputs["x"], chains, axis=0), inputs, steps, normal)
            return {"probabilities": ops.mean(self.head_probabilities(z, chains), axis=1)}

        inputs = (TensorInfo("x", self.image_shape),) + self.posterior_graph_inputs(noise, chains, steps)
        return inputs, (TensorInfo("probabilities", (self.num_classes,)),), run

    def __init__(
        self,
        generator,
        head,
        num_classes,
        sigma=0.3,
        chain=None,
        stage="generator",
        prediction_chains=8,
        generative_weight=1.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        generator, head, chain = (
            keras.saving.deserialize_keras_object(obj) if isinstance(obj, dict) else obj
            for obj in (generator, head, chain)
        )
        self.generator = generator
        self.head = head
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.chain = chain if chain is not None else thesis_chain(seed=seed)
        if self.chain.num_groups != len(self.latent_dims):
            raise ValueError(f"The chain has {self.chain.num_groups} step-size groups; the generator has one.")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}.")
        if not generative_weight >= 0:
            raise ValueError(f"generative_weight must be >= 0, got {generative_weight!r}.")
        self.sigma = float(sigma)
        self.prediction_chains = check_positive_int(prediction_chains, "prediction_chains")
        self.generative_weight = float(generative_weight)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        names = ("loss", "mse", "cross_entropy", "accuracy", "step_size")
        self.metrics_trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self._compiled = {}
        self.set_stage(stage)
        self.built = True

    # Stages -------------------------------------------------------------------
    def set_stage(self, stage):
        """Selects the training stage (see the class docstring) and what is trainable in it; call
        ``compile`` afterwards (``fit`` refuses to run until then)."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}.")
        self.stage = stage
        self.generator.trainable = stage in ("generator", "joint")
        self.head.trainable = stage in ("head", "joint")
        self.chain.raw_step_size.trainable = stage == "joint"
        self.compiled = False

    # Prediction ---------------------------------------------------------------
    def chain_probabilities(self, x, seed, chains, bptt=False):
        """Class probabilities of ``chains`` independent chains per image, ``(B, chains, num_classes)``."""
        x = ops.cast(x, self.compute_dtype)
        latents = self.infer_latents(ops.repeat(x, chains, axis=0), seed, bptt=bptt)
        return self.head_probabilities(latents[0], chains)

    def head_probabilities(self, z, chains):
        """The head's class probabilities of latents ``z`` ``(B * chains, D)``, image by image: ``(B, chains, L)``."""
        return ops.reshape(ops.softmax(self.head(z), axis=-1), (-1, chains, self.num_classes))

    def call(self, x):
        """Class probabilities ``(B, num_classes)``, averaged over ``prediction_chains`` chains."""
        return ops.mean(self.chain_probabilities(x, self.seed_generator.next(), self.prediction_chains), axis=1)

    def predict_proba(self, x, chains=None, seed=None, batch_size=256):
        """Class probabilities ``(B, num_classes)`` averaged over ``chains`` (default ``prediction_chains``)
        independent chains; reproducible with ``seed``."""
        x = check_images(x, self.image_shape)
        chains = self.prediction_chains if chains is None else check_positive_int(chains, "chains")
        key = ("proba", chains)
        if key not in self._compiled:
            self._compiled[key] = backend.compile_method(
                self, lambda images, s: [ops.mean(self.chain_probabilities(images, s, chains), axis=1)]
            )
        generator = seed_generator(seed, self.seed_generator)
        return self._batched(lambda xs: self._compiled[key](xs, generator.next()), x, batch_size)[0]

    def classify(self, x, chains=None, seed=None, batch_size=256):
        """Predicted classes ``(B,)`` (argmax of ``predict_proba``)."""
        return np.argmax(self.predict_proba(x, chains=chains, seed=seed, batch_size=batch_size), axis=1)

    def input_gradient(self, x, y, chains=8, seed=None, batch_size=256):
        """``d/dx`` of the cross-entropy of labels ``y`` averaged over ``chains`` independent chains, each
        differentiated through every chain step (expectation over transformation, for white-box
        attacks); ``(B, *image_shape)``. Also returns the mean chain probability of ``y``, ``(B,)``."""
        x = check_images(x, self.image_shape, value_range=None)
        labels = check_labels(y, self.num_classes)
        if np.any(labels < 0):
            raise ValueError("input_gradient needs a label for every image (no -1).")
        chains = check_positive_int(chains, "chains")
        key = ("input_gradient", chains)
        if key not in self._compiled:

            def gradient(images, targets, s):
                def cross_entropy(inputs):
                    probabilities = self.chain_probabilities(inputs, s, chains, bptt=True)
                    picked = ops.take_along_axis(probabilities, ops.reshape(targets, (-1, 1, 1)), axis=2)[..., 0]
                    return -ops.mean(ops.log(picked + 1e-12), axis=1)

                values, grads = backend.value_and_grad(cross_entropy, images)
                return [grads, ops.exp(-values)]

            self._compiled[key] = backend.compile_method(self, gradient)
        generator = seed_generator(seed, self.seed_generator)
        return tuple(
            self._batched(lambda xs, ys: self._compiled[key](xs, ys, generator.next()), x, batch_size, labels)
        )

    # Training -----------------------------------------------------------------
    def fit(self, x=None, y=None, **kwargs):
        """``keras.Model.fit`` with in-memory images (see ``CheckedInputsMixin``) and labels of any array type
        checked first (``y``: class or -1). Streams (``tf.data``, ``PyDataset``) pass as they are."""
        if is_array(x):
            x = check_images(x, self.image_shape)
            if y is not None:
                y = check_labels(y, self.num_classes)
                if len(y) != len(x):
                    raise ValueError(f"x has {len(x)} images but y has {len(y)} labels.")
            if self.stage != "generator" and (y is None or not np.any(y >= 0)):
                raise ValueError(
                    f"Stage {self.stage!r} learns from labels: pass y with class indices (-1 for unlabelled)."
                )
        return super().fit(x, y, **kwargs)

    def prepare_batch(self, x):
        """The chain's seed; and ``z_K`` as a constant, except in the joint stage (the chain runs on the tape)."""
        seed = self.seed_generator.next()
        if self.stage == "joint":
            return seed
        return [ops.stop_gradient(z) for z in self.infer_latents(ops.cast(x, self.compute_dtype), seed)]

    def _labelled_cross_entropy(self, y, logits):
        """Mean cross-entropy and accuracy over the labelled examples (``y >= 0``); zero when there are none."""
        y = ops.cast(ops.reshape(y, (-1,)), "int32")
        mask = ops.cast(ops.greater_equal(y, 0), logits.dtype)
        count = ops.maximum(ops.sum(mask), 1.0)
        log_probabilities = ops.log_softmax(logits, axis=-1)
        picked = ops.take_along_axis(log_probabilities, ops.expand_dims(ops.maximum(y, 0), 1), axis=1)[:, 0]
        correct = ops.cast(ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), y), logits.dtype)
        return -ops.sum(picked * mask) / count, ops.sum(correct * mask) / count

    def compute_training_loss(self, x, y, aux, training=False):
        """The stage's loss (see the class docstring) and logs: per-pixel ``mse``, ``cross_entropy`` and
        ``accuracy`` over the labelled images, and the step size."""
        del training
        x = ops.cast(x, self.compute_dtype)
        if y is None:
            if self.stage != "generator":
                raise ValueError(f"Stage {self.stage!r} needs labels: fit(x, y) with -1 for unlabelled images.")
            y = -ops.ones((ops.shape(x)[0],), "int32")
        latents = self.infer_latents(x, aux, bptt=True) if self.stage == "joint" else aux
        cross_entropy, accuracy = self._labelled_cross_entropy(y, self.head(latents[0]))
        energy, error = self.negative_log_joint(x, [ops.stop_gradient(z) for z in latents])
        pixels = math.prod(self.image_shape)
        if self.stage == "generator":
            loss = ops.mean(energy) - self.log_likelihood_constant()
        elif self.stage == "head":
            loss = cross_entropy
        else:
            loss = cross_entropy + self.generative_weight * ops.mean(energy) / pixels
        logs = {
            "mse": ops.mean(error) / pixels,
            "cross_entropy": cross_entropy,
            "accuracy": accuracy,
            "step_size": self.chain.step_size[0],
        }
        return loss, logs

    def get_config(self):
        config = super().get_config()
        config.update(
            generator=keras.saving.serialize_keras_object(self.generator),
            head=keras.saving.serialize_keras_object(self.head),
            num_classes=self.num_classes,
            sigma=self.sigma,
            chain=keras.saving.serialize_keras_object(self.chain),
            stage=self.stage,
            prediction_chains=self.prediction_chains,
            generative_weight=self.generative_weight,
            seed=self.seed,
        )
        return config
