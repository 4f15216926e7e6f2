"""The hardened MNIST CA (trainers.mnist_hardened_recipe, jobs.mnist_hardened_job, the
train_mnist_hardened launch): exact resume, each player trained on its own loss only,
the masks' shares, and bad settings refused in one line. Tiny synthetic digits."""

import functools
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from nca_adv import io
from nca_adv.io import data
from nca_adv.models import mnist
from nca_adv.training import engine, fit, jobs, trainers

TINY = mnist.MnistTrainConfig(
    pool_size=8, batch_size=4, steps=3, new_n=1, mutate_n=1, lr_decays_at=(3,)
)


def _digits():
    """20 synthetic 10x10 uint8 digits: blobs of different sizes, labels 0..9."""
    rng = np.random.default_rng(0)
    images = np.zeros((20, 10, 10), np.uint8)
    for i in range(20):
        h, w = rng.integers(3, 7, 2)
        images[i, 2 : 2 + h, 2 : 2 + w] = rng.integers(60, 256, (h, w))
    return images, rng.integers(0, 10, 20)


def _params(seed: int) -> dict:
    """MNIST CA parameters with every leaf non-zero (the last kernel starts at zero), so
    each player actually changes the state."""
    params = mnist.init_mnist_params(jax.random.PRNGKey(seed))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 100), len(leaves))
    return tree.unflatten([p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def setup():
    images, labels = _digits()
    cells = mnist.cells_needed(data.to_float(images))
    shared = trainers.mnist_shared(images, labels, base=_params(1), adversary=_params(2))
    return shared, cells


def _fit(shared, cells, workdir, iterations, resume=False):
    return fit.fit(
        trainers.mnist_hardened_recipe(TINY, cells, max_fraction=0.5, clean_share=0.25),
        shared,
        [fit.Run("0", 0, {})],
        workdir,
        iterations,
        chunk=2,
        checkpoint_every=2,
        resume=resume,
    )


def _equal(a, b):
    a, b = jax.device_get(a), jax.device_get(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_hardened_resume_is_exact(setup, tmp_path):
    shared, cells = setup
    straight = jax.device_get(_fit(shared, cells, tmp_path / "straight", 4))
    _fit(shared, cells, tmp_path / "resumed", 2)  # "killed" after the checkpoint at 2
    resumed = _fit(shared, cells, tmp_path / "resumed", 4, resume=True)
    _equal(straight, resumed)
    lines = (tmp_path / "straight" / "metrics.jsonl").read_bytes()
    assert (tmp_path / "resumed" / "metrics.jsonl").read_bytes() == lines
    assert b"base_loss" in lines and b"adversary_loss" in lines
    assert sorted(straight["params"]) == ["adversary", "base"]
    assert sorted(straight["pool"]) == ["label", "mask", "x"]


def _compiled(recipe):
    fast = {"xla_backend_optimization_level": 0}
    init = jax.jit(functools.partial(engine.init_state, recipe), compiler_options=fast)
    step = jax.jit(functools.partial(engine.iteration, recipe), compiler_options=fast)
    return init, step


def _changed(a, b) -> bool:
    return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _two_iterations(shared, max_fraction, clean_share):
    recipe = trainers.mnist_hardened_recipe(
        TINY, None, max_fraction=max_fraction, clean_share=clean_share
    )
    init, step = _compiled(recipe)
    first = init(jax.random.PRNGKey(0), shared, {})
    state = first
    for _ in range(2):
        state, metrics = step(state, shared, {})
        assert np.isfinite(float(metrics["base_loss"]))
        assert np.isfinite(float(metrics["adversary_loss"]))
    return jax.device_get(first), jax.device_get(state)


def test_each_player_learns_from_its_own_cells_only(setup):
    """Training starts from the given parameters. No adversary anywhere: the adversary's
    gradient is exactly zero and Adam leaves it as it was, while the base learns. With
    adversaries in some cells both move."""
    shared, _ = setup
    first, clean = _two_iterations(shared, 0.5, clean_share=1.0)
    _equal(first["params"]["base"], shared["base"])
    _equal(first["params"]["adversary"], shared["adversary"])
    assert not clean["pool"]["mask"].any()
    assert _changed(first["params"]["base"], clean["params"]["base"])
    _equal(first["params"]["adversary"], clean["params"]["adversary"])

    first, both = _two_iterations(shared, 0.5, clean_share=0.0)
    assert both["pool"]["mask"].any()
    assert _changed(first["params"]["base"], both["params"]["base"])
    assert _changed(first["params"]["adversary"], both["params"]["adversary"])


def test_base_is_not_trained_to_help_the_adversary(setup):
    """Adversaries in every cell: the base's loss is over no cell of its own, so its
    gradient is zero (Adam leaves it) while the adversary learns. With new_n = 0 no
    sample of the batch draws a new mask: every mask stays all-adversary."""
    shared, _ = setup
    recipe = trainers.mnist_hardened_recipe(
        TINY._replace(new_n=0), None, max_fraction=0.5, clean_share=0.0
    )
    init, step = _compiled(recipe)
    state = init(jax.random.PRNGKey(0), shared, {})
    state = {**state, "pool": {**state["pool"], "mask": np.ones_like(state["pool"]["mask"])}}
    after, metrics = step(state, shared, {})
    after = jax.device_get(after)
    assert float(metrics["base_loss"]) == 0.0
    _equal(after["params"]["base"], shared["base"])
    assert _changed(after["params"]["adversary"], shared["adversary"])


def test_masks_follow_the_shares(setup):
    shared, _ = setup
    recipe = trainers.mnist_hardened_recipe(
        TINY._replace(pool_size=400), None, max_fraction=0.15, clean_share=0.25
    )
    pool = recipe.init(jax.random.PRNGKey(0), shared, {})[1]
    share = np.asarray(pool["mask"]).mean(axis=(1, 2, 3))
    assert share.max() <= 0.3  # p <= 0.15, 100 cells per digit
    clean = share == 0
    assert 0.15 < clean.mean() < 0.4  # p = 0 for about a quarter of the samples
    assert 0.04 < share[~clean].mean() < 0.11  # E[U(0, 0.15)] = 0.075


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"max_fraction": 1.5}, "adversary fraction"),
        ({"max_fraction": -0.1}, "adversary fraction"),
        ({"clean_share": 2.0}, "clean share"),
    ],
)
def test_bad_settings_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        jobs.mnist_hardened_job("mnist", "mnist_adversary", None, [0], TINY, **kwargs)


