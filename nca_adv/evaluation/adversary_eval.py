"""Evaluations of adversarial-cell attacks (:mod:`nca_adv.attacks.adversaries`): a frozen base and
an adversary rolled out together, the article's protocols and measures, and the
attack-success curves (one program, ``vmap`` over the adversary fraction and seeds).

MNIST: share of the alive cells of the digits that are not 8 voting 8, share of those
digits whose majority votes 8 (and recovery after the adversaries leave). Growing: the
RGBA MSE to the mutated target after growing, injecting and running the mixed step.

Base and adversary are models in any form :func:`nca_adv.models.architecture.as_stepper`
takes: a :class:`~nca_adv.models.architecture.CA`, a bare params dict of either family (any
hidden size or perception), or a step function ``(x, key) -> x`` (a composed attack).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nca_adv.attacks import adversaries
from nca_adv.models import architecture, growing, mnist
from nca_adv.models.masks import ALPHA_CHANNEL
from nca_adv.models.rollout import scan_steps


# ----------------------------------------------------------------------------- MNIST
def vote_counts(x: jax.Array) -> jax.Array:
    """(..., 10) int: per digit, how many alive cells vote for each class."""
    onehot = jax.nn.one_hot(mnist.votes(x), mnist.NUM_CLASSES, dtype=jnp.int32)
    return jnp.sum(onehot * mnist.alive(x), axis=(-3, -2))


@functools.partial(jax.jit, static_argnames=("steps", "k", "inject_at", "remove_at", "trajectory"))
def mnist_adversary_rollout(
    base,
    adv,
    images: jax.Array,
    digit_ids: jax.Array,
    key: jax.Array,
    mask_key: jax.Array,
    p,
    steps: int,
    k: int,
    inject_at: int = 0,
    remove_at: int | None = None,
    ensure_live: bool = False,
    trajectory: bool = False,
):
    """Fresh seeds of ``images`` (B, H, W) rolled out ``steps`` steps on the alive cells,
    the adversary running on its mask during steps [``inject_at``, ``remove_at``).

    Returns per-step vote counts (steps, B, 10) (entry t: after t + 1 steps), the masks
    (B, H, W, 1) and, with ``trajectory``, every cell's vote (steps, B, H, W) int8 (all a
    picture needs, 80x smaller than the states). Digit b draws
    its step keys as :func:`mnist.swap_rollout` (``fold_in(fold_in(key, i), digit_ids[b])``)
    and its mask from ``fold_in(mask_key, digit_ids[b])``: its result does not depend on
    its batch mates, and with no adversary window it equals the base rollout.
    ``ensure_live`` (may be traced) redraws each mask until an adversary sits on the digit.
    """
    remove_at = steps if remove_at is None else min(remove_at, steps)
    inject_at = min(inject_at, remove_at)
    base = architecture.as_stepper(base, "mnist")
    index = mnist.cell_index(images, k)
    mask_keys = jax.vmap(lambda d: jax.random.fold_in(mask_key, d))(digit_ids)
    masks = jax.vmap(lambda mk, im: adversaries.mnist_live_mask(mk, im, p, ensure_live))(
        mask_keys, images
    )

    base_step = _cells_step(base, index)
    mixed_step = adversaries.with_adversaries(_cells_step(adv, index), masks)(base_step)

    def phase(step, x, start, stop):
        def body(x, i):
            step_key = jax.random.fold_in(key, i)
            x = step(x, jax.vmap(lambda d: jax.random.fold_in(step_key, d))(digit_ids))
            votes = mnist.votes(x).astype(jnp.int8) if trajectory else None
            return x, (vote_counts(x), votes)

        return jax.lax.scan(body, x, jnp.arange(start, stop))

    x = base.model.seed(images) if isinstance(base, architecture.CA) else mnist.seed_states(images)
    outs = []
    for step, start, stop in (
        (base_step, 0, inject_at),
        (mixed_step, inject_at, remove_at),
        (base_step, remove_at, steps),
    ):
        if stop > start:
            x, out = phase(step, x, start, stop)
            outs.append(out)
    counts = jnp.concatenate([o[0] for o in outs])
    if trajectory:
        return counts, masks, jnp.concatenate([o[1] for o in outs])
    return counts, masks


def _cells_step(model, index: mnist.CellIndex):
    """A model's MNIST step on the alive cells of ``index`` with one key per digit; a plain
    step function runs on each digit's whole grid (same maths, no gather)."""
    model = architecture.as_stepper(model, "mnist")
    if isinstance(model, architecture.CA):
        return model.model.cell_step(model.params, index, per_sample_keys=True)
    return lambda x, ks: jax.vmap(lambda xi, ki: model.step(xi[None], ki)[0])(x, ks)


