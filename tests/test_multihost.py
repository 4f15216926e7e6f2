"""Multi-host training through ``jax.distributed``: two local processes of
``experiments.train_growing`` on CPU (one device each, gloo collectives over localhost)
train a 2-seed sweep, one run per process; both are SIGKILLed after a checkpoint and
resumed, and the result equals the same sweep trained in one process (float tolerance:
the sharded program may round differently)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nca_adv.training import distributed, runtime

ROOT = Path(__file__).resolve().parents[1]
N = 8  # iterations; the kill comes at the 2nd or 3rd checkpoint
# The tiny growing sweep of test_training.py's GROWING_FLAGS, with two seeds.
FLAGS = [
    "--target=lizard",
    "--padding=0",
    "--pool_size=6",
    "--batch_size=2",
    "--min_steps=2",
    "--max_steps=3",
    "--damage_n=1",
    "--lr_decay_at=3",
    "--chunk=1",
    "--checkpoint_every=1",
    "--seeds=0,1",
    "--host_devices=1",
    f"--iterations={N}",
]
RUNS = ("seed0", "seed1")


def _gloo_available() -> bool:
    try:
        from jax._src.lib import _jax
    except ImportError:
        return False
    return hasattr(_jax, "make_gloo_tcp_collectives")


pytestmark = pytest.mark.skipif(
    not _gloo_available(), reason="gloo CPU collectives unavailable in this jaxlib"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _command(workdir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.train_growing",
        *FLAGS,
        f"--workdir={workdir}",
        *extra,
    ]


def _start_pair(workdir: Path, env: dict, *extra: str) -> tuple[list, list[Path]]:
    """Both processes of a 2-process run on a fresh localhost coordinator port."""
    port = _free_port()
    procs, logs = [], []
    for pid in range(2):
        log = workdir.parent / f"{workdir.name}{'_resume' if extra else ''}.p{pid}.log"
        with log.open("w") as out:
            cmd = _command(
                workdir,
                *extra,
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={pid}",
            )
            procs.append(
                subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            )
        logs.append(log)
    return procs, logs


def _tails(logs: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs)


def _latest_step(workdir: Path) -> int:
    ckpts = workdir / "checkpoints"
    if not ckpts.is_dir():
        return 0
    return max((int(p.name) for p in ckpts.iterdir() if p.name.isdigit()), default=0)


def _wait(procs, logs, timeout: float = 300) -> None:
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    codes = [p.returncode for p in procs]
    assert codes == [0, 0], f"exit codes {codes}\n{_tails(logs)}"


def _params(workdir: Path, run: str) -> dict[str, np.ndarray]:
    with np.load(workdir / f"run_{run}" / "params.npz") as z:
        return {k: z[k] for k in z.files}


def test_two_process_sweep_killed_resumes_to_single_process_result(tmp_path, subprocess_env):
    env = subprocess_env(optimise=False)  # milliseconds of compute: compile cheaply
    single, multi = tmp_path / "single", tmp_path / "multi"
    res = subprocess.run(
        _command(single), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]

    procs, logs = _start_pair(multi, env)
    deadline = time.monotonic() + 300
    try:
        while _latest_step(multi) < 2:
            assert all(p.poll() is None for p in procs), _tails(logs)
            assert time.monotonic() < deadline, "no second checkpoint within 300 s"
            time.sleep(0.02)
        for p in procs:
            p.send_signal(signal.SIGKILL)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2
    at_kill = _latest_step(multi)
    assert 2 <= at_kill < N, f"killed at {at_kill}: raise N"
    assert not any((multi / f"run_{r}" / "params.npz").exists() for r in RUNS)

    procs, logs = _start_pair(multi, env, "--resume")
    _wait(procs, logs)
    text = [p.read_text() for p in logs]
    for t in text:  # every process restored the checkpoint (its own shards)
        found = re.search(r"resumed from iteration (\d+)", t)
        assert found and int(found.group(1)) >= 2, _tails(logs)
    assert "it/s" in text[0] and "it/s" not in text[1]  # progress: process 0 alone
    summaries = [json.loads(t.strip().splitlines()[-1]) for t in text]
    assert summaries[0] == summaries[1]

    for run in RUNS:
        a, b = _params(single, run), _params(multi, run)
        assert sorted(a) == sorted(b)
        for name in a:
            if a[name].dtype.kind == "f":
                np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6, err_msg=name)
            else:  # the kind tag
                assert b[name] == a[name]
        want = runtime.read_metrics(single / f"run_{run}" / "metrics.jsonl")
        got = runtime.read_metrics(multi / f"run_{run}" / "metrics.jsonl")
        assert [r["iteration"] for r in got] == list(range(1, N + 1))
        np.testing.assert_allclose(
            [r["loss"] for r in got], [r["loss"] for r in want], rtol=1e-5, err_msg=run
        )


@pytest.mark.parametrize(
    "settings, message",
    [
        ((None, 2, None), "--num_processes needs --coordinator_address"),
        ((None, None, 0), "--process_id needs --coordinator_address"),
        (("localhost:1234", 2, None), "needs --process_id"),
        (("localhost:1234", None, None), "needs --num_processes and --process_id"),
        (("localhost:1234", 2, 2), "--process_id=2 must lie in 0..1"),
        (("localhost", 2, 0), "is not host:port"),
        (("localhost:99999", 2, 0), "is not host:port"),
        (("auto", 2, 5), "--process_id=5 must lie in 0..1"),
    ],
)
def test_bad_multihost_settings_refused(settings, message):
    with pytest.raises(distributed.DistributedError, match=re.escape(message)):
        distributed.check_settings(*settings)


def test_good_multihost_settings_pass():
    for settings in [
        (None, None, None),
        ("auto", None, None),
        ("auto", 4, 1),
        ("10.0.0.1:1234", 2, 1),
        ("node001:1234", 1, 0),
        ("[::1]:1234", 2, 0),
    ]:
        distributed.check_settings(*settings)


def test_bad_combination_is_one_line_error(tmp_path, subprocess_env):
    res = subprocess.run(
        _command(tmp_path / "w", "--num_processes=2"),
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .startswith("error: --num_processes needs --coordinator_address")
    )
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "w").exists()
