"""The Self-classifying MNIST CA (Randazzo et al., Distill 2020): step, rollout, labels,
loss, the mutating pool, training and evaluation metrics.

State (..., 28, 28, 20) float32: channel 0 the grey value (immutable input), 1..9
hidden, 10..19 the class scores of digits 0..9. Alive cells (grey > 0.1) are fixed by
the image; dead cells are never updated and stay 0.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nca_adv.models.perceive import im2col3x3
from nca_adv.models.rollout import scan_steps
from nca_adv.models.update import MnistUpdate, init_params

CHANNELS = 20
NUM_CLASSES = 10
FIRE_RATE = 0.5
NOISE_STD = 0.02
ALIVE_THRESHOLD = 0.1  # alive: grey > 0.1
LABEL_THRESHOLD = 0.1  # labelled: grey >= 0.1
UPDATE = MnistUpdate()


def init_mnist_params(key: jax.Array) -> dict:
    """Fresh MNIST CA parameters (last kernel zero)."""
    return init_params(UPDATE, key, 9 * CHANNELS)


def check_images(images: np.ndarray) -> None:
    """Raise ValueError unless ``images`` is a finite (B, H, W) grey batch in [0, 1]."""
    images = np.asarray(images)
    if images.ndim != 3 or min(images.shape[1:]) < 3:
        raise ValueError(f"expected grey images (B, H, W), got shape {images.shape}")
    if not np.all(np.isfinite(images)):
        raise ValueError("images hold NaN or infinite values")
    if images.min() < 0 or images.max() > 1:
        raise ValueError(f"grey values must lie in [0, 1], got [{images.min()}, {images.max()}]")


def check_states(x: np.ndarray) -> None:
    """Raise ValueError unless ``x`` is a finite (B, H, W, 20) MNIST CA state."""
    if x.ndim != 4 or x.shape[-1] != CHANNELS:
        raise ValueError(f"expected MNIST CA states (B, H, W, {CHANNELS}), got {x.shape}")
    if not bool(np.all(np.isfinite(np.asarray(x)))):
        raise ValueError("state holds NaN or infinite values")


def seed_states(images: jax.Array, channels: int = CHANNELS) -> jax.Array:
    """Grey images (..., H, W) in [0, 1] -> states (..., H, W, 20) with only channel 0 set.

    Raw bytes are refused (uint8, or concrete values above 1: divide by 255 first); a
    single image (H, W) gives a single state (H, W, 20)."""
    if getattr(images, "dtype", None) == np.uint8:
        raise ValueError("images are uint8 bytes 0..255: pass grey values in [0, 1] (x / 255)")
    images = jnp.asarray(images, jnp.float32)
    if images.ndim < 2:
        raise ValueError(f"expected grey images (..., H, W), got shape {images.shape}")
    if not isinstance(images, jax.core.Tracer) and images.size and float(images.max()) > 1.0:
        raise ValueError(
            f"grey values must lie in [0, 1], got max {float(images.max())} (raw bytes? x / 255)"
        )
    x = jnp.zeros((*images.shape, channels), jnp.float32)
    return x.at[..., 0].set(images)


def alive(x: jax.Array) -> jax.Array:
    """(..., H, W, 1) bool: the cells on the digit (grey > 0.1)."""
    return x[..., :1] > ALIVE_THRESHOLD


def label_maps(images: jax.Array, labels: jax.Array) -> jax.Array:
    """(..., H, W, 10) targets: one-hot of ``labels`` where grey >= 0.1, zero elsewhere."""
    on = (images >= LABEL_THRESHOLD)[..., None]
    return jax.nn.one_hot(labels, NUM_CLASSES)[..., None, None, :] * on


def _random_draws(
    key: jax.Array, b: int, h: int, w: int, per_sample: bool, channels: int = CHANNELS
) -> tuple[jax.Array, jax.Array]:
    """The step's random numbers on the whole grid: uniform (B, H, W, 1) for the fire mask
    and standard normal (B, H, W, 19) for the noise. With ``per_sample``, ``key`` holds one
    key per sample (B, ...) and sample i's draws depend on ``key[i]`` only."""
    shapes = ((h, w, 1), (h, w, channels - 1))

    def draw(k, lead):
        k_fire, k_noise = jax.random.split(k)
        return (
            jax.random.uniform(k_fire, (*lead, *shapes[0])),
            jax.random.normal(k_noise, (*lead, *shapes[1])),
        )

    if per_sample:
        return jax.vmap(lambda k: draw(k, ()))(key)
    return draw(key, (b,))


