"""Shared fixtures: the authors' reference data beside the project (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference() -> Path:
    if not (REFERENCE / "README.md").is_file():
        pytest.skip(
            f"reference data not found at {REFERENCE} (../shared/reference beside the project)"
        )
    return REFERENCE
