"""Running `python -m crashd` as a real process against a scratch crash dir and state dir.

Shared by the fault and state tests. The report helpers (`crash`, `write`) and the
system token come from tests.test_upload_all, so every suite writes reports the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.settings import default_config, write_config
from tests.test_cli import REPO
from tests.test_upload_all import TOKEN, crash, write

__all__ = [
    "FAST",
    "TOKEN",
    "Run",
    "crash",
    "crashd",
    "popen",
    "state_dir_of",
    "write",
    "write_config",
]

# Retries within a test: 50 ms windows, capped at 200 ms, whichever scale the failure is on.
FAST = {"backoff_base": 0.05, "backoff_server_base": 0.05, "backoff_cap": 0.2, "connect_timeout": 2}


def state_dir_of(crash_dir: Path) -> Path:
    """Where the helpers keep crashd's state for *crash_dir*: beside it, never /var/lib/crashd."""
    return crash_dir.parent / "state"


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CRASH_DB_URL", "APPORT_REPORT_DIR")}
    return env | {"PYTHONPATH": str(REPO), "CRASH_DB_IDENTIFIER": TOKEN}


def _command(command: str, crash_dir: Path, *args: str, url: str | None, config: Path | None) -> list[str]:
    argv = [sys.executable, "-m", "crashd", "--config", str(config or default_config())]
    argv += [command, "--crash-dir", str(crash_dir), "--state-dir", str(state_dir_of(crash_dir))]
    if url is not None:
        argv += ["--url", url]
    return argv + list(args)


@dataclass
class Run:
    """One finished crashd process: exit code, parsed `--json` output (if any), stderr, wall time."""

    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def json(self) -> dict:
        assert self.stdout, f"no output (exit {self.code}); stderr:\n{self.stderr}"
        return json.loads(self.stdout)

    def reports(self) -> dict[str, dict]:
        return {entry["name"]: entry for entry in self.json["reports"]}


def crashd(
    command: str,
    crash_dir: Path,
    *args: str,
    url: str | None = None,
    config: Path | None = None,
    timeout: float = 60,
    preexec_fn: Callable[[], None] | None = None,
) -> Run:
    """Run `crashd [--config C] COMMAND --crash-dir D --state-dir D/../state [--url U] ARGS` to completion."""
    started = time.monotonic()
    result = subprocess.run(
        _command(command, crash_dir, *args, url=url, config=config),
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=timeout,
        preexec_fn=preexec_fn,
    )
    return Run(result.returncode, result.stdout, result.stderr, time.monotonic() - started)


def popen(command: str, crash_dir: Path, *args: str, url: str | None = None, config: Path | None = None):
    """Start crashd without waiting (for kills and signals); output goes to pipes."""
    return subprocess.Popen(
        _command(command, crash_dir, *args, url=url, config=config),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(),
    )
