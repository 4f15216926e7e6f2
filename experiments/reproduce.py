"""The main job: a report of the shipped pretrained models, written to out/report.html.

  python -m experiments.reproduce [--out=out] [--mnist_digits=1000]

Runs on the CPU in minutes, from the models shipped in the package only (no network).
When ../shared/reference (the authors' published models) is beside the project, their
numbers are measured alongside.
"""

from __future__ import annotations

import csv
import json
import time
from importlib import resources
from pathlib import Path

import jax
import numpy as np
from absl import app, flags, logging

from nca_adv import data, growing, io, masks, mnist, report, targets, video

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "out", "Output folder for report.html and its media.")
flags.DEFINE_integer("seed", 0, "PRNG seed of every rollout in the report.")
flags.DEFINE_integer("growing_runs", 8, "Rollouts averaged for the lizard's loss.", lower_bound=1)
flags.DEFINE_integer(
    "mnist_digits", 1000, "Test digits for the MNIST curves.", lower_bound=16, upper_bound=10_000
)
flags.DEFINE_string(
    "reference",
    str(Path(__file__).resolve().parents[1].parent / "shared" / "reference"),
    "The authors' published models (optional; compared when present).",
)

ZOOM = 4


def _shipped_curve(name: str) -> tuple[np.ndarray, np.ndarray] | None:
    path = Path(str(resources.files("nca_adv") / "assets" / "models" / f"{name}_metrics.csv"))
    if not path.is_file():
        return None
    rows = list(csv.DictReader(path.open()))
    return np.array([int(r["iteration"]) for r in rows]), np.array([float(r["loss"]) for r in rows])


def _smooth(y: np.ndarray, window: int = 25) -> np.ndarray:
    if len(y) < window:
        return y
    return np.convolve(y, np.ones(window) / window, mode="valid")


def _frames(states: np.ndarray) -> np.ndarray:
    """(T, B, H, W, 16) -> (T, H', W', 3) uint8 frames with the B runs side by side."""
    rgb = video.to_uint8(video.rgba_to_rgb(states))
    return np.stack(
        [video.image_grid(zoom_b, cols=len(zoom_b)) for zoom_b in video.zoom(rgb, ZOOM)]
    )


