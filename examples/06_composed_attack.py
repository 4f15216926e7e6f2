"""A composed attack: adversarial cells AND a global state perturbation on one lizard.

    python examples/06_composed_attack.py           # 4 runs, 72x72, 200 + 500 steps
    python examples/06_composed_attack.py --tiny    # a smoke run

Attacks are transforms ``Step -> Step`` and compose with ``nca_adv.chain`` (the first one
innermost, nearest the base step): ``chain(with_adversaries(adv, mask), perturb(A))(base)``
perturbs every cell's state, then runs the mixed step. Any evaluation that takes a model
takes such a step function too: here the perturbation sweep runs over the mixed step, which
computes exactly the chained step, and measures all four cases in one program.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

import nca_adv
from nca_adv import io
from nca_adv.attacks import adversaries, perturbation
from nca_adv.evaluation import guards, perturbation_eval
from nca_adv.io import targets
from nca_adv.models import growing
from nca_adv.training import jobs

SHIPPED_ADVERSARY = "lizard_no_tail_adversary"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", default=os.environ.get("NCA_ADV_TINY") == "1")
    p.add_argument(
        "--adversary",
        default=SHIPPED_ADVERSARY if SHIPPED_ADVERSARY in io.shipped_models() else "train",
        help="a growing adversary (shipped name, .npz, workdir, the authors' .json) or 'train'",
    )
    p.add_argument("--perturbation", default="tail", help="shipped name, .npy or a mix")
    return p.parse_args()


def train_adversary(padding: int, tiny: bool) -> nca_adv.CA:
    """A tailless-lizard adversary trained here from the base's weights (as example 01)."""
    if tiny:
        config = growing.GrowingTrainConfig(
            pool_size=8, batch_size=2, min_steps=4, max_steps=6, damage_n=1
        )
    else:
        config = growing.GrowingTrainConfig(pool_size=256, batch_size=4, damage_n=1)
    job = jobs.growing_adversary_job(
        "lizard", ["lizard_no_tail"], [0.1], [0], config, padding, adversary_init="base"
    )
    (params,) = jobs.train_job(job, 2 if tiny else 100).params.values()
    return nca_adv.CA(nca_adv.GrowingCA(), params)


def main() -> None:
    args = parse_args()
    padding, grow_steps, steps, runs = (0, 60, 30, 2) if args.tiny else (16, 200, 500, 4)
    lizard = nca_adv.load_ca("lizard", "growing")
    if args.adversary == "train":
        adversary = train_adversary(padding, args.tiny)
    else:
        adversary = nca_adv.load_ca(args.adversary, "growing")
    a = perturbation.load_perturbation(args.perturbation)
    no_tail = targets.load_target("lizard_no_tail", padding=padding)
    complete = targets.load_target("lizard", padding=padding)
    h, w = no_tail.shape[:2]

    # Grown lizards to attack, one per run (each with its own key).
    keys = jax.random.split(jax.random.PRNGKey(0), runs)
    grown = perturbation_eval.grow(lizard, h, w, keys, grow_steps)

    # The composed step, by hand: one mask for every run (adversaries on the tailless body).
    mask = adversaries.growing_adversary_masks(jax.random.PRNGKey(1), 1, no_tail, 0.1)[0]
    with_cells = nca_adv.with_adversaries(adversary.step, mask)
    composed = nca_adv.chain(with_cells, nca_adv.perturb(a))(lizard.step)
    by_hand = jax.vmap(lambda x, k: nca_adv.rollout(composed, x, k, steps))(grown, keys)

    # Through the evaluation: the sweep perturbs its base with each matrix; its base here is
    # the mixed step (a plain function), so "perturbed" is the composed attack and the
    # sweep's unperturbed reference is the adversaries alone.
    both = perturbation_eval.sweep(
        with_cells(lizard.step), a[None], grown, keys, steps, no_tail, complete
    )
    np.testing.assert_allclose(both["finals"][0], by_hand, atol=1e-4)  # the same attack
    alone = perturbation_eval.sweep(lizard, a[None], grown, keys, steps, no_tail, complete)

    def loss(x):
        return float(jnp.mean(growing.growing_loss(x, no_tail)))

    print(f"{runs} runs, {steps} steps after {grow_steps} of growth; loss to the tailless lizard:")
    print(f"  no attack               {loss(alone['base']):.4g}")
    print(f"  adversarial cells (10%) {loss(both['base']):.4g}")
    print(f"  perturbation            {loss(alone['finals'][0]):.4g}")
    print(f"  both (chained)          {loss(both['finals'][0]):.4g}")
    info = guards.divergence(both["finals"])
    guards.warn(info, "the composed attack")  # an adversary made for another base may explode
    peak = "non-finite" if info["max_abs"] is None else f"{info['max_abs']:.3g}"
    print(f"largest |state| under both: {peak} (diverged: {info['diverged']})")


if __name__ == "__main__":
    main()
