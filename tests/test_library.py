"""The library API of issue 13 (``import nca_adv``): models as values and their steps, a new
rule trained on the engine, saved, loaded and attacked, the weights file's refusals, the
step-transform algebra, and the MNIST helpers' contracts. Tiny grids, few steps."""

from __future__ import annotations

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nca_adv
from nca_adv import io
from nca_adv.attacks import perturbation
from nca_adv.evaluation import adversary_eval, guards, perturbation_eval
from nca_adv.io import targets
from nca_adv.models import architecture, growing, mnist
from nca_adv.training import jobs, runtime

# The growing configuration of test_engine.py / test_training.py (one tiny program).
TINY = growing.GrowingTrainConfig(
    pool_size=6, batch_size=2, min_steps=2, max_steps=3, damage_n=1, lr_decay_at=3
)
# A new rule: learned 3x3 perception, hidden 64, and a fire rate the shapes cannot show.
LEARNED = nca_adv.GrowingCA(hidden=64, perception="learned", perception_features=32, fire_rate=0.6)
ITERATIONS = 3


def _growing_state(key, shape=(2, 12, 12, 16)) -> jax.Array:
    """Random states with living and dead cells (alpha below 0.1 in places)."""
    return jax.random.uniform(key, shape, minval=-1.0, maxval=1.0)


def _digit(h: int = 28, w: int = 28) -> np.ndarray:
    """One synthetic grey digit in [0, 1]: a ring, alive (> 0.1) on about 60 cells."""
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    return np.clip(1.0 - np.abs(r - 6.0) / 2.0, 0.0, 1.0).astype(np.float32)


def _flat_arrays(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# ----------------------------------------------------------------------------- default models
def test_default_models_step_as_the_legacy_steps():
    """``make_step`` / ``CA.step`` of the default models are the old steps bit for bit."""
    key = jax.random.PRNGKey(0)
    lizard = io.load_ca("lizard", "growing")
    assert lizard.model == nca_adv.GrowingCA() and isinstance(lizard, nca_adv.CA)
    x = _growing_state(jax.random.PRNGKey(1))
    # Jitted (an eager step compiles each of its many small operations on its own).
    want = np.asarray(jax.jit(growing.growing_step)(lizard.params, x, key))
    made = jax.jit(lambda p, x, k: nca_adv.make_step(nca_adv.GrowingCA(), p)(x, k))
    np.testing.assert_array_equal(made(lizard.params, x, key), want)
    # A CA is a pytree: it passes through jit (the model as static structure).
    np.testing.assert_array_equal(jax.jit(lambda ca, x, k: ca.step(x, k))(lizard, x, key), want)
    assert not np.array_equal(want, x)  # the step does something

    classifier = io.load_ca("mnist", "mnist")
    assert classifier.model == nca_adv.MnistCA()
    xm = mnist.seed_states(np.stack([_digit(), _digit()[::-1]]))
    want = np.asarray(jax.jit(mnist.mnist_step)(classifier.params, xm, key))
    made = jax.jit(lambda p, x, k: nca_adv.make_step(nca_adv.MnistCA(), p)(x, k))
    np.testing.assert_array_equal(made(classifier.params, xm, key), want)
    np.testing.assert_array_equal(
        jax.jit(lambda ca, x, k: ca.step(x, k))(classifier, xm, key), want
    )


def test_public_rollout_equals_the_model_rollout():
    lizard = io.load_ca("lizard", "growing")
    seed, key = growing.seed_state(16, 16), jax.random.PRNGKey(3)
    mine = nca_adv.rollout(lizard.step, seed, key, 5, trajectory=True)
    assert mine.shape == (5, 16, 16, 16)
    np.testing.assert_allclose(mine[-1], growing.rollout(lizard.params, seed, key, 5), atol=1e-6)
    with pytest.raises(ValueError, match="steps"):
        nca_adv.rollout(lizard.step, seed, key, -1)


# ----------------------------------------------------------------------------- a new rule
@pytest.fixture(scope="module")
def learned_job():
    return jobs.growing_job(["lizard"], [0], TINY, padding=0, model=LEARNED)


@pytest.fixture(scope="module")
def trained(learned_job):
    """The new rule trained in memory on the engine: (params, losses)."""
    result = jobs.train_job(learned_job, ITERATIONS)
    assert list(result.params) == ["0"]
    return result.params["0"], result.metrics["0"]["loss"]


def test_new_rule_trains_on_the_engine(trained):
    params, losses = trained
    architecture.check_params(LEARNED, params)  # every parameter of the new rule, no other
    assert params["perceive_kernel"].shape == (3, 3, 16, 32)
    assert params["dense1"]["kernel"].shape == (32, 64)
    assert losses.shape == (ITERATIONS,) and np.all(np.isfinite(losses))
    assert np.any(params["dense2"]["kernel"] != 0)  # zero-initialised: it was trained


def test_train_job_equals_run_job(learned_job, trained, tmp_path):
    """In memory (``train_job``) and with files (``run_job``): the same losses and params."""
    params, losses = trained
    summary = jobs.run_job(learned_job, tmp_path, ITERATIONS, chunk=ITERATIONS)
    records = runtime.read_metrics(tmp_path / "metrics.jsonl")
    np.testing.assert_allclose([r["loss"] for r in records], losses, rtol=1e-6)
    config = json.loads((tmp_path / "config.json").read_text())
    assert architecture.from_dict(config["architecture"]) == LEARNED
    saved = io.load_ca(summary["0"]["result"], "growing")
    assert saved.model == LEARNED
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), saved.params, params)


