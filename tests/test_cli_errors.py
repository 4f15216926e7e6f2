"""The launches' error contract (experiments/cli.py), table-driven: each bad input exits with
status 2 and one line ``error: <message>`` as the last line of stderr, no traceback, and
before any output is created; good input still exits 0.

To stay fast, each launch runs all its cases in ONE Python process (JAX is imported once):
a small runner calls ``cli.run(module.main, argv)`` per case and reports exit code, stdout
and stderr. The groups run a few at a time.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# Runs every case of one launch module in one process; one "@@CASE <json>" line per case.
RUNNER = r"""
import contextlib, gc, importlib, io, json, os, sys, traceback
from absl import app, flags, logging
from experiments import cli

module = importlib.import_module(sys.argv[1])
log = logging.get_absl_handler().python_handler
for case in json.loads(sys.stdin.read()):
    flags.FLAGS.unparse_flags()
    app._register_and_parse_flags_with_usage.done = False  # absl allows one app.run per process
    flags.FLAGS.verbosity = 0  # INFO, as app.run sets it on its first call only
    saved_env = dict(os.environ)
    os.environ.update(case.get("env", {}))
    out, err = io.StringIO(), io.StringIO()
    log.stream = err  # the launch's log lines belong to its stderr too
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            positional = getattr(module, "POSITIONAL_ARGS", False)  # as its __main__ runs it
            cli.run(module.main, [sys.argv[1], *case["argv"]], positional_args=positional)
            code = 0
        except SystemExit as e:
            code = 0 if e.code is None else e.code
        except BaseException:  # a crash that escaped the contract: keep its traceback
            traceback.print_exc()
            code = "uncaught"
        gc.collect()  # leftovers of this case (unraisable reports) are reported in it
    log.stream = sys.__stderr__
    os.environ.clear()
    os.environ.update(saved_env)
    result = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
    print("@@CASE " + json.dumps(result), file=sys.__stdout__, flush=True)
