"""Train adversarial cells that make a frozen Self-classifying MNIST CA vote one digit
(default 8) whatever the digit is (Randazzo et al. 2021).

python -m experiments.train_mnist_adversary --workdir=runs/mnist_adv --iterations=2000
"""

from __future__ import annotations

from absl import flags

from nca_adv.training import jobs

from . import common

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "base", "mnist", "The frozen base CA: shipped name, .npz, TF.js .json or a workdir."
)
flags.DEFINE_list(
    "adversary_fraction", ["0.1"], "Share p of adversary cells, in [0, 1]; comma-separated."
)
flags.DEFINE_integer("target_class", 8, "The digit every cell is pushed to vote.")
common.define_training_flags(iterations=2000, checkpoint_every=250, chunk=50)
common.define_mnist_recipe_flags()
common.define_device_flags()
common.define_init_flag("adversary")


def main(argv):
    del argv
    common.configure_devices()
    config = common.mnist_config_from_flags(runs=len(FLAGS.adversary_fraction) * len(FLAGS.seeds))
    job = jobs.mnist_adversary_job(
        FLAGS.base,
        FLAGS.mnist_dir,
        common.float_list("adversary_fraction"),
        common.int_list("seeds"),
        config,
        FLAGS.step_form,
        FLAGS.target_class,
        init_from=_init(),
    )
    common.train_job(job)


def _init() -> str | None:
    """--init: none, shipped (the shipped adversary of the shipped base) or a path."""
    if FLAGS.init != "shipped":
        return None if FLAGS.init in ("", "none") else FLAGS.init
    shipped = {"mnist": "mnist_adversary", "mnist_hardened": "mnist_hardened_adversary"}
    if FLAGS.base not in shipped:
        raise ValueError(f"--init=shipped needs --base in {sorted(shipped)}, got {FLAGS.base!r}")
    return shipped[FLAGS.base]


if __name__ == "__main__":
    common.run(main)
