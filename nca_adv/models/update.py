"""Update rules: the per-cell networks that turn perception into a state change.

Parameters are flax ``params`` dicts (``module.init(...)["params"]``); the shipped and
imported weights map onto them one to one (see :mod:`nca_adv.io.weights`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class GrowingUpdate(nn.Module):
    """Growing CA update: Dense 48->128 + ReLU, Dense 128->16 (zero-initialised kernel).

    With ``perception`` > 0 the input is the im2col 3x3 patches (..., 9C) and a learned 3x3
    convolution into ``perception`` features comes first (as the MNIST CA's); 0 takes
    precomputed features (the fixed sobel perception)."""

    hidden: int = 128
    channels: int = 16
    perception: int = 0

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        if self.perception:
            features = _learned_perception(self, features, self.channels, self.perception)
        h = nn.relu(nn.Dense(self.hidden, name="dense1")(features))
        # Zero last kernel: training starts from "do nothing", as in the original.
        return nn.Dense(self.channels, kernel_init=nn.initializers.zeros, name="dense2")(h)


class MnistUpdate(nn.Module):
    """MNIST CA update on 3x3 patches (..., 180): the learned Conv3x3 20->80 + ReLU as one
    matmul on im2col patches, then Dense 80->80 + ReLU, Dense 80->19 (zero-initialised).

    Taking patches rather than a grid lets the same parameters run on the whole grid
    (:func:`nca_adv.models.perceive.im2col3x3`) or on a gathered list of alive cells, and turns
    the convolution's gradient into a matmul (fast on CPU, unlike ``lax.conv``'s).
    """

    channels: int = 20
    perception: int = 80
    hidden: int = 80

    @nn.compact
    def __call__(self, patches: jax.Array) -> jax.Array:
        h = _learned_perception(self, patches, self.channels, self.perception)
        h = nn.relu(nn.Dense(self.hidden, name="dense1")(h))
        return nn.Dense(self.channels - 1, kernel_init=nn.initializers.zeros, name="dense2")(h)


def _learned_perception(module: nn.Module, patches: jax.Array, channels: int, out: int):
    """A learned 3x3 convolution (``perceive_kernel`` (3, 3, C, out), ``perceive_bias``)
    + ReLU, as one matmul on im2col patches (..., 9C)."""
    kernel = module.param(
        "perceive_kernel",
        nn.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3),
        (3, 3, channels, out),
    )
    bias = module.param("perceive_bias", nn.initializers.zeros, (out,))
    return nn.relu(patches @ kernel.reshape(9 * channels, out) + bias)


def init_params(module: nn.Module, key: jax.Array, in_features: int) -> dict:
    """Fresh parameters of ``module`` for inputs with ``in_features`` features."""
    return module.init(key, jnp.zeros((1, 1, in_features), jnp.float32))["params"]


def count_params(params) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(int(p.size) for p in jax.tree.leaves(params))
