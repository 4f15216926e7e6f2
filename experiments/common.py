"""Flag helpers shared by the launch scripts."""

from __future__ import annotations

import json
import sys

import jax
from absl import flags


def define_device_flags() -> None:
    flags.DEFINE_integer(
        "host_devices",
        0,
        "Split the CPU into this many XLA host devices for data parallelism "
        "(0: leave as is). Ignored when an accelerator is present.",
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "num_devices", 0, "Devices to shard the batch over (0: all visible).", lower_bound=0
    )


def configure_devices() -> None:
    """Apply --host_devices; must run before the first JAX computation."""
    n = flags.FLAGS.host_devices
    if n:
        jax.config.update("jax_num_cpu_devices", n)


def print_result(result: dict) -> None:
    """The last line of stdout: one JSON object."""
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


def train_and_export(state, iteration, kind: str) -> None:
    """The trainers' shared tail: the resumable loop on the common flags, then the final
    weights to ``workdir/params.npz`` and a JSON summary as the last stdout line."""
    from pathlib import Path

    from nca_adv import io, training

    f = flags.FLAGS
    state = training.train_loop(
        state,
        iteration,
        f.iterations,
        f.workdir,
        checkpoint_every=f.checkpoint_every,
        resume=f.resume,
        log_every=f.log_every,
    )
    out = Path(f.workdir) / "params.npz"
    io.save_params(out, jax.device_get(state["params"]), kind)
    last = training.read_metrics(Path(f.workdir) / "metrics.jsonl")[-1]
    print_result({"params": str(out), "iterations": f.iterations, "final_loss": last["loss"]})
