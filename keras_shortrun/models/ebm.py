"""Short-run EBM (Nijkamp et al., NeurIPS 2019)."""

import keras
import numpy as np
from keras import ops

from keras_shortrun import backend
from keras_shortrun.layers import CoarseToFineChain
from keras_shortrun.layers import paper_chain
from keras_shortrun.models.energy_conv_net import EnergyConvNet
from keras_shortrun.models.family import ShortRunFamily
from keras_shortrun.models.family import TensorInfo
from keras_shortrun.models.family import input_or_draw
from keras_shortrun.models.family import random_inputs
from keras_shortrun.models.multiscale_energy import MultiscaleEnergy
from keras_shortrun.optim import adam_step
from keras_shortrun.seeds import seed_generator
from keras_shortrun.seeds import stream
from keras_shortrun.serving import DATA
from keras_shortrun.serving import NORMAL
from keras_shortrun.serving import UNIFORM
from keras_shortrun.validation import CheckedInputsMixin
from keras_shortrun.validation import check_images
from keras_shortrun.validation import check_optional_positive_int
from keras_shortrun.validation import check_positive_float
from keras_shortrun.validation import check_positive_int
from keras_shortrun.validation import check_seed

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


@keras.saving.register_keras_serializable(package="keras_shortrun")
class ShortRunEBM(ShortRunFamily, CheckedInputsMixin, backend.TrainStepMixin, keras.Model):
    """An energy ``E(x)`` whose K-step Langevin chain from ``Uniform(-1, 1)`` is the model.

    Training (``fit``) follows the paper: each batch of data ``x`` (in
    ``[-1, 1]``, plus ``N(0, data_noise^2)``) is contrasted with chain samples
    treated as constants, loss ``mean E(x_data) - mean E(x_sample)``. With
    ``gradient_penalty = g > 0`` (paper 1: 0) the loss adds ``g mean ||dE/dx||^2`` at the data and
    at the samples, which keeps the energy smooth enough for the chain's fixed step (see
    ``compute_training_loss``).

    Args:
        energy: a layer mapping ``(B, *data_shape)`` to ``(B,)``.
        data_shape: shape of one example, e.g. ``(28, 28, 1)``.
        chain: a ``LangevinChain`` (default: the paper-1 chain, K=100).
        data_noise: std of the Gaussian noise added to data (paper: 0.03).
        seed: seed for the data noise and the chain's start (and of the default chain's noise).
        gradient_penalty: ``g >= 0``, the weight of the input-gradient penalty (a training setting only).

    ``model(x)`` returns the energy ``(B,)``.
    """

    def __init__(self, energy, data_shape, chain=None, data_noise=0.03, seed=None, gradient_penalty=0.0, **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(gradient_penalty, (int, float)) and gradient_penalty >= 0):
            raise ValueError(f"gradient_penalty must be a float >= 0, got {gradient_penalty!r}.")
        if isinstance(energy, dict):
            energy = keras.saving.deserialize_keras_object(energy)
        if isinstance(chain, dict):
            chain = keras.saving.deserialize_keras_object(chain)
        self.energy = energy
        self.data_shape = tuple(int(d) for d in data_shape)
        self.chain = chain if chain is not None else paper_chain(seed=seed)
        if self.chain.num_groups != 1:
            raise ValueError("A ShortRunEBM chain has one state group (the image).")
        self.data_noise = float(data_noise)
        self.gradient_penalty = float(gradient_penalty)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # "gradient_penalty" is logged only when it is trained with: a run's log.csv keeps its columns.
        logged = ("loss", "energy_data", "energy_sample") + (("gradient_penalty",) if self.gradient_penalty else ())
        self.metrics_trackers = {name: keras.metrics.Mean(name=name) for name in logged}
        self._compiled = {}
        self.build((None,) + self.data_shape)

    @classmethod
    def with_convnet(cls, image_size=32, channels=3, filters=64, steps=100, clip=None, seed=None,
                     activation="leaky_relu", anneal_steps=0, **kwargs):
        """The paper-1 model: ``EnergyConvNet`` and the paper-1 chain with K ``steps`` (optionally clamped).
        ``activation`` and ``anneal_steps`` leave paper 1 (see ``EnergyConvNet``, ``LangevinChain``)."""
        energy = EnergyConvNet(image_size=image_size, channels=channels, filters=filters, activation=activation,
                               name="energy")
        chain = paper_chain(steps, seed, clip, anneal_steps)
        return cls(energy, (image_size, image_size, channels), chain=chain, seed=seed, **kwargs)

    @classmethod
    def with_coarse_to_fine(cls, image_size=64, channels=3, filters=16, resolutions=(8, 16, 32, 64),
                            steps=(20, 20, 10, 10), noise_scale=0.01, anneal_steps=0, activation="leaky_relu",
                            clip=(-1.0, 1.0), seed=None, **kwargs):
        """A CF-EBM-style model: one ``EnergyConvNet`` per resolution (``MultiscaleEnergy``) and a
        ``CoarseToFineChain`` with the paper-1 update (``s = sqrt(2)``) at each, trained on every resolution."""
        if resolutions[-1] != image_size:
            raise ValueError(f"The last resolution must be image_size={image_size}, got {tuple(resolutions)}.")
        energy = MultiscaleEnergy.with_convnets(resolutions, channels, filters, activation, name="energy")
        chain = CoarseToFineChain(resolutions, steps, step_size=2.0**0.5, noise_scale=noise_scale,
                                  anneal_steps=anneal_steps, clip=clip, seed=seed, name="chain")
        return cls(energy, (image_size, image_size, channels), chain=chain, seed=seed, **kwargs)

    def with_compute_dtype(self, dtype):
        """A copy of this model whose energy computes in ``dtype``: ``"float32"``, ``"bfloat16"`` or ``"float16"``.

        The weights stay float32 (Keras's ``mixed_*`` policies), and so do the chain's state, noise and
        update: only ``E(x)`` and ``dE/dx`` are computed in low precision. Meant for sampling on GPUs (tensor
        cores); ``tools/eval_precision.py`` measures what it does to the samples.
        """
        if dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}.")
        policy = "float32" if dtype == "float32" else f"mixed_{dtype}"
        energy = type(self.energy).from_config({**self.energy.get_config(), "dtype": policy})
        energy.build((None,) + self.data_shape)
        energy.set_weights(self.energy.get_weights())
        chain = type(self.chain).from_config(self.chain.get_config())
        chain.set_weights(self.chain.get_weights())
        return type(self)(energy, self.data_shape, chain=chain, data_noise=self.data_noise, seed=self.seed,
                          gradient_penalty=self.gradient_penalty)

    def build(self, input_shape):
        if not self.energy.built:  # deserialised layers arrive built
            self.energy.build(input_shape)
        self.built = True

    @property
    def image_shape(self):
        """``data_shape``, under the name the latent families use."""
        return self.data_shape

    @property
    def input_range(self):
        """``[-1, 1]`` for images ``(H, W, C)``; ``None`` (no range check) for other data, e.g. 2-D toy points."""
        return (-1.0, 1.0) if len(self.data_shape) == 3 else None

    @property
    def metrics(self):
        return list(self.metrics_trackers.values())

    def call(self, x):
        return self.energy(x)

    # Training -----------------------------------------------------------------
    def prepare_batch(self, x):
        """Noisy data and chain samples (constants) at each of the chain's resolutions (one for a
        ``LangevinChain``; coarsest first for a ``CoarseToFineChain``): two lists of ``(B, r, r, C)``."""
        x = ops.cast(x, self.compute_dtype)
        x_data = x + self.data_noise * keras.random.normal(ops.shape(x), seed=self.seed_generator, dtype=x.dtype)
        z = keras.random.uniform(ops.shape(x), -1.0, 1.0, seed=self.seed_generator, dtype=x.dtype)
        samples = self.chain.stage_outputs(z, potential=self.energy)
        return self.chain.pyramid(x_data), [ops.stop_gradient(s) for s in samples]

    def compute_training_loss(self, x, y, aux, training=False):
        """``sum_r mean E(x_data_r) - mean E(x_sample_r)`` over the chain's resolutions, plus (``g > 0``)
        ``g sum_r mean_b (||dE/dx (x_data_r)_b||^2 + ||dE/dx (x_sample_r)_b||^2)``; the logged energies are
        those of the last (full) resolution, the logged ``gradient_penalty`` the weighted penalty (``loss``
        minus it: the summed gaps).

        The penalty is this library's addition, for long CPU campaigns: with the chain's fixed step
        (``x - dE/dx``) an energy whose input gradient grows makes the chain overshoot to the clip walls,
        where training raises the energy further (a multiscale EBM's 8x8 energy ran away so after a few
        hundred updates, its input gradient norm growing 20-fold). Penalising the input gradient (as R1 does
        for GAN critics) at the data and at the samples holds the energy smooth where the chain runs."""
        del x, y, training
        data, samples = aux
        if not isinstance(data, (list, tuple)):  # one resolution given as plain tensors (subclasses' prepare_batch)
            data, samples = [data], [samples]
        gaps, penalty = 0.0, 0.0
        for x_data, x_sample in zip(data, samples):
            if self.gradient_penalty:
                (energy_data, penalty_data), (energy_sample, penalty_sample) = (
                    self._energy_and_gradient_norm(v) for v in (x_data, x_sample))
                penalty = penalty + penalty_data + penalty_sample
            else:
                energy_data = ops.mean(self.energy(x_data))
                energy_sample = ops.mean(self.energy(x_sample))
            gaps = gaps + (energy_data - energy_sample)
        logs = {"energy_data": energy_data, "energy_sample": energy_sample}
        if not self.gradient_penalty:
            return gaps, logs
        penalty = self.gradient_penalty * penalty
        return gaps + penalty, dict(logs, gradient_penalty=penalty)

    def _energy_and_gradient_norm(self, x):
        """``mean_b E(x_b)`` and ``mean_b ||dE/dx (x_b)||^2`` of a batch ``(B, ...)``, differentiable in the weights."""
        energies, grads = backend.value_and_grad(self.energy, x)
        return ops.mean(energies), ops.mean(ops.sum(ops.reshape(grads, (ops.shape(grads)[0], -1)) ** 2, axis=1))

    # Generation ---------------------------------------------------------------
    def _compiled_chain(self, steps, trajectory_every, bptt=False, with_noise=False):
        key = ("chain", steps, trajectory_every, bptt, with_noise)
        if key not in self._compiled:

            def run(z, seed_or_noise):
                kwargs = {"noise": seed_or_noise} if with_noise else {"seed": seed_or_noise}
                return self.chain(
                    z, potential=self.energy, steps=steps, bptt=bptt, trajectory_every=trajectory_every, **kwargs
                )

            self._compiled[key] = backend.compile_method(self, run)
        return self._compiled[key]


    def initial_state(self, n, seed=None):
        """Chain inputs ``z ~ Uniform(-1, 1)``, ``(n, *data_shape)``, as a numpy array."""
        n = check_positive_int(n, "n")
        z = keras.random.uniform((n,) + self.data_shape, -1.0, 1.0, seed=seed_generator(seed, self.seed_generator))
        return ops.convert_to_numpy(z)

    def draw_noise(self, n, steps=None, seed=None):
        """Chain noise ``eps``, ``(n, K, *data_shape)``: pass it to hold ``M(z)`` deterministic."""
        steps = self.chain.steps if steps is None else check_positive_int(steps, "steps")
        n = check_positive_int(n, "n")
        noise = keras.random.normal((n, steps) + self.data_shape, seed=seed_generator(seed, self.seed_generator))
        return ops.convert_to_numpy(noise)

    def generate(self, z, noise=None, steps=None, seed=None, trajectory_every=None, batch_size=256):
        """Runs the chain ``M(z)`` from given inputs ``z`` ``(B, *data_shape)``.

        With ``noise`` ``(B, K, *data_shape)`` the map is deterministic; without,
        fresh noise is drawn (reproducibly for an integer ``seed``). Returns
        ``x_K`` as numpy, or ``(x_K, trajectory (B, T, ...))``.
        """
        steps = self.chain.steps if steps is None else check_positive_int(steps, "steps")
        batch_size = check_positive_int(batch_size, "batch_size")
        trajectory_every = check_optional_positive_int(trajectory_every, "trajectory_every")
        check_seed(seed)
        z = check_images(z, self.data_shape, name="z", value_range=None)
        if noise is not None:
            if seed is not None:
                raise ValueError("Pass noise or seed, not both: with noise given, the chain draws nothing.")
            noise = np.asarray(noise, dtype="float32")
            if noise.shape != (z.shape[0], steps) + self.data_shape:
                raise ValueError(
                    f"noise must have shape {(z.shape[0], steps) + self.data_shape}, got {noise.shape}."
                )
            if not np.all(np.isfinite(noise)):
                raise ValueError("noise contains NaN or infinite values.")
        generator = seed_generator(seed, self.seed_generator)
        run = self._compiled_chain(steps, trajectory_every, with_noise=noise is not None)
        outputs = []
        for start in range(0, z.shape[0], batch_size):
            chunk = slice(start, start + batch_size)
            extra = noise[chunk] if noise is not None else generator.next()
            outputs.append(keras.tree.map_structure(ops.convert_to_numpy, run(z[chunk], extra)))
        if trajectory_every is None:
            return np.concatenate(outputs)
        return tuple(np.concatenate(parts) for parts in zip(*outputs))

    def sample(self, n, steps=None, seed=None, trajectory_every=None, batch_size=256):
        """Draws ``n`` samples ``(n, *data_shape)`` by K Langevin steps from ``Uniform(-1, 1)``.

        An integer ``seed`` makes the result reproducible; ``trajectory_every``
        also returns the chain's states ``(n, T, *data_shape)``.
        """
        check_optional_positive_int(steps, "steps")
        check_optional_positive_int(trajectory_every, "trajectory_every")
        check_positive_int(batch_size, "batch_size")
        z = self.initial_state(n, seed=stream(seed, "start"))
        return self.generate(
            z, steps=steps, seed=stream(seed, "noise"),
            trajectory_every=trajectory_every, batch_size=batch_size,
        )

    def draw(self, n, seed=None, batch_size=256):
        """``sample``: the chain from ``Uniform(-1, 1)`` (``ShortRunFamily.draw``)."""
        return self.sample(n, seed=seed, batch_size=batch_size)

    EXPORT_GRAPHS = ("sampler", "chain")

    def export_graph(self, graph, steps, noise, chains=None):
        """``sampler``: the model ``M(z0)``, its start ``z0`` ~ U(-1, 1) an input in both noise modes; ``chain``:
        the same K-step chain from any ``x0`` (e.g. images). Both output ``x`` (see ``ShortRunFamily``)."""
        start, shape = ("z0" if graph == "sampler" else "x0"), self.image_shape

        def run(inputs, normal):
            x0 = inputs[start]
            eps = input_or_draw(inputs, "noise", (ops.shape(x0)[0], steps) + shape, normal)
            return {"x": self.chain(x0, potential=self.energy, noise=eps, steps=steps)}

        inputs = (TensorInfo(start, shape, UNIFORM if graph == "sampler" else DATA),)
        inputs += random_inputs(noise, TensorInfo("noise", (steps,) + shape, NORMAL))
        return inputs, (TensorInfo("x", shape),), run

    def interpolate(self, z1=None, z2=None, n=8, seed=None, steps=None):
        """Samples along ``z_rho = rho z1 + sqrt(1 - rho^2) z2``, ``rho`` from 0 to 1.

        ``z1``, ``z2``: chain inputs ``(B, *data_shape)`` (drawn when absent).
        The chain noise is held fixed along each path, so the strip shows the
        deterministic map ``M(z)``. Returns ``(B, n, *data_shape)``.
        """
        n = check_positive_int(n, "n")
        check_optional_positive_int(steps, "steps")
        check_seed(seed)
        rows = 1 if z1 is None else check_images(z1, self.data_shape, name="z1", value_range=None).shape[0]
        z1 = self.initial_state(rows, seed=stream(seed, "endpoint_a")) if z1 is None else z1
        z2 = self.initial_state(rows, seed=stream(seed, "endpoint_b")) if z2 is None else z2
        z1 = check_images(z1, self.data_shape, name="z1", value_range=None)
        z2 = check_images(z2, self.data_shape, name="z2", value_range=None)
        if z1.shape != z2.shape:
            raise ValueError(f"z1 and z2 must have the same shape, got {z1.shape} and {z2.shape}.")
        rho = np.linspace(0.0, 1.0, n, dtype="float32").reshape((1, n) + (1,) * len(self.data_shape))
        path = rho * z1[:, None] + np.sqrt(1.0 - rho**2) * z2[:, None]
        noise = self.draw_noise(rows, steps=steps, seed=stream(seed, "noise"))
        noise = np.repeat(noise[:, None], n, axis=1)
        flat = path.reshape((rows * n,) + self.data_shape)
        out = self.generate(flat, noise=noise.reshape((rows * n,) + noise.shape[2:]), steps=steps)
        return out.reshape((rows, n) + self.data_shape)

    def reconstruct(self, x, iterations=200, learning_rate=0.1, steps=None, seed=None, batch_size=256):
        """Finds chain inputs ``z`` with ``M(z) ~ x`` by Adam through the unrolled chain.

        Minimises ``||x - M(z)||^2`` over ``z`` (BPTT through all K steps), the
        chain noise held fixed, from ``z ~ Uniform(-1, 1)``.

        Args:
            x: images ``(B, *data_shape)`` in ``[-1, 1]``.
        Returns:
            ``(x_hat, mse)``: reconstructions ``(B, *data_shape)`` and per-image
            mean squared error ``(B,)`` (pixels in ``[-1, 1]``).
        """
        x = check_images(x, self.data_shape)
        iterations = check_positive_int(iterations, "iterations")
        learning_rate = check_positive_float(learning_rate, "learning_rate")
        batch_size = check_positive_int(batch_size, "batch_size")
        steps = self.chain.steps if steps is None else check_positive_int(steps, "steps")
        z = self.initial_state(x.shape[0], seed=stream(seed, "start"))
        noise = self.draw_noise(x.shape[0], steps=steps, seed=stream(seed, "noise"))
        update = self._compiled_reconstruction_step(steps, learning_rate)
        results = []
        for start in range(0, x.shape[0], batch_size):
            chunk = slice(start, start + batch_size)
            state = (z[chunk], np.zeros_like(z[chunk]), np.zeros_like(z[chunk]))
            for t in range(1, iterations + 1):
                state = update(state, np.float32(t), x[chunk], noise[chunk])
            results.append(self.generate(ops.convert_to_numpy(state[0]), noise=noise[chunk], steps=steps))
        x_hat = np.concatenate(results)
        mse = np.mean(np.square(x_hat - x).reshape(x.shape[0], -1), axis=1)
        return x_hat, mse

    def _compiled_reconstruction_step(self, steps, learning_rate):
        key = ("reconstruct", steps, learning_rate)
        if key not in self._compiled:

            def update(state, t, x, noise):
                z, m, v = state

                def per_image_error(inputs):
                    x_hat = self.chain(inputs, potential=self.energy, noise=noise, steps=steps, bptt=True)
                    return ops.sum(ops.reshape(ops.square(x_hat - x), (ops.shape(x)[0], -1)), axis=1)

                _, grad = backend.value_and_grad(per_image_error, z)
                return adam_step(z, grad, m, v, t, learning_rate)

            self._compiled[key] = backend.compile_method(self, update)
        return self._compiled[key]

    def get_config(self):
        config = super().get_config()
        config.update(
            energy=keras.saving.serialize_keras_object(self.energy),
            data_shape=list(self.data_shape),
            chain=keras.saving.serialize_keras_object(self.chain),
            data_noise=self.data_noise,
            seed=self.seed,
            gradient_penalty=self.gradient_penalty,
        )
        return config
