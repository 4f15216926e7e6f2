"""Train adversarial cells that hijack a frozen Growing CA (Randazzo et al. 2021): a new CA
of the same architecture runs on a fraction p of the cells and makes the collective grow
the mutated target.

python -m experiments.train_growing_adversary --workdir=runs/no_tail --target=lizard_no_tail \
    --adversary_fraction=0.1 --iterations=8000
python -m experiments.train_growing_adversary --workdir=runs/red --target=lizard_red \
    --adversary_fraction=0.1,0.6      # two runs, one program
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
flags.DEFINE_list(
    "adversary_fraction", ["0.1"], "Share p of adversary cells, in [0, 1]; comma-separated."
)
flags.DEFINE_integer(
    "grow_steps",
    None,
    "Steps the base grows from the seed to start the pool (default 200); a base trained "
    "for fewer steps may not be stable that long (a warning says so).",
    lower_bound=0,
)
common.define_training_flags(iterations=8000, checkpoint_every=100, chunk=10)
common.define_growing_recipe_flags(padding=32)
common.define_device_flags()
common.define_init_flag("adversary")


def main(argv):
    del argv
    common.configure_devices()
    runs = len(FLAGS.target) * len(FLAGS.adversary_fraction) * len(FLAGS.seeds)
    config = common.growing_config_from_flags(runs=runs)
    job = jobs.growing_adversary_job(
        FLAGS.base,
        FLAGS.target,
        common.float_list("adversary_fraction"),
        common.int_list("seeds"),
        config,
        FLAGS.padding,
        init_from=jobs.resolve_init(FLAGS.init, "adversary", FLAGS.target),
        grow_steps=FLAGS.grow_steps,
    )
    common.train_job(job)


if __name__ == "__main__":
    common.run(main)
