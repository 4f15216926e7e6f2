"""A new CA rule: learned perception, hidden 64, trained on the engine, saved, loaded, attacked.

    python examples/05_new_rule.py                  # 500 iterations at 72x72 (the article: 8000)
    python examples/05_new_rule.py --tiny           # a smoke run
    python examples/05_new_rule.py --iterations=2000 --out=runs/my_rule

An architecture is a small frozen description (``nca_adv.GrowingCA(...)``); the engine
trains any of them with the Growing CA recipe (pool of seeds, sorted batches, damage,
64..95 steps). The weights file records the description, so loading rebuilds the same
model, fire rate included; every evaluation takes the loaded CA as it takes the shipped one.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import jax
import numpy as np

import nca_adv
from nca_adv.evaluation import adversary_eval
from nca_adv.io import targets
from nca_adv.models import growing
from nca_adv.training import jobs


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", default=os.environ.get("NCA_ADV_TINY") == "1")
    p.add_argument("--iterations", type=int, help="training iterations (default 500; tiny 3)")
    p.add_argument("--out", help="folder for the weights (default: a temp folder)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="nca_adv_example_"))
    if args.tiny:
        padding, iterations, grow_steps, attack_steps = 0, 3, 40, 20
        config = growing.GrowingTrainConfig(
            pool_size=8, batch_size=2, min_steps=4, max_steps=6, damage_n=1
        )
    else:
        padding, iterations, grow_steps, attack_steps = 16, 500, 200, 200
        config = growing.GrowingTrainConfig()  # the article's: pool 1024, batch 8, 64..95 steps
    iterations = args.iterations or iterations

    # 1. The rule: a learned 3x3 convolution into 48 features instead of the fixed sobel
    #    filters, a hidden layer of 64 instead of 128.
    model = nca_adv.GrowingCA(hidden=64, perception="learned")
    job = jobs.growing_job(["lizard"], [0], config, padding, model=model)

    # 2. Train in memory: the whole training is one jitted program.
    result = jobs.train_job(job, iterations)
    params, metrics = result.params["0"], result.metrics["0"]
    print(
        f"trained {iterations} iterations: loss {metrics['loss'][0]:.4g} -> {metrics['loss'][-1]:.4g}"
    )

    # 3. Save with its architecture, load it back: the same model, a CA ready to step.
    path = out / "my_rule.npz"
    nca_adv.save_params(path, params, "growing", model)
    ca = nca_adv.load_ca(str(path), "growing")
    assert ca.model == model
    print(f"saved and loaded {path}: {ca.model}")

    # 4. Grow it.
    target = targets.load_target("lizard", padding=padding)
    key = jax.random.PRNGKey(0)
    x = nca_adv.rollout(ca.step, ca.model.seed(*target.shape[:2]), key, grow_steps)
    print(f"grown {grow_steps} steps: loss to the lizard {growing.growing_loss(x, target):.4g}")

    # 5. Attack it: the shipped lizard's rule runs in 10 % of the cells of the new one (any
    #    CA with the same 16 channels can be an adversary; the architectures may differ).
    lizard = nca_adv.load_ca("lizard", "growing")
    attack = adversary_eval.growing_attack(
        ca, lizard, target, key, runs=2, p=0.1, grow_first=grow_steps, steps=attack_steps
    )
    calm = adversary_eval.growing_attack(
        ca, lizard, target, key, runs=2, p=0.0, grow_first=grow_steps, steps=attack_steps
    )
    hit = np.asarray(growing.growing_loss(attack.states, target))
    alone = np.asarray(growing.growing_loss(calm.states, target))
    print(
        f"with lizard cells at 10 %: loss to the lizard {hit.mean():.4g} "
        f"(the new rule alone: {alone.mean():.4g}), 2 runs"
    )


if __name__ == "__main__":
    main()
