"""The reliability probe's findings: full disks, sizes that crash or exhaust memory,
meaningless values, a model paired with the wrong base, late and unclear errors.

Each bad input exits with status 2 and one line ``error: ...`` as the last line of stderr,
without a traceback and before any compute or output; each write is atomic, so a full disk
leaves the previous file (or none) and nothing partial. A full disk is a tiny tmpfs when
this process may mount one (root), else writes made to fail in-process.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_cli_errors import RUNNER

ROOT = Path(__file__).resolve().parents[1]

# A tiny growing training (one checkpoint every 2 iterations, ~150 kB each).
TINY_TRAINING = [
    "--checkpoint_every=2",
    "--chunk=2",
    "--pool_size=4",
    "--batch_size=2",
    "--damage_n=1",
    "--min_steps=2",
    "--max_steps=3",
    "--padding=0",
]
# A tiny placement study (2 digits, 2 steps, no optimisation rounds).
TINY_PLACEMENT = [
    "--num_digits=2",
    "--steps=2",
    "--iterations=0",
    "--rounds=0",
    "--random_draws=1",
    "--budget=1",
]
TINY_TABLE = [
    "--bases=s=mnist",
    "--adversaries=s=mnist_adversary",
    "--num_digits=12",
    "--steps=2",
]
SMOKE_ADVERSARY_ITERATIONS = 2  # train_all's smoke preset
SMOKE_LIZARD_ITERATIONS = 3

# (id, launch module, argv, expected): a string = exit 2 with it in the last stderr line,
# 0 = success. {name}: a path of the `paths` fixture.
CASES = [
    # 2. sizes that crashed or ran out of memory
    ("tt_steps", "experiments.transfer_table", ["--steps=1000000000"], "flag --steps=1000000000"),
    ("tt_curve_ps", "experiments.transfer_table", ["--curve_ps=abc"], "--curve_ps must be"),
    ("pa_steps", "experiments.place_adversaries", ["--steps=1000000000"], "--steps must lie in"),
    ("pa_eval_keys", "experiments.place_adversaries", ["--eval_keys=100000000"], "GiB, more than"),
    (
        "pa_padding_big",
        "experiments.place_adversaries",
        ["--kind=growing", "--padding=100000"],
        "flag --padding=100000",
    ),
    (
        "pa_padding_negative",
        "experiments.place_adversaries",
        ["--kind=growing", "--padding=-3"],
        "flag --padding=-3",
    ),
    ("ta_loop", "experiments.train_all", ["--workdir={loop}"], "symbolic link that leads nowhere"),
    (
        "ta_loop_below",
        "experiments.train_all",
        ["--workdir={loop}/runs"],
        "symbolic link that leads nowhere",
    ),
    # 3. meaningless values
    (
        "hm_adversary_lr_negative",
        "experiments.train_mnist_hardened",
        ["--workdir={dir}/hm1", "--adversary_lr=-1"],
        "the learning rate must lie in (0, 1]",
    ),
    (
        "hm_adversary_lr_zero",
        "experiments.train_mnist_hardened",
        ["--workdir={dir}/hm2", "--adversary_lr=0"],
        "the learning rate must lie in (0, 1]",
    ),
    (
        "hm_adversary_lr_big",
        "experiments.train_mnist_hardened",
        ["--workdir={dir}/hm3", "--adversary_lr=5"],
        "the learning rate must lie in (0, 1]",
    ),
    ("pa_lr", "experiments.place_adversaries", ["--lr=-1"], "--lr must lie in (0, 1]"),
    (
        "pa_mnist_target",
        "experiments.place_adversaries",
        ["--kind=mnist", "--target=lizard_red"],
        "--target is used only with --kind=growing",
    ),
    (
        "pa_mnist_padding",
        "experiments.place_adversaries",
        ["--padding=10"],
        "--padding is used only with --kind=growing",
    ),
    (
        "pa_growing_digits",
        "experiments.place_adversaries",
        ["--kind=growing", "--num_digits=5"],
        "--num_digits is used only with --kind=mnist",
    ),
    ("pa_num_digits", "experiments.place_adversaries", ["--num_digits=100000000"], "10000 digits"),
    (
        "tt_duplicate",
        "experiments.transfer_table",
        ["--bases=x=mnist,x=mnist_hardened"],
        "the name 'x' is given twice",
    ),
    (
        "tt_other_settings",
        "experiments.transfer_table",
        ["--out={table}", "--steps=5"],
        "holds a table of other settings (--steps=200 there, 5 here)",
    ),
    ("tt_notable", "experiments.transfer_table", ["--notable"], "give --curves"),
    ("tt_num_digits", "experiments.transfer_table", ["--num_digits=100000000"], "[1, 10000]"),
    # 5. refused before the optimisation
    (
        "pa_grow_first",
        "experiments.place_adversaries",
        ["--kind=growing", "--grow_first=-5"],
        "flag --grow_first=-5",
    ),
    # 7. clearer messages, a wrong workdir
    (
        "pa_out_dir_file",
        "experiments.place_adversaries",
        ["--out_dir={file}"],
        "is a file, not a folder",
    ),
    (
        "ta_train_growing_workdir",
        "experiments.train_all",
        ["--preset=smoke", "--workdir={single_run}", "--resume"],
        "is the workdir of a single training",
    ),
    (
        "pg_host",
        "experiments.playground",
        ["--host=nonexistent.invalid", "--port=0"],
        "--host=nonexistent.invalid: cannot resolve it",
    ),
    # 4. an attack trained against the shipped lizard is not paired with the workdir's own
    (
        "ta_base_upfront",
        "experiments.train_all",
        ["--preset=smoke", "--workdir={shipped_pairing}", "--resume"],
        "was trained against the shipped lizard, but this workdir trains its own lizard",
    ),
    (
        "ta_base_changed",
        "experiments.train_all",
        [
            "--preset=smoke",
            "--workdir={own_lizard}",
            "--resume",
            "--only=lizard_no_tail_adversary",
        ],
        "was trained against the shipped lizard, not this workdir's lizard",
    ),
    (  # the same record with the base it was trained against: finished, skipped
        "ta_base_same",
        "experiments.train_all",
        [
            "--preset=smoke",
            "--workdir={shipped_pairing}",
            "--resume",
            "--only=lizard_no_tail_adversary",
        ],
        0,
    ),
]
NOTHING_CREATED = {"hm_adversary_lr_negative": "hm1", "hm_adversary_lr_zero": "hm2"}
NOTHING_CREATED["hm_adversary_lr_big"] = "hm3"


# ----------------------------------------------------------------------------- fixtures
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _finished_model(folder: Path, iterations: int, bases: dict, weights: Path) -> None:
    """A model folder as train_all leaves a finished one: weights, metrics, finished.json."""
    folder.mkdir(parents=True)
    shutil.copyfile(weights, folder / "params.npz")
    lines = [json.dumps({"iteration": i, "loss": 0.1}) for i in range(1, iterations + 1)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    record = {
        "preset": "smoke",
        "iterations": iterations,
        "seconds": 1.0,
        "runs": {
            "0": {
                "dir": ".",
                "result": "params.npz",
                "sha256": _sha256(folder / "params.npz"),
                "final_loss": 0.1,
            }
        },
        "bases": bases,
    }
    (folder / "finished.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    from nca_adv import io

    tmp = tmp_path_factory.mktemp("reliability")
    (tmp / "file").write_text("a file, not a folder")
    (tmp / "loop_a").symlink_to(tmp / "loop_b")
    (tmp / "loop_b").symlink_to(tmp / "loop_a")
    table = {
        "settings": {"num_digits": 300, "fraction": 0.1, "steps": 200, "seed": 0},
        "pairs": {"s|s": {"specs": ["mnist", "mnist_adversary"], "cells_voting_target": 0.5}},
    }
    (tmp / "table.json").write_text(json.dumps(table))
    single = tmp / "single_run"  # a train_growing workdir
    (single / "checkpoints").mkdir(parents=True)
    (single / "config.json").write_text("{}")

    shipped = io.shipped_models()
    lizard = {"lizard": {"sha256": _sha256(shipped["lizard"]), "trained_here": False}}
    attack = shipped["lizard_no_tail_adversary"]
    pairing = tmp / "shipped_pairing"  # the attack trained with --only: the shipped lizard
    _finished_model(
        pairing / "lizard_no_tail_adversary", SMOKE_ADVERSARY_ITERATIONS, lizard, attack
    )
    own = tmp / "own_lizard"  # ... and later a lizard of the workdir's own
    _finished_model(own / "lizard_no_tail_adversary", SMOKE_ADVERSARY_ITERATIONS, lizard, attack)
    _finished_model(own / "lizard", SMOKE_LIZARD_ITERATIONS, {}, shipped["mnist"])
    return {
        "dir": tmp,
        "file": tmp / "file",
        "loop": tmp / "loop_a",
        "table": tmp / "table.json",
        "single_run": single,
        "shipped_pairing": pairing,
        "own_lizard": own,
    }


def _run_cases(cases: list[tuple], paths: dict, env: dict | None = None) -> dict[str, dict]:
    """{case id: {code, stdout, stderr}}, one runner process per launch module."""
    from concurrent.futures import ThreadPoolExecutor

    groups: dict[str, list] = {}
    for case_id, module, argv, *_ in cases:
        groups.setdefault(module, []).append((case_id, [a.format(**paths) for a in argv]))
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    env.pop("NCA_ADV_TRACEBACK", None)

    def run_group(module: str, items: list) -> dict[str, dict]:
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER, module],
            input=json.dumps([{"argv": argv} for _, argv in items]),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=600,
        )
        reports = [json.loads(x[7:]) for x in proc.stdout.splitlines() if x.startswith("@@CASE ")]
        assert len(reports) == len(items), f"{module} runner died:\n{proc.stderr[-3000:]}"
        return {case_id: r for (case_id, _), r in zip(items, reports, strict=True)}

    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda item: run_group(*item), groups.items()))
    return {k: v for part in parts for k, v in part.items()}


@pytest.fixture(scope="module")
def results(paths) -> dict[str, dict]:
    return _run_cases(CASES, paths)


def _assert_one_line(r: dict, expected: str) -> None:
    lines = r["stderr"].strip().splitlines()
    assert r["code"] == 2, r["stderr"][-3000:]
    assert lines and lines[-1].startswith("error: "), r["stderr"][-3000:]
    assert expected in lines[-1], lines[-1]
    assert "Traceback" not in r["stderr"], r["stderr"][-3000:]
    assert sum(x.startswith("error: ") for x in lines) == 1


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("case_id, module, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_launch(results, case_id, module, argv, expected):
    r = results[case_id]
    if expected == 0:
        assert r["code"] == 0, r["stderr"][-3000:]
        json.loads(r["stdout"].strip().splitlines()[-1])
        return
    _assert_one_line(r, expected)


def test_refused_before_anything_is_written(results, paths):
    for case_id, folder in NOTHING_CREATED.items():
        assert results[case_id]["code"] == 2
        assert not (paths["dir"] / folder).exists(), case_id
    # the earlier table is neither replaced nor touched
    assert json.loads(paths["table"].read_text())["settings"]["steps"] == 200
    # no model trained in the workdirs whose pairing was refused
    for workdir in ("shipped_pairing", "own_lizard"):
        assert not list(paths[workdir].glob("*/checkpoints")), workdir


def test_public_serving_warning_only_for_an_address_that_exists(results):
    assert "anyone who can reach" not in results["pg_host"]["stderr"]


def test_finished_attack_records_its_base(results, paths):
    """The attack with the base it was trained against is skipped as finished."""
    out = json.loads(results["ta_base_same"]["stdout"].strip().splitlines()[-1])
    assert out["models"]["lizard_no_tail_adversary"]["skipped"] is True


# ----------------------------------------------------------------------------- full disk
@contextlib.contextmanager
def _tmpfs(folder: Path, size: str):
    """A tmpfs of ``size`` mounted on ``folder`` (skip where this process may not mount)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> None:
    """Fill the disk of ``folder`` to the last byte."""
    with (folder / "filler").open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "filler")


