"""Resume after any kill, and resume that checks what it trusts (issue 16).

``train_all --resume`` after real SIGKILLs at several points of a smoke run (a model
part-way, a later model before its first checkpoint), in a workdir moved in between, ends
bit for bit where a straight run ends; and the checks of the host loop: the content hash
is written before its checkpoint is committed, an unhashed checkpoint is not trusted, a
missing ``config.json`` or a replaced input file refuses the resume, two corrupt
checkpoints make one error line.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from nca_adv.io import targets
from nca_adv.models import growing
from nca_adv.training import fit, jobs, runtime

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- train_all kills
# Two models of the smoke preset: the base (3 iterations, checkpoints at 2 and 3) and an
# attack trained on it (2 iterations, one checkpoint).
ONLY = "--only=lizard,lizard_no_tail_adversary"
MODELS = ("lizard", "lizard_no_tail_adversary")


def _train_all(*args: str) -> list[str]:
    return [sys.executable, "-m", "experiments.train_all", "--preset=smoke", *args]


def _run(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _train_all(*args), capture_output=True, text=True, cwd=ROOT, env=env, timeout=900
    )


def _steps(folder: Path) -> list[int]:
    ckpts = folder / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(int(p.name) for p in ckpts.iterdir() if p.is_dir() and p.name.isdigit())


def _kill_when(env, log: Path, ready, *args: str) -> None:
    """Start ``train_all *args`` and SIGKILL it as soon as ``ready()`` holds."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            _train_all(*args), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 600
        try:
            while not ready():
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the kill point never came"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]


def _assert_same_results(a: Path, b: Path) -> None:
    for model in MODELS:
        x, y = np.load(a / model / "params.npz"), np.load(b / model / "params.npz")
        assert sorted(x.files) == sorted(y.files)
        for name in x.files:
            np.testing.assert_array_equal(x[name], y[name], err_msg=f"{model}: {name}")
        for name in ("metrics.jsonl", "config.json"):
            assert (a / model / name).read_bytes() == (b / model / name).read_bytes(), name