"""

# A tiny growing attack (the shipped lizard as its own adversary, a workdir fixture).
ATTACK = [
    "--adversary={run}",
    "--target=lizard_no_tail",
    "--padding=0",
    "--grow_first=2",
    "--steps=4",
    "--runs=2",
]

# (id, launch module, argv, expected): expected 0 = success, a string = exit 2 with a last
# stderr line "error: ..." containing it. {name} in argv: a path from the `paths` fixture.
CASES = [
    # eval_growing
    ("g_flag_value", "experiments.eval_growing", ["--steps=-3"], "flag --steps=-3"),
    ("g_unknown_flag", "experiments.eval_growing", ["--stepz=3"], "Unknown command line flag"),
    ("g_stray_word", "experiments.eval_growing", ["--steps=2", "steps=3"], "unexpected argument"),
    ("g_no_model", "experiments.eval_growing", ["--model=nonesuch"], "neither a shipped model"),
    ("g_no_target", "experiments.eval_growing", ["--target=dragon"], "unknown target"),
    ("g_target_dir", "experiments.eval_growing", ["--target={dir}"], "is a directory"),
    ("g_target_empty", "experiments.eval_growing", ["--target={clear_png}"], "is empty"),
    ("g_target_tiny", "experiments.eval_growing", ["--target={tiny_png}"], "too small"),
    ("g_garbage_npz", "experiments.eval_growing", ["--model={garbage_npz}"], "not a weights file"),
    ("g_text_npz", "experiments.eval_growing", ["--model={text_npz}"], "not a weights file"),
    ("g_mnist_npz", "experiments.eval_growing", ["--model=mnist"], "holds a mnist model"),
    ("g_corrupt", "experiments.eval_growing", ["--model={corrupt_run}"], "cannot be read"),
    ("g_corrupt_meta", "experiments.eval_growing", ["--model={corrupt_meta}"], "cannot be read"),
    ("g_not_run", "experiments.eval_growing", ["--model={dir}"], "neither a training workdir"),
    ("g_video_ext", "experiments.eval_growing", ["--video={dir}/v.avi"], "unknown format '.avi'"),
    ("g_video_dir", "experiments.eval_growing", ["--video={dir}"], "is a directory"),
    (
        "g_video_parent_file",
        "experiments.eval_growing",
        ["--video={file}/v.mp4"],
        "is a file, not a folder",
    ),
    (
        "g_damage",
        "experiments.eval_growing",
        ["--steps=10", "--damage_at=10"],
        "--damage_at must be smaller than --steps",
    ),
    (
        "g_traceback_env",
        "experiments.eval_growing",
        ["--model=nonesuch", {"NCA_ADV_TRACEBACK": "1"}],
        "neither a shipped model",
    ),
    # eval_growing: no flag silently ignored, sizes and outputs checked first (issue 16)
    ("g_padding_bound", "experiments.eval_growing", ["--padding=100000"], "flag --padding=100000"),
    ("g_memory", "experiments.eval_growing", ["--padding=1000", "--runs=100000"], "GiB, more than"),
    ("g_video_proc", "experiments.eval_growing", ["--video=/proc/x.mp4"], "cannot create files"),
    (
        "g_schedule_alone",
        "experiments.eval_growing",
        ["--perturbation_schedule=on:0-"],
        "only with",
    ),
    ("g_x0_alone", "experiments.eval_growing", ["--x0=grown"], "--x0 is used only with"),
    ("g_grow_first_alone", "experiments.eval_growing", ["--grow_first=5"], "--grow_first is used"),
    (
        "g_grow_first_seed",
        "experiments.eval_growing",
        ["--perturbation=tail", "--grow_first=5"],
        "--grow_first is used only with --adversary or --x0=grown",
    ),
    ("g_original_alone", "experiments.eval_growing", ["--original_target=lizard"], "an attack"),
    ("g_fraction_alone", "experiments.eval_growing", ["--adversary_fraction=0.5"], "--adversary"),
    ("g_zoom_alone", "experiments.eval_growing", ["--zoom=2"], "--zoom is used only with --video"),
    (
        "g_x0_adversary",
        "experiments.eval_growing",
        ["--adversary={run}", "--x0=grown"],
        "--x0 does not combine with --adversary",
    ),
    (  # a million attack steps would time the runner out: the file is checked first
        "g_original_missing",
        "experiments.eval_growing",
        ["--adversary={run}", "--original_target={dir}/none.png", "--steps=1000000"],
        "does not exist",
    ),
    (
        "g_pert_damage",
        "experiments.eval_growing",
        ["--perturbation=tail", "--steps=4", "--damage_at=2"],
        "--damage_at does not combine",
    ),
    ("g_ok", "experiments.eval_growing", ["--steps=2"], 0),
    (
        "g_ok_adversary",
        "experiments.eval_growing",
        [*ATTACK, "--original_target=lizard"],
        0,
    ),
    (  # the attack under a perturbation that is off throughout: the attack alone
        "g_ok_adversary_perturbation_off",
        "experiments.eval_growing",
        [
            *ATTACK,
            "--perturbation=tail",
            "--perturbation_schedule=off:0-",
            "--original_target=lizard",
        ],
        0,
    ),
    (
        "g_ok_adversary_perturbation",
        "experiments.eval_growing",
        [
            *ATTACK,
            "--perturbation=tail",
            "--perturbation_schedule=on:0-2,off:2-",
            "--video={dir}/ap.gif",
        ],
        0,
    ),
    ("g_ok_runs", "experiments.eval_growing", ["--steps=2", "--runs=2", "--video={dir}/v.mp4"], 0),
    ("g_ok_workdir", "experiments.eval_growing", ["--steps=2", "--model={run}"], 0),
    # eval_mnist
    ("m_growing_run", "experiments.eval_mnist", ["--model={run}"], "holds a growing model"),
    ("m_growing_npz", "experiments.eval_mnist", ["--model=lizard"], "holds a growing model"),
    ("m_corrupt", "experiments.eval_mnist", ["--model={corrupt_run}"], "cannot be read"),
    ("m_curve_out_alone", "experiments.eval_mnist", ["--curve_out={dir}/c.json"], "needs --curve"),
    (
        "m_curve_out_file",
        "experiments.eval_mnist",
        ["--curve", "--curve_out={file}/c.json"],
        "is a file, not a folder",
    ),
    ("m_curve_one", "experiments.eval_mnist", ["--curve", "--num_digits=1"], "--num_digits >= 2"),
    ("m_video_ext", "experiments.eval_mnist", ["--video={dir}/v.webm"], "unknown format"),
    ("m_all_empty", "experiments.eval_mnist", ["--mnist_dir={blank_mnist}"], "has a live cell"),
    ("m_no_mnist_dir", "experiments.eval_mnist", ["--mnist_dir={dir}/none"], "not found"),
    ("m_inject_alone", "experiments.eval_mnist", ["--inject_at=5"], "--inject_at is used only"),
    ("m_remove_alone", "experiments.eval_mnist", ["--remove_at=5"], "--remove_at is used only"),
    ("m_on_digit_alone", "experiments.eval_mnist", ["--adversary_on_digit"], "used only with"),
    ("m_fraction_alone", "experiments.eval_mnist", ["--adversary_fraction=0.5"], "used only with"),
    ("m_switch_alone", "experiments.eval_mnist", ["--switch_at=5"], "--switch_at is used only"),
    (  # the window is checked before the data are read
        "m_window",
        "experiments.eval_mnist",
        ["--adversary=mnist_adversary", "--steps=3", "--inject_at=5", "--mnist_dir={dir}/none"],
        "need --inject_at < --remove_at <= --steps",
    ),
    ("m_steps_bound", "experiments.eval_mnist", ["--steps=100000000"], "flag --steps=100000000"),
    (
        "m_ok_skip_empty",
        "experiments.eval_mnist",
        ["--mnist_dir={some_blank_mnist}", "--steps=2", "--batch_size=4"],
        0,
    ),
    (
        "m_ok_rerun",
        "experiments.eval_mnist",
        ["--mnist_dir={some_blank_mnist}", "--steps=2", "--batch_size=4"],
        0,
    ),
    # export_model
    (
        "x_kind",
        "experiments.export_model",
        ["--workdir={run}", "--kind=mnist", "--name=t", "--out_dir={out}"],
        "holds a growing model, expected mnist",
    ),
    (
        "x_shipped",
        "experiments.export_model",
        ["--workdir={run}", "--kind=growing", "--name=lizard"],
        "pass --force",
    ),
    (
        "x_no_metrics",
        "experiments.export_model",
        ["--workdir={no_metrics_run}", "--kind=growing", "--name=half", "--out_dir={out}"],
        "metrics.jsonl not found",
    ),
    (
        "x_out_file",
        "experiments.export_model",
        ["--workdir={run}", "--kind=growing", "--name=t", "--out_dir={file}"],
        "is a file, not a folder",
    ),
    (
        "x_no_run",
        "experiments.export_model",
        ["--workdir={dir}/none", "--kind=growing", "--name=t", "--out_dir={out}"],
        "not found",
    ),
    (
        "x_corrupt",
        "experiments.export_model",
        ["--workdir={corrupt_run}", "--kind=growing", "--name=t", "--out_dir={out}"],
        "cannot be read",
    ),
    ("x_required", "experiments.export_model", ["--kind=growing", "--name=t"], "--workdir"),
    (
        "x_ok",
        "experiments.export_model",
        ["--workdir={run}", "--kind=growing", "--name=t", "--out_dir={out}"],
        0,
    ),
    # trainers: refused before the workdir exists
    (
        "t_batch_pool",
        "experiments.train_growing",
        ["--workdir={dir}/tg1", "--pool_size=4", "--batch_size=8"],
        "larger than --pool_size",
    ),
    (
        "t_empty_target",
        "experiments.train_growing",
        ["--workdir={dir}/tg2", "--target={clear_png}"],
        "is empty",
    ),
    ("t_lr_nan", "experiments.train_growing", ["--workdir={dir}/tg3", "--lr=nan"], "--lr=nan"),
    ("t_lr_zero", "experiments.train_growing", ["--workdir={dir}/tg4", "--lr=0"], "(0, 1]"),
    (
        "t_padding_bound",
        "experiments.train_growing",
        ["--workdir={dir}/tg5", "--padding=100000"],
        "flag --padding=100000",
    ),
    (
        "t_memory",
        "experiments.train_growing",
        ["--workdir={dir}/tg6", "--padding=1000", "--pool_size=100000"],
        "GiB, more than",
    ),
    (
        "tm_lr_negative",
        "experiments.train_mnist",
        ["--workdir={dir}/tm3", "--lr=-1"],
        "the learning rate must lie in (0, 1]",
    ),
    (
        "tma_lr_big",
        "experiments.train_mnist_adversary",
        ["--workdir={dir}/tm4", "--lr=5"],
        "the learning rate must lie in (0, 1]",
    ),
    (
        "tp_memory",
        "experiments.train_perturbation",
        ["--workdir={dir}/tp1", "--padding=1000", "--pool_size=100000"],
        "GiB, more than",
    ),
    (
        "t_workdir_file",
        "experiments.train_growing",
        ["--workdir={file}", "--pool_size=4", "--batch_size=2", "--damage_n=1"],
        "is a file, not a folder",
    ),
    (
        "tm_batch",
        "experiments.train_mnist",
        ["--workdir={dir}/tm1", "--batch_size=4"],
        "--new_n + --mutate_n",
    ),
    (
        "tm_batch_pool",
        "experiments.train_mnist",
        ["--workdir={dir}/tm2", "--batch_size=200"],
        "larger than --pool_size",
    ),
    (
        "ta_only",
        "experiments.train_all",
        ["--workdir={dir}/ta", "--only=nonesuch"],
        "--only: unknown models",
    ),
    # the rest
    ("r_out_file", "experiments.reproduce", ["--out={file}"], "is a file, not a folder"),
    ("mp_no_terms", "experiments.mix_perturbations", [], "give the mix as terms"),
    ("mp_padding_neg", "experiments.mix_perturbations", ["tail", "--padding=-3"], "--padding=-3"),
    (
        "mp_padding_bound",
        "experiments.mix_perturbations",
        ["tail", "--padding=100000"],
        "range [0, 1000]",
    ),
    (
        "mp_memory",
        "experiments.mix_perturbations",
        ["tail", "--padding=1000", "--runs=100000"],
        "GiB, more than",
    ),
    ("mp_grow_first_seed", "experiments.mix_perturbations", ["tail", "--grow_first=5"], "x0=grown"),
    ("mp_video_proc", "experiments.mix_perturbations", ["tail", "--video=/proc/x.mp4"], "/proc"),
    (
        "ta_assets_proc",
        "experiments.train_all",
        ["--preset=smoke", "--workdir={dir}/ta2", "--export", "--assets=/proc/x"],
        "--assets=/proc/x: cannot create files in /proc",
    ),
    ("bt_which", "benchmarks.bench_training", ["--which=nonesuch"], "--which: unknown"),
    ("bg_batches", "benchmarks.bench_growing", ["--batches=1,x"], "--batches"),
    ("bg_repeats", "benchmarks.bench_growing", ["--repeats=0"], "flag --repeats=0"),
    ("bm_model", "benchmarks.bench_mnist", ["--model=lizard"], "holds a growing model"),
]
NO_WORKDIR = {
    "t_batch_pool": "tg1",
    "t_empty_target": "tg2",
    "tm_batch": "tm1",
    "ta_only": "ta",
    "t_lr_nan": "tg3",
    "t_lr_zero": "tg4",
    "t_padding_bound": "tg5",
    "t_memory": "tg6",
    "tm_lr_negative": "tm3",
    "tma_lr_big": "tm4",
    "tp_memory": "tp1",
    "ta_assets_proc": "ta2",
}


# ----------------------------------------------------------------------------- input files
def _write_idx(path: Path, a: np.ndarray) -> None:
    magic = 2051 if a.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in a.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + a.astype(np.uint8).tobytes())


def _mnist_dir(folder: Path, blank: list[bool]) -> Path:
    """IDX files whose test digits are a square blob, or blank where ``blank``."""
    folder.mkdir()
    imgs = np.zeros((len(blank), 28, 28), np.uint8)
    for i, b in enumerate(blank):
        if not b:
            imgs[i, 10:18, 10:18] = 255
    labels = np.arange(len(blank)) % 10
    _write_idx(folder / "train-images-idx3-ubyte.gz", imgs[:1])
    _write_idx(folder / "train-labels-idx1-ubyte.gz", labels[:1])
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)
    return folder


def _checkpoint_run(folder: Path, metrics: bool = True) -> Path:
    """A training workdir as the trainers leave it: checkpoints/3 of the shipped lizard."""
    import orbax.checkpoint as ocp

    from nca_adv import io

    params = io.load_model("lizard", "growing")
    with ocp.CheckpointManager(folder.absolute() / "checkpoints") as manager:
        manager.save(3, args=ocp.args.StandardSave({"params": params}))
        manager.wait_until_finished()
    if metrics:
        lines = [json.dumps({"iteration": i, "loss": 0.1 * i}) for i in (1, 2, 3)]
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _corrupt(src: Path, dst: Path, pattern: str) -> Path:
    import shutil

    shutil.copytree(src, dst)
    hit = [p for p in (dst / "checkpoints" / "3").rglob("*") if p.is_file() and p.match(pattern)]
    assert hit, pattern
    for p in hit:
        p.write_bytes(p.read_bytes()[:10])
    return dst


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "file").write_text("a file, not a folder")
    (tmp / "garbage.npz").write_bytes(bytes(range(256)) * 4)
    (tmp / "text.npz").write_text("hello\n")
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(tmp / "clear.png")
    Image.new("RGBA", (2, 2), (255, 0, 0, 255)).save(tmp / "tiny.png")
    run = _checkpoint_run(tmp / "run")
    return {
        "dir": tmp,
        "file": tmp / "file",
        "garbage_npz": tmp / "garbage.npz",
        "text_npz": tmp / "text.npz",
        "clear_png": tmp / "clear.png",
        "tiny_png": tmp / "tiny.png",
        "run": run,
        "no_metrics_run": _checkpoint_run(tmp / "no_metrics", metrics=False),
        "corrupt_run": _corrupt(run, tmp / "corrupt", "*/ocdbt.process_0/d/*"),
        "corrupt_meta": _corrupt(run, tmp / "corrupt_meta", "*/default/d/*"),
        "blank_mnist": _mnist_dir(tmp / "blank_mnist", [True] * 3),
        "some_blank_mnist": _mnist_dir(tmp / "some_blank", [False, True, False, True]),
        "out": tmp / "out",
    }


# ----------------------------------------------------------------------------- running
def _argv(argv: list, paths: dict) -> tuple[list[str], dict]:
    env = {k: v for a in argv if isinstance(a, dict) for k, v in a.items()}
    return [a.format(**paths) for a in argv if isinstance(a, str)], env


PARALLEL = 6  # runner processes at once (each mostly imports JAX, then waits on 2 cores)


@pytest.fixture(scope="module")
def results(paths) -> dict[str, dict]:
    """Every case's {code, stdout, stderr}; one runner process per launch."""
    from concurrent.futures import ThreadPoolExecutor

    groups: dict[str, list] = {}
    for case_id, module, *_ in CASES:
        groups.setdefault(module, []).append(case_id)
    by_id = {c[0]: c for c in CASES}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NCA_ADV_TRACEBACK", None)

    def run_group(module: str, ids: list[str]) -> dict[str, dict]:
        cases = [dict(zip(("argv", "env"), _argv(by_id[i][2], paths))) for i in ids]
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER, module],
            input=json.dumps(cases),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=600,
        )
        reports = [json.loads(x[7:]) for x in proc.stdout.splitlines() if x.startswith("@@CASE ")]
        assert len(reports) == len(ids), f"{module} runner died:\n{proc.stderr[-3000:]}"
        return dict(zip(ids, reports))

    with ThreadPoolExecutor(PARALLEL) as pool:
        parts = list(pool.map(lambda item: run_group(*item), groups.items()))
    return {k: v for part in parts for k, v in part.items()}


