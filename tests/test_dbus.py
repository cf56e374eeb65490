"""crashd's D-Bus consent service against a real bus and real clients (DESIGN.md §5, §11; issue 6).

The service runs as its own process (tests/dbus_service_main.py) on a private system bus
(tests/dbus_bus.py) with a polkit stand-in; the clients are ``gdbus``, ``dbus-send`` and dbus-fast,
replaying what GNOME Settings, KDE's KCM and apport send (research/whoopsie.md §5.2). Nothing sleeps:
the service prints ``ready`` once it owns its names, and every other wait is for a signal, a line or a
process exit, with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus

from crashd import consent, dbus_client, dbus_prefs
from crashd.dbus.reports import list_entry
from crashd.lifecycle import State, Status
from tests import dbus_bus
from tests.dbus_bus import Polkit, PrivateBus
from tests.test_upload_all import crash, write

REPO = Path(__file__).resolve().parent.parent
IDENTIFIER = "crashd-test-identifier"
DEADLINE = 15.0
W_NAME = W_IFACE = "com.ubuntu.WhoopsiePreferences"
W_PATH = "/com/ubuntu/WhoopsiePreferences"
C_NAME, C_PATH = "org.crashd.Crashd1", "/org/crashd/Crashd1"
C_PREFS, C_REPORTS = "org.crashd.Preferences1", "org.crashd.Reports1"
PROPS = "org.freedesktop.DBus.Properties"
DENIED = "org.freedesktop.DBus.Error.AccessDenied"

system_bus, polkit = dbus_bus.system_bus, dbus_bus.polkit  # the fixtures, requested by name
pytestmark = pytest.mark.skipif(shutil.which("gdbus") is None, reason="gdbus not installed (libglib2.0-bin)")


# -- the service process ------------------------------------------------------------------------------


@dataclass
class Served:
    """The service under test: a process, its stdout lines (after ``ready``) and its directories."""

    process: subprocess.Popen[str]
    state_dir: Path
    crash_dir: Path
    legacy_dir: Path
    log: Path  # its stderr: a file, never a pipe nobody reads (a full pipe would block the service)
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    pump: threading.Thread | None = None

    def expect(self, prefix: str, timeout: float = DEADLINE) -> str:
        """The next stdout line, which must start with *prefix*."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {prefix!r} line from the service within {timeout} s") from None
        assert line.startswith(prefix), (line, prefix)
        return line

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(DEADLINE)


def _pump(process: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.put(line.rstrip("\n"))


@pytest.fixture
def start_service(tmp_path: Path, system_bus: PrivateBus) -> Iterator[Callable[..., Served]]:
    """``start_service(*extra_args)`` runs the service on the test bus; each one is stopped afterwards."""
    started: list[Served] = []
    directories = {name: tmp_path / name for name in ("state", "crash", "legacy")}
    for directory in directories.values():
        directory.mkdir(exist_ok=True)

    def start(*args: str) -> Served:
        env = os.environ | {"PYTHONPATH": str(REPO), "CRASH_DB_IDENTIFIER": IDENTIFIER}
        log = tmp_path / f"service-{len(started)}.log"
        with log.open("w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.dbus_service_main", "--state-dir", str(directories["state"]),
                 "--crash-dir", str(directories["crash"]), "--legacy-dir", str(directories["legacy"]), *args],
                stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
            )  # fmt: skip
        served = Served(process, directories["state"], directories["crash"], directories["legacy"], log)
        started.append(served)
        served.pump = threading.Thread(target=_pump, args=(process, served.lines), daemon=True)
        served.pump.start()
        try:
            served.expect("ready")
        except AssertionError:
            process.kill()
            process.wait()
            raise AssertionError(f"the service did not start: {log.read_text()}") from None
        return served

    yield start
    for served in started:
        if served.process.poll() is None:
            served.process.kill()
        served.process.wait()
        if served.pump is not None:
            served.pump.join(DEADLINE)  # EOF once the process is gone
        if served.process.stdout is not None:
            served.process.stdout.close()


@pytest.fixture
def service(polkit: Polkit, start_service: Callable[..., Served]) -> Served:
    return start_service()


# -- clients ------------------------------------------------------------------------------------------


def gdbus(
    name: str, path: str, method: str, *args: str, interactive: bool = False
) -> subprocess.CompletedProcess[str]:
    command = [
        "gdbus",
        "call",
        "--system",
        "-d",
        name,
        "-o",
        path,
        "-m",
        method,
        *(["-i"] if interactive else []),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE, check=False)


def whoopsie(method: str, *args: str, interactive: bool = False) -> subprocess.CompletedProcess[str]:
    return gdbus(W_NAME, W_PATH, f"{W_IFACE}.{method}", *args, interactive=interactive)


def ours(
    interface: str, method: str, *args: str, interactive: bool = False
) -> subprocess.CompletedProcess[str]:
    return gdbus(C_NAME, C_PATH, f"{interface}.{method}", *args, interactive=interactive)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def refused(result: subprocess.CompletedProcess[str], error: str = DENIED) -> str:
    assert result.returncode != 0, result.stdout
    assert f"GDBus.Error:{error}: " in result.stderr, result.stderr
    return result.stderr.split(f"{error}: ", 1)[1].strip()


