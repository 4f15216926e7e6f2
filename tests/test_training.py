"""The host loop (nca_adv.training.fit, nca_adv.training.runtime): exact resume of the growing trainer,
resume you can trust (missing, incomplete, corrupt or foreign checkpoints, torn metrics,
locked workdirs) and a real SIGKILL of ``experiments.train_growing``."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from nca_adv import io
from nca_adv.io import targets
from nca_adv.models import growing, mnist
from nca_adv.training import engine, fit, jobs, runtime, trainers

ROOT = Path(__file__).resolve().parents[1]
# One tiny configuration for every growing run here and in test_engine.py, on the
# lizard target without padding (40x40, as experiments.train_growing with GROWING_FLAGS
# trains it): the in-process fits of both files then share one compiled program through
# the persistent cache. lr_decay_at=3: the rate drops inside every run, so a resume that
# lost the optimiser's step count would not be bit-exact.
TINY = growing.GrowingTrainConfig(
    pool_size=6, batch_size=2, min_steps=2, max_steps=3, damage_n=1, lr_decay_at=3
)
RECIPE = trainers.growing_recipe(TINY)
CONFIG = {"trainer": "growing", "lr": TINY.lr, "batch_size": TINY.batch_size, "seeds": [0]}


GROWING_FLAGS = [
    "--target=lizard",
    "--padding=0",
    "--pool_size=6",
    "--batch_size=2",
    "--min_steps=2",
    "--max_steps=3",
    "--damage_n=1",
    "--lr_decay_at=3",
    "--chunk=1",
]


def _target(nan: bool = False) -> np.ndarray:
    t = targets.load_target("lizard", padding=0)
    if nan:
        t[0, 0, 0] = np.nan
    return t


def _fit(workdir, iterations, resume=False, config=CONFIG, target=None):
    """The tiny growing trainer, a checkpoint every 2 iterations."""
    run = fit.Run("lizard", 0, {"target": _target() if target is None else target})
    return fit.fit(
        RECIPE,
        {"seed": growing.seed_state(40, 40)},
        [run],
        workdir,
        iterations,
        chunk=1,
        checkpoint_every=2,
        resume=resume,
        config=config,
    )


def _assert_trees_equal(a, b):
    a, b = jax.device_get(a), jax.device_get(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _iterations(path) -> list[int]:
    return [r["iteration"] for r in runtime.read_metrics(path)]


def _snapshot(workdir: Path) -> dict[str, bytes]:
    """The files a refused resume must leave alone."""
    names = ("metrics.jsonl", "params.npz", "config.json")
    return {n: (workdir / n).read_bytes() for n in names if (workdir / n).is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A straight run of 6 iterations, and a workdir "killed" after iteration 4 (its
    latest checkpoint; 2 is kept too). Tests copy the latter before touching it."""
    root = tmp_path_factory.mktemp("trained")
    straight = jax.device_get(_fit(root / "straight", 6))
    _fit(root / "at4", 4)
    (root / "at4" / "params.npz").write_bytes(b"the previous result")  # as run_job leaves it
    return SimpleNamespace(straight=straight, straight_dir=root / "straight", at4=root / "at4")


