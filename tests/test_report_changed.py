"""``org.crashd.Reports1.ReportChanged``: the daemon announces each report's outcome on the bus.

A real ``crashd daemon`` on a private system bus, a real ``gdbus monitor`` as the settings UI, the
loopback daisy as the server: a report is first ``held`` (automatic reporting is off by default), then
``sent`` once a UI marks it ``.upload``, and both changes reach the monitor as signals.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.daisy import DaisyServer
from tests.dbus_bus import PrivateBus
from tests.settings import write_config
from tests.test_upload_all import TOKEN, crash, write

REPO = Path(__file__).resolve().parent.parent
DEADLINE = 30.0
NAME = "_usr_bin_gedit.0.crash"


class Monitor:
    """``gdbus monitor`` on crashd's name: its lines, and a way to wait for one."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["gdbus", "monitor", "--system", "--dest", "org.crashd.Crashd1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def wait_for(self, text: str) -> str:
        with self.changed:
            found = self.changed.wait_for(
                lambda: next((line for line in self.lines if text in line), None), timeout=DEADLINE
            )
        assert found, f"no line with {text!r} in:\n" + "\n".join(self.lines)
        return found

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(DEADLINE)
        self.reader.join(DEADLINE)  # it ends at the pipe's end of file
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def test_the_daemon_announces_each_outcome_with_report_changed(tmp_path: Path, daisy: DaisyServer) -> None:
    if shutil.which("gdbus") is None:
        pytest.skip("gdbus not installed (libglib2.0-bin)")
    crash_dir, state = tmp_path / "crash", tmp_path / "state"
    crash_dir.mkdir()
    state.mkdir()
    config = write_config(tmp_path / "crashd.conf", url=daisy.url, idle_timeout=120)
    with PrivateBus(tmp_path / "bus") as bus:
        env = os.environ | {"PYTHONPATH": str(REPO), "CRASH_DB_IDENTIFIER": TOKEN,
                            "DBUS_SYSTEM_BUS_ADDRESS": bus.address}  # fmt: skip
        with (tmp_path / "daemon.log").open("w") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "crashd", "--config", str(config), "daemon", "--crash-dir",
                 str(crash_dir), "--state-dir", str(state)], stderr=log, env=env,
            )  # fmt: skip
        monitor = Monitor(env)
        try:
            monitor.wait_for("is owned by")  # the daemon has the name: its signals reach the monitor
            write(crash_dir / NAME, crash("gedit", _HooksRun="yes", Dependencies="libc6 2.36"))
            assert "'held'" in monitor.wait_for(f"ReportChanged ('{NAME}', 'held')")
            (crash_dir / NAME).with_suffix(".upload").touch()
            monitor.wait_for(f"ReportChanged ('{NAME}', 'sent')")
        finally:
            monitor.close()
            daemon.terminate()
            assert daemon.wait(DEADLINE) == 0, (tmp_path / "daemon.log").read_text()
    assert len(daisy.reports) == 1
