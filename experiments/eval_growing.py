"""Evaluate a Growing CA: grow from the seed, report the loss and living cells at a step.

  python -m experiments.eval_growing --model=lizard --target=lizard --steps=200 --seed=0
  python -m experiments.eval_growing --model=../shared/reference/original/growing_lizard_base_model.json \
      --target=../shared/reference/targets/noto_emoji_u1f98e_2018.png --video=out/lizard.mp4
  python -m experiments.eval_growing --model=lizard --adversary=runs/no_tail \
      --adversary_fraction=0.1 --target=lizard_no_tail --original_target=lizard --padding=24 \
      --grow_first=200 --steps=500 --runs=6   # adversarial cells: loss, loss_original per run
  python -m experiments.eval_growing --adversary=runs/no_tail --perturbation=tail \
      --target=lizard_no_tail --original_target=lizard   # the attack under a perturbation

Every flag given is used: one that the chosen mode ignores is refused in one line.

The last line of stdout is one JSON object (loss, alive_cells, ...).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from nca_adv import io
from nca_adv.attacks import adversaries, perturbation
from nca_adv.evaluation import adversary_eval, guards, perturbation_eval
from nca_adv.io import targets
from nca_adv.media import adversary_pictures, video
from nca_adv.models import architecture, growing, masks
from nca_adv.models.rollout import scan_steps

from .cli import check_memory
from .common import check_output_file, print_result, run

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
    upper_bound=1000,
)
flags.DEFINE_integer("steps", 200, "CA steps from the seed.", lower_bound=0, upper_bound=10**6)
flags.DEFINE_integer("seed", 0, "PRNG seed of the stochastic updates.")
flags.DEFINE_integer(
    "runs",
    1,
    "Independent rollouts (batch); loss is their mean.",
    lower_bound=1,
    upper_bound=100_000,
)
flags.DEFINE_integer(
    "damage_at", None, "Cut a random circle out of the pattern after this step.", lower_bound=0
)
flags.DEFINE_string("video", None, "Write the rollout of the first run to this .mp4 or .gif.")
flags.DEFINE_integer("zoom", 4, "Video upscaling factor.", lower_bound=1, upper_bound=64)
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
    "grow_first",
    200,
    "With --adversary (or --perturbation and --x0=grown): base-only steps first.",
    lower_bound=0,
    upper_bound=10**6,
)
flags.DEFINE_string(
    "perturbation",
    None,
    "Global state perturbation: a shipped name (tail, leg, arm, head, red, blue), a .npy "
    "16x16 symmetric matrix, or a mix such as tail=1,leg=1 (sum k_i A_i + (1 - sum k_i) I). "
    "With --adversary: applied to every cell's state before each mixed step of the attack.",
)
flags.DEFINE_string(
    "perturbation_schedule",
    None,
    "With --perturbation: phases such as on:0-500,off:500-1000,on:1000- covering --steps "
    "(the attack's steps with --adversary; default: on throughout); JSON adds per-phase losses.",
)
flags.DEFINE_enum(
    "x0",
    "seed",
    ["seed", "grown"],
    "With --perturbation: start from the seed, or from a lizard grown by --model alone for "
    "--grow_first steps.",
)


def _check_flags() -> None:
    """Before any compute: every flag given is used by the chosen mode (plain, --adversary,
    --perturbation, or both: the attack under the perturbation), or refused in one line
    naming the conflict; the output path and the memory the grid needs."""
    adv, pert = FLAGS.adversary, FLAGS.perturbation
    if FLAGS.video and FLAGS.steps == 0:
        raise app.UsageError("--video needs --steps >= 1")
    if pert and FLAGS.steps < 1:
        raise app.UsageError("--perturbation needs --steps >= 1")
    if FLAGS.damage_at is not None:
        if adv or pert:
            raise app.UsageError("--damage_at does not combine with --adversary or --perturbation")
        if FLAGS.damage_at >= FLAGS.steps:
            raise app.UsageError("--damage_at must be smaller than --steps")
    if adv and FLAGS["x0"].present:
        raise app.UsageError(
            "--x0 does not combine with --adversary: the adversaries are injected into the "
            "lizard grown --grow_first steps (--grow_first=0: at the seed)"
        )
    used_only_with = {
        "perturbation_schedule": (pert, "--perturbation"),
        "x0": (pert, "--perturbation"),
        "adversary_fraction": (adv, "--adversary"),
        "original_target": (adv or pert, "an attack (--adversary or --perturbation)"),
        "grow_first": (adv or (pert and FLAGS.x0 == "grown"), "--adversary or --x0=grown"),
        "zoom": (FLAGS.video, "--video"),
    }
    for name, (used, what) in used_only_with.items():
        if FLAGS[name].present and not used:
            raise app.UsageError(f"--{name} is used only with {what}")
    if pert:
        perturbation.parse_phases(FLAGS.perturbation_schedule, FLAGS.steps)
    if FLAGS.video:
        check_output_file(FLAGS.video, "video", video.FORMATS)
    side = targets.TARGET_SIZE + 2 * FLAGS.padding  # a PNG target is thumbnailed to fit 40x40
    state = side * side * growing.CHANNELS * 4
    # the states and one step's features (48 perceived, 128 hidden) per run and model
    need = FLAGS.runs * state * 16 * (2 if adv else 1)
    if FLAGS.video:  # every run's trajectory, and the frames
        need += (FLAGS.steps + 1) * FLAGS.runs * state + FLAGS.steps * (side * FLAGS.zoom) ** 2 * 3
    check_memory(
        need,
        f"a {side}x{side} grid (--padding={FLAGS.padding}), --runs={FLAGS.runs}"
        + (f", --video of {FLAGS.steps} steps at --zoom={FLAGS.zoom}" if FLAGS.video else ""),
    )


def main(argv):
    del argv
    _check_flags()
    params = io.load_ca(FLAGS.model, "growing")  # the model's own architecture and fire rate
    target = targets.load_target(FLAGS.target, padding=FLAGS.padding)
    original = None
    if FLAGS.original_target:  # before any compute: a wrong file fails first
        original = targets.load_target(FLAGS.original_target, padding=FLAGS.padding)
        if original.shape != target.shape:
            raise app.UsageError(f"--original_target {original.shape} != --target {target.shape}")
    if FLAGS.adversary and FLAGS.perturbation:
        return print_result(_perturbed_attack_result(params, target, original))
    if FLAGS.adversary:
        return print_result(_adversary_result(params, target, original))
    if FLAGS.perturbation:
        return print_result(_perturbation_result(params, target, original))
    h, w = target.shape[:2]
    seed = np.asarray(params.model.seed(h, w))
    x0 = np.broadcast_to(seed, (FLAGS.runs, *seed.shape))
    trajectory = FLAGS.video is not None
    xs = _rollout_with_damage(
        params, x0, jax.random.PRNGKey(FLAGS.seed), FLAGS.steps, FLAGS.damage_at, trajectory
    )
    final = xs[-1] if trajectory else xs
    loss = np.asarray(growing.growing_loss(final, target))
    alive = np.asarray(masks.alive_mask(final)).sum(axis=(1, 2, 3))
    result = {
        "model": FLAGS.model,
        **_model_fields(params),
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


def _adversary_result(params, target, original) -> dict:
    """--adversary: the article's protocol (adversaries.growing_attack), per-run losses."""
    adv = adversaries.load_adversary_ca(FLAGS.adversary, "growing", params)
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
        **_model_fields(params),
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
    # An adversary trained against another base can blow the state up: say so, and when.
    div = guards.divergence(final, np.asarray(run.peaks))
    guards.warn(div, "the attacked rollout")
    result.update(diverged=div["diverged"], diverged_at_step=div["first_step"])
    if original is not None:
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