# ----------------------------------------------------------------------------- the table
@pytest.mark.parametrize("case_id, module, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_launch(results, case_id, module, argv, expected):
    r = results[case_id]
    lines = r["stderr"].strip().splitlines()
    if expected == 0:
        assert r["code"] == 0, r["stderr"][-3000:]
        json.loads(r["stdout"].strip().splitlines()[-1])  # strict JSON: no NaN
        return
    assert r["code"] == 2, r["stderr"][-3000:]
    assert lines and lines[-1].startswith("error: "), r["stderr"][-3000:]
    assert expected in lines[-1]
    if "NCA_ADV_TRACEBACK" in str(argv):
        assert "Traceback" in r["stderr"]  # shown on request, still one error line last
    else:
        assert "Traceback" not in r["stderr"]
        assert sum(x.startswith("error: ") for x in lines) == 1


def test_refused_before_anything_is_written(results, paths):
    for case_id, folder in NO_WORKDIR.items():
        assert results[case_id]["code"] == 2
        assert not (paths["dir"] / folder).exists(), case_id
    assert results["x_no_metrics"]["code"] == 2
    assert not (paths["out"] / "half.npz").exists()  # no half export


def test_attack_under_a_perturbation_off_is_the_attack(results):
    """--adversary with --perturbation composes the step transforms; switched off
    throughout it is the attack alone bit for bit, switched on it changes the losses."""
    alone, off, on = (
        json.loads(results[k]["stdout"].strip().splitlines()[-1])
        for k in (
            "g_ok_adversary",
            "g_ok_adversary_perturbation_off",
            "g_ok_adversary_perturbation",
        )
    )
    assert off["loss_per_run"] == alone["loss_per_run"]
    assert off["loss_original_per_run"] == alone["loss_original_per_run"]
    assert off["adversary_cells_per_run"] == alone["adversary_cells_per_run"]
    assert on["perturbation"] == "tail" and [p["on"] for p in on["phases"]] == [True, False]
    assert on["loss_per_run"] != alone["loss_per_run"]
    assert Path(on["video"]).stat().st_size > 500


def test_eval_growing_json_keys_do_not_depend_on_runs(results):
    one, two = (json.loads(results[i]["stdout"].splitlines()[-1]) for i in ("g_ok", "g_ok_runs"))
    assert set(one) == set(two) - {"video"}
    assert one["runs"] == 1 and two["runs"] == 2 and one["damage_at"] is None
    assert len(one["loss_per_run"]) == 1 and len(two["alive_cells_per_run"]) == 2


def test_quiet_logs_and_progress(results):
    everything = "".join(r["stderr"] for r in results.values())
    assert "digits 2/2 (100%)" in everything and "ETA" in results["m_ok_skip_empty"]["stderr"]
    assert "skipping 2 digit(s) without a live cell" in results["m_ok_skip_empty"]["stderr"]
    assert "Unable to initialize backend 'tpu'" not in everything
    assert "os.fork()" not in results["g_ok_runs"]["stderr"]  # it wrote an mp4


def test_eval_mnist_skips_empty_digits_and_keeps_timing_apart(results):
    r = json.loads(results["m_ok_skip_empty"]["stdout"].splitlines()[-1])
    assert r["num_digits"] == 2 and r["skipped_empty_digits"] == 2
    assert 0 <= r["cell_accuracy"] <= 1 and 0 <= r["total_agreement"] <= 1
    assert set(r["timing"]) == {"digits_per_s", "compile_seconds"} and "digits_per_s" not in r
    # apart from the timing (the last key), a rerun prints the same bytes
    first, again = (
        results[i]["stdout"].splitlines()[-1] for i in ("m_ok_skip_empty", "m_ok_rerun")
    )
    assert first.split(', "timing"')[0] == again.split(', "timing"')[0]


def test_export_writes_weights_and_curve(results, paths):
    r = json.loads(results["x_ok"]["stdout"].splitlines()[-1])
    assert r["iterations"] == 3 and r["final_loss"] == pytest.approx(0.3)
    assert (paths["out"] / "t.npz").is_file()
    assert (paths["out"] / "t_metrics.csv").read_text().splitlines()[0] == "iteration,loss"


# ----------------------------------------------------------------------------- classification
def _raise(fn):
    try:
        fn()
    except Exception as e:
        return e
    raise AssertionError("no exception")


def _two_models():
    from absl import flags

    values = flags.FlagValues()
    flags.DEFINE_string("model", "", "first", flag_values=values)
    return values


def test_checks_are_expected_and_bugs_are_not():
    from absl import flags

    from experiments import cli
    from nca_adv import io
    from nca_adv.io import targets
    from nca_adv.models import mnist

    expected = [
        _raise(lambda: mnist.check_images(np.zeros((2, 2)))),  # a ValueError check of ours
        _raise(lambda: targets.load_target("dragon")),  # a KeyError check of ours
        _raise(lambda: io.load_npz(__file__, "growing")),  # a project error class
        _raise(lambda: open("/nonexistent/x")),  # a missing file, wherever it is opened
    ]
    bugs = [
        _raise(lambda: np.zeros(4).reshape(3)),  # a ValueError inside numpy
        _raise(lambda: io.arrays_from_params({}, "growing")),  # a failed lookup of ours
        _raise(lambda: 1 / 0),
        _raise(lambda: flags.DEFINE_string("model", "", "a clash", flag_values=_two_models())),
    ]
    assert all(cli.is_expected(e) for e in expected), expected
    assert not any(cli.is_expected(e) for e in bugs), bugs
    assert cli.message(expected[1]).startswith("unknown target 'dragon'")  # no KeyError quotes
    assert cli.message(expected[3]) == "/nonexistent/x: no such file or directory"
    assert cli.message(ValueError("two\n  lines")) == "two lines"


def test_guarded_main_exits_2_on_checks_and_keeps_bugs(capsys, monkeypatch):
    from experiments import cli
    from nca_adv.errors import UserError

    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)

    def bad_input(argv):
        raise UserError("--x is wrong")

    with pytest.raises(SystemExit) as e:
        cli._guarded(bad_input, False)(["prog"])
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: --x is wrong\n"
    with pytest.raises(ZeroDivisionError):  # a bug: propagates, absl prints its traceback
        cli._guarded(lambda argv: 1 / 0, False)(["prog"])
    with pytest.raises(SystemExit):
        cli._guarded(lambda argv: None, False)(["prog", "stray"])
    assert "unexpected argument" in capsys.readouterr().err
    seen = []
    assert cli._guarded(seen.append, True)(["prog", "a=1"]) is None
    assert seen == [["prog", "a=1"]]  # positional words reach main when allowed
    assert cli._guarded(lambda argv: {"a": 1}, False)(["prog"]) is None  # not an exit status
    assert cli._guarded(lambda argv: 3, False)(["prog"]) == 3


