"""Optional dependencies, imported when first used.

``pip install nca-adv`` brings the maths, the models, the attacks and in-memory training.
The rest comes with extras:

- ``media``: imageio, imageio-ffmpeg, matplotlib (videos, plots, the report, target edits);
- ``playground``: aiohttp (the local web app of the article's playgrounds);
- ``checkpoints``: orbax-checkpoint (training in a workdir with ``jobs.run_job`` and the
  ``train_*`` launches, loading a training workdir);
- ``all``: all of the above.

A missing one is a :class:`MissingExtraError` (an ``ImportError``) whose message is one
line naming the extra to install; the launches print it as ``error: ...`` (status 2).
"""

from __future__ import annotations

import importlib
import importlib.util
import types
from typing import Any

# The top-level module of each optional dependency -> its extra, and its name on PyPI.
PIP_NAMES = {"imageio_ffmpeg": "imageio-ffmpeg", "orbax": "orbax-checkpoint"}
EXTRAS = {
    "imageio": "media",
    "imageio_ffmpeg": "media",
    "matplotlib": "media",
    "aiohttp": "playground",
    "orbax": "checkpoints",
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra."""


def require(module: str, extra: str | None = None, what: str | None = None) -> types.ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming ``extra`` (by default
    the extra of its top-level package) when it or a parent package is not installed."""
    top = module.split(".")[0]
    extra = extra or EXTRAS.get(top, "all")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if not (module == missing or module.startswith(missing + ".")):
            raise  # something inside the dependency is broken: keep the traceback
        need = f"{what} needs" if what else "needs"
        raise MissingExtraError(
            f"{need} {PIP_NAMES.get(top, top)} (not installed): pip install 'nca-adv[{extra}]'",
            name=missing,
        ) from None


class LazyModule(types.ModuleType):
    """A module imported on first attribute access (through :func:`require`)."""

    def __init__(
        self,
        module: str,
        extra: str | None = None,
        also: tuple[str, ...] = (),
        what: str | None = None,
    ):
        super().__init__(module)
        self._lazy = (module, extra, also, what)
        self._module: types.ModuleType | None = None

    def _load(self) -> types.ModuleType:
        if self._module is None:
            module, extra, also, what = self._lazy
            for name in also:
                require(name, extra, what)
            self._module = require(module, extra, what)
        return self._module

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_lazy") or name == "_module":
            raise AttributeError(name)
        return getattr(self._load(), name)

    def __repr__(self) -> str:
        return f"<lazy module {self._lazy[0]!r}>"


def lazy(
    module: str, extra: str | None = None, also: tuple[str, ...] = (), what: str | None = None
) -> Any:
    """``module`` as a stand-in that imports it when first used: ``ocp = lazy("orbax.checkpoint")``
    in place of ``import orbax.checkpoint as ocp`` keeps the import cost and the dependency
    out of ``import nca_adv``. ``also``: submodules to import with it (``imageio.v2``);
    ``what``: the feature that needs it, for the error message."""
    return LazyModule(module, extra, also, what)


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
