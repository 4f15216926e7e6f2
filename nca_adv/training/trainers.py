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

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nca_adv.attacks import adversaries, perturbation
from nca_adv.models import architecture, growing, mnist
from nca_adv.models.masks import alive_mask, circle_damage_masks
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
    optimizer: optax.GradientTransformation | None = None,
) -> Recipe:
    """The growing recipe. ``make_step(params, shared, batch)`` builds the CA step being
    trained; ``pool_init(key, shared, run, n)`` the first pool; ``fresh(key, shared, run)``
    the samples (leading axis = number of reset slots) that replace the highest-loss ones;
    ``init_params(key, shared)`` the parameters training starts from. ``optimizer``
    defaults to the original's (per-variable gradient normalisation, Adam on the config's
    rate and decay)."""
    # The launches check this on their flags; a recipe built in Python must too (else an
    # XLA broadcasting error at trace time names neither setting).
    if not 0 <= config.damage_n < config.batch_size:
        raise ValueError(
            f"damage_n ({config.damage_n}) must lie in [0, batch_size={config.batch_size})"
        )

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
        # living cells per sample after the rollout: 0 means the pattern died (a hollow
        # target, an unstable rule) whatever the loss says
        alive = jnp.mean(jnp.sum(alive_mask(x), axis=(-3, -2, -1)).astype(jnp.float32))
        return value, ({**batch, "x": x}, {"steps": n_steps, "alive": alive})

    if optimizer is None:
        optimizer = make_optimizer(config.lr, {config.lr_decay_at: config.lr_decay})
    return Recipe(init, prepare, loss, optimizer, config.pool_size, config.batch_size)


# ----------------------------------------------------------------------------- pool builders
# ``pool_init(key, shared, run, n)`` of the growing family: public, to build recipes of
# your own (a new rule's pool, another start state) from the same pieces.
def copies(x: jax.Array, n: int) -> jax.Array:
    """``n`` copies of one state: (n, ...)."""
    return jnp.broadcast_to(x, (n, *x.shape))


def seed_pool(key, shared, run, n: int) -> Pool:
    """The base Growing CA's pool: ``n`` copies of ``shared["seed"]``."""
    return {"x": copies(shared["seed"], n)}


def half_seed_half_grown_pool(key, shared, run, n: int) -> Pool:
    """The perturbations' pool: seeds in the first half, the grown lizard in the second."""
    half = n // 2
    return {"x": jnp.concatenate([copies(shared["seed"], n - half), copies(shared["grown"], half)])}


def adversary_pool(key, shared, run, n: int) -> Pool:
    """The growing adversaries' pool: copies of the grown lizard, each with its own mask
    (uniform < p AND alpha >= 0.1 of the mutated target ``run["target"]``)."""
    masks = adversaries.growing_adversary_masks(key, n, run["target"], run["fraction"])
    return {"x": copies(shared["grown"], n), "mask": masks}


def growing_step_of(base, fire_rate: float | None = None) -> Step:
    """The step of a Growing CA: a :class:`~nca_adv.models.architecture.CA` runs at its own
    fire rate (a ``fire_rate`` contradicting it is refused); bare ``params`` have their
    architecture read from their shapes and run at ``fire_rate`` (default 0.5)."""
    if isinstance(base, architecture.CA):
        if fire_rate is not None and float(fire_rate) != base.model.fire_rate:
            raise ValueError(
                f"fire rate {fire_rate} contradicts the model's own {base.model.fire_rate}"
            )
        return base.model.step(base.params)
    rate = growing.FIRE_RATE if fire_rate is None else fire_rate
    model = dataclasses.replace(architecture.infer(base, "growing"), fire_rate=rate)
    return model.step(base)


def base_model(base, fire_rate: float | None = None) -> architecture.GrowingCA:
    """The model of a frozen Growing CA base (a CA, or bare params at ``fire_rate``)."""
    if isinstance(base, architecture.CA):
        return base.model
    rate = growing.FIRE_RATE if fire_rate is None else fire_rate
    return dataclasses.replace(architecture.infer(base, "growing"), fire_rate=rate)


def base_params(base):
    """The parameters of a frozen base given as a CA or as bare params."""
    return base.params if isinstance(base, architecture.CA) else base


def adversary_step_of(params, base, fire_rate: float | None = None) -> Step:
    """The step of an adversary ``params`` beside ``base``: its own architecture (read from
    its shapes) at the base's fire rate, so the two fuse into one living step."""
    rate = base_model(base, fire_rate).fire_rate
    model = dataclasses.replace(architecture.infer(params, "growing"), fire_rate=rate)
    return model.step(params)


def _growing_model(config, model) -> architecture.GrowingCA:
    if model is None:
        return architecture.GrowingCA(fire_rate=config.fire_rate)
    if not isinstance(model, architecture.GrowingCA):
        raise ValueError(f"a growing recipe needs a GrowingCA model, got {model!r}")
    return model


