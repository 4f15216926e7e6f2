"""train_all: every shipped model through the same pipeline, tiny (the smoke preset)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from nca_adv import io
from nca_adv.attacks import perturbation

ROOT = Path(__file__).resolve().parents[1]


def _launch(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "experiments.train_all", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=900,
    )


def test_smoke_preset_trains_exports_and_resumes(tmp_path):
    assets = tmp_path / "assets"
    args = ["--preset=smoke", f"--workdir={tmp_path / 'runs'}", f"--assets={assets}"]
    res = _launch(*args, "--export")
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    models = out["models"]
    assert set(models) == {
        "lizard",
        "mnist",
        "mnist_adversary",
        "mnist_hardened",
        "mnist_hardened_adversary",
        "lizard_no_tail_adversary",
        "lizard_red_adversary",
        "perturbations",
    }
    table = res.stdout
    for row in (
        "lizard ",
        "mnist_adversary",
        "lizard_red_adversary/p0.1",
        "perturbations/lizard_blue",
    ):
        assert row in table
    # Exported: weights load as models of their kind, matrices as perturbations, with curves.
    mnist_models = ["mnist", "mnist_adversary", "mnist_hardened", "mnist_hardened_adversary"]
    for name, kind in [("lizard", "growing"), *((n, "mnist") for n in mnist_models)]:
        io.load_npz(assets / "models" / f"{name}.npz", kind)
        assert (assets / "models" / f"{name}_metrics.csv").read_text().startswith("iteration,loss")
    io.load_npz(assets / "models" / "lizard_red_adversary.npz", "growing")
    for name in ("tail", "leg", "arm", "head", "red", "blue"):
        a = perturbation.load_matrix(str(assets / "perturbations" / f"{name}.npy"))
        np.testing.assert_allclose(a, a.T)
    # The attacks were trained on the base models trained before them, recorded relative
    # to the model's folder (a moved workdir resumes), with their content hashes.
    cfg = json.loads((tmp_path / "runs" / "mnist_adversary" / "config.json").read_text())
    assert cfg["base"] == "../mnist/params.npz" and "base" in cfg["inputs"]
    cfg = json.loads((tmp_path / "runs" / "mnist_hardened" / "config.json").read_text())
    assert (cfg["base"], cfg["adversary"]) == (
        "../mnist/params.npz",
        "../mnist_adversary/params.npz",
    )
    cfg = json.loads((tmp_path / "runs" / "mnist_hardened_adversary" / "config.json").read_text())
    assert cfg["base"] == "../mnist_hardened/params.npz"
    # --resume over finished runs trains nothing more and gives the same results.
    again = _launch(*args, "--resume", "--only=lizard")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["models"]["lizard"]["skipped"]
    lines = (tmp_path / "runs" / "lizard" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [1, 2, 3]
