"""Image grids, PNGs and GIFs for model outputs in ``[-1, 1]``."""

import numpy as np
from PIL import Image


def to_uint8(x):
    """``[-1, 1]`` floats -> ``uint8`` pixels (clipped)."""
    return np.clip(np.round((np.asarray(x) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(images, columns=None, padding=2):
    """Tiles ``(N, H, W, C)`` images in ``[-1, 1]`` into one ``uint8`` array ``(rows*H', cols*W', C)``."""
    images = to_uint8(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}.")
    n, h, w, c = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    canvas = np.full((rows * (h + padding) + padding, columns * (w + padding) + padding, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        canvas[top : top + h, left : left + w] = image
    return canvas


def _pil(array, scale):
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return image


def save_grid(path, images, columns=None, scale=1):
    """Writes a PNG grid of ``(N, H, W, C)`` images in ``[-1, 1]``."""
    _pil(grid(images, columns), scale).save(path)


def save_gif(path, trajectory, columns=None, scale=1, duration_ms=80):
    """Writes an animated GIF of a chain: ``trajectory`` is ``(N, T, H, W, C)``; one grid per step."""
    trajectory = np.asarray(trajectory)
    frames = [_pil(grid(trajectory[:, t], columns), scale) for t in range(trajectory.shape[1])]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
