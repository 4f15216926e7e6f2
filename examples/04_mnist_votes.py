"""MNIST votes under adversarial cells: what each cell says, and how many digits are hijacked.

    python examples/04_mnist_votes.py           # 100 test digits, 200 steps
    python examples/04_mnist_votes.py --tiny    # a smoke run

Every alive cell of the Self-classifying MNIST CA votes for a class (the argmax of its 10
score channels); ``mnist.votes`` gives -1 for dead cells (off the digit), so class 0 and
"no cell" never mix. The shipped adversary makes every digit vote 8 from 10 % of the cells.
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np

import nca_adv
from nca_adv.attacks import adversaries
from nca_adv.evaluation import adversary_eval
from nca_adv.io import data
from nca_adv.models import mnist


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", default=os.environ.get("NCA_ADV_TINY") == "1")
    p.add_argument("--fraction", type=float, default=0.1, help="share of adversarial cells")
    return p.parse_args()


def picture(votes: np.ndarray, mask: np.ndarray) -> str:
    """A vote map as text: the class of each alive cell, '.' off the digit (vote -1),
    adversarial cells as the letters A..J (for their votes 0..9)."""
    rows = []
    for vote_row, mask_row in zip(votes, mask):
        cells = []
        for v, m in zip(vote_row, mask_row):
            if v == mnist.DEAD_VOTE:
                cells.append(".")
            else:
                cells.append("ABCDEFGHIJ"[v] if m else str(v))
        rows.append("".join(cells))
    return "\n".join(rows)


def main() -> None:
    args = parse_args()
    n_digits, steps = (4, 20) if args.tiny else (100, 200)
    base = nca_adv.load_ca("mnist", "mnist")
    adversary = nca_adv.load_ca("mnist_adversary", "mnist")
    splits = data.load_mnist()
    images = data.to_float(splits.test_images[:n_digits])  # grey values in [0, 1]
    labels = splits.test_labels[:n_digits]
    key = jax.random.PRNGKey(0)

    # 1. By hand, for one digit: the mixed step is a step transform of the base's step.
    #    Masks cover the whole grid (adversaries off the digit never update, as dead cells).
    k_mask, k_run = jax.random.split(key)
    mask = adversaries.mnist_adversary_masks(k_mask, images[:1].shape, args.fraction)
    mixed = nca_adv.with_adversaries(adversary.step, mask)(base.step)
    x = nca_adv.rollout(mixed, base.model.seed(images[:1]), k_run, steps)
    votes = np.asarray(mnist.votes(x))[0]  # (28, 28) int8, -1 off the digit
    assert votes.dtype == np.int8 and (votes[images[0] <= 0.1] == -1).all()
    print(f"digit 0 (a {labels[0]}) after {steps} steps; adversarial cells as A..J = 0..9:")
    print(picture(votes[4:24, 4:24], np.asarray(mask)[0, 4:24, 4:24, 0]))

    # 2. The evaluation over many digits: per-step vote counts (steps, N, 10), digits batched
    #    by size, each digit's result independent of its batch mates.
    counts = adversary_eval.mnist_attack(base, adversary, images, key, args.fraction, steps)
    metrics = adversary_eval.mnist_attack_metrics(counts, labels, steps)
    clean = adversary_eval.mnist_attack(base, adversary, images, key, 0.0, steps)
    before = adversary_eval.mnist_attack_metrics(clean, labels, steps)
    print(
        f"{n_digits} digits, p = {args.fraction}: {metrics['cells_voting_target']:.1%} of the "
        f"cells of digits that are not 8 vote 8, {metrics['digits_hijacked']:.1%} of those "
        f"digits hijacked (no adversaries: {before['digits_correct']:.1%} classified right)"
    )


if __name__ == "__main__":
    main()
