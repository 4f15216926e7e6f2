"""Perception: what each cell sees of its 3x3 neighbourhood.

Two rooms: the Growing CA's fixed (identity, sobel_x, sobel_y) filters per channel, and
the MNIST CA's learned 3x3 convolution written as im2col (9 shifted slices, one matmul).
Both use shifted slices of a zero-padded grid rather than ``lax.conv``: on CPU the slice
form is ~3.5x faster forward and its gradient is a plain matmul (see BUILD_NOTES.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Cross-correlation kernels, indexed [dy, dx] with dy, dx in (-1, 0, 1) -> (0, 1, 2).
SOBEL_X = np.outer([1.0, 2.0, 1.0], [-1.0, 0.0, 1.0]).astype(np.float32) / 8.0
SOBEL_Y = SOBEL_X.T.copy()
IDENTITY = np.zeros((3, 3), np.float32)
IDENTITY[1, 1] = 1.0
# (3, 3, 3) stacked as [filter m, dy, dx], filter order (identity, sobel_x, sobel_y).
GROWING_FILTERS = np.stack([IDENTITY, SOBEL_X, SOBEL_Y])


def _shifted_views(x: jax.Array) -> list[jax.Array]:
    """The 9 neighbours of every cell, zero-padded, in [dy][dx] raster order."""
    h, w = x.shape[-3], x.shape[-2]
    pad = [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
    xp = jnp.pad(x, pad)
    return [xp[..., dy : dy + h, dx : dx + w, :] for dy in range(3) for dx in range(3)]


def sobel_perceive(x: jax.Array) -> jax.Array:
    """Growing CA perception: (..., H, W, C) -> (..., H, W, 3C), feature index c*3 + m."""
    views = _shifted_views(x)
    flat = GROWING_FILTERS.reshape(3, 9)
    # Each filter is a weighted sum of the 9 views; zero weights are skipped at trace time.
    outs = [sum(float(wt) * v for wt, v in zip(flat[m], views) if wt != 0.0) for m in range(3)]
    y = jnp.stack(outs, axis=-1)  # (..., H, W, C, 3)
    return y.reshape(*x.shape[:-1], x.shape[-1] * 3)


def sobel_perceive_conv(x: jax.Array) -> jax.Array:
    """Same as :func:`sobel_perceive` via a depthwise ``lax.conv_general_dilated``.

    Kept as the reference formulation and the benchmark's baseline.
    """
    c = x.shape[-1]
    lead = x.shape[:-3]
    x4 = x.reshape(-1, *x.shape[-3:])
    # HWIO depthwise kernel: (3, 3, 1, C*3), output channel c*3 + m.
    k = np.transpose(GROWING_FILTERS, (1, 2, 0))  # (3, 3, 3) [dy, dx, m]
    k = np.tile(k[:, :, None, :], (1, 1, c, 1)).reshape(3, 3, 1, c * 3)
    y = jax.lax.conv_general_dilated(
        x4,
        jnp.asarray(k),
        window_strides=(1, 1),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
    )
    return y.reshape(*lead, *y.shape[-3:])


def im2col3x3(x: jax.Array) -> jax.Array:
    """(..., H, W, C) -> (..., H, W, 9C): the zero-padded 3x3 patch, index (dy*3+dx)*C + c.

    The patch layout matches an HWIO kernel reshaped to (9C, O), so a 3x3 SAME
    convolution is ``im2col3x3(x) @ kernel.reshape(9 * C, O)``.
    """
    return jnp.concatenate(_shifted_views(x), axis=-1)


def conv3x3(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """3x3 SAME cross-correlation with an HWIO kernel, as im2col + one matmul."""
    kh, kw, cin, cout = kernel.shape
    if (kh, kw) != (3, 3) or cin != x.shape[-1]:
        raise ValueError(
            f"conv3x3: kernel {kernel.shape} does not fit input channels {x.shape[-1]}"
        )
    return im2col3x3(x) @ kernel.reshape(9 * cin, cout) + bias


def conv3x3_lax(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """The same convolution through ``lax.conv_general_dilated`` (benchmark baseline)."""
    lead = x.shape[:-3]
    x4 = x.reshape(-1, *x.shape[-3:])
    y = jax.lax.conv_general_dilated(
        x4, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return (y + bias).reshape(*lead, *y.shape[-3:])
