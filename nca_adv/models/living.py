"""Living-cell steps: the Growing CA's update network run only on the cells that matter.

A dense step computes every cell's update and then multiplies most of them by zero: on the
lizard's grids only 10-17 % of the cells are alive. The living-cell step gathers the cells
whose update can reach the result, runs the network on them, and scatters the changes back.

Which cells: the step's result is ``(x + dx * fire) * pre * post`` with ``pre`` the alive
mask before and ``post`` the alive mask (max-pooled alpha > 0.1) after the update. Only
``pre`` cells survive, and ``post`` at a ``pre`` cell reads the updated alpha of its 3x3
neighbours, so the update is needed exactly on the 3x3 dilation of ``pre``. Those cells are
gathered (their 3x3 patches, for the perception), the rest keep ``dx = 0``: every surviving
cell sees the same numbers as in the dense step, so the states agree to float rounding
(and the gradients, through gather and scatter).

Capacity: the number of gathered cells varies per step, shapes cannot. ``lax.switch`` picks
the smallest of a few fixed capacities (fractions of the grid) that holds them all, and the
dense step when none does (a perturbation that grows without bound): never a dropped cell,
and only the taken branch runs. Under ``vmap`` a ``switch`` would become a select running
every branch, so the step carries its own batching rule (``custom_vmap``): a vmapped axis
is folded into the cell list (one gather over all runs), or, when parameters differ per
run, the runs go one after another (``lax.map``). Differentiation goes through the plain
implementation (``custom_jvp``), so ``grad`` works batched or not.

The fire mask is drawn over the whole grid from the key exactly as the dense step draws
it, then gathered: the same key gives the same cells firing.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import custom_batching

from nca_adv.models.masks import alive_mask

# Capacities tried in order, as fractions of the cells of a call's grids; past the last
# one the dense step runs. Steps of ~2x keep the work within ~2x of the ideal.
FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 3 / 16, 1 / 4, 3 / 8, 1 / 2)
MIN_CAPACITY = 64


def capacities(cells: int, fractions: Sequence[float] = FRACTIONS) -> tuple[int, ...]:
    """The distinct capacities for a call over ``cells`` cells (multiples of 64), below
    ``cells`` itself (past them the dense step is cheaper)."""
    out = []
    for f in fractions:
        k = int(np.ceil(max(f * cells, MIN_CAPACITY) / 64.0) * 64)
        if k < cells and k not in out:
            out.append(k)
    return tuple(out)


def needed_cells(x: jax.Array) -> jax.Array:
    """(..., H, W, 1) bool: the cells whose update can reach a step's result, the 3x3
    dilation of the alive mask."""
    return _dilate(alive_mask(x))


def _dilate(pre: jax.Array) -> jax.Array:
    """The 3x3 dilation of an alive mask (..., H, W, 1) bool."""
    pre = pre.astype(jnp.float32)
    window = (1,) * (pre.ndim - 3) + (3, 3, 1)
    return jax.lax.reduce_window(pre, 0.0, jax.lax.max, window, (1,) * pre.ndim, "SAME") > 0


Update = Callable[[object, jax.Array], jax.Array]  # (params, features (K, F)) -> dx (K, C)


def _draw_fire(keys: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """Per group g: ``uniform(keys[g], shape + (1,)) <= rate``, as :func:`masks.fire_mask`."""
    return jax.vmap(lambda k: jax.random.uniform(k, (*shape, 1)))(keys) <= rate


def _living_dx(
    x: jax.Array, need: jax.Array, features_of, nets: Sequence[tuple[Update, object]], k: int
) -> list[jax.Array]:
    """Each network's update (N, H, W, C) on the ``need`` cells (at most ``k`` of them), zero
    elsewhere: the perception over the grid (cheap, and its gradient is slices), its rows
    gathered at the needed cells, every network on those rows, the updates scattered back."""
    n, h, w, c = x.shape
    total = n * h * w
    (cell,) = jnp.nonzero(need.reshape(-1), size=k, fill_value=total)
    feats = features_of(x)
    rows = (
        feats.reshape(total, feats.shape[-1])
        .at[cell]
        .get(mode="fill", fill_value=0.0, indices_are_sorted=True)
    )
    outs = []
    for apply, params in nets:
        dx = apply(params, rows)
        grid = jnp.zeros((total, c), x.dtype).at[cell].add(dx, mode="drop", indices_are_sorted=True)
        outs.append(grid.reshape(x.shape))
    return outs


def _dense_dx(x, features_of, nets) -> list[jax.Array]:
    feats = features_of(x)
    return [apply(params, feats) for apply, params in nets]


@custom_batching.custom_vmap
def _batch_wide(index: jax.Array) -> jax.Array:
    """The capacity branch ``index``; under ``vmap``, the largest over the batch, unbatched.
    A batched switch would run every branch and select (and its selects do not transpose:
    ``grad`` of ``vmap`` of a step would fail); one branch big enough for every sample
    keeps the single gather and the derivative."""
    return index


@_batch_wide.def_vmap
def _batch_wide_rule(axis_size, in_batched, index):
    (batched,) = in_batched
    # Through _batch_wide again, so an enclosing vmap meets this rule too.
    return _batch_wide(jnp.max(index, axis=0) if batched else index), False


def _updates(x, pre, features_of, nets, caps: tuple[int, ...]) -> list[jax.Array]:
    """Every network's dx on the needed cells (the dilation of the alive mask ``pre``),
    through the smallest capacity that holds them."""
    need = _dilate(pre)
    count = jnp.sum(need)
    branches = [
        functools.partial(_living_dx, need=need, features_of=features_of, nets=nets, k=k)
        for k in caps
    ]
    branches.append(lambda x: _dense_dx(x, features_of, nets))
    index = jnp.sum(count > jnp.asarray(caps, count.dtype)) if caps else jnp.int32(0)
    index = _batch_wide(index)
    # Each branch rematerialised: a differentiated switch otherwise keeps the residuals of
    # every branch (the dense one's included), zero-filled, at every step: 4x the cost.
    return jax.lax.switch(index, [jax.checkpoint(lambda x, b=b: b(x)) for b in branches], x)


def _impl(cfg, params, x, keys, mask):
    """Grouped form: x (G, *lead, H, W, C), keys (G,) one per group, mask like x[..., :1]
    or None; params: a tuple of one (base) or two (base, adversary) parameter trees."""
    features_of, applies, fire_rate, fractions = cfg
    g, lead = x.shape[0], x.shape[1:-3]
    h, w, c = x.shape[-3:]
    flat = x.reshape(-1, h, w, c)
    caps = capacities(flat.shape[0] * h * w, fractions)
    nets = list(zip(applies, params))
    pre = alive_mask(flat)
    dxs = _updates(flat, pre, features_of, nets, caps)
    # Fire masks per group over (*lead, H, W), as the dense step draws them from its key.
    fire_shape = (*lead, h, w)
    fire = _draw_fire(keys, fire_shape, fire_rate).reshape(-1, h, w, 1)
    results = []
    for dx in dxs:
        y = flat + dx * fire
        results.append(y * (pre & alive_mask(y)))
    out = (
        results[0]
        if len(results) == 1
        else jnp.where(mask.reshape(-1, h, w, 1) > 0, results[1], results[0])
    )
    return out.reshape(g, *lead, h, w, c)


@functools.cache
def _grouped(cfg) -> Callable:
    """The grouped step for ``cfg`` with its batching rule and its derivative rule."""

    @custom_batching.custom_vmap
    def batched(params, x, keys, mask):
        return _impl(cfg, params, x, keys, mask)

    @batched.def_vmap
    def rule(axis_size, in_batched, params, x, keys, mask):
        p_b, x_b, k_b, m_b = in_batched
        if any(jax.tree.leaves(p_b)):
            # Parameters differ per run: the runs one after another, each its own gather.
            def one(args):
                p, xi, ki, mi = args
                return grouped(p, xi, ki, mi)

            bcast = lambda a, b: a if b else jnp.broadcast_to(a, (axis_size, *a.shape))  # noqa: E731
            params = jax.tree.map(bcast, params, p_b)
            args = (
                params,
                bcast(x, x_b),
                bcast(keys, k_b),
                None if mask is None else bcast(mask, m_b),
            )
            return jax.lax.map(one, args), True
        # Fold the vmapped axis into the groups: one gather over every run's cells.
        x = x if x_b else jnp.broadcast_to(x, (axis_size, *x.shape))
        keys = keys if k_b else jnp.broadcast_to(keys, (axis_size, *keys.shape))
        g = x.shape[1]
        merged_mask = None
        if mask is not None:
            mask = mask if m_b else jnp.broadcast_to(mask, (axis_size, *mask.shape))
            merged_mask = mask.reshape(axis_size * g, *mask.shape[2:])
        out = grouped(
            params,
            x.reshape(axis_size * g, *x.shape[2:]),
            keys.reshape(axis_size * g, *keys.shape[2:]),
            merged_mask,
        )
        return out.reshape(axis_size, g, *out.shape[1:]), True

    @jax.custom_jvp
    def grouped(params, x, keys, mask):
        return batched(params, x, keys, mask)

    @grouped.defjvp
    def grouped_jvp(primals, tangents):
        params, x, keys, mask = primals
        t_params, t_x = tangents[0], tangents[1]
        return jax.jvp(lambda p, y: _impl(cfg, p, y, keys, mask), (params, x), (t_params, t_x))

    return grouped


def living_step(
    features_of: Callable[[jax.Array], jax.Array],
    applies: tuple[Update, ...],
    fire_rate: float,
    params: tuple,
    x: jax.Array,
    key: jax.Array,
    mask: jax.Array | None = None,
    fractions: tuple[float, ...] = FRACTIONS,
) -> jax.Array:
    """One step of a Growing-family CA on its needed cells (see the module doc): x (..., H,
    W, C), one key, ``params`` one tree per network in ``applies``; with two networks (base,
    adversary), ``mask`` (broadcasting to x[..., :1]) > 0 picks the adversary's result."""
    cfg = (features_of, tuple(applies), float(fire_rate), tuple(fractions))
    if mask is not None:
        mask = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), (*x.shape[:-1], 1))[None]
    return _grouped(cfg)(tuple(params), x[None], key[None], mask)[0]


