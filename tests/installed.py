"""The project as a user gets it: its wheel installed in a temporary venv, run from a folder
outside the clone. The session fixture ``installed_wheel`` (tests/conftest.py) builds it
once; tests of installed behaviour use it:

    def test_something(installed_wheel):
        res = installed_wheel.run("import nca_adv; print(nca_adv.__version__)")
        assert res.returncode == 0, res.stderr

The venv has only the wheel (installed with ``--no-deps``, console scripts included); its
dependencies come from the development venv's site-packages through a ``.pth`` line, so
nothing is downloaded and nothing of the source tree is importable (the development venv's
editable install is not loaded). ``block=("imageio", ...)`` makes those top-level modules
unimportable in one run, as if their extra were not installed.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The optional dependencies of the extras, by top-level module.
EXTRA_MODULES = ("imageio", "imageio_ffmpeg", "matplotlib", "aiohttp", "orbax")

_BLOCKER = '''
import os, sys

class _NotInstalled:
    """Top-level modules listed in NCA_ADV_TEST_BLOCK are not installed."""

    BLOCKED = tuple(filter(None, os.environ.get("NCA_ADV_TEST_BLOCK", "").split(",")))

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
'''


class BuildError(RuntimeError):
    pass


# What a build needs from the clone: everything but the venv, git, and what builds write.
_NOT_SOURCES = shutil.ignore_patterns(
    ".venv",
    ".git",
    "build",
    "dist",
    "site",
    "out",
    "runs",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".cache",
)


def build_wheel(out: Path) -> tuple[Path, float]:
    """The project's wheel, built without network (the development venv's setuptools), and
    the seconds it took. Falls back to pip's isolated build (which needs PyPI). It is
    built from a copy of the sources: a build in the clone would leave build/ there, and
    setuptools packs what an earlier build left in build/lib."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    source = out.parent / "source"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCES, symlinks=True)
    tries = (
        ["--no-build-isolation"],  # setuptools of this venv: offline, ~2 s
        [],  # an isolated build: fetches setuptools
    )
    errors = []
    for extra in tries:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "-q",
                *extra,
                "-w",
                str(out),
                str(source),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
        wheels = sorted(out.glob("nca_adv-*.whl"))
        if res.returncode == 0 and wheels:
            return wheels[-1], time.perf_counter() - t0
        errors.append(res.stderr[-2000:])
    raise BuildError("cannot build the wheel:\n" + "\n---\n".join(errors))


def _site_packages() -> list[str]:
    """The development venv's site-packages (the dependencies)."""
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    paths += site.getsitepackages()
    return list(dict.fromkeys(p for p in paths if Path(p).is_dir()))


@dataclass
class InstalledWheel:
    """A temporary venv holding only the wheel; ``home`` is a folder outside the clone."""

    wheel: Path
    venv: Path
    home: Path
    build_seconds: float

    @property
    def source(self) -> Path:
        """The copy of the clone's sources the wheel was built from."""
        return self.wheel.parent.parent / "source"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    @property
    def site_packages(self) -> Path:
        return next((self.venv / "lib").glob("python*/site-packages"))

    def env(self, block: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env.update(
            {
                "NCA_ADV_TEST_BLOCK": ",".join(block),
                "PATH": f"{self.bin}{os.pathsep}{env.get('PATH', '')}",
                "VIRTUAL_ENV": str(self.venv),
            }
        )
        env.update(extra)
        return env

    def run(
        self,
        code: str,
        *args: str,
        block: tuple[str, ...] = (),
        cwd: Path | None = None,
        timeout: float = 600,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """``python -c code *args`` in the installed venv, from ``home`` (or ``cwd``)."""
        return self.command(
            "python",
            "-c",
            textwrap.dedent(code),
            *args,
            block=block,
            cwd=cwd,
            timeout=timeout,
            env=env,
        )

    def command(
        self,
        program: str,
        *args: str,
        block: tuple[str, ...] = (),
        cwd: Path | None = None,
        timeout: float = 600,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """A program of the venv's bin/ (``nca-adv``, ``python``) with ``args``."""
        return subprocess.run(
            [str(self.bin / program), *args],
            capture_output=True,
            text=True,
            cwd=cwd or self.home,
            timeout=timeout,
            env={**self.env(block), **(env or {})},
        )

    def top_level(self) -> set[str]:
        """The top-level names the wheel puts into site-packages."""
        with zipfile.ZipFile(self.wheel) as z:
            return {name.split("/")[0] for name in z.namelist()}


def install(tmp: Path) -> InstalledWheel:
    """Build the wheel and install it (no dependencies) into a fresh venv under ``tmp``."""
    wheel, seconds = build_wheel(tmp / "dist")
    venv = tmp / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    if res.returncode != 0:
        raise BuildError(f"cannot install the wheel: {res.stderr[-2000:]}")
    installed = InstalledWheel(wheel, venv, tmp / "home", seconds)
    installed.home.mkdir()
    sp = installed.site_packages
    # The dependencies: the development venv's site-packages, after the venv's own (a .pth
    # line adds a folder without running that folder's .pth files, so the editable
    # install of the source tree stays out).
    (sp / "zz_dependencies.pth").write_text("\n".join(_site_packages()) + "\n")
    (sp / "sitecustomize.py").write_text(_BLOCKER)
    return installed


def remove(installed: InstalledWheel) -> None:
    shutil.rmtree(installed.venv, ignore_errors=True)
