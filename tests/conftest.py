"""Shared fixtures: the authors' reference data beside the project (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

ROOT = Path(__file__).resolve().parents[1]

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference() -> Path:
    if not (REFERENCE / "README.md").is_file():
        pytest.skip(
            f"reference data not found at {REFERENCE} (../shared/reference beside the project)"
        )
    return REFERENCE


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory):
    """A persistent XLA compilation cache for the whole session, in-process and (through
    the environment) for every launch a test starts: identical programs (a straight run
    and its resumption, the same launch in several tests) compile once. Only speed
    changes; the cache lives in the session's temporary folder."""
    path = str(tmp_path_factory.getbasetemp() / "jax_compilation_cache")
    env = {"JAX_COMPILATION_CACHE_DIR": path, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    compilation_cache.reset_cache()
    yield path
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory):
    """The project's wheel installed (no dependencies, console scripts included) in a
    temporary venv whose dependencies come from this venv, run from a folder outside the
    clone: ``installed_wheel.run(code, block=("imageio",))``, ``.command("nca-adv", ...)``
    (tests/installed.py). Built once per session (a few seconds)."""
    from tests import installed

    try:
        return installed.install(tmp_path_factory.mktemp("installed"))
    except installed.BuildError as e:
        pytest.skip(f"the wheel could not be built or installed here: {e}")


@pytest.fixture
def subprocess_env():
    """The environment of a launch started by a test: the package importable (the cache
    is inherited). ``optimise=False`` turns XLA's backend optimisations off, for programs
    that run for milliseconds (compiling them costs ~3x less)."""

    def env(optimise: bool = True) -> dict[str, str]:
        flags = os.environ.get("XLA_FLAGS", "")
        if not optimise:
            flags = f"{flags} --xla_backend_optimization_level=0".strip()
        return {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": flags}

    return env


@pytest.fixture
def count_chunks(monkeypatch):
    """``count_chunks()`` starts recording the length of every chunk the engine runs
    from then on (a resumed run must run only the iterations left)."""
    from nca_adv.training import engine

    def start() -> list[int]:
        ran: list[int] = []
        real = engine.make_chunk

        def counting(recipe, length, runs, batch_sharding=None, **kwargs):
            chunk = real(recipe, length, runs, batch_sharding, **kwargs)

            def call(*args):
                ran.append(length)
                return chunk(*args)

            return call

        monkeypatch.setattr(engine, "make_chunk", counting)
        return ran

    return start
