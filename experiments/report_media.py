"""Helpers shared by the report's sections: timing logs, zooms that fit the page, videos
with poster frames, the shipped models' training curves."""

from __future__ import annotations

import contextlib
import csv
import resource
import time
from importlib import resources
from pathlib import Path

import numpy as np
from absl import logging

from nca_adv.media import report, video

PAGE_WIDTH = 960  # pixels a picture may span in the report


def cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its finished children (ffmpeg)."""
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + child.ru_utime + child.ru_stime


@contextlib.contextmanager
def timed(name: str, timing: dict | None = None, cpu: dict | None = None):
    """Log a part's wall and CPU seconds (:func:`cpu_seconds`), and record them in
    ``timing[name]`` and ``cpu[name]`` when given. On a CPU shared with other work the CPU
    seconds say more about the job than the wall seconds do."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    yield
    wall, used = round(time.perf_counter() - t0, 1), round(cpu_seconds() - c0, 1)
    if timing is not None:
        timing[name], cpu[name] = wall, used
    logging.info("%s: %.1f s (%.1f CPU s)", name, wall, used)


def shipped_curve(name: str) -> tuple[np.ndarray, np.ndarray] | None:
    path = Path(str(resources.files("nca_adv") / "assets" / "models" / f"{name}_metrics.csv"))
    if not path.is_file():
        return None
    rows = list(csv.DictReader(path.open()))
    return np.array([int(r["iteration"]) for r in rows]), np.array([float(r["loss"]) for r in rows])


def smooth(y: np.ndarray, window: int = 25) -> np.ndarray:
    if len(y) < window:
        return y
    return np.convolve(y, np.ones(window) / window, mode="valid")


def fit_zoom(cols: int, width: int, most: int = 4) -> int:
    """The largest integer zoom (1..most) at which ``cols`` pictures ``width`` wide fit the page."""
    return int(np.clip(PAGE_WIDTH // (cols * (width + 2)), 1, most))


def rgb(states: np.ndarray) -> np.ndarray:
    """States (..., C >= 4) -> uint8 RGB over white."""
    return video.to_uint8(video.rgba_to_rgb(states))


def run_frames(states: np.ndarray) -> np.ndarray:
    """(T, B, H, W, 16) -> (T, H', W', 3) uint8 frames with the B runs side by side."""
    zoom = fit_zoom(states.shape[1], states.shape[3])
    return np.stack([video.image_grid(video.zoom(rgb(s), zoom), cols=len(s)) for s in states])


def add_video(
    rep: report.HtmlReport,
    path: Path,
    frames: np.ndarray,
    caption: str,
    poster_at: int = -1,
    fps: int = 30,
) -> None:
    """Write a video, a poster PNG of its frame ``poster_at`` and put both in the report."""
    rep.video(
        video.write_video(path, frames, fps=fps),
        caption,
        poster=video.save_poster(path, frames, poster_at),
    )
