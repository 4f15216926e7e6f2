"""Training throughput of the engine, against the obvious alternatives, in one run.

python -m benchmarks.bench_training                         # CPU: a few iterations each
python -m benchmarks.bench_training --iterations=200 --sweep_runs=8   # on a GPU

One JSON line per measurement (``iter_per_s``, ``s_per_iter``, medians over repeats after a
compile run); ``--markdown`` adds tables for BUILD_NOTES.md. Measured:

- ``lizard``: the growing trainer (B=8, pool 1024, 64..95 steps, 72x72): iterations
  scanned in one jitted chunk (the engine) vs one jitted iteration per call with the loss
  read back each time (a host loop, as the trainers were before the engine);
- ``mnist``: the MNIST trainer (B=16, pool 160, 20 steps) with the alive-cell step (K
  fixed for the data set) vs the whole-grid step, both as scanned chunks;
- ``sweep``: R lizard runs vmapped in one program vs R times the single run.
"""

from __future__ import annotations

from absl import app, flags

from benchmarks.common import markdown_table
from benchmarks.common import record as _record
from benchmarks.common import time_chunk as _time_chunk
from experiments import common
from nca_adv.io import data
from nca_adv.models import growing, mnist
from nca_adv.training import fit, jobs, runtime

FLAGS = flags.FLAGS
flags.DEFINE_list("which", ["lizard", "mnist", "sweep"], "Benchmarks to run.")
flags.DEFINE_integer("iterations", 4, "Iterations per timed chunk (lizard, sweep).", lower_bound=1)
flags.DEFINE_integer("mnist_iterations", 20, "Iterations per timed MNIST chunk.", lower_bound=1)
flags.DEFINE_integer("repeats", 3, "Timed repeats (median reported).", lower_bound=1)
flags.DEFINE_integer("sweep_runs", 2, "Runs of the vmapped sweep.", lower_bound=2)
flags.DEFINE_bool("markdown", False, "Also print markdown tables.")
common.define_device_flags()


def bench_lizard(mesh) -> list[dict]:
    job = jobs.growing_job(["lizard"], [0], growing.GrowingTrainConfig(), padding=16)
    _, sharding = fit.placement(mesh, 1, job.recipe.batch_size)
    out = []
    for variant, sync in (("engine: scanned chunk", False), ("host loop: 1 iteration/call", True)):
        s = _time_chunk(
            job.recipe, job.shared, job.runs, FLAGS.iterations, FLAGS.repeats, sharding, sync
        )
        out.append(_record("lizard B=8", variant, s))
    return out


def bench_mnist(mesh) -> list[dict]:
    splits = data.load_mnist()
    k = mnist.cells_needed(data.to_float(splits.train_images))
    out = []
    for variant, form in ((f"alive cells (K={k})", "alive"), ("whole grid", "grid")):
        job = jobs.mnist_job(None, [0], mnist.MnistTrainConfig(), form, splits=splits)
        _, sharding = fit.placement(mesh, 1, job.recipe.batch_size)
        s = _time_chunk(
            job.recipe, job.shared, job.runs, FLAGS.mnist_iterations, FLAGS.repeats, sharding
        )
        out.append(_record("mnist B=16", variant, s))
    return out


def bench_sweep(mesh) -> list[dict]:
    r = FLAGS.sweep_runs
    seeds = list(range(r))
    single = jobs.growing_job(["lizard"], [0], growing.GrowingTrainConfig(), padding=16)
    sweep = jobs.growing_job(["lizard"], seeds, growing.GrowingTrainConfig(), padding=16)
    _, sharding = fit.placement(mesh, 1, 8)
    t_one = _time_chunk(
        single.recipe, single.shared, single.runs, FLAGS.iterations, FLAGS.repeats, sharding
    )
    t_all = _time_chunk(sweep.recipe, sweep.shared, sweep.runs, FLAGS.iterations, FLAGS.repeats)
    return [
        _record(f"lizard sweep R={r}", "one run", t_one),
        _record(
            f"lizard sweep R={r}",
            f"{r} runs vmapped",
            t_all,
            ratio_to_one_run=round(t_all / t_one, 3),
        ),
    ]


def main(argv):
    del argv
    common.configure_devices()
    mesh = runtime.data_mesh(FLAGS.num_devices or None)
    benches = {"lizard": bench_lizard, "mnist": bench_mnist, "sweep": bench_sweep}
    unknown = set(FLAGS.which) - set(benches)
    if unknown:
        raise app.UsageError(f"--which: unknown {sorted(unknown)}; known: {sorted(benches)}")
    records = [rec for name in FLAGS.which for rec in benches[name](mesh)]
    if FLAGS.markdown:
        print(markdown_table(records, ["bench", "variant", "s_per_iter", "iter_per_s", "devices"]))


if __name__ == "__main__":
    common.run(main)
