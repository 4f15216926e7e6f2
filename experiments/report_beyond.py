"""Report section "Beyond the article" (issue 15): questions the article leaves open.

``section(rep, out, ref, key) -> dict`` runs each part of :data:`PARTS` in turn; a part is
``part(rep, out, ref, key) -> dict``. Every part reads small precomputed results shipped in
``nca_adv/assets/results/`` (the computations take tens of minutes to hours on a CPU; the
launch and command that made each file are named in the report and in BUILD_NOTES.md), so
the section costs about a second of the main job.

- :func:`hardened_part`: a hardened MNIST CA (the base trained against its own adversary,
  in the manner of a GAN) and which attacks transfer between CAs.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jax
import numpy as np

from nca_adv.media import report

RESULTS = Path(str(resources.files("nca_adv") / "assets" / "results"))
TRANSFER = "mnist_transfer.json"  # experiments.transfer_table --out=...
HARDENED = "mnist_hardened.json"  # clean accuracy and training record of mnist_hardened
NAMES = {"authors": "authors'", "shipped": "shipped", "hardened": "hardened"}


def _read(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def hardened_part(rep: report.HtmlReport, out: Path, ref, key: jax.Array) -> dict:
    """The hardened MNIST CA and the transfer table, from the shipped result files."""
    del ref, key
    rep.heading("A hardened MNIST CA", level=3)
    transfer, hardened = _read(TRANSFER), _read(HARDENED)
    result: dict = {}
    if hardened is None and transfer is None:
        rep.text(f"(No precomputed results in {RESULTS}: nothing to show.)")
        return result
    if hardened is not None:
        rep.text(hardened["description"])
        rows = [
            [r["model"], r["cell_accuracy"], r["total_agreement"], r["digits"]]
            for r in hardened["clean"]
        ]
        rep.table(["base CA", "clean cell accuracy", "total agreement", "test digits"], rows)
        result["hardened_clean_cell_accuracy"] = hardened["clean"][-1]["cell_accuracy"]
    if transfer is not None:
        result.update(_curves(rep, out, transfer))
        result.update(_transfer(rep, transfer))
    return result


def _curves(rep: report.HtmlReport, out: Path, transfer: dict) -> dict:
    curves = transfer.get("curves", {})
    if not curves:
        return {}
    lines, digits = {}, set()
    for name, c in curves.items():
        b, a = name.split("|")
        label = f"{NAMES.get(b, b)} base + {NAMES.get(a, a)} adversary"
        lines[label] = (np.array(c["ps"]), np.array(c["cells_voting_target"]))
        digits.add(c["digits"])
    steps = transfer["settings"]["steps"]
    rep.image(
        report.plot_curves(
            out / "beyond_hardened_curves.png",
            lines,
            f"Attack success, each base against the adversary trained on it (step {steps})",
            "share p of cells running the adversary",
            "alive cells voting 8",
        ),
        f"Cells voting 8 against the share p of adversaries, first {sorted(digits)} test digits "
        "without the 8s, one mask draw per p (the same draws at every p), precomputed by "
        "experiments.transfer_table --curves (nca_adv/assets/results/mnist_transfer.json).",
    )
    return {f"curve_{k}": v["cells_voting_target"] for k, v in curves.items()}


def _transfer(rep: report.HtmlReport, transfer: dict) -> dict:
    pairs = transfer.get("pairs", {})
    if not pairs:
        return {}
    bases = list(dict.fromkeys(k.split("|")[0] for k in pairs))
    advs = list(dict.fromkeys(k.split("|")[1] for k in pairs))
    s = transfer["settings"]
    rep.heading("Which attacks transfer", level=3)
    rep.text(
        f"Cells voting 8 (digits hijacked) with {s['fraction']:.0%} adversaries from step 0, "
        f"step {s['steps']}, the first {s['num_digits']} test digits without the 8s "
        f"({transfer.get('digits_attacked', '?')} digits), seed {s['seed']}: every adversary "
        "(columns) against every base CA (rows). The diagonal is each adversary on the base it "
        "was trained against. Precomputed by experiments.transfer_table "
        "(nca_adv/assets/results/mnist_transfer.json)."
    )
    rows = []
    for b in bases:
        row = [f"{NAMES.get(b, b)} base"]
        for a in advs:
            cell = pairs.get(f"{b}|{a}")
            row.append(
                "-"
                if cell is None
                else f"{cell['cells_voting_target']:.1%} ({cell['digits_hijacked']:.1%})"
            )
        rows.append(row)
    rep.table(["", *[f"{NAMES.get(a, a)} adversary" for a in advs]], rows)
    return {f"transfer_{k}": v["cells_voting_target"] for k, v in pairs.items()}


# The parts of the section, in order (each adds its own headings and numbers).
PARTS = [hardened_part]


def section(rep: report.HtmlReport, out: Path, ref, key: jax.Array) -> dict:
    rep.heading("Beyond the article")
    result: dict = {}
    for i, part in enumerate(PARTS):
        result.update(part(rep, out, ref, jax.random.fold_in(key, i)))
    return result
