"""What every latent-variable image model here shares: whitened latents, synthesis, batched evaluation."""

import math

import keras
import numpy as np
from keras import ops

from keras_shortrun import backend
from keras_shortrun.layers import gaussian_posterior_potential
from keras_shortrun.models.family import ShortRunFamily
from keras_shortrun.models.family import TensorInfo
from keras_shortrun.models.family import input_or_draw
from keras_shortrun.models.family import random_inputs
from keras_shortrun.seeds import seed_generator
from keras_shortrun.seeds import stream
from keras_shortrun.seeds import stream_id
from keras_shortrun.serving import NORMAL
from keras_shortrun.validation import CheckedInputsMixin
from keras_shortrun.validation import check_images
from keras_shortrun.validation import check_positive_int
from keras_shortrun.validation import check_seed


class LatentImageModel(ShortRunFamily, CheckedInputsMixin):
    """Mixin for models with a ``generator`` (a ``TopDownGenerator``-like layer with ``latent_dims`` and
    ``image_shape``) and an observation noise ``sigma``: ``p(x | z) = N(g(z), sigma^2 I)``, ``z ~ N(0, I)``."""

    @property
    def latent_dims(self):
        return list(self.generator.latent_dims)

    @property
    def image_shape(self):
        return tuple(self.generator.image_shape)

    @property
    def metrics(self):
        return list(self.metrics_trackers.values())

    def call(self, latents):
        """``g(latents)``: a list of ``(B, latent_dims[l])`` tensors -> images ``(B, *image_shape)``."""
        return self.generator(latents)

    def split_latents(self, flat):
        """``(..., sum(latent_dims))`` -> list of ``(..., latent_dims[l])``."""
        if len(self.latent_dims) == 1:
            return [flat]
        cuts = [int(c) for c in np.cumsum(self.latent_dims)[:-1]]
        return list(ops.split(flat, cuts, axis=-1))

    def log_likelihood_constant(self):
        """``-(P/2) log(2 pi sigma^2)``: the part of ``log p(x | z)`` that no gradient sees (``P`` pixels)."""
        return -0.5 * math.prod(self.image_shape) * math.log(2.0 * math.pi * self.sigma**2)

    def squared_error(self, x, x_hat):
        """Per-image sum of squared errors, ``(B,)``."""
        return ops.sum(ops.reshape(ops.square(x - x_hat), (ops.shape(x)[0], -1)), axis=1)

    def negative_log_joint(self, x, latents):
        """``-log p(x, z)`` without its constant, per image ``(B,)``, and the squared error ``(B,)``."""
        error = self.squared_error(x, self.generator(latents))
        prior = sum(0.5 * ops.sum(ops.square(z), axis=1) for z in latents)
        return error / (2.0 * self.sigma**2) + prior, error


    def prior_sample(self, n, seed=None):
        """Whitened latents ``eps ~ N(0, I)``: a list of ``(n, latent_dims[l])`` numpy arrays."""
        n = check_positive_int(n, "n")
        generator = seed_generator(seed, self.seed_generator)
        return [ops.convert_to_numpy(keras.random.normal((n, d), seed=generator)) for d in self.latent_dims]

    def decode(self, latents, batch_size=256):
        """``g(latents)`` for numpy latents, batched; images ``(B, *image_shape)`` as numpy."""
        batch_size = check_positive_int(batch_size, "batch_size")
        latents = [np.asarray(z, dtype="float32") for z in latents]
        out = [
            ops.convert_to_numpy(self.generator([z[i : i + batch_size] for z in latents]))
            for i in range(0, latents[0].shape[0], batch_size)
        ]
        return np.concatenate(out)

    def synthesize(self, n, seed=None, batch_size=256):
        """Ancestral samples: ``eps ~ N(0, I)`` for every layer, top-down through ``g``; ``(n, *image_shape)``."""
        batch_size = check_positive_int(batch_size, "batch_size")
        return self.decode(self.prior_sample(n, seed=seed), batch_size=batch_size)

    def draw(self, n, seed=None, batch_size=256):
        """``synthesize``: ancestral samples (``ShortRunFamily.draw``)."""
        return self.synthesize(n, seed=seed, batch_size=batch_size)

    def graph_runs_chain(self, graph):
        return graph != "generator"

    def generator_graph(self):
        """The ``generator`` export graph: ``z (B, D)`` ~ N(0, I), all layers' latents concatenated (top first),
        to ``x = g(z)`` (see ``ShortRunFamily.export_graph``)."""

        def run(inputs, normal):
            return {"x": self.generator(self.split_latents(inputs["z"]))}

        return (TensorInfo("z", (sum(self.latent_dims),), NORMAL),), (TensorInfo("x", self.image_shape),), run

    def inference_graph(self, graph, latents, random=()):
        """The ``inference`` (output ``z (B, D)``) or ``reconstruction`` (``x_hat = g(z)``) export graph of images
        ``x``, with ``latents(inputs, normal) -> z`` and the graph's ``random`` inputs."""

        def run(inputs, normal):
            z = latents(inputs, normal)
            return {"z": z} if graph == "inference" else {"x_hat": self.generator(self.split_latents(z))}

        output = TensorInfo("z", (sum(self.latent_dims),)) if graph == "inference" else TensorInfo("x_hat",
                                                                                                 self.image_shape)
        return (TensorInfo("x", self.image_shape),) + tuple(random), (output,), run

    def reconstruct(self, x, seed=None, batch_size=256):
        """``g(z(x))`` with the model's inference (``infer``). Returns ``(x_hat, mse)``: reconstructions
        ``(B, *image_shape)`` and per-image mean squared error ``(B,)`` (pixels in ``[-1, 1]``)."""
        x = check_images(x, self.image_shape)
        x_hat = self.decode(self.infer(x, seed=seed, batch_size=batch_size), batch_size=batch_size)
        return x_hat, np.mean(np.square(x_hat - x).reshape(x.shape[0], -1), axis=1)

    def interpolate(self, x1, x2, n=8, seed=None):
        """Images along the straight line between the inferred latents of ``x1`` and ``x2`` (each
        ``(B, *image_shape)``), all layers at once. Returns ``(B, n, *image_shape)``, ends included."""
        n = check_positive_int(n, "n")
        check_seed(seed)
        x1, x2 = check_images(x1, self.image_shape, "x1"), check_images(x2, self.image_shape, "x2")
        if x1.shape != x2.shape:
            raise ValueError(f"x1 and x2 must have the same shape, got {x1.shape} and {x2.shape}.")
        z1 = self.infer(x1, seed=stream(seed, "endpoint_a"))
        z2 = self.infer(x2, seed=stream(seed, "endpoint_b"))
        t = np.linspace(0.0, 1.0, n, dtype="float32")[None, :, None]
        path = [((1.0 - t) * a[:, None] + t * b[:, None]).reshape(-1, a.shape[1]) for a, b in zip(z1, z2)]
        return self.decode(path).reshape((x1.shape[0], n) + self.image_shape)

    def vary_layer(self, x, layer, n=8, seed=None):
        """What latent layer ``layer`` controls: infer ``z(x)``, then redraw that layer's ``eps`` from
        ``N(0, I)`` ``n`` times, holding every other layer. Returns ``(B, n, *image_shape)``."""
        n = check_positive_int(n, "n")
        if isinstance(layer, bool) or int(layer) != layer or not 0 <= layer < len(self.latent_dims):
            raise ValueError(f"layer must be an integer in [0, {len(self.latent_dims)}), got {layer!r}.")
        check_seed(seed)
        x = check_images(x, self.image_shape)
        latents = [np.repeat(z, n, axis=0) for z in self.infer(x, seed=stream(seed, "posterior"))]
        draws = self.prior_sample(x.shape[0] * n, seed=stream(seed, "prior"))
        latents[int(layer)] = draws[int(layer)]
        return self.decode(latents).reshape((x.shape[0], n) + self.image_shape)

    def _batched(self, run, x, batch_size, *per_example):
        """Applies ``run(x_chunk, *chunks)`` to chunks of ``batch_size``; concatenates the list outputs."""
        batch_size = check_positive_int(batch_size, "batch_size")
        parts = []
        for start in range(0, x.shape[0], batch_size):
            chunk = slice(start, start + batch_size)
            parts.append([ops.convert_to_numpy(z) for z in run(x[chunk], *[a[chunk] for a in per_example])])
        return [np.concatenate(layer) for layer in zip(*parts)]


