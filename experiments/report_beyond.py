"""Report section "Beyond the article": questions the article leaves open.

``section(rep, out, ref, key) -> dict`` runs each part of :data:`PARTS` in turn; a part is
``part(rep, out, ref, key) -> dict``. Every part reads small precomputed results shipped in
``nca_adv/assets/results/`` (the computations take tens of minutes to hours on a CPU; the
launch and command that made each file are named in the report and in BUILD_NOTES.md), so
the section costs about a second of the main job.

- :func:`placement_part`: where to place adversaries (target-set selection,
  :mod:`nca_adv.attacks.placement`), from ``placement_*.json`` / ``.npz`` made by
  ``experiments.place_adversaries``.
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
NAMES = {
    "authors": "authors'",
    "shipped": "shipped",
    "hardened": "hardened",
    "cotrained": "hardened's co-trained",
}


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
            [
                r["model"],
                r["cell_accuracy"],
                r["total_agreement"],
                r["digits"],
                r.get("shipped_adversary_cells_voting_8", "-"),
                r.get("shipped_adversary_digits_hijacked", "-"),
            ]
            for r in hardened["clean"]
        ]
        header = ["base CA", "clean cell accuracy", "total agreement", "test digits"]
        header += ["shipped adversary 10 %: cells voting 8", "digits hijacked"]
        rep.table(header, rows)
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


# ----------------------------------------------------------------------------- placement
# experiments.place_adversaries --out_dir=...: its JSON (and masks .npz, lizard .png), renamed
PLACEMENT_MNIST = {"shipped": "placement_mnist_shipped", "authors'": "placement_mnist_authors"}
PLACEMENT_GROWING = {
    "authors'": "placement_growing_authors",
    "shipped": "placement_growing_shipped",
}


# Why random can still win on held-out keys (said where it does)
PLACEMENT_BEHIND = (
    "On the optimisation keys the result is never worse than the best random start; on "
    "other keys what it gained can fall within the noise of the CA: the search sees a few "
    "keys per digit, and a placement chosen for them is partly chosen for their noise."
)


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1%}"


def placement_part(rep: report.HtmlReport, out: Path, ref, key: jax.Array) -> dict:
    """Optimised against random placements of k adversary cells, from the shipped files."""
    del ref, key
    rep.heading("Where to place adversaries: the best k cells", level=3)
    mnist_runs = {n: r for n, f in PLACEMENT_MNIST.items() if (r := _read(f + ".json"))}
    growing_runs = {n: r for n, f in PLACEMENT_GROWING.items() if (r := _read(f + ".json"))}
    if not mnist_runs and not growing_runs:
        rep.text(f"(No precomputed placements in {RESULTS}: nothing to show.)")
        return {}
    rep.text(
        "The article places its adversaries at random. Here the placement is optimised "
        "(nca_adv.attacks.placement): the 0/1 mask is relaxed to m in [0, 1] in the mixed step "
        "(m * adversary + (1 - m) * base, the same key), m follows the gradient of the attack's "
        "loss through the rollout under the budget (projected onto sum m = k, 0 <= m <= 1, "
        "eligible cells only), and the top k of m is one candidate placement; several random "
        "placements of k cells are the others. The candidate with the lowest loss on the "
        "optimisation keys is refined by greedy swaps with the ordinary discrete step (one cell "
        "out, one in), each kept only when it lowers that loss. So on the keys it was optimised "
        "on, the result is never worse than the best random placement it started from. It is "
        "optimised on some PRNG keys of the CA and measured on other, held-out keys. "
        "Precomputed by experiments.place_adversaries (commands in BUILD_NOTES.md; files in "
        "nca_adv/assets/results/); nothing is computed here."
    )
    result: dict = {}
    if mnist_runs:
        result.update(_placement_mnist(rep, out, mnist_runs))
    if growing_runs:
        result.update(_placement_growing(rep, out, growing_runs))
    return result


def _placement_mnist(rep, out: Path, runs: dict) -> dict:
    first = next(iter(runs.values()))
    starts = first.get("by_budget", [{}])[0].get("random_starts")
    rep.text(
        f"MNIST: per-digit placements on the first {first['num_digits']} test digits that are "
        f"not 8, cells voting 8 (digits whose majority votes 8) at step {first['steps']}. "
        f"Optimised on {first.get('opt_keys', '?')} key(s) per digit"
        + (f" from the relaxed top k and {starts} random starts" if starts else "")
        + f", {first.get('rounds', '?')} swap rounds; measured on {first['eval_keys']} held-out "
        "keys per "
        f"digit against {first['random_draws']} other random placements of the same budget (k "
        "of the digit's alive cells, each on a held-out key; for 1 % also the article's mask, "
        "uniform < 0.01 over the whole grid, most of whose cells fall off the digit). "
        "Adversaries off the digit never act, so the eligible cells are the digit's alive "
        "cells. 'Start' is the placement the swaps began from, measured on the same held-out "
        "keys: what the swaps add."
    )
    rows, opt_rows, result = [], [], {}
    for name, r in runs.items():
        for b in r["by_budget"]:
            budget = f"{b['budget']:.0%} of the grid" if b["budget"] < 1 else f"{b['cells']}"
            art = b.get("random_live_cells_voting_target") is not None
            live = "random_live_" if art else "random_"
            start = b.get("start_cells_voting_target")
            rows.append(
                [
                    f"{name} base + adversary",
                    budget,
                    b["cells"],
                    f"{_pct(b['cells_voting_target'])} ({_pct(b['digits_hijacked'])})",
                    "-"
                    if start is None
                    else f"{_pct(start)} ({_pct(b.get('start_digits_hijacked'))})",
                    f"{_pct(b[live + 'cells_voting_target'])} ({_pct(b[live + 'digits_hijacked'])})",
                    f"{_pct(b['random_cells_voting_target'])} ({_pct(b['random_digits_hijacked'])})"
                    if art
                    else "",
                ]
            )
            if b.get("best_random_start_opt_loss") is not None and b["budget"] >= 1:
                opt_rows.append(
                    [
                        f"{name} base + adversary",
                        b["cells"],
                        f"{b['opt_loss']:.4f}",
                        f"{b['start_opt_loss']:.4f}",
                        f"{b['best_random_start_opt_loss']:.4f}",
                        f"{b['relaxed_start_opt_loss']:.4f}",
                        _pct(b.get("share_started_from_relaxed")),
                    ]
                )
            tag = f"placement_{name.rstrip(chr(39))}_{b['budget']:g}"
            result[f"{tag}_cells_voting_target"] = b["cells_voting_target"]
            result[f"{tag}_random_cells_voting_target"] = b["random_cells_voting_target"]
            if art:
                result[f"{tag}_random_live_cells_voting_target"] = b[
                    "random_live_cells_voting_target"
                ]
        fewest = r.get("fewest_cells_hijacking_half_the_digits")
        result[f"placement_{name.rstrip(chr(39))}_fewest_cells_half_the_digits"] = fewest
    rep.table(
        [
            "CA pair",
            "budget",
            "cells",
            "optimised: cells voting 8 (digits)",
            "start",
            "random k live cells",
            "random, article's mask",
        ],
        rows,
    )
    if opt_rows:
        rep.text(
            "On the optimisation keys (mean loss to 8 over the digits, lower is better): the "
            "result, the start it was refined from, the best of the random starts, the relaxed "
            "top k, and the share of digits whose best start was the relaxed top k. The result "
            "is never above the best random start: the swaps only keep what lowers this loss."
        )
        rep.table(
            [
                "CA pair",
                "cells",
                "optimised",
                "start",
                "best random start",
                "relaxed top k",
                "digits started from the relaxed top k",
            ],
            opt_rows,
        )
        rep.text(
            "The relaxed top k is seldom the best start: one relaxed step from the uniform "
            "start rates each cell by what it does when every cell of the digit is a little "
            "adversary, not when k cells are wholly adversaries, and the cells it rates best "
            "crowd one part of the digit. The best of a few random placements is already far "
            "better than a typical one, so which cells are taken matters much more than the "
            "CA's noise; the swaps then lower the loss further on the optimisation keys."
        )
    for name, r in runs.items():
        budgets = [b for b in r["by_budget"] if b["budget"] >= 1]
        live = {b["cells"]: b["random_cells_voting_target"] for b in budgets}
        ours = {b["cells"]: b["cells_voting_target"] for b in budgets}
        wins = [k for k in sorted(ours) if ours[k] >= live[k]]
        behind = [k for k in sorted(ours) if ours[k] < live[k]]
        text = (
            f"{name} pair, held-out keys: the optimised placement is at least as good as k "
            f"random cells on the digit at k = {', '.join(map(str, wins)) or 'none'}"
        )
        if behind:
            gaps = ", ".join(f"{k} ({100 * (live[k] - ours[k]):.1f} points)" for k in behind)
            text += f", and behind at k = {gaps}. " + PLACEMENT_BEHIND
        else:
            text += " (every budget tried)."
        lost = [
            f"{b['cells']} ({100 * (b['start_cells_voting_target'] - b['cells_voting_target']):.1f}"
            " points)"
            for b in budgets
            if b.get("start_cells_voting_target", 0) > b["cells_voting_target"]
        ]
        if lost:
            text += (
                " Against their own start, the swaps lost a little on held-out keys at k = "
                f"{', '.join(lost)}: what a swap gains on a few keys is partly their noise."
            )
        rep.text(text)
    rep.text(
        "The article's random 1 % mask is far weaker than either, because most of its cells "
        "fall off the digit."
    )
    rep.text(
        "Fewest cells (of the budgets tried) whose optimised placements hijack the majority of "
        "at least half the digits: "
        + "; ".join(
            f"{n}: {r.get('fewest_cells_hijacking_half_the_digits') or 'none of the budgets'}"
            for n, r in runs.items()
        )
        + "."
    )
    for name in runs:
        picture = _placement_digits_picture(out, name, PLACEMENT_MNIST[name] + ".npz")
        if picture is not None:
            rep.image(
                picture,
                f"{name} pair: where the optimised cells sit (magenta) on the first digits, one "
                "row per budget (cells); the article's random 1 % puts about 1.5 on a digit.",
            )
    return result


def _placement_digits_picture(out: Path, name: str, npz: str, n: int = 12, zoom: int = 8):
    """Digits (columns) with the chosen cells marked, one row per budget, from the masks."""
    from nca_adv.io import data
    from nca_adv.media import video

    path = RESULTS / npz
    if not path.is_file():
        return None
    saved = np.load(path)
    try:
        images = data.to_float(data.load_mnist().test_images[saved["digits"][:n]])
    except (OSError, ValueError):
        return None
    # digits in light grey so that the magenta cells stand out
    grey = video.zoom(video.to_uint8(np.repeat(1.0 - 0.5 * images[..., None], 3, -1)), zoom)
    ks = sorted(int(f.split("_")[1]) for f in saved.files if f.startswith("masks_"))

    def mark(masks):  # whole cells in magenta (a dot is lost at the page's scale)
        spots = np.kron(masks[:n, ..., 0] > 0, np.ones((1, zoom, zoom), bool))
        return np.where(spots[..., None], video.MARK_COLOUR, grey).astype(np.uint8)

    tiles = [mark(saved[f"masks_{k}"]) for k in ks]
    grid = video.image_grid(np.concatenate(tiles), cols=n)
    return video.save_image(out / f"beyond_placement_{name.rstrip(chr(39))}.png", grid)


def _placement_growing(rep, out: Path, runs: dict) -> dict:
    import shutil

    rows, result = [], {}
    for name, r in runs.items():
        rows.append(
            [
                f"{name} adversary on the {name} lizard",
                f"{r['cells']} of {r['eligible_cells']}",
                f"{r['loss']:.5f} [{min(r['loss_per_run']):.5f}-{max(r['loss_per_run']):.5f}]",
                f"{r['random_loss']:.5f} [{min(r['random_loss_per_run']):.5f}-"
                f"{max(r['random_loss_per_run']):.5f}]",
            ]
        )
        tag = f"placement_growing_{name.rstrip(chr(39))}"
        result[f"{tag}_loss"], result[f"{tag}_random_loss"] = r["loss"], r["random_loss"]
    r = next(iter(runs.values()))
    rep.text(
        f"Growing CA, tailless: adversaries in {r['budget']:.0%} of the tailless target's cells, "
        f"injected into a lizard grown {r['grow_first']} steps (padding {r['padding']}), loss "
        f"to the tailless target {r['steps']} steps later, on {r['eval_keys']} held-out keys "
        "(the same keys as experiments.eval_growing --seed=0 --runs=6, whose random masks give "
        "the right-hand column)."
    )
    rep.table(["", "adversary cells", "optimised: loss mean [min-max]", "random placements"], rows)
    for name, r in runs.items():
        rnd = r["random_loss_per_run"]
        starts = r.get("random_starts")
        how = f"the relaxed search and {r.get('rounds', '?')} swaps"
        if starts:
            how = (
                f"the best of the relaxed top k and {starts} random placements on "
                f"{r.get('opt_keys', '?')} optimisation keys, refined by {r.get('rounds', '?')} "
                "swaps"
            )
        original = r.get("loss_original")
        rep.text(
            f"{name} pair: random placements of the same share span {min(rnd):.5f}-"
            f"{max(rnd):.5f} on these keys (each draws its own share, as the article). The "
            "optimised "
            f"placement ({how}) reaches {r['loss']:.5f} on average and "
            f"{max(r['loss_per_run']):.5f} at worst, against {r['random_loss']:.5f} and "
            f"{max(rnd):.5f} for random placements"
            + ("." if original is None else f" (loss to the complete lizard {original:.5f}).")
        )
    for name, f in PLACEMENT_GROWING.items():
        png = RESULTS / f"{f}.png"
        if name in runs and png.is_file():
            dest = shutil.copy(png, out / f"beyond_{f}.png")
            rep.image(
                dest,
                f"{name} tailless adversary: the chosen cells (magenta) on the grown lizard at "
                f"injection, and the lizard {r['steps']} steps later (held-out key 0).",
            )
    return result


# The parts of the section, in order (each adds its own headings and numbers).
PARTS = [placement_part, hardened_part]


def section(rep: report.HtmlReport, out: Path, ref, key: jax.Array) -> dict:
    rep.heading("Beyond the article")
    result: dict = {}
    for i, part in enumerate(PARTS):
        result.update(part(rep, out, ref, jax.random.fold_in(key, i)))
    return result
