"""What a playground server offers, loaded once at start-up from the launch's flags: the
MNIST CA and its adversary with the test digits, the lizard with its growing adversaries,
its perturbations and the targets. The browser only picks among these by name."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

import nca_adv
from nca_adv import io
from nca_adv.attacks import adversaries, perturbation
from nca_adv.errors import UserError
from nca_adv.io import data, targets

PADDING = targets.TARGET_PADDING  # 40 + 2 * 16 = the article's 72x72 lizard
COMPLETE = "lizard"
MAX_GROWING_ADVERSARIES = 3
REFERENCE = Path(nca_adv.__file__).resolve().parents[1].parent / "shared" / "reference"

# The article's growing adversaries: shown name -> (shipped model, the authors' file).
GROWING_ADVERSARIES = {
    "tailless": ("lizard_no_tail_adversary", "no_tail_model.json"),
    "red": ("lizard_red_adversary", "red_model_60perc.json"),
}
LADDER = Path(nca_adv.__file__).resolve().parent / "assets" / "results" / "ladder.json"
# What the shipped perturbations reach (loss to the mutated target / loss to the complete
# lizard, 8 runs of 200 steps from the seed: ``evaluation.protocols.perturbation_protocol``)
# when ladder.json holds no evaluation of them, and the authors' matrices on the same test.
SHIPPED_RATIOS = {
    "tail": 0.556,
    "leg": 0.270,
    "arm": 0.427,
    "head": 0.533,
    "red": 0.698,
    "blue": 0.874,
}
AUTHORS_RATIOS = {"tail": 0.20, "leg": 0.49, "arm": 0.28, "head": 0.25, "red": 0.52, "blue": 0.54}
PERTURBATION_RUNS = 8
# ... and what the shipped adversaries do, when ladder.json holds no evaluation.
SHIPPED_ADVERSARY_NOTES = {
    "lizard_no_tail_adversary": (
        "The shipped tailless adversary leaves the tail on: painted on the lizard, its loss "
        "to the tailless target is only about 2 % below that of the lizard alone."
    ),
}


@dataclasses.dataclass(frozen=True)
class MnistModels:
    """The MNIST CA, its adversary (None: the adversary brush is off) and the 10k test
    digits as uint8 (N, 28, 28) with their labels."""

    base: dict
    adversary: dict | None
    images: np.ndarray
    labels: np.ndarray
    sources: dict


@dataclasses.dataclass(frozen=True)
class LizardModels:
    """The Growing CA, its adversaries (shown name -> params, in brush order), the
    perturbations (slider name -> (16, 16) matrix) and the targets (name -> (H, W, 4))."""

    base: dict
    adversaries: dict[str, dict]
    perturbations: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    sources: dict
    notes: dict = dataclasses.field(default_factory=dict)  # :func:`attack_notes`


def load_mnist_models(
    model: str = "mnist", adversary: str | None = "mnist_adversary", mnist_dir: str | None = None
) -> MnistModels:
    """Load and check the MNIST pair (``adversary`` empty or None: none) and the test
    digits. Model specs are anything ``io.load_model`` takes."""
    base = io.load_model(model, "mnist")
    adv = adversaries.load_adversary(adversary, "mnist", base) if adversary else None
    splits = data.load_mnist(mnist_dir)
    return MnistModels(
        base,
        adv,
        np.asarray(splits.test_images, np.uint8),
        np.asarray(splits.test_labels, np.int32),
        {"model": model, "adversary": adversary or None},
    )


def default_growing_adversaries(reference: Path = REFERENCE) -> dict[str, str]:
    """The article's tailless and red adversaries: shipped models where the package has
    them, else the authors' files in ``../shared/reference`` when present."""
    shipped = io.shipped_models()
    out = {}
    for name, (shipped_name, authors_file) in GROWING_ADVERSARIES.items():
        if shipped_name in shipped:
            out[name] = shipped_name
        elif (reference / "original" / authors_file).is_file():
            out[name] = str(reference / "original" / authors_file)
    return out


def _spec_name(spec: str) -> str:
    """A shown name for a model or matrix spec: its file stem, without the authors' and
    the package's decorations."""
    stem = Path(spec.rstrip("/")).name
    for suffix in (".json", ".npz", ".npy"):
        stem = stem.removesuffix(suffix)
    for decoration in ("_sym_t", "_model", "_adversary", "lizard_"):
        stem = stem.replace(decoration, "")
    return stem or spec


def growing_adversary_specs(specs: list[str] | None) -> dict[str, str]:
    """``--growing_adversary`` values (None or empty: :func:`default_growing_adversaries`;
    ``none``: no adversary) -> shown name -> spec; ``name=spec`` names one explicitly."""
    if not specs:
        return default_growing_adversaries()
    if [s.strip().lower() for s in specs] == ["none"]:
        return {}
    out = {}
    for item in specs:
        name, spec = item.split("=", 1) if "=" in item and not Path(item).exists() else ("", item)
        name = name.strip() or _spec_name(spec)
        if name in out:
            raise UserError(f"--growing_adversary: two adversaries named {name!r}; use name=SPEC")
        out[name] = spec.strip()
    if len(out) > MAX_GROWING_ADVERSARIES:
        raise UserError(
            f"--growing_adversary: at most {MAX_GROWING_ADVERSARIES} adversaries, got {len(out)}"
        )
    return out


