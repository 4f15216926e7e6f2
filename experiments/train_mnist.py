"""Train a Self-classifying MNIST CA on the 60k training digits, resumably; several seeds
train in one program.

python -m experiments.train_mnist --workdir=runs/mnist --iterations=100000
python -m experiments.train_mnist --workdir=runs/mnist --iterations=100000 --resume
"""

from __future__ import annotations

from absl import flags

from nca_adv.training import jobs

from . import common

FLAGS = flags.FLAGS
common.define_training_flags(iterations=100_000, checkpoint_every=500, chunk=100)
common.define_mnist_recipe_flags()
common.define_device_flags()


def main(argv):
    del argv
    common.configure_devices()
    config = common.mnist_config_from_flags(runs=len(FLAGS.seeds))
    job = jobs.mnist_job(FLAGS.mnist_dir, common.int_list("seeds"), config, FLAGS.step_form)
    common.train_job(job)


if __name__ == "__main__":
    common.run(main)
