"""The host loop around the engine: chunks of jitted iterations, metrics files, progress
with ETA and checkpoints, for one run or a sweep of R runs trained in one program.

Between chunks the host only writes ``metrics.jsonl`` (one per run), logs progress and
checkpoints the whole state (orbax, atomic, with a content hash). ``resume`` continues
bit for bit from the latest good checkpoint; a kill loses only the iterations since it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nca_adv.extras import require
from nca_adv.training import distributed, engine
from nca_adv.training.runtime import (
    BATCH_AXIS,
    DEVICES,
    INPUTS,
    Checkpointer,
    CheckpointError,
    DivergenceError,
    MetricsWriter,
    Progress,
    WorkdirLock,
    check_batch_divides,
    check_config,
    data_mesh,
    input_hashes,
)


class Run(NamedTuple):
    """One run of a sweep: its name (folder ``run_<name>``), PRNG seed and constants."""

    name: str
    seed: int
    consts: Any


def run_dirs(workdir: str | Path, runs: list[Run]) -> list[Path]:
    """Each run's output folder: the workdir itself for a single run, else ``run_<name>``."""
    workdir = Path(workdir)
    return [workdir] if len(runs) == 1 else [workdir / f"run_{r.name}" for r in runs]


def _sequential(state_sharding) -> bool | None:
    """Runs sharded whole over devices stay vmapped; otherwise the engine's default."""
    return False if state_sharding is not None else None


def step_form_for(mesh: Mesh | None) -> str | None:
    """The Growing CA steps' form in a program over ``mesh``: dense when it spans several
    devices (:func:`nca_adv.models.living.step_form`), else the global choice."""
    return "dense" if mesh is not None and mesh.devices.size > 1 else None


def placement(
    mesh: Mesh | None, num_runs: int, batch_size: int
) -> tuple[NamedSharding | None, NamedSharding | None]:
    """(state sharding, batch sharding) over ``mesh``: whole runs per device when they
    divide evenly, else each run's batch split over the devices (data parallel)."""
    if mesh is None or mesh.devices.size == 1:
        return None, None
    if num_runs > 1 and num_runs % mesh.devices.size == 0:
        return NamedSharding(mesh, PartitionSpec(BATCH_AXIS)), None
    check_batch_divides(batch_size, mesh)
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def _lock(workdir: Path) -> WorkdirLock | None:
    """The workdir lock, taken by process 0 alone (a multi-host run's processes share the
    workdir); every process learns whether it was taken, so all of them stop together."""
    lock, error = None, None
    if distributed.is_main_process():
        try:
            lock = WorkdirLock(workdir)
        except CheckpointError as e:
            error = e
    if not distributed.main_process_flag(error is None):
        raise error or CheckpointError(
            f"{workdir} is in use by another trainer (process 0 could not lock it)"
        )
    return lock


