"""Guards for evaluations: states that blew up are reported, never averaged silently.

A base CA paired with an adversary trained against another base can drive the state to
1e14 and beyond; the losses are then meaningless. :func:`divergence` says whether (and from
which step) a rollout left the range any working CA stays in, and :func:`warn` prints the
one-line warning the launches show; the launches put ``diverged`` in their JSON.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

# A working CA's states stay small (the lizard's hidden channels reach ~13, MNIST scores ~10):
# beyond this the rollout has exploded.
EXPLODED = 1e4


def max_abs_per_step(trajectory: jax.Array) -> np.ndarray:
    """(steps,) largest |x| (NaN and inf count as infinite) over everything but the
    leading step axis of a trajectory (steps, ...)."""
    t = jnp.asarray(trajectory)
    a = jnp.where(jnp.isfinite(t), jnp.abs(t), jnp.inf)
    return np.asarray(jnp.max(a.reshape(t.shape[0], -1), axis=1))


def divergence(states, per_step: np.ndarray | None = None, limit: float = EXPLODED) -> dict:
    """``{"diverged": bool, "max_abs": float | None, "first_step": int | None}`` for final
    ``states`` (any shape); with ``per_step`` (:func:`max_abs_per_step` of the trajectory,
    entry t = after t + 1 steps) also the first step past ``limit``."""
    x = np.asarray(states)
    finite = bool(np.all(np.isfinite(x)))
    peak = float(np.max(np.abs(x))) if finite and x.size else None
    diverged = (not finite) or (peak is not None and peak > limit)
    first = None
    if per_step is not None:
        bad = np.flatnonzero(~(np.asarray(per_step) <= limit))
        diverged = diverged or bad.size > 0
        first = int(bad[0]) + 1 if bad.size else None
    return {"diverged": bool(diverged), "max_abs": peak, "first_step": first}


def warn(info: dict, what: str) -> None:
    """One warning line when ``info`` (from :func:`divergence`) says the rollout diverged."""
    if not info["diverged"]:
        return
    size = "non-finite" if info["max_abs"] is None else f"max |x| = {info['max_abs']:.3g}"
    when = f" from step {info['first_step']}" if info.get("first_step") else ""
    logging.warning(
        "%s diverged%s (%s): the losses are meaningless (an adversary or perturbation made "
        "for another base?)",
        what,
        when,
        size,
    )
