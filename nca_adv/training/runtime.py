"""Training machinery shared by every trainer: optimiser, data-parallel mesh, checkpoints,
metrics file, progress with ETA, and the resumable loop that ties them together."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging as std_logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nca_adv.extras import lazy
from nca_adv.training import distributed

ocp = lazy("orbax.checkpoint", "checkpoints", what="checkpointing")  # imported at first use

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


OPTIMIZERS = ("adam", "ngd")


def normalized_descent(
    step: float, boundaries_and_scales: dict[int, float]
) -> optax.GradientTransformation:
    """Normalised gradient descent: every parameter leaf moves by exactly ``step`` (on a
    piecewise-constant schedule) in Frobenius norm against its gradient. For a matrix whose
    loss falls only for small moves, this follows the consistent gradient direction with
    a step that never overshoots, where Adam's per-coordinate steps can."""
    schedule = optax.piecewise_constant_schedule(step, boundaries_and_scales)
    return optax.chain(normalize_per_variable(), optax.scale_by_schedule(lambda i: -schedule(i)))


def check_schedule(name: str, iterations: int, boundaries: list[int]) -> None:
    """Refuse a learning-rate decay set after the last iteration (it would never happen)."""
    late = [b for b in boundaries if b >= iterations]
    if late:
        raise ValueError(
            f"{name}: learning-rate decay at iteration {late[0]} is after the last of its "
            f"{iterations} iterations; set the decay inside the run"
        )


# ----------------------------------------------------------------------------- devices
def data_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (default: all), axis ``batch``.
    In a multi-host run the devices are every process's (the global mesh), all of them."""
    devices = jax.devices() if jax.process_count() == 1 else distributed.global_devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"asked for {n} devices, {len(devices)} are visible")
    mesh = Mesh(np.array(devices[:n]), (BATCH_AXIS,))
    distributed.check_mesh(mesh)
    return mesh


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
    """Drop orbax's INFO chatter (dozens of lines per save) so progress lines stay readable,
    and every record during a save and after a failed one (``silent``): on a full disk
    orbax's threads each log the same error with a traceback, some after the save has
    returned, where :meth:`Checkpointer.save` says it in one line."""

    silent = False

    def filter(self, record: std_logging.LogRecord) -> bool:
        if "orbax" not in record.pathname:
            return True
        return record.levelno >= std_logging.WARNING and not _QuietOrbax.silent


std_logging.getLogger("absl").addFilter(_QuietOrbax())


class _QuietFailedReads(std_logging.Filter):
    """Drop asyncio's late "Task exception was never retrieved" reports of orbax's failed
    reads: they arrive when the failed tasks are garbage-collected, after the checkpoint's
    one-line warning already said why it was skipped, as dozens of lines of tensorstore specs."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (
            "exception was never retrieved" in text
            and ("orbax" in text or "tensorstore" in text or "serialization" in text)
        )


std_logging.getLogger("asyncio").addFilter(_QuietFailedReads())


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read back (missing, corrupt, or of another model)."""


class DivergenceError(FloatingPointError):
    """A training loss that became NaN or infinite (the run stops at once)."""


