"""Report section: the Growing Neural CA (the shipped lizard, and the authors' when
../shared/reference is there). ``section(rep, out, ref, key, runs)``.

One compiled program (200 steps, ``runs`` states, trajectory) serves every rollout: grow
all runs; cut the second half and run all of them 200 more steps; the authors' lizard.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nca_adv import io
from nca_adv.io import targets
from nca_adv.media import report, video
from nca_adv.models import growing, masks

from . import report_media as media

LIZARD_STEPS = 200  # grow for 200 steps; then 200 more, cut or not


@functools.partial(jax.jit, static_argnames="first")
def _cut_runs(x: jax.Array, key: jax.Array, first: int) -> jax.Array:
    """Cut a random circle out of the runs ``x[first:]``; one program, not many small ones."""
    return jnp.concatenate([x[:first], growing.damage(x[first:], key)])


@jax.jit
def _scores(x: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per run: the loss to ``target`` and the number of alive cells."""
    return growing.growing_loss(x, target), masks.alive_mask(x).sum(axis=(1, 2, 3))


def section(
    rep: report.HtmlReport, out: Path, ref: Path | None, key: jax.Array, runs: int = 8
) -> dict:
    """The lizard section: growth, regeneration and loss of ``runs`` rollouts (the first
    half never cut, the second half cut after 200 steps); returns its numbers."""
    if runs < 2:
        raise ValueError(f"the lizard section needs runs >= 2 (half are cut), got {runs}")
    rep.heading("Growing Neural CA: the lizard")
    params = io.load_model("lizard", "growing")
    target = targets.load_target("lizard")
    h, w = target.shape[:2]
    half = runs // 2
    seed = growing.seed_state(h, w)
    x0 = jnp.broadcast_to(seed, (runs, h, w, growing.CHANNELS))
    k_grow, k_cut, k_on, k_ref = jax.random.split(key, 4)

    # One compiled program (200 steps, `runs` states, trajectory) serves every rollout here.
    with media.timed("lizard: rollouts"):
        first = growing.rollout(params, x0, k_grow, LIZARD_STEPS, trajectory=True)
        at200 = first[-1]
        cut = _cut_runs(at200, k_cut, half)
        second = growing.rollout(params, cut, k_on, LIZARD_STEPS, trajectory=True)
        loss200, alive = map(np.asarray, _scores(at200, target))
        loss400 = np.asarray(_scores(second[-1], target)[0])
        first, cut, second = np.asarray(first), np.asarray(cut), np.asarray(second)
    seed = np.asarray(seed)

    uncut = np.concatenate([seed[None, None], first[:, :1], second[:, :1]])  # steps 0..400
    media.add_video(
        rep,
        out / "lizard_growth.mp4",
        media.run_frames(uncut),
        f"Growing from one cell, {2 * LIZARD_STEPS} steps (run 1 of {runs}, never cut).",
    )
    shown = [0, 20, 40, 60, 100, 150, 200, 400]
    rep.image(
        video.save_image(
            out / "lizard_growth_strip.png",
            video.image_grid(video.zoom(media.rgb(uncut[shown, 0]), 2), cols=4),
        ),
        f"Run 1 at steps {shown}.",
    )

    cut_runs = np.arange(half, runs)
    regen = np.concatenate(
        [
            np.broadcast_to(seed, (1, len(cut_runs), *seed.shape)),
            first[:, cut_runs],
            cut[None, cut_runs],
            second[:, cut_runs],
        ]
    )  # step 0 .. 200, the cut, steps 201 .. 400
    media.add_video(
        rep,
        out / "lizard_regeneration.mp4",
        media.run_frames(regen),
        f"Regeneration: runs {half + 1}-{runs} grown for {LIZARD_STEPS} steps, each cut by a "
        f"random circle, then {LIZARD_STEPS} more steps (poster: the cut).",
        poster_at=LIZARD_STEPS + 1,
    )
    picks = [200, 201, 221, 251, 301, 401]  # frames: step 200, the cut, steps 220 .. 400
    grid = media.rgb(regen[picks].transpose(1, 0, 2, 3, 4).reshape(-1, h, w, growing.CHANNELS))
    rep.image(
        video.save_image(
            out / "lizard_regeneration_grid.png",
            video.image_grid(video.zoom(grid, media.fit_zoom(len(picks), w)), cols=len(picks)),
        ),
        "Rows: the cut runs; columns: step 200 (before the cut), the cut, then steps 220, 250, "
        "300, 400.",
    )

    rows = [
        [
            "shipped lizard",
            "shipped lizard target",
            float(loss200.mean()),
            float(loss200.std()),
            float(alive.mean()),
            float(loss400[:half].mean()),
            float(loss400[half:].mean()),
        ]
    ]
    result = {
        "growing_runs": runs,
        "lizard_loss_step200": float(loss200.mean()),
        "lizard_loss_step400_uncut": float(loss400[:half].mean()),
        "lizard_loss_after_regrowth": float(loss400[half:].mean()),
    }
    if ref is not None:
        ref_params = io.load_model(
            str(ref / "original" / "growing_lizard_base_model.json"), "growing"
        )
        ref_target = targets.load_target(str(ref / "targets" / "noto_emoji_u1f98e_2018.png"))
        if ref_target.shape != target.shape:
            raise ValueError(f"authors' target {ref_target.shape} != shipped {target.shape}")
        with media.timed("lizard: authors' rollout"):
            ref_final = growing.rollout(ref_params, x0, k_ref, LIZARD_STEPS, trajectory=True)[-1]
            ref_loss, ref_alive = map(np.asarray, _scores(ref_final, ref_target))
        rows.append(
            [
                "authors' lizard (TF.js import)",
                "2018 Noto lizard",
                float(ref_loss.mean()),
                float(ref_loss.std()),
                float(ref_alive.mean()),
                "-",
                "-",
            ]
        )
        result["authors_lizard_loss_step200"] = float(ref_loss.mean())
    rep.text(
        f"Loss = mean over H, W, RGBA of the squared error to the target. At step 200: over "
        f"{runs} runs from the seed. Then runs 1-{half} grow on uncut and "
        f"runs {half + 1}-{runs} are cut by a random circle; both go on for 200 steps."
    )
    rep.table(
        [
            "model",
            "target",
            f"loss @200 (mean of {runs})",
            "std",
            "alive cells @200",
            f"loss @400 uncut ({half} runs)",
            f"loss after cut + 200 ({runs - half} runs)",
        ],
        rows,
    )

    curve = media.shipped_curve("lizard")
    if curve is not None:
        it, lo = curve
        plot = report.plot_curves(
            out / "lizard_training_loss.png",
            {
                "loss": (it, lo),
                "moving average (25)": (it[len(it) - len(media.smooth(lo)) :], media.smooth(lo)),
            },
            f"Training loss of the shipped lizard ({it[-1]} iterations)",
            "iteration",
            "loss",
            logy=True,
        )
        rep.image(plot, "Batch loss per training iteration (pool, 64-95 steps, damage).")
        result["lizard_training_iterations"] = int(it[-1])
    return result
