"""End-to-end launches: flags in, one JSON object as the last line of stdout out."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def launch(module, *args, ok=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=900,
    )
    if ok:
        assert res.returncode == 0, res.stderr[-3000:]
        return json.loads(res.stdout.strip().splitlines()[-1])
    assert res.returncode != 0
    return res.stderr


def test_eval_growing_shipped_lizard_with_video(tmp_path):
    out = launch(
        "experiments.eval_growing",
        "--model=lizard",
        "--target=lizard",
        "--steps=30",
        "--seed=1",
        "--damage_at=20",
        f"--video={tmp_path / 'v.gif'}",
    )
    assert out["steps"] == 30 and out["alive_cells"] > 0 and out["loss"] > 0
    assert (tmp_path / "v.gif").stat().st_size > 1000


def test_eval_growing_is_deterministic():
    a = launch("experiments.eval_growing", "--steps=12", "--seed=3")
    b = launch("experiments.eval_growing", "--steps=12", "--seed=3")
    assert a["loss"] == b["loss"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model=nonesuch"], "neither a shipped model"),
        (["--target=dragon"], "unknown target"),
        (["--steps=-3"], "steps"),
        (["--steps=10", "--damage_at=10"], "damage_at"),
    ],
)
def test_eval_growing_bad_input(args, message):
    assert message in launch("experiments.eval_growing", *args, ok=False)


def test_eval_mnist_curve(tmp_path):
    out = launch(
        "experiments.eval_mnist",
        "--model=mnist",
        "--num_digits=24",
        "--batch_size=12",
        "--steps=6",
        "--curve",
        "--switch_at=6",
        f"--video={tmp_path / 'm.gif'}",
    )
    assert 0 <= out["cell_accuracy"] <= 1 and 0 <= out["total_agreement"] <= 1
    assert len(out["cell_accuracy_curve"]) == 12
    assert (tmp_path / "m.gif").is_file()


def test_train_growing_resume(tmp_path):
    args = [
        "--pool_size=4",
        "--batch_size=2",
        "--min_steps=2",
        "--max_steps=3",
        "--damage_n=1",
        "--checkpoint_every=1",
        f"--workdir={tmp_path}",
    ]
    launch("experiments.train_growing", "--iterations=2", *args)
    assert "--resume" in launch("experiments.train_growing", "--iterations=3", *args, ok=False)
    out = launch("experiments.train_growing", "--iterations=3", "--resume", *args)
    assert out["iterations"] == 3 and (tmp_path / "params.npz").is_file()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [1, 2, 3]
