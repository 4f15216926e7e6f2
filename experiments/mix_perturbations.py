"""Any mix of global state perturbations on a Growing CA: video and numbers (the article's
playground as a command).

  python -m experiments.mix_perturbations tail=0.5 leg=0.5 --video=x.mp4
  python -m experiments.mix_perturbations tail leg=1 --schedule=on:0-500,off:500-1000,on:1000- \
      --steps=1500 --video=tail_leg.mp4

Each positional term is NAME=K or NAME (K = 1), NAME a shipped perturbation or a .npy
path; the matrix is sum_i K_i A_i + (1 - sum_i K_i) I. The last stdout line is JSON: per
phase, the loss to --original_target (and to --target when given), the living cells
relative to the unperturbed runs and the vertical drift of the centre of mass (rows,
positive = down), each as a mean and per run.
"""

from __future__ import annotations

import jax
import numpy as np
from absl import app, flags

from nca_adv import io
from nca_adv.attacks import perturbation
from nca_adv.evaluation import perturbation_eval
from nca_adv.io import targets
from nca_adv.media import video

from . import cli
from .common import print_result

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "lizard", "The CA: shipped name, .npz, TF.js .json or a workdir.")
flags.DEFINE_string("target", None, "Optional mutated target (name or RGBA PNG): adds its loss.")
flags.DEFINE_string("original_target", "lizard", "The unmodified target (name or RGBA PNG).")
flags.DEFINE_integer(
    "padding",
    targets.TARGET_PADDING,
    "Empty border around the 40x40 target.",
    lower_bound=0,
    upper_bound=1000,
)
flags.DEFINE_integer("steps", 200, "CA steps.", lower_bound=1, upper_bound=10**6)
flags.DEFINE_integer("seed", 0, "PRNG seed.")
flags.DEFINE_integer(
    "runs", 1, "Independent runs (one key each).", lower_bound=1, upper_bound=100_000
)
flags.DEFINE_string(
    "schedule", None, "Phases such as on:0-500,off:500-1000,on:1000- (default: on throughout)."
)
flags.DEFINE_enum(
    "x0", "seed", ["seed", "grown"], "Start from the seed or a lizard grown --grow_first steps."
)
flags.DEFINE_integer(
    "grow_first", 200, "With --x0=grown: base-only steps first.", lower_bound=0, upper_bound=10**6
)
flags.DEFINE_string("video", None, "Write the first run as .mp4 or .gif.")
flags.DEFINE_integer("zoom", 4, "Video upscaling factor.", lower_bound=1, upper_bound=64)


def main(argv):
    terms = argv[1:]
    if not terms:
        raise app.UsageError("give the mix as terms, e.g. tail=0.5 leg=0.5")
    if FLAGS["grow_first"].present and FLAGS.x0 != "grown":
        raise app.UsageError("--grow_first is used only with --x0=grown")
    if FLAGS["zoom"].present and not FLAGS.video:
        raise app.UsageError("--zoom is used only with --video")
    if FLAGS.video:
        cli.check_output_file(FLAGS.video, "video", video.FORMATS)
    side = targets.TARGET_SIZE + 2 * FLAGS.padding  # a PNG target is thumbnailed to fit 40x40
    state = side * side * perturbation.CHANNELS * 4
    # perturbed and unperturbed runs, each with one step's features; the video's frames
    need = 2 * FLAGS.runs * state * 16
    if FLAGS.video:
        need += FLAGS.steps * (state // 4 + (side * FLAGS.zoom) ** 2 * 3)
    cli.check_memory(need, f"a {side}x{side} grid (--padding={FLAGS.padding}), --runs={FLAGS.runs}")
    spec = ",".join(terms)
    params = io.load_ca(FLAGS.model, "growing")  # the model's own architecture and fire rate
    a = perturbation.load_perturbation(spec, params.model.channels)
    phases = perturbation.parse_phases(FLAGS.schedule, FLAGS.steps)
    named = {"original": targets.load_target(FLAGS.original_target, padding=FLAGS.padding)}
    if FLAGS.target:
        named["target"] = targets.load_target(FLAGS.target, padding=FLAGS.padding)
        if named["target"].shape != named["original"].shape:
            raise app.UsageError("--target and --original_target differ in size")
    h, w = named["original"].shape[:2]
    k_grow, k_run = jax.random.split(jax.random.PRNGKey(FLAGS.seed))
    grow = FLAGS.grow_first if FLAGS.x0 == "grown" else 0
    x0 = perturbation_eval.grow(params, h, w, jax.random.split(k_grow, FLAGS.runs), grow)
    keys = jax.random.split(k_run, FLAGS.runs)
    runs = perturbation_eval.run_phases(params, a, x0, keys, phases)
    # The same runs unperturbed (same keys), for the relative measures.
    base = perturbation_eval.run_phases(params, a, x0, keys, [(False, s, e) for _, s, e in phases])
    result = {
        "mix": perturbation.parse_mix_terms(spec),
        "model": FLAGS.model,
        "fire_rate": params.model.fire_rate,
        "steps": FLAGS.steps,
        "seed": FLAGS.seed,
        "runs": FLAGS.runs,
        "x0": FLAGS.x0,
        "matrix_eigenvalues": [float(v) for v in np.linalg.eigvalsh(a.astype(np.float64))[[0, -1]]],
        "phases": [
            {
                "on": r.on,
                "start": r.start,
                "end": r.end,
                **perturbation_eval.measures(r.state, b.state, named),
            }
            for r, b in zip(runs, base)
        ],
    }
    if FLAGS.video:
        on = perturbation.parse_schedule(FLAGS.schedule, FLAGS.steps)
        rgba = perturbation_eval.perturbed_rollout(params, a, x0[0], keys[0], on, "rgba")
        frames = perturbation_eval.schedule_frames(np.asarray(rgba), on, FLAGS.zoom)
        result["video"] = str(video.write_video(FLAGS.video, frames))
    print_result(result)


POSITIONAL_ARGS = True  # the mix's terms


if __name__ == "__main__":
    cli.run(main, positional_args=POSITIONAL_ARGS)
