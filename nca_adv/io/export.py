"""Ship a training run as a packaged model: its weights ``.npz`` and loss curve ``.csv``.

Everything is checked before anything is written (no half exports), and a model shipped
in the package is replaced only with ``force``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from nca_adv import io
from nca_adv.errors import UserError

PACKAGE_MODELS = Path(io.__file__).parents[1] / "assets" / "models"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _curve(metrics: Path, step: int | None) -> tuple[list[str], list[dict]]:
    """The columns (iteration, loss, then any other numbers every record has) and the
    records of ``metrics.jsonl`` up to ``step`` (default: all)."""
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} not found: the export needs the run's loss curve")
    from nca_adv.training import runtime

    def usable(r) -> bool:
        return (
            isinstance(r, dict)
            and isinstance(r.get("iteration"), int)
            and isinstance(r.get("loss"), int | float)
            and (step is None or r["iteration"] <= step)
        )

    by_iteration = {r["iteration"]: r for r in runtime.read_metrics(metrics) if usable(r)}
    records = [by_iteration[i] for i in sorted(by_iteration)]
    if not records:
        upto = "" if step is None else f" up to iteration {step}"
        raise UserError(f"{metrics} holds no loss record{upto}")
    if step is not None and records[-1]["iteration"] != step:
        raise UserError(
            f"{metrics} ends at iteration {records[-1]['iteration']}, before the "
            f"checkpoint's {step}"
        )
    numbers = [k for k, v in records[0].items() if isinstance(v, int | float)]
    columns = ["iteration", "loss"] + [
        k
        for k in numbers
        if k not in ("iteration", "loss")
        and all(isinstance(r.get(k), int | float) for r in records)
    ]
    return columns, records


def _weights(workdir: Path, kind: str) -> tuple[object, int | None]:
    """The run's parameters and the iteration they are from (None: the last recorded):
    the latest checkpoint of a run folder with ``checkpoints/``, else the ``params.npz``
    that the trainer writes into each run's folder."""
    if not (workdir / "checkpoints").is_dir() and (workdir / "params.npz").is_file():
        return io.read_npz(workdir / "params.npz", kind), None
    # a CA: its model (fire rate included) is exported with it
    return io.weights._load_checkpoint_ca(workdir, kind), io.checkpoint_step(workdir)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # atomic: readers never see a partial file


def export_run(
    workdir: str | os.PathLike,
    kind: str,
    name: str,
    out_dir: str | os.PathLike = PACKAGE_MODELS,
    force: bool = False,
) -> dict:
    """Write the weights of the run in ``workdir`` (its latest checkpoint, or for one run of
    a sweep its ``params.npz``) as ``out_dir/<name>.npz`` and its loss curve as
    ``out_dir/<name>_metrics.csv``; returns a summary (name, kind, iterations, final_loss,
    weights, metrics).

    Refuses, before writing anything: a missing or wrong-kind run, a ``metrics.jsonl`` that
    is missing or ends before the checkpoint, an unwritable ``out_dir``, and replacing a
    model shipped in the package unless ``force``.
    """
    workdir, out = Path(workdir), Path(out_dir)
    if not _NAME.fullmatch(name):
        raise UserError(f"model name {name!r}: use letters, digits, '_', '-' or '.'")
    if not workdir.is_dir():
        raise FileNotFoundError(f"training run {workdir} not found (no such folder)")
    weights, csv = out / f"{name}.npz", out / f"{name}_metrics.csv"
    shipped = out.resolve() == PACKAGE_MODELS.resolve() and (weights.exists() or csv.exists())
    if shipped and not force:
        raise UserError(f"{weights} is a model shipped in the package; pass --force to replace it")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise UserError(f"{out} is not writable")
    params, step = _weights(workdir, kind)
    columns, records = _curve(workdir / "metrics.jsonl", step)
    lines = [",".join(columns)] + [
        ",".join([str(r["iteration"])] + [f"{r[k]:.6g}" for k in columns[1:]]) for r in records
    ]
    io.save_params(weights, params, kind)
    _write_text(csv, "\n".join(lines) + "\n")
    return {
        "name": name,
        "kind": kind,
        "iterations": records[-1]["iteration"],
        "final_loss": records[-1]["loss"],
        "weights": str(weights),
        "metrics": str(csv),
    }


def export_hardened(
    workdir: str | os.PathLike,
    out_dir: str | os.PathLike = PACKAGE_MODELS,
    names: tuple[str, str | None] = ("mnist_hardened", None),
    force: bool = False,
) -> list[dict]:
    """Ship a hardened MNIST run (``train_mnist_hardened``): its base (``params.npz``) and,
    when ``names[1]`` is given, the adversary it was trained against (``adversary.npz``),
    both written by the trainer at the end of the run, as ``out_dir/<names[0]>.npz`` and
    ``<names[1]>.npz``, each with the run's loss curve (total, base and adversary losses).
    Checked before writing, as :func:`export_run`."""
    workdir, out = Path(workdir), Path(out_dir)
    files = {names[0]: workdir / "params.npz"}
    if names[1] is not None:
        files[names[1]] = workdir / "adversary.npz"
    for name, path in files.items():
        if not _NAME.fullmatch(name):
            raise UserError(f"model name {name!r}: use letters, digits, '_', '-' or '.'")
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: finish the run first (--resume)")
        shipped = out.resolve() == PACKAGE_MODELS.resolve() and (out / f"{name}.npz").exists()
        if shipped and not force:
            raise UserError(f"{out / name}.npz is a model shipped in the package; pass --force")
    columns, records = _curve(workdir / "metrics.jsonl", None)
    params = {name: io.read_npz(path, "mnist") for name, path in files.items()}
    out.mkdir(parents=True, exist_ok=True)
    lines = [",".join(columns)] + [
        ",".join([str(r["iteration"])] + [f"{r[k]:.6g}" for k in columns[1:]]) for r in records
    ]
    written = []
    for name, p in params.items():
        io.save_params(out / f"{name}.npz", p, "mnist")
        _write_text(out / f"{name}_metrics.csv", "\n".join(lines) + "\n")
        written.append(
            {
                "name": name,
                "kind": "mnist",
                "iterations": records[-1]["iteration"],
                "final_loss": records[-1]["loss"],
                "weights": str(out / f"{name}.npz"),
                "metrics": str(out / f"{name}_metrics.csv"),
            }
        )
    return written