def test_train_all_resumes_after_kills_anywhere(tmp_path, subprocess_env):
    env = subprocess_env()
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    res = _run(env, ONLY, f"--workdir={straight}")
    assert res.returncode == 0, res.stderr[-3000:]

    # Kill 1: the base part-way (checkpoint 2 of 3).
    lizard, attack = killed / "lizard", killed / "lizard_no_tail_adversary"
    _kill_when(
        env, tmp_path / "kill1.log", lambda: _steps(lizard) == [2], ONLY, f"--workdir={killed}"
    )
    assert _steps(lizard) == [2] and not (lizard / "params.npz").exists()
    # A new start over it is refused before any compute, naming the model.
    res = _run(env, ONLY, f"--workdir={killed}")
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and "holds checkpoints of lizard; pass --resume" in last, last

    # Kill 2: the attack after its config.json, before its first checkpoint.
    _kill_when(
        env,
        tmp_path / "kill2.log",
        lambda: (attack / "config.json").is_file(),
        ONLY,
        f"--workdir={killed}",
        "--resume",
    )
    assert (lizard / "finished.json").is_file() and _steps(lizard) == [2, 3]
    assert _steps(attack) == [], "killed too late: no model left before its first checkpoint"

    # The workdir moves; the attack alone resumes there (--only leaves the base out): its
    # base is still the workdir's own lizard, so it ends as the straight run's attack.
    moved = tmp_path / "moved"
    killed.rename(moved)
    res = _run(env, f"--workdir={moved}", "--resume", "--only=lizard_no_tail_adversary")
    assert res.returncode == 0, res.stderr[-3000:]
    config = json.loads((moved / "lizard_no_tail_adversary" / "config.json").read_text())
    assert config["base"] == "../lizard/params.npz"  # relative to the model's folder

    # Everything finished: a last --resume trains nothing and reports the same results.
    res = _run(env, ONLY, f"--workdir={moved}", "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert all(out["models"][m].get("skipped") for m in MODELS), out
    _assert_same_results(straight, moved)


# ----------------------------------------------------------------------------- the host loop
# The tiny growing trainer of tests/test_training.py (the same program: the compile cache
# is shared), a checkpoint every 2 iterations.
TINY = growing.GrowingTrainConfig(
    pool_size=6, batch_size=2, min_steps=2, max_steps=3, damage_n=1, lr_decay_at=3
)


def _job(target: str = "lizard") -> jobs.Job:
    return jobs.growing_job([target], [0], TINY, 0)


def _fit(job: jobs.Job, workdir: Path, iterations: int, resume: bool = False):
    return fit.fit(
        job.recipe,
        job.shared,
        job.runs,
        workdir,
        iterations,
        chunk=1,
        checkpoint_every=2,
        resume=resume,
        config=job.config,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A straight run of 6 iterations and one stopped at 4 (checkpoints 2 and 4)."""
    root = tmp_path_factory.mktemp("kills")
    job = _job()
    straight = jax.device_get(_fit(job, root / "straight", 6))
    _fit(job, root / "at4", 4)
    return straight, root / "at4"


def _copy(trained, tmp_path: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(trained[1], work)
    return work


def _assert_trees_equal(a, b) -> None:
    a, b = jax.device_get(a), jax.device_get(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_hash_is_written_before_the_checkpoint_commits(tmp_path, monkeypatch):
    """A kill between the two can then only leave a hash without its step."""
    order = []
    real_write = runtime.write_atomic
    monkeypatch.setattr(
        runtime, "write_atomic", lambda p, t: (order.append(f"hash {p.name}"), real_write(p, t))
    )
    ckpt = runtime.Checkpointer(tmp_path / "checkpoints")
    real_save = ckpt._manager.save
    monkeypatch.setattr(
        ckpt._manager,
        "save",
        lambda step, **kw: (order.append(f"commit {step}"), real_save(step, **kw)),
    )
    try:
        ckpt.save(1, {"w": np.arange(3.0)})
    finally:
        ckpt.close()
    assert order == ["hash 1.sha256", "commit 1"]


def test_unhashed_checkpoint_is_not_trusted(trained, tmp_path, caplog):
    """Checkpoint 4 without its hash (as a kill between an old commit and its hash left
    it) is unverified: resume falls back to 2, saying so, and still ends bit for bit."""
    work = _copy(trained, tmp_path)
    (work / "checkpoints" / "4.sha256").unlink()
    with caplog.at_level(logging.WARNING):
        resumed = _fit(_job(), work, 6, resume=True)
    _assert_trees_equal(trained[0], resumed)
    warnings = _warnings(caplog)
    assert any("4 skipped: unverified: no 4.sha256" in w for w in warnings), warnings
    assert any("fell back to the previous checkpoint, iteration 2" in w for w in warnings)


def test_two_corrupt_checkpoints_make_one_error_line(trained, tmp_path, caplog):
    work = _copy(trained, tmp_path)
    for step in (2, 4):
        (work / "checkpoints" / f"{step}.sha256").write_text("0" * 64 + "\n")
    with caplog.at_level(logging.WARNING), pytest.raises(runtime.CheckpointError) as err:
        _fit(_job(), work, 6, resume=True)
    assert len(str(err.value).splitlines()) == 1
    assert "no restorable checkpoint" in str(err.value) and "4: " in str(err.value)
    assert _warnings(caplog) == []  # no line before the error


def test_resume_without_config_refused(trained, tmp_path):
    work = _copy(trained, tmp_path)
    (work / "config.json").unlink()
    before = (work / "metrics.jsonl").read_bytes()
    with pytest.raises(runtime.CheckpointError, match="config.json is missing"):
        _fit(_job(), work, 6, resume=True)
    assert (work / "metrics.jsonl").read_bytes() == before
    assert not (work / "config.json").exists()


def test_replaced_target_refused_on_resume(tmp_path):
    """A target PNG replaced under the same path: the resume names the changed input."""
    png = tmp_path / "target.png"
    shutil.copyfile(targets.shipped_target_path("lizard"), png)
    _fit(_job(str(png)), tmp_path / "work", 2)
    shutil.copyfile(targets.shipped_target_path("lizard_red"), png)
    with pytest.raises(runtime.CheckpointError, match="changed input.*target of run 0"):
        _fit(_job(str(png)), tmp_path / "work", 4, resume=True)


def test_config_without_inputs_is_completed(trained, tmp_path, caplog):
    """A workdir from before input hashes resumes (saying so) and records them."""
    work = _copy(trained, tmp_path)
    config = json.loads((work / "config.json").read_text())
    del config["inputs"]
    (work / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        _fit(_job(), work, 6, resume=True)
    assert any("predates input hashes" in w for w in _warnings(caplog))
    assert "target of run 0" in json.loads((work / "config.json").read_text())["inputs"]


def test_new_start_over_an_earlier_config_says_what_changes(tmp_path, caplog):
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.json").write_text(json.dumps({"trainer": "growing", "lr": 0.5}))
    with caplog.at_level(logging.WARNING):
        _fit(_job(), work, 1)
    assert any("starting anew" in w and "lr: 0.5 -> 0.002" in w for w in _warnings(caplog))


def test_torn_config_refused_on_resume(trained, tmp_path):
    work = _copy(trained, tmp_path)
    (work / "config.json").write_text('{"trainer": "grow')
    with pytest.raises(runtime.CheckpointError, match="config.json cannot be read"):
        _fit(_job(), work, 6, resume=True)
    assert os.path.getsize(work / "config.json") == len('{"trainer": "grow')
