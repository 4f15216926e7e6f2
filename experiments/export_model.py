"""Export a training run as a shipped model: weights .npz + its loss curve .csv.

python -m experiments.export_model --workdir=runs/lizard --kind=growing --name=lizard

Everything is checked before anything is written (no half exports), and a model shipped in
the package is replaced only with --force.
"""

from __future__ import annotations

from absl import flags

from nca_adv import io
from nca_adv.io.export import PACKAGE_MODELS, export_run

from .common import check_output_dir, print_result, run

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "workdir", None, "Training run folder (with checkpoints/ and metrics.jsonl).", required=True
)
flags.DEFINE_enum("kind", None, list(io.KINDS), "Model kind.", required=True)
flags.DEFINE_string("name", None, "Shipped model name, e.g. lizard or mnist.", required=True)
flags.DEFINE_string("out_dir", str(PACKAGE_MODELS), "Destination folder.")
flags.DEFINE_bool("force", False, "Replace a model of the same name shipped in the package.")


def main(argv):
    del argv
    check_output_dir(FLAGS.out_dir, "out_dir")
    print_result(export_run(FLAGS.workdir, FLAGS.kind, FLAGS.name, FLAGS.out_dir, FLAGS.force))


if __name__ == "__main__":
    run(main)