def test_new_rule_saves_and_loads_with_its_architecture(trained, tmp_path):
    params, _ = trained
    path = tmp_path / "rule.npz"
    io.save_params(path, params, "growing", LEARNED)
    ca = io.load_ca(str(path), "growing")
    assert ca.model == LEARNED  # hidden 64, learned perception and fire rate 0.6
    jax.tree.map(np.testing.assert_array_equal, ca.params, params)
    assert io.read_npz(path, "growing").model == LEARNED
    with pytest.raises(io.ModelFormatError, match="growing"):
        io.load_ca(str(path), "mnist")


def test_evaluations_take_the_new_rule(trained):
    """The attack evaluations run a CA of any architecture: adversarial cells (the shipped
    lizard as the adversary) and a perturbation sweep."""
    ca = nca_adv.CA(LEARNED, trained[0])
    lizard = io.load_ca("lizard", "growing")
    target = targets.load_target("lizard", size=12, padding=2)  # 16x16
    key = jax.random.PRNGKey(5)
    none = adversary_eval.growing_attack(
        ca, lizard, target, key, runs=2, p=0.0, grow_first=3, steps=3
    )
    full = adversary_eval.growing_attack(
        ca, lizard, target, key, runs=2, p=1.0, grow_first=3, steps=3
    )
    assert full.states.shape == (2, 16, 16, 16) and full.masks.shape == (2, 16, 16, 1)
    assert not none.masks.any()
    np.testing.assert_array_equal(full.masks[0, ..., 0], target[..., 3] >= 0.1)
    np.testing.assert_array_equal(none.grown, full.grown)  # the same growth before injection
    assert not np.array_equal(none.states, full.states)

    seeds = jnp.broadcast_to(LEARNED.seed(16, 16), (2, 16, 16, 16))
    keys = jax.random.split(key, 2)
    mats = jnp.stack([jnp.eye(16), perturbation.load_matrix("tail")])
    out = perturbation_eval.sweep(ca, mats, seeds, keys, 3, target, target)
    assert out["loss"].shape == (2, 2) and np.all(np.isfinite(out["loss"]))
    # The unperturbed reference is the new rule's own rollout.
    np.testing.assert_allclose(
        out["base"][1], nca_adv.rollout(ca.step, seeds[1], keys[1], 3), atol=1e-6
    )


# ----------------------------------------------------------------------------- the weights file
def _misfit(params: dict, change: str) -> tuple[dict, str]:
    """``params`` with one parameter added, removed or misshaped; the name an error gives."""
    p = copy.deepcopy(jax.tree.map(np.asarray, params))
    if change == "extra":
        p["dense3"] = {"kernel": np.zeros((4, 4), np.float32)}
        return p, "dense3/kernel"
    if change == "missing":
        del p["dense1"]["bias"]
        return p, "dense1/bias"
    p["dense1"]["kernel"] = p["dense1"]["kernel"][:-1]
    return p, "dense1/kernel"


@pytest.mark.parametrize("change", ["extra", "missing", "misshaped"])
def test_save_refuses_params_that_do_not_fit(trained, change, tmp_path):
    for model, params in ((LEARNED, trained[0]), (None, io.load_model("lizard", "growing"))):
        bad, name = _misfit(params, change)
        path = tmp_path / "bad.npz"
        with pytest.raises(io.ModelFormatError, match=name):
            io.save_params(path, bad, "growing", model)
        assert not path.exists()


# file key -> its replacement; None removes it
_FILE_CHANGES = {
    "learned": {
        "extra": ("param/dense3/kernel", np.zeros((4, 4), np.float32), "dense3/kernel"),
        "missing": ("param/dense1/bias", None, "dense1/bias"),
        "misshaped": ("param/dense1/kernel", np.zeros((31, 64), np.float32), "dense1/kernel"),
    },
    "default": {
        "extra": ("w3", np.zeros((4, 4), np.float32), "w3"),
        "missing": ("b2", None, "b2"),
        "misshaped": ("w1", np.zeros((47, 128), np.float32), "w1"),
    },
}