def perturbation_specs(spec: str | None) -> dict[str, str]:
    """``--perturbations`` -> slider name -> matrix spec. Empty: the six shipped ones; a
    folder: its ``<name>.npy`` or ``<name>_sym_t.npy`` for the article's six names (the
    authors' folder works as it is); else comma-separated ``name=SPEC`` or ``SPEC`` (a
    shipped name or a ``.npy``)."""
    if not spec or not spec.strip():
        shipped = perturbation.shipped_perturbations()
        order = [n for n in perturbation.SHIPPED_NAMES if n in shipped]
        return {name: name for name in order + sorted(set(shipped) - set(order))}
    folder = Path(spec)
    if folder.is_dir():
        out = {}
        for name in perturbation.SHIPPED_NAMES:
            for file in (folder / f"{name}.npy", folder / f"{name}_sym_t.npy"):
                if file.is_file():
                    out[name] = str(file)
                    break
        if not out:
            raise UserError(
                f"--perturbations={spec}: the folder holds none of "
                f"{[n + '.npy' for n in perturbation.SHIPPED_NAMES]} (or *_sym_t.npy)"
            )
        return out
    out = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise UserError(f"--perturbations={spec}: empty entry")
        name, matrix = item.split("=", 1) if "=" in item else (_spec_name(item), item)
        if name in out:
            raise UserError(f"--perturbations: two matrices named {name!r}; use name=SPEC")
        out[name.strip()] = matrix.strip()
    return out


def _evaluation(ladder: dict, key: str) -> dict | None:
    entry = ladder.get(key)
    evaluation = entry.get("evaluation") if isinstance(entry, dict) else None
    ok = isinstance(evaluation, dict) and isinstance(evaluation.get("ratio"), int | float)
    return evaluation if ok else None


def attack_notes(
    adversary_specs: dict[str, str], perturbation_specs: dict[str, str], ladder_path: Path = LADDER
) -> dict:
    """What the page says each shipped attack does today: ``{"perturbations": [{name,
    ratio, authors, runs}], "adversaries": {shown name: sentence}}``, from the ladder's
    record (``assets/results/ladder.json``) where it holds an evaluation of the attack,
    else from the measurements above. Attacks that are not the shipped ones get no note."""
    try:
        ladder = json.loads(Path(ladder_path).read_text())
    except (OSError, ValueError):
        ladder = {}
    if not isinstance(ladder, dict):
        ladder = {}
    rows = []
    for name, spec in perturbation_specs.items():
        if spec != name or name not in SHIPPED_RATIOS:
            continue
        evaluation = _evaluation(ladder, name)
        ratio = evaluation["ratio"] if evaluation else SHIPPED_RATIOS[name]
        runs = int(evaluation.get("runs", PERTURBATION_RUNS)) if evaluation else PERTURBATION_RUNS
        rows.append(
            {
                "name": name,
                "ratio": round(float(ratio), 3),
                "authors": AUTHORS_RATIOS[name],
                "runs": runs,
            }
        )
    advs = {}
    for shown, spec in adversary_specs.items():
        evaluation = _evaluation(ladder, spec)
        if evaluation:
            runs = int(evaluation.get("runs", 0))
            advs[shown] = (
                f"The shipped {shown} adversary: its loss to its target is "
                f"{100 * float(evaluation['ratio']):.0f} % of its loss to the complete lizard"
                + (f" ({runs} runs)." if runs else ".")
            )
        elif spec in SHIPPED_ADVERSARY_NOTES:
            advs[shown] = SHIPPED_ADVERSARY_NOTES[spec]
    return {"perturbations": rows, "adversaries": advs}


def load_lizard_models(
    model: str = "lizard",
    adversary_specs: list[str] | None = None,
    perturbations: str | None = None,
    padding: int = PADDING,
) -> LizardModels:
    """Load and check the lizard, its adversaries, perturbations and the shipped targets."""
    base = io.load_ca(model, "growing")  # a CA: the model's own fire rate and architecture
    adv_specs = growing_adversary_specs(adversary_specs)
    advs = {  # at the base's fire rate
        name: adversaries.load_adversary_ca(spec, "growing", base)
        for name, spec in adv_specs.items()
    }
    pert_specs = perturbation_specs(perturbations)
    mats = {name: perturbation.load_matrix(spec) for name, spec in pert_specs.items()}
    shipped = {name: targets.load_target(name, padding=padding) for name in targets.SHIPPED_TARGETS}
    return LizardModels(
        base,
        advs,
        mats,
        shipped,
        {
            "model": model,
            "adversaries": adv_specs,
            "perturbations": pert_specs,
        },
        attack_notes(adv_specs, pert_specs) if model == "lizard" else {},
    )