# ----------------------------------------------------------------------------- the choice
STEP_FORMS = ("auto", "living", "dense")
_default_form = os.environ.get("NCA_ADV_STEP_FORM", "auto")


def set_step_form(form: str) -> None:
    """The Growing CA steps built from now on: ``living`` (this module), ``dense`` (every
    cell, the reference) or ``auto`` (living on CPU, dense on accelerators, where the whole
    grid's matmuls are cheap and gathers are not). Also settable as ``NCA_ADV_STEP_FORM``."""
    global _default_form
    if form not in STEP_FORMS:
        raise ValueError(f"step form must be one of {STEP_FORMS}, got {form!r}")
    _default_form = form


_scoped_form: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "nca_adv_step_form", default=None
)


@contextlib.contextmanager
def step_form(form: str):
    """Within this block (and the functions traced in it), steps built without an explicit
    form take ``form``. The trainers trace a program that spans several devices under
    ``step_form("dense")``: a living step gathers cells across the whole sharded batch, which
    puts collectives inside its capacity switch (on a CPU with fewer cores than devices,
    those can wait on each other for ever)."""
    if form not in STEP_FORMS:
        raise ValueError(f"step form must be one of {STEP_FORMS}, got {form!r}")
    token = _scoped_form.set(form)
    try:
        yield
    finally:
        _scoped_form.reset(token)


def resolve_form(form: str | None = None) -> str:
    """``living`` or ``dense``: ``form`` (default: the enclosing :func:`step_form`'s, else
    :func:`set_step_form`'s) with ``auto`` decided by the default backend."""
    form = form or _scoped_form.get() or _default_form
    if form not in STEP_FORMS:
        raise ValueError(f"step form must be one of {STEP_FORMS}, got {form!r}")
    if form == "auto":
        return "living" if jax.default_backend() == "cpu" else "dense"
    return form
