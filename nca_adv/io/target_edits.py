"""Editing target images: erase a region (polygon or mask), recolour by a hue rotation.

Images are straight-alpha RGBA uint8 arrays (H, W, 4), as PNG files store them. Erasing
sets the region fully transparent (RGB and alpha 0). The hue rotation works on straight
RGB (rotating premultiplied RGB would give the same hue, since premultiplying scales
all three channels alike) and leaves alpha, white, black and near-grey pixels alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from nca_adv.extras import lazy

colors = lazy("matplotlib.colors", "media", what="recolouring a target")  # rgb_to_hsv, hsv_to_rgb

# Pixels whose chroma (max - min of straight RGB, in [0, 1]) is below this are grey-ish
# (white, black, greys) and keep their colour under a hue rotation.
GREY_CHROMA = 0.08

Polygon = Sequence[tuple[float, float]]


def check_rgba(img: np.ndarray) -> np.ndarray:
    """Raise ValueError unless ``img`` is an (H, W, 4) uint8 RGBA array."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] != 4 or img.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 4) uint8 RGBA image, got {img.shape} {img.dtype}")
    return img


def polygon_mask(shape: tuple[int, int], polygons: Sequence[Polygon]) -> np.ndarray:
    """(H, W) bool, true inside any of the ``polygons`` (lists of (x, y) pixel corners)."""
    h, w = shape
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        if len(poly) < 3:
            raise ValueError(f"a polygon needs at least 3 corners, got {len(poly)}")
        draw.polygon([(float(x), float(y)) for x, y in poly], fill=255)
    return np.asarray(canvas) > 0


def erase_mask(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Make the pixels where ``mask`` (H, W) is true fully transparent."""
    img = check_rgba(img)
    mask = np.asarray(mask, bool)
    if mask.shape != img.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} != image shape {img.shape[:2]}")
    out = img.copy()
    out[mask] = 0
    return out


def erase_polygons(img: np.ndarray, polygons: Sequence[Polygon]) -> np.ndarray:
    """Make the inside of every polygon ((x, y) pixel corners) fully transparent."""
    img = check_rgba(img)
    return erase_mask(img, polygon_mask(img.shape[:2], polygons))


def rotate_hue(img: np.ndarray, degrees: float, grey_chroma: float = GREY_CHROMA) -> np.ndarray:
    """Rotate the hue of every coloured pixel by ``degrees`` (HSV hue; saturation, value
    and alpha kept); pixels with chroma below ``grey_chroma`` (white, black, greys) and
    fully transparent ones are left as they are."""
    img = check_rgba(img)
    rgb = img[..., :3].astype(np.float64) / 255.0
    hsv = colors.rgb_to_hsv(rgb)
    hsv[..., 0] = np.mod(hsv[..., 0] + degrees / 360.0, 1.0)
    rotated = (colors.hsv_to_rgb(hsv) * 255.0 + 0.5).astype(np.uint8)
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
    change = (chroma >= grey_chroma) & (img[..., 3] > 0)
    out = img.copy()
    out[..., :3] = np.where(change[..., None], rotated, img[..., :3])
    return out


def _hues(img: np.ndarray, grey_chroma: float, min_alpha: int) -> np.ndarray:
    """Hues in degrees of the coloured, mostly opaque pixels."""
    img = check_rgba(img)
    rgb = img[..., :3].astype(np.float64) / 255.0
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
    sel = (chroma >= grey_chroma) & (img[..., 3] >= min_alpha)
    if not sel.any():
        raise ValueError("the image has no coloured opaque pixels")
    return colors.rgb_to_hsv(rgb[sel])[:, 0] * 360.0


def _circular_mean(deg: np.ndarray) -> float:
    rad = np.radians(deg)
    return float(np.degrees(np.arctan2(np.sin(rad).mean(), np.cos(rad).mean())) % 360)


def mean_hue(img: np.ndarray, grey_chroma: float = GREY_CHROMA, min_alpha: int = 128) -> float:
    """Circular mean hue in degrees [0, 360) of the coloured, mostly opaque pixels."""
    return _circular_mean(_hues(img, grey_chroma, min_alpha))


def dominant_hue(img: np.ndarray, grey_chroma: float = GREY_CHROMA, min_alpha: int = 128) -> float:
    """The most common hue in degrees [0, 360) of the coloured, mostly opaque pixels: the
    peak of a 10-degree histogram, refined by the circular mean within 15 degrees of it
    (the lizard's body colour, not pulled by its belly and spots as the mean is)."""
    hues = _hues(img, grey_chroma, min_alpha)
    counts, edges = np.histogram(hues, bins=36, range=(0.0, 360.0))
    peak = edges[np.argmax(counts)] + 5.0
    near = np.abs((hues - peak + 180.0) % 360.0 - 180.0) <= 15.0
    return _circular_mean(hues[near])


def recolour(img: np.ndarray, hue: float, grey_chroma: float = GREY_CHROMA) -> np.ndarray:
    """Rotate all hues (:func:`rotate_hue`) so that the dominant one lands on ``hue``."""
    return rotate_hue(img, hue - dominant_hue(img, grey_chroma), grey_chroma)