@pytest.mark.parametrize("layout", ["learned", "default"])
@pytest.mark.parametrize("change", ["extra", "missing", "misshaped"])
def test_load_refuses_files_that_do_not_fit(trained, layout, change, tmp_path):
    good = tmp_path / "good.npz"
    if layout == "learned":
        io.save_params(good, trained[0], "growing", LEARNED)
    else:
        io.save_params(good, io.load_model("lizard", "growing"), "growing")
    arrays = _flat_arrays(good)
    key, value, name = _FILE_CHANGES[layout][change]
    assert (key in arrays) == (change != "extra")
    if value is None:
        del arrays[key]
    else:
        arrays[key] = value
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(io.ModelFormatError, match=name) as e:
        io.load_ca(str(bad), "growing")
    assert "\n" not in str(e.value)  # one line for the launches' `error: ...`


def test_shipped_models_load_unchanged():
    shipped = io.shipped_models()
    assert {"lizard", "mnist", "mnist_adversary"} <= set(shipped)
    for name, path in shipped.items():
        arrays = _flat_arrays(path)
        kind = str(arrays.pop("kind"))
        ca = io.load_ca(name, kind)
        assert ca.model == architecture.default(kind), name
        arrays.pop("architecture", None)
        for key, a in io.arrays_from_params(ca.params, kind).items():
            np.testing.assert_array_equal(a, arrays[key], err_msg=f"{name}: {key}")


# reference npz -> the authors' TF.js file holding the same weights
_REFERENCE_MODELS = {
    "growing_lizard_base.npz": "growing_lizard_base_model.json",
    "growing_lizard_adversary_no_tail_10pct.npz": "no_tail_model.json",
    "growing_lizard_adversary_red_10pct.npz": "red_model.json",
    "growing_lizard_adversary_red_60pct.npz": "red_model_60perc.json",
    "mnist_base.npz": "mnist_base_model.json",
    "mnist_adversary.npz": "mnist_adversary_model.json",
}


@pytest.mark.parametrize("npz_name", sorted(_REFERENCE_MODELS))
def test_reference_models_load_unchanged(reference, npz_name):
    kind = "mnist" if npz_name.startswith("mnist") else "growing"
    npz = reference / "npz" / npz_name
    from_npz = io.load_ca(str(npz), kind)
    from_json = io.load_ca(str(reference / "original" / _REFERENCE_MODELS[npz_name]), kind)
    assert from_npz.model == from_json.model == architecture.default(kind)
    raw = _flat_arrays(npz)
    for key, a in io.arrays_from_params(from_npz.params, kind).items():
        np.testing.assert_array_equal(a, raw[key].reshape(a.shape), err_msg=f"{npz_name}: {key}")
    jax.tree.map(np.testing.assert_array_equal, from_npz.params, from_json.params)


def test_reference_perturbations_load_unchanged(reference):
    stacked = _flat_arrays(reference / "npz" / "growing_lizard_perturbations.npz")
    for name in perturbation.SHIPPED_NAMES:
        a = perturbation.load_matrix(str(reference / "original" / f"{name}_sym_t.npy"))
        np.testing.assert_array_equal(a, stacked[name], err_msg=name)


# ----------------------------------------------------------------------------- transforms
def test_chain_applies_the_first_transform_innermost():
    def base(x, key):
        return x + 1.0

    def double_first(step):
        return lambda x, key: step(2.0 * x, key)

    def add_ten_first(step):
        return lambda x, key: step(x + 10.0, key)

    key, x = jax.random.PRNGKey(0), jnp.ones(3)
    # chain(t1, t2)(base) = t2(t1(base)): t2 acts first on the state, then t1, then base.
    np.testing.assert_array_equal(nca_adv.chain(double_first, add_ten_first)(base)(x, key), 23.0)
    np.testing.assert_array_equal(nca_adv.chain(add_ten_first, double_first)(base)(x, key), 13.0)
    assert nca_adv.identity()(base) is base
    assert nca_adv.chain()(base) is base
    assert nca_adv.chain(nca_adv.identity(), double_first)(base)(x, key)[0] == 3.0
    with pytest.raises(TypeError, match="argument 1"):
        nca_adv.chain(double_first, "not a transform")


def test_chain_of_attacks_is_their_nesting():
    lizard = io.load_ca("lizard", "growing")
    key = jax.random.PRNGKey(2)
    x = _growing_state(jax.random.PRNGKey(4))
    mask = (jax.random.uniform(jax.random.PRNGKey(5), (12, 12, 1)) < 0.3).astype(jnp.float32)
    a = perturbation.load_matrix("tail")

    def adversary(x, k):  # any step will do for the algebra
        return 0.5 * x

    attack = nca_adv.with_adversaries(adversary, mask)
    composed = nca_adv.chain(attack, nca_adv.perturb(a))(lizard.step)
    nested = nca_adv.perturb(a)(attack(lizard.step))
    np.testing.assert_array_equal(composed(x, key), nested(x, key))
    other = nca_adv.chain(nca_adv.perturb(a), attack)(lizard.step)
    assert not np.array_equal(other(x, key), composed(x, key))  # the order matters