def gdbus_all(name: str, path: str, interface: str) -> dict[str, Any]:
    """GetAll through gdbus, parsed from its GVariant text (booleans and strings only)."""
    text = ok(gdbus(name, path, f"{PROPS}.GetAll", interface))
    pairs = re.findall(r"'(\w+)': <(true|false|'[^']*')>", text)
    return {key: value == "true" if value in ("true", "false") else value.strip("'") for key, value in pairs}


def whoopsie_state() -> dict[str, Any]:
    return gdbus_all(W_NAME, W_PATH, W_IFACE)


def crashd_state() -> dict[str, Any]:
    return gdbus_all(C_NAME, C_PATH, C_PREFS)


def dbus_send(name: str, path: str, method: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = ["dbus-send", "--system", "--print-reply", f"--dest={name}", path, method, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE, check=False)


def stored_in(state_dir: Path) -> dict[str, bool] | None:
    path = state_dir / consent.FILE_NAME
    return json.loads(path.read_text()) if path.exists() else None


class Watcher:
    """A dbus-fast client subscribed to PropertiesChanged and ReportChanged from anyone."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.signals: asyncio.Queue[tuple[str, str, Any]] = asyncio.Queue()

    @classmethod
    async def connect(cls, address: str) -> Watcher:
        watcher = cls(await MessageBus(bus_address=address).connect())
        watcher.bus.add_message_handler(watcher._on_message)
        for rule in (f"type='signal',interface='{PROPS}',member='PropertiesChanged'",
                     f"type='signal',interface='{C_REPORTS}',member='ReportChanged'"):  # fmt: skip
            await call(watcher.bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                       "AddMatch", "s", [rule])  # fmt: skip
        return watcher

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and msg.member == "PropertiesChanged":
            changed = {name: variant.value for name, variant in msg.body[1].items()}
            self.signals.put_nowait((msg.path, msg.body[0], changed))
        elif msg.message_type is MessageType.SIGNAL and msg.member == "ReportChanged":
            self.signals.put_nowait((msg.path, msg.interface, tuple(msg.body)))

    async def next(self, timeout: float = DEADLINE) -> tuple[str, str, Any]:
        async with asyncio.timeout(timeout):
            return await self.signals.get()

    async def announced(self, expected: dict[str, bool]) -> None:
        """The next signals announce *expected* on both objects (crashd's has no ReportMetrics)."""
        want = {W_IFACE: expected, C_PREFS: {k: v for k, v in expected.items() if k != "ReportMetrics"}}
        want = {interface: changed for interface, changed in want.items() if changed}
        seen = {}
        for _ in want:
            path, interface, changed = await self.next()
            seen[interface] = changed
            assert path == {W_IFACE: W_PATH, C_PREFS: C_PATH}[interface], (path, interface)
        assert seen == want

    def close(self) -> None:
        self.bus.disconnect()


async def call(bus: MessageBus, name: str, path: str, interface: str, member: str, signature: str = "",
               body: list[Any] | None = None, flags: MessageFlag = MessageFlag.NONE) -> Message:  # fmt: skip
    reply = await bus.call(Message(destination=name, path=path, interface=interface, member=member,
                                   signature=signature, body=body or [], flags=flags))  # fmt: skip
    assert reply is not None
    return reply


@pytest.fixture
async def watcher(system_bus: PrivateBus) -> Any:
    w = await Watcher.connect(system_bus.address)
    yield w
    w.close()


# -- introspection: both objects exactly as DESIGN.md §5 ------------------------------------------------

# interface -> {"methods": {name: [(direction, type)]}, "signals": {name: [type]}, "properties": {name: (type, access)}}
EXPECTED = {
    (C_NAME, C_PATH): {
        C_PREFS: {
            "methods": {"SetReportCrashes": [("in", "b")], "SetAutomaticallyReportCrashes": [("in", "b")]},
            "signals": {},
            "properties": {"ReportCrashes": ("b", "read"), "AutomaticallyReportCrashes": ("b", "read"),
                           "Identifier": ("s", "read"), "Locked": ("b", "read")},
        },
        C_REPORTS: {
            "methods": {"List": [("out", "a(ssxs)")], "UploadNow": [], "WhatIsSent": [("in", "s"), ("out", "s")]},
            "signals": {"ReportChanged": ["s", "s"]},
            "properties": {},
        },
    },
    (W_NAME, W_PATH): {
        W_IFACE: {
            "methods": {"SetReportCrashes": [("in", "b")], "SetReportMetrics": [("in", "b")],
                        "SetAutomaticallyReportCrashes": [("in", "b")], "GetIdentifier": [("out", "s")]},
            "signals": {},
            "properties": {"ReportCrashes": ("b", "read"), "ReportMetrics": ("b", "read"),
                           "AutomaticallyReportCrashes": ("b", "read")},
        },
    },
}  # fmt: skip


def introspect(name: str, path: str) -> dict[str, dict[str, Any]]:
    text = ok(subprocess.run(["gdbus", "introspect", "--system", "--xml", "-d", name, "-o", path],
                             capture_output=True, text=True, timeout=DEADLINE, check=False))  # fmt: skip
    interfaces = {}
    for node in ET.fromstring(text).iter("interface"):
        interfaces[node.get("name")] = {
            "methods": {m.get("name"): [(a.get("direction", "in"), a.get("type")) for a in m.iter("arg")]
                        for m in node.iter("method")},
            "signals": {s.get("name"): [a.get("type") for a in s.iter("arg")] for s in node.iter("signal")},
            "properties": {p.get("name"): (p.get("type"), p.get("access")) for p in node.iter("property")},
        }  # fmt: skip
    return interfaces


def test_introspection_shows_both_objects_as_designed(service: Served) -> None:
    for (name, path), interfaces in EXPECTED.items():
        found = introspect(name, path)
        for interface, members in interfaces.items():
            assert found[interface] == members, interface
    # whoopsie-preferences' argument name, which generated proxies show
    text = ok(subprocess.run(["gdbus", "introspect", "--system", "-d", W_NAME, "-o", W_PATH],
                             capture_output=True, text=True, timeout=DEADLINE, check=False))  # fmt: skip
    assert "GetIdentifier(out s identifier);" in text
    assert "readonly b ReportMetrics = true;" in text


# -- reading and writing both interfaces --------------------------------------------------------------


def test_defaults_read_through_every_client(service: Served) -> None:
    assert whoopsie_state() == {
        "AutomaticallyReportCrashes": False,
        "ReportCrashes": True,
        "ReportMetrics": True,
    }
    assert crashd_state() == {"AutomaticallyReportCrashes": False, "Identifier": IDENTIFIER, "Locked": False,
                              "ReportCrashes": True}  # fmt: skip
    assert ok(whoopsie("GetIdentifier")) == f"('{IDENTIFIER}',)"
    reply = ok(dbus_send(W_NAME, W_PATH, f"{W_IFACE}.GetIdentifier"))
    assert f'string "{IDENTIFIER}"' in reply
    reply = ok(dbus_send(C_NAME, C_PATH, f"{PROPS}.Get", f"string:{C_PREFS}", "string:ReportCrashes"))
    assert "boolean true" in reply
    reply = ok(dbus_send(W_NAME, W_PATH, f"{PROPS}.Get", f"string:{W_IFACE}", "string:ReportMetrics"))
    assert "boolean true" in reply


def test_setters_on_both_interfaces_store_and_show(service: Served, polkit: Polkit) -> None:
    ok(ours(C_PREFS, "SetAutomaticallyReportCrashes", "true"))
    service.expect("consent ReportCrashes=on AutomaticallyReportCrashes=on ReportMetrics=on")
    assert whoopsie_state()["AutomaticallyReportCrashes"] is True
    ok(whoopsie("SetReportMetrics", "false"))
    service.expect("consent ReportCrashes=on AutomaticallyReportCrashes=on ReportMetrics=off")
    ok(dbus_send(W_NAME, W_PATH, f"{W_IFACE}.SetReportCrashes", "boolean:false"))
    service.expect("consent ReportCrashes=off AutomaticallyReportCrashes=off ReportMetrics=off")
    assert crashd_state()["ReportCrashes"] is False
    # automatic never shows while reporting is off
    assert crashd_state()["AutomaticallyReportCrashes"] is False
    assert stored_in(service.state_dir) == {
        "automatic": True,
        "report_crashes": False,
        "report_metrics": False,
    }
    assert [check.action for check in polkit.checks] == [
        "org.crashd.change-preferences", "com.ubuntu.whoopsiepreferences.change",
        "com.ubuntu.whoopsiepreferences.change",
    ]  # fmt: skip


def test_properties_cannot_be_set_directly(service: Served, polkit: Polkit) -> None:
    for name, path, interface in ((C_NAME, C_PATH, C_PREFS), (W_NAME, W_PATH, W_IFACE)):
        result = gdbus(name, path, f"{PROPS}.Set", interface, "ReportCrashes", "<false>")
        refused(result, "org.freedesktop.DBus.Error.PropertyReadOnly")
    assert whoopsie_state()["ReportCrashes"] is True
    assert stored_in(service.state_dir) is None
    assert polkit.checks == []


# -- the exact call sequences of the clients that exist -----------------------------------------------


async def test_gnome_settings_combo(
    service: Served, polkit: Polkit, system_bus: PrivateBus, watcher: Watcher
) -> None:
    """GNOME Settings (cc-diagnostics-page.c): state from the properties; on a change both setters, async."""
    client = await MessageBus(bus_address=system_bus.address).connect()
    try:

        async def choose(value: str) -> None:  # the combo: "never", "auto" or "manual"
            first = call(client, W_NAME, W_PATH, W_IFACE, "SetReportCrashes", "b", [value != "never"])
            second = call(
                client, W_NAME, W_PATH, W_IFACE, "SetAutomaticallyReportCrashes", "b", [value == "auto"]
            )
            for reply in await asyncio.gather(first, second):
                assert reply.message_type is MessageType.METHOD_RETURN, reply.body

        async def shown() -> str:
            reply = await call(client, W_NAME, W_PATH, PROPS, "GetAll", "s", [W_IFACE])
            values = {name: variant.value for name, variant in reply.body[0].items()}
            if values["AutomaticallyReportCrashes"]:
                return "auto"
            return "manual" if values["ReportCrashes"] else "never"

        assert await shown() == "manual"
        await choose("auto")
        await watcher.announced({"AutomaticallyReportCrashes": True})
        assert await shown() == "auto"
        await choose("never")
        await watcher.announced({"ReportCrashes": False, "AutomaticallyReportCrashes": False})
        assert await shown() == "never"
        await choose("manual")
        await watcher.announced({"ReportCrashes": True})
        assert await shown() == "manual"
        assert {check.subject["name"] for check in polkit.checks} == {client.unique_name}
        assert {(check.subject_kind, check.action, check.flags) for check in polkit.checks} == {
            ("system-bus-name", "com.ubuntu.whoopsiepreferences.change", 0)
        }
    finally:
        client.disconnect()


def test_kde_kcm_load_and_save(service: Served, polkit: Polkit) -> None:
    """KDE's whoopsie KCM (Module.cpp): load() reads three properties and GetIdentifier; save() calls the
    three setters one after the other, each waiting for its reply."""
    for prop in ("ReportCrashes", "ReportMetrics", "AutomaticallyReportCrashes"):
        assert "boolean" in ok(
            dbus_send(W_NAME, W_PATH, f"{PROPS}.Get", f"string:{W_IFACE}", f"string:{prop}")
        )
    assert IDENTIFIER in ok(dbus_send(W_NAME, W_PATH, f"{W_IFACE}.GetIdentifier"))
    for method, value in (("SetReportCrashes", "true"), ("SetReportMetrics", "false"),
                          ("SetAutomaticallyReportCrashes", "true")):  # fmt: skip
        ok(dbus_send(W_NAME, W_PATH, f"{W_IFACE}.{method}", f"boolean:{value}"))
    assert whoopsie_state() == {
        "AutomaticallyReportCrashes": True,
        "ReportCrashes": True,
        "ReportMetrics": False,
    }
    assert len(polkit.checks) == 3


def test_apport_remember_choice(service: Served) -> None:
    """apport's ui.py ``remember_send_report``: two gdbus calls, exactly as it spawns them."""
    for method, value in (("SetReportCrashes", "true"), ("SetAutomaticallyReportCrashes", "true")):
        command = ["gdbus", "call", "-y", "-d", W_NAME, "-o", W_PATH, "-m", f"{W_IFACE}.{method}", value]
        ok(subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE, check=False))
    assert whoopsie_state()["AutomaticallyReportCrashes"] is True
    assert crashd_state()["AutomaticallyReportCrashes"] is True


# -- PropertiesChanged, whoever made the change --------------------------------------------------------


async def test_changes_through_either_interface_are_announced_on_both(
    service: Served, watcher: Watcher
) -> None:
    ok(ours(C_PREFS, "SetAutomaticallyReportCrashes", "true"))
    await watcher.announced({"AutomaticallyReportCrashes": True})
    ok(whoopsie("SetReportCrashes", "false"))
    await watcher.announced({"ReportCrashes": False, "AutomaticallyReportCrashes": False})
    ok(whoopsie("SetReportMetrics", "false"))
    await watcher.announced({"ReportMetrics": False})
    # no change: nothing announced, so the next signal is the next change's
    ok(whoopsie("SetReportMetrics", "false"))
    ok(ours(C_PREFS, "SetReportCrashes", "true"))
    await watcher.announced({"ReportCrashes": True, "AutomaticallyReportCrashes": True})


async def test_offline_change_is_announced_without_any_call(service: Served, watcher: Watcher) -> None:
    """``crashd prefs set … --offline`` writes the file itself; the service sees it (inotify) and announces."""
    consent.set_preference(service.state_dir, "AutomaticallyReportCrashes", True, config=None)
    await watcher.announced({"AutomaticallyReportCrashes": True})
    service.expect("consent ReportCrashes=on AutomaticallyReportCrashes=on")
    # an admin's legacy switch
    (service.legacy_dir / "whoopsie").write_text("[General]\nreport_crashes=false\n")
    await watcher.announced({"ReportCrashes": False, "AutomaticallyReportCrashes": False})
    assert whoopsie_state()["ReportCrashes"] is False


def test_gdbus_monitor_sees_the_change(service: Served) -> None:
    """What GNOME's g-properties-changed rests on, seen by a real GDBus client."""
    monitor = subprocess.Popen(["gdbus", "monitor", "--system", "-d", W_NAME, "-o", W_PATH],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        lines: queue.Queue[str] = queue.Queue()
        pump = threading.Thread(target=_pump, args=(monitor, lines), daemon=True)
        pump.start()
        # gdbus subscribes (AddMatch) before it asks for the owner, so this line means "listening"
        while "is owned by" not in lines.get(timeout=DEADLINE):
            pass
        ok(ours(C_PREFS, "SetAutomaticallyReportCrashes", "true"))
        line = lines.get(timeout=DEADLINE)
        assert "org.freedesktop.DBus.Properties.PropertiesChanged" in line, line
        assert f"('{W_IFACE}', {{'AutomaticallyReportCrashes': <true>}}, @as [])" in line, line
    finally:
        monitor.terminate()
        monitor.wait()
        pump.join(DEADLINE)
        assert monitor.stdout is not None
        monitor.stdout.close()


# -- authorisation ------------------------------------------------------------------------------------


async def test_polkit_refusal_changes_nothing(service: Served, polkit: Polkit, watcher: Watcher) -> None:
    polkit.allow = False
    for method in ("SetReportCrashes", "SetReportMetrics", "SetAutomaticallyReportCrashes"):
        why = refused(whoopsie(method, "false" if method != "SetAutomaticallyReportCrashes" else "true"))
        assert why == "not authorized (polkit action com.ubuntu.whoopsiepreferences.change)"
    for method in ("SetReportCrashes", "SetAutomaticallyReportCrashes"):
        assert "org.crashd.change-preferences" in refused(ours(C_PREFS, method, "false"))
    assert "org.crashd.change-preferences" in refused(ours(C_REPORTS, "UploadNow"))
    assert stored_in(service.state_dir) is None
    assert whoopsie_state() == {
        "AutomaticallyReportCrashes": False,
        "ReportCrashes": True,
        "ReportMetrics": True,
    }
    assert len(polkit.checks) == 6
    polkit.allow = True  # the first signal after the refusals is the one for this allowed change
    ok(whoopsie("SetReportMetrics", "false"))
    await watcher.announced({"ReportMetrics": False})
    assert service.expect("consent").endswith("ReportMetrics=off")  # and no upload-now before it


def test_challenge_asks_for_interactive_authorisation(service: Served, polkit: Polkit) -> None:
    polkit.allow, polkit.challenge = False, True
    assert "allow interactive authorization" in refused(whoopsie("SetReportCrashes", "false"))


def test_interactive_flag_only_when_the_caller_allows_it(service: Served, polkit: Polkit) -> None:
    ok(whoopsie("SetReportCrashes", "true", interactive=True))
    ok(whoopsie("SetReportCrashes", "true"))
    ok(ours(C_PREFS, "SetReportCrashes", "true", interactive=True))
    ok(dbus_send(C_NAME, C_PATH, f"{C_PREFS}.SetReportCrashes", "boolean:true"))
    assert [check.flags for check in polkit.checks] == [1, 0, 1, 0]
    names = [check.subject["name"] for check in polkit.checks]
    assert all(re.fullmatch(r":1\.\d+", name) for name in names)
    assert len(set(names)) == 4  # each caller itself


async def test_dbus_fast_caller_is_the_subject(
    service: Served, polkit: Polkit, system_bus: PrivateBus
) -> None:
    client = await MessageBus(bus_address=system_bus.address).connect()
    try:
        flag = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION
        reply = await call(client, C_NAME, C_PATH, C_PREFS, "SetReportCrashes", "b", [False], flags=flag)
        assert reply.message_type is MessageType.METHOD_RETURN
        reply = await call(client, W_NAME, W_PATH, W_IFACE, "SetReportCrashes", "b", [True])
        assert reply.message_type is MessageType.METHOD_RETURN
    finally:
        client.disconnect()
    assert [(c.subject_kind, c.subject, c.flags) for c in polkit.checks] == [
        ("system-bus-name", {"name": client.unique_name}, 1), ("system-bus-name", {"name": client.unique_name}, 0),
    ]  # fmt: skip


def test_polkit_absent_means_refused(start_service: Callable[..., Served]) -> None:
    served = start_service()  # no polkit on this bus
    why = refused(whoopsie("SetReportCrashes", "false"))
    assert "org.freedesktop.DBus.Error.ServiceUnknown" in why, why
    assert stored_in(served.state_dir) is None


def test_polkit_silent_means_refused_and_cancelled(
    start_service: Callable[..., Served], polkit: Polkit
) -> None:
    polkit.hang = True
    served = start_service("--polkit-timeout", "0.2")
    # Its own 0.2 s deadline, said in the answer; gdbus's DEADLINE only catches a call that never returns.
    assert "polkit did not answer within 0.2 s" in refused(whoopsie("SetReportCrashes", "false"))
    assert stored_in(served.state_dir) is None
    assert polkit.cancellation.wait(DEADLINE)  # a one-way message, sent as the call gives up
    assert polkit.cancelled == [polkit.checks[0].cancellation_id]


def test_locked_preferences_are_refused_naming_the_file(
    tmp_path: Path, start_service: Callable[..., Served], polkit: Polkit
) -> None:
    config = tmp_path / "crashd.conf"
    config.write_text("[consent]\nlocked = true\nreport_crashes = false\n")
    served = start_service("--config", str(config))
    assert crashd_state()["Locked"] is True
    assert whoopsie_state()["ReportCrashes"] is False
    why = refused(whoopsie("SetReportCrashes", "true"))
    assert str(config) in why, why
    assert str(config) in refused(ours(C_PREFS, "SetAutomaticallyReportCrashes", "true"))
    ok(whoopsie("SetReportCrashes", "false"))  # KDE and GNOME re-apply every switch: the locked value is fine
    ok(whoopsie("SetReportMetrics", "false"))  # ReportMetrics is not locked
    served.expect("consent ReportCrashes=off AutomaticallyReportCrashes=off ReportMetrics=off")
    assert stored_in(served.state_dir) == {
        "automatic": False,
        "report_crashes": True,
        "report_metrics": False,
    }
    config.write_text("[consent]\nlocked = false\n")  # the admin unlocks: announced like any change
    served.expect("consent ReportCrashes=on AutomaticallyReportCrashes=off ReportMetrics=off")
    assert crashd_state()["Locked"] is False


def test_preferences_survive_a_restart(start_service: Callable[..., Served], polkit: Polkit) -> None:
    first = start_service()
    ok(whoopsie("SetAutomaticallyReportCrashes", "true"))
    ok(ours(C_PREFS, "SetReportCrashes", "true"))
    ok(whoopsie("SetReportMetrics", "false"))
    assert first.stop() == 0
    assert gdbus(W_NAME, W_PATH, f"{W_IFACE}.GetIdentifier").returncode != 0  # gone, and not activatable here
    start_service()
    assert whoopsie_state() == {
        "AutomaticallyReportCrashes": True,
        "ReportCrashes": True,
        "ReportMetrics": False,
    }
    assert crashd_state()["AutomaticallyReportCrashes"] is True


# -- Reports1 -----------------------------------------------------------------------------------------


def test_reports_list_and_upload_now(service: Served, polkit: Polkit) -> None:
    assert ok(ours(C_REPORTS, "List")) == "(@a(ssxs) [],)"
    write(service.crash_dir / "_usr_bin_gedit.0.crash", crash("gedit"))
    assert ok(ours(C_REPORTS, "List")) == "([('_usr_bin_gedit.0.crash', 'new', int64 0, '')],)"
    ok(ours(C_REPORTS, "UploadNow"))
    service.expect("upload-now")
    assert polkit.checks[-1].action == "org.crashd.change-preferences"


def test_list_entries() -> None:
    entry = list_entry
    assert entry(Status("a.crash", State.NEW)) == ("a.crash", "new", 0, "")
    assert entry(Status("a.crash", State.QUEUED, detail="HTTP 503", next_attempt=1700000000.7)) == (
        "a.crash", "queued", 1700000000, "HTTP 503")  # fmt: skip
    assert entry(Status("a.crash", State.SENT, oops_id="abc", detail="uploaded before")) == (
        "a.crash", "sent", 0, "OOPS abc; uploaded before")  # fmt: skip


# -- load: 1,000 concurrent calls -----------------------------------------------------------------------


@pytest.mark.parametrize("connections", [8, 40])
async def test_burst_of_concurrent_calls(service: Served, system_bus: PrivateBus, connections: int) -> None:
    """1,000 calls in flight at once (and 5,000 for margin), all answered, the service still there.

    A system bus lets one connection have at most 128 calls awaiting replies (dbus-daemon's
    max_replies_per_connection; Debian's system.conf keeps the default), so the client spreads
    them over connections of 125, as that many busy clients would. Without
    ``dbus_prefs.tolerate_full_socket`` the service fell off the bus in 1 run of 10 at 1,000 and in
    every run at 5,000.
    """
    clients = [await MessageBus(bus_address=system_bus.address).connect() for _ in range(connections)]
    try:
        calls = []
        for client in clients:
            for i in range(125):
                if i % 3 == 0:
                    calls.append(call(client, W_NAME, W_PATH, W_IFACE, "GetIdentifier"))
                elif i % 3 == 1:
                    calls.append(call(client, C_NAME, C_PATH, PROPS, "Get", "ss", [C_PREFS, "Identifier"]))
                else:
                    calls.append(call(client, W_NAME, W_PATH, PROPS, "GetAll", "s", [W_IFACE]))
        started = time.monotonic()
        replies = await asyncio.gather(*calls)
        elapsed = time.monotonic() - started
        assert len(replies) == 125 * connections
        assert all(reply.message_type is MessageType.METHOD_RETURN for reply in replies), {
            reply.error_name for reply in replies
        }
        values = [r.body[0].value if hasattr(r.body[0], "value") else r.body[0] for r in replies]
        assert all(value == IDENTIFIER or isinstance(value, dict) for value in values)
        print(f"{len(replies)} concurrent calls answered in {elapsed * 1000:.0f} ms")
    finally:
        for client in clients:
            client.disconnect()
    assert service.process.poll() is None
    assert ok(whoopsie("GetIdentifier")) == f"('{IDENTIFIER}',)"


def test_burst_from_20_gdbus_processes(service: Served) -> None:
    command = ["gdbus", "call", "--system", "-d", W_NAME, "-o", W_PATH, "-m", f"{W_IFACE}.GetIdentifier"]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(20)]
    outputs = [process.communicate(timeout=DEADLINE)[0].strip() for process in processes]
    assert [process.returncode for process in processes] == [0] * 20
    assert outputs == [f"('{IDENTIFIER}',)"] * 20
    assert service.process.poll() is None


# -- the bus going away ---------------------------------------------------------------------------------


def test_service_exits_nonzero_when_the_bus_dies(service: Served, system_bus: PrivateBus) -> None:
    system_bus.kill()
    assert service.process.wait(DEADLINE) == 1  # a bound that catches only a service that never exits
    assert "lost the system bus connection" in service.log.read_text()


# -- in process: serve(), close(), ReportChanged, names taken, no bus --------------------------------


async def test_serve_in_process(
    tmp_path: Path, system_bus: PrivateBus, polkit: Polkit, watcher: Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRASH_DB_IDENTIFIER", IDENTIFIER)
    activity: list[None] = []
    bus = await dbus_prefs.connect_system_bus()  # DBUS_SYSTEM_BUS_ADDRESS from the fixture
    service = await dbus_prefs.serve(bus, state_dir=tmp_path, config=None, status_provider=list,
                                     on_activity=lambda: activity.append(None))  # fmt: skip
    client = await MessageBus(bus_address=system_bus.address).connect()
    try:
        service.report_changed("_usr_bin_gedit.1000.crash", "sent")
        assert await watcher.next() == (C_PATH, C_REPORTS, ("_usr_bin_gedit.1000.crash", "sent"))
        reply = await call(client, C_NAME, C_PATH, C_REPORTS, "List")
        assert reply.body == [[]]
        assert len(activity) == 1
        other = await MessageBus(bus_address=system_bus.address).connect()
        with pytest.raises(dbus_prefs.BusUnavailable, match=re.escape("cannot own org.crashd.Crashd1")):
            await dbus_prefs.serve(other, state_dir=tmp_path, config=None, status_provider=list)
        other.disconnect()
        reply = await call(client, W_NAME, W_PATH, W_IFACE, "GetIdentifier")
        assert reply.body == [IDENTIFIER]  # the first service is unharmed
        await service.close()
        reply = await call(client, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                           "NameHasOwner", "s", [W_NAME])  # fmt: skip
        assert reply.body == [False]
    finally:
        client.disconnect()
        bus.disconnect()


async def test_no_bus_is_reported_with_its_address(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/nothing")
    with pytest.raises(dbus_prefs.BusUnavailable, match=re.escape(f"unix:path={tmp_path}/nothing")):
        await dbus_prefs.connect_system_bus()


# -- crashd prefs through D-Bus (crashd/dbus_client.py) ---------------------------------------------------


def test_client_reads_and_changes(service: Served, polkit: Polkit) -> None:
    assert dbus_client.get_preferences() == dbus_client.Preferences(True, False, True, False)
    after = dbus_client.set_preference("AutomaticallyReportCrashes", True)
    assert after == dbus_client.Preferences(True, True, True, False)
    assert dbus_client.set_preference("ReportMetrics", False).report_metrics is False
    assert [(c.action, c.flags) for c in polkit.checks] == [
        ("org.crashd.change-preferences", 1), ("com.ubuntu.whoopsiepreferences.change", 1),
    ]  # fmt: skip
    polkit.allow = False
    with pytest.raises(dbus_client.NotAuthorized, match=re.escape("org.crashd.change-preferences")):
        dbus_client.set_preference("ReportCrashes", False)


def test_cli_prefs_set_refused_by_polkit_exits_not_allowed(
    service: Served, polkit: Polkit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A polkit refusal is not a usage error (2): `crashd prefs set` says so in one line and exits 5."""
    from crashd import cli

    polkit.allow = False
    code = cli.main(["prefs", "set", "ReportCrashes", "off", "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_NOT_ALLOWED == 5
    assert err.count("\n") == 1 and err.startswith("crashd: cannot change ReportCrashes: not authorized"), err
    assert dbus_client.get_preferences().report_crashes is True  # nothing changed


def test_client_without_service(system_bus: PrivateBus) -> None:
    with pytest.raises(dbus_client.BusUnavailable, match="not available"):
        dbus_client.get_preferences()


# -- Reports1.List per caller (issue 11 robustness 5) ----------------------------------------------------


def test_list_shows_each_caller_its_own_reports_and_survives_a_name_that_is_not_utf8(
    user_tmp_path: Path, make_user: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old: any user saw every report and its OOPS id, and one file name that is not UTF-8 made
    ``List`` fail for every caller (UnicodeEncodeError in dbus-fast)."""
    alice, bob = make_user(), make_user()
    crash_dir = user_tmp_path / "crash"
    crash_dir.mkdir()
    crash_dir.chmod(0o3777)
    for user, program in ((alice, "aliceprog"), (bob, "bobprog")):
        report = write(crash_dir / f"_usr_bin_{program}.{user.pw_uid}.crash", crash(program),
                       owner=(user.pw_uid, user.pw_gid))  # fmt: skip
        report.chmod(0o640)
        stamp = report.with_suffix(".uploaded")
        stamp.write_text(f"{program}-oops-id")
        os.chown(stamp, user.pw_uid, user.pw_gid)
    with open(os.path.join(os.fsencode(crash_dir), b"_usr_bin_caf\xe9.0.crash"), "wb") as out:
        out.write(b"ProblemType: Crash\n")
    files = sorted((REPO / "data" / "dbus").glob("*.conf"))
    with PrivateBus(user_tmp_path / "bus", strict=True, includes=files) as bus:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
        polkit = Polkit(allow=False)
        polkit.start(bus.address)
        state = user_tmp_path / "state"
        state.mkdir()
        env = os.environ | {"PYTHONPATH": str(REPO), "CRASH_DB_IDENTIFIER": IDENTIFIER}
        log = user_tmp_path / "service.log"
        with log.open("w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.dbus_service_main", "--state-dir", str(state), "--crash-dir",
                 str(crash_dir)], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
            )  # fmt: skip
        try:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"

            def listed(user: Any = None) -> str:
                ids = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
                done = subprocess.run(["gdbus", "call", "--system", "-d", C_NAME, "-o", C_PATH, "-m",
                                       f"{C_REPORTS}.List"], capture_output=True, text=True, timeout=DEADLINE,
                                      env={"DBUS_SYSTEM_BUS_ADDRESS": bus.address, "PATH": "/usr/bin:/bin"},
                                      check=False, **ids)  # fmt: skip
                return ok(done)

            as_alice = listed(alice)
            assert "aliceprog-oops-id" in as_alice and f"_usr_bin_aliceprog.{alice.pw_uid}.crash" in as_alice
            assert "bobprog" not in as_alice and "caf" not in as_alice
            as_bob = listed(bob)
            assert "bobprog-oops-id" in as_bob and "aliceprog" not in as_bob
            as_root = listed()
            assert "aliceprog-oops-id" in as_root and "bobprog-oops-id" in as_root
            assert "_usr_bin_caf\\\\xe9.0.crash" in as_root  # the byte escaped: \xe9 (gdbus doubles the \\)
            listed()  # logged once, not per call
            assert log.read_text().count("is not UTF-8") == 1, log.read_text()
        finally:
            process.terminate()
            process.wait(DEADLINE)
            assert process.stdout is not None
            process.stdout.close()
            polkit.stop()


# -- the bus policy files, applied by dbus-daemon as on a real system bus -----------------------------


def test_bus_policy_lets_anyone_call_and_only_root_own(
    user_tmp_path: Path, make_user: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    files = sorted((REPO / "data" / "dbus").glob("*.conf"))
    assert [f.name for f in files] == ["com.ubuntu.WhoopsiePreferences.conf", "org.crashd.Crashd1.conf"]
    user = make_user()
    with PrivateBus(user_tmp_path / "bus", strict=True, includes=files) as bus:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
        polkit = Polkit(allow=False)
        polkit.start(bus.address)
        state = user_tmp_path / "state"
        state.mkdir()
        env = os.environ | {"PYTHONPATH": str(REPO), "CRASH_DB_IDENTIFIER": IDENTIFIER}
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.dbus_service_main", "--state-dir", str(state), "--crash-dir",
             str(user_tmp_path)], stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"

            def as_user(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(["gdbus", "call", "--system", *args], capture_output=True, text=True,
                                      user=user.pw_uid, group=user.pw_gid, extra_groups=[], timeout=DEADLINE,
                                      env={"DBUS_SYSTEM_BUS_ADDRESS": bus.address, "PATH": "/usr/bin:/bin"},
                                      check=False)  # fmt: skip

            assert IDENTIFIER in ok(as_user("-d", W_NAME, "-o", W_PATH, "-m", f"{W_IFACE}.GetIdentifier"))
            assert "true" in ok(
                as_user("-d", C_NAME, "-o", C_PATH, "-m", f"{PROPS}.Get", C_PREFS, "ReportCrashes")
            )
            assert "@a(ssxs) []" in ok(as_user("-d", C_NAME, "-o", C_PATH, "-m", f"{C_REPORTS}.List"))
            # the bus lets the setter through; crashd asks polkit, which says no for this user
            why = refused(as_user("-d", W_NAME, "-o", W_PATH, "-m", f"{W_IFACE}.SetReportCrashes", "false"))
            assert why == "not authorized (polkit action com.ubuntu.whoopsiepreferences.change)"
            assert polkit.checks[0].subject["name"].startswith(":1.")
            for name in (C_NAME, W_NAME):  # only root may own the names
                result = as_user("-d", "org.freedesktop.DBus", "-o", "/org/freedesktop/DBus", "-m",
                                 "org.freedesktop.DBus.RequestName", name, "4")  # fmt: skip
                assert "is not allowed to own the service" in refused(result), result.stderr
            # and a method of an interface the policy does not open is stopped by the bus itself
            result = as_user("-d", C_NAME, "-o", C_PATH, "-m", "org.example.Nope.Hello")
            assert "AccessDenied" in result.stderr
        finally:
            process.terminate()
            process.wait(DEADLINE)
            assert process.stdout is not None
            process.stdout.close()
            polkit.stop()


def test_activation_files_make_both_names_activatable(tmp_path: Path) -> None:
    """gnome-initial-setup looks for com.ubuntu.WhoopsiePreferences in ListActivatableNames."""
    services = tmp_path / "system-services"
    services.mkdir()
    for template in sorted((REPO / "data" / "dbus").glob("*.service.in")):
        text = template.read_text().replace("@BINDIR@", "/usr/bin")  # what meson's configure_file does
        (services / template.name.removesuffix(".in")).write_text(text)
        name = template.name.removesuffix(".service.in")
        entries = dict(
            line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
        )
        assert entries == {"Name": name, "Exec": "/usr/bin/crashd daemon", "User": "root",
                           "SystemdService": "crashd.service"}  # fmt: skip
    with PrivateBus(tmp_path / "bus", strict=True, servicedirs=[services]) as bus:
        command = ["gdbus", "call", "-a", bus.address, "-d", "org.freedesktop.DBus", "-o", "/org/freedesktop/DBus",
                   "-m", "org.freedesktop.DBus.ListActivatableNames"]  # fmt: skip
        names = ok(subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE, check=False))
    assert f"'{C_NAME}'" in names and f"'{W_NAME}'" in names, names


def test_polkit_policy_declares_both_actions() -> None:
    path = REPO / "data" / "polkit" / "org.crashd.policy"
    text = path.read_text()
    assert "<!DOCTYPE policyconfig PUBLIC" in text
    assert '"-//freedesktop//DTD PolicyKit Policy Configuration 1.0//EN"' in text
    root = ET.fromstring(text)
    assert root.tag == "policyconfig"
    actions = {action.get("id"): action for action in root.iter("action")}
    assert set(actions) == {dbus_prefs.CHANGE_ACTION, dbus_prefs.WHOOPSIE_ACTION}
    for action in actions.values():
        assert action.findtext("description") and action.findtext("message")
        defaults = action.find("defaults")
        assert defaults is not None
        assert {child.tag: child.text for child in defaults} == {
            "allow_any": "auth_admin_keep", "allow_inactive": "auth_admin_keep", "allow_active": "auth_admin_keep",
        }  # fmt: skip
