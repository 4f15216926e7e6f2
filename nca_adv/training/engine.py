"""The training engine: the whole training state on the device, iterations as pure functions.

A trainer is declared as a :class:`Recipe`: what is trained (``init``), how a batch drawn
from the pool is prepared (``prepare``) and the loss of a batch (``loss``). The engine turns
any recipe into

- :func:`iteration`: ``state -> (state, metrics)``, pure: pool sampling, batch discipline,
  train step and pool write-back all on the device;
- :func:`make_chunk`: ``length`` iterations as one jitted ``lax.scan`` (the state donated,
  so the pool is updated in place), the chunk's metrics stacked;
- a sweep: the same chunk under ``vmap`` over a leading run axis, so R independent runs
  (seeds, targets, rates) train in one compiled program. A single run is R = 1.

Every function takes ``shared`` (constants common to all runs: frozen base parameters,
the data set) and ``run`` (per-run constants: the target, the adversary fraction), both
pytrees; only ``state`` changes. The host loop around chunks (metrics files, progress,
checkpoints) is :func:`nca_adv.training.runtime.fit`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from nca_adv.models import living

Pytree = Any
Pool = dict[str, jax.Array]


class Recipe(NamedTuple):
    """A trainer, declared.

    - ``init(key, shared, run) -> (params, pool)``: the trained parameters and the initial
      pool, a dict of arrays with a leading ``pool_size`` axis (states, labels, masks, ...).
    - ``prepare(batch, shared, run, key) -> batch``: the pool's batch discipline (sort,
      reset slots, damage, fresh or mutated digits) on a batch drawn from the pool.
    - ``loss(params, batch, shared, run, key) -> (loss, (batch, metrics))``: the scalar
      loss, the evolved batch (written back to the pool) and extra scalar metrics.
    """

    init: Callable[[jax.Array, Pytree, Pytree], tuple[Pytree, Pool]]
    prepare: Callable[[Pool, Pytree, Pytree, jax.Array], Pool]
    loss: Callable[[Pytree, Pool, Pytree, Pytree, jax.Array], tuple[jax.Array, tuple[Pool, dict]]]
    optimizer: optax.GradientTransformation
    pool_size: int
    batch_size: int


def check_recipe(recipe: Recipe) -> None:
    """Raise ValueError on sizes the engine cannot run (before any compute or file)."""
    if recipe.batch_size < 1 or recipe.pool_size < 1:
        raise ValueError(
            f"batch size {recipe.batch_size} and pool size {recipe.pool_size} must be >= 1"
        )
    if recipe.batch_size > recipe.pool_size:
        raise ValueError(
            f"batch size {recipe.batch_size} is larger than the pool ({recipe.pool_size})"
        )


def init_state(recipe: Recipe, key: jax.Array, shared: Pytree, run: Pytree) -> dict:
    """One run's training state: ``params``, ``opt_state``, ``pool`` and the PRNG ``key``."""
    k_init, key = jax.random.split(key)
    params, pool = recipe.init(k_init, shared, run)
    return {"params": params, "opt_state": recipe.optimizer.init(params), "pool": pool, "key": key}


def init_states(recipe: Recipe, keys: jax.Array, shared: Pytree, runs: Pytree) -> dict:
    """States of R runs, stacked on a leading run axis (``keys`` (R, 2), ``runs`` (R, ...))."""
    return jax.jit(jax.vmap(functools.partial(init_state, recipe), in_axes=(0, None, 0)))(
        keys, shared, runs
    )


def iteration(
    recipe: Recipe,
    state: dict,
    shared: Pytree,
    run: Pytree,
    batch_sharding: NamedSharding | None = None,
) -> tuple[dict, dict]:
    """One training iteration, pure: sample the batch, prepare it, one optimiser step on
    the loss, write the evolved batch back to the pool. ``batch_sharding`` splits the batch
    over devices (data parallel; the compiler all-reduces the gradients)."""
    key, k_idx, k_prep, k_loss = jax.random.split(state["key"], 4)
    idx = jax.random.choice(k_idx, recipe.pool_size, (recipe.batch_size,), replace=False)
    batch = jax.tree.map(lambda a: a[idx], state["pool"])
    batch = recipe.prepare(batch, shared, run, k_prep)
    if batch_sharding is not None:
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    (loss, (batch, metrics)), grads = jax.value_and_grad(recipe.loss, has_aux=True)(
        state["params"], batch, shared, run, k_loss
    )
    updates, opt_state = recipe.optimizer.update(grads, state["opt_state"], state["params"])
    pool = jax.tree.map(lambda p, b: p.at[idx].set(b), state["pool"], batch)
    state = {
        "params": optax.apply_updates(state["params"], updates),
        "opt_state": opt_state,
        "pool": pool,
        "key": key,
    }
    return state, {"loss": loss, **metrics}


