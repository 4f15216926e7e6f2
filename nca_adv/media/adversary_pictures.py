"""Pictures of adversarial-cell attacks: frames with the adversary cells marked."""

from __future__ import annotations

import numpy as np

from nca_adv.media import video
from nca_adv.models.masks import ALIVE_THRESHOLD, ALPHA_CHANNEL


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
    votes: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    masks: np.ndarray,
    present: np.ndarray,
    zoom: int,
    cols: int,
) -> np.ndarray:
    """Votes (T, B, H, W) of digits ``images`` (B, H, W) -> (T, ., ., 3) uint8 grids of
    vote-coloured digits (light red background where the majority is wrong,
    :func:`video.mnist_frame`); at the steps where ``present[t]``, the adversary cells
    (``masks`` (B, H, W, 1)) on the digit are marked by a magenta dot."""
    images, labels = np.asarray(images, np.float32), np.asarray(labels)
    on_digit = (np.asarray(masks)[..., 0] > 0) & (images > 0.1)
    scores = np.eye(10, dtype=np.float32)
    out = []
    for t, vs in enumerate(np.asarray(votes)):
        # the grey channel and one-hot class scores: what video.mnist_frame reads
        xs = np.concatenate([images[..., None], np.zeros((*images.shape, 9)), scores[vs]], -1)
        digits = np.stack([video.mnist_frame(x, int(lab)) for x, lab in zip(xs, labels)])
        digits = video.zoom(digits, zoom)
        if present[t]:
            digits = video.mark_cells(digits, on_digit, zoom)
        out.append(video.image_grid(digits, cols=cols))
    return np.stack(out)
