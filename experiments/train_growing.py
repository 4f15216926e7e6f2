"""Train a Growing CA on a target image (the original's recipe), resumably.

python -m experiments.train_growing --workdir=runs/lizard --iterations=8000
python -m experiments.train_growing --workdir=runs/lizard --iterations=8000 --resume
"""

from __future__ import annotations

import jax
from absl import app, flags, logging

from experiments.common import configure_devices, define_device_flags, train_and_export
from nca_adv import growing, targets, trainers, training

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "workdir", None, "Run folder: checkpoints/, metrics.jsonl, params.npz.", required=True
)
flags.DEFINE_string("target", "lizard", "Shipped target name or path to an RGBA PNG.")
flags.DEFINE_integer("iterations", 8000, "Total training iterations (paper: 8000).", lower_bound=1)
flags.DEFINE_integer("seed", 0, "PRNG seed; same seed, same run.")
flags.DEFINE_integer("pool_size", 1024, "Sample pool size.", lower_bound=1)
flags.DEFINE_integer("batch_size", 8, "Batch size.", lower_bound=1)
flags.DEFINE_integer("min_steps", 64, "Fewest CA steps per iteration.", lower_bound=1)
flags.DEFINE_integer("max_steps", 95, "Most CA steps per iteration (inclusive).", lower_bound=1)
flags.DEFINE_integer("damage_n", 3, "Lowest-loss samples damaged per batch.", lower_bound=0)
flags.DEFINE_float("lr", 2e-3, "Adam learning rate.")
flags.DEFINE_integer("lr_decay_at", 2000, "Iteration at which lr drops 10x.")
flags.DEFINE_integer("checkpoint_every", 50, "Checkpoint period in iterations.", lower_bound=1)
flags.DEFINE_integer("log_every", 10, "Progress log period in iterations.", lower_bound=1)
flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in --workdir.")
define_device_flags()


def main(argv):
    del argv
    configure_devices()
    if FLAGS.max_steps < FLAGS.min_steps:
        raise app.UsageError("--max_steps must be >= --min_steps")
    if FLAGS.damage_n >= FLAGS.batch_size:
        raise app.UsageError("--damage_n must be smaller than --batch_size")
    config = growing.GrowingTrainConfig(
        pool_size=FLAGS.pool_size,
        batch_size=FLAGS.batch_size,
        min_steps=FLAGS.min_steps,
        max_steps=FLAGS.max_steps,
        damage_n=FLAGS.damage_n,
        lr=FLAGS.lr,
        lr_decay_at=FLAGS.lr_decay_at,
    )
    target = targets.load_target(FLAGS.target)
    mesh = training.data_mesh(FLAGS.num_devices or None)
    logging.info("devices: %s", mesh.devices.tolist())
    state, iteration = trainers.growing_trainer(
        target, jax.random.PRNGKey(FLAGS.seed), config, mesh
    )
    train_and_export(state, iteration, "growing")


if __name__ == "__main__":
    app.run(main)