# ----------------------------------------------------------------------------- library pieces
def test_mnist_cache_through_a_file_only_costs_speed(tmp_path, monkeypatch, caplog):
    from nca_adv.io import data

    tiny = data.MnistSplits(*(np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8)) * 2)
    monkeypatch.setattr(data, "_check_sha256", lambda path: data.PICKLE_SHA256)
    monkeypatch.setattr(data, "_load_pickle", lambda path: tiny)  # skip the 17 MB unpickling
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("NCA_ADV_CACHE", str(tmp_path / "file" / "cache"))
    assert data._load_cached(tmp_path / "mnist.pkl.gz") is tiny
    assert "not written" in caplog.text


def test_checkpoint_of_stacked_runs(tmp_path):
    import orbax.checkpoint as ocp

    from nca_adv import io

    params = io.load_model("lizard", "growing")
    for runs in (1, 2):
        stacked = {m: {k: np.stack([v] * runs) for k, v in d.items()} for m, d in params.items()}
        with ocp.CheckpointManager(tmp_path / f"r{runs}" / "checkpoints") as manager:
            manager.save(5, args=ocp.args.StandardSave({"params": stacked}))
            manager.wait_until_finished()
    one = io.load_model(str(tmp_path / "r1"), "growing")
    np.testing.assert_array_equal(one["dense1"]["kernel"], params["dense1"]["kernel"])
    with pytest.raises(io.ModelFormatError, match="holds 2 runs"):
        io.load_model(str(tmp_path / "r2"), "growing")