def _steppers(base, adv, kind: str):
    """Both models as evaluation-ready pytrees, checked to share a grid."""
    base, adv = architecture.as_stepper(base, kind), architecture.as_stepper(adv, kind)
    if isinstance(base, architecture.CA) and isinstance(adv, architecture.CA):
        adversaries.check_compatible(base, adv)
    return base, adv


def _check_window(steps: int, inject_at: int, remove_at: int | None) -> None:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 <= inject_at < steps:
        raise ValueError(f"inject_at must lie in [0, steps={steps}), got {inject_at}")
    if remove_at is not None and not inject_at < remove_at <= steps:
        raise ValueError(f"remove_at must lie in (inject_at={inject_at}, {steps}], got {remove_at}")


def mnist_attack(
    base,
    adv,
    images: np.ndarray,
    key: jax.Array,
    p: float,
    steps: int,
    inject_at: int = 0,
    remove_at: int | None = None,
    ensure_live: bool = False,
    batch_size: int = 100,
) -> np.ndarray:
    """Per-step vote counts (steps, N, 10) of :func:`mnist_adversary_rollout` over many
    digits, in input order. Digits are batched by size (each batch's K fits its own);
    digit i's result depends on ``key`` and i only, not on ``batch_size``."""
    images = np.asarray(images, np.float32)
    mnist.check_images(images)
    adversaries.check_fraction(p)
    _check_window(steps, inject_at, remove_at)
    base, adv = _steppers(base, adv, "mnist")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    k_run, k_mask = jax.random.split(key)
    order = np.argsort((images > mnist.ALIVE_THRESHOLD).sum((1, 2)), kind="stable")
    parts, size = [], min(batch_size, len(images))
    for lo in range(0, len(images), size):
        sel = order[lo : lo + size]
        pad = np.concatenate([sel, np.repeat(sel[:1], size - len(sel))])
        counts, _ = mnist_adversary_rollout(
            base,
            adv,
            images[pad],
            pad,
            k_run,
            k_mask,
            p,
            steps,
            mnist.cells_needed(images[sel]),
            inject_at,
            remove_at,
            ensure_live,
        )
        parts.append(np.asarray(counts)[:, : len(sel)])
    return np.concatenate(parts, axis=1)[:, np.argsort(order)]


def mnist_attack_metrics(
    counts: np.ndarray, labels: np.ndarray, at_step: int, target: int = adversaries.MNIST_TARGET
) -> dict:
    """At ``at_step`` (state after that many steps), over the digits whose label is not
    ``target``: ``cells_voting_target`` (share of their alive cells voting ``target``),
    ``digits_hijacked`` (share whose majority votes ``target``), ``digits_correct``
    (share whose majority votes their label)."""
    counts, labels = np.asarray(counts), np.asarray(labels)
    if counts.ndim != 3 or counts.shape[1:] != (len(labels), mnist.NUM_CLASSES):
        raise ValueError(f"counts {counts.shape} must be (steps, {len(labels)}, 10)")
    if not 1 <= at_step <= len(counts):
        raise ValueError(f"at_step must lie in [1, {len(counts)}], got {at_step}")
    others = labels != target
    if not others.any():
        raise ValueError(f"every digit is a {target}: nothing to hijack")
    c = counts[at_step - 1][others]
    majority = c.argmax(-1)
    return {
        "cells_voting_target": float(c[:, target].sum() / max(c.sum(), 1)),
        "digits_hijacked": float(np.mean(majority == target)),
        "digits_correct": float(np.mean(majority == labels[others])),
    }


