"""Cell masks: which cells are alive, which fire this step, which a damage erases."""

from __future__ import annotations

import jax
import jax.numpy as jnp

ALPHA_CHANNEL = 3
ALIVE_THRESHOLD = 0.1


def alive_mask(x: jax.Array, threshold: float = ALIVE_THRESHOLD) -> jax.Array:
    """Growing CA life: (..., H, W, C) -> (..., H, W, 1) bool, maxpool3x3(alpha) > threshold.

    Pads with -inf like TF's SAME max-pool, so edge cells see only real neighbours.
    """
    alpha = x[..., ALPHA_CHANNEL : ALPHA_CHANNEL + 1]
    window = (1,) * (alpha.ndim - 3) + (3, 3, 1)
    pooled = jax.lax.reduce_window(alpha, -jnp.inf, jax.lax.max, window, (1,) * alpha.ndim, "SAME")
    return pooled > threshold


def fire_mask(key: jax.Array, shape: tuple[int, ...], fire_rate: float) -> jax.Array:
    """Stochastic update mask (..., H, W, 1): uniform <= fire_rate, per cell."""
    return jax.random.uniform(key, (*shape, 1)) <= fire_rate


def circle_damage_masks(key: jax.Array, n: int, h: int, w: int) -> jax.Array:
    """(n, H, W, 1) float masks, 0 inside a random circle and 1 elsewhere.

    As the original: coordinates in [-1, 1], centre uniform in [-0.5, 0.5]^2, radius
    uniform in [0.1, 0.4].
    """
    k_centre, k_radius = jax.random.split(key)
    xs = jnp.linspace(-1.0, 1.0, w)[None, None, :]
    ys = jnp.linspace(-1.0, 1.0, h)[None, :, None]
    centre = jax.random.uniform(k_centre, (2, n, 1, 1), minval=-0.5, maxval=0.5)
    radius = jax.random.uniform(k_radius, (n, 1, 1), minval=0.1, maxval=0.4)
    dx, dy = (xs - centre[0]) / radius, (ys - centre[1]) / radius
    inside = (dx * dx + dy * dy) < 1.0
    return (1.0 - inside.astype(jnp.float32))[..., None]