def content_hash(tree: Any) -> str:
    """sha256 over every leaf's dtype, shape and bytes: catches silent bit flips."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(distributed.host_value(tree)):  # a collective, multi-host
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
        # The hash is written (atomically) BEFORE orbax commits the step: every committed
        # step then has its hash, and a kill between the two leaves a hash without a step
        # (ignored, and replaced when that step is saved again), never an unhashed step.
        digest = content_hash(state)  # every process takes part; process 0 writes
        _hush_failed_saves()  # its noise may come before the save fails
        try:
            _QuietOrbax.silent = True
            if distributed.is_main_process():
                write_atomic(self._hash_file(step), digest + "\n")
            self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
            self._manager.wait_until_finished()
            _QuietOrbax.silent = False
        except Exception as e:  # a full disk, a read-only or vanished folder: one line
            # orbax's other threads may fail after this: they stay silent
            self._discard(step)
            kept = [s for s in self.steps() if s != step]
            raise CheckpointError(
                f"cannot save the checkpoint of iteration {step} in {self.directory}: "
                f"{_write_failure(e)}; "
                + (
                    f"the checkpoint of iteration {kept[-1]} is kept (--resume continues from "
                    "it once the cause is fixed)"
                    if kept
                    else "there is no earlier checkpoint"
                )
            ) from e
        if not distributed.is_main_process():
            return
        kept = set(self.steps())
        for f in self.directory.glob("*.sha256"):
            if f.stem.isdigit() and int(f.stem) not in kept:
                f.unlink()

    def _discard(self, step: int) -> None:
        """Remove what a failed save of ``step`` left (its temporary folder and hash), to
        give back the space; the committed steps are untouched."""
        if not distributed.is_main_process():
            return
        for tmp in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)
        if step not in self.steps():
            self._hash_file(step).unlink(missing_ok=True)

    def restore_step(self, like: Any, step: int) -> Any:
        """Restore ``step`` into the structure, shapes, dtypes and shardings of ``like``."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        asyncio_log = std_logging.getLogger("asyncio")
        level = asyncio_log.level
        asyncio_log.setLevel(std_logging.CRITICAL)  # orbax's failed reads spill asyncio noise
        try:
            state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax raises many types; one line, the cause kept
            raise _unusable(
                self.directory,
                step,
                f"cannot be restored (corrupt, or of a different model/config): {_first_line(e)}",
            ) from e
        finally:
            asyncio_log.setLevel(level)
        _assert_same_structure(like, state, self.directory / str(step))
        hash_file = self._hash_file(step)
        if hash_file.is_file() and hash_file.read_text().strip() != content_hash(state):
            raise _unusable(
                self.directory,
                step,
                "cannot be restored: its content hash does not match the one written with it "
                "(corrupt data)",
            )
        return state

    def restore(self, like: Any) -> tuple[int, Any]:
        """The newest verified step and its state. A step that cannot be read, whose data
        does not match the hash written with it, or that has no hash (unverified: not
        written by :meth:`save`) is skipped and older kept steps are tried in turn; a
        fallback logs one line per skipped step, a failure is one error naming them all."""
        steps = self.steps()
        if not steps:
            tmp = self.incomplete_saves()
            extra = f" (only incomplete saves: {', '.join(tmp)})" if tmp else ""
            raise CheckpointError(f"no checkpoint in {self.directory}{extra}")
        skipped: list[tuple[int, str]] = []
        for step in reversed(steps):
            if not self._hash_file(step).is_file():
                skipped.append((step, f"unverified: no {step}.sha256 content hash beside it"))
                continue
            try:
                state = self.restore_step(like, step)
            except CheckpointError as e:
                skipped.append((step, getattr(e, "reason", str(e))))
                continue
            for s, reason in skipped:
                logging.warning("checkpoint %s/%d skipped: %s", self.directory, s, reason)
            if skipped:
                logging.warning("fell back to the previous checkpoint, iteration %d", step)
                self._drop_after(step)
            return step, state
        raise CheckpointError(
            f"no restorable checkpoint in {self.directory} ("
            + "; ".join(f"{s}: {reason}" for s, reason in skipped)
            + "); start a new run in another --workdir"
        )

    def _drop_after(self, step: int) -> None:
        """Delete the (unreadable) steps newer than ``step``: training continues from
        ``step`` and will write those steps again."""
        for later in [s for s in self.steps() if s > step]:
            self._manager.delete(later)
            self._hash_file(later).unlink(missing_ok=True)

    def close(self) -> None:
        self._manager.close()


def _hush_failed_saves() -> None:
    """Silence what a failing orbax save prints beside its error: tensorstore's writes
    still in flight complete into the closed event loop of orbax's save thread and print
    "Event loop is closed" tracebacks through ``sys.excepthook``, and orbax's unfinished
    coroutines are reported at exit; the save's one error says what happened. Installed
    once; every other exception is reported as before."""

    def aftermath(exc: BaseException | None, tb) -> bool:
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            return tb is not None and tb.tb_frame.f_code.co_filename.endswith("base_events.py")
        return False

    hook, unraisable = sys.excepthook, sys.unraisablehook
    if getattr(hook, "_nca_adv_hushed", False):
        return

    def excepthook(kind, value, tb):
        if not aftermath(value, tb):
            hook(kind, value, tb)

    def unraisablehook(report):
        code = getattr(report.object, "cr_code", None)
        if code is not None and ("orbax" in code.co_filename or "tensorstore" in code.co_filename):
            return
        if not aftermath(report.exc_value, report.exc_traceback):
            unraisable(report)

    excepthook._nca_adv_hushed = True
    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


def _unusable(directory: Path, step: int, reason: str) -> CheckpointError:
    """The error of one unusable step; ``reason`` (without the path) kept for summaries."""
    e = CheckpointError(f"checkpoint {directory}/{step} {reason}")
    e.reason = reason
    return e


def _write_failure(e: BaseException) -> str:
    """Why a write failed, in a few words: the OS error of ``e`` or of its causes (orbax and
    tensorstore wrap it in their own errors), else ``e``'s first line."""
    seen, depth = e, 0
    while seen is not None and depth < 20:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror.lower()
        seen, depth = seen.__cause__ or seen.__context__, depth + 1
    text = str(e)
    code = re.search(r"os_error_code='(\d+)'", text)
    if code:
        return os.strerror(int(code.group(1))).lower()
    return _first_line(e)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a kill leaves the
    old file or the new one, never a torn one, and a failed write (a full disk) leaves the
    old file and no temporary one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _assert_same_structure(like: Any, state: Any, where: Path) -> None:
    for a, b in zip(jax.tree.leaves(like), jax.tree.leaves(state), strict=True):
        if np.shape(a) != np.shape(b):
            raise CheckpointError(
                f"checkpoint {where} holds shape {np.shape(b)}, expected {np.shape(a)}"
            )
        b = distributed.host_value(b)
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


