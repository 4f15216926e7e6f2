"""Perturbed Growing CA rollouts: on/off schedules, phases, and the interpolation and
composition analysis, each one jitted program (``vmap`` over matrices and seeds).

The base is a model in any form :func:`nca_adv.models.architecture.as_stepper` takes: a
:class:`~nca_adv.models.architecture.CA`, a bare Growing CA params dict (any hidden size or
perception), or a step function ``(x, key) -> x`` (e.g. a mixed step with adversaries: a
perturbation over an adversarial attack)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nca_adv.attacks.perturbation import CHANNELS, CLIP, interpolate, perturb_state
from nca_adv.models import architecture, growing
from nca_adv.models.masks import alive_mask
from nca_adv.models.rollout import scan_steps


@functools.partial(jax.jit, static_argnames=("trajectory", "clip"))
def _scheduled(params, a, x0, key, on, start, trajectory, clip):
    """Steps start .. start+len(on)-1; step i draws fold_in(key, i). ``trajectory``:
    None, "state" (every state) or "rgba" (their first 4 channels: 4x less memory)."""
    base = architecture.as_stepper(params, "growing")

    def body(x, inp):
        i, on_i = inp
        # Select the state, not the matrix: "off" must skip the clip and the alive mask.
        x = jnp.where(on_i, perturb_state(x, a, clip=clip), x)
        x = base.step(x, jax.random.fold_in(key, i))
        out = None if trajectory is None else (x if trajectory == "state" else x[..., :4])
        return x, out

    x_final, states = jax.lax.scan(body, x0, (start + jnp.arange(on.shape[0]), on))
    return x_final if trajectory is None else states


def _check(a, on, channels: int = CHANNELS) -> tuple[jax.Array, jax.Array]:
    if jnp.shape(a) != (channels, channels):
        raise ValueError(
            f"perturbation matrix must be {channels}x{channels} for a state of {channels} "
            f"channels, got {jnp.shape(a)}"
        )
    on = jnp.asarray(on, bool)
    if on.ndim != 1 or on.shape[0] < 1:
        raise ValueError(f"on must be a non-empty 1-D per-step schedule, got shape {on.shape}")
    return jnp.asarray(a, jnp.float32), on


def perturbed_rollout(
    params: architecture.ModelLike,
    a: jax.Array,
    x0: jax.Array,
    key: jax.Array,
    on: np.ndarray | jax.Array,
    trajectory: bool | str = False,
    clip: float | None = CLIP,
    start: int = 0,
) -> jax.Array:
    """Growing CA rollout of ``len(on)`` steps from x0 (..., H, W, 16), perturbed by ``a``
    on the steps where ``on`` is true (:func:`perturbation.parse_schedule`); jitted scan.

    Step i draws ``fold_in(key, start + i)`` as :func:`growing.rollout` does (start = 0),
    so with ``on`` all false the result is the plain rollout bit for bit, and a rollout
    split into phases with the right ``start`` equals the unsplit one. Returns the final
    state, or with ``trajectory=True`` the (steps, ..., H, W, 16) states after each step
    (``"rgba"``: only their first 4 channels).
    """
    params = architecture.as_stepper(params, "growing")
    x0 = _check_x0(params, x0)
    a, on = _check(a, on, x0.shape[-1])
    mode = {False: None, True: "state", "rgba": "rgba"}[trajectory]
    return _scheduled(params, a, x0, key, on, jnp.int32(start), mode, clip)


@functools.partial(jax.jit, static_argnames=("clip",))
def _scheduled_each(params, a, x0, keys, on, start, clip):
    return jax.vmap(lambda x, k: _scheduled(params, a, x, k, on, start, None, clip))(x0, keys)


def _check_x0(base, x0) -> jax.Array:
    """x0 as an array, checked: a finite float32 (..., H, W, C) state of the base's C."""
    x0 = jnp.asarray(x0)
    channels = architecture.state_channels(base)
    growing.check_state(x0, channels or x0.shape[-1])
    growing.check_cells(x0, channels or x0.shape[-1])
    return x0


class PhaseResult(NamedTuple):
    on: bool
    start: int
    end: int
    state: np.ndarray  # (S, H, W, 16) at the end of the phase