def growing_section(rep: report.HtmlReport, out: Path, ref: Path | None, key: jax.Array) -> dict:
    rep.heading("Growing Neural CA: the lizard")
    params = io.load_model("lizard", "growing")
    target = targets.load_target("lizard")
    h, w = target.shape[:2]
    seed = np.asarray(growing.seed_state(h, w))
    k_grow, k_regen, k_loss, k_ref = jax.random.split(key, 4)

    traj = np.asarray(growing.rollout(params, seed[None], k_grow, 300, trajectory=True))
    growth = np.concatenate([seed[None, None], traj])  # step 0 .. 300
    rep.video(
        video.write_video(out / "lizard_growth.mp4", _frames(growth)),
        "Growing from one cell, 300 steps.",
    )
    shown = [0, 20, 40, 60, 100, 150, 200, 300]
    strip = video.image_grid(
        video.zoom(video.to_uint8(video.rgba_to_rgb(growth[shown, 0])), 3), cols=len(shown)
    )
    rep.image(video.save_image(out / "lizard_growth_strip.png", strip), f"Steps {shown}.")

    x0 = np.broadcast_to(seed, (4, h, w, growing.CHANNELS))
    regen = np.asarray(
        growing.rollout_with_damage(params, x0, k_regen, 400, damage_at=200, trajectory=True)
    )
    rep.video(
        video.write_video(out / "lizard_regeneration.mp4", _frames(regen)),
        "Regeneration: 4 lizards grown for 200 steps, each cut by a random circle, then 200 more steps.",
    )
    picks = [199, 200, 210, 230, 260, 300, 400]
    grid = video.to_uint8(
        video.rgba_to_rgb(regen[picks].transpose(1, 0, 2, 3, 4).reshape(-1, h, w, 16))
    )
    rep.image(
        video.save_image(
            out / "lizard_regeneration_grid.png",
            video.image_grid(video.zoom(grid, 2), cols=len(picks)),
        ),
        "Rows: runs; columns: step 200 (before the cut), the cut, then steps 210, 230, 260, 300, 400.",
    )

    runs = np.broadcast_to(seed, (FLAGS.growing_runs, h, w, growing.CHANNELS))
    final = growing.rollout(params, runs, k_loss, 200)
    loss = np.asarray(growing.growing_loss(final, target))
    alive = np.asarray(masks.alive_mask(final)).sum(axis=(1, 2, 3))
    after_cut = np.asarray(growing.growing_loss(regen[-1], target))
    rows = [
        [
            "shipped lizard",
            "shipped lizard target",
            float(loss.mean()),
            float(loss.std()),
            float(alive.mean()),
            float(after_cut.mean()),
        ]
    ]
    result = {
        "lizard_loss_step200": float(loss.mean()),
        "lizard_loss_after_regrowth": float(after_cut.mean()),
    }
    if ref is not None:
        ref_params = io.load_model(
            str(ref / "original" / "growing_lizard_base_model.json"), "growing"
        )
        ref_target = targets.load_target(str(ref / "targets" / "noto_emoji_u1f98e_2018.png"))
        ref_final = growing.rollout(ref_params, runs, k_ref, 200)
        ref_loss = np.asarray(growing.growing_loss(ref_final, ref_target))
        ref_alive = np.asarray(masks.alive_mask(ref_final)).sum(axis=(1, 2, 3))
        rows.append(
            [
                "authors' lizard (TF.js import)",
                "2018 Noto lizard",
                float(ref_loss.mean()),
                float(ref_loss.std()),
                float(ref_alive.mean()),
                "-",
            ]
        )
        result["authors_lizard_loss_step200"] = float(ref_loss.mean())
    rep.text(
        f"Loss = mean over H, W, RGBA of the squared error to the target at step 200, "
        f"over {FLAGS.growing_runs} runs (seed {FLAGS.seed})."
    )
    rep.table(
        ["model", "target", "loss @200 (mean)", "std", "alive cells", "loss after cut + 200"], rows
    )

    curve = _shipped_curve("lizard")
    if curve is not None:
        it, lo = curve
        plot = report.plot_curves(
            out / "lizard_training_loss.png",
            {
                "loss": (it, lo),
                "moving average (25)": (it[len(it) - len(_smooth(lo)) :], _smooth(lo)),
            },
            f"Training loss of the shipped lizard ({it[-1]} iterations)",
            "iteration",
            "loss",
            logy=True,
        )
        rep.image(plot, "Batch loss per training iteration (pool, 64-95 steps, damage).")
        result["lizard_training_iterations"] = int(it[-1])
    return result


