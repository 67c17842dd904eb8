"""The coarse-to-fine short-run chain (CF-EBM, Zhao, Xie & Li, ICLR 2021): Langevin at growing resolutions."""

import keras
from keras import ops

from keras_shortrun import backend
from keras_shortrun.layers.langevin import LangevinChain


def downsample(x, factor):
    """Average pooling of images ``(B, H, W, C)`` by an integer ``factor``: ``(B, H/f, W/f, C)``."""
    if factor == 1:
        return x
    _, height, width, channels = x.shape
    blocks = ops.reshape(x, (-1, height // factor, factor, width // factor, factor, channels))
    return ops.mean(blocks, axis=(2, 4))


def upsample(x, factor):
    """Nearest-neighbour upsampling of images ``(B, H, W, C)`` by an integer ``factor``: ``(B, fH, fW, C)``."""
    if factor == 1:
        return x
    return ops.repeat(ops.repeat(x, factor, axis=1), factor, axis=2)


@keras.saving.register_keras_serializable(package="keras_shortrun")
class CoarseToFineChain(keras.layers.Layer):
    """A non-persistent Langevin chain on images that starts coarse and is upsampled stage by stage.

    Stage ``i`` runs ``steps[i]`` Langevin updates (a ``LangevinChain`` each) at resolution
    ``resolutions[i]``; between stages the state is upsampled by nearest neighbour. The start is
    read from the full-resolution input ``x0`` ``(B, H, W, C)``, ``H = resolutions[-1]``, on the
    strided subgrid ``x0[:, ::f, ::f]`` (``f = H / resolutions[0]``), so a ``Uniform(-1, 1)``
    ``x0`` gives a ``Uniform(-1, 1)`` coarse start and every family's API (chain inputs and noise
    at the data shape) holds. Given noise ``(B, K, H, W, C)`` (``K = sum(steps)``), stage ``i``
    reads its updates' noise on its own strided subgrid. The potential is called at every stage's
    resolution (see ``MultiscaleEnergy``). Most of the compute is spent at low resolution.

    Args:
        resolutions: increasing image sizes, each dividing the next, e.g. ``(8, 16, 32, 64)``.
        steps: updates per stage, one positive integer each.
        step_size: ``s`` of every stage (the update ``x - (s^2/2) dU/dx + tau eps``).
        noise_scale: ``tau``: ``None`` (``tau = s``), a float, or one float per stage.
        anneal_steps: the noise falls linearly to zero over the last that many updates of the
            last stage (see ``LangevinChain``).
        clip, bptt, seed, unroll: as for ``LangevinChain``, for every stage.

    Call arguments: as ``LangevinChain`` (``x0``, ``potential``, ``noise``, ``seed``,
    ``trajectory_every``, ``bptt``); ``steps`` (at most the total) runs only the schedule's first
    that many updates, the state then upsampled to full resolution. Trajectory states are
    upsampled to full resolution. Returns ``x_K`` ``(B, H, W, C)`` or ``(x_K, trajectory)``.
    """

    num_groups = 1

    def __init__(self, resolutions=(8, 16, 32, 64), steps=(20, 20, 10, 10), step_size=2.0**0.5, noise_scale=0.01,
                 anneal_steps=0, clip=None, bptt=False, seed=None, unroll="auto", **kwargs):
        super().__init__(**kwargs)
        self.resolutions = tuple(int(r) for r in resolutions)
        if not self.resolutions or any(r < 1 for r in self.resolutions):
            raise ValueError(f"resolutions must be positive integers, got {resolutions!r}.")
        if any(b % a or b <= a for a, b in zip(self.resolutions, self.resolutions[1:])):
            raise ValueError(f"each resolution must be a multiple of the previous one, got {resolutions!r}.")
        self.stage_steps = tuple(int(k) for k in steps)
        if len(self.stage_steps) != len(self.resolutions) or any(
            k != s or k < 1 for k, s in zip(self.stage_steps, steps)
        ):
            raise ValueError(f"steps must be one positive integer per resolution, got {steps!r}.")
        scales = noise_scale if isinstance(noise_scale, (list, tuple)) else [noise_scale] * len(self.resolutions)
        if len(scales) != len(self.resolutions):
            raise ValueError(f"noise_scale must be None, a float or one per stage, got {noise_scale!r}.")
        self.noise_scales = [None if t is None else float(t) for t in scales]
        self.step_size_value = float(step_size)
        self.anneal_steps = int(anneal_steps)
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        self.bptt = bool(bptt)
        self.seed = seed
        self.unroll = unroll
        last = len(self.resolutions) - 1
        self.stages = [
            LangevinChain(
                steps=k, step_size=step_size, noise_scale=tau, clip=clip, bptt=bptt, unroll=unroll,
                anneal_steps=self.anneal_steps if i == last else 0, name=f"stage_{r}",
            )
            for i, (r, k, tau) in enumerate(zip(self.resolutions, self.stage_steps, self.noise_scales))
        ]
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    @property
    def steps(self):
        """``K``, the total number of updates over all stages."""
        return sum(self.stage_steps)

    def _factors(self, x0):
        size = x0.shape[1]
        if size != self.resolutions[-1] or x0.shape[2] != size:
            raise ValueError(
                f"A coarse-to-fine chain ending at {self.resolutions[-1]}x{self.resolutions[-1]} needs "
                f"inputs (B, {self.resolutions[-1]}, {self.resolutions[-1]}, C), got {tuple(x0.shape)}."
            )
        return [size // r for r in self.resolutions]

    def pyramid(self, x):
        """Images ``(B, H, W, C)`` at every stage's resolution (average pooling), coarsest first."""
        return [downsample(x, f) for f in self._factors(x)]

    def stage_outputs(self, x0, potential, seed=None):
        """Every stage's final state, coarsest first (the training negatives at each resolution)."""
        return self._stages(x0, potential, None, seed, None, self.bptt, self.steps)[0]

    def call(self, x0, potential, noise=None, seed=None, trajectory_every=None, steps=None, bptt=None,
             step_size=None):
        steps = self.steps if steps is None else int(steps)
        if not 1 <= steps <= self.steps:
            raise ValueError(
                f"A coarse-to-fine chain runs at most its stages' {self.steps} updates; got steps={steps}."
            )
        if step_size is not None:
            raise ValueError("A coarse-to-fine chain's step size is fixed by its config; no override.")
        bptt = self.bptt if bptt is None else bool(bptt)
        outputs, paths = self._stages(x0, potential, noise, seed, trajectory_every, bptt, steps)
        final = upsample(outputs[-1], x0.shape[1] // outputs[-1].shape[1])
        if trajectory_every is None:
            return final
        return final, ops.concatenate(paths, axis=1)

    def _stages(self, x0, potential, noise, seed, trajectory_every, bptt, steps):
        x0 = ops.convert_to_tensor(x0)
        factors = self._factors(x0)
        if noise is not None:
            noise = ops.convert_to_tensor(noise)
            expected = (x0.shape[0], steps) + tuple(x0.shape[1:])
            if tuple(noise.shape)[1:] != expected[1:]:
                raise ValueError(f"noise must have shape (batch, steps, ...) = {expected}, got {tuple(noise.shape)}.")
        elif seed is None:
            seed = self.seed_generator.next()
        x = x0[:, :: factors[0], :: factors[0]]
        outputs, paths, start = [], [], 0
        for i, (stage, factor) in enumerate(zip(self.stages, factors)):
            if start == steps:
                break
            if i:
                x = upsample(x, self.resolutions[i] // self.resolutions[i - 1])
            stop = min(start + stage.steps, steps)
            kwargs = {"noise": noise[:, start:stop, ::factor, ::factor]} if noise is not None else {
                "seed": backend.fold_in(seed, i)}
            result = stage(x, potential=potential, bptt=bptt, trajectory_every=trajectory_every, steps=stop - start,
                           **kwargs)
            if trajectory_every is None:
                x = result
            else:
                x, path = result
                path = path if i == 0 else path[:, 1:]  # a later stage starts where the previous one ended
                shape = ops.shape(path)
                flat = ops.reshape(path, (-1,) + tuple(path.shape[2:]))
                paths.append(ops.reshape(upsample(flat, factor), (shape[0], shape[1]) + tuple(x0.shape[1:])))
            outputs.append(x)
            start = stop
        return outputs, paths

    def get_config(self):
        config = super().get_config()
        config.update(
            resolutions=list(self.resolutions),
            steps=list(self.stage_steps),
            step_size=self.step_size_value,
            noise_scale=self.noise_scales,
            anneal_steps=self.anneal_steps,
            clip=None if self.clip is None else list(self.clip),
            bptt=self.bptt,
            seed=self.seed,
            unroll=self.unroll,
        )
        return config