def run_phases(
    params: architecture.ModelLike,
    a: jax.Array,
    x0: jax.Array,
    keys: jax.Array,
    phases: list[tuple[bool, int, int]],
    clip: float | None = CLIP,
) -> list[PhaseResult]:
    """One independent run per start state x0[s] with its own key keys[s] (``vmap``), through
    contiguous ``phases`` [(on, start, end)] (:func:`perturbation.parse_phases`); the
    states at each phase's end. Run s equals ``perturbed_rollout(.., x0[s], keys[s], on)``."""
    params = architecture.as_stepper(params, "growing")
    x0 = _check_x0(params, x0)
    if x0.ndim != 4 or keys.shape[0] != x0.shape[0]:
        raise ValueError(f"need (S, H, W, C) start states and S keys, got {x0.shape}, {keys.shape}")
    a, _ = _check(a, [True], x0.shape[-1])
    out, x = [], jnp.asarray(x0)
    for on, start, end in phases:
        seg = jnp.full(end - start, on)
        x = _scheduled_each(params, a, x, keys, seg, jnp.int32(start), clip)
        out.append(PhaseResult(bool(on), start, end, np.asarray(x)))
    return out


def grow(params: architecture.ModelLike, h: int, w: int, keys: jax.Array, steps: int) -> jax.Array:
    """(S, H, W, C): one seed per key grown ``steps`` steps by the base alone."""
    base = architecture.as_stepper(params, "growing")
    channels = architecture.state_channels(base) or growing.CHANNELS
    seed = (
        base.model.seed(h, w)
        if isinstance(base, architecture.CA)
        else growing.seed_state(h, w, channels)
    )
    seeds = jnp.broadcast_to(seed, (keys.shape[0], *seed.shape))
    if not steps:
        return seeds
    if isinstance(base, architecture.CA) and base.model == architecture.GrowingCA():
        return growing.rollout_each(base.params, seeds, keys, steps)
    return _grow_each(base, seeds, keys, steps)


@functools.partial(jax.jit, static_argnames=("steps",))
def _grow_each(base, seeds, keys, steps):
    return jax.vmap(lambda x, k: scan_steps(base.step, x, k, steps))(seeds, keys)


# ----------------------------------------------------------------------------- analysis
def centre_of_mass_y(x: jax.Array) -> jax.Array:
    """Alpha-weighted mean row (...,) of states (..., H, W, C); NaN for an empty grid."""
    alpha = jnp.clip(x[..., 3], 0.0, 1.0)
    rows = jnp.arange(x.shape[-3], dtype=jnp.float32)[:, None]
    return jnp.sum(alpha * rows, axis=(-2, -1)) / jnp.sum(alpha, axis=(-2, -1))


def alive_count(x: jax.Array) -> jax.Array:
    """Living cells (...,) of states (..., H, W, C)."""
    return jnp.sum(alive_mask(x), axis=(-3, -2, -1))


