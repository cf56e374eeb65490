"""Where the shared fixtures live, read in place; tests skip with a reason when they are absent.

A user's clone has no ``../shared`` beside it: the suite must still be complete
without it, so every test that reads a shared file goes through :func:`require`.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest

SHARED = Path(os.environ.get("CRASHD_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
APPORT = SHARED / "fixtures" / "apport"
WHOOPSIE = SHARED / "fixtures" / "whoopsie"


def require(path: Path) -> Path:
    """Return *path*, or skip the calling test saying which shared fixture is missing."""
    if not path.exists():
        pytest.skip(f"shared fixture {path} is absent (it lives in ../shared beside the checkout)")
    return path


@functools.cache
def apport_manifest() -> dict[str, Any] | None:
    """apport's own decoding of every fixture (manifest.json), or None without ../shared."""
    path = APPORT / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None