def mnist_step(
    params: dict,
    x: jax.Array,
    key: jax.Array,
    fire_rate: float = FIRE_RATE,
    noise_std: float = NOISE_STD,
    per_sample_keys: bool = False,
    update: nn.Module = UPDATE,
) -> jax.Array:
    """One step on the whole (B, H, W, 20) grid: learned 3x3 perception + MLP, N(0,
    noise_std) residual noise, applied to channels 1..19 only where the cell fires AND is
    alive. No clipping. The reference form of :func:`mnist_step_cells`."""
    b, h, w, c = x.shape
    uniform, normal = _random_draws(key, b, h, w, per_sample_keys, c)
    dx = update.apply({"params": params}, im2col3x3(x)) + noise_std * normal
    mask = (uniform <= fire_rate) & alive(x)
    return x.at[..., 1:].add(dx * mask)


class CellIndex(NamedTuple):
    """The alive cells of a batch of digits, padded to K per digit.

    ``cells`` (B, K) flat indices into the H*W grid (alive cells first), ``neighbours``
    (B, K, 9) flat indices of their 3x3 neighbourhoods in the zero-padded (H+2)*(W+2) grid,
    ``valid`` (B, K, 1) which of the K entries are real alive cells.
    """

    cells: jax.Array
    neighbours: jax.Array
    valid: jax.Array


def cell_index(images: jax.Array, k: int) -> CellIndex:
    """Index the alive cells (grey > 0.1) of (B, H, W) images, K slots per digit."""
    b, h, w = images.shape
    live = (images > ALIVE_THRESHOLD).reshape(b, h * w)
    cells = jnp.argsort(~live, axis=-1, stable=True)[:, :k]
    valid = jnp.take_along_axis(live, cells, axis=-1)[..., None]
    r, c = cells // w, cells % w
    neighbours = jnp.stack(
        [(r + dy) * (w + 2) + (c + dx) for dy in range(3) for dx in range(3)], axis=-1
    )
    return CellIndex(cells, neighbours, valid)


