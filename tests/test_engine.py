"""The training engine (nca_adv.training.engine, nca_adv.training.fit, nca_adv.training.jobs): exact resume of the
MNIST trainer, sweeps equal to their single runs, attack recipes that train only the
attack, and placement over several (fake CPU) devices."""

import functools
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from nca_adv import io
from nca_adv.io import data
from nca_adv.models import growing, mnist
from nca_adv.training import engine, fit, jobs, runtime, trainers

ROOT = Path(__file__).resolve().parents[1]
# The growing configuration of test_training.py (keep them equal: one compiled program
# then serves both files), on 40x40 targets.
# Learning rates drop inside every run below, so the optimiser's step count matters.
TINY = growing.GrowingTrainConfig(
    pool_size=6, batch_size=2, min_steps=2, max_steps=3, damage_n=1, lr_decay_at=3
)
# The attack recipes run on 12x12 grids; the device test splits a batch of 8 (12x12).
DEVICES = TINY._replace(pool_size=16, batch_size=8)
MNIST_TINY = mnist.MnistTrainConfig(
    pool_size=8, batch_size=4, steps=3, new_n=1, mutate_n=1, lr_decays_at=(3,)
)


# ----------------------------------------------------------------------------- helpers
def _target(shift: int = 0) -> np.ndarray:
    t = np.zeros((12, 12, 4), np.float32)
    t[3 + shift : 8 + shift, 4:8] = [0.5, 0.2, 0.1, 1.0]
    return t


