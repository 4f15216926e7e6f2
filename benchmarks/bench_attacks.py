"""What one training iteration of each growing-CA attack costs, by grid padding and batch.

python -m benchmarks.bench_attacks                                   # the CPU grid below
python -m benchmarks.bench_attacks --paddings=16,24 --batches=2,4 --kinds=perturbation

One JSON line per (attack, padding, batch): median seconds per iteration (64..95 CA steps,
drawn per iteration as in training) after a compile run, on the shipped lizard. ``adversary``
runs both CAs on every cell (the mixed step); ``perturbation`` one CA plus the 16x16
matrix. Used to choose ``train_all --preset=cpu`` (BUILD_NOTES.md, "Growing attacks on a
CPU").
"""

from __future__ import annotations

from absl import flags

from benchmarks.common import markdown_table, record, time_chunk
from experiments import common
from nca_adv.models import growing
from nca_adv.training import fit, jobs, runtime

FLAGS = flags.FLAGS
flags.DEFINE_list("kinds", ["adversary", "perturbation"], "Attacks to time.")
flags.DEFINE_list("paddings", ["16", "24", "32"], "Target paddings (grid = 40 + 2 padding).")
flags.DEFINE_list("batches", ["2", "4", "8"], "Batch sizes.")
flags.DEFINE_integer("iterations", 2, "Iterations per timed chunk.", lower_bound=1)
flags.DEFINE_integer("repeats", 2, "Timed repeats (median reported).", lower_bound=1)
flags.DEFINE_bool("markdown", False, "Also print a markdown table.")
common.define_device_flags()


def _job(kind: str, padding: int, batch: int) -> jobs.Job:
    # Damage only the samples the reset slots leave (1 for adversaries, 2 here).
    resets = 1 if kind == "adversary" else 2
    config = growing.GrowingTrainConfig(
        pool_size=max(16, batch), batch_size=batch, damage_n=max(0, min(3, batch - resets))
    )
    if kind == "adversary":
        return jobs.growing_adversary_job("lizard", ["lizard_red"], [0.6], [0], config, padding)
    if kind == "perturbation":
        return jobs.perturbation_job("lizard", ["lizard_red"], [0], config, padding)
    raise ValueError(f"--kinds: unknown attack {kind!r} (adversary, perturbation)")


def main(argv):
    del argv
    common.configure_devices()
    mesh = runtime.data_mesh(FLAGS.num_devices or None)
    records = []
    for kind in FLAGS.kinds:
        for padding in map(int, FLAGS.paddings):
            for batch in map(int, FLAGS.batches):
                job = _job(kind, padding, batch)
                _, sharding = fit.placement(mesh, 1, batch)
                s = time_chunk(
                    job.recipe, job.shared, job.runs, FLAGS.iterations, FLAGS.repeats, sharding
                )
                grid = 40 + 2 * padding
                records.append(
                    record(
                        kind,
                        f"padding {padding} ({grid}x{grid}), B={batch}",
                        s,
                        padding=padding,
                        batch=batch,
                    )
                )
    if FLAGS.markdown:
        print(markdown_table(records, ["bench", "variant", "s_per_iter", "devices"]))


if __name__ == "__main__":
    common.run(main)