def _losses(x, target, original) -> dict:
    """``loss`` (and ``loss_original``) of the states x (R, H, W, 16): mean and per run."""
    out = {"loss": np.asarray(growing.growing_loss(x, target))}
    if original is not None:
        out["loss_original"] = np.asarray(growing.growing_loss(x, original))
    return {
        **{k: float(v.mean()) for k, v in out.items()},
        **{f"{k}_per_run": v.tolist() for k, v in out.items()},
    }


def _perturbation_result(params, target, original) -> dict:
    """--perturbation: the perturbed rollout, one key per run, losses per phase."""
    a = perturbation.load_perturbation(FLAGS.perturbation, params.model.channels)
    phases = perturbation.parse_phases(FLAGS.perturbation_schedule, FLAGS.steps)
    h, w = target.shape[:2]
    k_grow, k_run = jax.random.split(jax.random.PRNGKey(FLAGS.seed))
    grow_steps = FLAGS.grow_first if FLAGS.x0 == "grown" else 0
    x0 = perturbation_eval.grow(params, h, w, jax.random.split(k_grow, FLAGS.runs), grow_steps)
    keys = jax.random.split(k_run, FLAGS.runs)
    runs = perturbation_eval.run_phases(params, a, x0, keys, phases)
    losses = functools.partial(_losses, target=target, original=original)
    final = runs[-1].state
    result = {
        "model": FLAGS.model,
        **_model_fields(params),
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


# ----------------------------------------------------------------------------- both attacks
@functools.partial(jax.jit, static_argnames=("grow_first",))
def _inject(base, alpha, keys, p, grow_first: int):
    """Per run key: the lizard grown by the base (a CA) alone, its adversary mask and the
    key of the attack's steps: the draws of adversary_eval.growing_attack."""
    x0 = base.model.seed(*alpha.shape)

    def one(key):
        k_grow, k_mask, k_run = jax.random.split(key, 3)
        grown = scan_steps(base.step, x0, k_grow, grow_first)
        return grown, adversaries.growing_adversary_mask(k_mask, alpha, p), k_run

    return jax.vmap(one)(keys)


@functools.partial(jax.jit, static_argnames=("length", "on", "trajectory"))
def _attack_phase(base, adv, a, x, masks, run_keys, start, length: int, on: bool, trajectory):
    """``length`` attack steps of every run from step ``start`` (step i draws
    ``fold_in(run key, i)``, as the attack alone): the mixed step, under the perturbation
    when ``on``: ``perturb(A)(with_adversaries(adv_step, mask)(base_step))``. The final
    states (R, H, W, 16), and with ``trajectory`` every state (R, length, H, W, 16)."""

    def one(x, mask, k_run):
        mixed = adversaries.with_adversaries(adv.step, mask)(base.step)  # as growing_attack
        step = perturbation.perturb(a)(mixed) if on else mixed

        def body(x, i):
            x = step(x, jax.random.fold_in(k_run, i))
            return x, (x if trajectory else None)

        return jax.lax.scan(body, x, start + jnp.arange(length))

    return jax.vmap(one)(x, masks, run_keys)


def _perturbed_attack_result(params, target, original) -> dict:
    """--adversary with --perturbation: the attack's protocol (grow, inject), then its mixed
    steps under the perturbation where the schedule is on; losses per phase. With the
    perturbation off throughout it is --adversary alone, bit for bit."""
    adv = adversaries.load_adversary_ca(FLAGS.adversary, "growing", params)
    adversaries.check_compatible(params, adv)
    a = jnp.asarray(perturbation.load_perturbation(FLAGS.perturbation, params.model.channels))
    phases = perturbation.parse_phases(FLAGS.perturbation_schedule, FLAGS.steps)
    alpha = adversaries.target_alpha(target)
    keys = jax.random.split(jax.random.PRNGKey(FLAGS.seed), FLAGS.runs)
    x, masks, run_keys = _inject(params, alpha, keys, FLAGS.adversary_fraction, FLAGS.grow_first)
    trajectory = FLAGS.video is not None
    ends, frames = [], []
    for on, start, end in phases:
        x, states = _attack_phase(
            params, adv, a, x, masks, run_keys, jnp.int32(start), end - start, on, trajectory
        )
        ends.append((on, start, end, np.asarray(x)))
        if trajectory:
            frames.append(np.asarray(states[0]))
    final = ends[-1][3]
    result = {
        "model": FLAGS.model,
        **_model_fields(params),
        "adversary": FLAGS.adversary,
        "adversary_fraction": FLAGS.adversary_fraction,
        "perturbation": FLAGS.perturbation,
        "schedule": [f"{'on' if on else 'off'}:{start}-{end}" for on, start, end, _ in ends],
        "target": FLAGS.target,
        "original_target": FLAGS.original_target,
        "padding": FLAGS.padding,
        "grow_first": FLAGS.grow_first,
        "steps": FLAGS.steps,
        "seed": FLAGS.seed,
        "runs": FLAGS.runs,
        **_losses(final, target, original),
        "adversary_cells_per_run": np.asarray(masks).sum(axis=(1, 2, 3)).astype(int).tolist(),
        "alive_cells_per_run": _alive_cells(final).tolist(),
        "finite": bool(np.isfinite(final).all()),
    }
    if FLAGS.perturbation_schedule:
        result["phases"] = [
            {"on": on, "start": start, "end": end, **_losses(x, target, original)}
            for on, start, end, x in ends
        ]
    if trajectory:
        states, mask = np.concatenate(frames), np.asarray(masks[0])
        pictures = adversary_pictures.growing_frames(states, mask, FLAGS.zoom)
        result["video"] = str(video.write_video(FLAGS.video, pictures))
    return result


def _model_fields(ca) -> dict:
    """What the result says about the model it ran: its fire rate and architecture."""
    return {"fire_rate": ca.model.fire_rate, "architecture": architecture.to_dict(ca.model)}


def _rollout_with_damage(ca, x0, key, steps: int, damage_at, trajectory: bool):
    """growing.damaged_rollout for any Growing CA (its own architecture and fire rate)."""
    growing.check_state(x0, ca.model.channels)

    def roll(x, key, steps, trajectory):
        return _roll(ca, x, key, steps, trajectory)

    return growing.damaged_rollout(roll, x0, key, steps, damage_at, trajectory)


@functools.partial(jax.jit, static_argnames=("steps", "trajectory"))
def _roll(ca, x0, key, steps, trajectory):
    return scan_steps(ca.step, x0, key, steps, trajectory)


def _alive_cells(x) -> np.ndarray:
    """Living cells per run of states x (R, H, W, 16)."""
    return np.asarray(masks.alive_mask(x)).sum(axis=(1, 2, 3))


if __name__ == "__main__":
    run(main)