@functools.partial(jax.jit, static_argnames=("steps", "frames_every"))
def _sweep(params, matrices, x0, keys, steps, target, original_target, frames_every):
    def one(a, x, key):
        if not frames_every:
            return _scheduled(params, a, x, key, jnp.ones(steps, bool), 0, None, CLIP), None

        def chunk(x, j):  # frames_every steps, then one RGBA frame
            on = jnp.ones(frames_every, bool)
            x = _scheduled(params, a, x, key, on, j * frames_every, None, CLIP)
            return x, x[..., :4]

        return jax.lax.scan(chunk, x, jnp.arange(steps // frames_every))

    def plain(x, key):
        return scan_steps(architecture.as_stepper(params, "growing").step, x, key, steps)

    finals, frames = jax.vmap(lambda a: jax.vmap(lambda x, k: one(a, x, k))(x0, keys))(matrices)
    base = jax.vmap(plain)(x0, keys)
    base_alive = alive_count(base).astype(jnp.float32)
    out = {
        "loss": growing.growing_loss(finals, target),
        "loss_original": growing.growing_loss(finals, original_target),
        "alive_relative": alive_count(finals) / jnp.maximum(base_alive, 1.0),
        "drift": centre_of_mass_y(finals) - centre_of_mass_y(base),
        "finals": finals,
        "base": base,
    }
    if frames_every:
        out["frames"] = frames
    return out


def sweep(
    params: architecture.ModelLike,
    matrices: jax.Array,
    x0: jax.Array,
    keys: jax.Array,
    steps: int,
    target: np.ndarray,
    original_target: np.ndarray,
    frames_every: int = 0,
) -> dict[str, np.ndarray]:
    """Perturbed rollouts (on throughout) for every matrix (K, 16, 16) x every start state
    x0[s] with its key keys[s], in one jitted program (``vmap`` over matrices and seeds).

    Per (K, S): ``loss`` to ``target``, ``loss_original`` to ``original_target``,
    ``alive_relative`` (living cells / those of the unperturbed rollout with the same key:
    > 1 is overgrowth) and ``drift`` (rows the alpha-weighted centre of mass lies below
    the unperturbed one's; positive = down); ``finals`` (K, S, H, W, 16), the unperturbed
    ``base`` (S, H, W, 16) and with ``frames_every`` > 0 (a divisor of ``steps``) the RGBA
    ``frames`` (K, S, steps // frames_every, H, W, 4) after every that many steps.
    """
    matrices = jnp.asarray(matrices, jnp.float32)
    params = architecture.as_stepper(params, "growing")
    x0 = _check_x0(params, x0)
    c = x0.shape[-1]
    if matrices.ndim != 3 or matrices.shape[1:] != (c, c):
        raise ValueError(
            f"matrices must be (K, {c}, {c}) for a state of {c} channels, got {matrices.shape}"
        )
    if x0.ndim != 4 or keys.shape[0] != x0.shape[0]:
        raise ValueError(f"need (S, H, W, C) start states and S keys, got {x0.shape}, {keys.shape}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if frames_every < 0 or (frames_every and steps % frames_every):
        raise ValueError(f"frames_every={frames_every} must divide steps={steps}")
    out = _sweep(
        params, matrices, jnp.asarray(x0), keys, steps, target, original_target, frames_every
    )
    return {k: np.asarray(v) for k, v in out.items()}


def sweep_interpolation(params, a, ks, x0, keys, steps, target, original_target) -> dict:
    """:func:`sweep` over A_k = k A + (1 - k) I for each k in ``ks``."""
    mats = interpolate(jnp.asarray(a, jnp.float32), jnp.asarray(ks, jnp.float32))
    return sweep(params, mats, x0, keys, steps, target, original_target)


# ----------------------------------------------------------------------------- pictures
ON_COLOUR = np.array([220, 40, 40], np.uint8)
OFF_COLOUR = np.array([40, 170, 60], np.uint8)


def schedule_frames(
    rgba: np.ndarray, on: np.ndarray, zoom: int = 4, max_frames: int = 300
) -> np.ndarray:
    """Video frames (T', H*zoom + bar, W*zoom, 3) uint8 of a (T, H, W, 4) trajectory, with a
    bar on top, red while the perturbation is on and green while off; at most
    ``max_frames`` frames (every n-th step)."""
    from nca_adv.media import video

    rgba, on = np.asarray(rgba), np.asarray(on, bool)
    if rgba.ndim != 4 or rgba.shape[-1] < 4 or len(on) != len(rgba):
        raise ValueError(f"need (T, H, W, 4) states and T flags, got {rgba.shape}, {on.shape}")
    every = -(-len(rgba) // max_frames)
    idx = np.arange(every - 1, len(rgba), every)
    pics = video.zoom(video.to_uint8(video.rgba_to_rgb(rgba[idx])), zoom)
    bar = np.where(on[idx, None, None, None], ON_COLOUR, OFF_COLOUR)
    bar = np.broadcast_to(bar, (len(idx), max(2, zoom), pics.shape[2], 3))
    return np.concatenate([bar, pics], axis=1)


def measures(x: np.ndarray, base: np.ndarray, named_targets: dict[str, np.ndarray]) -> dict:
    """Per-run measures of perturbed states x (S, H, W, 16) against the unperturbed ``base``
    states of the same runs: ``loss_<name>`` to each target, ``alive_relative`` and
    ``drift`` (rows; positive = down), each as {"mean": .., "per_run": [..]}."""
    per_run = {f"loss_{name}": growing.growing_loss(x, t) for name, t in named_targets.items()}
    per_run["alive_relative"] = alive_count(x) / jnp.maximum(alive_count(base), 1)
    per_run["drift"] = centre_of_mass_y(x) - centre_of_mass_y(base)
    return {
        k: {"mean": float(np.mean(v)), "per_run": np.asarray(v).tolist()}
        for k, v in per_run.items()
    }
