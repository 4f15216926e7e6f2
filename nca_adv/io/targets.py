"""Target images: shipped names or PNG paths, preprocessed as the original Growing CA."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from nca_adv.errors import UserError

TARGET_SIZE = 40
TARGET_PADDING = 16
ALIVE_ALPHA = 0.1  # the Growing CA's alive threshold
MIN_TARGET_CELLS = 3

# Shipped targets: name -> file in nca_adv/assets/targets. The lizard is U+1F98E rendered
# from Debian's Noto Color Emoji at 109 px (Pillow, embedded_color=True), centred on a
# 128x128 transparent canvas; see BUILD_NOTES.md. The six edited lizards of the adversarial
# article (no tail, no hind legs, no fore legs, no head, red, blue) are made from it by
# experiments/make_targets.py (regions and hues in code).
SHIPPED_TARGETS = {
    "lizard": "lizard.png",
    **{
        f"lizard_{edit}": f"lizard_{edit}.png"
        for edit in ("no_tail", "no_leg", "no_arm", "no_head", "red", "blue")
    },
}


def shipped_target_path(name: str) -> Path:
    if name not in SHIPPED_TARGETS:
        raise KeyError(f"unknown target {name!r}; shipped targets: {sorted(SHIPPED_TARGETS)}")
    return Path(str(resources.files("nca_adv") / "assets" / "targets" / SHIPPED_TARGETS[name]))


def load_rgba(path: str | os.PathLike) -> Image.Image:
    """Open a PNG that has an alpha channel; clear errors for anything else."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"target image {path} is a directory, not a PNG file")
    if not path.is_file():
        raise FileNotFoundError(f"target image {path} does not exist")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path} is not a readable image: {e}") from e
    if img.format != "PNG":
        raise ValueError(f"{path} is a {img.format} file; targets must be RGBA PNGs")
    if "A" not in img.getbands() and "transparency" not in img.info:
        raise ValueError(f"{path} has no alpha channel (mode {img.mode}); targets must be RGBA")
    return img.convert("RGBA")


def preprocess_target(
    img: Image.Image, size: int = TARGET_SIZE, padding: int = TARGET_PADDING
) -> np.ndarray:
    """Thumbnail to ``size`` (LANCZOS), /255, premultiply RGB by alpha, pad -> (H, W, 4)."""
    img = img.copy()
    img.thumbnail((size, size), Image.LANCZOS)
    x = np.asarray(img, np.float32) / 255.0
    x[..., :3] *= x[..., 3:4]
    return np.pad(x, ((padding, padding), (padding, padding), (0, 0)))


def load_target(
    name_or_path: str, size: int = TARGET_SIZE, padding: int = TARGET_PADDING
) -> np.ndarray:
    """A shipped target name (e.g. ``lizard``) or a PNG path -> (H, W, 4) float32 target."""
    for name, value, low in (("size", size, 1), ("padding", padding, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"load_target: {name} must be an integer >= {low}, got {value!r}")
    if name_or_path in SHIPPED_TARGETS:
        path = shipped_target_path(name_or_path)
    elif name_or_path.lower().endswith(".png") or os.sep in name_or_path:
        path = Path(name_or_path)
    else:
        raise KeyError(
            f"unknown target {name_or_path!r}: give a shipped name {sorted(SHIPPED_TARGETS)} "
            "or a path to an RGBA .png"
        )
    target = preprocess_target(load_rgba(path), size, padding)
    check_target(target, str(path))
    return target


def check_target(target: np.ndarray, source: str = "target") -> None:
    """Refuse a target whose visible part (alpha > 0.1, the CA's alive threshold) is empty
    or smaller than ``MIN_TARGET_CELLS`` cells either way: every loss against it would be
    meaningless."""
    visible = np.asarray(target)[..., 3] > ALIVE_ALPHA
    if not visible.any():
        raise UserError(f"target {source} is empty: no pixel is visible (alpha > {ALIVE_ALPHA})")
    rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    if min(h, w) < MIN_TARGET_CELLS:
        raise UserError(
            f"target {source} is too small: its visible part is {h}x{w} cells after resizing, "
            f"at least {MIN_TARGET_CELLS}x{MIN_TARGET_CELLS} are needed"
        )
