"""Report section: the Self-classifying MNIST CA (the shipped model, and the authors' when
../shared/reference is there). ``section(rep, out, ref, key, digits, swap_digits)``.

One compiled 200-step program gives both models' accuracy on the same ``digits`` test
digits; one 400-step program (swap at 200, trajectory) gives the swap protocol on the first
``swap_digits`` of them and the video.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nca_adv import io
from nca_adv.io import data
from nca_adv.media import report, video
from nca_adv.models import mnist

from . import report_media as media

MNIST_STEPS, MNIST_SWAP_AT = 400, 200
VIDEO_DIGITS = 16
# XLA's generator rather than threefry for the MNIST rollouts: the same statistics, and on
# the CPU their programs compile in half the time and run ~20 % faster (BUILD_NOTES.md).
MNIST_PRNG = "rbg"


def _key_of_impl(key: jax.Array, impl: str) -> jax.Array:
    """A PRNG key of implementation ``impl`` (e.g. "rbg") whose data are drawn from ``key``."""
    shape = jax.random.key_data(jax.random.key(0, impl=impl)).shape
    return jax.random.wrap_key_data(jax.random.bits(key, shape, jnp.uint32), impl=impl)


def _video(rep, out: Path, states: np.ndarray, labs: np.ndarray) -> None:
    """The swap protocol's trajectory (steps, B, 28, 28, 20) as a vote-coloured video of
    every second step (frame j: after step 2j + 2)."""
    shown = min(VIDEO_DIGITS, states.shape[1])
    cols = min(8, shown)
    frames = np.stack(
        [
            video.image_grid(
                np.stack([video.mnist_frame(x, int(lab)) for x, lab in zip(xs, ls)]), cols=cols
            )
            for xs, ls in zip(states[1::2, :shown], labs[1::2, :shown])
        ]
    )
    media.add_video(
        rep,
        out / "mnist_classification.mp4",
        video.zoom(frames, media.fit_zoom(1, frames.shape[2])),
        f"The first {shown} test digits, cells coloured by their vote (tab10 palette, one "
        "colour per digit), light red background where the majority is wrong; every digit is "
        f"swapped for another after step {MNIST_SWAP_AT} (poster: step {MNIST_SWAP_AT}).",
        poster_at=MNIST_SWAP_AT // 2 - 1,
        fps=20,
    )


def section(
    rep: report.HtmlReport,
    out: Path,
    ref: Path | None,
    key: jax.Array,
    digits: int = 200,
    swap_digits: int = 16,
) -> dict:
    """The MNIST section: accuracy of the first ``digits`` test digits at step 200 and the
    swap protocol on the first ``swap_digits`` of them; returns its numbers."""
    if not 2 <= swap_digits <= digits:
        raise ValueError(
            f"swap_digits must lie in [2, digits={digits}] (the swap digits are the first of "
            f"those), got {swap_digits}"
        )
    rep.heading("Self-classifying MNIST")
    n, m = digits, swap_digits
    splits = data.load_mnist()
    images = data.to_float(splits.test_images[:n])
    labels = splits.test_labels[:n].astype(np.int32)
    mnist.check_images(images)
    key = _key_of_impl(key, MNIST_PRNG)
    k_run, k_swap = jax.random.split(key)
    # Swap partners among the first m digits (a derangement): digit i becomes digit perm[i].
    perm = mnist.swap_partners(k_swap, m)
    swap_images, swap_labels = images[:m], labels[:m]
    k_all, k_swap_set = mnist.cells_needed(images), mnist.cells_needed(swap_images, images[perm])
    models = {"shipped mnist": io.load_model("mnist", "mnist")}
    if ref is not None:
        models["authors' model (TF.js import)"] = io.load_model(
            str(ref / "original" / "mnist_base_model.json"), "mnist"
        )

    # Digit i draws fold_in(fold_in(key, step), i) in both programs, so the swap run's first
    # 200 steps are the 200-step run's on the same digits. Each program compiles once and
    # serves both models.
    curves_acc, curves_agree, rows, result = {}, {}, [], {"mnist_digits": n, "swap_digits": m}
    shown = None  # the shipped model's swap trajectory, for the video
    for name, p in models.items():
        with media.timed(f"mnist: {name}, {n} digits"):
            stats = mnist.swap_rollout(p, images, labels, np.arange(n), k_run, MNIST_SWAP_AT, k_all)
            acc, agree = mnist.accuracy_curves(stats)
        with media.timed(f"mnist: {name}, {m} digits swapped"):
            stats_swap, (states, labs) = mnist.swap_rollout(
                p,
                swap_images,
                swap_labels,
                np.arange(m),
                k_run,
                MNIST_STEPS,
                k_swap_set,
                MNIST_SWAP_AT,
                images[perm],
                labels[perm],
                trajectory=True,
            )
            acc_s, agree_s = mnist.accuracy_curves(stats_swap)
        if shown is None:
            shown = (np.asarray(states), np.asarray(labs))
        del states, labs
        short = "authors'" if name.startswith("authors") else "shipped"
        curves_acc[f"{short}, {n} digits"] = (np.arange(1, MNIST_SWAP_AT + 1), acc)
        curves_agree[f"{short}, {n} digits"] = (np.arange(1, MNIST_SWAP_AT + 1), agree)
        curves_acc[f"{short}, {m} digits, swapped"] = (np.arange(1, MNIST_STEPS + 1), acc_s)
        curves_agree[f"{short}, {m} digits, swapped"] = (np.arange(1, MNIST_STEPS + 1), agree_s)
        at, end = MNIST_SWAP_AT - 1, MNIST_STEPS - 1
        rows.append(
            [name, float(acc[at]), float(agree[at])]
            + [float(acc_s[at]), float(acc_s[end]), float(agree_s[end])]
        )
        tag = "mnist" if name.startswith("shipped") else "authors_mnist"
        result[f"{tag}_cell_accuracy_step200"] = float(acc[at])
        result[f"{tag}_total_agreement_step200"] = float(agree[at])
        result[f"{tag}_swap_cell_accuracy_step200"] = float(acc_s[at])
        result[f"{tag}_swap_cell_accuracy_step400"] = float(acc_s[end])
        result[f"{tag}_swap_total_agreement_step400"] = float(agree_s[end])
    rep.text(
        f"Unseen test digits: the first {n} for the accuracy at step {MNIST_SWAP_AT}; the "
        f"first {m} of them for the article's swap protocol: after step {MNIST_SWAP_AT} each "
        f"digit is swapped for another one of the {m} (grey channel replaced, state kept "
        f"where the new digit lives), then {MNIST_STEPS - MNIST_SWAP_AT} more steps. Before "
        f"the swap the {m} digits run exactly as in the {n}-digit run. Random numbers: JAX's "
        f"{MNIST_PRNG} generator. Full 10k-digit numbers: BUILD_NOTES.md "
        "(`python -m experiments.eval_mnist`)."
    )
    rep.table(
        [
            "model",
            f"cell accuracy @200 ({n} digits)",
            f"total agreement @200 ({n})",
            f"cell acc. @200 ({m})",
            f"cell acc. @400, swapped ({m})",
            f"agreement @400, swapped ({m})",
        ],
        rows,
    )
    rep.image(
        report.plot_curves(
            out / "mnist_cell_accuracy.png",
            curves_acc,
            "Cell accuracy over time",
            "step",
            "cell accuracy",
            vline=MNIST_SWAP_AT,
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
            vline=MNIST_SWAP_AT,
        ),
        "Share of digits all of whose cells vote right.",
    )
    legend = video.image_grid(
        video.zoom(np.broadcast_to(video.CLASS_COLOURS[:, None, None], (10, 8, 8, 3)), 2), cols=10
    )
    rep.image(
        video.save_image(out / "mnist_palette.png", legend), "Palette: digits 0..9, left to right."
    )
    _video(rep, out, *shown)
    curve = media.shipped_curve("mnist")
    if curve is not None:
        it, lo = curve
        rep.image(
            report.plot_curves(
                out / "mnist_training_loss.png",
                {
                    "moving average (100)": (
                        it[len(it) - len(media.smooth(lo, 100)) :],
                        media.smooth(lo, 100),
                    )
                },
                f"Training loss of the shipped MNIST CA ({it[-1]} iterations)",
                "iteration",
                "L2 loss",
                logy=True,
            ),
            "Batch L2 loss.",
        )
        result["mnist_training_iterations"] = int(it[-1])
    return result
