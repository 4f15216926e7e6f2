"""Living-cell steps against dense steps, side by side in one run.

python -m benchmarks.bench_living                     # every case below
python -m benchmarks.bench_living --cases=lizard_train,rollout_b1 --repeats=5

One JSON line per (case, form): median seconds per unit (training iteration or rollout
step) over ``--repeats`` timings, the two forms timed alternately so a busy machine slows
both alike; then one line per case with the speed-up and the fraction of the ideal reached.
The ideal is the grid's cells over the cells alive (max-pooled alpha > 0.1), averaged over
the states the case runs through; "updated" is the cells the living step runs the network
on (the chosen capacity).

Cases (the shipped lizard, states as training sees them late: a pool of grown lizards):
- lizard_train: the Growing CA's training iteration, padding 16 (72x72), batch 8, 64..95
  steps, gradient through the rollout;
- perturbation_train: a perturbation iteration (the article's recipe), padding 16, batch 8;
- adversary_train: an adversary iteration (tailless 10 %), padding 24 (88x88), batch 8: the
  dense mixed step runs both networks on every cell;
- rollout_b1, rollout_b32: forward, 100 steps of the grown lizard, batch 1 (the playground)
  and 32, padding 16.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from benchmarks.common import emit
from experiments import common
from nca_adv import io
from nca_adv.io import targets
from nca_adv.models import growing, living
from nca_adv.models.architecture import GrowingCA
from nca_adv.models.rollout import scan_steps
from nca_adv.training import engine, jobs, trainers

FLAGS = flags.FLAGS
CASES = ("lizard_train", "perturbation_train", "adversary_train", "rollout_b1", "rollout_b32")
flags.DEFINE_list("cases", list(CASES), f"Cases to time, of {CASES}.")
flags.DEFINE_integer("repeats", 3, "Timed repeats per form (median reported).", lower_bound=1)
flags.DEFINE_integer("iterations", 2, "Training iterations per timed chunk.", lower_bound=1)
common.define_device_flags()

GROWN_STEPS = 200


def _grown(params, h, w):
    return np.asarray(trainers.grow(params, h, w, GROWN_STEPS, jax.random.PRNGKey(0)))


def _training(case: str):
    """(build(form) -> timed callable, states it runs through, unit count per call)."""
    lizard = io.load_model("lizard", "growing")
    config = growing.GrowingTrainConfig(pool_size=64, batch_size=8)
    if case == "lizard_train":
        h = w = 72
        grown = _grown(lizard, h, w)
        recipe = trainers.growing_family(
            config,
            init_params=lambda key, shared: jax.tree.map(jnp.array, lizard),
            make_step=lambda params, shared, batch: GrowingCA().step(params),
            pool_init=lambda key, shared, run, n: {"x": trainers.copies(shared["grown"], n)},
            fresh=lambda key, shared, run: {"x": shared["seed"][None]},
        )
        job = jobs.Job(
            recipe,
            {"seed": growing.seed_state(h, w), "grown": grown},
            [jobs.Run("0", 0, {"target": targets.load_target("lizard", padding=16)})],
            {},
            None,
        )
    elif case == "perturbation_train":
        job = jobs.perturbation_job("lizard", ["lizard_no_tail"], [0], config, 16)
        grown = np.asarray(job.shared["grown"])
    else:
        job = jobs.growing_adversary_job("lizard", ["lizard_no_tail"], [0.1], [0], config, 24)
        grown = np.asarray(job.shared["grown"])
    keys = np.stack([jax.random.PRNGKey(0)])
    consts = engine.stack_runs([r.consts for r in job.runs])

    def build(form):
        living.set_step_form(form)
        chunk = engine.make_chunk(job.recipe, FLAGS.iterations, 1)
        states = engine.init_states(job.recipe, keys, job.shared, consts)
        holder = {"s": states}

        def go():
            holder["s"], metrics = chunk(holder["s"], job.shared, consts)
            return metrics

        jax.block_until_ready(go())  # compile + warm-up
        return go

    return build, grown[None], FLAGS.iterations


def _rollout(batch: int):
    lizard = io.load_model("lizard", "growing")
    grown = _grown(lizard, 72, 72)
    x0 = jnp.broadcast_to(grown, (batch, *grown.shape))
    steps = 100

    def build(form):
        step = GrowingCA().step(lizard, form)
        run = jax.jit(lambda x: scan_steps(step, x, jax.random.PRNGKey(1), steps))
        jax.block_until_ready(run(x0))
        return lambda: run(x0)

    return build, np.asarray(x0), steps


def _cells(states: np.ndarray) -> tuple[float, float, float]:
    """(grid cells, mean alive cells, mean cells updated by the living step) per grid."""
    x = jnp.asarray(states)
    total = int(np.prod(x.shape[-3:-1]))
    alive = float(jnp.mean(jnp.sum(growing.alive_mask(x), axis=(-3, -2, -1))))
    need = int(jnp.sum(living.needed_cells(x)))
    grids = int(np.prod(x.shape[:-3])) or 1
    caps = [c for c in living.capacities(total * grids) if c >= need]
    updated = (caps[0] if caps else total * grids) / grids
    return total, alive, updated


def main(argv):
    del argv
    common.configure_devices()
    for case in FLAGS.cases:
        if case not in CASES:
            raise ValueError(f"--cases: unknown case {case!r}; known: {CASES}")
        build, states, units = (
            _training(case)
            if case.endswith("_train")
            else _rollout(int(case.removeprefix("rollout_b")))
        )
        runners = {form: build(form) for form in ("dense", "living")}
        times = {form: [] for form in runners}
        for _ in range(FLAGS.repeats):
            for form, go in runners.items():
                t0 = time.perf_counter()
                jax.block_until_ready(go())
                times[form].append((time.perf_counter() - t0) / units)
        living.set_step_form("auto")
        med = {form: statistics.median(t) for form, t in times.items()}
        unit = "s_per_iteration" if case.endswith("_train") else "s_per_step"
        for form in runners:
            emit({"bench": "living", "case": case, "form": form, unit: round(med[form], 5)})
        total, alive, updated = _cells(states)
        speedup = med["dense"] / med["living"]
        ideal = total / alive
        emit(
            {
                "bench": "living",
                "case": case,
                "speedup": round(speedup, 2),
                "grid_cells": total,
                "alive_cells": round(alive, 1),
                "updated_cells": round(updated, 1),
                "ideal_speedup": round(ideal, 2),
                "fraction_of_ideal": round(speedup / ideal, 2),
                "backend": jax.default_backend(),
            }
        )


if __name__ == "__main__":
    common.run(main)
