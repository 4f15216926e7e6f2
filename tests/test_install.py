"""The install as a user gets it: the wheel in a temporary venv, used from a folder outside
the clone (tests/installed.py). Only ``nca_adv`` at the top level, the launches as
``nca_adv.experiments`` and ``nca-adv <launch>``, the core without the extras, and a
missing extra as one line naming it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.installed import EXTRA_MODULES, ROOT

# A growing training small enough to compile and run in seconds (as test_library.py's).
TINY_TRAINING = """
import jax, numpy as np
from nca_adv.models import growing
from nca_adv.training import jobs
config = growing.GrowingTrainConfig(
    pool_size=6, batch_size=2, min_steps=2, max_steps=3, damage_n=1, lr_decay_at=3
)
result = jobs.train_job(jobs.growing_job(["lizard"], [0], config, padding=0), 2)
(losses,) = [m["loss"] for m in result.metrics.values()]
assert losses.shape == (2,) and np.isfinite(losses).all(), losses
print("trained", losses.tolist())
"""


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    """An expected error: status 2, no traceback, last stderr line ``error: ...``."""
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), res.stderr[-3000:]
    for needle in needles:
        assert needle in last, last
    return last


def test_wheel_builds_fast_and_holds_only_nca_adv(installed_wheel):
    assert installed_wheel.build_seconds < 60, installed_wheel.build_seconds
    top = installed_wheel.top_level()
    assert {t for t in top if not t.endswith(".dist-info")} == {"nca_adv"}, top
    with zipfile.ZipFile(installed_wheel.wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n) for n in names if n.endswith("entry_points.txt")).decode()
    # every package of the source tree and every launch is in the wheel
    packages = {p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("nca_adv/**/__init__.py")}
    missing = {p for p in packages if f"{p}/__init__.py" not in names}
    assert not missing, f"packages missing from the wheel (pyproject.toml's list): {missing}"
    launches = {f"nca_adv/experiments/{p.name}" for p in (ROOT / "experiments").glob("*.py")}
    assert launches <= names, launches - names
    assert "nca_adv/py.typed" in names
    assert "nca-adv = nca_adv.experiments.__main__:main" in entry_points
    # the installed venv holds no other top-level package of ours
    site = installed_wheel.site_packages
    assert not (site / "experiments").exists()


def test_installed_imports_and_version(installed_wheel, tmp_path):
    # a research project with its own experiments/ package, as is common
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "__init__.py").write_text("MINE = True\n")
    res = installed_wheel.run(
        """
        import importlib.metadata, pathlib, sys
        import nca_adv, nca_adv.experiments.eval_growing
        import experiments  # the project's own, not ours
        assert experiments.MINE, experiments.__file__
        sys.path.remove(sys.path[0]); sys.modules.pop("experiments")
        try:
            import experiments
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError(f"the install provides a top-level experiments: {experiments}")
        assert nca_adv.__version__ == importlib.metadata.version("nca-adv"), nca_adv.__version__
        print(pathlib.Path(nca_adv.__file__).parent)
        """,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    where = Path(res.stdout.strip().splitlines()[-1])
    assert where == installed_wheel.site_packages / "nca_adv"  # the wheel, not the clone
    assert ROOT not in where.parents


def test_nca_adv_command_lists_and_runs_the_launches(installed_wheel, tmp_path):
    listing = installed_wheel.command("nca-adv", "--help")
    assert listing.returncode == 0, listing.stderr
    names = set(re.findall(r"^  (\w+) ", listing.stdout, flags=re.M))
    sources = {p.stem for p in (ROOT / "experiments").glob("*.py")}
    assert {"eval_growing", "eval_mnist", "train_growing", "reproduce", "playground"} <= names
    assert names <= sources and not names & {"cli", "common", "report_media"}, names
    # every launch the README names exists
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"python -m experiments\.(\w+)", readme))
    named |= set(re.findall(r"(?:^|`)nca-adv ([a-z_]+)", readme, flags=re.M))
    assert named and named <= names, named - names

    # a launch's --help is absl's (its flags on stdout; absl exits with status 1)
    helped = installed_wheel.command("nca-adv", "eval_growing", "--help")
    module = installed_wheel.command("python", "-m", "nca_adv.experiments.eval_growing", "--help")
    for res in (helped, module):
        assert "Traceback" not in res.stderr, res.stderr[-3000:]
        assert "--model" in res.stdout and "--host_devices" not in res.stderr, res.stdout[-2000:]
    assert helped.stdout == module.stdout

    # from a folder with its own experiments/ package (the README's commands would fail there
    # if the install shipped a top-level experiments package)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "__init__.py").write_text("")
    res = installed_wheel.command(
        "nca-adv", "eval_growing", "--model=lizard", "--steps=2", "--seed=1", cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = _last_json(res.stdout)
    assert out["steps"] == 2 and out["loss"] > 0

    _one_line_error(
        installed_wheel.command("nca-adv", "eval_growig"), "not a launch", "eval_growing"
    )
    _one_line_error(installed_wheel.command("nca-adv", "eval_growing", "--steps=-1"), "--steps")


def test_core_install_without_extras_imports_and_trains(installed_wheel):
    res = installed_wheel.run(
        textwrap.dedent(
            """
        import sys
        import nca_adv
        from nca_adv import attacks, evaluation, extras, io, models, training
        from nca_adv.evaluation import adversary_eval, perturbation_eval
        from nca_adv.io import target_edits, targets
        from nca_adv.media import adversary_pictures, report, video
        from nca_adv.training import engine, fit, jobs, runtime
        import nca_adv.experiments.eval_growing
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in extras.EXTRAS)
        assert not heavy, heavy
        """
        )
        + TINY_TRAINING,
        block=EXTRA_MODULES,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "trained" in res.stdout


@pytest.mark.parametrize(
    "code, extra",
    [
        (
            "from nca_adv.media import video; import numpy as np\n"
            "video.write_video('v.mp4', np.zeros((2, 8, 8, 3), np.uint8))",
            "media",
        ),
        (
            "from nca_adv.media import report\n"
            "report.plot_curves('p.png', {'a': ([0, 1], [1, 0])}, 't', 'x', 'y')",
            "media",
        ),
        (
            "from nca_adv.io import target_edits; import numpy as np\n"
            "target_edits.rotate_hue(np.full((4, 4, 4), 200, np.uint8), 90)",
            "media",
        ),
        ("from nca_adv.training import runtime; runtime.Checkpointer('ckpt')", "checkpoints"),
        ("import nca_adv; nca_adv.load_ca('no_such_workdir_here', 'growing')", None),
        ("from nca_adv.playground import server", "playground"),
    ],
    ids=["video", "plot", "target_edits", "checkpointer", "not_an_extra", "playground"],
)
def test_a_missing_extra_is_one_line_naming_it(installed_wheel, code, extra):
    res = installed_wheel.run(
        "from nca_adv.extras import MissingExtraError\n"
        f"try:\n    {code.replace(chr(10), chr(10) + '    ')}\n"
        "except MissingExtraError as e:\n    print('MISSING', e)\n"
        "except Exception as e:\n    print('OTHER', type(e).__name__)\n",
        block=EXTRA_MODULES,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    last = res.stdout.strip().splitlines()[-1]
    if extra is None:  # an error unrelated to the extras stays itself
        assert last.startswith("OTHER"), last
        return
    assert last.startswith("MISSING"), last
    assert f"pip install 'nca-adv[{extra}]'" in last and "\n" not in last.strip()


def test_a_launch_without_its_extra_is_one_line(installed_wheel, tmp_path):
    _one_line_error(
        installed_wheel.command(
            "nca-adv",
            "eval_growing",
            "--steps=2",
            f"--video={tmp_path / 'v.mp4'}",
            block=EXTRA_MODULES,
        ),
        "pip install 'nca-adv[media]'",
    )
    assert not (tmp_path / "v.mp4").exists()
    _one_line_error(
        installed_wheel.command(
            "nca-adv",
            "train_growing",
            f"--workdir={tmp_path / 'w'}",
            "--iterations=1",
            block=("orbax",),
        ),
        "training in a workdir",
        "pip install 'nca-adv[checkpoints]'",
    )
    assert not (tmp_path / "w").exists()  # refused before any file
    _one_line_error(
        installed_wheel.command("nca-adv", "playground", "--port=0", block=("aiohttp",)),
        "pip install 'nca-adv[playground]'",
    )
    # as a module too (the launch imports nothing of the extra before its main)
    _one_line_error(
        installed_wheel.command(
            "python", "-m", "nca_adv.experiments.playground", "--port=0", block=("aiohttp",)
        ),
        "pip install 'nca-adv[playground]'",
    )


def test_clone_runs_the_launches_both_ways():
    """From the clone: ``python -m experiments.<launch>`` and ``python -m experiments
    <launch>`` (the same dispatcher as ``nca-adv``)."""
    env_cmd = [sys.executable, "-m", "experiments", "--help"]
    res = subprocess.run(env_cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0 and "eval_growing" in res.stdout, res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "experiments", "eval_growing", "--steps=2"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert _last_json(res.stdout)["steps"] == 2


def test_nothing_in_nca_adv_imports_the_launches():
    offenders = [
        str(p.relative_to(ROOT))
        for p in ROOT.glob("nca_adv/**/*.py")
        if re.search(r"^\s*(from|import)\s+(nca_adv\.)?experiments\b", p.read_text(), re.M)
    ]
    assert not offenders, offenders
    launches = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "experiments").glob("*.py")
        if re.search(r"^\s*(from|import)\s+experiments\b", p.read_text(), re.M)
    ]
    assert not launches, f"use relative imports (from . import common): {launches}"


def test_sdist_holds_the_examples_and_docs_and_builds_the_same_wheel(installed_wheel, tmp_path):
    import tarfile

    code = (
        "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=installed_wheel.source,  # the clone's sources, copied (no build files)
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    sdist = tmp_path / res.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        tar.extractall(tmp_path / "src", filter="data")
    examples = {f"examples/{p.name}" for p in (ROOT / "examples").glob("*.py")}
    assert len(examples) >= 6 and examples <= names, examples - names
    for needed in (
        "README.md",
        "BUILD_NOTES.md",
        "mkdocs.yml",
        "docs/index.md",
        "experiments/__main__.py",
        "nca_adv/py.typed",
        "pyproject.toml",
    ):
        assert needed in names, needed
    # the wheel built from the sdist is the wheel built from the clone
    (src,) = (tmp_path / "src").iterdir()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as a, zipfile.ZipFile(installed_wheel.wheel) as b:
        assert set(a.namelist()) == set(b.namelist())
