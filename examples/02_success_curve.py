"""An attack-success curve over the adversary fraction p and seeds, as one program.

    python examples/02_success_curve.py           # 200 test digits, 6 fractions x 4 seeds, 200 steps
    python examples/02_success_curve.py --tiny    # a smoke run

The shipped MNIST adversary (every digit should vote 8) runs in a share p of the cells of
the shipped MNIST CA. ``mnist_success_curve`` rolls out every (p, seed) pair for the same
digits in one jitted program (``vmap`` over the P x S lanes): one compilation, and each
lane's result depends only on its own p and seed.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

import nca_adv
from nca_adv.evaluation import adversary_eval
from nca_adv.io import data
from nca_adv.models import mnist


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", default=os.environ.get("NCA_ADV_TINY") == "1")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.tiny:
        n_digits, ps, n_seeds, steps = 6, [0.0, 0.05, 0.2], 2, 20
    else:
        n_digits, ps, n_seeds, steps = 200, [0.0, 0.01, 0.02, 0.05, 0.1, 0.2], 4, 200

    base = nca_adv.load_ca("mnist", "mnist")
    adversary = nca_adv.load_ca("mnist_adversary", "mnist")

    # Test digits that are not 8 (an 8 voting 8 is no success), as grey values in [0, 1].
    splits = data.load_mnist()
    keep = splits.test_labels != 8
    images = data.to_float(splits.test_images[keep][:n_digits])

    # The alive-cell step needs K (alive cells per digit) at trace time.
    k = mnist.cells_needed(images)
    keys = jax.random.split(jax.random.PRNGKey(0), n_seeds)
    share = adversary_eval.mnist_success_curve(
        base, adversary, jnp.asarray(images), keys, jnp.asarray(ps), steps, k
    )
    share = np.asarray(share)  # (P, S): share of alive cells voting 8 after `steps` steps

    print(f"{n_digits} digits (not 8), {steps} steps, {n_seeds} seeds per fraction")
    print("p       cells voting 8: mean [min - max] over seeds")
    for p, row in zip(ps, share):
        print(f"{p:<7.3g} {row.mean():.3f} [{row.min():.3f} - {row.max():.3f}]")


if __name__ == "__main__":
    main()
