"""Timing helpers for the benchmark scripts (medians after a compile/warm-up run)."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np

from nca_adv.training import engine


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


def time_chunk(recipe, shared, runs, length, repeats, sharding=None, per_call_sync=False):
    """Median seconds per iteration of ``length`` iterations (after one compile run)."""
    keys = np.stack([jax.random.PRNGKey(r.seed) for r in runs])
    run_consts = engine.stack_runs([r.consts for r in runs])
    states = engine.init_states(recipe, keys, shared, run_consts)
    if per_call_sync:  # one jitted iteration per call, its loss read back: a host loop
        step = engine.make_chunk(recipe, 1, len(runs), sharding)

        def go(states):
            for _ in range(length):
                states, metrics = step(states, shared, run_consts)
                float(np.asarray(metrics["loss"]).ravel()[0])
            return states
    else:
        chunk = engine.make_chunk(recipe, length, len(runs), sharding)

        def go(states):
            states, metrics = chunk(states, shared, run_consts)
            jax.block_until_ready(metrics)
            return states

    states = go(states)  # compile + warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        states = go(states)
        times.append((time.perf_counter() - t0) / length)
    return statistics.median(times)


def record(name, variant, s_per_iter, **extra):
    rec = {
        "bench": name,
        "variant": variant,
        "s_per_iter": round(s_per_iter, 5),
        "iter_per_s": round(1 / s_per_iter, 3),
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        **extra,
    }
    emit(rec)
    return rec
