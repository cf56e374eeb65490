"""Where the test corpora live: the trimmed copy vendored in ``tests/corpus``, plus the full one
in ``../shared`` when it is present.

A user's clone has no ``../shared`` beside it, so the corpus tests read the vendored copy
(tests/corpus/README.md says what was kept and why); the full apport corpus, when present
(``$CRASHD_SHARED``, else ``../shared`` beside the checkout), adds its other reports to the
tests that walk :func:`apport_records`.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest

CORPUS = Path(__file__).resolve().parent / "corpus"
APPORT = CORPUS / "apport"
WHOOPSIE = CORPUS / "whoopsie"
SHARED = Path(os.environ.get("CRASHD_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
SHARED_APPORT = SHARED / "fixtures" / "apport"


def require(path: Path) -> Path:
    """Return *path*, or skip the calling test saying which fixture is missing."""
    if not path.exists():
        pytest.skip(f"fixture {path} is absent")
    return path


def _manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


@functools.cache
def apport_manifest() -> dict[str, Any]:
    """apport's own decoding of every vendored report (manifest.json in tests/corpus/apport)."""
    manifest = _manifest(APPORT)
    assert manifest is not None, f"{APPORT / 'manifest.json'} is part of the repository"
    return manifest


@functools.cache
def apport_records() -> list[tuple[Path, dict[str, Any]]]:
    """Each apport report with its manifest record: the vendored ones, then the full corpus's
    others when ``../shared`` is present (the same file is never listed twice)."""
    records = [(APPORT / record["file"], record) for record in apport_manifest()["files"]]
    vendored = {record["file"] for _, record in records}
    shared = _manifest(SHARED_APPORT) if SHARED_APPORT.resolve() != APPORT.resolve() else None
    for record in shared["files"] if shared else []:
        if record["file"] not in vendored:
            records.append((SHARED_APPORT / record["file"], record))
    return records
