"""The Growing Neural CA (Mordvintsev et al., Distill 2020): step, rollout, loss, training.

State (..., H, W, 16) float32: RGBA first (RGB premultiplied by alpha), 12 hidden
channels. Any leading batch dimensions are carried through every function.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from nca_adv.models import living
from nca_adv.models.masks import alive_mask, circle_damage_masks, fire_mask
from nca_adv.models.perceive import sobel_perceive
from nca_adv.models.rollout import scan_steps, scan_variable_steps
from nca_adv.models.update import GrowingUpdate, init_params

CHANNELS = 16
FIRE_RATE = 0.5
UPDATE = GrowingUpdate()


def init_growing_params(key: jax.Array) -> dict:
    """Fresh Growing CA parameters (8,336 scalars, last kernel zero)."""
    return init_params(UPDATE, key, 3 * CHANNELS)


def seed_state(h: int, w: int, channels: int = CHANNELS) -> jax.Array:
    """(H, W, C) zeros with one centre cell whose channels 3.. are 1."""
    x = jnp.zeros((h, w, channels), jnp.float32)
    return x.at[h // 2, w // 2, 3:].set(1.0)


def check_state(x: jax.Array, channels: int = CHANNELS) -> None:
    """Raise ValueError unless ``x`` is a finite (..., H, W, channels) grid."""
    if x.ndim < 3 or x.shape[-1] != channels:
        raise ValueError(f"expected a state of shape (..., H, W, {channels}), got {x.shape}")
    if x.shape[-3] < 3 or x.shape[-2] < 3:
        raise ValueError(f"grid must be at least 3x3, got {x.shape[-3]}x{x.shape[-2]}")
    if not isinstance(x, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError("state holds NaN or infinite values")


def check_cells(x, channels: int) -> None:
    """ValueError (one line) unless ``x`` is a float32 (..., H, W, ``channels``) state with
    H, W >= 3; shapes and dtype only, so it holds under ``jit`` and ``vmap``."""
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None or len(shape) < 3 or shape[-1] != channels:
        raise ValueError(
            f"expected a Growing CA state of shape (..., H, W, {channels}), got "
            f"{tuple(shape) if shape is not None else type(x).__name__}"
        )
    if shape[-3] < 3 or shape[-2] < 3:
        raise ValueError(f"grid must be at least 3x3, got {shape[-3]}x{shape[-2]}")
    if dtype != jnp.float32:
        raise ValueError(f"expected a float32 state, got {dtype} (cast it: x.astype(jnp.float32))")


def growing_step(
    params: dict,
    x: jax.Array,
    key: jax.Array,
    fire_rate: float = FIRE_RATE,
    perceive: Callable[[jax.Array], jax.Array] = sobel_perceive,
    update: nn.Module = UPDATE,
) -> jax.Array:
    """One CA step: perceive, update the cells that fire, keep cells alive before and after.

    ``perceive`` selects the formulation (:func:`sobel_perceive_conv` for the benchmark's
    baseline; ``im2col3x3`` for a learned perception), ``update`` the network (the
    article's by default; see :mod:`nca_adv.models.architecture` for other sizes).
    """
    pre_alive = alive_mask(x)
    dx = update.apply({"params": params}, perceive(x))
    x = x + dx * fire_mask(key, x.shape[:-1], fire_rate)
    return x * (pre_alive & alive_mask(x))


@dataclasses.dataclass(frozen=True)
class _Apply:
    """``(params, features) -> dx`` of an update network: hashable, so living steps of one
    architecture share their compiled pieces."""

    update: nn.Module

    def __call__(self, params, features):
        return self.update.apply({"params": params}, features)


@jax.tree_util.register_pytree_node_class
class GrowingStep:
    """A Growing CA's step as a value, ``(x, key) -> x``: the parameters, fire rate,
    perception, update network and the form it runs in (``living``: the update only on the
    cells that can reach the result, see :mod:`nca_adv.models.living`; ``dense``: every
    cell, :func:`growing_step`). Both give the same states for the same key.

    A pytree: the parameters are its leaves, the rest is static, so a step passed into a
    jitted function is traced (a new step of the same architecture does not recompile)."""

    def __init__(
        self, params, fire_rate=FIRE_RATE, perceive=sobel_perceive, update=UPDATE, form=None
    ):
        self.params, self.fire_rate = params, float(fire_rate)
        self.perceive, self.update = perceive, update
        self.form = living.resolve_form(form)

    def tree_flatten(self):
        return (self.params,), (self.fire_rate, self.perceive, self.update, self.form)

    @classmethod
    def tree_unflatten(cls, aux, children):
        step = object.__new__(cls)
        step.params = children[0]
        step.fire_rate, step.perceive, step.update, step.form = aux
        return step

    @property
    def channels(self) -> int:
        return self.update.channels

    def apply(self) -> _Apply:
        return _Apply(self.update)

    def __call__(self, x: jax.Array, key: jax.Array) -> jax.Array:
        check_cells(x, self.update.channels)
        if self.form == "living":
            return living.living_step(
                self.perceive, (self.apply(),), self.fire_rate, (self.params,), x, key
            )
        return growing_step(self.params, x, key, self.fire_rate, self.perceive, self.update)

    def fusable_with(self, other) -> bool:
        """Whether a mixed step of ``self`` and ``other`` can run as one living step."""
        return (
            isinstance(other, GrowingStep)
            and self.form == other.form == "living"
            and self.perceive is other.perceive
            and self.fire_rate == other.fire_rate
        )


def mixed_living_step(base: GrowingStep, adversary: GrowingStep, mask) -> Callable:
    """The adversaries' mixed step (:func:`nca_adv.attacks.adversaries.with_adversaries`) as
    one living step: one gather, both networks on the needed cells, each keeping its own
    alive masks, ``mask`` > 0 picking the adversary's result."""

    def step(x, key):
        return living.living_step(
            base.perceive,
            (base.apply(), adversary.apply()),
            base.fire_rate,
            (base.params, adversary.params),
            x,
            key,
            mask,
        )

    return step


@functools.partial(jax.jit, static_argnames=("steps", "trajectory", "fire_rate", "perceive"))
def _rollout(params, x0, key, steps, trajectory, fire_rate, perceive):
    step = GrowingStep(params, fire_rate, perceive)
    return scan_steps(step, x0, key, steps, trajectory)


def rollout(
    params: dict,
    x0: jax.Array,
    key: jax.Array,
    steps: int,
    trajectory: bool = False,
    fire_rate: float = FIRE_RATE,
    perceive: Callable[[jax.Array], jax.Array] = sobel_perceive,
) -> jax.Array:
    """Run ``steps`` steps from ``x0`` (..., H, W, 16), jitted.

    Returns the final state, or with ``trajectory=True`` the (steps, ..., H, W, 16) states
    after each step. Raises ValueError on a badly shaped or non-finite ``x0``.
    """
    check_state(x0)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    return _rollout(params, x0, key, steps, trajectory, fire_rate, perceive)


@functools.partial(jax.jit, static_argnames=("steps", "fire_rate"))
def rollout_each(
    params: dict, x0: jax.Array, keys: jax.Array, steps: int, fire_rate: float = FIRE_RATE
) -> jax.Array:
    """``vmap`` of :func:`rollout` over a batch (B, H, W, 16) with one key per sample.

    Sample i's result depends only on ``keys[i]``, not on the batch it runs in: the form
    for sweeps (over seeds, or with ``in_axes`` over parameters).
    """
    return jax.vmap(lambda x, k: _rollout(params, x, k, steps, False, fire_rate, sobel_perceive))(
        x0, keys
    )


def damage(x: jax.Array, key: jax.Array) -> jax.Array:
    """Erase one random circle (see :func:`circle_damage_masks`) from each state of a batch."""
    check_state(x)
    return _cut_circles(x, key)


def _cut_circles(x: jax.Array, key: jax.Array) -> jax.Array:
    batch = x.reshape(-1, *x.shape[-3:])
    masks = circle_damage_masks(key, batch.shape[0], *batch.shape[1:3])
    return (batch * masks).reshape(x.shape)


def damaged_rollout(
    roll: Callable[[jax.Array, jax.Array, int, bool], jax.Array],
    x0: jax.Array,
    key: jax.Array,
    steps: int,
    damage_at: int | None = None,
    trajectory: bool = False,
) -> jax.Array:
    """``roll(x0, key, steps, trajectory)`` (a rollout of any Growing CA), with one random
    circle cut out of every pattern after ``damage_at`` steps: the regeneration experiment.
    The trajectory holds steps + 1 states when damaged (the cut state after step
    ``damage_at``). The same keys for every CA, so equal rules give equal states."""
    if damage_at is None:
        return roll(x0, key, steps, trajectory)
    if not 0 <= damage_at < steps:
        raise ValueError(f"damage_at must lie in [0, {steps}), got {damage_at}")
    k_first, k_damage, k_rest = jax.random.split(key, 3)
    first = roll(x0, k_first, damage_at, trajectory)
    if trajectory:
        before = first[-1] if damage_at else jnp.asarray(x0)
    else:
        before = first
    cut = _cut_circles(before, k_damage)
    rest = roll(cut, k_rest, steps - damage_at, trajectory)
    return jnp.concatenate([first, cut[None], rest]) if trajectory else rest


def rollout_with_damage(
    params: dict,
    x0: jax.Array,
    key: jax.Array,
    steps: int,
    damage_at: int | None = None,
    trajectory: bool = False,
) -> jax.Array:
    """:func:`rollout` of the article's rule through :func:`damaged_rollout` (one random
    circle cut out of every pattern after ``damage_at`` steps)."""
    check_state(x0)

    def roll(x, key, steps, trajectory):
        return rollout(params, x, key, steps, trajectory)

    return damaged_rollout(roll, x0, key, steps, damage_at, trajectory)


def variable_rollout(
    params: dict,
    x0: jax.Array,
    key: jax.Array,
    n_steps: jax.Array,
    max_steps: int,
    fire_rate: float = FIRE_RATE,
    remat: bool = True,
    perceive: Callable[[jax.Array], jax.Array] = sobel_perceive,
) -> jax.Array:
    """Run a traced number ``n_steps <= max_steps`` of steps with one compiled scan.

    Steps past ``n_steps`` are skipped by ``lax.cond`` (only the taken branch runs on
    CPU/GPU), so one compilation serves every step count at the cost of the steps taken.
    """

    return scan_variable_steps(
        GrowingStep(params, fire_rate, perceive),
        x0,
        key,
        n_steps,
        max_steps,
        remat,
    )


def growing_loss(x: jax.Array, target: jax.Array) -> jax.Array:
    """Per-sample loss (...,): mean over H, W, RGBA of the squared error to ``target``
    (H, W, 4), or one target per sample (..., H, W, 4)."""
    xs, ts = tuple(jnp.shape(x)), tuple(jnp.shape(target))
    if len(xs) < 3 or len(ts) < 3 or ts[-1] != 4 or ts[-3:-1] != xs[-3:-1]:
        raise ValueError(
            f"growing_loss: the target must be an RGBA grid (H, W, 4) of the state's size, "
            f"got target {ts} for states {xs}"
        )
    return jnp.mean(jnp.square(x[..., :4] - target), axis=(-3, -2, -1))


class GrowingTrainConfig(NamedTuple):
    """Hyper-parameters of Growing CA training (the original's defaults)."""

    pool_size: int = 1024
    batch_size: int = 8
    min_steps: int = 64
    max_steps: int = 95  # inclusive: each iteration runs randint(64, 96) steps
    damage_n: int = 3
    lr: float = 2e-3
    lr_decay_at: int = 2000
    lr_decay: float = 0.1
    fire_rate: float = FIRE_RATE
