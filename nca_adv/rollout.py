"""The scanned rollout shared by every CA: a step function iterated with ``lax.scan``."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def scan_steps(
    step: Callable[[jax.Array, jax.Array], jax.Array],
    x0: jax.Array,
    key: jax.Array,
    steps: int,
    trajectory: bool = False,
    remat: bool = False,
) -> jax.Array:
    """Iterate ``step(x, key_i)`` ``steps`` times; the final state, or all (steps, ...) states.

    Step i draws ``fold_in(key, i)`` (not ``split(key, steps)[i]``): the first N steps of a
    longer rollout then equal an N-step rollout. ``remat`` rematerialises each step in the
    backward pass (memory flat in the number of steps).
    """

    def body(x, i):
        x = step(x, jax.random.fold_in(key, i))
        return x, (x if trajectory else None)

    if remat:
        body = jax.checkpoint(body)
    x_final, states = jax.lax.scan(body, x0, jnp.arange(steps))
    return states if trajectory else x_final
