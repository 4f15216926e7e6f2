"""Target images: shipped names or PNG paths, preprocessed as the original Growing CA."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

TARGET_SIZE = 40
TARGET_PADDING = 16

# Shipped targets: name -> file in nca_adv/assets/targets. The lizard is U+1F98E rendered
# from Debian's Noto Color Emoji at 109 px (Pillow, embedded_color=True), centred on a
# 128x128 transparent canvas; see BUILD_NOTES.md.
SHIPPED_TARGETS = {"lizard": "lizard.png"}


def shipped_target_path(name: str) -> Path:
    if name not in SHIPPED_TARGETS:
        raise KeyError(f"unknown target {name!r}; shipped targets: {sorted(SHIPPED_TARGETS)}")
    return Path(str(resources.files("nca_adv") / "assets" / "targets" / SHIPPED_TARGETS[name]))


def load_rgba(path: str | os.PathLike) -> Image.Image:
    """Open a PNG that has an alpha channel; clear errors for anything else."""
    path = Path(path)
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
    if name_or_path in SHIPPED_TARGETS:
        path = shipped_target_path(name_or_path)
    elif name_or_path.lower().endswith(".png") or os.sep in name_or_path:
        path = Path(name_or_path)
    else:
        raise KeyError(
            f"unknown target {name_or_path!r}: give a shipped name {sorted(SHIPPED_TARGETS)} "
            "or a path to an RGBA .png"
        )
    return preprocess_target(load_rgba(path), size, padding)
