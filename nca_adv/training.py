"""Training machinery shared by every trainer: optimiser, data-parallel mesh, checkpoints,
metrics file, progress with ETA, and the resumable loop that ties them together."""

from __future__ import annotations

import json
import logging as std_logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"


# ----------------------------------------------------------------------------- optimiser
def normalize_per_variable(eps: float = 1e-8) -> optax.GradientTransformation:
    """Replace every gradient leaf g by g / (||g|| + eps), as the original trainers do."""
    import jax.numpy as jnp

    return optax.stateless(lambda g, _: jax.tree.map(lambda x: x / (jnp.linalg.norm(x) + eps), g))


def make_optimizer(
    lr: float, boundaries_and_scales: dict[int, float]
) -> optax.GradientTransformation:
    """Per-variable gradient normalisation, then Adam on a piecewise-constant schedule.

    eps=1e-7 is Keras' Adam default, which the original models were trained with.
    """
    # optax counts updates from 0: update number `boundary` (0-based) is the first at the
    # lower rate, i.e. iteration boundary+1 counted from 1 (Keras: one later; immaterial).
    schedule = optax.piecewise_constant_schedule(lr, boundaries_and_scales)
    return optax.chain(normalize_per_variable(), optax.adam(schedule, eps=1e-7))


# ----------------------------------------------------------------------------- devices
def data_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (default: all), axis ``batch``."""
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"asked for {n} devices, {len(devices)} are visible")
    return Mesh(np.array(devices[:n]), (BATCH_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh; everything else replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_divides(batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f"batch size {batch_size} is not divisible by {n} devices")


# ----------------------------------------------------------------------------- checkpoints
class _QuietOrbax(std_logging.Filter):
    """Drop orbax's INFO chatter (dozens of lines per save) so progress lines stay readable."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


std_logging.getLogger("absl").addFilter(_QuietOrbax())


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read back (missing, corrupt, or of another model)."""


class Checkpointer:
    """Atomic, step-numbered checkpoints of one pytree (orbax ``CheckpointManager``).

    Orbax writes each step into a temporary directory and renames it when complete, so a
    kill mid-save leaves the previous checkpoint intact.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()

    def restore(self, like: Any, step: int | None = None) -> tuple[int, Any]:
        """Restore ``step`` (default: latest) into the structure, shapes and dtypes of ``like``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax raises many types; name the file, keep the cause
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} cannot be restored (corrupt, or of a "
                f"different model/config): {type(e).__name__}: {e}"
            ) from e
        _assert_same_structure(like, state, self.directory / str(step))
        return step, state

    def close(self) -> None:
        self._manager.close()


def _assert_same_structure(like: Any, state: Any, where: Path) -> None:
    for a, b in zip(jax.tree.leaves(like), jax.tree.leaves(state), strict=True):
        if np.shape(a) != np.shape(b):
            raise CheckpointError(
                f"checkpoint {where} holds shape {np.shape(b)}, expected {np.shape(a)}"
            )
        if not np.all(np.isfinite(np.asarray(b))) and np.issubdtype(
            np.asarray(b).dtype, np.floating
        ):
            raise CheckpointError(f"checkpoint {where} holds non-finite values")


# ----------------------------------------------------------------------------- metrics
class MetricsWriter:
    """One JSON object per line (``metrics.jsonl``); on resume, lines past the restored
    iteration are dropped so the file matches the state exactly."""

    def __init__(self, path: str | os.PathLike, resume_from: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if resume_from is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line)["iteration"] <= resume_from:
                        kept.append(line)
                except (json.JSONDecodeError, KeyError):
                    break  # a torn last line from a kill
        self.path.write_text("".join(k + "\n" for k in kept))
        self._file = self.path.open("a")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All records of a metrics file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- progress
class Progress:
    """Logs iteration, chosen metrics, rate and ETA every ``every`` iterations."""

    def __init__(self, start: int, total: int, every: int = 10):
        self.start, self.total, self.every = start, total, every
        self._t0 = time.perf_counter()

    def update(self, iteration: int, metrics: dict) -> None:
        done = iteration - self.start
        if done <= 0 or (iteration % self.every and iteration != self.total):
            return
        elapsed = time.perf_counter() - self._t0
        rate = done / elapsed
        eta = (self.total - iteration) / rate if rate > 0 else float("inf")
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        logging.info(
            "iter %d/%d %s | %.3f it/s | %.2f s/it | ETA %s",
            iteration,
            self.total,
            shown,
            rate,
            1 / rate,
            _hms(eta),
        )


def _hms(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


# ----------------------------------------------------------------------------- the loop
def train_loop(
    state: Any,
    iteration_fn: Callable[[Any, int], tuple[Any, dict]],
    num_iterations: int,
    workdir: str | os.PathLike,
    checkpoint_every: int = 50,
    resume: bool = False,
    log_every: int = 10,
) -> Any:
    """Run ``iteration_fn(state, i) -> (state, metrics)`` for i = start+1 .. num_iterations.

    ``state`` is a pytree holding everything that evolves (parameters, optimiser state,
    pool, PRNG key) so that a checkpoint of it resumes bit-for-bit. With ``resume`` the
    latest checkpoint in ``workdir/checkpoints`` is restored; a kill loses only the
    iterations since that checkpoint. Metrics go to ``workdir/metrics.jsonl``.
    """
    workdir = Path(workdir)
    ckpt = Checkpointer(workdir / "checkpoints")
    start = 0
    if resume and ckpt.latest_step() is not None:
        if ckpt.latest_step() > num_iterations:
            raise CheckpointError(
                f"{ckpt.directory} is at iteration {ckpt.latest_step()}, past the requested "
                f"{num_iterations}; ask for more iterations"
            )
        start, state = ckpt.restore(state)
        logging.info("resumed from iteration %d (%s)", start, ckpt.directory)
    elif not resume and ckpt.latest_step() is not None:
        raise CheckpointError(
            f"{ckpt.directory} already holds checkpoints; pass --resume to continue "
            "or choose another --workdir"
        )
    metrics_out = MetricsWriter(workdir / "metrics.jsonl", resume_from=start)
    progress = Progress(start, num_iterations, log_every)
    try:
        for i in range(start + 1, num_iterations + 1):
            state, metrics = iteration_fn(state, i)
            record = {"iteration": i, **{k: float(v) for k, v in metrics.items()}}
            if not np.isfinite(record.get("loss", 0.0)):
                raise FloatingPointError(f"loss became {record['loss']} at iteration {i}")
            metrics_out.write(record)
            progress.update(i, record)
            if i % checkpoint_every == 0 or i == num_iterations:
                ckpt.save(i, state)
    finally:
        metrics_out.close()
        ckpt.close()
    return state
