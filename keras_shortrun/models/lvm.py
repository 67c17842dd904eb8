"""Multi-layer latent variable model with short-run inference (Nijkamp et al., ECCV 2020)."""

import math

import keras
import numpy as np
from keras import ops

from keras_shortrun import backend
from keras_shortrun.layers import posterior_chain
from keras_shortrun.models.latent import LatentImageModel
from keras_shortrun.models.latent import ShortRunPosterior
from keras_shortrun.optim import adam_step
from keras_shortrun.seeds import stream_id
from keras_shortrun.validation import check_images
from keras_shortrun.validation import check_positive_int
from keras_shortrun.validation import check_seed

ENTROPY_MODES = ("propagated", "noise_conditional")


@keras.saving.register_keras_serializable(package="keras_shortrun")
class MultiLayerLVM(ShortRunPosterior, LatentImageModel, backend.TrainStepMixin, keras.Model):
    """A top-down generator whose posterior is inferred by short-run Langevin from the prior.

    Model: ``eps_l ~ N(0, I)`` for every layer, ``x ~ N(g(eps), sigma^2 I)``.
    Inference: K steps of ``z <- z + (s_l^2/2) d log p(x, z)/dz + s_l eps`` from ``z ~ N(0, I)``.

    Training (``fit``) follows the paper's code: infer ``z_K`` (a constant),
    then take a gradient step on ``-log p(x, z_K)`` for the generator. Every
    ``step_size_every`` batches, the step sizes take one Adam step on their own
    objective, ``KL(q_s || p(z | x)) - log p(x) = E_q[log q_s(z_K) - log p(x, z_K)]``
    (a negative ELBO, in nats per image), on the first ``step_size_batch``
    images, with ``log q_s`` from the chain's Jacobian
    (``LangevinChain.log_det_covariance``): ``entropy="propagated"`` (the
    default) tracks the injected noise too and is exact for Gaussian posteriors;
    ``"noise_conditional"`` is the papers' fixed-noise change of variables,
    which upper-bounds the KL and prefers smaller step sizes (see docs/lvm.md).

    Args:
        generator: a ``TopDownGenerator`` (or any layer with ``latent_dims``, ``image_shape``).
        sigma: observation noise (paper: 0.15, images in ``[-1, 1]``).
        chain: a ``LangevinChain`` with one step-size group per latent layer (default K=25, s=0.05).
        step_size_every: batches between step-size updates (0: keep ``s`` fixed).
        step_size_batch: images used by each step-size update.
        step_size_learning_rate: Adam learning rate on ``log s``.
        entropy: ``"propagated"`` or ``"noise_conditional"`` (see above).
        seed: seed of the prior draws (and of the default chain's noise).

    ``model(latents)`` is ``g(latents)``.
    """

    EXPORT_GRAPHS = ("generator", "inference", "reconstruction")

    def export_graph(self, graph, steps, noise, chains=None):
        """``generator`` (``generator_graph``), or the posterior chain's ``inference`` or ``reconstruction``
        (``inference_graph``; inputs ``x``, and ``z0``/``noise`` with ``noise="input"``)."""
        if graph == "generator":
            return self.generator_graph()
        def latents(inputs, normal):
            return self.graph_latents(inputs["x"], inputs, steps, normal)

        return self.inference_graph(graph, latents, self.posterior_graph_inputs(noise, steps=steps))

    def __init__(
        self,
        generator,
        sigma=0.15,
        chain=None,
        step_size_every=10,
        step_size_batch=8,
        step_size_learning_rate=0.01,
        entropy="propagated",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(generator, dict):
            generator = keras.saving.deserialize_keras_object(generator)
        if isinstance(chain, dict):
            chain = keras.saving.deserialize_keras_object(chain)
        self.generator = generator
        self.chain = chain if chain is not None else posterior_chain(len(generator.latent_dims), seed=seed)
        if self.chain.num_groups != len(self.latent_dims):
            raise ValueError(
                f"The chain has {self.chain.num_groups} step-size group(s); the generator has "
                f"{len(self.latent_dims)} latent layers."
            )
        if self.chain.clip is not None:
            raise ValueError("The inference chain must be unclamped (clip=None).")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}.")
        if entropy not in ENTROPY_MODES:
            raise ValueError(f"entropy must be one of {ENTROPY_MODES}, got {entropy!r}.")
        if int(step_size_every) != step_size_every or step_size_every < 0:
            raise ValueError(f"step_size_every must be a non-negative integer, got {step_size_every!r}.")
        self.sigma = float(sigma)
        self.step_size_every = int(step_size_every)
        self.step_size_batch = check_positive_int(step_size_batch, "step_size_batch")
        self.step_size_learning_rate = float(step_size_learning_rate)
        self.entropy = entropy
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        num_layers = len(self.latent_dims)
        self.batches_seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="batches_seen")
        self.step_size_moments = self.add_weight(
            shape=(2, num_layers), initializer="zeros", trainable=False, name="step_size_moments"
        )
        self.step_size_updates = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="step_size_updates"
        )
        self.last_step_size_objective = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="last_step_size_objective"
        )
        names = ["loss", "mse", "step_size_objective"] + [f"step_size_{layer}" for layer in range(num_layers)]
        self.metrics_trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self._compiled = {}
        self.built = True

    # Inference ----------------------------------------------------------------
    def inpaint(self, x, mask, steps=None, seed=None, batch_size=256):
        """Fills the unobserved pixels of ``x``: infers ``z`` from the observed pixels only (the
        likelihood summed where ``mask == 1``) and returns ``g(z)`` ``(B, *image_shape)``, every pixel
        generated; blend with ``mask * x + (1 - mask) * g(z)`` to keep the observed ones.

        ``mask``: 0/1, shaped ``(B, *image_shape)`` or broadcastable ``(H, W)`` / ``(H, W, 1)``.
        """
        x = check_images(x, self.image_shape)
        mask = np.asarray(mask, dtype="float32")
        if not np.all((mask == 0) | (mask == 1)):
            raise ValueError("mask must contain only 0 (missing) and 1 (observed).")
        try:
            mask = np.broadcast_to(mask if mask.ndim == x.ndim else mask.reshape(mask.shape[:2] + (-1,)), x.shape)
        except ValueError as error:
            raise ValueError(f"mask of shape {mask.shape} does not broadcast to the images' {x.shape}.") from error
        latents = self.infer(x, steps=steps, seed=seed, batch_size=batch_size, mask=np.ascontiguousarray(mask))
        return self.decode(latents, batch_size=batch_size)

    # Step size: KL(q_s || p(z|x)) ---------------------------------------------
    def step_size_objective_terms(self, x, seed, step_size=None):
        """Per-image ``log q_s(z_K) - log p(x, z_K)`` (nats), ``(B,)``; differentiable w.r.t. ``step_size``."""
        z0 = self._prior_draw(ops.shape(x)[0], seed, x.dtype)
        potential = self.posterior_potential(x)
        z_k, log_det = self.chain.log_det_covariance(
            z0,
            potential,
            seed=backend.fold_in(seed, stream_id("chain")),
            step_size=step_size,
            propagate_noise=self.entropy == "propagated",
        )
        log_q0 = sum(-0.5 * ops.sum(ops.square(z), axis=1) for z in z0)  # the 2 pi terms cancel with log p's
        return log_q0 - 0.5 * log_det + potential(z_k) - self.log_likelihood_constant()

    def _step_size_update(self, x, seed):
        """One Adam step of the chain's raw step sizes on the objective; returns the new state (no assignment)."""
        raw = ops.copy(self.chain.raw_step_size)

        def objective(raw_values):
            return self.step_size_objective_terms(x, seed, step_size=self.chain.step_size_from_raw(raw_values))

        values, grad = backend.value_and_grad(objective, raw)
        batch = ops.cast(ops.shape(x)[0], grad.dtype)
        t = self.step_size_updates + 1.0
        moments = self.step_size_moments
        raw, m, v = adam_step(raw, grad / batch, moments[0], moments[1], t, self.step_size_learning_rate)
        return raw, ops.stack([m, v]), t, ops.mean(values)

    def _apply_step_size_update(self, new_state):
        raw, moments, t, objective = new_state
        self.chain.raw_step_size.assign(raw)
        self.step_size_moments.assign(moments)
        self.step_size_updates.assign(t)
        self.last_step_size_objective.assign(objective)

    def fit_step_size(self, x, iterations=100, batch_size=None, seed=0):
        """Learns the step sizes alone (generator fixed): ``iterations`` Adam steps of the objective on
        random batches of ``x``. Returns the objective's history (mean nats per image), a list."""
        x = check_images(x, self.image_shape)
        iterations = check_positive_int(iterations, "iterations")
        batch_size = self.step_size_batch if batch_size is None else check_positive_int(batch_size, "batch_size")
        seed = check_seed(seed)
        if "step_size" not in self._compiled:
            self._compiled["step_size"] = backend.compile_method(
                self, lambda images, s: self._apply_step_size_update(self._step_size_update(images, s))
            )
        rng = np.random.default_rng(seed)
        generator = keras.random.SeedGenerator(seed)
        history = []
        for _ in range(iterations):
            chunk = x[rng.choice(x.shape[0], min(batch_size, x.shape[0]), replace=False)]
            self._compiled["step_size"](chunk, generator.next())
            history.append(float(ops.convert_to_numpy(self.last_step_size_objective)))
        return history

    def step_size_objective(self, x, step_size, seed=0, batch_size=64):
        """Mean objective (nats per image) over ``x`` at the given step sizes (a float for all layers, or one
        per layer), the chain noise and starts drawn from ``seed``: the grid-search criterion."""
        x = check_images(x, self.image_shape)
        seed = check_seed(seed)
        check_positive_int(batch_size, "batch_size")
        sizes = np.broadcast_to(np.asarray(step_size, dtype="float32"), (len(self.latent_dims),))
        if not np.all(np.isfinite(sizes) & (sizes > 0)):
            raise ValueError(f"step_size must be finite and positive, got {step_size!r}.")
        if "objective" not in self._compiled:
            self._compiled["objective"] = backend.compile_method(
                self, lambda images, s, sizes: self.step_size_objective_terms(images, s, step_size=sizes)
            )
        generator = keras.random.SeedGenerator(seed)
        (values,) = self._batched(
            lambda xs: [self._compiled["objective"](xs, generator.next(), np.ascontiguousarray(sizes))], x, batch_size
        )
        return float(np.mean(values))

    def grid_search_step_size(self, x, candidates, seed=0, batch_size=64):
        """Evaluates ``step_size_objective`` at each candidate (shared by all layers), same noise for all.
        Returns ``(best, table)``: the minimising candidate and ``[(candidate, objective), ...]``."""
        table = [(float(s), self.step_size_objective(x, s, seed=seed, batch_size=batch_size)) for s in candidates]
        if not table:
            raise ValueError("candidates must not be empty.")
        best = min(table, key=lambda row: row[1] if math.isfinite(row[1]) else math.inf)
        return best[0], table

    # Training -----------------------------------------------------------------
    def prepare_batch(self, x):
        """Updates the step sizes when due, then infers ``z_K`` for the batch (a list of constants)."""
        x = ops.cast(x, self.compute_dtype)
        step_seed = self.seed_generator.next()
        if self.step_size_every:
            due = ops.equal(ops.mod(self.batches_seen, float(self.step_size_every)), 0.0)
            subset = x[: self.step_size_batch]
            current = (
                ops.copy(self.chain.raw_step_size),
                ops.copy(self.step_size_moments),
                ops.copy(self.step_size_updates),
                ops.copy(self.last_step_size_objective),
            )
            update_seed = backend.fold_in(step_seed, stream_id("step_size"))
            self._apply_step_size_update(
                ops.cond(due, lambda: self._step_size_update(subset, update_seed), lambda: current)
            )
        self.batches_seen.assign_add(1.0)
        return [ops.stop_gradient(z) for z in self.infer_latents(x, step_seed)]

    def compute_training_loss(self, x, y, aux, training=False):
        """``-log p(x, z_K)`` for the generator, per image and averaged (nats), with ``z_K`` fixed."""
        del y, training
        x = ops.cast(x, self.compute_dtype)
        energy, error = self.negative_log_joint(x, aux)
        loss = ops.mean(energy) - self.log_likelihood_constant()
        sizes = ops.unstack(self.chain.step_size, num=len(self.latent_dims))
        logs = {
            "mse": ops.mean(error) / math.prod(self.image_shape),
            "step_size_objective": ops.copy(self.last_step_size_objective),
        }
        logs.update({f"step_size_{layer}": s for layer, s in enumerate(sizes)})
        return loss, logs

    def get_config(self):
        config = super().get_config()
        config.update(
            generator=keras.saving.serialize_keras_object(self.generator),
            sigma=self.sigma,
            chain=keras.saving.serialize_keras_object(self.chain),
            step_size_every=self.step_size_every,
            step_size_batch=self.step_size_batch,
            step_size_learning_rate=self.step_size_learning_rate,
            entropy=self.entropy,
            seed=self.seed,
        )
        return config
