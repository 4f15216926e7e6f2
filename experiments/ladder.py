"""The training ladder: each growing-CA attack trained a little further from what is shipped,
judged by the report's protocol, and shipped only when it beats the shipped one.

``python -m experiments.train_all --preset=cpu --workdir=/work/runs/ladder --resume --export``
runs the rungs below in order. Each rung starts from the shipped attack (weights from it, a
fresh optimiser and pool), trains in segments of ``eval_every`` iterations, evaluates the
candidate after each segment (:mod:`nca_adv.evaluation.protocols`) and keeps the best one.
With ``--export`` the best replaces the shipped file only when
:func:`nca_adv.evaluation.protocols.better` says it beats it; ``assets/results/ladder.json``
records, per shipped attack, its iterations so far, recipe, evaluation and date, so the next
run of the ladder (any machine, any workdir) carries on where this one shipped.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
from pathlib import Path

import numpy as np
from absl import logging

from nca_adv import io
from nca_adv.attacks import adversaries, perturbation
from nca_adv.evaluation import protocols
from nca_adv.io import targets
from nca_adv.models import growing
from nca_adv.training import jobs, runtime

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"

# The article's recipe for matrices (Adam 2e-3 for ~100 iterations, then 2e-4), and for
# carrying on from a shipped attack: 2e-4, never higher (near a trained matrix the loss
# falls only for moves of ~0.003 in Frobenius norm; one Adam step at 2e-3 moves it ~0.03).
MATRIX_FRESH = growing.GrowingTrainConfig(lr=2e-3, lr_decay_at=100, lr_decay=0.1)
CONTINUE = growing.GrowingTrainConfig(lr=2e-4, lr_decay_at=0, lr_decay=1.0)
# A fresh adversary (the article's: random init), decaying inside the run.
ADVERSARY_FRESH = growing.GrowingTrainConfig(lr=2e-3, lr_decay_at=150, lr_decay=0.1)
TRAIN_PADDING = 16  # 72x72: the article's grid for the matrices and red


@dataclasses.dataclass(frozen=True)
class Rung:
    """One attack of the ladder: what it trains, from where, how long, what it ships as."""

    name: str
    kind: str  # perturbation | adversary
    target: str
    iterations: int
    eval_every: int
    config: growing.GrowingTrainConfig
    init: str | None = "shipped"  # shipped | None (the recipe's start) | a path
    fraction: float = 0.1
    padding: int = TRAIN_PADDING
    base: str = "lizard"
    optimizer: str = "adam"
    # Like-for-like: trained on the authors' base and target, compared with the authors'
    # own matrix on the same evaluation (a record, never shipped).
    reference: str | None = None

    @property
    def ships(self) -> str | None:
        if self.reference:
            return None
        table = (
            jobs.SHIPPED_PERTURBATIONS if self.kind == "perturbation" else jobs.SHIPPED_ADVERSARIES
        )
        return table[self.target]


def _ref(*parts: str) -> str:
    return str(REFERENCE.joinpath(*parts))


# The ladder's order: tail (like-for-like first), head, blue, red matrices, red 60 %, then
# arm and leg (cheap, and each segment so far improved on what is shipped), then a fresh
# tailless adversary (the article trains it for thousands of iterations: the longest rung).
# Lengths sized for a few hours of a 2-core CPU per ladder run.
LADDER = (
    Rung(
        "tail_like_for_like",
        "perturbation",
        _ref("targets", "lizard_no_tail.png"),
        200,
        50,
        MATRIX_FRESH,
        init=None,
        base=_ref("original", "growing_lizard_base_model.json"),
        reference=_ref("original", "tail_sym_t.npy"),
    ),
    Rung("tail", "perturbation", "lizard_no_tail", 100, 25, CONTINUE),
    Rung("head", "perturbation", "lizard_no_head", 100, 25, CONTINUE),
    Rung("blue", "perturbation", "lizard_blue", 100, 25, CONTINUE),
    Rung("red", "perturbation", "lizard_red", 100, 25, CONTINUE),
    Rung("red_60", "adversary", "lizard_red", 100, 25, CONTINUE, fraction=0.6),
    Rung("arm", "perturbation", "lizard_no_arm", 100, 25, CONTINUE),
    Rung("leg", "perturbation", "lizard_no_leg", 100, 25, CONTINUE),
    # Matrices started afresh from I on the project's lizard, with the recipe that beats
    # the authors' tail matrix like for like: shipped only where they beat the carried-on
    # ones.
    *(
        Rung(f"{name}_fresh", "perturbation", target, 300, 50, MATRIX_FRESH, init=None)
        for name, target in (
            ("tail", "lizard_no_tail"),
            ("head", "lizard_no_head"),
            ("red", "lizard_red"),
            ("blue", "lizard_blue"),
            ("arm", "lizard_no_arm"),
            ("leg", "lizard_no_leg"),
        )
    ),
    Rung(
        "no_tail_fresh",
        "adversary",
        "lizard_no_tail",
        300,
        50,
        ADVERSARY_FRESH,
        init=None,
        padding=24,
    ),
)
SMOKE_LADDER = (
    Rung(
        "tail",
        "perturbation",
        "lizard_no_tail",
        2,
        1,
        growing.GrowingTrainConfig(pool_size=8, batch_size=4, min_steps=2, max_steps=4, damage_n=1, lr=2e-4, lr_decay_at=0, lr_decay=1.0),
    ),
)  # fmt: skip


def check_schedules(rungs) -> None:
    """Every rung's learning-rate decay falls inside its iterations."""
    for r in rungs:
        if r.config.lr_decay != 1.0:
            runtime.check_schedule(r.name, r.iterations, [r.config.lr_decay_at])


