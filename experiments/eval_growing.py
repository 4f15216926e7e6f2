"""Evaluate a Growing CA: grow from the seed, report the loss and living cells at a step.

  python -m experiments.eval_growing --model=lizard --target=lizard --steps=200 --seed=0
  python -m experiments.eval_growing --model=../shared/reference/original/growing_lizard_base_model.json \
      --target=../shared/reference/targets/noto_emoji_u1f98e_2018.png --video=out/lizard.mp4
  python -m experiments.eval_growing --model=lizard --adversary=lizard_no_tail_adversary \
      --adversary_fraction=0.1 --target=lizard_no_tail --original_target=lizard --padding=24 \
      --grow_first=200 --steps=500 --runs=6   # adversarial cells: loss, loss_original per run

The last line of stdout is one JSON object (loss, alive_cells, ...).
"""

from __future__ import annotations

import jax
import numpy as np
from absl import app, flags

from experiments.common import check_output_file, print_result, run
from nca_adv import io
from nca_adv.attacks import adversaries, perturbation
from nca_adv.evaluation import adversary_eval, perturbation_eval
from nca_adv.io import targets
from nca_adv.media import adversary_pictures, video
from nca_adv.models import growing, masks

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "model", "lizard", "Shipped model name, .npz, TF.js .json or a training workdir."
)
flags.DEFINE_string("target", "lizard", "Shipped target name or path to an RGBA PNG.")
flags.DEFINE_string(
    "original_target",
    None,
    "With an attack: the unmodified target (name or PNG); JSON adds loss_original to it.",
)
flags.DEFINE_integer(
    "padding",
    targets.TARGET_PADDING,
    "Cells of empty border around the 40x40 target.",
    lower_bound=0,
)
flags.DEFINE_integer("steps", 200, "CA steps from the seed.", lower_bound=0)
flags.DEFINE_integer("seed", 0, "PRNG seed of the stochastic updates.")
flags.DEFINE_integer("runs", 1, "Independent rollouts (batch); loss is their mean.", lower_bound=1)
flags.DEFINE_integer(
    "damage_at", None, "Cut a random circle out of the pattern after this step.", lower_bound=0
)
flags.DEFINE_string("video", None, "Write the rollout of the first run to this .mp4 or .gif.")
flags.DEFINE_integer("zoom", 4, "Video upscaling factor.", lower_bound=1)
flags.DEFINE_string(
    "adversary",
    None,
    "Adversary model spec (as --model): grow with --model alone for --grow_first steps, "
    "inject adversaries (one mask per run), then run --steps mixed steps.",
)
flags.DEFINE_float(
    "adversary_fraction",
    0.1,
    "With --adversary: share of the cells under the mutated --target that run it.",
    lower_bound=0.0,
    upper_bound=1.0,
)
flags.DEFINE_integer(
    "grow_first", 200, "With --adversary: base-only steps before injection.", lower_bound=0
)
flags.DEFINE_string(
    "perturbation",
    None,
    "Global state perturbation: a shipped name (tail, leg, arm, head, red, blue), a .npy "
    "16x16 symmetric matrix, or a mix such as tail=1,leg=1 (sum k_i A_i + (1 - sum k_i) I).",
)
flags.DEFINE_string(
    "perturbation_schedule",
    None,
    "With --perturbation: phases such as on:0-500,off:500-1000,on:1000- covering --steps "
    "(default: on throughout); JSON adds per-phase losses.",
)
flags.DEFINE_enum(
    "x0",
    "seed",
    ["seed", "grown"],
    "With --perturbation: start from the seed, or from a lizard grown by --model alone for "
    "--grow_first steps.",
)


def main(argv):
    del argv
    if FLAGS.video and FLAGS.steps == 0:
        raise app.UsageError("--video needs --steps >= 1")
    if FLAGS.damage_at is not None and FLAGS.damage_at >= FLAGS.steps:
        raise app.UsageError("--damage_at must be smaller than --steps")
    if FLAGS.video:
        check_output_file(FLAGS.video, "video", video.FORMATS)
    params = io.load_model(FLAGS.model, "growing")
    target = targets.load_target(FLAGS.target, padding=FLAGS.padding)
    if FLAGS.adversary:
        return print_result(_adversary_result(params, target))
    if FLAGS.perturbation:
        return print_result(_perturbation_result(params, target))
    h, w = target.shape[:2]
    x0 = np.broadcast_to(np.asarray(growing.seed_state(h, w)), (FLAGS.runs, h, w, growing.CHANNELS))
    trajectory = FLAGS.video is not None
    xs = growing.rollout_with_damage(
        params, x0, jax.random.PRNGKey(FLAGS.seed), FLAGS.steps, FLAGS.damage_at, trajectory
    )
    final = xs[-1] if trajectory else xs
    loss = np.asarray(growing.growing_loss(final, target))
    alive = np.asarray(masks.alive_mask(final)).sum(axis=(1, 2, 3))
    result = {
        "model": FLAGS.model,
        "target": FLAGS.target,
        "steps": FLAGS.steps,
        "seed": FLAGS.seed,
        "runs": FLAGS.runs,
        "damage_at": FLAGS.damage_at,
        "loss": float(loss.mean()),
        "loss_per_run": loss.tolist(),
        "alive_cells": float(alive.mean()),
        "alive_cells_per_run": alive.tolist(),
        "finite": bool(np.isfinite(np.asarray(final)).all()),
    }
    if trajectory:
        frames = video.zoom(video.to_uint8(video.rgba_to_rgb(np.asarray(xs[:, 0]))), FLAGS.zoom)
        result["video"] = str(video.write_video(FLAGS.video, frames))
    print_result(result)


