"""Grow a lizard and attack it from Python: adversarial cells, then a state perturbation.

    python examples/01_grow_and_attack.py            # the article's protocol
    python examples/01_grow_and_attack.py --tiny     # a smoke run (small grid, few steps)
    python examples/01_grow_and_attack.py --adversary=../shared/reference/original/no_tail_model.json

A model is a value (``nca_adv.CA``: architecture + parameters) whose ``step(x, key)`` is a
plain function; attacks are transforms of that function; ``nca_adv.rollout`` iterates any
step. Growing adversaries are shipped only once trained (``lizard_no_tail_adversary``);
without one, this script trains a small one from the base first (``--adversary=train``).
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp

import nca_adv
from nca_adv import io
from nca_adv.attacks import adversaries, perturbation
from nca_adv.evaluation import adversary_eval
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
    p.add_argument("--fraction", type=float, default=0.1, help="share of adversarial cells")
    return p.parse_args()


def train_adversary(padding: int, tiny: bool) -> nca_adv.CA:
    """A tailless-lizard adversary trained here, started from the base's weights (it begins
    as an ordinary lizard cell, so a CPU gets somewhere in a few hundred iterations)."""
    if tiny:
        config = growing.GrowingTrainConfig(
            pool_size=8, batch_size=2, min_steps=4, max_steps=6, damage_n=1
        )
    else:
        config = growing.GrowingTrainConfig(pool_size=256, batch_size=4, damage_n=1)
    job = jobs.growing_adversary_job(
        "lizard", ["lizard_no_tail"], [0.1], [0], config, padding, adversary_init="base"
    )
    result = jobs.train_job(job, 2 if tiny else 100)  # in memory: no workdir, no files
    (params,) = result.params.values()
    (metrics,) = result.metrics.values()
    print(f"trained an adversary: loss {metrics['loss'][0]:.4g} -> {metrics['loss'][-1]:.4g}")
    return nca_adv.CA(nca_adv.GrowingCA(), params)


def main() -> None:
    args = parse_args()
    padding, grow_steps, attack_steps, runs = (0, 60, 30, 2) if args.tiny else (16, 200, 500, 4)
    key = jax.random.PRNGKey(0)

    # 1. The base: the shipped lizard as a CA (a pytree: jit/vmap it like any params).
    lizard = nca_adv.load_ca("lizard", "growing")
    target = targets.load_target("lizard", padding=padding)  # (H, W, 4), premultiplied RGBA
    no_tail = targets.load_target("lizard_no_tail", padding=padding)
    h, w = target.shape[:2]

    # 2. Grow it: any step function, any number of steps, one jitted scan.
    seed = lizard.model.seed(h, w)
    grown = nca_adv.rollout(lizard.step, seed, key, grow_steps)
    print(f"grown {grow_steps} steps: loss to the lizard {growing.growing_loss(grown, target):.4g}")

    # 3. Adversarial cells: a second CA runs on a random p of the cells of the tailless
    #    target's body. The attack is a step transform: with_adversaries(adv, mask)(base).
    if args.adversary == "train":
        adversary = train_adversary(padding, args.tiny)
    else:
        adversary = nca_adv.load_ca(args.adversary, "growing")
    k_mask, k_run = jax.random.split(jax.random.fold_in(key, 1))
    mask = adversaries.growing_adversary_masks(k_mask, 1, no_tail, args.fraction)[0]
    mixed = nca_adv.with_adversaries(adversary.step, mask)(lizard.step)
    attacked = nca_adv.rollout(mixed, grown, k_run, attack_steps)
    plain = nca_adv.rollout(lizard.step, grown, k_run, attack_steps)
    print(
        f"{int(mask.sum())} adversarial cells ({args.fraction:.0%}), {attack_steps} steps: "
        f"loss to the tailless lizard {growing.growing_loss(attacked, no_tail):.4g} "
        f"(unattacked {growing.growing_loss(plain, no_tail):.4g})"
    )

    # The same protocol for several runs at once, as one jitted program (vmap over runs):
    # grow from the seed, inject, run on.
    runs_out = adversary_eval.growing_attack(
        lizard, adversary, no_tail, key, runs, args.fraction, grow_steps, attack_steps
    )
    losses = growing.growing_loss(runs_out.states, no_tail)
    print(f"growing_attack, {runs} runs: loss to the tailless lizard {jnp.mean(losses):.4g}")

    # 4. A global state perturbation: one symmetric 16x16 matrix applied to every living
    #    cell before each step. perturb(A) is a step transform too.
    a = perturbation.load_matrix("tail")  # shipped; or a .npy, or perturbation.parse_mix
    perturbed = nca_adv.rollout(nca_adv.perturb(a)(lizard.step), grown, k_run, attack_steps)
    print(
        f"perturbation 'tail', {attack_steps} steps: loss to the tailless lizard "
        f"{growing.growing_loss(perturbed, no_tail):.4g}, to the lizard "
        f"{growing.growing_loss(perturbed, target):.4g}"
    )


if __name__ == "__main__":
    main()