class ShortRunPosterior:
    """Mixin: posterior latents by a short-run Langevin chain from the prior (papers 2 and 3).

    Needs ``self.chain`` (a ``LangevinChain`` with one step-size group per latent layer), ``self.generator``,
    ``self.sigma``, ``self.seed_generator`` and a dict ``self._compiled``.
    """

    def posterior_potential(self, x, mask=None):
        """``U(z) = -log p(x, z)`` up to a constant, ``(B,)``; ``mask`` (1 = observed) restricts the likelihood."""
        return gaussian_posterior_potential(self.generator, x, self.sigma, mask=mask)

    def _prior_draw(self, batch, seed, dtype):
        return [
            backend.stateless_normal((batch, d), backend.fold_in(seed, stream_id(f"prior_{layer}")), dtype)
            for layer, d in enumerate(self.latent_dims)
        ]

    def infer_latents(self, x, seed, steps=None, mask=None, bptt=None, start=None, noise=None):
        """Posterior latents by the chain from the prior (tensors in, list of ``(B, d_l)`` tensors out);
        ``bptt=True`` keeps them differentiable w.r.t. ``x``, the generator and the step size. ``start`` (a list
        of ``(B, d_l)``) and ``noise`` (a list of ``(B, K, d_l)``), when given, replace the draws from ``seed``."""
        z0 = self._prior_draw(ops.shape(x)[0], seed, x.dtype) if start is None else start
        potential = self.posterior_potential(x, mask)
        draws = {"noise": noise} if noise is not None else {"seed": backend.fold_in(seed, stream_id("chain"))}
        return self.chain(z0, potential=potential, steps=steps, bptt=bptt, **draws)

    def graph_latents(self, x, inputs, steps, normal):
        """``z_K`` ``(B', D)`` of the posterior chain on images ``x`` ``(B', H, W, C)`` inside an export graph:
        its start and noise are the graph's inputs ``z0``/``noise`` (leading axes that flatten to ``B'``, then
        ``D`` or ``(K, D)``) or, without them, drawn by ``normal``."""
        dim, batch = sum(self.latent_dims), ops.shape(x)[0]
        z0 = ops.reshape(input_or_draw(inputs, "z0", (batch, dim), normal), (-1, dim))
        eps = ops.reshape(input_or_draw(inputs, "noise", (batch, steps, dim), normal), (-1, steps, dim))
        latents = self.infer_latents(x, None, steps, start=self.split_latents(z0), noise=self.split_latents(eps))
        return ops.concatenate(latents, axis=-1)

    def posterior_graph_inputs(self, noise, chains=None, steps=None):
        """The random inputs of a posterior-chain graph (``random_inputs``): ``z0`` and ``noise``, per chain when
        ``chains`` is given."""
        dim, per_chain = sum(self.latent_dims), () if chains is None else (chains,)
        return random_inputs(noise, TensorInfo("z0", per_chain + (dim,), NORMAL),
                             TensorInfo("noise", per_chain + (steps, dim), NORMAL))

    def infer(self, x, steps=None, seed=None, batch_size=256, mask=None):
        """Posterior samples ``z_K`` for images ``x`` ``(B, *image_shape)``: a list of ``(B, d_l)`` numpy arrays."""
        x = check_images(x, self.image_shape)
        steps = self.chain.steps if steps is None else check_positive_int(steps, "steps")
        check_positive_int(batch_size, "batch_size")
        generator = seed_generator(seed, self.seed_generator)
        key = ("infer", steps, mask is not None)
        if key not in self._compiled:

            def run(images, seed_tensor, *maybe_mask):
                return self.infer_latents(images, seed_tensor, steps, *maybe_mask)

            self._compiled[key] = backend.compile_method(self, run)
        masks = () if mask is None else (mask,)
        return self._batched(lambda xs, *m: self._compiled[key](xs, generator.next(), *m), x, batch_size, *masks)
