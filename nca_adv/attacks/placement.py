"""Target-set selection: which k cells should the adversary take? (issue 15, part 1)

The article places its adversaries at random. Here the placement is optimised:

1. Relax the 0/1 mask to m in [0, 1] (:func:`relaxed_adversaries`:
   ``x' = m * adv(x, k) + (1 - m) * base(x, k)``, the same key for both, as
   :func:`adversaries.with_adversaries`) and optimise m by gradient through the rollout
   (normalised projected gradient steps), projecting after each update onto the budget set
   ``{0 <= m <= 1, sum m = k, m = 0 off the eligible cells}`` (:func:`project_budget`).
2. Take the top k of m as the discrete placement (:func:`top_k_mask`).
3. Start from the best (on the optimisation keys) of that top k and several random
   k-cell placements (:func:`best_start`), and refine it greedily with the ordinary discrete
   mixed step (:func:`greedy_swaps`): swap one chosen cell for an unchosen one, keep the
   swap only when the loss falls. So the result is never worse, on the optimisation keys,
   than the best random placement it was given (:func:`optimise_placement`).

Everything works on a leading axis of independent problems (B,) (digits, or one lizard),
each with its own eligible cells (B, H, W, 1) and the same budget k. The losses are means
over *optimisation* keys; results are measured on *held-out* keys (:func:`split_keys`,
:func:`check_held_out`): the CA is stochastic, and a placement that only works for the
noise it was tuned on is not a result. The MNIST and growing objectives are at the end.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from nca_adv.attacks import adversaries
from nca_adv.errors import UserError
from nca_adv.models import architecture, growing, mnist
from nca_adv.models.rollout import scan_steps

Step = Callable[[jax.Array, jax.Array], jax.Array]
# masks: (B, H, W, 1) float -> per-problem loss (B,), a mean over the optimisation keys
Objective = Callable[[jax.Array], jax.Array]


# ----------------------------------------------------------------------------- budget, keys
def budget_cells(budget, share_of: int, eligible: int | None = None) -> int:
    """The budget as a cell count k.

    ``budget`` >= 1 is a whole number of cells; 0 < ``budget`` < 1 is a share of
    ``share_of`` cells (MNIST: the 784 cells of the grid, as the article's masks; growing:
    the eligible cells of the mutated target), rounded, at least 1. UserError (one line)
    for 0, negative, non-finite or fractional counts, and for k above ``share_of`` or the
    fewest ``eligible`` cells of any problem.
    """
    try:
        b = float(budget)
    except (TypeError, ValueError):
        raise UserError(f"budget must be a number, got {budget!r}") from None
    if not math.isfinite(b) or b <= 0:
        raise UserError(f"budget must be > 0 (cells, or a share in (0, 1)), got {budget!r}")
    if b < 1:
        k = max(1, round(b * share_of))
    elif b != int(b):
        raise UserError(f"a budget >= 1 counts cells and must be a whole number, got {budget!r}")
    else:
        k = int(b)
    if k > share_of:
        raise UserError(f"budget of {k} cells is more than the grid's {share_of} cells")
    if eligible is not None and k > eligible:
        raise UserError(f"budget of {k} cells is more than the {eligible} eligible cells")
    return k


def split_keys(key: jax.Array, n_opt: int, n_eval: int) -> tuple[jax.Array, jax.Array]:
    """Disjoint optimisation and held-out keys: ``split(key, n_opt + n_eval)`` cut in two."""
    if n_opt < 1 or n_eval < 1:
        raise UserError(f"need >= 1 optimisation and held-out keys, got {n_opt}, {n_eval}")
    keys = jax.random.split(key, n_opt + n_eval)
    return keys[:n_opt], keys[n_opt:]


def check_held_out(opt_keys: jax.Array, eval_keys: jax.Array) -> None:
    """ValueError if a held-out key is also an optimisation key (compared by key data)."""
    a = np.asarray(jax.random.key_data(opt_keys)).reshape(len(opt_keys), -1)
    b = np.asarray(jax.random.key_data(eval_keys)).reshape(len(eval_keys), -1)
    shared = (a[:, None, :] == b[None, :, :]).all(-1)
    if shared.any():
        raise ValueError(f"{int(shared.sum())} held-out key(s) are also optimisation keys")


# ----------------------------------------------------------------------------- relaxed step
def relaxed_adversaries(adv_step: Step, m: jax.Array) -> Callable[[Step], Step]:
    """The relaxed attack as a transform ``Step -> Step``: ``m * adv(x, k) + (1 - m) *
    base(x, k)`` with ``m`` (..., H, W, 1) in [0, 1], both from the same state and key.

    At m in {0, 1} this is :func:`adversaries.with_adversaries` exactly for finite states
    (``1 * a + 0 * b == a``); in between, the gradient with respect to m says how much the
    loss would change if the cell were more adversary. The arithmetic form (not
    ``b + m (a - b)``) keeps m = 1 exact.
    """
    m = jnp.asarray(m)
    if m.ndim < 3 or m.shape[-1] != 1:
        raise ValueError(f"relaxed mask must have shape (..., H, W, 1), got {m.shape}")

    def transform(base_step: Step) -> Step:
        def step(x, key):
            return m * adv_step(x, key) + (1 - m) * base_step(x, key)

        return step

    return transform


# ----------------------------------------------------------------------------- masks
def project_budget(v: jax.Array, eligible: jax.Array, k, iters: int = 50) -> jax.Array:
    """Euclidean projection of ``v`` (B, H, W, 1) onto ``{0 <= m <= 1, sum m = k, m = 0 off
    eligible}`` per problem: ``m = clip(v - tau, 0, 1)`` on the eligible cells, tau found by
    bisection (sum is monotone in tau). Needs k <= the eligible count."""
    chex.assert_equal_shape([v, eligible])
    on = eligible > 0
    axes = tuple(range(1, v.ndim))
    big = jnp.where(on, v, -jnp.inf).max(axes, keepdims=True)
    small = jnp.where(on, v, jnp.inf).min(axes, keepdims=True)
    lo, hi = small - 1.0, big  # sum at lo: all eligible (>= k); at hi: 0 (<= k)

    def total(tau):
        return jnp.where(on, jnp.clip(v - tau, 0.0, 1.0), 0.0).sum(axes, keepdims=True)

    def body(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) / 2
        above = total(mid) > k
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
    return jnp.where(on, jnp.clip(v - (lo + hi) / 2, 0.0, 1.0), 0.0)


def top_k_mask(scores: jax.Array, eligible: jax.Array, k: int) -> jax.Array:
    """(B, H, W, 1) 0/1 masks: the ``k`` eligible cells of highest score per problem (ties:
    the first in row-major order)."""
    chex.assert_equal_shape([scores, eligible])
    b = scores.shape[0]
    flat = jnp.where(eligible > 0, scores, -jnp.inf).reshape(b, -1)
    _, idx = jax.lax.top_k(flat, k)
    chosen = jnp.zeros_like(flat).at[jnp.arange(b)[:, None], idx].set(1.0)
    return chosen.reshape(scores.shape) * (eligible > 0)


def uniform_start(eligible: jax.Array, k: int) -> jax.Array:
    """The relaxation's starting point: k spread evenly over each problem's eligible cells."""
    on = (eligible > 0).astype(jnp.float32)
    return on * (k / on.sum(axis=(1, 2, 3), keepdims=True))


def random_masks(key: jax.Array, eligible: jax.Array, k: int) -> jax.Array:
    """(B, H, W, 1) masks of exactly ``k`` eligible cells drawn uniformly per problem."""
    scores = jax.random.uniform(key, eligible.shape)
    return top_k_mask(scores, eligible, k)


# ----------------------------------------------------------------------------- optimisers
def as_pytree(objective: Objective) -> jax.tree_util.Partial:
    """``objective`` as a pytree (:class:`jax.tree_util.Partial`): passed to a jitted
    function, its arrays are arguments, not constants (XLA would constant-fold the
    digits' cell sorting at every compilation), and one compiled program serves every
    objective of the same shapes."""
    if isinstance(objective, jax.tree_util.Partial):
        return objective
    return jax.tree_util.Partial(objective)


@jax.jit
def _relaxed_step(m, objective, eligible, k, lr):
    """One step of :func:`optimise_relaxed` (k and lr traced: one program for all budgets)."""

    def total(m):
        losses = objective(m)
        return losses.sum(), losses

    (_, losses), g = jax.value_and_grad(total, has_aux=True)(m)
    axes = tuple(range(1, m.ndim))
    g = jnp.where(eligible > 0, g, 0.0)
    g = g / (jnp.abs(g).max(axes, keepdims=True) + 1e-30)
    return project_budget(m - lr * g, eligible, k), losses


@jax.jit
def _evaluate(objective, masks):
    return objective(masks)


class Relaxation(NamedTuple):
    """The relaxed solution (B, H, W, 1) and the loss (iterations, B) before each update."""

    m: jax.Array
    losses: jax.Array


def optimise_relaxed(
    objective: Objective,
    eligible: jax.Array,
    k: int,
    iterations: int,
    lr: float = 0.05,
    m0: jax.Array | None = None,
    log: Callable[[str], None] | None = None,
) -> Relaxation:
    """Projected gradient descent on the relaxed masks: ``iterations`` steps
    ``m <- project(m - lr * g / max|g|)`` with g the gradient of ``objective(m).sum()``
    (problems are independent: each gets its own gradient, scaled by its own largest
    entry so that ``lr`` is the largest move of one cell), then :func:`project_budget`.

    Not Adam: Adam's per-entry normalisation makes its first steps ``lr * sign(g)``, which
    moves every helpful cell alike and throws away what the gradient knows (which cells
    help most); with a few iterations, that is all there is. Deterministic.
    """
    m = project_budget(uniform_start(eligible, k) if m0 is None else m0, eligible, k)
    objective = as_pytree(objective)
    history = []
    for i in range(iterations):
        m, losses = _relaxed_step(m, objective, eligible, jnp.float32(k), jnp.float32(lr))
        history.append(losses)
        if log is not None:
            log(f"relaxed iteration {i + 1}/{iterations}: loss {float(losses.mean()):.5g}")
    return Relaxation(m, jnp.stack(history) if history else jnp.zeros((0, m.shape[0])))


class Refinement(NamedTuple):
    """The refined 0/1 masks (B, H, W, 1), their loss (B,), swaps kept per problem (B,)."""

    masks: jax.Array
    loss: jax.Array
    kept: jax.Array


@jax.jit
def propose_swaps(
    key: jax.Array, masks: jax.Array, eligible: jax.Array, preference: jax.Array
) -> jax.Array:
    """One swap per problem: a chosen cell (uniform) out, an unchosen eligible cell in,
    drawn with probability proportional to ``preference`` + 1e-3 (the relaxed m: cells the
    relaxation liked are tried first, every eligible cell stays possible)."""
    b = masks.shape[0]
    k_out, k_in = jax.random.split(key)
    chosen = masks.reshape(b, -1) > 0
    free = (eligible.reshape(b, -1) > 0) & ~chosen
    logits_out = jnp.where(chosen, 0.0, -jnp.inf)
    logits_in = jnp.where(free, jnp.log(preference.reshape(b, -1) + 1e-3), -jnp.inf)
    out = jax.random.categorical(k_out, logits_out, axis=-1)
    inn = jax.random.categorical(k_in, logits_in, axis=-1)
    rows = jnp.arange(b)
    flat = masks.reshape(b, -1).at[rows, out].set(0.0)
    # no free cell (k = eligible count): categorical of all -inf; keep the mask as it was
    swapped = flat.at[rows, inn].set(1.0).reshape(masks.shape)
    return jnp.where(free.any(-1)[:, None, None, None], swapped, masks)


def greedy_swaps(
    objective: Objective,
    masks: jax.Array,
    eligible: jax.Array,
    key: jax.Array,
    rounds: int,
    preference: jax.Array | None = None,
    log: Callable[[str], None] | None = None,
) -> Refinement:
    """``rounds`` rounds of swap moves with the discrete mixed step: each round proposes one
    swap per problem (:func:`propose_swaps`, round r from ``fold_in(key, r)``) and keeps it
    where ``objective`` (the mean loss over the optimisation keys) falls. The budget and
    the eligible set are preserved by construction."""
    preference = jnp.zeros_like(masks) if preference is None else preference
    objective = as_pytree(objective)
    loss = _evaluate(objective, masks)
    kept = jnp.zeros(masks.shape[0], jnp.int32)
    for r in range(rounds):
        trial = propose_swaps(jax.random.fold_in(key, r), masks, eligible, preference)
        trial_loss = _evaluate(objective, trial)
        better = trial_loss < loss
        masks = jnp.where(better[:, None, None, None], trial, masks)
        loss = jnp.where(better, trial_loss, loss)
        kept = kept + better
        if log is not None:
            log(
                f"greedy round {r + 1}/{rounds}: loss {float(loss.mean()):.5g}, kept {int(better.sum())}"
            )
    return Refinement(masks, loss, kept)


class Placement(NamedTuple):
    """What :func:`optimise_placement` found, per problem (B,).

    ``masks`` (B, H, W, 1) the placement, ``loss`` its loss on the optimisation keys;
    ``start_loss`` (C, B) the loss of every start (row 0 the relaxed solution's top k, then
    the random placements), ``source`` the start the swaps began from (0 = relaxed),
    ``best_random_loss`` the best random start's loss, ``kept`` swaps kept, ``relaxed`` the
    relaxed m (B, H, W, 1) and ``relaxed_losses`` (iterations, B) its loss history."""

    masks: jax.Array
    loss: jax.Array
    start_masks: jax.Array
    start_loss: jax.Array
    source: jax.Array
    best_random_loss: jax.Array
    kept: jax.Array
    relaxed: jax.Array
    relaxed_losses: jax.Array


def best_start(objective: Objective, candidates: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per problem, the candidate of lowest loss: candidates (C, B, H, W, 1) -> (masks (B, H,
    W, 1), losses (C, B)). Ties go to the first candidate. One :func:`_evaluate` per
    candidate (the same compiled program)."""
    objective = as_pytree(objective)
    losses = jnp.stack([_evaluate(objective, c) for c in candidates])
    # NaN (a start that blew up) never wins
    which = jnp.argmin(jnp.where(jnp.isnan(losses), jnp.inf, losses), axis=0)
    masks = jnp.take_along_axis(candidates, which[None, :, None, None, None], axis=0)[0]
    return masks, losses


def optimise_placement(
    objective_relaxed: Objective | None,
    objective_discrete: Objective,
    eligible: jax.Array,
    k: int,
    key: jax.Array,
    *,
    iterations: int,
    rounds: int,
    random_starts: int,
    lr: float = 0.05,
    start: str = "uniform",
    log: Callable[[str], None] | None = None,
) -> Placement:
    """The whole search, never worse than its own baseline on the optimisation keys.

    1. The relaxation (:func:`optimise_relaxed`, ``iterations`` steps of
       ``objective_relaxed`` from the uniform start, or from a random k-cell placement with
       ``start="random"``); its top k is one start.
    2. ``random_starts`` random k-cell placements (:func:`random_masks`) are the others.
    3. Per problem, the start of lowest ``objective_discrete`` loss (:func:`best_start`) is
       refined by ``rounds`` greedy swaps (:func:`greedy_swaps`), each kept only where it
       lowers that loss.

    So per problem ``loss <= start_loss.min(0) <= best_random_loss`` (the swaps only move
    down): the placement is at least as good as the best of the random placements on the
    keys it was optimised on. Keys: the random starts draw ``fold_in(key, 1)``, the random
    relaxation start ``fold_in(key, 2)``, the swaps ``fold_in(key, 3)``.
    """
    if random_starts < 0:
        raise UserError(f"random_starts must be >= 0, got {random_starts}")
    k_starts, k_relax, k_swaps = (jax.random.fold_in(key, i) for i in (1, 2, 3))
    m0 = random_masks(k_relax, eligible, k) if start == "random" else None
    if objective_relaxed is not None and iterations > 0:
        relaxation = optimise_relaxed(objective_relaxed, eligible, k, iterations, lr, m0, log)
    else:
        m = project_budget(uniform_start(eligible, k) if m0 is None else m0, eligible, k)
        relaxation = Relaxation(m, jnp.zeros((0, eligible.shape[0])))
    candidates = [top_k_mask(relaxation.m, eligible, k)]
    candidates += [
        random_masks(jax.random.fold_in(k_starts, s), eligible, k) for s in range(random_starts)
    ]
    masks, start_loss = best_start(objective_discrete, jnp.stack(candidates))
    best_random = start_loss[1:].min(0) if random_starts else jnp.full_like(start_loss[0], jnp.inf)
    source = jnp.argmin(jnp.where(jnp.isnan(start_loss), jnp.inf, start_loss), axis=0)
    if log is not None:
        log(
            f"starts: relaxed {float(start_loss[0].mean()):.5g}, best random "
            f"{float(best_random.mean()):.5g}, best of all {float(start_loss.min(0).mean()):.5g} "
            f"({int((source == 0).sum())} of {len(source)} problems from the relaxed start)"
        )
    refined = greedy_swaps(
        objective_discrete, masks, eligible, k_swaps, rounds, relaxation.m, log=log
    )
    return Placement(
        refined.masks,
        refined.loss,
        masks,
        start_loss,
        source,
        best_random,
        refined.kept,
        relaxation.m,
        relaxation.losses,
    )


# ----------------------------------------------------------------------------- MNIST
def mnist_eligible(images: jax.Array) -> jax.Array:
    """(B, H, W, 1) the digits' alive cells: adversaries elsewhere never update (a dead cell
    is never written), so they are the only cells worth taking."""
    return (jnp.asarray(images) > mnist.ALIVE_THRESHOLD)[..., None].astype(jnp.float32)


class DigitCells(NamedTuple):
    """One digit's alive cells padded to K slots: flat cell ids (K,), 3x3 neighbourhoods in
    the zero-padded grid (K, 9), which slots are real (K, 1) (:func:`mnist.cell_index`)."""

    cells: jax.Array
    neighbours: jax.Array
    valid: jax.Array


def digit_cells(image: jax.Array, k: int) -> DigitCells:
    index = mnist.cell_index(image[None], k)
    return DigitCells(index.cells[0], index.neighbours[0], index.valid[0])


def mnist_mixed_digit_step(
    base: dict,
    adv: dict,
    x: jax.Array,
    slots: DigitCells,
    key: jax.Array,
    m: jax.Array,
    adv_slots: jax.Array | None = None,
) -> jax.Array:
    """One mixed step of one digit (H, W, 20) on its alive cells, for placements.

    The MNIST CA's step (:func:`mnist.mnist_step_cells`' maths: 3x3 patches, MLP, N(0,
    0.02) noise, fire U <= 0.5, alive cells only) with two changes that make placement
    search affordable: the random numbers are drawn for the K cell slots only (not the
    whole grid: the same distribution, ~5x fewer numbers, shared by both models as in
    :func:`adversaries.with_adversaries`), and the update mixes the two models per cell:
    ``m * dx_adv + (1 - m) * dx_base`` with ``m`` (K, 1) per slot (relaxed; at m in {0, 1}
    exactly one model's update), or, given ``adv_slots`` (A,), the adversary runs on
    those slots only (where their m > 0): the discrete step at A/K of the adversary's cost.
    """
    h, w, c = x.shape
    n = slots.cells.shape[0]
    padded = jnp.pad(x, ((1, 1), (1, 1), (0, 0))).reshape(-1, c)
    patches = padded[slots.neighbours].reshape(n, 9 * c)
    k_fire, k_noise = jax.random.split(key)
    fire = jax.random.uniform(k_fire, (n, 1)) <= mnist.FIRE_RATE
    noise = mnist.NOISE_STD * jax.random.normal(k_noise, (n, c - 1))
    dx = mnist.UPDATE.apply({"params": base}, patches) + noise
    if adv_slots is None:
        dx_adv = mnist.UPDATE.apply({"params": adv}, patches) + noise
        dx = m * dx_adv + (1 - m) * dx
    else:
        dx_adv = mnist.UPDATE.apply({"params": adv}, patches[adv_slots]) + noise[adv_slots]
        dx = dx.at[adv_slots].set(jnp.where(m[adv_slots] > 0, dx_adv, dx[adv_slots]))
    dx = dx * (fire & slots.valid)
    delta = jnp.zeros((h * w, c - 1), x.dtype).at[slots.cells].add(dx)
    return x.at[..., 1:].add(delta.reshape(h, w, c - 1))


def _mnist_final(base, adv, image, mask, key, steps, k, adv_cells, remat):
    """One digit (H, W) under its mask (H, W, 1) from the seed: the state after ``steps``
    mixed steps (:func:`mnist_mixed_digit_step`; step i draws ``fold_in(key, i)``). With
    ``adv_cells`` (static) the discrete sparse step with that many adversary slots, else
    the relaxed step."""
    slots = digit_cells(image, k)
    m = mask.reshape(-1)[slots.cells][:, None]
    adv_slots = None if adv_cells is None else jax.lax.top_k(m[:, 0], adv_cells)[1]

    def step(x, key):
        return mnist_mixed_digit_step(base, adv, x, slots, key, m, adv_slots)

    return scan_steps(step, mnist.seed_states(image), key, steps, remat=remat)


def mnist_target_loss(x: jax.Array, image: jax.Array, target: int) -> jax.Array:
    """Per digit: mean over its alive cells of the L2 of the class scores to one-hot
    ``target`` (the loss the adversaries were trained on, per cell)."""
    y = mnist.label_maps(image, jnp.asarray(target))
    live = jnp.maximum((image > mnist.ALIVE_THRESHOLD).sum((-2, -1)), 1)
    return mnist.l2_loss(x, y) / live


@functools.partial(jax.jit, static_argnames=("steps", "k", "adv_cells", "remat", "target"))
def mnist_rollouts(
    base, adv, images, masks, keys, ids, steps: int, k: int, adv_cells=None, remat=False, target=8
):
    """Digits (B, H, W) under masks (B, H, W, 1), each run with every key of ``keys``
    (R,): (R, B) loss to ``target`` (:func:`mnist_target_loss`) and (R, B, 10) vote counts
    at the last step. Digit b with key r draws ``fold_in(fold_in(keys[r], ids[b]), i)`` at
    step i: its result depends on its own mask, key and id, and on K (``k``, the slots per
    digit, fixed for a whole study). ``adv_cells`` (static): the discrete step with at most
    that many adversary cells on a digit's alive cells; None: the relaxed step."""

    def one(key, image, mask, d):
        x = _mnist_final(
            base, adv, image, mask, jax.random.fold_in(key, d), steps, k, adv_cells, remat
        )
        loss = mnist_target_loss(x, image, target)
        return loss, jnp.sum(
            jax.nn.one_hot(mnist.votes(x), mnist.NUM_CLASSES, dtype=jnp.int32) * mnist.alive(x),
            axis=(0, 1),
        )

    return jax.vmap(lambda key: jax.vmap(one, (None, 0, 0, 0))(key, images, masks, ids))(keys)


def _mnist_objective(base, adv, images, ids, keys, masks, *, steps, k, adv_cells, target):
    losses, _ = mnist_rollouts(
        base, adv, images, masks, keys, ids, steps, k, adv_cells, adv_cells is None, target
    )
    return losses.mean(0)


def mnist_objective(base, adv, images, ids, keys, steps: int, k: int, adv_cells, target=8):
    """Objective for the optimisers: masks -> (B,) mean loss over ``keys``; ``adv_cells``
    None: relaxed (rematerialised, for gradients), else the discrete sparse step. A
    pytree (:func:`as_pytree`): the arrays travel as arguments."""
    fn = functools.partial(_mnist_objective, steps=steps, k=k, adv_cells=adv_cells, target=target)
    return jax.tree_util.Partial(fn, base, adv, images, ids, keys)


def vote_metrics(counts: np.ndarray, target: int = adversaries.MNIST_TARGET) -> dict:
    """(..., B, 10) vote counts -> share of alive cells voting ``target`` (pooled) and the
    share of (digit, run) pairs whose majority votes ``target``."""
    c = np.asarray(counts).reshape(-1, mnist.NUM_CLASSES)
    return {
        "cells_voting_target": float(c[:, target].sum() / max(c.sum(), 1)),
        "digits_hijacked": float(np.mean(c.argmax(-1) == target)),
    }


# ----------------------------------------------------------------------------- growing
def growing_eligible(target: jax.Array) -> jax.Array:
    """(1, H, W, 1): the article's rule for growing adversaries, alpha >= 0.1 of the mutated
    target (no adversary where the tail was erased)."""
    alpha = adversaries.target_alpha(target)
    return (alpha >= adversaries.TARGET_ALPHA)[None, ..., None].astype(jnp.float32)


def _as_growing_step(model) -> growing.GrowingStep:
    """A Growing CA's step (any architecture and fire rate: ``model.step(params)``, or a
    :class:`~nca_adv.models.architecture.CA`); bare params run at the default fire rate,
    their architecture read from their shapes."""
    if isinstance(model, growing.GrowingStep):
        return model
    ca = architecture.bind(model, "growing")
    return ca.model.step(ca.params)


@functools.partial(jax.jit, static_argnames=("h", "w", "grow_first"))
def grow_lizards(base, h: int, w: int, keys: jax.Array, grow_first: int) -> jax.Array:
    """(R, H, W, C) patterns grown by ``base`` (a Growing CA's step, a CA, or the article's
    params) for ``grow_first`` steps, run r from the grow key of ``keys[r]`` exactly as
    :func:`adversary_eval.growing_attack`'s run r."""
    base = _as_growing_step(base)
    x0 = growing.seed_state(h, w, base.channels)

    def one(key):
        k_grow = jax.random.split(key, 3)[0]
        return scan_steps(base, x0, k_grow, grow_first)

    return jax.vmap(one)(keys)


@functools.partial(jax.jit, static_argnames=("steps", "relaxed", "remat"))
def growing_finals(base, adv, grown, masks, keys, steps: int, relaxed=False, remat=False):
    """(R, B, H, W, C) states after ``steps`` mixed steps from the grown patterns ``grown``
    (R, H, W, C) under masks (B, H, W, 1); run r uses the run key of ``keys[r]`` as
    :func:`adversary_eval.growing_attack` (its mask key is not used: the mask is the
    placement). ``base``, ``adv``: Growing CA steps (or CAs, or the article's params)."""
    base, adv = _as_growing_step(base), _as_growing_step(adv)

    def one(x, key, mask):
        k_run = jax.random.split(key, 3)[2]
        transform = relaxed_adversaries if relaxed else adversaries.with_adversaries
        step = transform(adv, mask)(base)
        return scan_steps(step, x, k_run, steps, remat=remat)

    return jax.vmap(lambda x, key: jax.vmap(lambda m: one(x, key, m))(masks))(grown, keys)


def growing_losses(base, adv, grown, masks, keys, target, steps: int, relaxed=False, remat=False):
    """(R, B) RGBA MSE to ``target`` of :func:`growing_finals`."""
    finals = growing_finals(base, adv, grown, masks, keys, steps, relaxed, remat)
    return growing.growing_loss(finals, target)


def _growing_objective(base, adv, grown, keys, target, masks, *, steps, relaxed):
    return growing_losses(base, adv, grown, masks, keys, target, steps, relaxed, relaxed).mean(0)


def growing_objective(base, adv, grown, keys, target, steps: int, relaxed: bool):
    """Objective for the optimisers: masks (B, H, W, 1) -> (B,) mean loss over the runs
    (a pytree, as :func:`mnist_objective`)."""
    fn = functools.partial(_growing_objective, steps=steps, relaxed=relaxed)
    return jax.tree_util.Partial(fn, base, adv, grown, keys, target)
