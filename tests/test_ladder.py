"""Training that carries on from what is shipped, the schedules, and the training ladder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from nca_adv import io
from nca_adv.attacks import perturbation
from nca_adv.evaluation import protocols
from nca_adv.models import growing
from nca_adv.training import jobs, runtime

ROOT = Path(__file__).resolve().parents[1]
TINY = growing.GrowingTrainConfig(pool_size=4, batch_size=2, min_steps=2, max_steps=3, damage_n=0)


def _first_params(job):
    run = job.runs[0]
    params, _ = job.recipe.init(jax.random.PRNGKey(0), job.shared, run.consts)
    return params


def test_perturbation_starts_from_the_shipped_matrix():
    job = jobs.perturbation_job("lizard", ["lizard_no_tail"], [0], TINY, 0, init_from="tail")
    np.testing.assert_array_equal(np.asarray(_first_params(job)), perturbation.load_matrix("tail"))
    assert job.config["init_from"] == "tail" and len(job.config["init_sha256"]) == 64
    fresh = jobs.perturbation_job("lizard", ["lizard_no_tail"], [0], TINY, 0)
    np.testing.assert_array_equal(np.asarray(_first_params(fresh)), np.eye(16))


def test_adversary_starts_from_the_shipped_adversary():
    init = jobs.resolve_init("shipped", "adversary", ["lizard_red"])
    assert init == "lizard_red_adversary"
    job = jobs.growing_adversary_job("lizard", ["lizard_red"], [0.6], [0], TINY, 0, init_from=init)
    shipped = io.load_model("lizard_red_adversary", "growing")
    for a, b in zip(jax.tree.leaves(_first_params(job)), jax.tree.leaves(shipped)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resolve_init():
    assert jobs.resolve_init(None, "perturbation", ["lizard_red"]) is None
    assert jobs.resolve_init("none", "perturbation", ["lizard_red"]) is None
    assert jobs.resolve_init("shipped", "perturbation", ["lizard_red"]) == "red"
    assert jobs.resolve_init("x.npy", "perturbation", ["lizard_red"]) == "x.npy"
    with pytest.raises(ValueError, match="one target"):
        jobs.resolve_init("shipped", "perturbation", ["lizard_red", "lizard_blue"])
    with pytest.raises(ValueError, match="shipped adversary"):
        jobs.resolve_init("shipped", "adversary", ["lizard_blue"])


def test_a_decay_after_the_last_iteration_is_refused(tmp_path):
    with pytest.raises(ValueError, match="after the last"):
        runtime.check_schedule("tail", 300, [600])
    runtime.check_schedule("tail", 300, [100])
    # The article's preset asked for 50 iterations of matrices decaying at 100: one line.
    out = subprocess.run(
        [sys.executable, "-m", "experiments.train_all", "--preset=paper", f"--workdir={tmp_path}/w",
         "--only=perturbations", "--iterations=50"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert "after the last" in out.stderr
    assert "Traceback" not in out.stderr


def test_better_rule():
    shipped = {"loss": 0.002, "ratio": 0.5, "finite": True}
    assert protocols.better({"loss": 0.001, "ratio": 0.4, "finite": True}, shipped, "perturbation")
    assert not protocols.better(
        {"loss": 0.001, "ratio": 0.6, "finite": True}, shipped, "perturbation"
    )
    assert protocols.better({"loss": 0.001, "ratio": 0.6, "finite": True}, shipped, "adversary")
    assert not protocols.better({"loss": 0.003, "ratio": 0.4, "finite": True}, shipped, "adversary")
    assert not protocols.better({"loss": 0.0, "ratio": 0.0, "finite": False}, None, "adversary")


def test_ladder_exports_only_what_beats_the_shipped_one_once(tmp_path):
    """The smoke ladder trains the tail matrix 2 iterations from the shipped one, judges
    each with the protocol, exports the best only if better; a rerun decides nothing new."""
    assets = tmp_path / "assets"
    shutil.copytree(ROOT / "nca_adv" / "assets", assets)
    before = json.loads((assets / "results" / "ladder.json").read_text())["tail"]
    cmd = [sys.executable, "-m", "experiments.train_all", "--preset=ladder_smoke",
           f"--workdir={tmp_path}/w", "--resume", "--export", f"--assets={assets}"]  # fmt: skip
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads(first.stdout.strip().splitlines()[-1])["rungs"]["tail"]
    record = json.loads((assets / "results" / "ladder.json").read_text())["tail"]
    assert len(record["trials"]) == len(before["trials"]) + 1
    progress = json.loads((tmp_path / "w" / "tail" / "progress.json").read_text())
    assert [h["iteration"] for h in progress["history"]] == [1, 2]
    shipped_now = np.load(assets / "perturbations" / "tail.npy")
    best = np.load(tmp_path / "w" / "tail" / "best.npy")
    if result["beat"]:
        np.testing.assert_array_equal(shipped_now, best)
        assert record["iterations"] == before["iterations"] + result["best"]["iteration"]
        assert record["evaluation"]["loss"] == pytest.approx(result["best"]["loss"])
    else:
        np.testing.assert_array_equal(shipped_now, perturbation.load_matrix("tail"))
        assert record["iterations"] == before["iterations"]
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((assets / "results" / "ladder.json").read_text())["tail"] == record