def mnist_attack_summary(
    counts: np.ndarray,
    labels: np.ndarray,
    steps: int,
    remove_at: int | None = None,
    target: int = adversaries.MNIST_TARGET,
) -> dict:
    """The evaluation's numbers (:func:`mnist_attack_metrics`) at ``steps``; with
    ``remove_at`` also just before the removal and ``digits_recovered`` (share of the
    digits not ``target`` whose majority is back on their label at ``steps``)."""
    end = mnist_attack_metrics(counts, labels, steps, target)
    out = {
        "adversary_target": target,
        "cells_voting_target": end["cells_voting_target"],
        "digits_hijacked": end["digits_hijacked"],
    }
    if remove_at is not None:
        before = mnist_attack_metrics(counts, labels, remove_at, target)
        out["cells_voting_target_before_removal"] = before["cells_voting_target"]
        out["digits_hijacked_before_removal"] = before["digits_hijacked"]
        out["digits_recovered"] = end["digits_correct"]
    return out


def mnist_attack_trajectory(
    base,
    adv,
    images: np.ndarray,
    key: jax.Array,
    p: float,
    steps: int,
    inject_at: int = 0,
    remove_at: int | None = None,
    ensure_live: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For pictures: the votes (steps, B, H, W) int8, masks (B, H, W, 1), whether the
    adversaries ran at each step (steps,) and the vote counts (steps, B, 10) of
    :func:`mnist_attack` on a few digits (the same draws as there for digits 0..B-1)."""
    images = np.asarray(images, np.float32)
    mnist.check_images(images)
    adversaries.check_fraction(p)
    _check_window(steps, inject_at, remove_at)
    base, adv = _steppers(base, adv, "mnist")
    k_run, k_mask = jax.random.split(key)
    counts, masks, votes = mnist_adversary_rollout(
        base,
        adv,
        images,
        np.arange(len(images)),
        k_run,
        k_mask,
        p,
        steps,
        mnist.cells_needed(images),
        inject_at,
        remove_at,
        ensure_live,
        trajectory=True,
    )
    t = np.arange(steps)
    present = (t >= inject_at) & (t < (steps if remove_at is None else remove_at))
    return np.asarray(votes), np.asarray(masks), present, np.asarray(counts)


def mnist_attack_lanes(
    base,
    adv,
    images: jax.Array,
    keys: jax.Array,
    ps: jax.Array,
    ensure_live: jax.Array,
    steps: int,
    k: int,
) -> jax.Array:
    """(L, B, 10) vote counts after ``steps`` steps of L independent attacks on the same
    digits (B, H, W), lane l at fraction ``ps[l]`` with seed ``keys[l]`` (split into step
    and mask keys as :func:`mnist_attack`) and ``ensure_live[l]``: one program, ``vmap``
    over the lanes. ``k`` covers the digits (:func:`mnist.cells_needed`)."""
    base, adv = _steppers(base, adv, "mnist")
    return _mnist_attack_lanes(base, adv, images, keys, ps, ensure_live, steps, k)


@functools.partial(jax.jit, static_argnames=("steps", "k"))
def _mnist_attack_lanes(base, adv, images, keys, ps, ensure_live, steps, k):
    ids = jnp.arange(images.shape[0])

    def lane(key, p, ensure):
        k_run, k_mask = jax.random.split(key)
        counts, _ = mnist_adversary_rollout(
            base, adv, images, ids, k_run, k_mask, p, steps, k, ensure_live=ensure
        )
        return counts[-1]

    return jax.vmap(lane)(keys, ps, ensure_live)


def mnist_success_curve(
    base,
    adv,
    images: jax.Array,
    keys: jax.Array,
    ps: jax.Array,
    steps: int,
    k: int,
    target: int = adversaries.MNIST_TARGET,
) -> jax.Array:
    """(P, S) share of alive cells voting ``target`` after ``steps`` steps, adversaries from
    step 0 at fraction ``ps[j]`` with seed ``keys[s]``: one program (:func:`mnist_attack_lanes`
    over the P x S pairs). ``images`` (B, H, W) should hold no ``target`` digits."""
    base, adv = _steppers(base, adv, "mnist")
    n_p, n_s = len(ps), len(keys)
    lanes_p = jnp.repeat(jnp.asarray(ps, jnp.float32), n_s)
    lanes_k = jnp.tile(keys, (n_p, 1))
    counts = _mnist_attack_lanes(
        base, adv, images, lanes_k, lanes_p, jnp.zeros(n_p * n_s, bool), steps, k
    )
    share = counts[..., target].sum(-1) / jnp.maximum(counts.sum((-2, -1)), 1)
    return share.reshape(n_p, n_s)


# ----------------------------------------------------------------------------- growing
class GrowingAttack(NamedTuple):
    """Runs of :func:`growing_attack`: the lizards at injection (R, H, W, 16), the states
    after the attack (R, H, W, 16) or its trajectory (steps, R, H, W, 16), the masks
    (R, H, W, 1), and each step's largest |x| over the runs (steps,) for
    :func:`nca_adv.evaluation.guards.divergence` (inf where a state is not finite)."""

    grown: jax.Array
    states: jax.Array
    masks: jax.Array
    peaks: jax.Array | None = None


def _seed(base, h: int, w: int) -> jax.Array:
    """The seed of the base's state size (16 channels for a plain step function)."""
    if isinstance(base, architecture.CA):
        return base.model.seed(h, w)
    return growing.seed_state(h, w)


def _growing_run(base, adv, x0, alpha, key, p, grow_first, steps, trajectory):
    base = architecture.as_stepper(base, "growing")
    adv = architecture.as_stepper(adv, "growing")
    k_grow, k_mask, k_run = jax.random.split(key, 3)
    grown = scan_steps(base.step, x0, k_grow, grow_first)
    mask = adversaries.growing_adversary_mask(k_mask, alpha, p)
    mixed = adversaries.with_adversaries(adv, mask)(base)  # CAs: one fused living step
    states, peaks = _scan_with_peaks(mixed, grown, k_run, steps, trajectory)
    return GrowingAttack(grown, states, mask, peaks)


def _scan_with_peaks(step, x0, key, steps: int, trajectory: bool):
    """:func:`scan_steps` (same keys) that also returns each step's largest |x| (steps,)."""

    def body(x, i):
        x = step(x, jax.random.fold_in(key, i))
        peak = jnp.max(jnp.where(jnp.isfinite(x), jnp.abs(x), jnp.inf))
        return x, ((x if trajectory else None), peak)

    final, (states, peaks) = jax.lax.scan(body, x0, jnp.arange(steps))
    return (states if trajectory else final), peaks


@functools.partial(jax.jit, static_argnames=("grow_first", "steps", "trajectory"))
def _growing_attack(base, adv, x0, alpha, keys, p, grow_first, steps, trajectory):
    out = jax.vmap(
        lambda k: _growing_run(base, adv, x0, alpha, k, p, grow_first, steps, trajectory)
    )(keys)
    if trajectory:  # (R, steps, ...) -> (steps, R, ...) as the other rollouts
        out = out._replace(states=jnp.swapaxes(out.states, 0, 1))
    return out._replace(peaks=jnp.max(out.peaks, axis=0))


def growing_attack(
    base: architecture.ModelLike,
    adv: architecture.ModelLike,
    target,
    key: jax.Array,
    runs: int,
    p: float,
    grow_first: int = 200,
    steps: int = 500,
    trajectory: bool = False,
) -> GrowingAttack:
    """The article's growing protocol, ``runs`` independent runs: grow the seed with the
    base alone for ``grow_first`` steps, inject adversaries (one mask per run,
    :func:`growing_adversary_masks`' rule on the mutated padded ``target``), run ``steps``
    more with the mixed step. Run i depends on ``split(key, runs)[i]`` only."""
    adversaries.check_fraction(p)
    base, adv = _steppers(base, adv, "growing")
    if runs < 1 or grow_first < 0 or steps < 0:
        raise ValueError(
            f"need runs >= 1, grow_first >= 0, steps >= 0; got {runs}, {grow_first}, {steps}"
        )
    alpha = adversaries.target_alpha(target)
    x0 = _seed(base, *alpha.shape)
    keys = jax.random.split(key, runs)
    return _growing_attack(base, adv, x0, alpha, keys, p, grow_first, steps, trajectory)


def growing_success_curve(
    base: architecture.ModelLike,
    adv: architecture.ModelLike,
    target: jax.Array,
    keys: jax.Array,
    ps: jax.Array,
    grow_first: int = 200,
    steps: int = 500,
) -> jax.Array:
    """(P, S) RGBA MSE to ``target`` (the mutated, padded one) after the growing protocol
    at fraction ``ps[j]`` with seed ``keys[s]``: one program, ``vmap`` over p and seeds."""
    base, adv = _steppers(base, adv, "growing")
    return _growing_success_curve(base, adv, target, keys, ps, grow_first, steps)


@functools.partial(jax.jit, static_argnames=("grow_first", "steps"))
def _growing_success_curve(base, adv, target, keys, ps, grow_first, steps):
    alpha = target[..., ALPHA_CHANNEL]
    x0 = _seed(base, *alpha.shape)

    def loss(p, key):
        run = _growing_run(base, adv, x0, alpha, key, p, grow_first, steps, False)
        return growing.growing_loss(run.states, target)

    return jax.vmap(lambda p: jax.vmap(lambda key: loss(p, key))(keys))(ps)


def _recorded_scan(step, x, key, steps: int, every: int):
    """:func:`scan_steps` (same keys: step i draws ``fold_in(key, i)``) that also returns
    the RGBA channels after every ``every``-th step (steps // every, ..., H, W, 4)."""

    def chunk(x, c):
        def body(x, j):
            return step(x, jax.random.fold_in(key, c * every + j)), None

        x, _ = jax.lax.scan(body, x, jnp.arange(every))
        return x, x[..., :4]

    return jax.lax.scan(chunk, x, jnp.arange(steps // every))


def growing_attack_jobs(
    base,
    advs: dict,
    alphas: jax.Array,
    ps: jax.Array,
    keys: jax.Array,
    grow_first: int = 200,
    steps: int = 500,
    record_every: int = 0,
):
    """J independent runs of the growing protocol in one program (``vmap`` over jobs): job
    j uses adversary ``advs`` [j] (a params tree with a leading J axis), masks on the
    target alpha ``alphas[j]`` (H, W) at fraction ``ps[j]``, seed ``keys[j]`` (the same
    draws as run j of :func:`growing_attack` with those keys). Returns the final states
    (J, H, W, 16), the masks (J, H, W, 1) and, with ``record_every`` (dividing ``steps``),
    the RGBA after every ``record_every``-th mixed step (steps // record_every, J, H, W, 4),
    else None: a whole report's runs and its video for one compilation."""
    if record_every and steps % record_every:
        raise ValueError(f"record_every={record_every} must divide steps={steps}")
    base = architecture.as_stepper(base, "growing")
    return _growing_attack_jobs(base, advs, alphas, ps, keys, grow_first, steps, record_every)


@functools.partial(jax.jit, static_argnames=("grow_first", "steps", "record_every"))
def _growing_attack_jobs(base, advs, alphas, ps, keys, grow_first, steps, record_every):
    x0 = _seed(base, *alphas.shape[1:])

    def job(adv, alpha, p, key):
        adv = architecture.as_stepper(adv, "growing")
        k_grow, k_mask, k_run = jax.random.split(key, 3)
        grown = scan_steps(base.step, x0, k_grow, grow_first)
        mask = adversaries.growing_adversary_mask(k_mask, alpha, p)
        mixed = adversaries.with_adversaries(adv, mask)(base)  # CAs: one fused living step
        if not record_every:
            return scan_steps(mixed, grown, k_run, steps), mask, None
        final, frames = _recorded_scan(mixed, grown, k_run, steps, record_every)
        return final, mask, frames

    final, masks, frames = jax.vmap(job)(advs, alphas, ps, keys)
    return final, masks, (None if frames is None else jnp.swapaxes(frames, 0, 1))
