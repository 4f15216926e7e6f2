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


def rollout(
    step: Callable[[jax.Array, jax.Array], jax.Array],
    x0: jax.Array,
    key: jax.Array,
    steps: int,
    trajectory: bool = False,
) -> jax.Array:
    """The public rollout: iterate any step ``(x, key) -> x`` (a model's, or one made by
    attack transforms) ``steps`` times from ``x0``; the final state, or with ``trajectory``
    the (steps, ...) states after each step. Step i draws ``fold_in(key, i)``. Jittable
    (``steps`` and ``trajectory`` static): ``jax.jit(rollout, static_argnums=(0, 3, 4))``,
    or call it inside your own jitted function; ``vmap`` it over keys or states."""
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if not callable(step):
        raise TypeError(f"step must be a function (x, key) -> x, got {step!r}")
    return scan_steps(step, jnp.asarray(x0), key, steps, trajectory)


def scan_variable_steps(
    step: Callable[[jax.Array, jax.Array], jax.Array],
    x0: jax.Array,
    key: jax.Array,
    n_steps: jax.Array,
    max_steps: int,
    remat: bool = True,
    min_steps: int = 0,
) -> jax.Array:
    """Iterate ``step`` a traced number ``min_steps <= n_steps <= max_steps`` of times in
    one compiled program.

    The first ``min_steps`` steps always run (a plain scan); the rest are skipped past
    ``n_steps`` by ``lax.cond``: only the taken branch runs on CPU and GPU, so one
    compilation serves every step count at the cost of the steps taken, and only the
    optional steps pay for a predicate. (Under ``vmap`` with a batched ``n_steps`` the cond
    becomes a select and every run pays ``max_steps``: the price of a sweep's runs drawing
    their own step counts.) Step i draws ``fold_in(key, i)`` as :func:`scan_steps` does,
    so both forms agree step for step.
    """
    if not 0 <= min_steps <= max_steps:
        raise ValueError(f"need 0 <= min_steps <= max_steps, got {min_steps}, {max_steps}")

    def always(x, i):
        return step(x, jax.random.fold_in(key, i)), None

    def maybe(x, i):
        k = jax.random.fold_in(key, i)
        return jax.lax.cond(i < n_steps, lambda x: step(x, k), lambda x: x, x), None

    if remat:
        always, maybe = jax.checkpoint(always), jax.checkpoint(maybe)
    x, _ = jax.lax.scan(always, x0, jnp.arange(min_steps))
    x, _ = jax.lax.scan(maybe, x, jnp.arange(min_steps, max_steps))
    return x
