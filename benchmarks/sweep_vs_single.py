"""A sweep against the same runs trained alone: how far apart they end (BUILD_NOTES.md,
"Resume guarantees"). ``python -m benchmarks.sweep_vs_single [ITERATIONS]`` (default 8).

The tiny growing config of the tests, 2 targets x 2 seeds trained as one sweep (one
program, ``vmap`` over the runs) and each run alone (the single-run program fit uses);
prints, per run, whether the losses of every iteration are bitwise equal, then the
largest parameter difference (absolute, and relative to the largest parameter).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

from nca_adv import io
from nca_adv.models import growing
from nca_adv.training import engine, jobs, runtime

TINY = growing.GrowingTrainConfig(
    pool_size=6, batch_size=2, min_steps=2, max_steps=3, damage_n=1, lr_decay_at=3
)


def main(iterations: int) -> None:
    job = jobs.growing_job(["lizard", "lizard_red"], [0, 1], TINY, 0)
    chunk = engine.make_chunk(job.recipe, 1, 1)  # a single run, as fit trains it
    worst_abs = worst_rel = 0.0
    with tempfile.TemporaryDirectory() as d:
        jobs.run_job(job, d, iterations, chunk=1, checkpoint_every=iterations)
        for run in job.runs:
            folder = Path(d) / f"run_{run.name}"
            swept = [r["loss"] for r in runtime.read_metrics(folder / "metrics.jsonl")]
            consts = engine.stack_runs([run.consts])
            key = jax.random.PRNGKey(run.seed)[None]
            state = engine.init_states(job.recipe, key, job.shared, consts)
            alone = []
            for _ in range(iterations):
                state, metrics = chunk(state, job.shared, consts)
                alone.append(float(np.asarray(metrics["loss"])[0, 0]))
            print(f"{run.name}: losses bitwise equal: {alone == swept}")
            single = jax.device_get(engine.run_slice(state["params"], 0))
            saved = io.load_model(str(folder / "params.npz"), "growing")
            for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(saved), strict=True):
                diff = float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                worst_abs = max(worst_abs, diff)
                worst_rel = max(worst_rel, diff / max(float(np.max(np.abs(a))), 1e-30))
    print(
        f"{iterations} iterations: parameters max |diff| {worst_abs:.3g} "
        f"({worst_rel:.3g} of the largest |parameter| of its array)"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
