"""The six research examples (examples/*.py) run end to end at tiny scale (``--tiny``), each
as a researcher would start it: a fresh Python process, the package importable, the
script's own path. Each prints its measured numbers; the checks are on what it printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# script -> what its output must say (one line of each part it runs)
EXPECTED = {
    "01_grow_and_attack.py": [
        "grown 60 steps: loss to the lizard",
        "adversarial cells (10%), 30 steps",
        "growing_attack, 2 runs",
        "perturbation 'tail'",
    ],
    "02_success_curve.py": ["6 digits (not 8), 20 steps, 2 seeds", "0.05 ", "0.2 "],
    "03_perturbation_to_my_png.py": ["trained 2 iterations", "max |A - I|", "perturbed "],
    "04_mnist_votes.py": ["adversarial cells as A..J", "4 digits, p = 0.1:"],
    "05_new_rule.py": ["trained 3 iterations", "saved and loaded", "with lizard cells at 10 %"],
    "06_composed_attack.py": ["no attack", "adversarial cells (10%)", "both (chained)"],
}


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs_tiny(script, tmp_path, subprocess_env):
    args = [sys.executable, str(EXAMPLES / script), "--tiny"]
    if script in ("03_perturbation_to_my_png.py", "05_new_rule.py"):
        args.append(f"--out={tmp_path}")
    if script == "06_composed_attack.py":
        # 01 uses the shipped growing adversary when there is one; 06 always trains its own,
        # so both paths run (with none shipped, 06 reuses 01's compiled training).
        args.append("--adversary=train")
    # Tiny programs: XLA's backend optimisations cost more compile time than they save.
    proc = subprocess.run(
        args,
        cwd=tmp_path,
        env=subprocess_env(optimise=False),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for text in EXPECTED[script]:
        assert text in proc.stdout, f"{text!r} not in:\n{proc.stdout}"
    assert "nan" not in proc.stdout.lower(), proc.stdout
    if script == "03_perturbation_to_my_png.py":
        assert (tmp_path / "my_perturbation.npy").is_file()
        assert (tmp_path / "lizard_top_erased.png").is_file()
    if script == "05_new_rule.py":
        assert (tmp_path / "my_rule.npz").is_file()