def _adversary_result(params, target) -> dict:
    """--adversary: the article's protocol (adversaries.growing_attack), per-run losses."""
    if FLAGS.damage_at is not None:
        raise app.UsageError("--damage_at does not combine with --adversary")
    adv = adversaries.load_adversary(FLAGS.adversary, "growing", params)
    p = FLAGS.adversary_fraction
    key = jax.random.PRNGKey(FLAGS.seed)
    trajectory = FLAGS.video is not None
    run = adversary_eval.growing_attack(
        params, adv, target, key, FLAGS.runs, p, FLAGS.grow_first, FLAGS.steps, trajectory
    )
    final = np.asarray(run.states[-1] if trajectory else run.states)
    loss = np.asarray(growing.growing_loss(final, target))
    result = {
        "model": FLAGS.model,
        "adversary": FLAGS.adversary,
        "adversary_fraction": p,
        "target": FLAGS.target,
        "padding": FLAGS.padding,
        "grow_first": FLAGS.grow_first,
        "steps": FLAGS.steps,
        "seed": FLAGS.seed,
        "runs": FLAGS.runs,
        "loss": float(loss.mean()),
        "loss_per_run": loss.tolist(),
        "adversary_cells_per_run": np.asarray(run.masks).sum(axis=(1, 2, 3)).astype(int).tolist(),
        "alive_cells_per_run": np.asarray(masks.alive_mask(final)).sum(axis=(1, 2, 3)).tolist(),
        "finite": bool(np.isfinite(final).all()),
    }
    if FLAGS.original_target:
        original = targets.load_target(FLAGS.original_target, padding=FLAGS.padding)
        if original.shape != target.shape:
            raise app.UsageError(f"--original_target {original.shape} != --target {target.shape}")
        loss_o = np.asarray(growing.growing_loss(final, original))
        result.update(loss_original=float(loss_o.mean()), loss_original_per_run=loss_o.tolist())
    if trajectory:  # injection onward, adversaries marked; then 1.5 s with them hidden
        states, mask = np.asarray(run.states[:, 0]), np.asarray(run.masks[0])
        frames = np.concatenate(
            [
                adversary_pictures.growing_frames(states, mask, FLAGS.zoom),
                np.repeat(
                    adversary_pictures.growing_frames(states[-1:], mask, FLAGS.zoom, hide=True),
                    45,
                    axis=0,
                ),
            ]
        )
        result["video"] = str(video.write_video(FLAGS.video, frames))
    return result


def _perturbation_result(params, target) -> dict:
    """--perturbation: the perturbed rollout, one key per run, losses per phase."""
    if FLAGS.damage_at is not None or FLAGS.adversary:
        raise app.UsageError("--perturbation does not combine with --damage_at or --adversary")
    if FLAGS.steps < 1:
        raise app.UsageError("--perturbation needs --steps >= 1")
    a = perturbation.load_perturbation(FLAGS.perturbation)
    phases = perturbation.parse_phases(FLAGS.perturbation_schedule, FLAGS.steps)
    original = None
    if FLAGS.original_target:
        original = targets.load_target(FLAGS.original_target, padding=FLAGS.padding)
        if original.shape != target.shape:
            raise app.UsageError(f"--original_target {original.shape} != --target {target.shape}")
    h, w = target.shape[:2]
    k_grow, k_run = jax.random.split(jax.random.PRNGKey(FLAGS.seed))
    grow_steps = FLAGS.grow_first if FLAGS.x0 == "grown" else 0
    x0 = perturbation_eval.grow(params, h, w, jax.random.split(k_grow, FLAGS.runs), grow_steps)
    keys = jax.random.split(k_run, FLAGS.runs)
    runs = perturbation_eval.run_phases(params, a, x0, keys, phases)

    def losses(x) -> dict:
        out = {"loss": np.asarray(growing.growing_loss(x, target))}
        if original is not None:
            out["loss_original"] = np.asarray(growing.growing_loss(x, original))
        return {
            **{k: float(v.mean()) for k, v in out.items()},
            **{f"{k}_per_run": v.tolist() for k, v in out.items()},
        }

    final = runs[-1].state
    result = {
        "model": FLAGS.model,
        "perturbation": FLAGS.perturbation,
        "schedule": [f"{'on' if r.on else 'off'}:{r.start}-{r.end}" for r in runs],
        "x0": FLAGS.x0,
        "grow_first": grow_steps,
        "target": FLAGS.target,
        "original_target": FLAGS.original_target,
        "padding": FLAGS.padding,
        "steps": FLAGS.steps,
        "seed": FLAGS.seed,
        "runs": FLAGS.runs,
        **losses(final),
        "alive_cells_per_run": np.asarray(masks.alive_mask(final)).sum(axis=(1, 2, 3)).tolist(),
        "finite": bool(np.isfinite(final).all()),
    }
    if FLAGS.perturbation_schedule:
        result["phases"] = [
            {"on": r.on, "start": r.start, "end": r.end, **losses(r.state)} for r in runs
        ]
    if FLAGS.video:
        on = perturbation.parse_schedule(FLAGS.perturbation_schedule, FLAGS.steps)
        rgba = perturbation_eval.perturbed_rollout(params, a, x0[0], keys[0], on, "rgba")
        frames = perturbation_eval.schedule_frames(np.asarray(rgba), on, FLAGS.zoom)
        result["video"] = str(video.write_video(FLAGS.video, frames))
    return result


if __name__ == "__main__":
    run(main)
