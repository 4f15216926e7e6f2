"""The reference (mkdocs + mkdocstrings): it builds with warnings as errors, and every
public module has its API page. Skipped where mkdocs is not installed (`pip install -e
'.[docs]'`; `make setup` installs it)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from tests.installed import ROOT

pytestmark = pytest.mark.skipif(
    any(
        importlib.util.find_spec(m) is None
        for m in ("mkdocs", "mkdocstrings_handlers.python", "material")
    ),
    reason="mkdocs, mkdocstrings[python] or mkdocs-material not installed (the docs extra)",
)


def _modules() -> set[str]:
    """Every public module of nca_adv (not the launches, not private ones)."""
    found = set()
    for path in ROOT.glob("nca_adv/**/*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if any(p.startswith("_") and p != "__init__" for p in parts):
            continue
        found.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def test_every_public_module_has_an_api_page():
    pages = "\n".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.md"))
    documented = set(re.findall(r"^::: ([\w.]+)", pages, flags=re.M))
    missing = _modules() - documented
    assert not missing, f"modules without an API page (docs/api/*.md): {sorted(missing)}"


def test_docs_build_strict(tmp_path):
    site = tmp_path / "site"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(site),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert res.returncode == 0, res.stderr[-5000:]
    api = (site / "api" / "index.html").read_text()
    for name in (
        "nca_adv.rollout",
        "nca_adv.chain",
        "nca_adv.with_adversaries",
        "nca_adv.GrowingCA",
    ):
        assert f'id="{name}"' in api, name
    # the docstrings' Sphinx roles are shown as code, not as raw text
    for page in (site / "api").glob("*.html"):
        assert ":func:`" not in page.read_text(), page.name
    guide = {p.name for p in site.glob("*.html")}
    assert {"install.html", "examples.html", "attacks.html", "cli.html", "results.html"} <= guide
    # the examples are included in the guide verbatim
    assert "01_grow_and_attack" in (site / "examples.html").read_text()


def _string_literals(path) -> str:
    import ast

    tree = ast.parse(path.read_text())
    return "\n".join(
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


def test_reader_facing_text_speaks_of_the_project_only():
    """The README, the guide, the report's text and the results it shows name no issue
    numbers and say nothing of how busy a machine was."""
    import json

    texts = {"README.md": (ROOT / "README.md").read_text()}
    texts |= {str(p.relative_to(ROOT)): p.read_text() for p in (ROOT / "docs").rglob("*.md")}
    for p in (ROOT / "experiments").glob("report_*.py"):
        texts[str(p.relative_to(ROOT))] = _string_literals(p)
    for p in (ROOT / "nca_adv" / "assets" / "results").glob("*.json"):
        data = json.loads(p.read_text())
        if isinstance(data, dict):
            texts[str(p.relative_to(ROOT))] = json.dumps(data.get("description", ""))
    banned = re.compile(
        r"\bissues? #?\d+|\bthe issue\b|issue's|yardstick|other processes|load average|"
        r"shared with \d|helpers' ",
        re.I,
    )
    found = {name: banned.findall(text) for name, text in texts.items()}
    found = {k: v for k, v in found.items() if v}
    assert not found, found
