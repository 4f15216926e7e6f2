"""``nca-adv <launch> [flags]``: every launch of this folder behind one command.

  nca-adv --help                                  # the launches, one line each
  nca-adv eval_growing --model=lizard --steps=200 # = python -m experiments.eval_growing ...
  nca-adv eval_growing --help                     # that launch's flags

The same launches run as ``python -m experiments.<launch>`` from a clone of the repository
and as ``python -m nca_adv.experiments.<launch>`` (or ``nca-adv <launch>``) after a pip
install: the folder installs as the package ``nca_adv.experiments``.

Listing the launches reads their source (no import, no JAX start-up): a launch is a module
of this package with an ``if __name__ == "__main__":`` block.
"""

from __future__ import annotations

import ast
import re
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

_HERE = Path(__file__).resolve().parent
PROGRAM = "nca-adv"


def launches() -> dict[str, str]:
    """Launch name -> the first line of its docstring, in name order."""
    found = {}
    for path in sorted(_HERE.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        source = path.read_text(encoding="utf-8")
        if 'if __name__ == "__main__":' not in source:
            continue
        doc = (ast.get_docstring(ast.parse(source)) or "").strip()
        found[path.stem] = _summary(doc.split("\n\n")[0])
    return found


def _summary(paragraph: str, width: int = 96) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    text = " ".join(paragraph.split())
    end = re.search(r"(?<!\bal)\.\s", text)  # not at "et al. "
    text = text if end is None else text[: end.start() + 1]
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def usage() -> str:
    rows = launches()
    width = max(map(len, rows), default=0)
    lines = [
        f"usage: {PROGRAM} <launch> [--flag=value ...]   ({PROGRAM} <launch> --help: its flags)",
        "",
        "launches:",
        *(f"  {name:<{width}}  {summary}" for name, summary in rows.items()),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``argv[0]`` (a launch name) with the rest of ``argv`` as its flags."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help", "--helpfull"):
        print(usage())
        sys.exit(0 if args else 2)
    name, rest = args[0], args[1:]
    known = launches()
    if name not in known:
        hint = f"; launches: {', '.join(known)}" if not name.startswith("-") else ""
        print(f"error: {name!r} is not a launch of {PROGRAM}{hint}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [f"{PROGRAM} {name}", *rest]
    from nca_adv.extras import MissingExtraError

    # As `python -m <package>.<name>`: the launch runs as __main__ (its flags, its --help).
    try:
        runpy.run_module(f"{__package__}.{name}", run_name="__main__", alter_sys=True)
    except MissingExtraError as e:  # at import: one line, as the launches' own errors
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
