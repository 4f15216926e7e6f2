"""Report section: global state perturbations (Randazzo et al. 2021, second attack).

``section(rep, out, ref, key)`` adds to an :class:`nca_adv.media.report.HtmlReport`: the six
perturbations (the authors' matrices on the authors' lizard when ``ref`` is given, and the
shipped ones on the shipped lizard when nca_adv/assets/perturbations holds all six), the
on/off/on protocol, the interpolation curves and the compositions, each compared with the
article's observations. Kept small for a CPU report: one run (key) per number, 200 steps
from the seed, and a shortened on/off/on; the text says so next to every number.

  python -m experiments.report_perturbations [--out=out/perturbations]   # the section alone
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
from absl import flags

from nca_adv import io
from nca_adv.attacks import perturbation
from nca_adv.evaluation import perturbation_eval
from nca_adv.io import targets
from nca_adv.media import report, video
from nca_adv.models import growing

from .common import print_result, run

NAMES = perturbation.SHIPPED_NAMES  # tail, leg, arm, head, red, blue
EDIT = {"tail": "no_tail", "leg": "no_leg", "arm": "no_arm", "head": "no_head"}
EDIT.update(red="red", blue="blue")
# Reference figures: the authors' matrices on the authors' lizard, one numpy run.
YARDSTICK = {
    "tail": (0.00098, 0.0062),
    "leg": (0.0023, 0.0049),
    "arm": (0.0009, 0.0034),
    "head": (0.0035, 0.0135),
    "red": (0.0065, 0.0116),
    "blue": (0.0074, 0.0132),
}
ARTICLE_KS = (1.0, 0.5, 0.3, 0.1, 0.0, -0.1, -0.3, -0.5, -1.0)
CURVE_KS = tuple(np.round(np.arange(-1.0, 2.0001, 0.25), 2))
COMPOSITION_KS = (1.0, 0.75, 0.5, 0.25, 0.0)
STEPS = 200
FRAMES_EVERY = 5
ONOFF = "on:0-150,off:150-300,on:300-450"  # the article's 500/1000/1500, shortened
ONOFF_STEPS = 450
MAX_FRAMES = 200
ZOOM = 2


def _setups(ref: Path | None) -> list[dict]:
    """The (model, matrices, targets) sets to report: the authors' and the shipped ones."""
    out = []
    if ref is not None and (ref / "original" / "tail_sym_t.npy").is_file():
        t = ref / "targets"
        out.append(
            {
                "label": "authors' matrices on the authors' lizard",
                "tag": "authors",
                "params": io.load_model(
                    str(ref / "original" / "growing_lizard_base_model.json"), "growing"
                ),
                "matrices": {
                    n: perturbation.load_matrix(str(ref / "original" / f"{n}_sym_t.npy"))
                    for n in NAMES
                },
                "targets": {n: str(t / f"lizard_{EDIT[n]}.png") for n in NAMES},
                "complete": str(t / "lizard_complete.png"),
            }
        )
    shipped = perturbation.shipped_perturbations()
    if all(n in shipped for n in NAMES):
        out.append(
            {
                "label": "shipped matrices on the shipped lizard",
                "tag": "shipped",
                "params": io.load_model("lizard", "growing"),
                "matrices": {n: perturbation.load_matrix(n) for n in NAMES},
                "targets": {n: f"lizard_{EDIT[n]}" for n in NAMES},
                "complete": "lizard",
            }
        )
    return out


def _rgb(x: np.ndarray) -> np.ndarray:
    return video.to_uint8(video.rgba_to_rgb(x))