def available(rung: Rung) -> bool:
    """A like-for-like rung needs the authors' files (``../shared/reference``)."""
    need = [rung.base, rung.target, rung.reference] if rung.reference else []
    missing = [p for p in need if not Path(p).exists()]
    if missing:
        logging.warning("%s: skipped, the authors' files are absent (%s)", rung.name, missing[0])
    return not missing


def make_job(rung: Rung) -> jobs.Job:
    init = jobs.resolve_init(rung.init, rung.kind, [rung.target])
    if rung.kind == "perturbation":
        return jobs.perturbation_job(
            rung.base, [rung.target], [0], rung.config, rung.padding, init, rung.optimizer
        )
    return jobs.growing_adversary_job(
        rung.base, [rung.target], [rung.fraction], [0], rung.config, rung.padding, init_from=init
    )


class Judge:
    """The report's protocol for one rung, on the grid of the evaluation (padding 24)."""

    def __init__(self, rung: Rung, runs: int | None = None):
        self.rung = rung
        self.base = io.load_ca(rung.base, "growing")
        pad = protocols.PADDING
        self.target = targets.load_target(rung.target, padding=pad)
        complete = _ref("targets", "lizard_complete.png") if rung.reference else "lizard"
        self.original = targets.load_target(complete, padding=pad)
        self.runs = runs

    def __call__(self, result: str | Path) -> dict:
        r = self.rung
        kw = {"runs": self.runs} if self.runs else {}
        if r.kind == "perturbation":
            a = perturbation.load_matrix(str(result))
            return protocols.perturbation_protocol(self.base, a, self.target, self.original, **kw)
        adv = adversaries.load_adversary(str(result), "growing", self.base.params)
        return protocols.adversary_protocol(
            self.base, adv, self.target, self.original, r.fraction, **kw
        )

    def yardstick(self) -> tuple[str, dict] | None:
        """(what, score) of what the candidate must beat: the shipped attack, or for a
        like-for-like rung the authors' own matrix."""
        r = self.rung
        if r.reference:
            return "authors", self(r.reference)
        if r.kind == "perturbation":
            return r.ships, self(perturbation.shipped_perturbations()[r.ships])
        return r.ships, self(r.ships)


def _short(score: dict) -> str:
    return f"loss {score['loss']:.5f} to complete {score['loss_original']:.5f} ratio {score['ratio']:.3f}"


def _result_name(rung: Rung) -> str:
    return "perturbation.npy" if rung.kind == "perturbation" else "params.npz"


