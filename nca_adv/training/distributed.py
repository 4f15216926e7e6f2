"""Multi-host runs through ``jax.distributed``: one process per host (or per accelerator),
one program over every process's devices.

JAX's multi-controller model: every process runs the same launch with the same flags,
builds the same global mesh (``jax.devices()`` lists all processes' devices) and calls the
same jitted programs on global arrays; each process holds and computes only the shards on
its own devices, and XLA's collectives (NCCL on GPUs, ICI on TPUs, gloo over TCP on CPUs)
move data between them. Around that, the host work is split as follows:

- everything that reads the global value of a sharded array (metrics, the content hash,
  the final parameters) is a collective: every process must call it, in the same order;
- files are written by process 0 alone (``metrics.jsonl``, ``config.json``, hashes,
  results), except checkpoints, which orbax writes from every process (its own shards),
  with process 0 finalising each step;
- progress is logged by process 0 alone.

The workdir must be on a file system every process sees (NFS, Lustre, GCS FUSE, ...).
Single-process runs take none of these paths: they run exactly as before.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from nca_adv.errors import UserError

AUTO = "auto"  # --coordinator_address=auto: JAX's own cluster detection (SLURM, Open MPI, TPU)
_ADDRESS = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):(?P<port>\d{1,5})$")


class DistributedError(UserError):
    """A multi-host setting that cannot work, or a failure to join the other processes."""


# ----------------------------------------------------------------------------- start-up
def check_settings(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """Raise :class:`DistributedError` (one line) on a combination that cannot start.

    No address: a single process (no count or id allowed). ``auto``: JAX detects the
    cluster (a count or id given overrides its guess). ``host:port``: count and id are
    both required, with ``0 <= process_id < num_processes``.
    """
    named = {"--num_processes": num_processes, "--process_id": process_id}
    given = [n for n, v in named.items() if v is not None]
    missing = [n for n, v in named.items() if v is None]
    if coordinator_address is None or coordinator_address == "":
        if given:
            raise DistributedError(
                f"{' and '.join(given)} {'need' if len(given) > 1 else 'needs'} "
                "--coordinator_address (host:port of process 0, "
                "or 'auto' for JAX's cluster detection)"
            )
        return
    if num_processes is not None and num_processes < 1:
        raise DistributedError(f"--num_processes must be >= 1, got {num_processes}")
    if process_id is not None and process_id < 0:
        raise DistributedError(f"--process_id must be >= 0, got {process_id}")
    if coordinator_address == AUTO:
        if num_processes is not None and process_id is not None:
            _check_id(num_processes, process_id)
        return
    m = _ADDRESS.match(coordinator_address)
    if m is None or not 0 < int(m.group("port")) < 65536:
        raise DistributedError(
            f"--coordinator_address={coordinator_address!r} is not host:port (e.g. "
            "10.0.0.1:1234, node001:1234) or 'auto'"
        )
    if missing:
        raise DistributedError(
            f"--coordinator_address={coordinator_address} needs {' and '.join(missing)} "
            "(or --coordinator_address=auto where JAX detects the cluster)"
        )
    _check_id(num_processes, process_id)


def _check_id(num_processes: int, process_id: int) -> None:
    if not 0 <= process_id < num_processes:
        raise DistributedError(
            f"--process_id={process_id} must lie in 0..{num_processes - 1} "
            f"(--num_processes={num_processes})"
        )


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = 300,
) -> bool:
    """Join the other processes of a multi-host run (before any JAX computation); whether
    this is one. ``coordinator_address=None``: a single process, nothing is done.

    On CPUs the cross-process collectives are gloo's (over TCP), unless another
    implementation (MPI) was chosen already.
    """
    check_settings(coordinator_address, num_processes, process_id)
    if not coordinator_address:
        return False
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    address = None if coordinator_address == AUTO else coordinator_address
    try:
        jax.distributed.initialize(
            address, num_processes, process_id, initialization_timeout=timeout_s
        )
    except Exception as e:  # JAX raises ValueError, RuntimeError or XLA's errors: one line
        text = " ".join(str(e).split())[:300]
        if coordinator_address == AUTO and "should be defined" in text:
            raise DistributedError(
                "--coordinator_address=auto: JAX detected no cluster (SLURM, Open MPI, TPU "
                "pod, Kubernetes); give host:port, --num_processes and --process_id"
            ) from e
        raise DistributedError(
            f"could not join the multi-host run (coordinator {coordinator_address}, process "
            f"{process_id} of {num_processes}): {type(e).__name__}: {text}"
        ) from e
    return True


# ----------------------------------------------------------------------------- processes
def process_count() -> int:
    return jax.process_count()


def is_main_process() -> bool:
    """Process 0: the one that writes files and logs progress."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process gets here (no-op in a single process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def main_process_flag(value: bool) -> bool:
    """Process 0's ``value`` on every process (a collective in a multi-host run): a check
    only process 0 can make (its lock, its files) then stops every process together."""
    if jax.process_count() == 1:
        return value
    return bool(multihost_utils.broadcast_one_to_all(np.int32(value)))


# ----------------------------------------------------------------------------- devices
def global_devices() -> list:
    """Every process's devices, process by process (each process's shards contiguous)."""
    return sorted(jax.devices(), key=lambda d: (d.process_index, d.id))


def check_mesh(mesh: Mesh) -> None:
    """A multi-host run's mesh must hold devices of every process: a process without one
    would have no part of the program to run."""
    if jax.process_count() == 1:
        return
    held = {d.process_index for d in mesh.devices.flat}
    missing = sorted(set(range(jax.process_count())) - held)
    if missing:
        raise ValueError(
            f"the mesh ({mesh.devices.size} devices) holds no device of process(es) "
            f"{missing}; a multi-host run shards over all {len(jax.devices())} devices of its "
            f"{jax.process_count()} processes (leave --num_devices unset)"
        )


# ----------------------------------------------------------------------------- arrays
def put(tree: Any, sharding: NamedSharding) -> Any:
    """``tree`` (the same host or process-local values on every process) as global arrays
    with ``sharding``: each process places the slices its devices hold. A single process
    is plain ``jax.device_put``."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(leaf):
        host = np.asarray(jax.device_get(leaf))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def host_value(tree: Any) -> Any:
    """The global value of every leaf, as numpy, on every process. An array sharded over
    several processes is gathered: a collective, so every process must call this with the
    same tree at the same point."""
    if jax.process_count() == 1:
        return jax.device_get(tree)

    def one(leaf):
        if (
            isinstance(leaf, jax.Array)
            and not leaf.is_fully_addressable
            and not leaf.is_fully_replicated
        ):
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(jax.device_get(leaf))

    return jax.tree.map(one, tree)