def test_launch_trains_saves_both_and_refuses_bad_flags(tmp_path, subprocess_env):
    images, labels = _digits()
    base, adv = tmp_path / "base.npz", tmp_path / "adv.npz"
    io.save_params(base, _params(1), "mnist")
    io.save_params(adv, _params(2), "mnist")
    cmd = [sys.executable, "-m", "experiments.train_mnist_hardened"]
    bad = subprocess.run(
        [*cmd, f"--workdir={tmp_path / 'w'}", "--max_fraction=2"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "adversary fraction" in bad.stderr
    # The real launch trains on the 60k digits: in-process here, on the tiny digits.
    job = jobs.mnist_hardened_job(
        str(base),
        str(adv),
        None,
        [0],
        TINY,
        "alive",
        splits=data.MnistSplits(images, labels.astype(np.int32), images, labels),
    )
    summary = jobs.run_job(job, tmp_path / "w", 2, chunk=2, checkpoint_every=2)
    folder = tmp_path / "w"
    assert summary["0"]["result"] == str(folder / "params.npz")
    assert io.load_model(str(folder / "params.npz"), "mnist").keys() == _params(1).keys()
    trained_adv = io.load_model(str(folder / "adversary.npz"), "mnist")
    assert _changed(trained_adv, _params(2))


# ----------------------------------------------------------------------------- transfer, report
def test_transfer_table_fills_in_and_refuses_bad_pairs(tmp_path, subprocess_env):
    out = tmp_path / "transfer.json"
    cmd = [
        sys.executable,
        "-m",
        "experiments.transfer_table",
        "--bases=shipped=mnist",
        "--adversaries=shipped=mnist_adversary",
        "--num_digits=12",
        "--steps=3",
        "--curve_digits=4",
        "--curve_ps=0,1",
        f"--out={out}",
    ]
    bad = subprocess.run(
        [*cmd, "--curves=shipped:nobody"], capture_output=True, text=True, env=subprocess_env()
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "--curves" in bad.stderr and not out.exists()

    first = subprocess.run(
        [*cmd, "--curves=shipped:shipped"], capture_output=True, text=True, env=subprocess_env()
    )
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    share = summary["cells_voting_target"]["shipped"]["shipped"]
    assert 0.0 <= share <= 1.0
    curve = summary["curves"]["shipped|shipped"]
    assert curve["ps"] == [0.0, 1.0] and curve["digits"] == 4
    saved = json.loads(out.read_text())
    assert saved["digits_attacked"] == 12  # no 8 among the first 12 test digits
    # Run again: the pair is kept from the file, not recomputed.
    again = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env())
    assert again.returncode == 0, again.stderr[-2000:]
    assert "vote 8 (" not in again.stderr
    assert json.loads(out.read_text())["pairs"] == saved["pairs"]


def test_report_part_reads_the_shipped_results(tmp_path, monkeypatch):
    from experiments import report_beyond
    from nca_adv.media import report

    results = tmp_path / "results"
    results.mkdir()
    transfer = {
        "settings": {"num_digits": 300, "fraction": 0.1, "steps": 200, "seed": 0},
        "digits_attacked": 279,
        "pairs": {
            "shipped|shipped": {"cells_voting_target": 0.98, "digits_hijacked": 0.99},
            "hardened|shipped": {"cells_voting_target": 0.1, "digits_hijacked": 0.05},
        },
        "curves": {
            "shipped|shipped": {"digits": 100, "ps": [0, 1], "cells_voting_target": [0.0, 1.0]}
        },
    }
    (results / report_beyond.TRANSFER).write_text(json.dumps(transfer))
    monkeypatch.setattr(report_beyond, "RESULTS", results)
    rep = report.HtmlReport(tmp_path / "r.html", "t")
    out = report_beyond.hardened_part(rep, tmp_path, None, jax.random.PRNGKey(0))
    assert out["transfer_hardened|shipped"] == 0.1
    assert (tmp_path / "beyond_hardened_curves.png").is_file()
    html = rep.write().read_text()
    assert "98.0% (99.0%)" in html and "hardened base" in html