def _random_params(params, key):
    """Fresh parameters with every leaf perturbed (the last layers start at zero), so a
    frozen base CA actually changes the state."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return tree.unflatten([p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


def _digits():
    """20 synthetic 10x10 uint8 digits: blobs of different sizes, labels 0..9."""
    rng = np.random.default_rng(0)
    images = np.zeros((20, 10, 10), np.uint8)
    for i in range(20):
        h, w = rng.integers(3, 7, 2)
        images[i, 2 : 2 + h, 2 : 2 + w] = rng.integers(60, 256, (h, w))
    return images, rng.integers(0, 10, 20)


def _assert_trees_equal(a, b):
    a, b = jax.device_get(a), jax.device_get(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _array_leaves(tree) -> list[tuple[int, ...]]:
    """Shapes of the non-scalar leaves (Adam's moments; not its step count)."""
    return sorted(np.shape(a) for a in jax.tree.leaves(tree) if np.ndim(a) > 0)


# ----------------------------------------------------------------------------- MNIST resume
@pytest.fixture(scope="module")
def mnist_setup():
    images, labels = _digits()
    cells = mnist.cells_needed(data.to_float(images))
    return trainers.mnist_shared(images, labels), cells


def _mnist_fit(shared, cells, workdir, iterations, resume=False):
    return fit.fit(
        trainers.mnist_recipe(MNIST_TINY, cells),
        shared,
        [fit.Run("0", 0, {})],
        workdir,
        iterations,
        chunk=2,
        checkpoint_every=2,
        resume=resume,
    )


@pytest.fixture(scope="module")
def mnist_straight(mnist_setup, tmp_path_factory):
    shared, cells = mnist_setup
    workdir = tmp_path_factory.mktemp("mnist") / "straight"
    return jax.device_get(_mnist_fit(shared, cells, workdir, 4)), workdir


def test_mnist_resume_is_exact(mnist_setup, mnist_straight, tmp_path, count_chunks):
    shared, cells = mnist_setup
    straight, straight_dir = mnist_straight
    _mnist_fit(shared, cells, tmp_path, 2)  # "killed" after iteration 2, a checkpoint
    ran = count_chunks()
    resumed = _mnist_fit(shared, cells, tmp_path, 4, resume=True)
    assert sum(ran) == 2  # only iterations 3 and 4 ran
    _assert_trees_equal(straight, resumed)
    assert (tmp_path / "metrics.jsonl").read_bytes() == (
        straight_dir / "metrics.jsonl"
    ).read_bytes()
    pool = straight["pool"]
    assert sorted(pool) == ["label", "x"]
    assert pool["label"].dtype == np.int32 and pool["x"].shape == (1, 8, 10, 10, mnist.CHANNELS)
    assert np.abs(pool["x"][..., 1:]).sum() > 0  # states evolved and were written back


# ----------------------------------------------------------------------------- sweeps
def test_job_builders_name_runs_and_record_config():
    job = jobs.growing_job(["lizard", "lizard_red"], [0, 1], TINY, padding=0)
    names = [r.name for r in job.runs]
    assert names == ["lizard_seed0", "lizard_seed1", "lizard_red_seed0", "lizard_red_seed1"]
    assert [r.seed for r in job.runs] == [0, 1, 0, 1]
    assert job.runs[0].consts["target"].shape == (40, 40, 4)
    assert not np.array_equal(job.runs[0].consts["target"], job.runs[2].consts["target"])
    for key in ("targets", "seeds", "lr", "batch_size", "min_steps", "damage_n", "padding"):
        assert key in job.config, key
    assert job.config["seeds"] == [0, 1]
    single = jobs.growing_job(["lizard"], [3], TINY, padding=0)
    assert [(r.name, r.seed) for r in single.runs] == [("0", 3)]
    assert fit.run_dirs("w", single.runs) == [Path("w")]

    images, labels = _digits()
    splits = data.MnistSplits(images, labels, images[:2], labels[:2])
    job = jobs.mnist_job(None, [0, 1, 2], MNIST_TINY, step_form="alive", splits=splits)
    assert [r.name for r in job.runs] == ["seed0", "seed1", "seed2"]
    assert job.config["cells"] == 32 and job.config["seeds"] == [0, 1, 2]
    grid = jobs.mnist_job(None, [0], MNIST_TINY, step_form="grid", splits=splits)
    assert grid.config["cells"] is None
    with pytest.raises(ValueError, match="step form"):
        jobs.mnist_job(None, [0], MNIST_TINY, step_form="dense", splits=splits)


def _assert_params_close(a, b):
    """Parameters of two programs that differ only in float rounding. Adam moves each
    weight by ~lr in the direction of its gradient's sign, so a weight whose gradient is
    rounding noise may move either way: allow a few of those, and nothing else."""
    for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
        far = ~np.isclose(x, y, rtol=1e-5, atol=1e-6)
        assert far.mean() <= 0.01, f"{far.sum()} of {far.size} weights differ"


def test_sweep_runs_equal_single_runs(tmp_path):
    """Seeds [0, 1] x 2 targets trained as one program (one fit call) equal the four runs
    trained alone; each run writes run_<name>/metrics.jsonl and params.npz."""
    job = jobs.growing_job(["lizard", "lizard_red"], [0, 1], TINY, padding=0)
    summary = jobs.run_job(job, tmp_path, 4, chunk=1, checkpoint_every=2)
    assert sorted(summary) == sorted(r.name for r in job.runs)
    assert json.loads((tmp_path / "config.json").read_text())["runs"] == [r.name for r in job.runs]

    chunk = engine.make_chunk(job.recipe, 1, 1)  # the single runs, as fit trains them
    finals = []
    for run in job.runs:
        folder = tmp_path / f"run_{run.name}"
        consts = engine.stack_runs([run.consts])
        key = jax.random.PRNGKey(run.seed)[None]
        state = engine.init_states(job.recipe, key, job.shared, consts)
        losses = []
        for _ in range(4):
            state, metrics = chunk(state, job.shared, consts)
            losses.append(float(np.asarray(metrics["loss"])[0, 0]))
        records = runtime.read_metrics(folder / "metrics.jsonl")
        assert [r["iteration"] for r in records] == [1, 2, 3, 4]
        np.testing.assert_allclose([r["loss"] for r in records], losses, rtol=1e-5)
        assert summary[run.name]["final_loss"] == records[-1]["loss"]
        assert summary[run.name]["result"] == str(folder / "params.npz")
        saved = io.load_model(str(folder / "params.npz"), "growing")
        _assert_params_close(engine.run_slice(state["params"], 0), saved)
        finals.append(losses[-1])
    assert len(set(finals)) == len(job.runs)  # the runs differ: seeds and targets reach them


# ----------------------------------------------------------------------------- attacks
def _compiled(recipe):
    """One run's jitted ``engine.init_state`` and ``engine.iteration``, compiled once per
    recipe (the run constants, e.g. the adversary fraction, are traced arguments), without
    XLA's backend optimisations: they run for milliseconds, and compile ~3x faster."""
    fast = {"xla_backend_optimization_level": 0}
    init = jax.jit(functools.partial(engine.init_state, recipe), compiler_options=fast)
    step = jax.jit(functools.partial(engine.iteration, recipe), compiler_options=fast)
    return init, step


def _train_alone(compiled, shared, run, iterations, seed=0):
    """(initial state, final state) of ``iterations`` engine iterations of one run."""
    init, step = compiled
    state = first = init(jax.random.PRNGKey(seed), shared, run)
    for _ in range(iterations):
        state, metrics = step(state, shared, run)
        assert np.isfinite(float(metrics["loss"]))
    return jax.device_get(first), jax.device_get(state)


def _grown(key) -> jax.Array:
    """A stand-in grown lizard: random living cells in a square."""
    x = jax.random.uniform(key, (12, 12, 16))
    inside = np.zeros((12, 12, 1), np.float32)
    inside[3:9, 3:9] = 1.0
    return (x * inside).at[..., 3].set(inside[..., 0])


def _changed(a, b) -> bool:
    return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _base(init_params):
    return _random_params(init_params(jax.random.PRNGKey(1)), jax.random.PRNGKey(2))


def test_growing_adversary_trains_only_the_adversary():
    compiled = _compiled(trainers.growing_adversary_recipe(TINY))
    base = _base(growing.init_growing_params)
    base_copy = jax.device_get(base)
    shared = {"base": base, "grown": _grown(jax.random.PRNGKey(3))}
    adversary = growing.init_growing_params(jax.random.PRNGKey(0))

    for fraction in (0.5, 0.0):
        run = {"target": _target(), "fraction": np.float32(fraction)}
        first, last = _train_alone(compiled, shared, run, 3)
        assert jax.tree.structure(last["params"]) == jax.tree.structure(adversary)
        # Adam holds two moments of the adversary's parameters and of nothing else.
        assert _array_leaves(last["opt_state"]) == sorted(2 * _array_leaves(adversary))
        masks = last["pool"]["mask"]
        assert masks.shape == (6, 12, 12, 1)
        assert not np.any(masks[..., 0] * (_target()[..., 3] < 0.1))  # only on the target
        if fraction == 0.0:
            # No adversary cell: its gradient is exactly zero, so Adam leaves it as it was
            # (a non-zero gradient is normalised to unit norm and would move it).
            assert not masks.any()
            _assert_trees_equal(first["params"], last["params"])
        else:
            assert masks.any()
            assert _changed(first["params"], last["params"])
    _assert_trees_equal(base_copy, shared["base"])


def test_perturbation_trains_only_the_matrix():
    compiled = _compiled(trainers.perturbation_recipe(TINY))
    base = _base(growing.init_growing_params)
    base_copy = jax.device_get(base)
    seed = growing.seed_state(12, 12)
    shared = {"base": base, "seed": seed, "grown": _grown(jax.random.PRNGKey(3))}
    first, last = _train_alone(compiled, shared, {"target": _target()}, 3)

    np.testing.assert_array_equal(first["params"], np.eye(16))
    np.testing.assert_array_equal(first["pool"]["x"][:3], np.broadcast_to(seed, (3, 12, 12, 16)))
    grown = np.broadcast_to(shared["grown"], (3, 12, 12, 16))
    np.testing.assert_array_equal(first["pool"]["x"][3:], grown)
    m = last["params"]
    assert m.shape == (16, 16) and not np.array_equal(m, np.eye(16))
    np.testing.assert_array_equal(m, m.T)  # the gradient of (M + M^T)/2 is symmetric
    assert _array_leaves(last["opt_state"]) == [(16, 16), (16, 16)]
    _assert_trees_equal(base_copy, shared["base"])


def test_mnist_adversary_keeps_masks_through_mutation(mnist_setup):
    """Whole-grid step (cells=None; the resume test uses the alive-cell step)."""
    shared, _ = mnist_setup
    base = _base(mnist.init_mnist_params)
    base_copy = jax.device_get(base)
    shared = {**shared, "base": base}
    init, step = compiled = _compiled(trainers.mnist_adversary_recipe(MNIST_TINY, None, 8))
    run = {"fraction": np.float32(0.5)}
    before = jax.device_get(init(jax.random.PRNGKey(0), shared, run))
    after = jax.device_get(step(before, shared, run)[0])

    # The slots this iteration drew, as engine.iteration draws them.
    k_idx = jax.random.split(before["key"], 4)[1]
    size, batch, new_n = MNIST_TINY.pool_size, MNIST_TINY.batch_size, MNIST_TINY.new_n
    idx = np.asarray(jax.random.choice(k_idx, size, (batch,), replace=False))
    fresh, kept = idx[:new_n], idx[new_n:]  # kept: the last mutate_n are mutated
    old, new = before["pool"], after["pool"]
    np.testing.assert_array_equal(new["mask"][kept], old["mask"][kept])
    assert not np.array_equal(new["mask"][fresh], old["mask"][fresh])  # fresh digit, new mask
    others = np.setdiff1d(np.arange(size), idx)
    for name in ("x", "label", "mask"):
        np.testing.assert_array_equal(new[name][others], old[name][others])
    assert not np.array_equal(new["x"][kept], old["x"][kept])  # the batch was written back

    # Only the adversary is trained; with no adversary cell its gradient is zero.
    adversary = mnist.init_mnist_params(jax.random.PRNGKey(0))
    assert _array_leaves(after["opt_state"]) == sorted(2 * _array_leaves(adversary))
    assert _changed(before["params"], after["params"])
    first, still = _train_alone(compiled, shared, {"fraction": np.float32(0.0)}, 2)
    assert not still["pool"]["mask"].any()
    _assert_trees_equal(first["params"], still["params"])
    _assert_trees_equal(base_copy, shared["base"])


# ----------------------------------------------------------------------------- devices
DEVICES_SCRIPT = r"""
import json, sys
from pathlib import Path
import jax
jax.config.update("jax_num_cpu_devices", 8)
import numpy as np
from nca_adv.models import growing
from nca_adv.training import fit, trainers, runtime

wd = Path(sys.argv[1])
recipe_config = growing.GrowingTrainConfig(*json.loads(sys.argv[2]))
recipe = trainers.growing_recipe(recipe_config)
shared = {"seed": growing.seed_state(12, 12)}

def run(name, seed, shift):
    t = np.zeros((12, 12, 4), np.float32)
    t[3 + shift : 8 + shift, 4:8] = [0.5, 0.2, 0.1, 1.0]
    return fit.Run(name, seed, {"target": t})

one, sweep = [run("one", 0, 0)], [run("a", 0, 0), run("b", 1, 2)]

def train(name, runs, n, mesh, resume=False):
    s = fit.fit(recipe, shared, runs, wd / name, n, chunk=1, checkpoint_every=2,
                resume=resume, mesh=mesh)
    devices = sorted({len(a.sharding.device_set) for a in jax.tree.leaves(s)})
    metrics = [(d / "metrics.jsonl").read_text() for d in fit.run_dirs(wd / name, runs)]
    return jax.device_get(s), metrics, devices

def equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

def far(a, b):  # the largest share of weights not close, over the leaves
    return max(float(np.mean(~np.isclose(x, y, rtol=1e-5, atol=1e-6)))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

def losses(metrics):
    return [[json.loads(l)["loss"] for l in m.splitlines()] for m in metrics]

mesh = {n: runtime.data_mesh(n) for n in (1, 2, 8)}
out = {"devices": len(jax.devices())}
# One run, its batch of 8 split over 8 devices, against one device.
s1, m1, d1 = train("one_d1", one, 4, mesh[1])
s8, m8, d8 = train("one_d8", one, 4, mesh[8])
out.update(one_d1=losses(m1), one_d8=losses(m8), one_d1_devices=d1, one_d8_devices=d8,
           one_far=far(s1["params"], s8["params"]))
# Resume on a 2-device mesh (batch split, state replicated): bit for bit.
s, m, _ = train("one_d2", one, 4, mesh[2])
train("one_d2_resumed", one, 2, mesh[2])
r, rm, rd = train("one_d2_resumed", one, 4, mesh[2], resume=True)
out.update(one_d2_resume_equal=equal(s, r) and m == rm, one_d2_resumed_devices=rd)
# A sweep of 2 runs, one per device, against the same sweep on one device; and its
# resume on the 2 devices.
s2, m2, d2 = train("sweep_d2", sweep, 4, mesh[2])
s1, m1, _ = train("sweep_d1", sweep, 4, None)
train("sweep_d2_resumed", sweep, 2, mesh[2])
r2, rm2, _ = train("sweep_d2_resumed", sweep, 4, mesh[2], resume=True)
out.update(sweep_d2=losses(m2), sweep_d1=losses(m1), sweep_d2_devices=d2,
           sweep_far=far(s2["params"], s1["params"]),
           sweep_d2_resume_equal=equal(s2, r2) and m2 == rm2)
# A batch of 6 cannot be split over 8 devices: refused before any file is written.
bad = trainers.growing_recipe(recipe_config._replace(batch_size=6))
try:
    fit.fit(bad, shared, one, wd / "bad", 2, mesh=mesh[8])
    out["batch6"] = None
except ValueError as e:
    out["batch6"] = str(e)
out["batch6_wrote"] = (wd / "bad").exists()
print(json.dumps(out))
"""


def test_devices_batch_split_sweep_and_resume(tmp_path, subprocess_env):
    """On 8 fake CPU devices (12x12 grids): the same losses with the batch of 8 split
    over 8 devices as on one; resume bit-exact on a 2-device mesh, with the batch split
    and with a sweep of 2 runs, one per device; that sweep equals the same sweep on one
    device."""
    env = subprocess_env(optimise=False)
    res = subprocess.run(
        [sys.executable, "-c", DEVICES_SCRIPT, str(tmp_path), json.dumps(list(DEVICES))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    assert out["one_d1_devices"] == [1] and out["one_d8_devices"] == [8]
    assert len(out["one_d1"][0]) == 4
    np.testing.assert_allclose(out["one_d8"], out["one_d1"], rtol=1e-4)
    assert out["one_far"] <= 0.01, out["one_far"]
    assert out["one_d2_resume_equal"] and out["one_d2_resumed_devices"] == [2]
    assert out["sweep_d2_devices"] == [2]
    np.testing.assert_allclose(out["sweep_d2"], out["sweep_d1"], rtol=1e-5)
    assert out["sweep_d2"][0] != out["sweep_d2"][1]  # two different runs
    assert out["sweep_far"] <= 0.01, out["sweep_far"]
    assert out["sweep_d2_resume_equal"]
    assert out["batch6"] and "not divisible by 8" in out["batch6"]
    assert not out["batch6_wrote"]
