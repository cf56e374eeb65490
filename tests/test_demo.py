"""`make demo` must keep working at every commit: run it as a new user would, check what it shows."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.test_cli import REPO


@pytest.mark.skipif(shutil.which("gcore") is None, reason="gcore (Debian package gdb) is not installed")
def test_demo_runs_end_to_end():
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=180,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(REPO), "LANG": "C.UTF-8"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "core sent on request" in result.stdout
    assert "is a symbolic link" in result.stdout
    assert result.stdout.count("OOPS ") == 2
