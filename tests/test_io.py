import json

import jax
import numpy as np
import pytest

from nca_adv import io
from nca_adv.models import growing, mnist


def _flat(params, kind):
    return io.arrays_from_params(params, kind)


@pytest.mark.parametrize(
    "json_name, npz_name, kind",
    [
        ("growing_lizard_base_model.json", "growing_lizard_base.npz", "growing"),
        ("red_model.json", "growing_lizard_adversary_red_10pct.npz", "growing"),
        ("mnist_base_model.json", "mnist_base.npz", "mnist"),
    ],
)
def test_tfjs_importer_matches_reference_arrays(reference, json_name, npz_name, kind):
    params = io.load_tfjs(reference / "original" / json_name, kind)
    ours = _flat(params, kind)
    with np.load(reference / "npz" / npz_name) as ref:
        for key in ours:
            np.testing.assert_array_equal(ours[key], np.asarray(ref[key]).reshape(ours[key].shape))


def test_load_model_from_reference_npz_and_json(reference):
    a = io.load_model(str(reference / "npz" / "growing_lizard_base.npz"), "growing")
    b = io.load_model(str(reference / "original" / "growing_lizard_base_model.json"), "growing")
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_save_load_roundtrip(tmp_path):
    for kind, init in (
        ("growing", growing.init_growing_params),
        ("mnist", mnist.init_mnist_params),
    ):
        p = init(jax.random.PRNGKey(0))
        io.save_params(tmp_path / f"{kind}.npz", p, kind)
        q = io.load_model(str(tmp_path / f"{kind}.npz"), kind)
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(p), q)


def test_wrong_kind_and_shapes(tmp_path, reference):
    p = growing.init_growing_params(jax.random.PRNGKey(0))
    io.save_params(tmp_path / "g.npz", p, "growing")
    with pytest.raises(io.ModelFormatError, match="holds a growing model"):
        io.load_model(str(tmp_path / "g.npz"), "mnist")
    with pytest.raises(io.ModelFormatError, match="trainable tensors"):
        io.load_tfjs(reference / "original" / "mnist_base_model.json", "growing")
    arrays = io.arrays_from_params(p, "growing")
    arrays["w1"] = arrays["w1"][:10]
    with pytest.raises(io.ModelFormatError, match="'w1' has shape"):
        io.params_from_arrays(arrays, "growing")


def test_unknown_model_name_and_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a shipped model"):
        io.load_model("no_such_model", "growing")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(io.ModelFormatError, match="not a readable .npz"):
        io.load_model(str(bad), "growing")
    notjson = tmp_path / "m.json"
    notjson.write_text("{oops")
    with pytest.raises(io.ModelFormatError, match="not JSON"):
        io.load_model(str(notjson), "growing")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "layers-model"}))
    with pytest.raises(io.ModelFormatError, match="not a TF.js graph model"):
        io.load_model(str(other), "growing")
    with pytest.raises(ValueError, match="unknown model kind"):
        io.load_model(str(other), "lizard")
    nan = io.arrays_from_params(growing.init_growing_params(jax.random.PRNGKey(0)), "growing")
    nan["b1"] = np.full_like(nan["b1"], np.nan)
    with pytest.raises(io.ModelFormatError, match="non-finite"):
        io.params_from_arrays(nan, "growing")