def test_accuracy_curves_ignore_digits_without_alive_cells():
    from nca_adv.models import mnist

    # steps=1, 3 digits: all right (2 of 2), none alive, half right (1 of 2)
    stats = mnist.DigitStats(alive=np.array([[2, 0, 2]]), correct=np.array([[2, 0, 1]]))
    cell, agree = mnist.accuracy_curves(stats)
    assert cell.tolist() == [0.75] and agree.tolist() == [0.5]
    none = mnist.DigitStats(alive=np.zeros((1, 2)), correct=np.zeros((1, 2)))
    assert np.isfinite(mnist.accuracy_curves(none)).all()


def test_checkpoint_content_hash_is_checked(tmp_path):
    from nca_adv import io
    from nca_adv.training import runtime

    run = _checkpoint_run(tmp_path / "run")
    state = {"params": io.load_model("lizard", "growing")}
    (run / "checkpoints" / "3.sha256").write_text(runtime.content_hash(state) + "\n")
    io.load_model(str(run), "growing")  # the hash written with it: fine
    (run / "checkpoints" / "3.sha256").write_text("0" * 64 + "\n")
    with pytest.raises(io.ModelFormatError, match="content hash does not match"):
        io.load_model(str(run), "growing")


def test_orbax_leftovers_after_a_failed_read_are_dropped(monkeypatch):
    import types

    from nca_adv.io import weights

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    weights._ignore_closed_loop_callbacks()
    hook = sys.unraisablehook

    def report(message, filename):  # an unraisable report raised "inside" filename
        try:
            exec(compile(f"raise RuntimeError({message!r})", filename, "exec"))
        except RuntimeError as e:
            return types.SimpleNamespace(exc_value=e, exc_traceback=e.__traceback__)

    closed = report("Event loop is closed", "/lib/asyncio/base_events.py")
    orbax = report("read failed", "/lib/orbax/checkpoint/serialization.py")
    other = report("something else", "/lib/other.py")
    monkeypatch.setattr(weights, "_FAILED_READS", [])
    for u in (closed, orbax, other):
        hook(u)
    assert seen == [orbax, other]  # orbax's own reports pass while no read has failed
    seen.clear()
    weights._FAILED_READS.append("some checkpoint")
    for u in (closed, orbax, other):
        hook(u)
    assert seen == [other]
