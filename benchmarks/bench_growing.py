"""Growing CA speed: forward cell-updates/s and train-iteration time, against the alternatives.

  python -m benchmarks.bench_growing [--host_devices=2] [--repeats=5]

Forward: 96 steps from a grown-like state, B in --batches, perception as shifted slices
(ours) vs a depthwise ``lax.conv_general_dilated``. Training: the engine's iteration (the
growing recipe as ``train_growing`` runs it: pool 1024, B=8, 64..95 steps drawn per
iteration, sort, reset, damage, fwd+bwd with the scan body rematerialised, Adam, pool
write-back), ``--train_iterations`` of them scanned in one jitted chunk, slices vs conv;
the batch split over all visible devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks.common import emit, markdown_table, time_chunk, time_fn
from experiments.common import int_list, run
from nca_adv import io
from nca_adv.io import targets
from nca_adv.models import growing, perceive
from nca_adv.training import engine, fit, jobs, runtime, trainers

FLAGS = flags.FLAGS
flags.DEFINE_integer(
    "host_devices", 0, "Split the CPU into this many devices (0: as is).", lower_bound=0
)
flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (median reported).", lower_bound=1)
flags.DEFINE_list("batches", ["1", "8", "64"], "Forward batch sizes.")
flags.DEFINE_integer("steps", 96, "CA steps per measurement.", lower_bound=1)
flags.DEFINE_bool("train", True, "Also time the train iteration.")
flags.DEFINE_integer("train_iterations", 2, "Train iterations per timed chunk.", lower_bound=1)

PERCEPTIONS = {"slices": perceive.sobel_perceive, "lax.conv": perceive.sobel_perceive_conv}


def main(argv):
    del argv
    batches = int_list("batches")
    if min(batches) < 1:
        raise app.UsageError(f"--batches must be >= 1, got {batches}")
    if FLAGS.host_devices:
        jax.config.update("jax_num_cpu_devices", FLAGS.host_devices)
    params = io.load_model("lizard", "growing")
    target = targets.load_target("lizard")
    h, w = target.shape[:2]
    # Start from a grown lizard so the alive masks and values are realistic.
    grown = growing.rollout(params, growing.seed_state(h, w), jax.random.PRNGKey(0), 100)
    mesh = runtime.data_mesh()
    n_dev = mesh.devices.size
    fwd = []
    for b in batches:
        x0 = jnp.broadcast_to(grown, (b, h, w, growing.CHANNELS))
        if b % n_dev == 0:
            x0 = jax.device_put(x0, runtime.batch_sharding(mesh))
        for name, fn in PERCEPTIONS.items():
            med, best = time_fn(
                lambda fn=fn, x0=x0: growing.rollout(
                    params, x0, jax.random.PRNGKey(1), FLAGS.steps, perceive=fn
                ),
                FLAGS.repeats,
            )
            rec = {
                "bench": "growing_forward",
                "perception": name,
                "batch": b,
                "devices": n_dev if b % n_dev == 0 else 1,
                "steps": FLAGS.steps,
                "seconds": med,
                "M_cell_updates_per_s": b * h * w * FLAGS.steps / med / 1e6,
            }
            emit(rec)
            fwd.append(rec)
    print(
        markdown_table(fwd, ["perception", "batch", "devices", "seconds", "M_cell_updates_per_s"])
    )
    if not FLAGS.train:
        return
    # The engine's train iteration, as `train_growing` runs it (the article's settings).
    config = growing.GrowingTrainConfig()
    job = jobs.growing_job(["lizard"], [0], config, padding=targets.TARGET_PADDING)
    _, sharding = fit.placement(mesh, 1, config.batch_size)
    train = []
    for name, fn in PERCEPTIONS.items():
        recipe = job.recipe if fn is perceive.sobel_perceive else _recipe(config, fn)
        s = time_chunk(
            recipe, job.shared, job.runs, FLAGS.train_iterations, FLAGS.repeats, sharding
        )
        rec = {
            "bench": "growing_train_iteration",
            "perception": name,
            "batch": config.batch_size,
            "devices": n_dev if config.batch_size % n_dev == 0 else 1,
            "steps": f"{config.min_steps}..{config.max_steps}",
            "seconds": s,
        }
        emit(rec)
        train.append(rec)
    print(markdown_table(train, ["perception", "devices", "steps", "seconds"]))


def _recipe(config: growing.GrowingTrainConfig, perception) -> engine.Recipe:
    """The growing recipe of the base CA with another perception (the same maths)."""
    return trainers.growing_family(
        config,
        init_params=lambda key, shared: growing.init_growing_params(key),
        make_step=lambda params, shared, batch: (
            lambda x, k: growing.growing_step(params, x, k, config.fire_rate, perception)
        ),
        pool_init=trainers.seed_pool,
        fresh=lambda key, shared, run: {"x": shared["seed"][None]},
    )


if __name__ == "__main__":
    run(main)
