"""Report section: adversarial cells (Randazzo et al., Distill 2021, first attack).

``section(rep, out, ref, key)`` measures the authors' adversaries (when ../shared/reference
is there) and the shipped ones (``mnist_adversary``, ``lizard_no_tail_adversary``,
``lizard_red_adversary``, when shipped) with the article's protocols, on few digits and
runs so that it takes about half a minute on a 2-core CPU: one compiled program for every
MNIST number and curve, one for the MNIST video, one for every growing number, curve and
video. Full-size measurements are in BUILD_NOTES.md.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nca_adv import io
from nca_adv.attacks import adversaries
from nca_adv.evaluation import adversary_eval
from nca_adv.io import data, targets
from nca_adv.media import adversary_pictures, report, video
from nca_adv.models import growing, mnist

MNIST_DIGITS = 6  # first test digits that are not 8: every MNIST number and curve
MNIST_STEPS = 200
CURVE_PS = (0.0, 0.01, 0.1, 0.3, 1.0)
VIDEO_DIGITS = 6
VIDEO_STEPS, INJECT_AT, REMOVE_AT = 600, 200, 400
PADDING = 24  # 88x88 grid, as the reference figures
GROW_FIRST, AFTER = 200, 500
RECORD_EVERY = 4  # growing video: one frame per 4 steps after injection
GROWING_CURVE_PS = (0.3, 1.0)  # red 60 % adversary, besides 0 (base) and 0.6 (table)

# The authors' adversaries measured at full size with this project's launches (BUILD_NOTES.md;
# MNIST: first 300 test digits without the 8s, share of alive cells voting 8; growing: 6
# runs, loss to the mutated target), beside the reference figures.
FULL_SIZE = {
    "mnist_10": 0.9740,
    "mnist_1": 0.3703,
    "mnist_1_on_digit": 0.4895,
    "no_tail": 0.00274,
    "no_tail_base": 0.00368,
    "red_10": 0.00710,
    "red_base": 0.00787,
    "red_60": 0.00286,
}
YARDSTICK = {  # reference figures: one run of the original maths on the authors' models
    "mnist_10": 0.972,
    "mnist_1": 0.329,
    "no_tail": 0.00280,
    "no_tail_base": 0.00370,
    "red_10": 0.00710,
    "red_base": 0.00782,
    "red_60": 0.00264,
    "red_60_complete": 0.00676,
}


def _mnist_pairs(ref: Path | None) -> dict[str, tuple[dict, dict]]:
    pairs = {}
    if ref is not None:
        base = io.load_model(str(ref / "original" / "mnist_base_model.json"), "mnist")
        adv = str(ref / "original" / "mnist_adversary_model.json")
        pairs["authors'"] = base, adversaries.load_adversary(adv, "mnist", base)
    if "mnist_adversary" in io.shipped_models():
        base = io.load_model("mnist", "mnist")
        pairs["shipped"] = base, adversaries.load_adversary("mnist_adversary", "mnist", base)
    return pairs


def _growing_sets(ref: Path | None) -> dict[str, dict]:
    """Per set: base, adversaries {no_tail, red_10, red_60} (None when absent), targets."""
    sets = {}
    if ref is not None:
        o, t = ref / "original", ref / "targets"
        base = io.load_model(str(o / "growing_lizard_base_model.json"), "growing")
        advs = {
            name: adversaries.load_adversary(str(o / f), "growing", base)
            for name, f in (
                ("no_tail", "no_tail_model.json"),
                ("red_10", "red_model.json"),
                ("red_60", "red_model_60perc.json"),
            )
        }
        tgts = {n: str(t / f"lizard_{n}.png") for n in ("complete", "no_tail", "red")}
        sets["authors'"] = {"base": base, "advs": advs, "targets": tgts}
    shipped, names = io.shipped_models(), targets.SHIPPED_TARGETS
    if {"lizard_no_tail", "lizard_red"} <= set(names) and (
        "lizard_no_tail_adversary" in shipped or "lizard_red_adversary" in shipped
    ):
        base = io.load_model("lizard", "growing")
        advs = {
            name: adversaries.load_adversary(spec, "growing", base) if spec in shipped else None
            for name, spec in (
                ("no_tail", "lizard_no_tail_adversary"),
                ("red_10", None),
                ("red_60", "lizard_red_adversary"),
            )
        }
        tgts = {"complete": "lizard", "no_tail": "lizard_no_tail", "red": "lizard_red"}
        sets["shipped"] = {"base": base, "advs": advs, "targets": tgts}
    return sets


# ----------------------------------------------------------------------------- MNIST
def _mnist(rep, out: Path, ref: Path | None, key: jax.Array) -> dict:
    pairs = _mnist_pairs(ref)
    if not pairs:
        rep.text("No MNIST adversary available (neither shipped nor ../shared/reference).")
        return {}
    splits = data.load_mnist()
    labels_all = splits.test_labels.astype(np.int32)
    others = np.flatnonzero(labels_all != adversaries.MNIST_TARGET)
    picked = others[:MNIST_DIGITS]
    images, labels = data.to_float(splits.test_images[picked]), labels_all[picked]
    k = mnist.cells_needed(images)
    ps = jnp.array([*CURVE_PS, 0.01], jnp.float32)
    ensure = jnp.array([False] * len(CURVE_PS) + [True])
    keys = jnp.stack([key] * len(ps))  # common draws: the masks grow with p
    rows, curves, result = [], {}, {}
    for name, (base, adv) in pairs.items():
        counts = np.asarray(
            adversary_eval.mnist_attack_lanes(base, adv, images, keys, ps, ensure, MNIST_STEPS, k)
        )
        m = [adversary_eval.mnist_attack_metrics(c[None], labels, 1) for c in counts]
        at = {p: m[i] for i, p in enumerate(CURVE_PS)}
        curves[name] = (
            np.array(CURVE_PS),
            np.array([at[p]["cells_voting_target"] for p in CURVE_PS]),
        )
        tag = "authors" if name.startswith("authors") else "shipped"
        for label, mm, full, yard in (
            ("10 %", at[0.1], "mnist_10", "mnist_10"),
            ("1 %", at[0.01], "mnist_1", "mnist_1"),
            ("1 %, redrawn until one sits on the digit", m[-1], "mnist_1_on_digit", None),
            ("none (base alone)", at[0.0], None, None),
        ):
            authors = tag == "authors"
            rows.append(
                [
                    f"{name} adversary",
                    label,
                    mm["cells_voting_target"],
                    mm["digits_hijacked"],
                    FULL_SIZE[full] if full and authors else "-",
                    YARDSTICK[yard] if yard and authors else "-",
                ]
            )
        result[f"{tag}_mnist_adversary_cells_voting_8_p10"] = at[0.1]["cells_voting_target"]
        result[f"{tag}_mnist_adversary_digits_hijacked_p10"] = at[0.1]["digits_hijacked"]
        result[f"{tag}_mnist_adversary_cells_voting_8_p1_on_digit"] = m[-1]["cells_voting_target"]
    rep.heading("MNIST: every digit an 8", level=3)
    rep.text(
        f"The first {MNIST_DIGITS} test digits that are not 8, {MNIST_STEPS} steps from the seed, "
        "adversaries from step 0 at a share p of the whole 28x28 grid (those on the background "
        "never update). 'Cells voting 8': share of all alive cells; 'digits hijacked': share of "
        "digits whose majority votes 8. 'Full size': the same measure on the first 300 test "
        "digits without the 8s (279; BUILD_NOTES.md); 'reference': one run of the original "
        "maths on the authors' models. Its 1 % figure matches a plain 1 % mask, not the protocol that redraws each "
        "digit's mask until an adversary sits on it (which hijacks more). The article calls "
        "this attack easy: 10 % of adversaries turn almost every cell into an 8."
    )
    rep.table(
        ["model", "adversaries", "cells voting 8", "digits hijacked", "full size", "reference"],
        rows,
    )
    rep.image(
        report.plot_curves(
            out / "adversaries_mnist_curve.png",
            curves,
            f"MNIST attack success ({MNIST_DIGITS} digits, step {MNIST_STEPS})",
            "share p of cells running the adversary",
            "alive cells voting 8",
        ),
        f"Attack-success curve: one program, vmap over p in {list(CURVE_PS)} (same draws at "
        "every p, so a larger p adds adversaries to the smaller p's).",
    )
    name, (base, adv) = next(iter(pairs.items()))
    result.update(_mnist_video(rep, out, name, base, adv, images, labels, key))
    return result


def _mnist_video(rep, out, name, base, adv, images, labels, key) -> dict:
    n = min(VIDEO_DIGITS, len(images))
    votes, masks, present, counts = adversary_eval.mnist_attack_trajectory(
        base, adv, images[:n], key, 0.1, VIDEO_STEPS, INJECT_AT, REMOVE_AT
    )
    summary = adversary_eval.mnist_attack_summary(counts, labels[:n], VIDEO_STEPS, REMOVE_AT)
    shown = slice(1, None, 2)  # every second step
    frames = adversary_pictures.mnist_frames(
        votes[shown], images[:n], labels[:n], masks, present[shown], zoom=3, cols=min(8, n)
    )
    path = out / "adversaries_mnist.mp4"
    poster = REMOVE_AT // 2 - 1  # just before the removal
    rep.video(
        video.write_video(path, frames, fps=30),
        f"{name} adversary, 10 % of the grid, in for steps {INJECT_AT}..{REMOVE_AT - 1} of "
        f"{VIDEO_STEPS} (magenta dots: adversary cells on the digit while they run); cells "
        "coloured by their vote, light red background where the majority is wrong. On these "
        f"{n} digits: {summary['cells_voting_target_before_removal']:.1%} of the cells vote 8 "
        f"just before the removal, {summary['digits_recovered']:.0%} of the digits are back "
        f"on their label at step {VIDEO_STEPS}. Poster: step {REMOVE_AT}.",
        poster=video.save_poster(path, frames, poster),
    )
    return {
        "mnist_adversary_video_cells_voting_8_before_removal": summary[
            "cells_voting_target_before_removal"
        ],
        "mnist_adversary_video_digits_recovered": summary["digits_recovered"],
    }


# ----------------------------------------------------------------------------- growing
def _growing(rep, out: Path, ref: Path | None, key: jax.Array) -> dict:
    sets = _growing_sets(ref)
    if not sets:
        rep.text("No growing adversary available (neither shipped nor ../shared/reference).")
        return {}
    rep.heading("Growing CA: reshaping the lizard", level=3)
    rows, curves, result = [], {}, {}
    for s_i, (name, s) in enumerate(sets.items()):
        tg = {n: targets.load_target(t, padding=PADDING) for n, t in s["targets"].items()}
        # (label, adversary, target, p, yardstick); the first job is the base alone. The
        # shipped set gets one run each and no curve: each run costs ~1.3 s of CPU.
        full = name.startswith("authors")
        jobs = [("base alone", "red_60", "red", 0.0, None)]
        jobs += [("tailless 10 %", "no_tail", "no_tail", 0.1, "no_tail")] * (2 if full else 1)
        jobs += [("red 10 %", "red_10", "red", 0.1, "red_10")]
        jobs += [("red 60 %", "red_60", "red", 0.6, "red_60")]
        jobs += [
            (f"red 60 % adversary at {p:.0%}", "red_60", "red", p, None)
            for p in (GROWING_CURVE_PS if full else ())
        ]
        jobs = [j for j in jobs if s["advs"].get(j[1]) is not None]
        if not jobs:
            continue
        if s["advs"]["red_60"] is None:  # the base-alone job needs any adversary (p = 0)
            jobs.insert(0, ("base alone", "no_tail", "no_tail", 0.0, None))
        keys = jax.random.split(jax.random.fold_in(key, s_i), len(jobs))
        # One job per call of the one compiled program: on a CPU, vmap over the jobs'
        # different weights (a batched matmul) is slower than running them in turn.
        runs = [
            adversary_eval.growing_attack_jobs(
                s["base"],
                jax.tree.map(lambda a: a[None], s["advs"][adv]),
                jnp.asarray(tg[t][None, ..., 3]),
                jnp.array([p], jnp.float32),
                keys[i : i + 1],
                GROW_FIRST,
                AFTER,
                RECORD_EVERY,
            )
            for i, (_, adv, t, p, _) in enumerate(jobs)
        ]
        final, masks, frames = (
            np.concatenate(parts, axis=a) for parts, a in zip(zip(*runs), (0, 0, 1))
        )
        loss = {n: np.asarray(growing.growing_loss(final, t)) for n, t in tg.items()}
        tag = "authors" if name.startswith("authors") else "shipped"
        base_loss = {n: float(loss[n][0]) for n in tg}
        for label in dict.fromkeys(j[0] for j in jobs):
            idx = [i for i, j in enumerate(jobs) if j[0] == label]
            if "adversary at" in label:
                continue
            t = jobs[idx[0]][2] if label != "base alone" else None
            mine = np.mean([loss[t][i] for i in idx]) if t else None
            if tag != "authors":
                full = yard = "-"
            elif t:
                full, yard = (f"{d[jobs[idx[0]][4]]:.5f}" for d in (FULL_SIZE, YARDSTICK))
            else:
                full, yard = (
                    f"tailless {d['no_tail_base']:.5f}, red {d['red_base']:.5f}"
                    for d in (FULL_SIZE, YARDSTICK)
                )
            rows.append(
                [
                    f"{name} {label}",
                    len(idx),
                    f"{mine:.5f}"
                    if t
                    else f"tailless {base_loss['no_tail']:.5f}, red {base_loss['red']:.5f}",
                    " / ".join(f"{loss[t][i]:.5f}" for i in idx) if t and len(idx) > 1 else "-",
                    f"{np.mean([loss['complete'][i] for i in idx]):.5f}",
                    full,
                    yard,
                ]
            )
            if t:
                result[f"{tag}_growing_{jobs[idx[0]][4]}_loss"] = float(mine)
        result[f"{tag}_growing_base_alone_loss_red"] = base_loss["red"]
        if s["advs"]["red_60"] is not None and full:
            pts = sorted(
                (j[3], float(loss["red"][i])) for i, j in enumerate(jobs) if j[1] == "red_60"
            )
            curves[f"{name} red 60 % adversary"] = tuple(np.array(v) for v in zip(*pts))
        if s_i == 0:
            _growing_video(rep, out, name, jobs, np.asarray(frames), np.asarray(masks))
    rep.text(
        f"Grid {tg['red'].shape[0]}x{tg['red'].shape[1]} (the 40x40 target padded by {PADDING}); "
        f"the lizard grows {GROW_FIRST} steps with the base alone, then adversaries are "
        f"injected (uniform < p where the mutated target's alpha >= 0.1, one mask per run) "
        f"and the loss (RGBA MSE) is read {AFTER} steps later. One run per row unless 'runs' "
        "says more; 'full size': the same measure of the authors' models on 6 runs "
        "(BUILD_NOTES.md); 'reference': one run of the original maths on the same models. "
        "The article: the tailless attack is partial and depends on where the adversaries "
        "land; red fails at 10 % (close to the base alone) and works at 60 %."
    )
    rep.table(
        [
            "model / attack",
            "runs",
            "loss to the mutated target",
            "per run",
            "loss to the complete lizard",
            "full size (6 runs)",
            "reference",
        ],
        rows,
    )
    if curves:
        rep.image(
            report.plot_curves(
                out / "adversaries_growing_curve.png",
                curves,
                f"Growing attack success (1 run per point, {AFTER} steps after injection)",
                "share p of the target's cells running the adversary",
                "loss to the red lizard",
            ),
            "Attack-success curve: loss to the red target against p, one run per point (p = 0: "
            "the base alone). adversary_eval.growing_success_curve computes such curves with "
            "vmap over p and seeds in one program; here the points are runs of the table's "
            "program, to compile once.",
        )
    return result


def _growing_video(rep, out, name, jobs, frames, masks) -> None:
    """Tailless, red 10 % and red 60 % side by side, adversaries marked, then hidden."""
    picks = []
    for label in ("tailless 10 %", "red 10 %", "red 60 %"):
        hits = [i for i, j in enumerate(jobs) if j[0] == label]
        if hits:
            picks.append(hits[0])
    states = frames[:, picks]  # RGBA is all a picture needs

    def panel(hide):
        per_run = [
            adversary_pictures.growing_frames(states[:, r], masks[r], 3, hide=hide)
            for r in range(len(picks))
        ]
        return np.stack([video.image_grid(f, cols=len(picks)) for f in zip(*per_run)])

    marked = panel(False)
    hidden = panel(True)[-1:]
    movie = np.concatenate([marked, np.repeat(hidden, 40, axis=0)])
    path = out / "adversaries_growing.mp4"
    labels = ", ".join(jobs[i][0] for i in picks)
    rep.video(
        video.write_video(path, movie, fps=25),
        f"{name} adversaries ({labels}), injected into the grown lizard: every "
        f"{RECORD_EVERY}th step of the {AFTER} after injection, adversary cells as magenta "
        f"dots; at the end (step {AFTER}) the adversaries are hidden to show the original "
        "cells alone. Poster: the last marked frame.",
        poster=video.save_poster(path, marked, -1),
    )


def section(rep: report.HtmlReport, out: Path, ref: Path | None, key: jax.Array) -> dict:
    """Add the adversarial-cells section to ``rep`` (media in ``out``); returns its numbers."""
    rep.heading("Adversarial cells")
    rep.text(
        "A second CA of the same architecture runs in a few cells; the frozen base runs "
        "everywhere else (each cell takes one model's step from the same state). Numbers "
        "for the authors' published adversaries (../shared/reference) and for the shipped "
        "ones when the package holds them, all measured with this project's maths."
    )
    k_mnist, k_growing = jax.random.split(key)
    result = _mnist(rep, out, ref, k_mnist)
    result.update(_growing(rep, out, ref, k_growing))
    return result
