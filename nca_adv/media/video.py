"""Pictures of states: RGBA -> RGB, zoom, image grids, MNIST vote colouring, videos."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from nca_adv.extras import lazy, require

imageio = lazy("imageio", "media", also=("imageio.v2",), what="writing an .mp4")  # at first use

# One colour per MNIST class (0..9), from the article's palette family (tab10).
CLASS_COLOURS = np.array(
    [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [127, 127, 127],
        [188, 189, 34],
        [23, 190, 207],
    ],
    np.uint8,
)
FORMATS = (".mp4", ".gif")  # what write_video writes
WRONG_BACKGROUND = np.array([255, 200, 200], np.uint8)
RIGHT_BACKGROUND = np.array([255, 255, 255], np.uint8)


def rgba_to_rgb(x: np.ndarray) -> np.ndarray:
    """Premultiplied RGBA (first 4 channels of a state) over white -> float RGB in [0, 1]."""
    x = np.asarray(x, np.float32)
    alpha = np.clip(x[..., 3:4], 0.0, 1.0)
    return np.clip(1.0 - alpha + x[..., :3], 0.0, 1.0)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(img, np.float32), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def zoom(img: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (..., H, W, C) by an integer factor."""
    return np.repeat(np.repeat(img, factor, axis=-3), factor, axis=-2)


def image_grid(images: np.ndarray, cols: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """(N, H, W, C) uint8 -> one (rows*H', cols*W', C) image, row-major, padded."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    rows = -(-n // cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), fill, images.dtype)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        out[y : y + h, x : x + w] = img
    return out


def mnist_frame(x: np.ndarray, label: int) -> np.ndarray:
    """Vote-coloured digit on white, or on light red when the alive cells' majority vote
    differs from ``label``."""
    grey = np.asarray(x[..., 0])
    live = grey > 0.1
    vote = np.argmax(np.asarray(x[..., 10:20]), axis=-1)
    counts = np.bincount(vote[live], minlength=10) if live.any() else np.zeros(10, int)
    background = RIGHT_BACKGROUND if counts.argmax() == label else WRONG_BACKGROUND
    img = np.where(live[..., None], CLASS_COLOURS[vote], background)
    return img.astype(np.uint8)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 30) -> Path:
    """Write (T, H, W, 3) uint8 frames as .mp4 (H.264 via imageio-ffmpeg) or .gif."""
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"unknown video format {suffix!r} for {path}; use .mp4 or .gif")
    with _atomic(path) as tmp:
        _write_frames(tmp, suffix, frames, fps)
    return path


def _write_frames(path: Path, suffix: str, frames: np.ndarray, fps: int) -> None:
    if suffix == ".mp4":
        # H.264 wants even sides; pad with white rather than rescale.
        h, w = frames.shape[1:3]
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=255)
        # Without this imageio-ffmpeg starts ffmpeg with preexec_fn=os.setpgrp, which makes
        # subprocess fork() the (multithreaded) JAX process and JAX warn of a deadlock at
        # every write. Unset, subprocess uses vfork/posix_spawn and runs no Python in the
        # child; the only loss is that Ctrl-C also reaches ffmpeg, which we abort anyway.
        os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")
        require("imageio_ffmpeg", "media", "writing an .mp4")
        # ffmpeg's exit status is not checked by imageio: quiet, and the file checked instead
        imageio.v2.mimwrite(
            path,
            list(frames),
            fps=fps,
            codec="libx264",
            macro_block_size=1,
            ffmpeg_log_level="quiet",
        )
        if not _complete_mp4(path):  # on a full disk ffmpeg stops short and says nothing
            raise RuntimeError(f"{path}: ffmpeg did not finish writing the video")
    elif suffix == ".gif":
        imgs = [Image.fromarray(f) for f in frames]
        imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` (same suffix: the writers pick the format by it),
    renamed to ``path`` once written and removed if writing fails: a full disk leaves no
    truncated picture or video, and the previous one, if any, stays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # ffmpeg's end: a broken pipe; say why
        room = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        if room or _no_room(path.parent):
            code = e.errno if room else errno.ENOSPC
            raise OSError(code, os.strerror(code), str(path)) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _complete_mp4(path: Path) -> bool:
    """Whether the .mp4 at ``path`` is whole: its top-level boxes fill the file exactly
    and its index (``moov``, written last) is there."""
    size, pos, kinds = path.stat().st_size, 0, set()
    with path.open("rb") as f:
        while pos < size:
            f.seek(pos)
            head = f.read(16)
            if len(head) < 8:
                return False
            n, kind = int.from_bytes(head[:4], "big"), head[4:8]
            if n == 1 and len(head) == 16:
                n = int.from_bytes(head[8:16], "big")
            elif n == 0:
                n = size - pos
            if n < 8:
                return False
            kinds.add(kind)
            pos += n
    return pos == size and b"moov" in kinds


def _no_room(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def save_poster(video_path: str | os.PathLike, frames: np.ndarray, index: int = -1) -> Path:
    """Write frame ``index`` of a video's (T, H, W, 3) uint8 ``frames`` beside it as
    ``<name>_poster.png``: the picture shown before the video plays."""
    video_path = Path(video_path)
    return save_image(video_path.with_name(f"{video_path.stem}_poster.png"), frames[index])


def save_image(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Write an (H, W, 3|4) uint8 image as PNG."""
    path = Path(path)
    with _atomic(path) as tmp:
        Image.fromarray(np.asarray(img)).save(tmp)
    return path


MARK_COLOUR = np.array([255, 0, 255], np.uint8)


def mark_cells(
    frames: np.ndarray, cells: np.ndarray, zoom: int, colour: np.ndarray = MARK_COLOUR
) -> np.ndarray:
    """Paint a dot in the centre of each marked cell of frames (..., H*zoom, W*zoom, 3)
    zoomed by ``zoom``; ``cells`` (..., H, W) bool broadcasts against the frames' cells."""
    dot = np.zeros((zoom, zoom), bool)
    lo, hi = zoom // 4, max(zoom // 4 + 1, zoom - zoom // 4)
    dot[lo:hi, lo:hi] = True
    spots = np.kron(np.asarray(cells, bool), dot).astype(bool)
    return np.where(spots[..., None], np.asarray(colour, np.uint8), frames).astype(np.uint8)
