"""Export a training run as a shipped model: weights .npz + its loss curve .csv.

python -m experiments.export_model --workdir=runs/lizard --kind=growing --name=lizard
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags

from experiments.common import print_result
from nca_adv import io, training

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "workdir", None, "Training run folder (with checkpoints/ and metrics.jsonl).", required=True
)
flags.DEFINE_enum("kind", None, list(io.KINDS), "Model kind.", required=True)
flags.DEFINE_string("name", None, "Shipped model name, e.g. lizard or mnist.", required=True)
flags.DEFINE_string(
    "out_dir", str(Path(io.__file__).parent / "assets" / "models"), "Destination folder."
)


def main(argv):
    del argv
    workdir, out = Path(FLAGS.workdir), Path(FLAGS.out_dir)
    params = io.load_model(str(workdir), FLAGS.kind)
    step = io.checkpoint_step(workdir)
    io.save_params(out / f"{FLAGS.name}.npz", params, FLAGS.kind)
    records = [
        r for r in training.read_metrics(workdir / "metrics.jsonl") if r["iteration"] <= step
    ]
    lines = ["iteration,loss"] + [f"{r['iteration']},{r['loss']:.6g}" for r in records]
    (out / f"{FLAGS.name}_metrics.csv").write_text("\n".join(lines) + "\n")
    print_result(
        {
            "name": FLAGS.name,
            "iterations": step,
            "final_loss": records[-1]["loss"],
            "weights": str(out / f"{FLAGS.name}.npz"),
        }
    )


if __name__ == "__main__":
    app.run(main)
