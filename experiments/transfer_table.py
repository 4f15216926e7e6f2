"""Which MNIST attacks transfer: cells voting 8 for every adversary against every base CA,
and attack-success curves (cells voting 8 against the share p of adversaries).

  python -m experiments.transfer_table --out=nca_adv/assets/results/mnist_transfer.json
  python -m experiments.transfer_table --out=... --curves=shipped:shipped,hardened:hardened

Bases and adversaries are ``name=spec`` lists (a spec as eval_mnist's --model: shipped name,
.npz, TF.js .json or a workdir); by default the authors' (when ../shared/reference is there),
the shipped and the hardened ones. The table is the yardstick protocol of eval_mnist: the
first --num_digits test digits without the 8s, adversaries in a share --fraction of the grid
from step 0, --steps steps, seed --seed (the same draws as
``eval_mnist --adversary=... --seed=S``), so the shipped pair reproduces eval_mnist's figure.

--out is a JSON file of results: pairs already in it with the same settings are kept, not
recomputed, so the table can be filled in as models arrive. The last stdout line is JSON:
``cells_voting_target`` and ``digits_hijacked`` as {base: {adversary: share}} and the curves.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from nca_adv import io
from nca_adv.attacks import adversaries
from nca_adv.errors import UserError
from nca_adv.evaluation import adversary_eval
from nca_adv.io import data
from nca_adv.models import mnist

from .common import atomic_output, check_output_file, float_list, print_result, run

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "original"

MNIST_TEST_DIGITS = 10_000  # the MNIST test set

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "bases",
    None,
    "name=spec base CAs (default: authors= when ../shared/reference is there, shipped=mnist, "
    "hardened=mnist_hardened when shipped).",
)
flags.DEFINE_list(
    "adversaries",
    None,
    "name=spec adversaries (default: authors=, shipped=mnist_adversary, "
    "hardened=mnist_hardened_adversary when shipped).",
)
flags.DEFINE_integer(
    "num_digits",
    300,
    "First N test digits (the 8s among them dropped).",
    lower_bound=1,
    upper_bound=MNIST_TEST_DIGITS,
)
flags.DEFINE_float("fraction", 0.1, "Share of the grid's cells running the adversary.")
flags.DEFINE_integer(
    "steps",
    200,
    "CA steps from the seeds, adversaries from step 0.",
    lower_bound=1,
    upper_bound=100_000,
)
flags.DEFINE_integer("seed", 0, "PRNG seed (as eval_mnist's --seed).")
flags.DEFINE_integer(
    "batch_size", 100, "Digits per batch.", lower_bound=1, upper_bound=MNIST_TEST_DIGITS
)
flags.DEFINE_list(
    "curves", [], "base:adversary pairs (names of --bases/--adversaries) to draw curves for."
)
flags.DEFINE_list(
    "curve_ps",
    ["0", "0.01", "0.02", "0.05", "0.1", "0.15", "0.2", "0.3", "0.5", "0.75", "1"],
    "Shares p of the curves.",
)
flags.DEFINE_integer(
    "curve_digits",
    100,
    "First N test digits without the 8s for the curves.",
    lower_bound=1,
    upper_bound=MNIST_TEST_DIGITS,
)
flags.DEFINE_string(
    "out",
    None,
    "JSON file of results, written atomically. Read first: the pairs and curves it holds "
    "are kept (a table of other settings is refused, not replaced).",
)
flags.DEFINE_bool("table", True, "Compute the table (--notable: only the curves).")


def _named(values: list[str] | None, default: dict[str, str], what: str) -> dict[str, str]:
    if values is None:
        return default
    named = {}
    for item in values:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise app.UsageError(f"--{what}: expected name=spec, got {item!r}")
        if name in named:
            raise app.UsageError(f"--{what}: the name {name!r} is given twice")
        named[name] = spec
    if not named:
        raise app.UsageError(f"--{what} is empty")
    return named


def default_models() -> tuple[dict[str, str], dict[str, str]]:
    """The bases and adversaries there are: authors' (reference), shipped, hardened."""
    bases, advs = {}, {}
    if (REFERENCE / "mnist_base_model.json").is_file():
        bases["authors"] = str(REFERENCE / "mnist_base_model.json")
        advs["authors"] = str(REFERENCE / "mnist_adversary_model.json")
    shipped = io.shipped_models()
    for name, base, adv in (
        ("shipped", "mnist", "mnist_adversary"),
        ("hardened", "mnist_hardened", "mnist_hardened_adversary"),
    ):
        if base in shipped:
            bases[name] = base
        if adv in shipped:
            advs[name] = adv
    return bases, advs


def _settings() -> dict:
    return {
        "num_digits": FLAGS.num_digits,
        "fraction": FLAGS.fraction,
        "steps": FLAGS.steps,
        "seed": FLAGS.seed,
    }


