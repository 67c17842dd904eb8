"""The VAE baseline: the same generator and likelihood, with an amortised encoder instead of the chain."""

import math

import keras
from keras import ops

from keras_shortrun import backend
from keras_shortrun.models.conv_encoder import ConvEncoder
from keras_shortrun.models.latent import LatentImageModel
from keras_shortrun.validation import check_images


@keras.saving.register_keras_serializable(package="keras_shortrun")
class VAE(LatentImageModel, backend.TrainStepMixin, keras.Model):
    """A VAE over the same generative model as ``MultiLayerLVM``: ``eps ~ N(0, I)``, ``x ~ N(g(eps), sigma^2 I)``.

    Trained (``fit``) by the negative ELBO (nats per image) with one
    reparameterised sample; ``infer`` returns the encoder's mean.

    Args:
        generator: the generator (e.g. a ``TopDownGenerator``), shared design with the LVM.
        encoder: a ``ConvEncoder`` (built from the generator when ``None``).
        sigma: observation noise.
        seed: seed of the reparameterisation noise.
    """

    EXPORT_GRAPHS = ("generator", "inference", "reconstruction")

    def graph_runs_chain(self, graph):
        return False  # the encoder's mean: no chain, no noise

    def export_graph(self, graph, steps, noise, chains=None):
        """``generator`` (``generator_graph``), or ``inference``/``reconstruction`` through the encoder's mean."""
        if graph == "generator":
            return self.generator_graph()
        return self.inference_graph(graph, lambda inputs, normal: self.encoder(inputs["x"])[0])

    def __init__(self, generator, encoder=None, sigma=0.15, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(generator, dict):
            generator = keras.saving.deserialize_keras_object(generator)
        if isinstance(encoder, dict):
            encoder = keras.saving.deserialize_keras_object(encoder)
        self.generator = generator
        self.encoder = encoder if encoder is not None else ConvEncoder(
            generator.latent_dims, generator.image_shape, name="encoder"
        )
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}.")
        self.sigma = float(sigma)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.metrics_trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "mse", "kl")}
        self.built = True

    def infer(self, x, seed=None, batch_size=256):
        """The encoder's posterior mean for images ``(B, *image_shape)``: a list of ``(B, d_l)`` numpy arrays."""
        del seed  # the mean is deterministic
        x = check_images(x, self.image_shape)
        return self._batched(lambda xs: self.split_latents(self.encoder(xs)[0]), x, batch_size)

    def prepare_batch(self, x):
        """The reparameterisation noise, ``(B, sum(latent_dims))``."""
        shape = (ops.shape(x)[0], sum(self.latent_dims))
        return keras.random.normal(shape, seed=self.seed_generator, dtype=self.compute_dtype)

    def compute_training_loss(self, x, y, aux, training=False):
        """Negative ELBO, nats per image: ``||x - g(mu + sd * eps)||^2 / (2 sigma^2) + KL(q || N(0, I))``."""
        del y, training
        x = ops.cast(x, self.compute_dtype)
        mean, logvar = self.encoder(x)
        x_hat = self.generator(self.split_latents(mean + ops.exp(0.5 * logvar) * aux))
        error = self.squared_error(x, x_hat)
        kl = 0.5 * ops.sum(ops.square(mean) + ops.exp(logvar) - logvar - 1.0, axis=1)
        loss = ops.mean(error / (2.0 * self.sigma**2) + kl) - self.log_likelihood_constant()
        return loss, {"mse": ops.mean(error) / math.prod(self.image_shape), "kl": ops.mean(kl)}

    def get_config(self):
        config = super().get_config()
        config.update(
            generator=keras.saving.serialize_keras_object(self.generator),
            encoder=keras.saving.serialize_keras_object(self.encoder),
            sigma=self.sigma,
            seed=self.seed,
        )
        return config