def run_rung(rung: Rung, root: Path, *, chunk: int, checkpoint_every: int, mesh, judge_runs=None):
    """Train ``rung`` in segments of ``eval_every`` iterations in ``root/<name>``, judging
    each segment's result; the best candidate is kept as ``best.<ext>``. Resumable: a
    killed ladder continues from the rung's last checkpoint and its ``progress.json``."""
    folder = root / rung.name
    folder.mkdir(parents=True, exist_ok=True)
    progress_path = folder / "progress.json"
    progress = json.loads(progress_path.read_text()) if progress_path.is_file() else {}
    judge = Judge(rung, judge_runs)
    if "yardstick" not in progress:
        what, score = judge.yardstick()
        progress = {"yardstick": {"what": what, **score}, "history": [], "best": None}
        logging.info("%s: %s scores %s", rung.name, what, _short(score))
    job = make_job(rung)
    done = {h["iteration"] for h in progress["history"]}
    stops = list(range(rung.eval_every, rung.iterations, rung.eval_every)) + [rung.iterations]
    ext = Path(_result_name(rung)).suffix
    for stop in stops:
        if stop in done:
            continue
        steps = _committed(folder)
        if steps and steps[-1] > stop:
            continue  # a kill after this segment's checkpoint, before its judgement
        summary = jobs.run_job(
            job,
            folder,
            stop,
            chunk=chunk,
            checkpoint_every=checkpoint_every,
            resume=bool(steps),
            mesh=mesh,
        )
        result = Path(next(iter(summary.values()))["result"])
        score = judge(result)
        logging.info("%s at %d: %s", rung.name, stop, _short(score))
        progress["history"].append({"iteration": stop, **score})
        if _preferred(score, progress["best"], progress["yardstick"], rung.kind):
            shutil.copyfile(result, folder / f"best{ext}")
            progress["best"] = {"iteration": stop, **score}
        runtime.write_atomic(progress_path, json.dumps(progress, indent=1) + "\n")
    return progress


def _preferred(score: dict, best: dict | None, yardstick: dict, kind: str) -> bool:
    """Whether a segment's candidate replaces the rung's best so far: one that beats the
    yardstick wins over one that does not; between two on the same side, the lower loss."""
    if not score["finite"]:
        return False
    if best is None:
        return True
    wins, best_wins = (protocols.better(c, yardstick, kind) for c in (score, best))
    if wins != best_wins:
        return wins
    return score["loss"] < best["loss"]


def _committed(folder: Path) -> list[int]:
    ckpts = folder / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(int(p.name) for p in ckpts.iterdir() if p.is_dir() and p.name.isdigit())


def ladder_record_path(assets: Path) -> Path:
    return assets / "results" / "ladder.json"


def export_if_better(rung: Rung, root: Path, progress: dict, assets: Path, preset: str) -> dict:
    """Install the rung's best candidate when it beats the shipped attack on the protocol;
    update ``assets/results/ladder.json`` either way (the evaluation of what stays shipped).
    A like-for-like rung is recorded, never shipped."""
    folder = root / rung.name
    if "exported" in progress:  # a rerun of a finished ladder: decided once, not again
        return {"rung": rung.name, **progress["exported"], "yardstick": progress["yardstick"]}
    record_path = ladder_record_path(assets)
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    key = rung.ships or rung.name
    entry = record.get(key, {})
    best, yard = progress["best"], progress["yardstick"]
    won = best is not None and protocols.better(best, yard, rung.kind)
    today = datetime.date.today().isoformat()
    recipe = {
        "kind": rung.kind,
        "target": rung.target if not rung.reference else "authors' " + Path(rung.target).name,
        "base": rung.base if not rung.reference else "authors' lizard",
        "init": rung.init or "fresh",
        "lr": rung.config.lr,
        "lr_decay_at": rung.config.lr_decay_at if rung.config.lr_decay != 1.0 else None,
        "optimizer": rung.optimizer,
        "pool": rung.config.pool_size,
        "batch": rung.config.batch_size,
        "padding": rung.padding,
        **({"fraction": rung.fraction} if rung.kind == "adversary" else {}),
    }
    trial = {"date": today, "preset": preset, "recipe": recipe, "best": best, "beat": won}
    if rung.reference:
        entry = {"authors": _scores(yard), "trials": entry.get("trials", []) + [trial]}
        record[key] = entry
    else:
        so_far = int(entry.get("iterations", 0))
        if won:
            ext = Path(_result_name(rung)).suffix
            _install(rung, folder / f"best{ext}", folder, assets, best["iteration"])
            so_far = (so_far if rung.init == "shipped" else 0) + best["iteration"]
            entry.update(iterations=so_far, recipe=recipe, evaluation=_scores(best), date=today)
        else:
            entry.setdefault("iterations", so_far)
            entry.update(evaluation=_scores(yard), evaluated=today)
        entry["trials"] = entry.get("trials", []) + [trial]
        record[key] = entry
    record_path.parent.mkdir(parents=True, exist_ok=True)
    runtime.write_atomic(record_path, json.dumps(record, indent=1, sort_keys=True) + "\n")
    progress["exported"] = {"beat": won, "best": best, "date": today}
    runtime.write_atomic(folder / "progress.json", json.dumps(progress, indent=1) + "\n")
    return {"rung": rung.name, "beat": won, "best": best, "yardstick": yard}