def growing_recipe(
    config: growing.GrowingTrainConfig = growing.GrowingTrainConfig(),
    model: architecture.GrowingCA | None = None,
    optimizer: optax.GradientTransformation | None = None,
) -> Recipe:
    """The base Growing CA (Mordvintsev et al.): pool of seeds, slot 0 := seed.
    shared: ``seed`` (H, W, C); run: ``target`` (H, W, 4). ``model``: the architecture
    trained (default: the article's, with the config's fire rate)."""
    model = _growing_model(config, model)
    return growing_family(
        config,
        init_params=lambda key, shared: model.init(key),
        make_step=lambda params, shared, batch: model.step(params),
        pool_init=seed_pool,
        fresh=lambda key, shared, run: {"x": shared["seed"][None]},
        optimizer=optimizer,
    )


ADVERSARY_INITS = ("fresh", "base", "given")


def growing_adversary_recipe(
    config: growing.GrowingTrainConfig = growing.GrowingTrainConfig(),
    init: str = "fresh",
    optimizer: optax.GradientTransformation | None = None,
) -> Recipe:
    """Adversarial cells for a frozen Growing CA: a CA of the same architecture runs
    on the cells of each sample's mask. ``init``: ``fresh`` (the article: new parameters,
    last kernel zero), ``base`` (a copy of the frozen base's weights) or ``given`` (the
    weights in ``shared["init"]``: carry on from a shipped or earlier adversary with a
    fresh optimiser and pool). Pool: copies of the grown lizard, each with its own
    mask (uniform < p AND alpha >= 0.1 of the mutated target); slot 0 := the grown lizard
    with a new mask; damage cuts the state, masks unchanged.
    shared: ``base`` (a :class:`~nca_adv.models.architecture.CA`, run at its own fire
    rate; bare params run at ``config.fire_rate``), ``grown`` (H, W, 16); run:
    ``target``, ``fraction`` p. The adversary runs at the base's fire rate."""

    def make_step(params, shared, batch):
        base = growing_step_of(*_base_at(shared["base"], config))
        adversary = adversary_step_of(params, *_base_at(shared["base"], config))
        return adversaries.with_adversaries(adversary, batch["mask"])(base)

    if init not in ADVERSARY_INITS:
        raise ValueError(f"adversary init must be one of {ADVERSARY_INITS}, got {init!r}")

    def init_params(key, shared):
        if init == "base":
            return jax.tree.map(jnp.array, base_params(shared["base"]))
        if init == "given":
            return jax.tree.map(jnp.array, base_params(shared["init"]))
        # A fresh CA of the base's own architecture (any size, perception).
        return base_model(shared["base"]).init(key)

    return growing_family(
        config,
        init_params=init_params,
        make_step=make_step,
        pool_init=adversary_pool,
        fresh=lambda key, shared, run: adversary_pool(key, shared, run, 1),
        optimizer=optimizer,
    )


def perturbation_recipe(
    config: growing.GrowingTrainConfig = growing.GrowingTrainConfig(),
    optimizer: optax.GradientTransformation | None = None,
) -> Recipe:
    """A global state perturbation A = (M + M^T)/2 of a frozen Growing CA, M from the
    identity, or from ``shared["init"]`` when given (a shipped or earlier matrix, which is
    symmetric: training carries on from it). Pool: half seeds, half grown lizards; slot 0
    := seed, slot 1 := grown. shared: ``base`` params, ``seed``, ``grown`` (H, W, 16);
    run: ``target``."""

    def make_step(matrix, shared, batch):
        base = growing_step_of(*_base_at(shared["base"], config))
        return perturbation.perturb(perturbation.symmetric(matrix))(base)

    return growing_family(
        config,
        init_params=lambda key, shared: (
            jnp.array(shared["init"], jnp.float32)
            if "init" in shared
            else perturbation.init_matrix(shared["seed"].shape[-1])
        ),
        make_step=make_step,
        pool_init=half_seed_half_grown_pool,
        fresh=lambda key, shared, run: {"x": jnp.stack([shared["seed"], shared["grown"]])},
        optimizer=optimizer,
    )


def _base_at(base, config) -> tuple:
    """(base, fire rate) for :func:`growing_step_of`: a CA keeps its own rate, bare params
    take the config's."""
    return (base, None) if isinstance(base, architecture.CA) else (base, config.fire_rate)


def grow(params, h: int, w: int, steps: int, key: jax.Array) -> jax.Array:
    """The pattern a Growing CA (a CA, or bare params at the default fire rate) grows from
    the seed in ``steps`` steps: (H, W, C)."""
    model = base_model(params)
    params = base_params(params)
    if model == architecture.GrowingCA():
        return growing.rollout(params, growing.seed_state(h, w), key, steps)
    seed = model.seed(h, w)
    return jax.jit(lambda p: scan_steps(model.step(p), seed, key, steps))(params)


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
        if "init" in shared:  # carry on from given weights (a shipped adversary, ...)
            return jax.tree.map(jnp.array, shared["init"]), pool
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