def mnist_section(rep: report.HtmlReport, out: Path, ref: Path | None, key: jax.Array) -> dict:
    rep.heading("Self-classifying MNIST")
    params = io.load_model("mnist", "mnist")
    splits = data.load_mnist()
    n = FLAGS.mnist_digits
    images = data.to_float(splits.test_images[:n])
    labels = splits.test_labels[:n].astype(np.int32)
    k_run, k_swap = jax.random.split(key)
    perm = mnist.swap_partners(k_swap, n)
    models = {"shipped mnist": params}
    if ref is not None:
        models["authors' model (TF.js import)"] = io.load_model(
            str(ref / "original" / "mnist_base_model.json"), "mnist"
        )
    curves_acc, curves_agree, rows, result = {}, {}, [], {}
    for name, p in models.items():
        stats = mnist.Evaluator(p).run(images, labels, k_run, 400, 200, images[perm], labels[perm])
        acc, agree = mnist.accuracy_curves(stats)
        steps = np.arange(1, 401)
        curves_acc[name], curves_agree[name] = (steps, acc), (steps, agree)
        rows.append([name, float(acc[199]), float(agree[199]), float(acc[399]), float(agree[399])])
        tag = "mnist" if name.startswith("shipped") else "authors_mnist"
        result[f"{tag}_cell_accuracy_step200"] = float(acc[199])
        result[f"{tag}_total_agreement_step200"] = float(agree[199])
    rep.text(
        f"{n} unseen test digits; each digit is swapped for another after step 200 "
        "(grey channel replaced, state kept where the new digit lives), as in the article."
    )
    rep.table(
        ["model", "cell accuracy @200", "total agreement @200", "cell acc. @400", "agreement @400"],
        rows,
    )
    rep.image(
        report.plot_curves(
            out / "mnist_cell_accuracy.png",
            curves_acc,
            "Cell accuracy over time",
            "step",
            "cell accuracy",
            vline=200,
        ),
        "Share of alive cells voting the right digit.",
    )
    rep.image(
        report.plot_curves(
            out / "mnist_total_agreement.png",
            curves_agree,
            "Total agreement over time",
            "step",
            "total agreement",
            vline=200,
        ),
        "Share of digits all of whose cells vote right.",
    )

    traj, labs = mnist.trajectory_with_swap(
        params, images[:16], labels[:16], k_run, 400, 200, images[perm][:16], labels[perm][:16]
    )
    frames = np.stack(
        [
            video.image_grid(
                np.stack([video.mnist_frame(x, int(lab)) for x, lab in zip(xs, ls)]), cols=8
            )
            for xs, ls in zip(np.asarray(traj)[::2], np.asarray(labs)[::2])
        ]
    )
    rep.video(
        video.write_video(out / "mnist_classification.mp4", video.zoom(frames, 3), fps=20),
        "16 test digits, cells coloured by their vote (tab10 palette, one colour per digit), "
        "light red background where the majority is wrong; digits swapped at step 200.",
    )
    legend = video.image_grid(
        video.zoom(np.broadcast_to(video.CLASS_COLOURS[:, None, None], (10, 8, 8, 3)), 2), cols=10
    )
    rep.image(
        video.save_image(out / "mnist_palette.png", legend), "Palette: digits 0..9, left to right."
    )
    curve = _shipped_curve("mnist")
    if curve is not None:
        it, lo = curve
        rep.image(
            report.plot_curves(
                out / "mnist_training_loss.png",
                {"moving average (100)": (it[len(it) - len(_smooth(lo, 100)) :], _smooth(lo, 100))},
                f"Training loss of the shipped MNIST CA ({it[-1]} iterations)",
                "iteration",
                "L2 loss",
                logy=True,
            ),
            "Batch L2 loss.",
        )
        result["mnist_training_iterations"] = int(it[-1])
    return result


def main(argv):
    del argv
    t0 = time.perf_counter()
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    ref = Path(FLAGS.reference)
    ref = ref if (ref / "original").is_dir() else None
    if ref is None:
        logging.warning(
            "reference models not found at %s: the report shows the shipped models only",
            FLAGS.reference,
        )
    rep = report.HtmlReport(out / "report.html", "nca-adv: reproduction report")
    rep.text(f"JAX {jax.__version__} on {jax.devices()[0].platform}; seed {FLAGS.seed}.")
    key = jax.random.PRNGKey(FLAGS.seed)
    k_grow, k_mnist = jax.random.split(key)
    results = {}
    logging.info("growing CA section")
    results.update(growing_section(rep, out, ref, k_grow))
    logging.info("MNIST section")
    results.update(mnist_section(rep, out, ref, k_mnist))
    results["seconds"] = round(time.perf_counter() - t0, 1)
    rep.text(f"Made in {results['seconds']} s.")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    path = rep.write()
    print(json.dumps({"report": str(path), **results}))


def run():
    """Console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    run()