def _scores(score: dict) -> dict:
    keep = ("loss", "loss_original", "ratio", "runs", "iteration")
    return {k: score[k] for k in keep if k in score}


def _install(rung: Rung, best: Path, folder: Path, assets: Path, iteration: int) -> None:
    metrics = runtime.read_metrics(folder / "metrics.jsonl")  # a one-run job: the folder's
    rows = [r for r in metrics if r["iteration"] <= iteration]
    keys = [k for k in rows[0] if k != "iteration"]
    lines = [",".join(["iteration", *keys])]
    lines += [",".join([str(r["iteration"]), *(f"{r[k]:.6g}" for k in keys)]) for r in rows]
    if rung.kind == "perturbation":
        dest = assets / "perturbations"
        perturbation.load_matrix(str(best))  # refuse to ship a malformed matrix
        tmp = dest / f".{rung.ships}.npy.tmp"
        with tmp.open("wb") as f:  # a file object: np.save would append .npy to the name
            np.save(f, np.load(best))
        tmp.replace(dest / f"{rung.ships}.npy")
    else:
        dest = assets / "models"
        io.save_params(dest / f"{rung.ships}.npz", io.load_ca(str(best), "growing"))
    runtime.write_atomic(dest / f"{rung.ships}_metrics.csv", "\n".join(lines) + "\n")
    logging.info("%s: shipped as %s (iteration %d)", rung.name, rung.ships, iteration)


def summary_table(assets: Path) -> str:
    """A markdown table of ``assets/results/ladder.json``: per shipped attack its
    iterations so far, recipe, latest evaluation and date."""
    record = json.loads(ladder_record_path(assets).read_text())
    lines = [
        "| attack | iterations so far | last recipe | evaluation: loss / to complete / ratio | shipped on |",
        "|---|---|---|---|---|",
    ]
    for name, entry in sorted(record.items()):
        ev = entry.get("evaluation")
        if name.endswith("like_for_like"):
            last = entry["trials"][-1]["best"]
            au = entry["authors"]
            lines.append(
                f"| {name} (authors' lizard and target; not shipped) | {last['iteration']} "
                f"(from I) | {entry['trials'][-1]['recipe']['lr']} -> x0.1 at "
                f"{entry['trials'][-1]['recipe']['lr_decay_at']} | {last['loss']:.5f} / "
                f"{last['loss_original']:.5f} / {last['ratio']:.3f} (the authors' matrix: "
                f"{au['loss']:.5f} / {au['loss_original']:.5f} / {au['ratio']:.3f}) | - |"
            )
            continue
        recipe = entry.get("recipe", {})
        init = recipe.get("init", "?")
        if init == "fresh":
            init = "from I" if recipe.get("kind") == "perturbation" else "random"
        text = f"init {init}, lr {recipe.get('lr', '?')}"
        if recipe.get("lr_decay_at"):
            text += f" -> x0.1 at {recipe['lr_decay_at']}"
        score = (
            "-" if not ev else f"{ev['loss']:.5f} / {ev['loss_original']:.5f} / {ev['ratio']:.3f}"
        )
        lines.append(
            f"| {name} | {entry.get('iterations', '?')} | {text} | {score} | {entry.get('date', '?')} |"
        )
    return "\n".join(lines)
