"""Training machinery shared by every trainer: optimiser, data-parallel mesh, checkpoints,
metrics file, progress with ETA, and the resumable loop that ties them together."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging as std_logging
import os
import time
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


class DivergenceError(FloatingPointError):
    """A training loss that became NaN or infinite (the run stops at once)."""


def content_hash(tree: Any) -> str:
    """sha256 over every leaf's dtype, shape and bytes: catches silent bit flips."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(tree)):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


class Checkpointer:
    """Atomic, step-numbered checkpoints of one pytree (orbax ``CheckpointManager``), each
    with a content hash beside it (``checkpoints/<step>.sha256``).

    Orbax writes each step into a temporary directory and renames it when complete, so a
    kill mid-save leaves the previous checkpoint intact. Restoring tries the latest step,
    then falls back to older kept ones, saying why.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def incomplete_saves(self) -> list[str]:
        return sorted(p.name for p in self.directory.glob("*.orbax-checkpoint-tmp*"))

    def _hash_file(self, step: int) -> Path:
        return self.directory / f"{step}.sha256"

    def save(self, step: int, state: Any) -> None:
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()
        self._hash_file(step).write_text(content_hash(state) + "\n")
        kept = set(self.steps())
        for f in self.directory.glob("*.sha256"):
            if f.stem.isdigit() and int(f.stem) not in kept:
                f.unlink()

    def restore_step(self, like: Any, step: int) -> Any:
        """Restore ``step`` into the structure, shapes, dtypes and shardings of ``like``."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        asyncio_log = std_logging.getLogger("asyncio")
        level = asyncio_log.level
        asyncio_log.setLevel(std_logging.CRITICAL)  # orbax's failed reads spill asyncio noise
        try:
            state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax raises many types; one line, the cause kept
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} cannot be restored (corrupt, or of a "
                f"different model/config): {_first_line(e)}"
            ) from e
        finally:
            asyncio_log.setLevel(level)
        _assert_same_structure(like, state, self.directory / str(step))
        hash_file = self._hash_file(step)
        if hash_file.is_file() and hash_file.read_text().strip() != content_hash(state):
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} cannot be restored: its content hash does "
                "not match the one written with it (corrupt data)"
            )
        return state

    def restore(self, like: Any) -> tuple[int, Any]:
        """The latest restorable step and its state; older kept steps are tried in turn when
        the latest is corrupt (each failure logged in one line)."""
        steps = self.steps()
        if not steps:
            tmp = self.incomplete_saves()
            extra = f" (only incomplete saves: {', '.join(tmp)})" if tmp else ""
            raise CheckpointError(f"no checkpoint in {self.directory}{extra}")
        errors = []
        for step in reversed(steps):
            try:
                state = self.restore_step(like, step)
            except CheckpointError as e:
                errors.append(str(e))
                logging.warning("%s", e)
                continue
            if errors:
                logging.warning("fell back to the previous checkpoint, iteration %d", step)
                self._drop_after(step)
            return step, state
        raise CheckpointError(f"no restorable checkpoint in {self.directory}: {'; '.join(errors)}")

    def _drop_after(self, step: int) -> None:
        """Delete the (unreadable) steps newer than ``step``: training continues from
        ``step`` and will write those steps again."""
        for later in [s for s in self.steps() if s > step]:
            self._manager.delete(later)
            self._hash_file(later).unlink(missing_ok=True)

    def close(self) -> None:
        self._manager.close()


def _assert_same_structure(like: Any, state: Any, where: Path) -> None:
    for a, b in zip(jax.tree.leaves(like), jax.tree.leaves(state), strict=True):
        if np.shape(a) != np.shape(b):
            raise CheckpointError(
                f"checkpoint {where} holds shape {np.shape(b)}, expected {np.shape(a)}"
            )
        b = np.asarray(b)
        if np.issubdtype(b.dtype, np.floating) and not np.all(np.isfinite(b)):
            raise CheckpointError(f"checkpoint {where} holds non-finite values")


# ----------------------------------------------------------------------------- metrics
class MetricsWriter:
    """One JSON object per line (``metrics.jsonl``).

    On resume, records past the restored iteration are dropped so the file matches the
    state exactly; unreadable lines are dropped one by one (not everything after them) and
    iterations missing before the restored one are reported. Rewrites are atomic.
    """

    def __init__(self, path: str | os.PathLike, resume_from: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if resume_from is not None and self.path.exists():
            kept = self._kept_lines(resume_from)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(k + "\n" for k in kept))
        os.replace(tmp, self.path)
        self._file = self.path.open("a")

    def _kept_lines(self, resume_from: int) -> list[str]:
        kept, seen, bad = [], set(), []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            try:
                it = int(json.loads(line)["iteration"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                if line.strip():
                    bad.append(n)
                continue
            if it <= resume_from and it not in seen:
                kept.append(line)
                seen.add(it)
        if bad:
            logging.warning("%s: dropped %d unreadable line(s): %s", self.path, len(bad), bad[:10])
        missing = sorted(set(range(1, resume_from + 1)) - seen)
        if missing:
            logging.warning(
                "%s: %d iteration(s) up to %d have no metrics record (first missing: %s)",
                self.path,
                len(missing),
                resume_from,
                missing[:10],
            )
        return sorted(kept, key=lambda line: json.loads(line)["iteration"])

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All readable records of a metrics file (unreadable lines skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


# ----------------------------------------------------------------------------- workdir
class WorkdirLock:
    """An exclusive ``flock`` on ``workdir/.lock``: two trainers never share a workdir."""

    def __init__(self, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.path = workdir / ".lock"
        self._file = self.path.open("a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "?"
            self._file.close()
            raise CheckpointError(
                f"{workdir} is in use by another trainer (pid {holder}); wait for it or "
                "choose another --workdir"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def check_config(workdir: Path, config: dict, resume: bool) -> None:
    """Save the run's configuration as ``workdir/config.json``; on resume, refuse one that
    differs, naming the differing settings."""
    path = workdir / "config.json"
    config = json.loads(json.dumps(config))  # tuples -> lists, as stored
    if resume and path.is_file():
        saved = json.loads(path.read_text())
        diff = [
            f"{k}: {saved.get(k, '(unset)')!r} -> {config.get(k, '(unset)')!r}"
            for k in sorted(set(saved) | set(config))
            if saved.get(k) != config.get(k)
        ]
        if diff:
            raise CheckpointError(
                f"--resume with a configuration that differs from the run in {workdir}: "
                + "; ".join(diff)
            )
        return
    path.write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- progress
class Progress:
    """Logs iteration, chosen metrics, rate and ETA."""

    def __init__(self, start: int, total: int):
        self.start, self.total = start, total
        self._t0 = time.perf_counter()

    def update(self, iteration: int, metrics: dict) -> None:
        done = iteration - self.start
        if done <= 0:
            return
        elapsed = time.perf_counter() - self._t0
        rate = done / elapsed
        eta = (self.total - iteration) / rate if rate > 0 else float("inf")
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        logging.info(
            "iter %d/%d %s | %.3f it/s | %.3f s/it | ETA %s",
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