INPUTS = "inputs"  # config.json key: content hashes of what the training reads
# Computed from the inputs on the training's own device, not read from a file (the grown
# lizard: a rollout of the hashed base, whose last bits depend on the device type).
DERIVED_INPUTS = frozenset({"grown"})


def input_hashes(shared: Any, runs: dict[str, Any]) -> dict[str, str]:
    """Content hashes of the arrays a training reads (targets, base models, data): the
    ``shared`` constants by key and each run's constants as ``<key> of run <name>``. A
    target PNG, base model or data file replaced under the same path changes them."""

    def named(tree: Any, suffix: str) -> dict[str, str]:
        if not isinstance(tree, dict):
            return {f"constants{suffix}": content_hash(tree)}
        return {
            f"{k}{suffix}": content_hash(v)
            for k, v in sorted(tree.items())
            if k not in DERIVED_INPUTS
        }

    out = named(shared, "")
    for name, consts in runs.items():
        out.update(named(consts, f" of run {name}"))
    return out


DEVICES = "devices"  # config.json key: devices the run's batch was split over (not a setting)


def config_differences(saved: dict, config: dict) -> list[str]:
    """The settings that differ, ``key: old -> new``, and the changed inputs by name (their
    hashes are compared only when both configurations recorded them)."""
    diff = [
        f"{k}: {saved.get(k, '(unset)')!r} -> {config.get(k, '(unset)')!r}"
        for k in sorted(set(saved) | set(config))
        if k not in (INPUTS, DEVICES) and saved.get(k) != config.get(k)
    ]
    old, new = saved.get(INPUTS), config.get(INPUTS)
    if isinstance(old, dict) and isinstance(new, dict):
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            diff.append(
                f"changed input(s): {', '.join(changed)} (content hash: a target, base model "
                "or data file replaced under the same name?)"
            )
    return diff


def _read_config(path: Path, resume: bool) -> dict | None:
    """The saved configuration, None when there is none (or, for a new start, when it is
    unreadable: it is replaced)."""
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        if resume:
            raise CheckpointError(
                f"--resume: {path} cannot be read ({_first_line(e)}), so the settings the "
                "checkpoints were trained with cannot be checked; drop --resume and start a "
                "new run in another --workdir"
            ) from None
        logging.warning("%s cannot be read (%s); replaced", path, _first_line(e))
        return None
    return saved


def check_config(workdir: Path, config: dict, resume: bool) -> None:
    """Save the run's configuration as ``workdir/config.json`` (atomically).

    On resume, refuse a missing or unreadable one (the checkpoints' settings could not be
    checked) and one that differs, naming the differing settings and the changed inputs
    (``inputs``: :func:`input_hashes`). A config.json written before inputs were recorded
    is completed, with a warning. A new start over the config.json of an earlier start
    that left no checkpoint logs what changes.
    """
    path = workdir / "config.json"
    config = json.loads(json.dumps(config))  # tuples -> lists, as stored
    saved = _read_config(path, resume)
    if resume:
        if saved is None:
            raise CheckpointError(
                f"--resume: {path} is missing, so the settings the checkpoints were trained "
                "with cannot be checked; put it back, or drop --resume and start a new run in "
                "another --workdir"
            )
        diff = config_differences(saved, config)
        if diff:
            raise CheckpointError(
                f"--resume with a configuration that differs from the run in {workdir}: "
                + "; ".join(diff)
            )
        before, now = saved.get(DEVICES), config.get(DEVICES)
        if before is not None and now is not None and before != now:
            logging.warning(
                "%s was trained on %s device(s) and resumes on %s: the result will be close "
                "to, not bit for bit, that of an uninterrupted run",
                workdir,
                before,
                now,
            )
        if INPUTS in saved or INPUTS not in config:
            return
        logging.warning(
            "%s predates input hashes: the inputs of the iterations so far cannot be "
            "checked; recording them now",
            path,
        )
    elif saved is not None and (diff := config_differences(saved, config)):
        logging.warning(
            "%s: starting anew (no checkpoint) with other settings than the earlier start: %s",
            path,
            "; ".join(diff),
        )
    if distributed.is_main_process():
        write_atomic(path, json.dumps(config, indent=1, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- progress
class Progress:
    """Logs iteration, chosen metrics, rate and ETA."""

    def __init__(self, start: int, total: int):
        self.start, self.total = start, total
        self._t0 = time.perf_counter()

    def update(self, iteration: int, metrics: dict) -> None:
        done = iteration - self.start
        if done <= 0 or not distributed.is_main_process():
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
