"""Pictures of adversarial-cell attacks: frames with the adversary cells marked."""

from __future__ import annotations

import numpy as np

from nca_adv import video
from nca_adv.masks import ALIVE_THRESHOLD, ALPHA_CHANNEL


def growing_frames(
    states: np.ndarray, mask: np.ndarray, zoom: int, hide: bool = False
) -> np.ndarray:
    """(T, H, W, 16) states of one run -> (T, H*zoom, W*zoom, 3) uint8 frames, the living
    adversary cells (``mask`` (H, W, 1)) marked by a magenta dot; with ``hide`` they are
    blanked instead, showing the original cells alone."""
    states = np.asarray(states)
    adv = np.asarray(mask)[..., 0] > 0
    if hide:
        rgb = video.rgba_to_rgb(states[..., :4] * (1.0 - adv[..., None]))
        return video.zoom(video.to_uint8(rgb), zoom)
    frames = video.zoom(video.to_uint8(video.rgba_to_rgb(states)), zoom)
    living = adv & (states[..., ALPHA_CHANNEL] > ALIVE_THRESHOLD)
    return video.mark_cells(frames, living, zoom)


def mnist_frames(
    states: np.ndarray,
    labels: np.ndarray,
    masks: np.ndarray,
    present: np.ndarray,
    zoom: int,
    cols: int,
) -> np.ndarray:
    """(T, B, H, W, 20) states -> (T, ., ., 3) uint8 grids of vote-coloured digits (light
    red background where the majority is wrong, :func:`video.mnist_frame`); at the steps
    where ``present[t]``, the adversary cells (``masks`` (B, H, W, 1)) on the digit are
    marked by a magenta dot."""
    states, labels = np.asarray(states), np.asarray(labels)
    on_digit = (np.asarray(masks)[..., 0] > 0) & (states[0, ..., 0] > 0.1)
    out = []
    for t, xs in enumerate(states):
        digits = np.stack([video.mnist_frame(x, int(lab)) for x, lab in zip(xs, labels)])
        digits = video.zoom(digits, zoom)
        if present[t]:
            digits = video.mark_cells(digits, on_digit, zoom)
        out.append(video.image_grid(digits, cols=cols))
    return np.stack(out)
