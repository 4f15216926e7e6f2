"""Train a hardened Self-classifying MNIST CA: the base and an adversary trained against
each other in the manner of a GAN (adversaries in a share p ~ U[0, --max_fraction] of the
cells, none in a share --clean_share of the samples), starting from the shipped ``mnist``
and ``mnist_adversary``. Writes the base (``params.npz``) and the adversary
(``adversary.npz``) to the workdir; resumable.

python -m experiments.train_mnist_hardened --workdir=runs/mnist_hardened --iterations=1000
python -m experiments.train_mnist_hardened --workdir=runs/mnist_hardened --iterations=2000 --resume
"""

from __future__ import annotations

from absl import flags

from nca_adv.training import jobs

from . import common

FLAGS = flags.FLAGS
flags.DEFINE_string("base", "mnist", "The base CA to start from: shipped name, .npz, .json.")
flags.DEFINE_string(
    "adversary", "mnist_adversary", "The adversary to start from: shipped name, .npz, .json."
)
flags.DEFINE_float(
    "max_fraction", 0.15, "Adversaries in a share p ~ U[0, this] of each sample's cells."
)
flags.DEFINE_float("clean_share", 0.25, "Share of samples with no adversary (p = 0).")
common.define_rate_flag("adversary_lr", 1e-3, "The adversary's Adam learning rate.")
common.define_training_flags(iterations=1000, checkpoint_every=50, chunk=10)
common.define_mnist_recipe_flags()
common.define_device_flags()
common.define_init_flag("hardened CA (mnist_hardened)")
flags.FLAGS.set_default("lr", 3e-4)  # the base starts trained: fine-tune it gently


def main(argv):
    del argv
    common.configure_devices()
    config = common.mnist_config_from_flags()
    # --init: the hardened base training starts from (default: --base itself).
    start = {"none": FLAGS.base, "": FLAGS.base, "shipped": "mnist_hardened"}.get(
        FLAGS.init, FLAGS.init
    )
    job = jobs.mnist_hardened_job(
        start,
        FLAGS.adversary,
        FLAGS.mnist_dir,
        common.int_list("seeds"),
        config,
        FLAGS.step_form,
        max_fraction=FLAGS.max_fraction,
        clean_share=FLAGS.clean_share,
        adversary_lr=FLAGS.adversary_lr,
    )
    common.train_job(job)


if __name__ == "__main__":
    common.run(main)