def fit(
    recipe: engine.Recipe,
    shared: Any,
    runs: list[Run],
    workdir: str | Path,
    iterations: int,
    *,
    chunk: int = 10,
    checkpoint_every: int = 100,
    resume: bool = False,
    config: dict | None = None,
    mesh: Mesh | None = None,
) -> dict:
    """Train every run of ``runs`` for ``iterations`` iterations; the final states (leading
    run axis). Writes ``workdir/config.json``, ``workdir/checkpoints/`` and each run's
    ``metrics.jsonl`` (see :func:`run_dirs`).

    Iterations run in jitted chunks of ``gcd(chunk, checkpoint_every)``, so checkpoints
    fall on chunk ends and a resumed run replays exactly the programs of a straight one.
    """
    engine.check_recipe(recipe)
    if not runs:
        raise ValueError("no runs to train")
    if len({r.name for r in runs}) != len(runs):
        raise ValueError(f"run names must differ: {[r.name for r in runs]}")
    if iterations < 1 or chunk < 1 or checkpoint_every < 1:
        raise ValueError("iterations, chunk and checkpoint_every must be >= 1")
    if mesh is None and distributed.process_count() > 1:
        mesh = data_mesh()  # a multi-host run spans every process's devices
    if mesh is not None:
        distributed.check_mesh(mesh)
    state_sharding, batch_sharding = placement(mesh, len(runs), recipe.batch_size)
    workdir = Path(workdir)
    require("orbax.checkpoint", "checkpoints", "training in a workdir")  # before any file
    if resume and not (workdir / "checkpoints").is_dir():
        raise CheckpointError(
            f"--resume: {workdir} holds no checkpoints/ (a new, misspelt or emptied workdir); "
            "drop --resume to start a new run"
        )
    lock = _lock(workdir)
    ckpt = None
    writers: list[MetricsWriter] = []
    try:
        ckpt = Checkpointer(workdir / "checkpoints")
        if not resume and ckpt.latest_step() is not None:  # before config.json is touched
            raise CheckpointError(
                f"{ckpt.directory} already holds checkpoints; pass --resume to continue "
                "or choose another --workdir"
            )
        if resume:  # what there is to resume, before the settings are looked at
            _check_resumable(ckpt, iterations)
        # The inputs' content hashes join the settings: a resume on a replaced target,
        # base or data file is refused like one with other settings.
        inputs = input_hashes(shared, {r.name: r.consts for r in runs})
        config = {**(config or {}), "runs": [r.name for r in runs], INPUTS: inputs}
        config[DEVICES] = 1 if mesh is None else int(mesh.devices.size)
        check_config(workdir, config, resume)
        keys = jax.numpy.stack([jax.random.PRNGKey(r.seed) for r in runs])
        run_consts = engine.stack_runs([r.consts for r in runs])
        states = engine.init_states(recipe, keys, shared, run_consts)
        if state_sharding is not None:
            replicated = NamedSharding(mesh, PartitionSpec())
            states = distributed.put(states, state_sharding)
            run_consts = distributed.put(run_consts, state_sharding)
            shared = distributed.put(shared, replicated)
        else:  # committed like a restored state, so a fresh and a resumed run share one program
            device = mesh.devices.flat[0] if mesh is not None else jax.devices()[0]
            states, run_consts, shared = jax.device_put((states, run_consts, shared), device)
        start = 0
        if resume:
            start, states = ckpt.restore(states)
            logging.info("resumed from iteration %d (%s)", start, ckpt.directory)
        dirs = run_dirs(workdir, runs)
        if distributed.is_main_process():  # the other processes of a multi-host run write none
            writers = [MetricsWriter(d / "metrics.jsonl", resume_from=start) for d in dirs]
        states = _train(
            recipe,
            states,
            shared,
            run_consts,
            runs,
            writers,
            ckpt,
            start,
            iterations,
            math.gcd(chunk, checkpoint_every),
            checkpoint_every,
            batch_sharding,
            _sequential(state_sharding),
            step_form_for(mesh),
        )
    finally:
        for w in writers:
            w.close()
        if ckpt is not None:
            ckpt.close()
        if lock is not None:
            lock.release()
    return states


def _check_resumable(ckpt: Checkpointer, iterations: int) -> None:
    """Refuse a resume with no committed checkpoint, or one past ``iterations``."""
    latest = ckpt.latest_step()
    if latest is None:
        tmp = ckpt.incomplete_saves()
        raise CheckpointError(
            f"--resume: no usable checkpoint in {ckpt.directory}"
            + (f" (only incomplete saves {tmp})" if tmp else "")
            + "; drop --resume to start a new run"
        )
    if latest > iterations:
        raise CheckpointError(
            f"{ckpt.directory} is at iteration {latest}, past the requested "
            f"{iterations}; ask for more iterations"
        )


def _train(
    recipe,
    states,
    shared,
    run_consts,
    runs,
    writers,
    ckpt,
    start,
    total,
    length,
    every,
    sharding,
    sequential=None,
    step_form=None,
):
    compiled: dict[int, Any] = {}
    progress = Progress(start, total)
    i = start
    while i < total:
        end = min(total, (i // length + 1) * length)
        n = end - i
        if n not in compiled:
            compiled[n] = engine.make_chunk(
                recipe, n, len(runs), sharding, sequential=sequential, step_form=step_form
            )
        states, metrics = compiled[n](states, shared, run_consts)
        metrics = distributed.host_value(metrics)  # every process checks for divergence
        for r in range(len(runs)):
            for j in range(n):
                record = {"iteration": i + 1 + j}
                record.update({k: np.asarray(v)[r, j].item() for k, v in metrics.items()})
                if not np.isfinite(record["loss"]):
                    raise DivergenceError(
                        f"run {runs[r].name}: loss became {record['loss']} at iteration "
                        f"{record['iteration']}"
                    )
                if writers:
                    writers[r].write(record)
            if writers:
                writers[r].flush()
        i = end
        progress.update(i, {k: float(np.mean(np.asarray(v)[:, -1])) for k, v in metrics.items()})
        if i % every == 0 or i == total:
            ckpt.save(i, states)
    return states
