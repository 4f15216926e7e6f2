"""Train a global state perturbation that pushes the shipped lizard toward a PNG of your own.

    python examples/03_perturbation_to_my_png.py                # 150 iterations at 72x72
    python examples/03_perturbation_to_my_png.py --tiny         # a smoke run
    python examples/03_perturbation_to_my_png.py --png=me.png   # your RGBA PNG instead

The target here is made on the fly: the shipped lizard with its top third erased, saved as
an RGBA PNG in a temporary folder (any RGBA PNG path works wherever a target is asked for).
The training is a job (``jobs.perturbation_job``: the recipe, its constants and runs) trained
in memory (``jobs.train_job``); ``jobs.run_job`` would add a workdir with checkpoints,
metrics and resume. The result is a symmetric 16x16 matrix A, saved as ``.npy``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import jax
import numpy as np
from PIL import Image, ImageDraw

import nca_adv
from nca_adv.attacks import perturbation
from nca_adv.evaluation import perturbation_eval
from nca_adv.io import targets
from nca_adv.models import growing
from nca_adv.training import jobs


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", default=os.environ.get("NCA_ADV_TINY") == "1")
    p.add_argument("--png", help="an RGBA PNG target (default: made here)")
    p.add_argument("--out", help="folder for the PNG and the matrix (default: a temp folder)")
    return p.parse_args()


def make_target_png(folder: Path) -> Path:
    """The shipped lizard with its top third made transparent."""
    img = Image.open(targets.shipped_target_path("lizard")).convert("RGBA")
    ImageDraw.Draw(img).rectangle([0, 0, img.width, img.height // 3], fill=(0, 0, 0, 0))
    path = folder / "lizard_top_erased.png"
    img.save(path)
    return path


def main() -> None:
    args = parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="nca_adv_example_"))
    out.mkdir(parents=True, exist_ok=True)
    png = Path(args.png) if args.png else make_target_png(out)

    if args.tiny:
        padding, iterations, eval_steps = 0, 2, 40
        config = growing.GrowingTrainConfig(
            pool_size=8, batch_size=2, min_steps=4, max_steps=6, damage_n=1
        )
    else:
        # The CPU preset of train_all: batch 4, the 136-parameter matrix at 5x the rate.
        padding, iterations, eval_steps = 16, 150, 200
        config = growing.GrowingTrainConfig(
            pool_size=256, batch_size=4, damage_n=2, lr=1e-2, lr_decay_at=100
        )

    # One run (one target, seed 0) on the shipped lizard; the pool holds seeds and grown
    # lizards, each iteration runs 64..95 steps (here: the config's) and takes one Adam step.
    job = jobs.perturbation_job("lizard", [str(png)], [0], config, padding)
    result = jobs.train_job(job, iterations)
    (matrix,) = result.params.values()  # the trained M; the perturbation is A = (M + M^T) / 2
    (losses,) = (m["loss"] for m in result.metrics.values())
    a = perturbation.symmetric(matrix)
    saved = perturbation.save_matrix(out / "my_perturbation.npy", a)
    print(f"trained {iterations} iterations: loss {losses[0]:.4g} -> {losses[-1]:.4g}")
    print(f"max |A - I| = {np.abs(np.asarray(a) - np.eye(16)).max():.4f}; saved {saved}")

    # Grow the lizard from its seed with the perturbation on throughout, and without.
    lizard = nca_adv.load_ca("lizard", "growing")
    target = targets.load_target(str(png), padding=padding)
    seed = lizard.model.seed(*target.shape[:2])
    key = jax.random.PRNGKey(1)
    on = np.ones(eval_steps, bool)
    perturbed = perturbation_eval.perturbed_rollout(lizard, a, seed, key, on)
    plain = perturbation_eval.perturbed_rollout(lizard, a, seed, key, ~on)  # all off: plain
    print(
        f"{eval_steps} steps from the seed, loss to {png.name}: "
        f"perturbed {growing.growing_loss(perturbed, target):.4g}, "
        f"unperturbed {growing.growing_loss(plain, target):.4g}"
    )
    print(f"use it: python -m experiments.eval_growing --perturbation={saved} --target={png}")


if __name__ == "__main__":
    main()
