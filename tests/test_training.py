import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from nca_adv import growing, io, mnist, trainers, training

ROOT = Path(__file__).resolve().parents[1]
TINY = growing.GrowingTrainConfig(pool_size=6, batch_size=2, min_steps=3, max_steps=5, damage_n=1)


def _target():
    t = np.zeros((12, 12, 4), np.float32)
    t[4:8, 4:8] = [0.5, 0.2, 0.1, 1.0]
    return t


def _run(workdir, iterations, resume=False, every=2):
    state, it = trainers.growing_trainer(_target(), jax.random.PRNGKey(0), TINY)
    return training.train_loop(
        state, it, iterations, workdir, checkpoint_every=every, resume=resume
    )


def test_per_variable_normalisation():
    t = training.normalize_per_variable()
    g = {"a": np.array([3.0, 4.0]), "b": np.array([[0.0]])}
    out, _ = t.update(g, t.init(g))
    np.testing.assert_allclose(out["a"], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(out["b"], [[0.0]])


def test_checkpoint_resume_is_exact(tmp_path):
    straight = _run(tmp_path / "a", 6)
    _run(tmp_path / "b", 4)  # "killed" after iteration 4, checkpointed at 4
    resumed = _run(tmp_path / "b", 6, resume=True)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight), jax.device_get(resumed))
    a = training.read_metrics(tmp_path / "a" / "metrics.jsonl")
    b = training.read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["iteration"] for r in b] == list(range(1, 7))
    assert a == b


def test_kill_loses_only_steps_since_checkpoint(tmp_path):
    _run(tmp_path, 5, every=2)  # checkpoints at 2, 4 and the final 5
    ckpt = training.Checkpointer(tmp_path / "checkpoints")
    assert ckpt.latest_step() == 5
    ckpt.close()
    # Metrics past the restored step (a torn run) are dropped on resume.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": 6, "loss": 1.0}) + "\n" + '{"iterat')
    _run(tmp_path, 5, resume=True)
    assert [r["iteration"] for r in training.read_metrics(tmp_path / "metrics.jsonl")] == [
        1,
        2,
        3,
        4,
        5,
    ]


def test_refuses_to_overwrite_without_resume(tmp_path):
    _run(tmp_path, 2)
    with pytest.raises(training.CheckpointError, match="--resume"):
        _run(tmp_path, 4)


def test_corrupt_checkpoint_raises_clear_error(tmp_path):
    _run(tmp_path, 2)
    step_dir = tmp_path / "checkpoints" / "2"
    for f in step_dir.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(b"\0garbage" * 3)
    with pytest.raises(training.CheckpointError, match="cannot be restored"):
        _run(tmp_path, 4, resume=True)
    with pytest.raises(io.ModelFormatError):
        io.load_model(str(tmp_path), "growing")


def test_resume_past_requested_iterations_refused(tmp_path):
    _run(tmp_path, 4)
    with pytest.raises(training.CheckpointError, match="past the requested"):
        _run(tmp_path, 2, resume=True)


def _mnist_run(workdir, iterations, resume=False):
    rng = np.random.default_rng(0)
    images = np.zeros((20, 10, 10), np.float32)
    images[:, 2:8, 3:7] = rng.uniform(0.2, 1.0, (20, 6, 4))
    labels = rng.integers(0, 10, 20)
    config = mnist.MnistTrainConfig(pool_size=8, batch_size=4, steps=3, new_n=1, mutate_n=1)
    state, it = trainers.mnist_trainer(images, labels, jax.random.PRNGKey(0), config)
    return training.train_loop(state, it, iterations, workdir, checkpoint_every=2, resume=resume)


def test_mnist_trainer_resume_is_exact(tmp_path):
    straight = _mnist_run(tmp_path / "a", 5)
    _mnist_run(tmp_path / "b", 2)
    resumed = _mnist_run(tmp_path / "b", 5, resume=True)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight), jax.device_get(resumed))
    assert straight["pool_labels"].dtype == np.int32
    # The pool evolved: grey channels hold digits, and states were written back.
    assert np.abs(straight["pool"][..., 1:]).sum() > 0


def test_mnist_trainer_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        trainers.mnist_trainer(
            np.zeros((3, 8, 8), np.float32), np.array([1, 2, 12]), jax.random.PRNGKey(0)
        )


def test_checkpoint_params_load_as_model(tmp_path):
    state = _run(tmp_path, 2)
    p = io.load_model(str(tmp_path), "growing")
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["params"]), p)


def test_data_parallel_8_devices_same_losses(tmp_path):
    """Same key, same losses on 1 and on 8 (fake CPU) devices, within float tolerance."""
    script = """
import jax, json, sys
jax.config.update("jax_num_cpu_devices", int(sys.argv[1]))
import numpy as np
from nca_adv import growing, trainers, training
t = np.zeros((12, 12, 4), np.float32); t[4:8, 4:8] = [0.5, 0.2, 0.1, 1.0]
cfg = growing.GrowingTrainConfig(pool_size=16, batch_size=8, min_steps=3, max_steps=5, damage_n=3)
mesh = training.data_mesh()
state, it = trainers.growing_trainer(t, jax.random.PRNGKey(0), cfg, mesh)
losses = []
for i in range(1, 4):
    state, m = it(state, i)
    losses.append(float(m["loss"]))
try:
    training.check_batch_divides(6, mesh)
    divides = True
except ValueError:
    divides = False
print(json.dumps({"devices": len(mesh.devices.ravel()), "losses": losses, "6_divides": divides}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = {}
    for n in (1, 8):
        res = subprocess.run(
            [sys.executable, "-c", script, str(n)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        out[n] = json.loads(res.stdout.strip().splitlines()[-1])
    assert out[8]["devices"] == 8 and out[1]["devices"] == 1
    assert out[1]["6_divides"] and not out[8]["6_divides"]  # batch 6 cannot split over 8
    np.testing.assert_allclose(out[8]["losses"], out[1]["losses"], rtol=1e-4)
