"""Metered and offline awareness (issue 16, item 1): the pure decision by tables, then the real daemon,
``crashd status`` and ``upload-all`` on a private system bus with a NetworkManager stand-in whose
``Metered`` and ``Connectivity`` change at run time, against the loopback daisy.

Every wait is on readiness: the server (``DaisyServer.wait_for``), a daemon log line, or READY=1.
"Nothing was sent" is asserted only after the daemon logged that it held the report, so it cannot pass
merely because the daemon had not got round to it yet.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crashd.config import ConfigError, Settings, load_settings
from crashd.consent import set_preference
from crashd.network import (
    METERED_ALL,
    METERED_CORE,
    OFFLINE,
    UNKNOWN,
    Conditions,
    Metered,
    held_by_network,
    hold_reason,
)
from tests import dbus_bus
from tests.daemon_run import _environment, crash, crashd_status, drop, run_daemon
from tests.nm_standin import (
    CONNECTIVITY_FULL,
    CONNECTIVITY_NONE,
    METERED_GUESS_YES,
    METERED_NO,
    METERED_YES,
    NetworkManager,
)

system_bus = dbus_bus.system_bus  # the fixture, requested by name

WAIT = 20  # seconds; generous for a loaded 2-core machine, never a measured figure
CORE = b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 16  # binary: written as a gzip base64 block

# -- the pure parts ---------------------------------------------------------------------------

ONLINE, METERED, OFFLINE_ = Conditions(False, True), Conditions(True, True), Conditions(False, False)


@pytest.mark.parametrize(
    ("conditions", "setting", "core", "expected"),
    [
        (ONLINE, Metered.SEND, False, None),
        (ONLINE, Metered.SEND, True, None),
        (ONLINE, Metered.REPORTS_ONLY, True, None),
        (ONLINE, Metered.HOLD, True, None),
        (METERED, Metered.SEND, False, None),
        (METERED, Metered.SEND, True, None),
        (METERED, Metered.REPORTS_ONLY, False, None),
        (METERED, Metered.REPORTS_ONLY, True, METERED_CORE),
        (METERED, Metered.HOLD, False, METERED_ALL),
        (METERED, Metered.HOLD, True, METERED_ALL),
        (OFFLINE_, Metered.SEND, False, OFFLINE),
        (OFFLINE_, Metered.SEND, True, OFFLINE),
        (Conditions(True, False), Metered.REPORTS_ONLY, False, OFFLINE),
        (UNKNOWN, Metered.HOLD, True, None),  # no NetworkManager: as before
    ],
)
def test_hold_reason(conditions: Conditions, setting: Metered, core: bool, expected: str | None) -> None:
    assert hold_reason(conditions, setting, core=core) == expected
    assert held_by_network(expected) is (expected is not None)


@pytest.mark.parametrize(
    ("metered", "connectivity", "expected"),
    [
        (0, 4, ONLINE),  # NM_METERED_UNKNOWN, FULL
        (METERED_YES, 4, METERED),
        (METERED_NO, 4, ONLINE),
        (METERED_GUESS_YES, 4, METERED),
        (4, 4, ONLINE),  # NM_METERED_GUESS_NO
        (METERED_NO, 0, ONLINE),  # NM_CONNECTIVITY_UNKNOWN counts as online
        (METERED_NO, 1, OFFLINE_),  # NONE
        (METERED_NO, 2, ONLINE),  # PORTAL: an attempt tells more than a guess
        (METERED_NO, 3, ONLINE),  # LIMITED
        (None, None, ONLINE),  # properties missing
    ],
)
def test_conditions_from_network_manager(metered: int | None, connectivity: int | None, expected: Conditions):
    assert Conditions.from_properties(metered, connectivity) == expected


def test_metered_setting_default_values_and_errors(tmp_path: Path) -> None:
    assert Settings().metered is Metered.REPORTS_ONLY
    config = tmp_path / "crashd.conf"
    for value in ("send", "reports-only", "hold"):
        config.write_text(f"[crashd]\nmetered = {value}\n")
        assert load_settings(config, environ={}).metered is Metered(value)
    config.write_text("[crashd]\nmetered = sometimes\n")
    with pytest.raises(ConfigError, match=r"crashd.conf \[crashd\] metered: bad value 'sometimes': must be one of "
                       r"send, reports-only, hold"):  # fmt: skip
        load_settings(config, environ={})


# -- the real daemon on a private bus ---------------------------------------------------------


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    set_preference(state, "AutomaticallyReportCrashes", True, config=None)
    return state


def config_file(tmp_path: Path, metered: str) -> Path:
    path = tmp_path / "crashd.conf"
    path.write_text(f"[crashd]\nmetered = {metered}\n")
    return path


def test_metered_sends_the_report_holds_the_core_until_unmetered(
    daisy, crash_dir, state_dir, system_bus
) -> None:
    with NetworkManager(system_bus.address, metered=METERED_YES) as nm, \
            run_daemon(crash_dir, state_dir, daisy.url, "--idle-timeout", "60") as daemon:  # fmt: skip
        drop(crash_dir / "_usr_bin_tether.0.crash", crash("tether", CoreDump=CORE))
        assert daisy.wait_for(lambda: len(daisy.reports) == 1, timeout=WAIT)
        assert daemon.log_line(re.escape(METERED_CORE), WAIT), daemon.stderr
        assert daisy.cores == []
        (held,) = crashd_status(crash_dir, state_dir).values()
        assert held["state"] == "held" and held["detail"] == METERED_CORE
        assert held["oops_id"] == daisy.reports[0].oops_id
        listed = subprocess.run(  # what a settings UI sees: org.crashd.Reports1.List on the bus
            ["gdbus", "call", "--system", "--dest", "org.crashd.Crashd1", "--object-path", "/org/crashd/Crashd1",
             "--method", "org.crashd.Reports1.List"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert "'held'" in listed.stdout and METERED_CORE in listed.stdout, listed.stdout

        nm.set(metered=METERED_NO)  # no timer is due for an hour: only the change can send it
        assert daisy.wait_for(lambda: len(daisy.cores) == 1, timeout=WAIT), daemon.stderr
        assert daisy.cores[0].verdict == "ok"
        (sent,) = crashd_status(crash_dir, state_dir).values()
        assert sent["state"] == "sent" and sent["detail"] == "core sent on request"


def test_guessed_metered_counts_and_hold_holds_the_report_too(
    daisy, crash_dir, state_dir, system_bus, tmp_path
) -> None:
    config = config_file(tmp_path, "hold")
    with NetworkManager(system_bus.address, metered=METERED_GUESS_YES) as nm, \
            run_daemon(crash_dir, state_dir, daisy.url, "--idle-timeout", "60", config=config) as daemon:  # fmt: skip
        drop(crash_dir / "_usr_bin_wifi.0.crash", crash("wifi"))
        assert daemon.log_line(re.escape(METERED_ALL), WAIT), daemon.stderr
        assert daisy.exchanges == []
        nm.set(metered=METERED_NO)
        assert daisy.wait_for(lambda: len(daisy.reports) == 1, timeout=WAIT), daemon.stderr


def test_offline_makes_no_attempt_and_sends_when_back(daisy, crash_dir, state_dir, system_bus) -> None:
    with NetworkManager(system_bus.address, connectivity=CONNECTIVITY_NONE) as nm, \
            run_daemon(crash_dir, state_dir, daisy.url, "--idle-timeout", "60") as daemon:  # fmt: skip
        drop(crash_dir / "_usr_bin_plane.0.crash", crash("plane"))
        assert daemon.log_line(re.escape(OFFLINE), WAIT), daemon.stderr
        assert daisy.exchanges == [] and daisy.connections == 0
        (held,) = crashd_status(crash_dir, state_dir).values()
        assert held["state"] == "held" and held["detail"] == OFFLINE and held["attempts"] == 0

        nm.set(connectivity=CONNECTIVITY_FULL)
        assert daisy.wait_for(lambda: len(daisy.reports) == 1, timeout=WAIT), daemon.stderr
        assert daemon.log_line(r"plane\.0\.crash: sent|_usr_bin_plane.*sent", WAIT)
        (sent,) = crashd_status(crash_dir, state_dir).values()
        assert sent["state"] == "sent" and sent["attempts"] == 1  # the one that went out: none burnt


def test_going_offline_while_running_holds_the_next_report(daisy, crash_dir, state_dir, system_bus) -> None:
    with NetworkManager(system_bus.address) as nm, \
            run_daemon(crash_dir, state_dir, daisy.url, "--idle-timeout", "60") as daemon:  # fmt: skip
        drop(crash_dir / "_usr_bin_one.0.crash", crash("one"))
        assert daisy.wait_for(lambda: len(daisy.reports) == 1, timeout=WAIT)
        nm.set(connectivity=CONNECTIVITY_NONE)
        assert daemon.log_line(r"network: offline", WAIT), daemon.stderr
        drop(crash_dir / "_usr_bin_two.0.crash", crash("two"))
        assert daemon.log_line(r"_usr_bin_two.*" + re.escape(OFFLINE), WAIT), daemon.stderr
        assert len(daisy.exchanges) == 1
        nm.set(connectivity=CONNECTIVITY_FULL)
        assert daisy.wait_for(lambda: len(daisy.reports) == 2, timeout=WAIT), daemon.stderr


def test_network_manager_leaving_means_sending_as_before(daisy, crash_dir, state_dir, system_bus) -> None:
    nm = NetworkManager(system_bus.address, connectivity=CONNECTIVITY_NONE).start()
    try:
        with run_daemon(crash_dir, state_dir, daisy.url, "--idle-timeout", "60") as daemon:
            drop(crash_dir / "_usr_bin_gone.0.crash", crash("gone"))
            assert daemon.log_line(re.escape(OFFLINE), WAIT), daemon.stderr
            nm.stop()  # NameOwnerChanged: nobody says offline any more
            assert daisy.wait_for(lambda: len(daisy.reports) == 1, timeout=WAIT), daemon.stderr
            assert daemon.log_line("NetworkManager is not on the system bus", WAIT)
    finally:
        nm.stop()


def test_without_network_manager_delivered_as_today_and_said_once(
    daisy, crash_dir, state_dir, system_bus
) -> None:
    with run_daemon(crash_dir, state_dir, daisy.url, "--idle-timeout", "60") as daemon:
        for name in ("a", "b", "c"):
            drop(crash_dir / f"_usr_bin_{name}.0.crash", crash(name, CoreDump=CORE))
        assert daisy.wait_for(lambda: len(daisy.reports) == 3 and len(daisy.cores) == 3, timeout=WAIT)
        assert daemon.terminate() == 0
        said = [line for line in daemon.log_lines() if "NetworkManager is not on the system bus" in line]
        assert len(said) == 1, daemon.stderr


# -- upload-all: honours NetworkManager ---------------------------------------------------------


def upload_all(crash_dir: Path, state_dir: Path, url: str, config: Path | None = None) -> tuple[int, dict]:
    head = ["--config", str(config)] if config is not None else []
    result = subprocess.run(
        [sys.executable, "-m", "crashd", *head, "upload-all", "--json", "--crash-dir", str(crash_dir), "--state-dir", str(state_dir),
         "--url", url],
        capture_output=True, text=True, env=_environment(), timeout=120,
    )  # fmt: skip
    return result.returncode, json.loads(result.stdout)


def test_upload_all_offline_attempts_nothing(daisy, crash_dir, state_dir, system_bus) -> None:
    drop(crash_dir / "_usr_bin_ci.0.crash", crash("ci"))
    with NetworkManager(system_bus.address, connectivity=CONNECTIVITY_NONE):
        code, summary = upload_all(crash_dir, state_dir, daisy.url)
    assert code == 1 and daisy.connections == 0 and summary["held"] == 1
    (report,) = summary["reports"]
    assert report["state"] == "held" and report["detail"] == OFFLINE and report["attempts"] == 0


def test_upload_all_metered_sends_the_report_and_says_the_core_is_held(
    daisy, crash_dir, state_dir, system_bus
) -> None:
    drop(crash_dir / "_usr_bin_ci.0.crash", crash("ci", CoreDump=CORE))
    with NetworkManager(system_bus.address, metered=METERED_YES):
        code, summary = upload_all(crash_dir, state_dir, daisy.url)
        assert code == 1 and len(daisy.reports) == 1 and daisy.cores == []
        (report,) = summary["reports"]
        assert report["state"] == "held" and report["detail"] == METERED_CORE and report["oops_id"]
        code, summary = upload_all(crash_dir, state_dir, daisy.url, config_file(state_dir.parent, "send"))
    assert code == 0 and len(daisy.cores) == 1 and summary["reports"][0]["state"] == "sent"


def test_upload_all_without_a_bus_sends_as_before(daisy, crash_dir, state_dir) -> None:
    drop(crash_dir / "_usr_bin_ci.0.crash", crash("ci", CoreDump=CORE))
    code, summary = upload_all(crash_dir, state_dir, daisy.url)  # DBUS_SYSTEM_BUS_ADDRESS: nowhere
    assert code == 0 and len(daisy.cores) == 1, summary


def test_the_daemon_outlives_its_idle_timeout_while_the_network_holds_a_report(
    daisy, crash_dir, state_dir, system_bus
) -> None:
    """Only a running daemon hears the network come back; the timer would be hours late."""
    with NetworkManager(system_bus.address, connectivity=CONNECTIVITY_NONE) as nm, \
            run_daemon(crash_dir, state_dir, daisy.url, "--idle-timeout", "1") as daemon:  # fmt: skip
        drop(crash_dir / "_usr_bin_idle.0.crash", crash("idle"))
        assert daemon.log_line(re.escape(OFFLINE), WAIT), daemon.stderr
        assert daemon.wait_exit(3) is None, daemon.stderr  # three idle timeouts: it is still there
        nm.set(connectivity=CONNECTIVITY_FULL)
        assert daisy.wait_for(lambda: len(daisy.reports) == 1, timeout=WAIT), daemon.stderr
        assert daemon.wait_exit(WAIT) == 0  # and then it goes idle as usual
