"""The unrolled, fixed-K-step Langevin chain."""

import itertools
import math

import keras
from keras import ops

from keras_shortrun import backend

PARAMETRIZATIONS = ("log", "softplus")


def _log_abs_det(matrices):
    """``log |det A|`` of square ``(B, D, D)`` matrices, by QR: XLA compiles QR, not TensorFlow's LU-based
    ``slogdet``; and unlike Cholesky, QR holds for a covariance that float32 rounding left barely indefinite."""
    r = ops.qr(matrices, mode="reduced")[1]
    return ops.sum(ops.log(ops.abs(ops.diagonal(r, axis1=-2, axis2=-1))), axis=-1)


def _inverse_softplus(value):
    return math.log(math.expm1(value))


@keras.saving.register_keras_serializable(package="keras_shortrun")
class LangevinChain(keras.layers.Layer):
    """K steps of Langevin dynamics on a potential ``U``, from a given start.

    For each state group ``g`` (one tensor, e.g. one latent layer) with step
    size ``s_g`` the update is

        x_g <- x_g - (s_g**2 / 2) * dU/dx_g + tau_g * eps,   eps ~ N(0, I),

    with noise scale ``tau_g = s_g`` (exact Langevin, ``noise_scale=None``) or
    a fixed ``tau_g = noise_scale`` (decoupled, as the papers' code runs it).

    - Energy form (short-run EBM): ``U(x) = E(x)``. The paper-1 update
      ``x += df/dx + 0.01 * eps`` with ``f = -E`` is ``step_size=sqrt(2)``
      (gradient coefficient ``s**2/2 = 1``), ``noise_scale=0.01``.
    - Posterior form (latent models): ``U(z) = -log p(x, z)``, see
      ``gaussian_posterior_potential``.

    Args:
        steps: K, the number of updates.
        step_size: ``s``, a float or one float per state group.
        noise_scale: ``None`` (``tau = s``) or a float (fixed ``tau``).
        learn_step_size: whether ``s`` is a trainable weight.
        parametrization: how ``s`` is kept positive: ``"log"`` (``s = exp(w)``)
            or ``"softplus"`` (``s = softplus(w)``).
        bptt: whether gradients flow through the chain (to its start, the step
            size and the potential's weights). Off, the output is a constant,
            as maximum-likelihood EBM training wants.
        anneal_steps: ``A``: the noise scale falls linearly to zero over the last
            ``A`` updates of a call (update ``k`` of ``K`` gets ``tau * min(1,
            (K - 1 - k) / A)``, so the last update is noise-free); 0 (default) keeps it constant.
        clip: ``None`` or ``(low, high)``: clamp the state after every update
            (e.g. ``(-1, 1)``, the data range). Off by default, as in paper 1's
            code; it keeps a young EBM's chain from running off to infinity.
        seed: integer seed of the layer's noise generator.
        unroll: ``"auto"``, ``True`` or ``False``: trace the K updates one after
            another instead of as a loop op. Same numbers, a longer compile, and
            under XLA a faster step (XLA's CPU loop runs a step 1.1-2.8x slower);
            ``"auto"`` unrolls where XLA compiles the chain (JAX; TensorFlow on
            GPUs or with ``KERAS_SHORTRUN_TF_XLA=1``), up to ``backend.AUTO_UNROLL_MAX_STEPS``.

    Call arguments:
        x0: start state, a tensor ``(B, ...)`` or a list of tensors (groups).
        potential: callable mapping a state (same structure) to ``U``, ``(B,)``.
        noise: optional ``eps`` per group, shape ``(B, K, ...)``; drawn
            internally when absent.
        seed: optional ``(2,)`` integer seed tensor overriding the layer's
            generator (reproducible sampling).
        trajectory_every: if set, also return the states every that many
            steps, stacked as ``(B, T, ...)`` with ``x0`` first and ``x_K`` last.
        steps, bptt: per-call overrides of the layer's settings.

    Returns:
        ``x_K`` (same structure as ``x0``), or ``(x_K, trajectory)``.
    """

    def __init__(
        self,
        steps=100,
        step_size=0.01,
        noise_scale=None,
        learn_step_size=False,
        parametrization="log",
        bptt=False,
        clip=None,
        seed=None,
        unroll="auto",
        anneal_steps=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}.")
        step_sizes = [float(s) for s in (step_size if isinstance(step_size, (list, tuple)) else [step_size])]
        if not step_sizes or any(not s > 0 or not math.isfinite(s) for s in step_sizes):
            raise ValueError(f"step_size must be positive and finite, got {step_size!r}.")
        if noise_scale is not None and not (noise_scale >= 0 and math.isfinite(noise_scale)):
            raise ValueError(f"noise_scale must be None or >= 0, got {noise_scale!r}.")
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(
                f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}."
            )
        if int(anneal_steps) != anneal_steps or anneal_steps < 0:
            raise ValueError(f"anneal_steps must be an integer >= 0, got {anneal_steps!r}.")
        self.steps = int(steps)
        self.anneal_steps = int(anneal_steps)
        self.initial_step_size = step_size
        self.noise_scale = None if noise_scale is None else float(noise_scale)
        self.learn_step_size = bool(learn_step_size)
        self.parametrization = parametrization
        self.bptt = bool(bptt)
        if clip is not None and not (len(clip) == 2 and clip[0] < clip[1]):
            raise ValueError(f"clip must be None or (low, high) with low < high, got {clip!r}.")
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        if unroll not in ("auto", True, False):
            raise ValueError(f'unroll must be "auto", True or False, got {unroll!r}.')
        self.unroll = unroll
        self.seed = seed
        self.num_groups = len(step_sizes)
        raw = [math.log(s) if parametrization == "log" else _inverse_softplus(s) for s in step_sizes]
        self.raw_step_size = self.add_weight(
            shape=(self.num_groups,),
            initializer=keras.initializers.Constant(raw),
            trainable=self.learn_step_size,
            name="raw_step_size",
        )
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    @property
    def step_size(self):
        """Positive step sizes, shape ``(groups,)``."""
        return self.step_size_from_raw(self.raw_step_size)

    def step_size_from_raw(self, raw):
        """The positive step sizes that raw values ``raw`` ``(groups,)`` (the weight's or candidates for it)
        stand for under the chain's ``parametrization``."""
        return ops.exp(raw) if self.parametrization == "log" else ops.softplus(raw)

    def pyramid(self, x):
        """``[x]``: the data at the chain's one resolution (see ``CoarseToFineChain.pyramid``)."""
        return [x]

    def stage_outputs(self, x0, potential, seed=None):
        """``[x_K]``: the chain's output as its one stage (see ``CoarseToFineChain.stage_outputs``)."""
        return [self(x0, potential=potential, seed=seed)]

    def call(
        self, x0, potential, noise=None, seed=None, trajectory_every=None, steps=None, bptt=None, step_size=None
    ):
        steps = self.steps if steps is None else int(steps)
        bptt = self.bptt if bptt is None else bool(bptt)
        single, states, noise, seed = self._prepare(x0, noise, seed, steps)

        def unwrap_potential(group_states):
            return potential(group_states[0] if single else group_states)

        if not bptt:
            states = [ops.stop_gradient(x) for x in states]
        sizes = self._step_sizes(step_size, bptt, states[0].dtype)
        bounds = self._segments(trajectory_every, steps)
        unroll = self._unrolled(steps)
        trajectory = [[x] for x in states]
        for start, stop in bounds:
            segment_noise = None if noise is None else [n[:, start:stop] for n in noise]
            states = self._run(
                states, unwrap_potential, start, stop, steps, segment_noise, seed, bptt, sizes, unroll
            )
            for path, x in zip(trajectory, states):
                path.append(x)
        result = states[0] if single else states
        if trajectory_every is None:
            return result
        stacked = [ops.stack(path, axis=1) for path in trajectory]
        return result, (stacked[0] if single else stacked)

    @staticmethod
    def _segments(every, steps):
        if every is None:
            return [(0, steps)]
        if int(every) != every or every < 1:
            raise ValueError(f"trajectory_every must be a positive integer, got {every!r}.")
        return [(a, min(a + int(every), steps)) for a in range(0, steps, int(every))]

    @staticmethod
    def _check_noise(states, noise, steps):
        if len(noise) != len(states):
            raise ValueError(f"Expected noise for {len(states)} group(s), got {len(noise)}.")
        for x, n in zip(states, noise):
            xs, ns = tuple(x.shape), tuple(n.shape)
            expected = (xs[0], steps) + xs[1:]
            if len(ns) != len(expected) or any(
                a is not None and b is not None and a != b for a, b in zip(ns, expected)
            ):
                raise ValueError(
                    f"noise must have shape (batch, steps, ...) = {expected}, got {ns}."
                )

    def _prepare(self, x0, noise, seed, steps):
        """Validates a call's inputs; returns (single, state list, noise list or None, seed or None)."""
        single = not isinstance(x0, (list, tuple))
        states = [ops.convert_to_tensor(x) for x in ([x0] if single else x0)]
        for x in states:
            dtype = keras.backend.standardize_dtype(x.dtype)
            if "float" not in dtype:
                raise ValueError(f"The chain's state must be floating point, got dtype {dtype}.")
        if seed is not None and tuple(ops.shape(seed)) != (2,):
            raise ValueError(f"seed must be a (2,) integer tensor, got shape {tuple(ops.shape(seed))}.")
        if len(states) != self.num_groups:
            raise ValueError(
                f"The chain has {self.num_groups} step-size group(s) but the state "
                f"has {len(states)} tensor(s)."
            )
        if noise is not None:
            if single and isinstance(noise, (list, tuple)):
                raise ValueError("The state is one tensor, so noise must be one tensor (B, K, ...), not a list.")
            noise = [ops.convert_to_tensor(n) for n in ([noise] if single else noise)]
            self._check_noise(states, noise, steps)
        if seed is None and noise is None:
            seed = self.seed_generator.next()
        return single, states, noise, seed

    def _step_sizes(self, step_size, bptt, dtype):
        """The step sizes of one call, ``(groups,)``: the layer's weight, or an override (grid search, the
        step-size objective); constant unless ``bptt``."""
        if step_size is None:
            step_size = self.step_size
        else:
            step_size = ops.convert_to_tensor(step_size, dtype=dtype)
            if tuple(step_size.shape) != (self.num_groups,):
                raise ValueError(
                    f"step_size override must have shape ({self.num_groups},), got {tuple(step_size.shape)}."
                )
        step_size = ops.cast(step_size, dtype)
        return step_size if bptt else ops.stop_gradient(step_size)

    def _eps(self, noise, seed, group, k, offset, x):
        """The Gaussian noise of one group's update ``offset + k`` (``k`` indexes ``noise``), shaped like ``x``."""
        if noise is not None:
            return ops.take(noise[group], k, axis=1)
        step_seed = backend.fold_in(seed, (offset + k) * self.num_groups + group)
        return backend.stateless_normal(ops.shape(x), step_seed, x.dtype)

    def _noise_scales(self, sizes):
        return list(sizes) if self.noise_scale is None else [self.noise_scale] * self.num_groups

    def _anneal_factor(self, step, steps, dtype):
        """The noise factor of update ``step`` (0-based, a scalar tensor) of ``steps``: ``min(1, (K-1-k)/A)``."""
        if not self.anneal_steps:
            return None
        remaining = ops.cast(steps - 1 - step, dtype)
        return ops.minimum(ops.cast(1.0, dtype), remaining / float(self.anneal_steps))

    def _update(self, states, grads, sizes, eps, bptt, factor=None):
        """One Langevin update of every group: ``x - (s^2/2) grad + factor tau eps`` (then the clamp)."""
        updated = []
        for x, grad, s, tau, e in zip(states, grads, sizes, self._noise_scales(sizes), eps):
            if not bptt:
                grad = ops.stop_gradient(grad)
            if factor is not None:
                tau = tau * factor
            x = x - 0.5 * s * s * grad + tau * e
            updated.append(x if self.clip is None else ops.clip(x, *self.clip))
        return updated

    def _run(self, states, potential, start, stop, steps, noise, seed, bptt, step_size, unroll):
        sizes = ops.unstack(step_size, num=self.num_groups)

        def body(k, current):
            _, grads = backend.value_and_grad(potential, current)
            eps = [self._eps(noise, seed, g, k, start, x) for g, x in enumerate(current)]
            factor = self._anneal_factor(start + k, steps, current[0].dtype)
            return self._update(current, grads, sizes, eps, bptt, factor)

        return backend.fori_loop(stop - start, body, states, unroll=unroll)

    def _unrolled(self, steps):
        """Whether a chain of ``steps`` updates is unrolled (see ``unroll``)."""
        if self.unroll == "auto":
            return backend.auto_unroll(steps)
        return self.unroll

    def log_det_covariance(self, x0, potential, noise=None, seed=None, step_size=None, propagate_noise=True):
        """Runs the chain (with BPTT) and the log-determinant of its output covariance, linearised.

        Each update is ``x' = F(x) + tau eps`` with Jacobian ``J_k = I - diag(s^2/2) H_k``, ``H_k`` the
        Hessian of ``U`` at step ``k``. With ``propagate_noise`` the covariance of the output is tracked as
        ``C_{k+1} = J_k C_k J_k^T + diag(tau^2)``, ``C_0 = I`` (an ``N(0, I)`` start), which is exact for a
        Gaussian target (linear chain); otherwise ``C_K = J J^T`` with ``J = dx_K/dx_0`` the Jacobian of the
        unrolled chain at fixed noise (the papers' change of variables). Then
        ``log q(x_K) ~ log N(x_0; 0, I) - log det(C_K) / 2``. The Hessians are exact (``D`` Hessian-vector
        products per step, ``D`` the state size) and treated as constants when differentiating; the
        step-size dependence of ``J`` and ``tau`` is differentiated.

        Args:
            x0: start state, tensor or list of group tensors, each ``(B, ...)``.
            potential, noise, seed, step_size: as for ``call``.
            propagate_noise: ``True`` for the noise-propagated covariance, ``False`` for ``J J^T``.

        Returns:
            ``(x_K, log_det)``: the chain's output (same structure as ``x0``) and ``log det C_K``, ``(B,)``.
        """
        if self.clip is not None:
            raise ValueError("log_det_covariance needs an unclamped chain (clip=None): a clamp has no Jacobian.")
        single, states, noise, seed = self._prepare(x0, noise, seed, self.steps)
        sizes = ops.unstack(self._step_sizes(step_size, True, states[0].dtype), num=self.num_groups)
        shapes = [tuple(x.shape[1:]) for x in states]
        widths = [math.prod(shape) for shape in shapes]
        batch = ops.shape(states[0])[0]

        def flat_potential(flat):
            parts = ops.split(flat, list(itertools.accumulate(widths))[:-1], axis=1) if len(widths) > 1 else [flat]
            groups = [ops.reshape(p, (batch,) + shape) for p, shape in zip(parts, shapes)]
            return potential(groups[0] if single else groups)

        half_s2 = ops.concatenate([ops.full((w,), 0.5 * s * s) for w, s in zip(widths, sizes)])
        tau2 = ops.concatenate([ops.full((w,), t * t) for w, t in zip(widths, self._noise_scales(sizes))])
        dim = sum(widths)
        eye = ops.eye(dim, dtype=states[0].dtype)
        covariance = ops.broadcast_to(eye, (batch, dim, dim))
        log_det = ops.zeros((batch,), states[0].dtype)

        def body(k, carry):
            current, covariance, log_det = carry
            _, grads = backend.value_and_grad(lambda groups: potential(groups[0] if single else groups), current)
            flat = ops.stop_gradient(self._flatten(current))
            hessian = ops.stop_gradient(backend.batch_hessian(flat_potential, flat))
            jacobian = eye[None] - half_s2[None, :, None] * hessian
            factor = self._anneal_factor(k, self.steps, current[0].dtype)
            if propagate_noise:
                covariance = ops.matmul(ops.matmul(jacobian, covariance), ops.transpose(jacobian, (0, 2, 1)))
                step_tau2 = tau2 if factor is None else tau2 * factor * factor
                covariance = covariance + eye[None] * step_tau2[None, None, :]
            else:
                log_det = log_det + 2.0 * _log_abs_det(jacobian)
            eps = [self._eps(noise, seed, g, k, 0, x) for g, x in enumerate(current)]
            return self._update(current, grads, sizes, eps, True, factor), covariance, log_det

        states, covariance, log_det = backend.fori_loop(self.steps, body, (states, covariance, log_det))
        if propagate_noise:
            log_det = _log_abs_det(covariance)
        return (states[0] if single else states), log_det

    @staticmethod
    def _flatten(groups):
        return ops.concatenate([ops.reshape(g, (ops.shape(g)[0], -1)) for g in groups], axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(
            steps=self.steps,
            step_size=self.initial_step_size,
            noise_scale=self.noise_scale,
            learn_step_size=self.learn_step_size,
            parametrization=self.parametrization,
            bptt=self.bptt,
            clip=None if self.clip is None else list(self.clip),
            seed=self.seed,
            unroll=self.unroll,
            anneal_steps=self.anneal_steps,
        )
        return config


def gaussian_posterior_potential(generator, x, sigma, mask=None):
    """``U(z) = ||m * (x - g(z))||^2 / (2 sigma^2) + sum_l ||z_l||^2 / 2`` per sample, ``(B,)``.

    The posterior form of the chain: ``-log p(x, z)`` up to a constant for a
    Gaussian observation model with noise ``sigma`` and ``N(0, I)`` priors on
    every latent group ``z_l``. ``generator`` maps ``z`` (a tensor or a list of
    group tensors) to an image shaped like ``x``. ``mask`` (1 = observed, same
    shape as ``x``) sums the likelihood over observed pixels only (inpainting).
    """

    def potential(z):
        groups = z if isinstance(z, (list, tuple)) else [z]
        residual = x - generator(z)
        if mask is not None:
            residual = residual * mask
        residual = ops.reshape(residual, (ops.shape(x)[0], -1))
        energy = ops.sum(ops.square(residual), axis=1) / (2.0 * sigma**2)
        for group in groups:
            energy = energy + 0.5 * ops.sum(ops.reshape(ops.square(group), (ops.shape(group)[0], -1)), axis=1)
        return energy

    return potential


# Chain presets: the chains of the three papers.
def paper_chain(steps=100, seed=None, clip=None, anneal_steps=0):
    """The paper-1 chain: ``x += df/dx + 0.01 eps`` (``s = sqrt(2)``, ``tau = 0.01``), optionally clamped
    (and with the noise annealed to zero over the last ``anneal_steps`` updates; paper 1: 0)."""
    return LangevinChain(steps=steps, step_size=2.0**0.5, noise_scale=0.01, clip=clip, seed=seed,
                         anneal_steps=anneal_steps, name="chain")


def posterior_chain(num_layers, steps=25, step_size=0.05, seed=None):
    """The paper-2 inference chain: K ``steps`` of exact Langevin (``tau = s``), one step size per latent layer."""
    return LangevinChain(steps=steps, step_size=[float(step_size)] * num_layers, seed=seed, name="chain")


def thesis_chain(steps=20, step_size=0.1, seed=None):
    """The inference chain: K=20 steps of exact Langevin from ``N(0, I)``, learnable step size (BPTT stage)."""
    return LangevinChain(steps=steps, step_size=step_size, learn_step_size=True, seed=seed, name="chain")
