"""Trainer set-ups: the state pytree and one-iteration function of each model, to be run
by :func:`nca_adv.training.train_loop`."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from nca_adv import growing, mnist, pool
from nca_adv.training import batch_sharding, check_batch_divides, make_optimizer, replicated


def _place_on_mesh(state: dict, mesh: Mesh | None, batch_size: int) -> Callable:
    """Replicate params and optimiser state over ``mesh`` (in place in ``state``) and return
    the function that splits a batch over it (identity without a mesh)."""
    if mesh is None:
        return lambda x: x
    check_batch_divides(batch_size, mesh)
    state["params"] = jax.device_put(state["params"], replicated(mesh))
    state["opt_state"] = jax.device_put(state["opt_state"], replicated(mesh))
    return lambda x: jax.device_put(x, batch_sharding(mesh))


def growing_trainer(
    target: np.ndarray,
    key: jax.Array,
    config: growing.GrowingTrainConfig = growing.GrowingTrainConfig(),
    mesh: Mesh | None = None,
) -> tuple[dict, Callable[[dict, int], tuple[dict, dict]]]:
    """Initial state and iteration function for Growing CA training on ``target`` (H, W, 4).

    State: ``params``, ``opt_state``, ``pool`` (host array, all seeds at start) and the
    PRNG ``key``; everything an exact resume needs. With a ``mesh`` the batch is split
    over its devices (data parallel; gradients are all-reduced by the compiler).
    """
    target = np.asarray(target, np.float32)
    if target.ndim != 3 or target.shape[-1] != 4:
        raise ValueError(f"target must be (H, W, 4) RGBA, got {target.shape}")
    if not np.all(np.isfinite(target)) or target.min() < 0 or target.max() > 1:
        raise ValueError("target values must be finite and in [0, 1]")
    h, w = target.shape[:2]
    k_init, key = jax.random.split(key)
    params = growing.init_growing_params(k_init)
    optimizer = make_optimizer(config.lr, {config.lr_decay_at: config.lr_decay})
    seed = growing.seed_state(h, w)
    state = {
        "params": params,
        "opt_state": optimizer.init(params),
        "pool": np.repeat(np.asarray(seed)[None], config.pool_size, axis=0),
        "key": key,
    }
    train_step = growing.make_growing_train_step(optimizer, config)
    prepare = jax.jit(growing.prepare_batch, static_argnames="damage_n")
    put_batch = _place_on_mesh(state, mesh, config.batch_size)
    target_j = jnp.asarray(target)

    def iteration(state: dict, i: int) -> tuple[dict, dict]:
        key, k_idx, k_dmg, k_n, k_roll = jax.random.split(state["key"], 5)
        idx = pool.sample_indices(k_idx, config.pool_size, config.batch_size)
        x0 = prepare(jnp.asarray(state["pool"][idx]), target_j, seed, k_dmg, config.damage_n)
        n_steps = jax.random.randint(k_n, (), config.min_steps, config.max_steps + 1)
        params, opt_state, x, loss = train_step(
            state["params"], state["opt_state"], put_batch(x0), target_j, k_roll, n_steps
        )
        pool.commit(state["pool"], idx, x)
        state = {**state, "params": params, "opt_state": opt_state, "key": key}
        return state, {"loss": loss, "steps": n_steps}

    return state, iteration


def mnist_trainer(
    images: np.ndarray,
    labels: np.ndarray,
    key: jax.Array,
    config: mnist.MnistTrainConfig = mnist.MnistTrainConfig(),
    mesh: Mesh | None = None,
) -> tuple[dict, Callable[[dict, int], tuple[dict, dict]]]:
    """Initial state and iteration function for MNIST CA training.

    ``images`` (N, 28, 28) float in [0, 1] and ``labels`` (N,) are the training digits.
    State: ``params``, ``opt_state``, ``pool`` (160 states), ``pool_labels`` and ``key``.
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    mnist.check_images(images)
    if labels.shape != images.shape[:1] or labels.min() < 0 or labels.max() >= mnist.NUM_CLASSES:
        raise ValueError(f"labels must be ({len(images)},) digits 0..9, got {labels.shape}")
    if config.new_n + config.mutate_n > config.batch_size:
        raise ValueError("new_n + mutate_n must not exceed the batch size")
    k_init, k_pool, key = jax.random.split(key, 3)
    params = mnist.init_mnist_params(k_init)
    boundaries = {int(b): 0.1 for b in config.lr_decays_at}
    optimizer = make_optimizer(config.lr, boundaries)
    first = np.asarray(jax.random.randint(k_pool, (config.pool_size,), 0, len(images)))
    state = {
        "params": params,
        "opt_state": optimizer.init(params),
        "pool": np.array(mnist.seed_states(images[first])),  # writable host copy
        "pool_labels": labels[first],
        "key": key,
    }
    digits, digit_labels = jnp.asarray(images), jnp.asarray(labels)
    train_step = mnist.make_mnist_train_step(optimizer, config)
    n_fresh = config.new_n + config.mutate_n

    @jax.jit
    def prepare(x, lab, k):
        pick = jax.random.randint(k, (n_fresh,), 0, digits.shape[0])
        return mnist.refresh_batch(x, lab, digits[pick], digit_labels[pick], config.new_n)

    put_batch = _place_on_mesh(state, mesh, config.batch_size)

    def iteration(state: dict, i: int) -> tuple[dict, dict]:
        key, k_idx, k_fresh, k_roll = jax.random.split(state["key"], 4)
        idx = pool.sample_indices(k_idx, config.pool_size, config.batch_size)
        x0, lab = prepare(state["pool"][idx], state["pool_labels"][idx], k_fresh)
        k = mnist.cells_needed(np.asarray(x0[..., 0]))
        params, opt_state, x, loss = train_step(
            state["params"], state["opt_state"], put_batch(x0), put_batch(lab), k_roll, k
        )
        pool.commit(state["pool"], idx, x)
        pool.commit(state["pool_labels"], idx, lab)
        state = {**state, "params": params, "opt_state": opt_state, "key": key}
        return state, {"loss": loss}

    return state, iteration
