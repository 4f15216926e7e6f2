"""The evaluation protocols that judge a trained attack, as the report and ``eval_growing``
measure it: the same keys, steps and grids, so a number here is the number there.

- :func:`perturbation_protocol`: from the seed, ``steps`` steps under the matrix on
  throughout, ``runs`` runs; the loss to the mutated target, to the complete lizard, and
  their ratio (lower: the edit without the damage). ``eval_growing --perturbation=M
  --target=T --original_target=lizard --padding=24 --steps=200 --runs=8 --seed=0``.
- :func:`adversary_protocol`: grow ``grow_first`` steps with the base alone, inject the
  adversaries (one random placement per run), ``steps`` mixed steps; the loss to the
  mutated target and to the complete lizard. ``eval_growing --adversary=ADV
  --adversary_fraction=P --target=T --original_target=lizard --padding=24 --grow_first=200
  --steps=500 --runs=R --seed=0``.

:func:`better` is the rule by which a candidate replaces a shipped attack.
"""

from __future__ import annotations

import jax
import numpy as np

from nca_adv.evaluation import adversary_eval, perturbation_eval
from nca_adv.models import growing

PERTURBATION_RUNS = 8
PERTURBATION_STEPS = 200
ADVERSARY_RUNS = 12  # the article's own result spans 0.0009-0.0045 over placements
ADVERSARY_GROW_FIRST = 200
ADVERSARY_STEPS = 500
PADDING = 24


def _summary(final: np.ndarray, target: np.ndarray, original: np.ndarray) -> dict:
    loss = np.asarray(growing.growing_loss(final, target), np.float64)
    loss_o = np.asarray(growing.growing_loss(final, original), np.float64)
    finite = bool(np.isfinite(final).all())
    return {
        "loss": float(loss.mean()) if finite else float("inf"),
        "loss_original": float(loss_o.mean()) if finite else float("inf"),
        "ratio": float(loss.mean() / loss_o.mean()) if finite else float("inf"),
        "loss_per_run": loss.tolist(),
        "finite": finite,
    }


def perturbation_protocol(
    base,
    matrix,
    target: np.ndarray,
    original: np.ndarray,
    runs: int = PERTURBATION_RUNS,
    steps: int = PERTURBATION_STEPS,
    seed: int = 0,
) -> dict:
    """``loss``, ``loss_original``, ``ratio`` (= loss / loss_original) of the matrix on
    ``base`` (a CA, params or step), from the seed, perturbation on throughout; the keys
    of ``eval_growing --perturbation --seed --runs``."""
    h, w = target.shape[:2]
    k_grow, k_run = jax.random.split(jax.random.PRNGKey(seed))
    x0 = perturbation_eval.grow(base, h, w, jax.random.split(k_grow, runs), 0)
    keys = jax.random.split(k_run, runs)
    phases = [(True, 0, steps)]
    final = perturbation_eval.run_phases(base, np.asarray(matrix), x0, keys, phases)[-1].state
    return {"runs": runs, "steps": steps, "seed": seed, **_summary(final, target, original)}


def adversary_protocol(
    base,
    adversary,
    target: np.ndarray,
    original: np.ndarray,
    fraction: float,
    runs: int = ADVERSARY_RUNS,
    grow_first: int = ADVERSARY_GROW_FIRST,
    steps: int = ADVERSARY_STEPS,
    seed: int = 0,
) -> dict:
    """``loss`` to the mutated target and ``loss_original`` to the complete lizard of the
    article's growing protocol (one placement per run); the keys of ``eval_growing
    --adversary --seed --runs``."""
    run = adversary_eval.growing_attack(
        base, adversary, target, jax.random.PRNGKey(seed), runs, fraction, grow_first, steps
    )
    out = _summary(np.asarray(run.states), target, original)
    return {"runs": runs, "grow_first": grow_first, "steps": steps, "seed": seed, **out}


def better(candidate: dict, shipped: dict | None, kind: str) -> bool:
    """Whether ``candidate`` replaces ``shipped`` (None: nothing shipped yet).

    Both protocols: a lower loss to the mutated target (what the attack is trained for), a
    finite rollout, and for a perturbation a ratio no higher than the shipped one's (a
    lower loss bought by damaging the lizard less is not a better edit)."""
    if not candidate["finite"]:
        return False
    if shipped is None:
        return True
    if candidate["loss"] >= shipped["loss"]:
        return False
    return kind != "perturbation" or candidate["ratio"] <= shipped["ratio"]