def test_perturb_identity_without_clip_and_not_with_it():
    """``perturb(I, clip=None)`` leaves a state unchanged; ``perturb(I)`` clips |x| > 3."""
    x = np.zeros((10, 10, 16), np.float32)
    x[3:7, 3:7] = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (4, 4, 16), maxval=2.0))
    x[3:7, 3:7, 3] = 1.0  # alive, and every non-zero cell is alive
    x[4, 4, 7] = 5.0  # a hidden channel beyond the clip
    key, eye = jax.random.PRNGKey(1), jnp.eye(16)

    def keep(x, key):
        return x

    np.testing.assert_array_equal(nca_adv.perturb(eye, clip=None)(keep)(x, key), x)
    clipped = np.asarray(nca_adv.perturb(eye)(keep)(x, key))
    assert clipped[4, 4, 7] == 3.0
    assert not np.array_equal(clipped, x)
    inside = np.clip(x, -3.0, 3.0)  # within [-3, 3] the clipped form is the identity too
    np.testing.assert_array_equal(nca_adv.perturb(eye)(keep)(inside, key), inside)


# ----------------------------------------------------------------------------- MNIST helpers
def test_votes_are_int8_with_minus_one_on_dead_cells():
    grey = np.zeros((4, 5), np.float32)
    grey[1:3, 1:4] = 0.8
    x = np.zeros((4, 5, 20), np.float32)
    x[..., 0] = grey
    x[1, 1, 10] = 1.0  # class 0 on an alive cell
    x[2, 3, 19] = 1.0  # class 9
    x[0, 0, 15] = 1.0  # a dead cell's scores do not vote
    v = np.asarray(mnist.votes(jnp.asarray(x)))
    assert v.dtype == np.int8 and v.shape == (4, 5)
    assert v[1, 1] == 0 and v[2, 3] == 9
    np.testing.assert_array_equal(v[grey <= 0.1], mnist.DEAD_VOTE)
    assert mnist.DEAD_VOTE == -1 and (v[grey > 0.1] >= 0).all()


def test_seed_states_refuse_raw_bytes():
    raw = (_digit() * 255).astype(np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        mnist.seed_states(raw)
    with pytest.raises(ValueError, match="x / 255"):
        mnist.seed_states(raw.astype(np.float32))
    one = mnist.seed_states(_digit())
    assert one.shape == (28, 28, 20)
    np.testing.assert_array_equal(one[..., 0], _digit())
    assert not np.any(one[..., 1:])


def test_mnist_rollout_jittable_and_on_one_state():
    params = io.load_model("mnist", "mnist")
    key = jax.random.PRNGKey(0)
    x = mnist.seed_states(_digit())  # one state (28, 28, 20)
    one = mnist.rollout(params, x, key, 3)  # alive cells, K found on the host
    assert one.shape == (28, 28, 20) and not np.array_equal(one, x)
    np.testing.assert_array_equal(one, mnist.rollout(params, x[None], key, 3)[0])
    # Under jit: the whole-grid step, or the alive cells with K given; the same result.
    whole_grid = jax.jit(lambda x: mnist.rollout(params, x, key, 3))(x)
    k = mnist.cells_needed(_digit())
    cells = jax.jit(lambda x: mnist.rollout(params, x, key, 3, cells=k))(x)
    np.testing.assert_allclose(whole_grid, one, atol=1e-5)
    np.testing.assert_allclose(cells, one, atol=1e-5)


# ----------------------------------------------------------------------------- guards
def test_divergence_on_finite_exploded_and_nan_states():
    ok = guards.divergence(np.full((2, 4, 4, 16), 2.5, np.float32))
    assert ok == {"diverged": False, "max_abs": 2.5, "first_step": None}

    exploded = np.zeros((3, 4, 4, 16), np.float32)
    exploded[1:] = 1e6
    per_step = guards.max_abs_per_step(exploded)
    np.testing.assert_array_equal(per_step, [0.0, 1e6, 1e6])
    info = guards.divergence(exploded[-1], per_step)
    assert info == {"diverged": True, "max_abs": 1e6, "first_step": 2}

    nan = np.zeros((4, 4, 16), np.float32)
    nan[0, 0, 0] = np.nan
    info = guards.divergence(nan)
    assert info["diverged"] and info["max_abs"] is None
    trajectory = np.stack([np.zeros_like(nan), nan])
    assert guards.divergence(nan, guards.max_abs_per_step(trajectory))["first_step"] == 2
