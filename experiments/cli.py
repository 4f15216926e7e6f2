"""The launches' entry point and start-up checks: bad input is one line, exit status 2.

Researchers run the launches in sweeps and read the last lines of logs, so an expected
failure (a bad flag, file or model, a failed precondition) prints exactly one line
``error: <what is wrong>`` on stderr and exits with status 2, and output paths are checked
before any compute. Anything else is a bug and keeps its traceback (status 1).
``NCA_ADV_TRACEBACK=1`` or ``--verbosity=1`` shows the traceback of expected errors too.

Expected errors are:

- :class:`nca_adv.errors.UserError` and every other exception class defined in this project
  (``io.ModelFormatError``, ``training.CheckpointError``, ...);
- absl usage errors and bad flag values;
- missing, existing, unwritable or wrong-type files (``FileNotFoundError``,
  ``FileExistsError``, ``IsADirectoryError``, ``NotADirectoryError``, ``PermissionError``)
  and writes that fail for want of room (a full disk or quota, a read-only disk);
- ``ValueError`` and ``KeyError`` raised by a ``raise`` statement of the project's own code
  (a check), not those raised inside numpy, JAX or another library, or by a failed lookup
  or unpacking in our code, which are bugs.
"""

from __future__ import annotations

import errno
import functools
import linecache
import logging as std_logging
import math
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from absl import app, flags

from nca_adv.errors import UserError

EXIT_BAD_INPUT = 2
TRACEBACK_ENV = "NCA_ADV_TRACEBACK"

# The project's source folders, wherever they are: in a clone (nca_adv/, experiments/,
# benchmarks/ side by side) or installed (the launches as nca_adv/experiments/).
_HERE = Path(__file__).resolve().parent
_NCA_ADV = Path(sys.modules["nca_adv"].__file__).resolve().parent
_PACKAGES = ("nca_adv", "experiments", "benchmarks")
_OUR_FILES = tuple(
    dict.fromkeys(str(p) + os.sep for p in (_NCA_ADV, _HERE, _HERE.parent / "benchmarks"))
)
_ANYWHERE = (
    UserError,
    app.UsageError,
    # flag values (not DuplicateFlagError & co, which are programming errors)
    flags.IllegalFlagValueError,
    flags.UnrecognizedFlagError,
    flags.ValidationError,
    flags.CantOpenFlagFileError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
_FROM_OUR_CODE = (ValueError, KeyError)
_FULL_OR_READ_ONLY = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
SHARED_FLAG_MODULES = (f"{__package__}.common",)  # experiments or nca_adv.experiments


# ----------------------------------------------------------------------------- start-up noise
class _NoTpuProbeLine(std_logging.Filter):
    """JAX probes every backend at start-up and logs, at INFO, that the TPU one is missing:
    noise on every command of a CPU or GPU machine. Only that line is dropped; a failing
    CUDA backend is still reported, and JAX still picks a GPU when there is one."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Unable to initialize backend 'tpu'")


std_logging.getLogger("jax._src.xla_bridge").addFilter(_NoTpuProbeLine())


# ----------------------------------------------------------------------------- classification
def _raised_by_our_check(e: BaseException) -> bool:
    """Whether ``e`` comes from a ``raise`` statement in the project's code: a check with a
    message. A ValueError from numpy, or a KeyError or unpacking error of our own code's
    lookups, is a bug instead."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    if not filename.startswith(_OUR_FILES):
        return False
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise ")


def is_expected(e: BaseException) -> bool:
    """Whether ``e`` is bad input (one line, status 2) rather than a bug (traceback)."""
    if isinstance(e, _ANYWHERE):
        return True
    if isinstance(e, OSError) and e.errno in _FULL_OR_READ_ONLY:
        return True  # a full disk or a read-only one: the cause, not a bug
    if type(e).__module__.split(".")[0] in _PACKAGES:
        return True  # a project error class: raised on purpose, with a clear message
    return isinstance(e, _FROM_OUR_CODE) and _raised_by_our_check(e)


def message(e: BaseException) -> str:
    """The one-line text of an expected error."""
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        text = e.args[0]  # str(KeyError) would wrap the message in quotes
    elif isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.filename}: {e.strerror.lower()}"
    else:
        text = str(e)
    return " ".join(text.split()) or type(e).__name__


def _show_traceback() -> bool:
    if os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return True
    v = flags.FLAGS["verbosity"] if "verbosity" in flags.FLAGS else None
    return bool(v is not None and flags.FLAGS.is_parsed() and v.value >= 1)


def fail(e: BaseException | str) -> None:
    """Print ``error: <message>`` as the last line of stderr and exit with status 2."""
    sys.stdout.flush()
    if isinstance(e, BaseException) and _show_traceback():
        traceback.print_exception(e)
    text = message(e) if isinstance(e, BaseException) else " ".join(e.split())
    print(f"error: {text}", file=sys.stderr, flush=True)
    sys.exit(EXIT_BAD_INPUT)


# ----------------------------------------------------------------------------- entry point
def _parse_flags(argv: Sequence[str]) -> list[str]:
    try:
        rest = flags.FLAGS(list(argv))
    except flags.Error as e:  # absl would print the whole help text first
        fail(e)
    # absl's bounds let nan through (every comparison with nan is false); no flag of ours
    # means anything with nan or inf, and they would only surface as a diverged run.
    for name, value in flags.FLAGS.flag_values_dict().items():
        if isinstance(value, float) and not math.isfinite(value):
            fail(f"flag --{name}={value}: not a finite number")
    return rest