def _digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` test digits without the 8s (float images, labels)."""
    splits = data.load_mnist()
    images = data.to_float(splits.test_images[:n])
    labels = splits.test_labels[:n].astype(np.int32)
    keep = labels != adversaries.MNIST_TARGET
    return images[keep], labels[keep]


def transfer_cell(base: dict, adv: dict, images, labels, key, fraction, steps, batch) -> dict:
    """One pair: eval_mnist's adversary numbers (cells voting 8, digits hijacked)."""
    counts = adversary_eval.mnist_attack(
        base, adv, images, key, fraction, steps, 0, None, False, batch
    )
    return adversary_eval.mnist_attack_summary(counts, labels, steps)


def _load(out: Path | None) -> dict:
    if out is None or not out.is_file():
        return {}
    try:
        result = json.loads(out.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"--out {out} is not a JSON file: {e}") from None
    if not isinstance(result, dict):
        raise UserError(f"--out={out} is not a table of this program (not a JSON object)")
    return result


def _write(out: Path | None, result: dict) -> None:
    """Write the results through a temporary file and a rename: a kill or a full disk
    leaves the previous table whole, never a partial one."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(out) as tmp:
            tmp.write_text(json.dumps(result, indent=1) + "\n")


def _check_reusable(out: Path | None, result: dict, settings: dict) -> None:
    """Refuse, before any compute, an --out that holds results of other settings: they
    would be thrown away."""
    saved = result.get("settings")
    if out is None or not result or saved == settings:
        return
    if not isinstance(saved, dict):
        raise UserError(f"--out={out} is not a table of this program (no settings in it)")
    diff = ", ".join(
        f"--{k}={saved.get(k)!r} there, {settings[k]!r} here"
        for k in settings
        if saved.get(k) != settings[k]
    )
    raise UserError(
        f"--out={out} holds a table of other settings ({diff}); its results would be lost: "
        "give another --out, or move that file away to replace it"
    )


def main(argv):
    del argv
    if not 0.0 <= FLAGS.fraction <= 1.0:
        raise app.UsageError(f"--fraction must lie in [0, 1], got {FLAGS.fraction}")
    out = Path(FLAGS.out) if FLAGS.out else None
    if out is not None:
        check_output_file(out, "out")
    base_default, adv_default = default_models()
    base_specs = _named(FLAGS.bases, base_default, "bases")
    adv_specs = _named(FLAGS.adversaries, adv_default, "adversaries")
    if not FLAGS.table and not FLAGS.curves:
        raise app.UsageError("--notable leaves nothing to compute: give --curves")
    ps = float_list("curve_ps")
    if any(not 0.0 <= p <= 1.0 for p in ps):
        raise app.UsageError(f"--curve_ps must lie in [0, 1], got {ps}")
    pairs = []
    for item in FLAGS.curves:
        b, sep, a = item.partition(":")
        if not sep or b not in base_specs or a not in adv_specs:
            raise app.UsageError(
                f"--curves: {item!r} is not base:adversary of {list(base_specs)} x "
                f"{list(adv_specs)}"
            )
        pairs.append((b, a))
    result = _load(out)
    settings = _settings()
    _check_reusable(out, result, settings)
    if result:
        logging.info(
            "--out=%s: keeping its %d pair(s) and %d curve(s); computing the missing ones",
            out,
            len(result.get("pairs", {})),
            len(result.get("curves", {})),
        )
    bases = {n: io.load_model(s, "mnist") for n, s in base_specs.items()}
    advs = {
        n: adversaries.load_adversary(s, "mnist", next(iter(bases.values())))
        for n, s in adv_specs.items()
    }

    result["settings"] = settings
    result["bases"], result["adversaries"] = base_specs, adv_specs
    key = jax.random.split(jax.random.PRNGKey(FLAGS.seed))[0]  # eval_mnist's k_run
    if FLAGS.table:
        images, labels = _digits(FLAGS.num_digits)
        result["digits_attacked"] = len(images)
        table = result.setdefault("pairs", {})
        for b, base in bases.items():
            for a, adv in advs.items():
                name = f"{b}|{a}"
                if name in table and table[name].get("specs") == [base_specs[b], adv_specs[a]]:
                    continue
                t0 = time.perf_counter()
                cell = transfer_cell(
                    base, adv, images, labels, key, FLAGS.fraction, FLAGS.steps, FLAGS.batch_size
                )
                table[name] = {"specs": [base_specs[b], adv_specs[a]], **cell}
                logging.info(
                    "base %s, adversary %s: %.4f of the cells vote 8 (%.0f s)",
                    b,
                    a,
                    cell["cells_voting_target"],
                    time.perf_counter() - t0,
                )
                _write(out, result)
    if pairs:
        images, _ = _digits(10_000)
        images = images[: FLAGS.curve_digits]
        k = mnist.cells_needed(images)
        curves = result.setdefault("curves", {})
        for b, a in pairs:
            share = adversary_eval.mnist_success_curve(
                bases[b], advs[a], jnp.asarray(images), key[None], jnp.asarray(ps), FLAGS.steps, k
            )
            curves[f"{b}|{a}"] = {
                "specs": [base_specs[b], adv_specs[a]],
                "digits": len(images),
                "ps": ps,
                "cells_voting_target": [round(float(v), 5) for v in np.asarray(share)[:, 0]],
            }
            logging.info("curve %s|%s: %s", b, a, curves[f"{b}|{a}"]["cells_voting_target"])
            _write(out, result)
    summary = {
        "settings": settings,
        "cells_voting_target": _matrix(result, "cells_voting_target"),
        "digits_hijacked": _matrix(result, "digits_hijacked"),
        "curves": result.get("curves", {}),
    }
    print_result(summary)


def _matrix(result: dict, field: str) -> dict:
    table: dict[str, dict] = {}
    for name, cell in result.get("pairs", {}).items():
        b, a = name.split("|")
        table.setdefault(b, {})[a] = cell[field]
    return table


if __name__ == "__main__":
    run(main)