def make_chunk(
    recipe: Recipe,
    length: int,
    runs: int,
    batch_sharding: NamedSharding | None = None,
    sequential: bool | None = None,
    step_form: str | None = None,
) -> Callable[[dict, Pytree, Pytree], tuple[dict, dict]]:
    """A jitted ``(states, shared, runs) -> (states, metrics)`` running ``length``
    iterations of every run (leading run axis R on ``states``, ``runs`` and the metrics,
    which are (R, length)). The input states are donated: the pool is updated in place.

    With R = 1 the run axis is squeezed rather than vmapped, so the single run keeps the
    ``lax.cond`` that skips unused steps (under ``vmap`` it would become a select).
    ``sequential``: R > 1 runs one after another in the program (``lax.map``) rather than
    vmapped, which keeps those conds (under ``vmap`` each becomes a select running both
    branches) and lets each run's living-cell steps pick their own capacity (vmapped, the
    largest over the runs); default: when the Growing CA steps are living-cell ones (CPU).
    Same numbers either way.

    ``step_form``: the form of the Growing CA steps the recipe builds inside this program
    (:func:`nca_adv.models.living.step_form`); default ``dense`` when ``batch_sharding``
    spans several devices (a living step's gather would cross them), else the global one.
    """
    if step_form is None and batch_sharding is not None and len(batch_sharding.device_set) > 1:
        step_form = "dense"
    if sequential is None:
        sequential = living.resolve_form(step_form) == "living"

    def one_run(state, shared, run):
        def body(s, _):
            return iteration(recipe, s, shared, run, batch_sharding)

        return jax.lax.scan(body, state, None, length=length)

    if runs == 1:

        def chunk(states, shared, run_consts):
            squeeze = functools.partial(jax.tree.map, lambda a: a[0])
            state, metrics = one_run(squeeze(states), shared, squeeze(run_consts))
            return jax.tree.map(lambda a: a[None], (state, metrics))
    elif sequential:

        def chunk(states, shared, run_consts):
            return jax.lax.map(lambda a: one_run(a[0], shared, a[1]), (states, run_consts))
    else:
        chunk = jax.vmap(one_run, in_axes=(0, None, 0))
    if step_form is not None:
        unscoped = chunk

        def chunk(states, shared, run_consts):  # traced, so the steps are built, in the scope
            with living.step_form(step_form):
                return unscoped(states, shared, run_consts)

    return jax.jit(chunk, donate_argnums=0)


def stack_runs(trees: list[Pytree]) -> Pytree:
    """Per-run pytrees -> one pytree with a leading run axis."""
    return jax.tree.map(lambda *a: jnp.stack([jnp.asarray(x) for x in a]), *trees)


def run_slice(tree: Pytree, r: int) -> Pytree:
    """Run ``r`` of a pytree with a leading run axis."""
    return jax.tree.map(lambda a: a[r], tree)


def as_raw_keys(keys) -> jax.Array:
    """Per-run keys as (R, 2) uint32: legacy ``PRNGKey`` arrays as they are, new-style
    typed keys (``jax.random.key``, shape (R,)) as their data."""
    if hasattr(keys, "dtype") and jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        if keys.ndim != 1:
            raise ValueError(
                f"keys must hold one key per run, shape (R,), got {keys.shape} "
                "(one run: jax.random.key(seed)[None])"
            )
        keys = jax.random.key_data(keys)
    keys = jnp.asarray(keys)
    if keys.ndim != 2 or keys.shape[-1] != 2 or keys.dtype != jnp.uint32:
        raise ValueError(
            "keys must be one PRNG key per run: jax.random.key(...) of shape (R,) or "
            f"PRNGKey arrays (R, 2) uint32, got {keys.dtype} {keys.shape}"
        )
    return keys


def train(
    recipe: Recipe,
    keys: jax.Array,
    shared: Pytree,
    runs: Pytree,
    iterations: int,
    batch_sharding: NamedSharding | None = None,
) -> tuple[dict, dict]:
    """The whole training in memory, PureJaxRL-style: R runs (``keys`` (R, 2), ``runs``
    per-run constants with a leading R axis, see :func:`stack_runs`; new-style
    ``jax.random.key`` keys of shape (R,) too) initialised and trained
    ``iterations`` iterations in one jitted program (``vmap`` over runs, ``lax.scan`` over
    iterations). Returns the final states (``params``, ``opt_state``, ``pool``, ``key``;
    leading R axis) and the metrics ((R, iterations) arrays, ``loss`` first).

    Same seeds, same result as :func:`nca_adv.training.fit.fit` with the same recipe and
    runs (which adds checkpoints, metrics files and progress around chunks of this)."""
    check_recipe(recipe)
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    keys = as_raw_keys(keys)
    n = keys.shape[0]
    for leaf in jax.tree.leaves(runs):
        if jnp.shape(leaf)[:1] != (n,):
            raise ValueError(
                f"every run constant needs a leading axis of {n} runs, got {jnp.shape(leaf)}"
            )
    states = init_states(recipe, keys, shared, runs)
    return make_chunk(recipe, iterations, n, batch_sharding)(states, shared, runs)