def _tail_side_mass(x: np.ndarray, no_tail: np.ndarray) -> np.ndarray:
    """Alpha in the lower-right quadrant outside the tailless target: the tail and
    whatever grows beyond it (the article's tail-lengthening at negative k)."""
    h, w = x.shape[-3:-1]
    region = (no_tail[..., 3] < 0.1) & (np.arange(h)[:, None] >= h // 2)
    region &= np.arange(w)[None, :] >= w // 2
    return (np.clip(x[..., 3], 0, 1) * region).sum(axis=(-2, -1))


def _setup_section(rep, out: Path, s: dict, key: jax.Array) -> dict:
    tag, params, mats = s["tag"], s["params"], s["matrices"]
    tgt = {n: targets.load_target(p) for n, p in s["targets"].items()}
    complete = targets.load_target(s["complete"])
    h, w = complete.shape[:2]
    eye = np.eye(16, dtype=np.float32)

    # One program: the six, the interpolation grid of tail, the tail/leg compositions.
    interp_ks = sorted(set(ARTICLE_KS) | set(CURVE_KS))
    rows = {f"six:{n}": mats[n] for n in NAMES}
    rows.update({f"k:{k:g}": k * mats["tail"] + (1 - k) * eye for k in interp_ks})
    rows.update({f"mix:{k:g}": k * mats["tail"] + (1 - k) * mats["leg"] for k in COMPOSITION_KS})
    rows["mix:tail+leg-I"] = mats["tail"] + mats["leg"] - eye
    # Identical matrices (k = 1 is tail itself, ...) run once.
    unique: dict[bytes, int] = {}
    idx = {n: unique.setdefault(a.tobytes(), len(unique)) for n, a in rows.items()}
    names = list(rows)
    firsts = {i: n for n, i in reversed(idx.items())}
    keys = key[None]
    x0 = perturbation_eval.grow(params, h, w, keys, 0)
    sw = perturbation_eval.sweep(
        params,
        np.stack([rows[firsts[i]] for i in range(len(unique))]),
        x0,
        keys,
        STEPS,
        complete,
        complete,
        FRAMES_EVERY,
    )
    final = {n: sw["finals"][idx[n], 0] for n in names}
    loss = lambda n, t: float(growing.growing_loss(final[n], t))  # noqa: E731
    res = {}

    # ---- the six
    rep.heading(f"The six perturbations: {s['label']}", 3)
    table = []
    for n in NAMES:
        lm, lo = loss(f"six:{n}", tgt[n]), loss(f"six:{n}", complete)
        res[f"{tag}_{n}_loss"], res[f"{tag}_{n}_loss_original"] = lm, lo
        ys = YARDSTICK[n] if tag == "authors" else ("-", "-")
        table.append([n, f"lizard_{EDIT[n]}", lm, lo, lm / lo, *ys])
    rep.text(
        f"From the seed, {STEPS} steps, {h}x{w} grid, perturbation on throughout; RGBA MSE of "
        "one run (one key) to the mutated target and to the complete lizard. 'Reference': "
        "one run of the original numpy maths on the authors' files (8-run means and ranges: "
        "BUILD_NOTES.md)."
    )
    rep.table(
        [
            "matrix",
            "target",
            "loss to mutated",
            "loss to complete",
            "ratio",
            "reference: mutated",
            "reference: complete",
        ],
        table,
    )
    pics = [final[f"six:{n}"][..., :4] for n in NAMES] + [tgt[n] for n in NAMES]
    grid = video.image_grid(video.zoom(_rgb(np.stack(pics)), ZOOM), cols=6)
    rep.image(
        video.save_image(out / f"perturb_{tag}_six.png", grid),
        f"Top: the lizard after {STEPS} steps under each matrix ({', '.join(NAMES)}); "
        "bottom: the targets.",
    )
    shape_losses = {n: res[f"{tag}_{n}_loss"] / res[f"{tag}_{n}_loss_original"] for n in NAMES}
    reachable = [n for n in NAMES if shape_losses[n] < 0.7]
    weakest = max(("tail", "leg", "arm", "head"), key=lambda n: res[f"{tag}_{n}_loss"])

    # ---- interpolation
    rep.heading(f"Interpolation A_k = k·A_tail + (1-k)·I ({s['label']})", 3)
    plain_tail = float(_tail_side_mass(sw["base"][0], tgt["tail"]))
    curve = {
        k: {
            "loss_mutated": loss(f"k:{k:g}", tgt["tail"]),
            "loss_complete": loss(f"k:{k:g}", complete),
            "alive": float(sw["alive_relative"][idx[f"k:{k:g}"], 0]),
            "drift": float(sw["drift"][idx[f"k:{k:g}"], 0]),
            "tail": float(_tail_side_mass(final[f"k:{k:g}"], tgt["tail"])) / max(plain_tail, 1e-6),
        }
        for k in interp_ks
    }
    ks = np.array(interp_ks)
    series = lambda m: np.array([curve[k][m] for k in interp_ks])  # noqa: E731
    rep.image(
        report.plot_curves(
            out / f"perturb_{tag}_interp_loss.png",
            {
                "to lizard_no_tail": (ks, series("loss_mutated")),
                "to the complete lizard": (ks, series("loss_complete")),
            },
            "Loss against k (tail)",
            "k",
            "RGBA MSE",
            logy=True,
        ),
        f"One run per k, {STEPS} steps from the seed; k = 0 is A = I (the clip alone), k = 1 "
        "the trained matrix.",
    )
    rep.image(
        report.plot_curves(
            out / f"perturb_{tag}_interp_growth.png",
            {
                "living cells / unperturbed": (ks, series("alive")),
                "tail-side alpha / unperturbed": (ks, series("tail")),
            },
            "Growth against k (tail)",
            "k",
            "ratio",
            logy=True,
        ),
        "Living cells and the alpha in the lower-right quadrant outside the tailless target "
        "(the tail and anything beyond it), both relative to the unperturbed lizard.",
    )
    strip = np.stack([final[f"k:{k:g}"] for k in ARTICLE_KS])
    rep.image(
        video.save_image(
            out / f"perturb_{tag}_interp_strip.png",
            video.image_grid(video.zoom(_rgb(strip), ZOOM), cols=len(ARTICLE_KS)),
        ),
        f"Step {STEPS} for k = {', '.join(f'{k:g}' for k in ARTICLE_KS)} (left to right).",
    )
    frames = np.stack(
        [
            video.image_grid(video.zoom(_rgb(f), ZOOM), cols=len(ARTICLE_KS))
            for f in sw["frames"][[idx[f"k:{k:g}"] for k in ARTICLE_KS], 0].swapaxes(0, 1)
        ]
    )
    path = video.write_video(out / f"perturb_{tag}_interp.mp4", frames, fps=10)
    rep.video(
        path,
        f"Growth under A_k, k = {', '.join(f'{k:g}' for k in ARTICLE_KS)}; a frame every "
        f"{FRAMES_EVERY} steps.",
        poster=video.save_poster(path, frames),
    )
    for k in (1.0, 0.0, -1.0, 2.0):
        res[f"{tag}_interp_k{k:g}"] = curve[k]

    # ---- compositions
    rep.heading(f"Compositions of tail and leg ({s['label']})", 3)
    comp = []
    for k in [*COMPOSITION_KS, "tail+leg-I"]:
        n = f"mix:{k:g}" if isinstance(k, float) else f"mix:{k}"
        label = f"{k:g}·tail + {1 - k:g}·leg" if isinstance(k, float) else "tail + leg - I"
        comp.append(
            [
                label,
                loss(n, tgt["tail"]),
                loss(n, tgt["leg"]),
                loss(n, complete),
                float(sw["alive_relative"][idx[n], 0]),
                float(sw["drift"][idx[n], 0]),
            ]
        )
    rep.table(
        [
            "matrix",
            "to no_tail",
            "to no_leg",
            "to complete",
            "living / unperturbed",
            "drift (rows, + = down)",
        ],
        comp,
    )
    res[f"{tag}_tail_plus_leg"] = dict(
        zip(["loss_no_tail", "loss_no_leg", "loss_complete", "alive", "drift"], comp[-1][1:])
    )

    # ---- on/off/on, tail and tail + leg - I
    on = perturbation.parse_schedule(ONOFF, ONOFF_STEPS)
    phases = perturbation.parse_phases(ONOFF, ONOFF_STEPS)
    first_off = phases[0][2]
    drift_curves, phase_rows, videos = {}, [], []
    plain = np.asarray(
        perturbation_eval.perturbed_rollout(
            params, eye, x0[0], key, np.zeros(ONOFF_STEPS, bool), "rgba"
        )
    )
    for label, a in (("tail", mats["tail"]), ("tail + leg - I", rows["mix:tail+leg-I"])):
        traj = np.asarray(perturbation_eval.perturbed_rollout(params, a, x0[0], key, on, "rgba"))
        for ph_on, start, end in phases:
            x = traj[end - 1]
            phase_rows.append(
                [
                    label,
                    f"{'on' if ph_on else 'off'} {start}-{end}",
                    float(growing.growing_loss(x, tgt["tail"])),
                    float(growing.growing_loss(x, tgt["leg"])),
                    float(growing.growing_loss(x, complete)),
                ]
            )
        com = np.asarray(perturbation_eval.centre_of_mass_y(traj))
        drift_curves[label] = (
            np.arange(1, ONOFF_STEPS + 1),
            com - np.asarray(perturbation_eval.centre_of_mass_y(plain)),
        )
        videos.append(perturbation_eval.schedule_frames(traj, on, ZOOM, max_frames=MAX_FRAMES))
    res[f"{tag}_onoff"] = phase_rows
    rep.text(
        f"On/off/on ({ONOFF}; the article: on < 500, off 500-1000, on >= 1000 of 1500), one "
        "run from the seed, loss at the end of each phase."
    )
    rep.table(["matrix", "phase", "to no_tail", "to no_leg", "to complete"], phase_rows)
    frames = np.concatenate(videos, axis=2)
    path = video.write_video(out / f"perturb_{tag}_onoff.mp4", frames, fps=20)
    rep.video(
        path,
        "Left: tail; right: tail + leg - I. Bar: red while on, green while off.",
        # The poster: the end of the first "on" phase (the mutated pattern).
        poster=video.save_poster(
            path, frames, index=max(first_off // -(-ONOFF_STEPS // MAX_FRAMES) - 1, 0)
        ),
    )
    rep.image(
        report.plot_curves(
            out / f"perturb_{tag}_onoff_drift.png",
            drift_curves,
            "Vertical drift of the centre of mass (on/off/on)",
            "step",
            "rows below the unperturbed lizard",
            vline=first_off,
        ),
        "Alpha-weighted centre of mass, relative to the unperturbed run with the same key.",
    )
    max_drift = {
        label: (float(np.abs(d[:first_off]).max()), float(np.abs(d).max()))
        for label, (_, d) in drift_curves.items()
    }
    res[f"{tag}_onoff_max_drift"] = max_drift

    # ---- the article, point by point
    grow_neg, grow_pos = curve[-1.0]["alive"], curve[2.0]["alive"]
    claims = [
        [
            "all six targets reachable",
            f"{len(reachable)}/6 closer to their target than to the lizard (loss ratio < 0.7): "
            + ", ".join(f"{n} {shape_losses[n]:.2f}" for n in NAMES),
        ],
        [
            "headless is the weakest",
            f"highest loss to its target among the shape edits: {weakest}"
            f" ({res[f'{tag}_{weakest}_loss']:.4f})",
        ],
        [
            "negative k lengthens the tail",
            f"tail-side alpha vs unperturbed: k=-1 {curve[-1.0]['tail']:.2f}, k=-0.5 "
            f"{curve[-0.5]['tail']:.2f}, k=0 {curve[0.0]['tail']:.2f}, k=1 {curve[1.0]['tail']:.2f}",
        ],
        [
            "unbounded growth as |k| grows",
            f"living cells vs unperturbed: k=-1 {grow_neg:.2f}, k=0 {curve[0.0]['alive']:.2f}, "
            f"k=1 {curve[1.0]['alive']:.2f}, k=2 {grow_pos:.2f}",
        ],
        [
            "tail + leg drifts vertically",
            "max |drift| in the first on phase / over the whole on/off/on run: tail + leg - I "
            + "{:.2f} / {:.2f} rows, tail alone {:.2f} / {:.2f} rows".format(
                *max_drift["tail + leg - I"], *max_drift["tail"]
            ),
        ],
    ]
    rep.heading(f"Against the article ({s['label']})", 3)
    rep.table(["article", "measured here (one run each)"], claims)
    res[f"{tag}_claims"] = claims
    return res


def section(rep: report.HtmlReport, out: Path, ref: Path | None, key: jax.Array) -> dict:
    """The perturbations section; returns its numbers (JSON-ready)."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep.heading("Global state perturbations")
    rep.text(
        "One symmetric 16x16 matrix A multiplies the state of every living cell before each "
        "step of the frozen lizard CA: x = clip(x @ A, -3, 3) * alive(x) (the original's maths; "
        "note that even A = I is not a no-op, the clip bites on hidden channels that reach ~12)."
    )
    setups = _setups(ref)
    if not setups:
        rep.text(
            "No perturbation matrices available: neither ../shared/reference (the authors') "
            "nor all six shipped ones in nca_adv/assets/perturbations."
        )
        return {}
    res = {}
    for i, s in enumerate(setups):
        res.update(_setup_section(rep, out, s, jax.random.fold_in(key, i)))
    res["perturbations_seconds"] = round(time.perf_counter() - t0, 1)
    return res


FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Flags of the stand-alone launch only: importing :func:`section` (as reproduce does)
    must not define them twice."""
    flags.DEFINE_string("out", "out/perturbations", "Folder for report.html and its media.")
    flags.DEFINE_string(
        "reference",
        str(Path(__file__).resolve().parents[1].parent / "shared" / "reference"),
        "The authors' published files (optional).",
    )
    flags.DEFINE_integer("seed", 0, "PRNG seed.")


def main(argv):
    del argv
    out = Path(FLAGS.out)
    ref = Path(FLAGS.reference)
    rep = report.HtmlReport(out / "report.html", "nca-adv: global state perturbations")
    res = section(
        rep, out, ref if (ref / "original").is_dir() else None, jax.random.PRNGKey(FLAGS.seed)
    )
    print_result({"report": str(rep.write()), **res})


if __name__ == "__main__":
    _define_flags()
    run(main)
