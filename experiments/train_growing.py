"""Train a Growing CA on a target image (the original's recipe), resumably; sweeps over
targets and seeds train in one program.

python -m experiments.train_growing --workdir=runs/lizard --iterations=8000
python -m experiments.train_growing --workdir=runs/lizard --iterations=8000 --resume
python -m experiments.train_growing --workdir=runs/sweep --seeds=0,1,2,3 --target=lizard,lizard_red
"""

from __future__ import annotations

from absl import flags

from nca_adv.training import jobs

from . import common

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "target", ["lizard"], "Shipped target names or RGBA PNG paths, comma-separated (a sweep)."
)
common.define_training_flags(iterations=8000, checkpoint_every=100, chunk=10)
common.define_growing_recipe_flags(padding=16)
common.define_device_flags()


def main(argv):
    del argv
    common.configure_devices()
    seeds = common.int_list("seeds")
    config = common.growing_config_from_flags(runs=len(FLAGS.target) * len(seeds))
    job = jobs.growing_job(FLAGS.target, seeds, config, FLAGS.padding)
    common.train_job(job)


if __name__ == "__main__":
    common.run(main)
