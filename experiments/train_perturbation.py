"""Train global state perturbations of a frozen Growing CA (Randazzo et al. 2021): one
symmetric 16x16 matrix A applied to every living cell's state before every step, so that
the lizard grows into the mutated target. The six targets train as one sweep (one program).

python -m experiments.train_perturbation --workdir=runs/perturbations --iterations=8000 \
    --target=lizard_no_tail,lizard_no_leg,lizard_no_arm,lizard_no_head,lizard_red,lizard_blue
"""

from __future__ import annotations

from absl import flags

from nca_adv.training import jobs

from . import common

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "base", "lizard", "The frozen base CA: shipped name, .npz, TF.js .json or a workdir."
)
flags.DEFINE_list(
    "target", ["lizard_no_tail"], "Mutated targets (names or RGBA PNGs), comma-separated."
)
common.define_training_flags(iterations=8000, checkpoint_every=100, chunk=10)
common.define_growing_recipe_flags(padding=32)
common.define_device_flags()
common.define_init_flag("matrix")


def main(argv):
    del argv
    common.configure_devices()
    config = common.growing_config_from_flags(runs=len(FLAGS.target) * len(FLAGS.seeds))
    init = jobs.resolve_init(FLAGS.init, "perturbation", FLAGS.target)
    job = jobs.perturbation_job(
        FLAGS.base, FLAGS.target, common.int_list("seeds"), config, FLAGS.padding, init
    )
    common.train_job(job)


if __name__ == "__main__":
    common.run(main)