def mnist_hardened_recipe(
    config: mnist.MnistTrainConfig = mnist.MnistTrainConfig(),
    cells: int | None = None,
    *,
    max_fraction: float = 0.15,
    clean_share: float = 0.25,
    adversary_lr: float = 1e-3,
    target_class: int = 8,
) -> Recipe:
    """A hardened MNIST CA, trained against its own adversary in the manner of a GAN:
    params ``{"base", "adversary"}``, both stepped every iteration on their own loss
    (simultaneous gradient play; the adversary is the mixed step's other player).

    Each pool sample carries a mask drawn when it enters the pool: adversaries in a share
    p ~ U[0, ``max_fraction``] of the cells, or none (p = 0) for a share ``clean_share``
    of the samples so clean accuracy holds. The base's loss is the usual L2 on its own
    (non-adversary) cells to the true label; the adversary's is the
    :func:`mnist_adversary_recipe` loss (every labelled cell votes ``target_class``).
    Two rollouts of the same batch and key (identical values): the base's gradient is
    taken with the adversary frozen and vice versa, so neither player helps the other.
    The base's learning rate is ``config.lr``, the adversary's ``adversary_lr``.
    shared adds ``base`` and ``adversary``: the starting parameters."""
    if not 0.0 <= max_fraction <= 1.0 or not 0.0 <= clean_share <= 1.0:
        raise ValueError(
            f"max fraction {max_fraction} and clean share {clean_share} must lie in [0, 1]"
        )

    def masks(key, shared, run, n):
        k_clean, k_p, k_cells = jax.random.split(key, 3)
        h, w = shared["images"].shape[1:3]
        p = jax.random.uniform(k_p, (n,), maxval=max_fraction)
        p = jnp.where(jax.random.uniform(k_clean, (n,)) < clean_share, 0.0, p)
        u = jax.random.uniform(k_cells, (n, h, w, 1))
        return (u < p[:, None, None, None]).astype(jnp.float32)

    def mixed_rollout(base_params, adversary_params, batch, key):
        x0 = batch["x"]
        index = None if cells is None else mnist.cell_index(x0[..., 0], cells)
        base = mnist_step_of(base_params, index, config)
        adversary = mnist_step_of(adversary_params, index, config)
        step = adversaries.with_adversaries(adversary, batch["mask"])(base)
        return scan_steps(step, x0, key, config.steps, remat=True)

    def loss(params, batch, shared, run, key):
        sg = jax.lax.stop_gradient
        grey = batch["x"][..., 0]
        own = 1.0 - batch["mask"]  # the base is judged on its own cells only
        x = mixed_rollout(params["base"], sg(params["adversary"]), batch, key)
        y = mnist.label_maps(grey, batch["label"])
        base_loss = jnp.mean(mnist.l2_loss(x * own, y * own))
        x_adv = mixed_rollout(sg(params["base"]), params["adversary"], batch, key)
        y_adv = mnist.label_maps(grey, jnp.full_like(batch["label"], target_class))
        adversary_loss = jnp.mean(mnist.l2_loss(x_adv, y_adv))
        metrics = {"base_loss": base_loss, "adversary_loss": adversary_loss}
        return base_loss + adversary_loss, ({**batch, "x": x}, metrics)

    family = mnist_family(config, cells, make_step=None, masks=masks)

    def init(key, shared, run):
        _, pool = family.init(key, shared, run)
        params = {"base": shared["base"], "adversary": shared["adversary"]}
        return jax.tree.map(jnp.array, params), pool

    boundaries = {int(b): 0.1 for b in config.lr_decays_at}
    optimizer = optax.multi_transform(
        {
            "base": make_optimizer(config.lr, boundaries),
            "adversary": make_optimizer(adversary_lr, boundaries),
        },
        {"base": "base", "adversary": "adversary"},
    )
    return family._replace(init=init, loss=loss, optimizer=optimizer)


def mnist_shared(images: np.ndarray, labels: np.ndarray, **extra) -> dict:
    """``shared`` constants of the MNIST family from uint8 (N, H, W) images and labels."""
    images = np.asarray(images)
    labels = np.asarray(labels, np.int32)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"images must be uint8 (N, H, W), got {images.dtype} {images.shape}")
    if labels.shape != images.shape[:1] or labels.min() < 0 or labels.max() >= mnist.NUM_CLASSES:
        raise ValueError(f"labels must be ({len(images)},) digits 0..9, got {labels.shape}")
    return {"images": jnp.asarray(images), "labels": jnp.asarray(labels), **extra}