def _guarded(
    main: Callable[[list[str]], object], positional_args: bool
) -> Callable[[list[str]], object]:
    @functools.wraps(main)
    def guarded(argv: list[str]) -> object:
        try:
            if len(argv) > 1 and not positional_args:  # a stray word is a typo
                raise app.UsageError(
                    f"unexpected argument(s) {' '.join(argv[1:])!r}; flags are --name=value"
                )
            status = main(argv)
            # absl passes main's return value to sys.exit: keep exit codes, not the
            # results some mains return for their callers (sys.exit would print them).
            return status if isinstance(status, int) else None
        except Exception as e:
            if not is_expected(e):
                raise
            fail(e)

    return guarded


def _adopt_shared_flags() -> None:
    """Show the flags that ``common`` (this package's) defines for the launches (devices,
    training, recipes) in ``--help``, which lists only the main module's key flags."""
    main_module = sys.argv[0]
    for module in SHARED_FLAG_MODULES:
        for flag in flags.FLAGS.flags_by_module_dict().get(module, []):
            flags.FLAGS.register_key_flag_for_module(main_module, flag)


def run(
    main: Callable[[list[str]], object],
    argv: Sequence[str] | None = None,
    positional_args: bool = False,
) -> None:
    """``absl.app.run(main)`` with the launches' error contract (module docstring).

    ``argv`` defaults to ``sys.argv``. Words that are not flags are refused unless
    ``positional_args`` (then ``main`` gets them after the program name, as with absl).
    """
    _adopt_shared_flags()
    app.run(
        _guarded(main, positional_args),
        argv=None if argv is None else list(argv),
        flags_parser=_parse_flags,
    )


# ----------------------------------------------------------------------------- start-up checks
def _writable_folder(folder: Path, what: str) -> None:
    """``folder`` exists as a writable folder, or could be created (the nearest existing
    ancestor is a writable folder). Writability is tried with a temporary file, not
    ``os.access``: root passes every access check, and ``/proc`` or a read-only mount
    refuse files whatever the permission bits say. A full disk is refused too."""
    a = folder.absolute()
    while not a.exists() and a != a.parent:
        if a.is_symlink():  # mkdir would say "file exists"
            raise UserError(
                f"{what}: {a} is a symbolic link that leads nowhere (a loop of links, or its "
                "target is missing)"
            )
        a = a.parent
    if not a.is_dir():
        raise UserError(f"{what}: {a} is a file, not a folder")
    if not os.access(a, os.W_OK | os.X_OK):
        raise UserError(f"{what}: folder {a} is not writable")
    try:
        with tempfile.TemporaryFile(dir=a):
            pass
    except OSError as e:
        raise UserError(
            f"{what}: cannot create files in {a} ({(e.strerror or str(e)).lower()})"
        ) from None
    st = os.statvfs(a)  # a full disk fails the first write, after the compute: now instead
    if st.f_blocks and (st.f_bfree if os.geteuid() == 0 else st.f_bavail) == 0:
        raise UserError(f"{what}: no space left on device (the disk of {a} is full)")


def check_output_file(path: str | os.PathLike, flag: str, suffixes: Sequence[str] = ()) -> Path:
    """Refuse, before any compute, an output file ``--flag=path`` that could not be written:
    a suffix not in ``suffixes``, an existing folder, a read-only file, or a parent folder
    that is a file or not writable."""
    p = Path(path)
    what = f"--{flag}={path}"
    if p.is_dir():
        raise UserError(f"{what} is a directory; give a file name")
    if suffixes and p.suffix.lower() not in suffixes:
        raise UserError(
            f"{what}: unknown format {p.suffix or '(no suffix)'!r}; use {' or '.join(suffixes)}"
        )
    if p.exists() and not os.access(p, os.W_OK):
        raise UserError(f"{what}: the file is not writable")
    _writable_folder(p.parent, what)
    return p


def memory_limit() -> tuple[int, str]:
    """(bytes, where) a computation may use: the first device's memory on an accelerator,
    else the machine's physical memory."""
    import jax

    device = jax.devices()[0]
    if device.platform != "cpu":
        limit = (device.memory_stats() or {}).get("bytes_limit")
        if limit:
            return int(limit), f"{device.device_kind} memory"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "memory"


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:,.0f} MiB"


def check_memory(nbytes: float, what: str) -> None:
    """Refuse, before allocating, a computation whose arrays (``nbytes``, an estimate of
    ``what``) would not fit in the memory there is: one line naming the size."""
    limit, where = memory_limit()
    if nbytes > limit:
        raise UserError(f"{what} needs ~{_size(nbytes)}, more than the {_size(limit)} of {where}")


def check_output_dir(path: str | os.PathLike, flag: str) -> Path:
    """Refuse, before any compute, an output folder ``--flag=path`` that is a file or could
    not be created or written."""
    p = Path(path)
    what = f"--{flag}={path}"
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} is a file, not a folder")
    _writable_folder(p, what)
    return p
