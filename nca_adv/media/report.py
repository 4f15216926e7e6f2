"""A small HTML report: sections of text, tables, images, videos and line plots."""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np


def plot_curves(
    path: str | os.PathLike,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
    vline: float | None = None,
) -> Path:
    """Line plot of ``{label: (x, y)}`` to a PNG (matplotlib, headless)."""
    from nca_adv.extras import require

    matplotlib = require("matplotlib", "media", "plotting")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label, lw=1.2)
    if vline is not None:
        ax.axvline(vline, color="grey", ls="--", lw=0.8)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


class HtmlReport:
    """Accumulates sections; media paths are written relative to the report's folder."""

    def __init__(self, path: str | os.PathLike, title: str):
        self.path = Path(path)
        self.title = title
        self._parts: list[str] = []

    def _rel(self, media: str | os.PathLike) -> str:
        return html.escape(os.path.relpath(media, self.path.parent))

    def heading(self, text: str, level: int = 2) -> None:
        self._parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str) -> None:
        self._parts.append(f"<p>{html.escape(text)}</p>")

    def image(self, path: str | os.PathLike, caption: str, width: int | None = None) -> None:
        w = f' width="{width}"' if width else ""
        self._parts.append(
            f'<figure><img src="{self._rel(path)}"{w}><figcaption>{html.escape(caption)}'
            "</figcaption></figure>"
        )

    def video(
        self,
        path: str | os.PathLike,
        caption: str,
        width: int | None = None,
        poster: str | os.PathLike | None = None,
    ) -> None:
        """A looping, muted video. With a ``poster`` (an image, e.g. from
        :func:`nca_adv.media.video.save_poster`) the page shows it until the reader presses play
        (a video's first frame is often blank); without one the video plays at once."""
        w = f' width="{width}"' if width else ""
        w += f' poster="{self._rel(poster)}" preload="metadata"' if poster else " autoplay"
        self._parts.append(
            f'<figure><video src="{self._rel(path)}"{w} controls loop muted></video>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def table(self, header: list[str], rows: list[list]) -> None:
        cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
            for row in rows
        )
        self._parts.append(f"<table><tr>{cells}</tr>{body}</table>")

    def write(self) -> Path:
        style = (
            "body{font-family:sans-serif;max-width:980px;margin:2em auto;line-height:1.4}"
            "figure{display:inline-block;margin:0.5em}figcaption{font-size:0.85em;color:#444}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}"
            # Pictures never overflow the page: scaled down to its width, aspect kept.
            "figure{max-width:100%;vertical-align:top}img,video{max-width:100%;height:auto;"
            "image-rendering:pixelated}"
        )
        doc = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}"
            f"</title><style>{style}</style></head><body><h1>{html.escape(self.title)}</h1>"
            + "\n".join(self._parts)
            + "</body></html>"
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(doc)
        return self.path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
