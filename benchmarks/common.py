"""Timing helpers for the benchmark scripts (medians after a compile/warm-up run)."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import jax


def time_fn(fn: Callable[[], object], repeats: int = 5) -> tuple[float, float]:
    """(median, min) wall seconds of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def emit(record: dict) -> None:
    """One JSON line per measurement (machine-readable), flushed at once."""
    print(json.dumps(record), flush=True)


def markdown_table(records: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in records:
        cells = [f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
