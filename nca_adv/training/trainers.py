"""The trainers, declared as engine recipes: what is trained, what the pool holds and starts
from, how a batch is refreshed, and the loss.

Two families share their machinery:

- the *growing recipe* (pool of grids, sort by loss, reset slots, circular damage of the
  lowest-loss samples, 64..95 steps, RGBA MSE): the base Growing CA, the growing-CA
  adversaries and the global state perturbations differ only in the trained parameters,
  the step they build from them, the pool's first contents and the reset slots;
- the *MNIST recipe* (pool of digits, first samples fresh, last mutated, 20 steps, L2 on
  the class channels): the base MNIST CA and the MNIST adversary.

Constants are passed as ``shared`` (common to all runs of a sweep: frozen base
parameters, the data set, the seed and grown states) and ``run`` (per run: the target,
the adversary fraction); see :mod:`nca_adv.training.engine`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nca_adv.attacks import adversaries, perturbation
from nca_adv.models import growing, mnist
from nca_adv.models.masks import circle_damage_masks
from nca_adv.models.rollout import scan_steps, scan_variable_steps
from nca_adv.training.engine import Pool, Recipe
from nca_adv.training.runtime import make_optimizer

Step = Callable[[jax.Array, jax.Array], jax.Array]


# ----------------------------------------------------------------------------- growing family
def growing_family(
    config: growing.GrowingTrainConfig,
    *,
    init_params: Callable[[jax.Array, Any], Any],
    make_step: Callable[[Any, Any, Pool], Step],
    pool_init: Callable[[jax.Array, Any, Any, int], Pool],
    fresh: Callable[[jax.Array, Any, Any], Pool],
) -> Recipe:
    """The growing recipe. ``make_step(params, shared, batch)`` builds the CA step being
    trained; ``pool_init(key, shared, run, n)`` the first pool; ``fresh(key, shared, run)``
    the samples (leading axis = number of reset slots) that replace the highest-loss ones;
    ``init_params(key, shared)`` the parameters training starts from."""

    def init(key, shared, run):
        k_params, k_pool = jax.random.split(key)
        return init_params(k_params, shared), pool_init(k_pool, shared, run, config.pool_size)

    def prepare(batch, shared, run, key):
        k_fresh, k_damage = jax.random.split(key)
        order = jnp.argsort(-growing.growing_loss(batch["x"], run["target"]))
        batch = jax.tree.map(lambda a: a[order], batch)
        new = fresh(k_fresh, shared, run)
        batch = jax.tree.map(lambda a, f: a.at[: f.shape[0]].set(f), batch, new)
        if config.damage_n:
            h, w = batch["x"].shape[1:3]
            cut = circle_damage_masks(k_damage, config.damage_n, h, w)
            batch = {**batch, "x": batch["x"].at[-config.damage_n :].multiply(cut)}
        return batch

    def loss(params, batch, shared, run, key):
        k_steps, k_roll = jax.random.split(key)
        n_steps = jax.random.randint(k_steps, (), config.min_steps, config.max_steps + 1)
        step = make_step(params, shared, batch)
        x = scan_variable_steps(
            step, batch["x"], k_roll, n_steps, config.max_steps, min_steps=config.min_steps
        )
        value = jnp.mean(growing.growing_loss(x, run["target"]))
        return value, ({**batch, "x": x}, {"steps": n_steps})

    optimizer = make_optimizer(config.lr, {config.lr_decay_at: config.lr_decay})
    return Recipe(init, prepare, loss, optimizer, config.pool_size, config.batch_size)


def _copies(x: jax.Array, n: int) -> jax.Array:
    return jnp.broadcast_to(x, (n, *x.shape))


def growing_step_of(params, fire_rate: float = growing.FIRE_RATE) -> Step:
    return lambda x, k: growing.growing_step(params, x, k, fire_rate)


def growing_recipe(config: growing.GrowingTrainConfig = growing.GrowingTrainConfig()) -> Recipe:
    """The base Growing CA (Mordvintsev et al.): pool of seeds, slot 0 := seed.
    shared: ``seed`` (H, W, 16); run: ``target`` (H, W, 4)."""
    return growing_family(
        config,
        init_params=lambda key, shared: growing.init_growing_params(key),
        make_step=lambda params, shared, batch: growing_step_of(params, config.fire_rate),
        pool_init=lambda key, shared, run, n: {"x": _copies(shared["seed"], n)},
        fresh=lambda key, shared, run: {"x": shared["seed"][None]},
    )


ADVERSARY_INITS = ("fresh", "base")


def growing_adversary_recipe(
    config: growing.GrowingTrainConfig = growing.GrowingTrainConfig(),
    init: str = "fresh",
) -> Recipe:
    """Adversarial cells for a frozen Growing CA: a CA of the same architecture runs
    on the cells of each sample's mask. ``init``: ``fresh`` (the article: new parameters,
    last kernel zero) or ``base`` (start from a copy of the frozen base, so the adversary
    begins as an ordinary cell that already speaks the lizard's hidden-channel language:
    far fewer iterations on a CPU). Pool: copies of the grown lizard, each with its own
    mask (uniform < p AND alpha >= 0.1 of the mutated target); slot 0 := the grown lizard
    with a new mask; damage cuts the state, masks unchanged.
    shared: ``base`` params, ``grown`` (H, W, 16); run: ``target``, ``fraction`` p."""

    def masks(key, run, n):
        return adversaries.growing_adversary_masks(key, n, run["target"], run["fraction"])

    def make_step(params, shared, batch):
        base = growing_step_of(shared["base"], config.fire_rate)
        adversary = growing_step_of(params, config.fire_rate)
        return adversaries.with_adversaries(adversary, batch["mask"])(base)

    if init not in ADVERSARY_INITS:
        raise ValueError(f"adversary init must be one of {ADVERSARY_INITS}, got {init!r}")

    def init_params(key, shared):
        if init == "base":
            return jax.tree.map(jnp.array, shared["base"])
        return growing.init_growing_params(key)

    return growing_family(
        config,
        init_params=init_params,
        make_step=make_step,
        pool_init=lambda key, shared, run, n: {
            "x": _copies(shared["grown"], n),
            "mask": masks(key, run, n),
        },
        fresh=lambda key, shared, run: {"x": shared["grown"][None], "mask": masks(key, run, 1)},
    )


def perturbation_recipe(
    config: growing.GrowingTrainConfig = growing.GrowingTrainConfig(),
) -> Recipe:
    """A global state perturbation A = (M + M^T)/2 of a frozen Growing CA, M from the
    identity. Pool: half seeds, half grown lizards; slot 0 := seed, slot 1 := grown.
    shared: ``base`` params, ``seed``, ``grown`` (H, W, 16); run: ``target``."""

    def make_step(matrix, shared, batch):
        base = growing_step_of(shared["base"], config.fire_rate)
        return perturbation.perturb(perturbation.symmetric(matrix))(base)

    def pool_init(key, shared, run, n):
        half = n // 2
        x = jnp.concatenate([_copies(shared["seed"], n - half), _copies(shared["grown"], half)])
        return {"x": x}

    return growing_family(
        config,
        init_params=lambda key, shared: perturbation.init_matrix(),
        make_step=make_step,
        pool_init=pool_init,
        fresh=lambda key, shared, run: {"x": jnp.stack([shared["seed"], shared["grown"]])},
    )


def grow(params, h: int, w: int, steps: int, key: jax.Array) -> jax.Array:
    """The pattern a Growing CA grows from the seed in ``steps`` steps: (H, W, 16)."""
    return growing.rollout(params, growing.seed_state(h, w), key, steps)


# ----------------------------------------------------------------------------- MNIST family
def mnist_family(
    config: mnist.MnistTrainConfig,
    cells: int | None,
    *,
    make_step: Callable[[Any, Any, Pool, Any], Step],
    label_of: Callable[[jax.Array], jax.Array] | None = None,
    masks: Callable[[jax.Array, Any, Any, int], jax.Array] | None = None,
) -> Recipe:
    """The MNIST recipe. The pool holds states ``x``, ``label`` (and, with ``masks``, a
    ``mask`` drawn when a sample enters the pool and kept through mutation). ``cells`` is
    K of the alive-cell step (:func:`mnist.cells_needed` of the whole data set, fixed at
    trace time), or None for the whole-grid step. ``label_of(labels)`` gives the class
    the loss asks for (default: the true label). shared: ``images`` (N, H, W) uint8,
    ``labels`` (N,); run: whatever ``make_step``/``masks`` read."""
    n_fresh = config.new_n + config.mutate_n

    def digits(key, shared, n):
        pick = jax.random.randint(key, (n,), 0, shared["images"].shape[0])
        return shared["images"][pick].astype(jnp.float32) / 255.0, shared["labels"][pick]

    def init(key, shared, run):
        k_params, k_pool, k_mask = jax.random.split(key, 3)
        images, labels = digits(k_pool, shared, config.pool_size)
        pool = {"x": mnist.seed_states(images), "label": labels}
        if masks is not None:
            pool["mask"] = masks(k_mask, shared, run, config.pool_size)
        return mnist.init_mnist_params(k_params), pool

    def prepare(batch, shared, run, key):
        k_digits, k_mask = jax.random.split(key)
        images, labels = digits(k_digits, shared, n_fresh)
        x, label = mnist.refresh_batch(batch["x"], batch["label"], images, labels, config.new_n)
        out = {**batch, "x": x, "label": label}
        if masks is not None:  # fresh samples get a new mask, mutated ones keep theirs
            fresh_masks = masks(k_mask, shared, run, config.new_n)
            out["mask"] = batch["mask"].at[: config.new_n].set(fresh_masks)
        return out

    def loss(params, batch, shared, run, key):
        x0 = batch["x"]
        index = None if cells is None else mnist.cell_index(x0[..., 0], cells)
        step = make_step(params, shared, batch, index)
        x = scan_steps(step, x0, key, config.steps, remat=True)
        wanted = batch["label"] if label_of is None else label_of(batch["label"])
        y = mnist.label_maps(x0[..., 0], wanted)
        return jnp.mean(mnist.l2_loss(x, y)), ({**batch, "x": x}, {})

    boundaries = {int(b): 0.1 for b in config.lr_decays_at}
    optimizer = make_optimizer(config.lr, boundaries)
    return Recipe(init, prepare, loss, optimizer, config.pool_size, config.batch_size)


def mnist_step_of(params, index, config: mnist.MnistTrainConfig) -> Step:
    """The MNIST CA step on the alive cells of ``index``, or the whole grid (index None)."""
    if index is None:
        return lambda x, k: mnist.mnist_step(params, x, k, config.fire_rate, config.noise_std)
    return lambda x, k: mnist.mnist_step_cells(
        params, x, index, k, config.fire_rate, config.noise_std
    )


def mnist_recipe(
    config: mnist.MnistTrainConfig = mnist.MnistTrainConfig(), cells: int | None = None
) -> Recipe:
    """The base Self-classifying MNIST CA (Randazzo et al.)."""
    return mnist_family(
        config,
        cells,
        make_step=lambda params, shared, batch, index: mnist_step_of(params, index, config),
    )


def mnist_adversary_recipe(
    config: mnist.MnistTrainConfig = mnist.MnistTrainConfig(),
    cells: int | None = None,
    target_class: int = 8,
) -> Recipe:
    """Adversarial cells for a frozen MNIST CA: every labelled cell asked to vote
    ``target_class``; masks uniform < p over the whole grid (background adversaries never
    update). shared adds ``base`` params; run: ``fraction`` p."""

    def make_step(params, shared, batch, index):
        base = mnist_step_of(shared["base"], index, config)
        adversary = mnist_step_of(params, index, config)
        return adversaries.with_adversaries(adversary, batch["mask"])(base)

    def masks(key, shared, run, n):
        h, w = shared["images"].shape[1:3]
        return adversaries.mnist_adversary_masks(key, (n, h, w), run["fraction"])

    return mnist_family(
        config,
        cells,
        make_step=make_step,
        label_of=lambda labels: jnp.full_like(labels, target_class),
        masks=masks,
    )


def mnist_shared(images: np.ndarray, labels: np.ndarray, **extra) -> dict:
    """``shared`` constants of the MNIST family from uint8 (N, H, W) images and labels."""
    images = np.asarray(images)
    labels = np.asarray(labels, np.int32)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"images must be uint8 (N, H, W), got {images.dtype} {images.shape}")
    if labels.shape != images.shape[:1] or labels.min() < 0 or labels.max() >= mnist.NUM_CLASSES:
        raise ValueError(f"labels must be ({len(images)},) digits 0..9, got {labels.shape}")
    return {"images": jnp.asarray(images), "labels": jnp.asarray(labels), **extra}