def _copy(trained, tmp_path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(trained.at4, work)
    return work


# ----------------------------------------------------------------------------- optimiser
def test_per_variable_normalisation():
    t = runtime.normalize_per_variable()
    g = {"a": np.array([3.0, 4.0]), "b": np.array([[0.0]])}
    out, _ = t.update(g, t.init(g))
    np.testing.assert_allclose(out["a"], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(out["b"], [[0.0]])


# ----------------------------------------------------------------------------- exact resume
def test_growing_resume_is_exact(trained, tmp_path, count_chunks):
    work = _copy(trained, tmp_path)
    ran = count_chunks()
    resumed = _fit(work, 6, resume=True)
    assert sum(ran) == 2  # only iterations 5 and 6 ran: a restart from 0 would run 6
    _assert_trees_equal(trained.straight, resumed)
    straight_metrics = (trained.straight_dir / "metrics.jsonl").read_bytes()
    assert (work / "metrics.jsonl").read_bytes() == straight_metrics
    assert _iterations(work / "metrics.jsonl") == [1, 2, 3, 4, 5, 6]
    # The pool evolved and was written back (not only seeds any more).
    pool = trained.straight["pool"]["x"][0]
    assert np.abs(pool - np.asarray(growing.seed_state(40, 40))).max() > 0


def test_workdir_params_load_as_model(trained):
    """A single run's workdir is a model (``--base=runs/lizard``): its final params."""
    loaded = io.load_model(str(trained.straight_dir), "growing")
    _assert_trees_equal(engine.run_slice(trained.straight["params"], 0), loaded)


# ----------------------------------------------------------------------------- refusals
def test_resume_without_usable_checkpoint_refused(trained, tmp_path):
    misspelt = tmp_path / "misspelt"
    with pytest.raises(runtime.CheckpointError, match="no checkpoints/.*drop --resume"):
        _fit(misspelt, 6, resume=True)
    assert not misspelt.exists()

    deleted = _copy(trained, tmp_path / "deleted")
    shutil.rmtree(deleted / "checkpoints")
    before = _snapshot(deleted)
    with pytest.raises(runtime.CheckpointError, match="no checkpoints/"):
        _fit(deleted, 6, resume=True)
    assert _snapshot(deleted) == before and len(before) == 3

    incomplete = _copy(trained, tmp_path / "incomplete")
    ckpts = incomplete / "checkpoints"
    for step in (2, 4):  # as a kill in the middle of each save leaves them
        (ckpts / str(step)).rename(ckpts / f"{step}.orbax-checkpoint-tmp-1700000000{step}")
        (ckpts / f"{step}.sha256").unlink()
    before = _snapshot(incomplete)
    with pytest.raises(runtime.CheckpointError, match="no usable checkpoint.*incomplete"):
        _fit(incomplete, 6, resume=True)
    assert _snapshot(incomplete) == before


def test_resume_with_other_config_names_the_differences(trained, tmp_path):
    work = _copy(trained, tmp_path)
    before = _snapshot(work)
    other = {**CONFIG, "lr": 1e-3, "batch_size": 4, "seeds": [1]}
    with pytest.raises(runtime.CheckpointError, match="differs") as err:
        _fit(work, 6, resume=True, config=other)
    named = set(re.findall(r"(\w+): ", str(err.value).split(f"{work}: ")[1]))
    assert named == {"lr", "batch_size", "seeds"}, str(err.value)
    assert _snapshot(work) == before


def test_fresh_start_in_used_workdir_refused_untouched(trained, tmp_path):
    """Without --resume a workdir with checkpoints is refused, and left as it was: its
    config.json too, or a later --resume would accept the refused configuration."""
    work = _copy(trained, tmp_path)
    before = _snapshot(work)
    other = {**CONFIG, "lr": 1e-3}
    with pytest.raises(runtime.CheckpointError, match="pass --resume"):
        _fit(work, 6, config=other)
    assert _snapshot(work) == before
    with pytest.raises(runtime.CheckpointError, match="lr: 0.002 -> 0.001"):
        _fit(work, 6, resume=True, config=other)


def test_resume_past_requested_iterations_refused(trained, tmp_path):
    work = _copy(trained, tmp_path)
    before = _snapshot(work)
    with pytest.raises(runtime.CheckpointError, match="at iteration 4, past the requested 2"):
        _fit(work, 2, resume=True)
    assert _snapshot(work) == before


def test_locked_workdir_refused(tmp_path):
    lock = runtime.WorkdirLock(tmp_path)
    try:
        with pytest.raises(runtime.CheckpointError, match=f"in use .*pid {os.getpid()}"):
            _fit(tmp_path, 2)
    finally:
        lock.release()
    assert not (tmp_path / "metrics.jsonl").exists()
    assert not (tmp_path / "checkpoints").exists()
    runtime.WorkdirLock(tmp_path).release()  # free again


def test_fit_rejects_bad_arguments(tmp_path):
    shared = {"seed": growing.seed_state(40, 40)}
    run = fit.Run("a", 0, {"target": _target()})
    too_big = trainers.growing_recipe(TINY._replace(batch_size=32))
    with pytest.raises(ValueError, match="larger than the pool"):
        fit.fit(too_big, shared, [run], tmp_path, 2)
    with pytest.raises(ValueError, match="no runs"):
        fit.fit(RECIPE, shared, [], tmp_path, 2)
    with pytest.raises(ValueError, match="names must differ"):
        fit.fit(RECIPE, shared, [run, run._replace(seed=1)], tmp_path, 2)
    with pytest.raises(ValueError, match=">= 1"):
        fit.fit(RECIPE, shared, [run], tmp_path, 0)
    assert not list(tmp_path.iterdir())


def test_non_finite_loss_names_run_and_iteration(tmp_path):
    with pytest.raises(FloatingPointError, match="run lizard: loss became nan at iteration 1"):
        _fit(tmp_path, 2, target=_target(nan=True))
    runtime.WorkdirLock(tmp_path).release()  # the failed fit let go of its workdir


def test_mnist_shared_rejects_bad_data():
    images = np.zeros((3, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="labels"):
        trainers.mnist_shared(images, np.array([1, 2, 12]))
    with pytest.raises(ValueError, match="uint8"):
        trainers.mnist_shared(images.astype(np.float32), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="labels"):
        trainers.mnist_shared(images, np.array([1, 2]))
    assert mnist.NUM_CLASSES == 10


# ----------------------------------------------------------------------------- corruption
def _data_files(step_dir: Path) -> list[Path]:
    """The array data files of an orbax checkpoint (under its ``d/`` folders), largest
    (the pool) first."""
    files = [f for f in step_dir.rglob("*") if f.is_file() and f.parent.name == "d"]
    assert files, f"no data files under {step_dir}"
    return sorted(files, key=lambda f: -f.stat().st_size)


@pytest.mark.parametrize("damage", ["garbage", "flipped_byte", "hash"])
def test_corrupt_latest_checkpoint_falls_back(trained, tmp_path, caplog, damage):
    """The latest checkpoint (4) is unusable: resume says so in one line, falls back to 2,
    and still ends bit for bit where the straight run does."""
    work = _copy(trained, tmp_path)
    ckpts = work / "checkpoints"
    if damage == "garbage":
        for f in _data_files(ckpts / "4"):
            f.write_bytes(b"\0garbage" * 3)
    elif damage == "flipped_byte":  # one bit of the pool's (compressed) data
        pool = _data_files(ckpts / "4")[0]
        raw = bytearray(pool.read_bytes())
        raw[len(raw) // 2] ^= 0x10
        pool.write_bytes(bytes(raw))
    else:  # the content hash itself disagrees: what a flip that still decodes looks like
        (ckpts / "4.sha256").write_text("0" * 64 + "\n")
    with caplog.at_level(logging.WARNING):
        resumed = _fit(work, 6, resume=True)
    _assert_trees_equal(trained.straight, resumed)
    straight_metrics = (trained.straight_dir / "metrics.jsonl").read_bytes()
    assert (work / "metrics.jsonl").read_bytes() == straight_metrics
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(f"{ckpts}/4 " in w for w in warnings), warnings  # why 4 failed, one line
    assert any("fell back to the previous checkpoint, iteration 2" in w for w in warnings)
    assert all(len(w.splitlines()) == 1 for w in warnings), warnings
    if damage == "hash":
        assert any("content hash does not match" in w for w in warnings), warnings


def test_no_restorable_checkpoint_refused(trained, tmp_path):
    work = _copy(trained, tmp_path)
    for step in (2, 4):
        for f in _data_files(work / "checkpoints" / str(step)):
            f.write_bytes(b"\0garbage" * 3)
    before = _snapshot(work)
    with pytest.raises(runtime.CheckpointError, match="no restorable checkpoint"):
        _fit(work, 6, resume=True)
    assert _snapshot(work) == before
    with pytest.raises(io.ModelFormatError, match="cannot be read"):
        io.load_model(str(work), "growing")


def test_bad_metrics_line_dropped_alone(trained, tmp_path, caplog):
    """A bad middle line goes alone (later ones stay); lines past the checkpoint and a
    torn last line are dropped; the gap is reported."""
    work = _copy(trained, tmp_path)
    lines = (work / "metrics.jsonl").read_text().splitlines()
    assert _iterations(work / "metrics.jsonl") == [1, 2, 3, 4]
    torn = [lines[0], lines[1][:9], *lines[2:], json.dumps({"iteration": 5, "loss": 9.0}), '{"it']
    (work / "metrics.jsonl").write_text("\n".join(torn) + "\n")
    with caplog.at_level(logging.WARNING):
        _fit(work, 6, resume=True)
    got = (work / "metrics.jsonl").read_text().splitlines()
    straight = (trained.straight_dir / "metrics.jsonl").read_text().splitlines()
    assert got == [straight[i] for i in (0, 2, 3, 4, 5)]
    assert "dropped 2 unreadable line(s): [2, 6]" in caplog.text
    assert "first missing: [2]" in caplog.text


# ----------------------------------------------------------------------------- a real kill
KILL_N = 10  # iterations; the kill comes at the 2nd or 3rd checkpoint


def _train_growing(*args) -> list[str]:
    flags = [*GROWING_FLAGS, "--checkpoint_every=1"]
    return [sys.executable, "-m", "experiments.train_growing", *flags, *args]


def _launch(env, *args) -> subprocess.CompletedProcess:
    res = subprocess.run(
        _train_growing(*args), capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _latest_step(workdir: Path) -> int:
    ckpts = workdir / "checkpoints"
    if not ckpts.is_dir():
        return 0
    return max((int(p.name) for p in ckpts.iterdir() if p.name.isdigit()), default=0)


def test_sigkill_then_resume_is_exact(tmp_path, subprocess_env):
    """experiments.train_growing, SIGKILLed after its second checkpoint and resumed,
    ends bit for bit where the same job trained straight ends (params.npz, metrics)."""
    env = subprocess_env()
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    job = jobs.growing_job(["lizard"], [0], TINY, padding=0)  # what GROWING_FLAGS ask for
    jobs.run_job(job, straight, KILL_N, chunk=1, checkpoint_every=1)

    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(
        _train_growing(f"--iterations={KILL_N}", f"--workdir={killed}"),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    try:
        while _latest_step(killed) < 2:
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no second checkpoint within 300 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "params.npz").exists()
    at_kill = _latest_step(killed)
    assert 2 <= at_kill < KILL_N, f"killed at {at_kill}: raise KILL_N"

    res = _launch(env, f"--iterations={KILL_N}", "--resume", f"--workdir={killed}")
    resumed_from = re.search(r"resumed from iteration (\d+)", res.stderr)
    assert resumed_from and int(resumed_from.group(1)) >= 2, res.stderr[-3000:]
    a, b = np.load(straight / "params.npz"), np.load(killed / "params.npz")
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert (killed / "metrics.jsonl").read_bytes() == (straight / "metrics.jsonl").read_bytes()
    assert _iterations(killed / "metrics.jsonl") == list(range(1, KILL_N + 1))