def cells_needed(*images: np.ndarray, multiple: int = 32) -> int:
    """K for :func:`cell_index`: the most alive cells of any digit, rounded up to
    ``multiple`` so that few distinct K (compilations) occur."""
    most = max(int((np.asarray(im) > ALIVE_THRESHOLD).sum(axis=(-2, -1)).max()) for im in images)
    return max(multiple, -(-most // multiple) * multiple)


def mnist_step_cells(
    params: dict,
    x: jax.Array,
    index: CellIndex,
    key: jax.Array,
    fire_rate: float = FIRE_RATE,
    noise_std: float = NOISE_STD,
    per_sample_keys: bool = False,
    update: nn.Module = UPDATE,
) -> jax.Array:
    """:func:`mnist_step` computed on the alive cells only: same maths, same random draws,
    same result (bit for bit), about H*W/K times less work.

    Dead cells never change, so their update need not be computed: the K alive cells'
    3x3 patches are gathered from the zero-padded grid, the MLP runs on them, and the
    update is scattered back. Random numbers are drawn on the whole grid (as the dense
    step does) and gathered, so results never depend on K or on the other digits.
    """
    b, h, w, c = x.shape
    k = index.cells.shape[1]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(b, -1, c)
    flat_nb = index.neighbours.reshape(b, k * 9, 1)
    patches = jnp.take_along_axis(padded, flat_nb, axis=1).reshape(b, k, 9 * c)
    uniform, normal = _random_draws(key, b, h, w, per_sample_keys, c)
    at_cells = index.cells[..., None]
    uniform = jnp.take_along_axis(uniform.reshape(b, h * w, 1), at_cells, axis=1)
    normal = jnp.take_along_axis(normal.reshape(b, h * w, c - 1), at_cells, axis=1)
    dx = update.apply({"params": params}, patches) + noise_std * normal
    dx = dx * ((uniform <= fire_rate) & index.valid)
    delta = jnp.zeros((b, h * w, c - 1), x.dtype).at[jnp.arange(b)[:, None], index.cells].add(dx)
    return x.at[..., 1:].add(delta.reshape(b, h, w, c - 1))


@functools.partial(jax.jit, static_argnames=("steps", "k", "trajectory", "fire_rate", "noise_std"))
def _rollout(params, x0, key, steps, k, trajectory, fire_rate, noise_std):
    if k is None:
        step = lambda x, ks: mnist_step(params, x, ks, fire_rate, noise_std)  # noqa: E731
    else:
        index = cell_index(x0[..., 0], k)
        step = lambda x, ks: mnist_step_cells(params, x, index, ks, fire_rate, noise_std)  # noqa: E731
    return scan_steps(step, x0, key, steps, trajectory)


def rollout(
    params: dict,
    x0: jax.Array,
    key: jax.Array,
    steps: int,
    trajectory: bool = False,
    fire_rate: float = FIRE_RATE,
    noise_std: float = NOISE_STD,
    cells: int | None = None,
) -> jax.Array:
    """Run ``steps`` steps from states ``x0`` (B, 28, 28, 20) or one state (28, 28, 20);
    step i draws ``fold_in(key, i)``. Returns the final state, or with ``trajectory=True``
    all (steps, ...) states.

    Concrete states run on their alive cells only (K found on the host); under ``jit``
    (traced states) pass ``cells`` = K (:func:`cells_needed`), or the whole-grid step runs:
    the same result either way, so the function is jittable.
    """
    single = jnp.ndim(x0) == 3
    x0 = jnp.asarray(x0)[None] if single else jnp.asarray(x0)
    traced = isinstance(x0, jax.core.Tracer)
    if not traced:
        check_states(x0)
    elif x0.ndim != 4 or x0.shape[-1] != CHANNELS:
        raise ValueError(f"expected MNIST CA states (B, H, W, {CHANNELS}), got {x0.shape}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if cells is None and not traced:
        cells = cells_needed(np.asarray(x0[..., 0]))
    out = _rollout(params, x0, key, steps, cells, trajectory, fire_rate, noise_std)
    if single:
        out = out[:, 0] if trajectory else out[0]
    return out


DEAD_VOTE = -1  # what a dead cell "votes": not a class


def votes(x: jax.Array) -> jax.Array:
    """(..., H, W) int8: each alive cell's class (the argmax of the last 10 channels),
    ``DEAD_VOTE`` (-1) for dead cells, so class 0 and "no cell" never mix."""
    v = jnp.argmax(x[..., -NUM_CLASSES:], axis=-1).astype(jnp.int8)
    return jnp.where(alive(x)[..., 0], v, jnp.int8(DEAD_VOTE))


def l2_loss(x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-sample loss (...,): sum over H, W, classes of (y - scores)^2 / 2."""
    return jnp.sum(jnp.square(y - x[..., -NUM_CLASSES:]), axis=(-3, -2, -1)) / 2


class DigitStats(NamedTuple):
    """Per-digit counts at one step: alive cells, correctly voting alive cells."""

    alive: jax.Array
    correct: jax.Array


def digit_stats(x: jax.Array, labels: jax.Array) -> DigitStats:
    """Counts per digit (...,) of alive cells and of alive cells voting ``labels``."""
    live = alive(x)[..., 0]
    right = (votes(x) == labels[..., None, None]) & live
    return DigitStats(live.sum(axis=(-2, -1)), right.sum(axis=(-2, -1)))


def mutate(x: jax.Array, new_images: jax.Array) -> jax.Array:
    """Swap the digit under running cells: grey := ``new_images``; hidden and class state
    kept only where the new digit is alive (elsewhere 0, so dead cells stay 0)."""
    new_alive = (new_images > ALIVE_THRESHOLD)[..., None]
    return jnp.concatenate([new_images[..., None], x[..., 1:] * new_alive], axis=-1)


class MnistTrainConfig(NamedTuple):
    """Hyper-parameters of MNIST CA training (the original's defaults)."""

    pool_size: int = 160
    batch_size: int = 16
    steps: int = 20
    new_n: int = 4  # first samples replaced by fresh digits
    mutate_n: int = 4  # last samples whose digit is swapped
    lr: float = 1e-3
    lr_decays_at: tuple[int, ...] = (30_000, 70_000)
    fire_rate: float = FIRE_RATE
    noise_std: float = NOISE_STD


def refresh_batch(
    x: jax.Array,
    labels: jax.Array,
    fresh_images: jax.Array,
    fresh_labels: jax.Array,
    new_n: int,
) -> tuple[jax.Array, jax.Array]:
    """The pool discipline: the first ``new_n`` samples become fresh seeds, the last
    ``len(fresh) - new_n`` have their digit mutated (:func:`mutate`)."""
    mutate_n = fresh_images.shape[0] - new_n
    x = x.at[:new_n].set(seed_states(fresh_images[:new_n]))
    labels = labels.at[:new_n].set(fresh_labels[:new_n])
    if mutate_n:
        x = x.at[-mutate_n:].set(mutate(x[-mutate_n:], fresh_images[new_n:]))
        labels = labels.at[-mutate_n:].set(fresh_labels[new_n:])
    return x, labels


@functools.partial(jax.jit, static_argnames=("steps", "k", "switch_at", "trajectory", "noise_std"))
def swap_rollout(
    params: dict,
    images: jax.Array,
    labels: jax.Array,
    digit_ids: jax.Array,
    key: jax.Array,
    steps: int,
    k: int,
    switch_at: int | None = None,
    new_images: jax.Array | None = None,
    new_labels: jax.Array | None = None,
    trajectory: bool = False,
    noise_std: float = NOISE_STD,
):
    """Roll out fresh seeds of ``images`` (B, H, W) for ``steps`` steps, recording per-step,
    per-digit :class:`DigitStats` (steps, B); entry t is the state after t + 1 steps.

    Digit b draws its random numbers from ``fold_in(fold_in(key, step), digit_ids[b])``,
    so its result does not depend on which digits share its batch. With ``switch_at``,
    every digit is mutated into ``new_images`` / ``new_labels`` after step ``switch_at``
    (the article's protocol: 200 steps, swap, 200 more). With ``trajectory`` also returns
    the (steps, B, H, W, 20) states and (steps, B) labels. ``k`` (static) must cover the
    alive cells of both image sets (:func:`cells_needed`).
    """
    x0 = seed_states(images)
    index = cell_index(images, k)
    new_index = index if switch_at is None else cell_index(new_images, k)

    def body(carry, i):
        x, lab, idx = carry
        if switch_at is not None:
            swap = i == switch_at
            x = jnp.where(swap, mutate(x, new_images), x)
            lab = jnp.where(swap, new_labels, lab)
            idx = jax.tree.map(lambda a, b: jnp.where(swap, b, a), idx, new_index)
        step_key = jax.random.fold_in(key, i)
        keys = jax.vmap(lambda d: jax.random.fold_in(step_key, d))(digit_ids)
        x = mnist_step_cells(params, x, idx, keys, FIRE_RATE, noise_std, per_sample_keys=True)
        return (x, lab, idx), (digit_stats(x, lab), (x, lab) if trajectory else None)

    _, (stats, traj) = jax.lax.scan(body, (x0, labels, index), jnp.arange(steps))
    return (stats, traj) if trajectory else stats


def swap_partners(key: jax.Array, n: int) -> np.ndarray:
    """For the swap protocol: index of the digit that replaces each of ``n`` digits, a random
    derangement (every digit is replaced by another one): a random cycle through all."""
    if n < 2:
        raise ValueError("swapping digits needs at least 2 of them")
    cycle = np.asarray(jax.random.permutation(key, n))
    partner = np.empty(n, np.int64)
    partner[cycle] = np.roll(cycle, -1)
    return partner


def _check_swap_inputs(images, labels, switch_at, new_images, new_labels):
    """Validate evaluation inputs; returns float32/int32 numpy arrays."""
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    check_images(images)
    if labels.shape != images.shape[:1] or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(f"labels must be ({len(images)},) digits 0..9, got {labels.shape}")
    if switch_at is None:
        return images, labels, images, labels
    if new_images is None or new_labels is None:
        raise ValueError("switch_at needs new_images and new_labels")
    new_images, new_labels = _check_swap_inputs(new_images, new_labels, None, None, None)[:2]
    if new_images.shape != images.shape:
        raise ValueError(f"new_images {new_images.shape} must match images {images.shape}")
    return images, labels, new_images, new_labels


def accuracy_curves(stats: DigitStats) -> tuple[np.ndarray, np.ndarray]:
    """(steps, N) counts -> per-step cell accuracy (correct alive cells / alive cells, over
    all digits) and total agreement (share of digits whose alive cells all vote right).
    A digit without alive cells has no vote: it counts for neither (not as agreeing)."""
    alive_n = np.asarray(stats.alive, np.float64)
    correct = np.asarray(stats.correct, np.float64)
    voting = alive_n > 0
    agree = ((correct == alive_n) & voting).sum(1) / np.maximum(voting.sum(1), 1)
    return correct.sum(1) / np.maximum(alive_n.sum(1), 1), agree


class Evaluator:
    """Batched :func:`swap_rollout` over many digits. Digits are batched in order of size
    so that each batch's K (its work) fits its own digits; every distinct K is compiled
    ahead of time, so ``digits_per_s`` measures the rollouts alone."""

    def __init__(self, params: dict, batch_size: int = 500):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.params, self.batch_size = params, batch_size
        self.digits_per_s: float | None = None
        self.compile_seconds: float | None = None

    def run(
        self,
        images,
        labels,
        key,
        steps,
        switch_at=None,
        new_images=None,
        new_labels=None,
        progress=None,
    ):
        """Per-step, per-digit :class:`DigitStats` as numpy (steps, N), in input order.

        Results do not depend on ``batch_size`` (digit i draws from ``fold_in(., i)``).
        ``progress(done, total)``, if given, is called with digit counts once compiled
        (``done`` 0) and after each batch.
        """
        images, labels, new_images, new_labels = _check_swap_inputs(
            images, labels, switch_at, new_images, new_labels
        )
        size = (images > ALIVE_THRESHOLD).sum((1, 2)) + (new_images > ALIVE_THRESHOLD).sum((1, 2))
        order = np.argsort(size, kind="stable")
        n, b = len(images), self.batch_size
        ids = np.arange(n)  # digit i draws from fold_in(., i) wherever it is batched
        batches = []
        for lo in range(0, n, b):
            sel = order[lo : lo + b]
            arrays = [_pad_to(a[sel], b) for a in (images, labels, ids, new_images, new_labels)]
            batches.append((len(sel), cells_needed(arrays[0], arrays[3]), arrays))
        t0 = time.perf_counter()
        compiled = {}
        for _, k, arrays in batches:
            if k not in compiled:
                compiled[k] = swap_rollout.lower(
                    self.params, *arrays[:3], key, steps, k, switch_at, *arrays[3:]
                ).compile()
        t1 = time.perf_counter()
        out = []
        if progress is not None:
            progress(0, n)
        for m, k, arrays in batches:
            stats = compiled[k](self.params, *arrays[:3], key, arrays[3], arrays[4])
            out.append(jax.tree.map(lambda a, m=m: np.asarray(a)[:, :m], stats))
            if progress is not None:
                progress(sum(len(part.alive[0]) for part in out), n)
        self.compile_seconds = t1 - t0
        self.digits_per_s = n / (time.perf_counter() - t1)
        inverse = np.argsort(order)
        return DigitStats(*(np.concatenate(parts, axis=1)[:, inverse] for parts in zip(*out)))


def _pad_to(a: np.ndarray, n: int) -> np.ndarray:
    """Pad the leading axis to ``n`` by repeating the first row (dropped afterwards)."""
    if len(a) == n:
        return a
    return np.concatenate([a, np.repeat(a[:1], n - len(a), axis=0)])


def trajectory_with_swap(params, images, labels, key, steps, switch_at, new_images, new_labels):
    """States (steps, B, H, W, 20) and labels (steps, B) of a rollout, for pictures."""
    images, labels, new_images, new_labels = _check_swap_inputs(
        images, labels, switch_at, new_images, new_labels
    )
    k = cells_needed(images, new_images)
    _, (states, labs) = swap_rollout(
        params,
        images,
        labels,
        np.arange(len(images)),
        key,
        steps,
        k,
        switch_at,
        new_images,
        new_labels,
        trajectory=True,
    )
    return states, labs
