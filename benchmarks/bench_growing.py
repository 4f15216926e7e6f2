"""Growing CA speed: forward cell-updates/s and train-step time, against the alternatives.

  python -m benchmarks.bench_growing [--host_devices=2] [--repeats=5]

Forward: 96 steps from a grown-like state, B in --batches, perception as shifted slices
(ours) vs a depthwise ``lax.conv_general_dilated``. Train step: B=8, 96 steps, fwd+bwd+Adam,
slices vs conv, with and without remat; data parallel over all visible devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks.common import emit, markdown_table, time_fn
from experiments.common import int_list, run
from nca_adv import io
from nca_adv.io import targets
from nca_adv.models import growing, perceive
from nca_adv.training import runtime

FLAGS = flags.FLAGS
flags.DEFINE_integer(
    "host_devices", 0, "Split the CPU into this many devices (0: as is).", lower_bound=0
)
flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (median reported).", lower_bound=1)
flags.DEFINE_list("batches", ["1", "8", "64"], "Forward batch sizes.")
flags.DEFINE_integer("steps", 96, "CA steps per measurement.", lower_bound=1)
flags.DEFINE_bool("train", True, "Also time the train step.")

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
    config = growing.GrowingTrainConfig(max_steps=FLAGS.steps)
    opt = runtime.make_optimizer(2e-3, {})
    x0 = jax.device_put(
        jnp.broadcast_to(grown, (8, h, w, growing.CHANNELS)),
        runtime.batch_sharding(mesh) if 8 % n_dev == 0 else None,
    )
    train = []
    for name, fn in PERCEPTIONS.items():
        for remat in (True, False):
            step = growing.make_growing_train_step(opt, config, remat=remat, perceive=fn)
            state = opt.init(params)
            med, best = time_fn(
                lambda step=step, state=state: step(
                    params, state, x0, target, jax.random.PRNGKey(2), jnp.int32(FLAGS.steps)
                ),
                max(2, FLAGS.repeats // 2),
            )
            rec = {
                "bench": "growing_train_step",
                "perception": name,
                "remat": remat,
                "batch": 8,
                "devices": n_dev,
                "steps": FLAGS.steps,
                "seconds": med,
                "best": best,
            }
            emit(rec)
            train.append(rec)
    print(markdown_table(train, ["perception", "remat", "devices", "seconds", "best"]))


if __name__ == "__main__":
    run(main)