def _launch(module: str, argv: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )


def test_checkpoint_save_on_a_full_disk_is_one_line_and_keeps_the_last(tmp_path, subprocess_env):
    env = subprocess_env()
    with _tmpfs(tmp_path / "disk", "200k") as disk:  # room for one checkpoint, not two
        work = disk / "run"
        args = [f"--workdir={work}", *TINY_TRAINING]
        r = _launch("experiments.train_growing", [*args, "--iterations=6"], env)
        _assert_one_line(
            {"code": r.returncode, "stderr": r.stderr},
            "cannot save the checkpoint of iteration 4",
        )
        last = r.stderr.strip().splitlines()[-1]
        assert "no space left on device" in last and "iteration 2 is kept" in last
        assert len(r.stderr.strip().splitlines()) <= 4, r.stderr  # progress lines and the error
        committed = sorted(p.name for p in (work / "checkpoints").iterdir() if p.name.isdigit())
        assert committed == ["2"]
        assert not (work / "checkpoints" / "4.sha256").exists()
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        r = _launch("experiments.train_growing", [*args, "--iterations=6", "--resume"], env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "resumed from iteration 2" in r.stderr


def test_outputs_on_a_full_disk_are_refused_before_compute(tmp_path, paths):
    with _tmpfs(tmp_path / "disk", "64k") as disk:
        (disk / "place").mkdir()
        _fill(disk)
        cases = [
            ("gif", "experiments.eval_growing", ["--steps=20", f"--video={disk}/x.gif"]),
            ("table", "experiments.transfer_table", [*TINY_TABLE, f"--out={disk}/t.json"]),
            (
                "place",
                "experiments.place_adversaries",
                [*TINY_PLACEMENT, f"--out_dir={disk}/place"],
            ),
            ("train", "experiments.train_growing", [f"--workdir={disk}/run", *TINY_TRAINING]),
        ]
        results = _run_cases(cases, paths)
        for case_id, *_ in cases:
            _assert_one_line(results[case_id], "no space left on device (the disk of")
        assert _leftovers(disk) == ["place"] and _leftovers(disk / "place") == []


def test_videos_on_a_full_disk_are_one_line_and_never_partial(tmp_path, paths):
    """A disk with a page or two left: the check lets the launch run, the write fails."""
    with _tmpfs(tmp_path / "disk", "64k") as disk:
        (disk / "old.gif").write_bytes(b"GIF89a an earlier video")
        (disk / "videos").mkdir()
        _fill(disk)
        filler = disk / "filler"
        os.truncate(filler, (filler.stat().st_size // 4096 - 1) * 4096)
        cases = [  # each over 8 kB
            ("gif", "experiments.eval_growing", ["--steps=20", f"--video={disk}/videos/x.gif"]),
            ("mp4", "experiments.eval_growing", ["--steps=40", f"--video={disk}/videos/x.mp4"]),
            ("old", "experiments.eval_growing", ["--steps=20", f"--video={disk}/old.gif"]),
        ]
        results = _run_cases(cases, paths)
        for case_id, *_ in cases:
            _assert_one_line(results[case_id], "no space left on device")
            assert "the disk of" not in results[case_id]["stderr"]  # failed at the write
        assert _leftovers(disk / "videos") == []
        assert _leftovers(disk) == ["old.gif", "videos"]
        assert (disk / "old.gif").read_bytes() == b"GIF89a an earlier video"


# ----------------------------------------------------------------------------- in-process
def test_atomic_output_keeps_the_previous_file(tmp_path):
    from experiments.common import atomic_output

    out = tmp_path / "t.json"
    out.write_text("old")
    with pytest.raises(OSError), atomic_output(out) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]
    with atomic_output(out) as tmp:
        tmp.write_text("new")
    assert out.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


def test_a_video_that_cannot_be_written_leaves_nothing(tmp_path, monkeypatch):
    from PIL import Image

    from experiments import cli
    from nca_adv.media import video

    frames = np.zeros((3, 8, 8, 3), np.uint8)

    def full(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"GIF89a")  # a few bytes, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(OSError) as caught:
        video.write_video(tmp_path / "v.gif", frames)
    assert cli.is_expected(caught.value)
    assert cli.message(caught.value) == f"{tmp_path / 'v.gif'}: no space left on device"
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_mp4_is_not_taken_for_a_video(tmp_path):
    from nca_adv.media import video

    pytest.importorskip("imageio_ffmpeg")
    path = video.write_video(tmp_path / "v.mp4", np.zeros((4, 16, 16, 3), np.uint8))
    assert video._complete_mp4(path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 1):
        (tmp_path / "cut.mp4").write_bytes(data[:cut])
        assert not video._complete_mp4(tmp_path / "cut.mp4")


def test_checkpoint_save_failure_is_one_error_and_keeps_the_last(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    from experiments import cli
    from nca_adv.training import runtime

    # what a failed save quiets for the rest of the process, restored after the test
    monkeypatch.setattr(runtime._QuietOrbax, "silent", False)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    ckpt = runtime.Checkpointer(tmp_path / "checkpoints")
    state = {"w": np.arange(4, dtype=np.float32)}
    ckpt.save(1, state)

    def full(self, *args, **kwargs):
        raise ValueError(
            "RESOURCE_EXHAUSTED: Error writing ... Failed to write 63576 bytes to file 6: "
            "No space left on device [os_error_code='28']"
        )

    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    with pytest.raises(runtime.CheckpointError) as caught:
        ckpt.save(2, state)
    text = str(caught.value)
    assert cli.is_expected(caught.value)
    assert "no space left on device" in text and "iteration 1 is kept" in text
    assert ckpt.steps() == [1] and not (tmp_path / "checkpoints" / "2.sha256").exists()
    ckpt.close()


def test_resuming_on_another_device_count_warns(tmp_path, subprocess_env):
    """A 2-device sweep resumed on 1 device: one warning line that it is not bit for bit."""
    env = subprocess_env(optimise=False)
    args = [f"--workdir={tmp_path / 'sweep'}", *TINY_TRAINING, "--seeds=0,1"]
    r = _launch("experiments.train_growing", [*args, "--iterations=2", "--host_devices=2"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "sweep" / "config.json").read_text())["devices"] == 2
    r = _launch("experiments.train_growing", [*args, "--iterations=2", "--resume"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    warned = [line for line in r.stderr.splitlines() if "not bit for bit" in line]
    assert len(warned) == 1 and "trained on 2 device(s) and resumes on 1" in warned[0]
