"""Installed size of the core install and of each extra.

  python -m benchmarks.install_size     # in a venv with nca-adv and every extra installed

The dependency closure of nca-adv's requirements (read from the installed distributions'
metadata; what an extra adds is its closure less the core's), summed over the files each
distribution's RECORD lists.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re

from packaging.requirements import Requirement

EXTRAS = ("media", "playground", "checkpoints")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(reqs: list[Requirement], dists: dict) -> set[str]:
    seen: set[str] = set()
    todo = list(reqs)
    while todo:
        r = todo.pop()
        name = _norm(r.name)
        if name in seen or name not in dists:
            continue
        seen.add(name)
        for spec in dists[name].requires or []:
            dep = Requirement(spec)
            if dep.marker is None or dep.marker.evaluate({"extra": ""}):
                todo.append(dep)
    return seen


def _size(names: set[str], dists: dict) -> int:
    total = 0
    for name in names:
        for f in dists[name].files or []:
            try:
                total += f.locate().stat().st_size
            except OSError:
                pass
    return total


def main() -> None:
    dists = {_norm(d.metadata["Name"]): d for d in md.distributions()}
    mine = [Requirement(r) for r in md.requires("nca-adv") or []]
    core = _closure([r for r in mine if r.marker is None], dists)
    out = {"core": {"MiB": round(_size(core, dists) / 2**20), "distributions": len(core)}}
    for extra in (*EXTRAS, "all"):
        wanted = EXTRAS if extra == "all" else (extra,)
        reqs = [
            Requirement(r.name)
            for r in mine
            if r.marker is not None
            and _norm(r.name) != "nca-adv"
            and any(r.marker.evaluate({"extra": e}) for e in wanted)
        ]
        added = _closure(reqs, dists) - core
        out[extra] = {
            "added_MiB": round(_size(added, dists) / 2**20),
            "added": sorted(added),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
