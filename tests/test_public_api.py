"""The library's public surface (issue 14, item 8): what other tools may import, pinned.

A name added to or dropped from one of these ``__all__`` lists is an API change: it fails here until
the list below (and README's "As a library") say so. Every listed name must exist.
"""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "crashd.report": [
        "DEFAULT_LIMITS", "STRING_KEYS", "Digest", "Entry", "Limits", "MalformedReportError", "Report",
        "ReportError", "ReportLimitError", "StoredBinary", "is_text", "read_report", "valid_key",
        "write_report",
    ],
    "crashd.dbus_client": [
        "TIMEOUT", "BusUnavailable", "NotAuthorized", "Preferences", "get_preferences", "set_preference",
    ],
    "crashd.status": ["survey"],
    "crashd.preview": ["Preview", "may_read", "preview_in_spool", "what_is_sent"],
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_are_pinned_and_exist(module: str) -> None:
    imported = importlib.import_module(module)
    assert sorted(imported.__all__) == sorted(PUBLIC[module])
    missing = [name for name in imported.__all__ if not hasattr(imported, name)]
    assert not missing, f"{module}.__all__ names what it lacks: {missing}"
