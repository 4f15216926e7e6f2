"""Evaluate a Growing CA: grow from the seed, report the loss and living cells at a step.

  python -m experiments.eval_growing --model=lizard --target=lizard --steps=200 --seed=0
  python -m experiments.eval_growing --model=../shared/reference/original/growing_lizard_base_model.json \
      --target=../shared/reference/targets/noto_emoji_u1f98e_2018.png --video=out/lizard.mp4

The last line of stdout is one JSON object (loss, alive_cells, ...).
"""

from __future__ import annotations

import jax
import numpy as np
from absl import app, flags

from experiments.common import print_result
from nca_adv import growing, io, masks, targets, video

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "model", "lizard", "Shipped model name, .npz, TF.js .json or a training workdir."
)
flags.DEFINE_string("target", "lizard", "Shipped target name or path to an RGBA PNG.")
flags.DEFINE_integer("steps", 200, "CA steps from the seed.", lower_bound=0)
flags.DEFINE_integer("seed", 0, "PRNG seed of the stochastic updates.")
flags.DEFINE_integer("runs", 1, "Independent rollouts (batch); loss is their mean.", lower_bound=1)
flags.DEFINE_integer(
    "damage_at", None, "Cut a random circle out of the pattern after this step.", lower_bound=0
)
flags.DEFINE_string("video", None, "Write the rollout of the first run to this .mp4 or .gif.")
flags.DEFINE_integer("zoom", 4, "Video upscaling factor.", lower_bound=1)


def main(argv):
    del argv
    if FLAGS.video and FLAGS.steps == 0:
        raise app.UsageError("--video needs --steps >= 1")
    if FLAGS.damage_at is not None and FLAGS.damage_at >= FLAGS.steps:
        raise app.UsageError("--damage_at must be smaller than --steps")
    params = io.load_model(FLAGS.model, "growing")
    target = targets.load_target(FLAGS.target)
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
        "loss": float(loss.mean()),
        "loss_per_run": loss.tolist(),
        "alive_cells": int(alive[0]) if FLAGS.runs == 1 else alive.tolist(),
        "finite": bool(np.isfinite(np.asarray(final)).all()),
    }
    if trajectory:
        frames = video.zoom(video.to_uint8(video.rgba_to_rgb(np.asarray(xs[:, 0]))), FLAGS.zoom)
        result["video"] = str(video.write_video(FLAGS.video, frames))
    print_result(result)


if __name__ == "__main__":
    app.run(main)
