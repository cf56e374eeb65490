"""``crashd show --what-is-sent`` and ``Reports1.WhatIsSent``: the preview is what the server receives.

The preview and the upload share one function (``crashd.uploader.sent_fields``); these tests hold
them to it from the outside: the real ``crashd`` command prints the preview, the real ``crashd
upload-all`` sends the report to the loopback daisy server, and what the server recorded — every
field, in BSON order, byte for byte, and the core it asked for — must be what the preview said.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
import pytest
from dbus_fast import DBusError

from crashd import dbus_prefs
from crashd.dbus import reports
from crashd.preview import may_read
from crashd.report import read_report, write_report
from crashd.spool import Spool
from crashd.uploader import encode_report
from tests.daisy import DaisyServer
from tests.dbus_bus import PrivateBus
from tests.test_upload_all import TOKEN, crash, upload_all, write

REPO = Path(__file__).resolve().parent.parent
DEADLINE = 15.0
C_NAME, C_PATH, C_REPORTS = "org.crashd.Crashd1", "/org/crashd/Crashd1", "org.crashd.Reports1"

# Text as it really comes: tabs, multi-line values, non-ASCII, an empty value, a key with a dot.
ENRICHED = crash(
    "gedit",
    ProcMaps="5581a000-5581b000 r--p 00000000 fd:01 1 /usr/bin/gedit\n7ffd0000-7ffd1000 rw-p [stack]",
    Title="gedit crashed with SIGSEGV in g_closure_invoke — « Ünïcödé »",
    Dependencies="libc6 2.36",
    Empty="",
    **{"dmi.bios.version": "1.2"},
    _HooksRun="yes",
)


def show(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "crashd", "show", "--what-is-sent", *args, str(path)],
                          capture_output=True, text=True, env=env, timeout=60, check=False)  # fmt: skip


def preview(path: Path) -> dict[str, Any]:
    result = show(path, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def pairs(shown: dict[str, Any]) -> list[tuple[str, str]]:
    return [(field["name"], field["value"]) for field in shown["fields"]]


@pytest.fixture
def daisy_wants_cores() -> Iterator[DaisyServer]:
    """The loopback daisy, asking for the core of every report (so the core line is checked too)."""
    with DaisyServer(core_policy="always") as server:
        yield server
        assert server.errors == []


def test_preview_is_exactly_what_the_server_receives(crash_dir: Path, daisy_wants_cores: DaisyServer) -> None:
    core = b"\x7fELF" + os.urandom(30_000) + b"\0" * 100_000
    report = write(crash_dir / "_usr_bin_gedit.0.crash",
                   {**ENRICHED, "CoreDump": core, "Attachment.gz": b"\0\1\2"})  # fmt: skip
    shown = preview(report)
    assert shown["hooks_run"] is True and shown["not_sent"] is None
    # binary fields are not in the first upload; the preview says so by leaving them out
    assert [name for name, _ in pairs(shown)] == list(ENRICHED)

    code, summary = upload_all(crash_dir, daisy_wants_cores.url)
    assert code == 0, summary
    (received,) = daisy_wants_cores.reports
    assert received.document is not None
    assert list(received.document.items()) == pairs(shown)  # names, values and BSON order
    assert received.body == bson.encode(dict(pairs(shown)))  # byte for byte
    (sent_core,) = daisy_wants_cores.cores
    assert shown["core"] == {"available": True, "architecture": sent_core.arch, "size": sent_core.body_size}
    assert sent_core.verdict == "ok"
    assert preview(report) == shown  # sending changed nothing the preview reads


def test_hooks_not_run_yet_is_said_and_after_them_the_preview_matches_again(
    crash_dir: Path, daisy_wants_cores: DaisyServer, make_user: Any
) -> None:
    user = make_user()
    fields = crash("gedit")  # as apport's crash handler writes it: no Dependencies, no _HooksRun
    report = write(crash_dir / f"_usr_bin_gedit.{user.pw_uid}.crash", fields, owner=(user.pw_uid, user.pw_gid))
    before = preview(report)
    assert before["hooks_run"] is False
    assert pairs(before) == list(fields.items())
    text = show(report).stdout
    assert "package hooks have not run yet" in text

    code, summary = upload_all(crash_dir, daisy_wants_cores.url)
    assert code == 0, summary
    (received,) = daisy_wants_cores.reports
    assert received.document is not None and received.document["_HooksRun"] == "yes"
    after = preview(report)  # the report as the hooks left it
    assert after["hooks_run"] is True
    assert list(received.document.items()) == pairs(after)
    assert len(after["fields"]) > len(before["fields"])  # exactly what "may add fields" warned of


def test_text_output_lists_the_fields_in_order_and_the_core(tmp_path: Path) -> None:
    report = write(tmp_path / "r.crash", {**ENRICHED, "CoreDump": b"\x7fELF\x02\x01\x00 core"})
    result = show(report)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"# {report}: the first upload carries these {len(ENRICHED)} fields, in this order"
    assert "package hooks have already run" in lines[1]
    assert lines[2].startswith("# core: not in this upload; if the server asks for it, ")
    assert "architecture amd64" in lines[2]
    keys = [line.partition(":")[0] for line in lines[3:] if not line.startswith(" ")]
    assert keys == list(ENRICHED)
    assert " 7ffd0000-7ffd1000 rw-p [stack]" in lines  # continuation lines as apport writes them


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (crash("x"), "# core: none can be sent (the report has no core (no CoreDump))"),
        ({**crash("x"), "Architecture": "../../x", "CoreDump": b"\0c"}, "cannot name a core upload"),
        ({**crash("x"), "ProblemType": "Bug"}, "# but it is never sent: ProblemType Bug is not sent"),
    ],
)
def test_what_cannot_be_sent_is_said(tmp_path: Path, fields: dict[str, Any], expected: str) -> None:
    result = show(write(tmp_path / "r.crash", fields))
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_a_report_that_would_be_refused_is_refused_by_the_preview_too(tmp_path: Path) -> None:
    path = tmp_path / "r.crash"
    with path.open("wb") as f:
        write_report(f, {**crash("x"), "Extra": b"caf\xe9 latin-1"})
    result = show(path)
    assert (result.returncode, result.stdout) == (4, "")
    assert "Extra is not valid UTF-8" in result.stderr
    with path.open("rb") as f, pytest.raises(ValueError, match="Extra is not valid UTF-8"):
        encode_report(read_report(f))  # and the upload refuses it for the same reason


# -- over D-Bus: Reports1.WhatIsSent, for the report's owner and root ---------------------------------


@pytest.fixture
def served(user_tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[PrivateBus, Path]]:
    """The D-Bus service on a private bus with the real bus policy files, and its crash directory."""
    if shutil.which("gdbus") is None:
        pytest.skip("gdbus not installed (libglib2.0-bin)")
    crash_dir, state = user_tmp_path / "crash", user_tmp_path / "state"
    crash_dir.mkdir()
    crash_dir.chmod(0o3777)
    state.mkdir()
    files = sorted((REPO / "data" / "dbus").glob("*.conf"))
    with PrivateBus(user_tmp_path / "bus", strict=True, includes=files) as bus:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
        env = os.environ | {"PYTHONPATH": str(REPO), "CRASH_DB_IDENTIFIER": TOKEN}
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.dbus_service_main", "--state-dir", str(state), "--crash-dir",
             str(crash_dir)], stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
            yield bus, crash_dir
        finally:
            process.terminate()
            process.wait(DEADLINE)
            assert process.stdout is not None
            process.stdout.close()


def what_is_sent(bus: PrivateBus, name: str, user: Any = None) -> subprocess.CompletedProcess[str]:
    """``gdbus call … WhatIsSent name``, as *user* (None: root)."""
    ids = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    return subprocess.run(
        ["gdbus", "call", "--system", "-d", C_NAME, "-o", C_PATH, "-m", f"{C_REPORTS}.WhatIsSent", name],
        capture_output=True, text=True, timeout=DEADLINE, check=False,
        env={"DBUS_SYSTEM_BUS_ADDRESS": bus.address, "PATH": "/usr/bin:/bin"}, **ids,
    )  # fmt: skip


def answer(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    (text,) = ast.literal_eval(result.stdout)  # gdbus prints ('…',); the JSON is ASCII
    return json.loads(text)


def test_whatissent_answers_the_owner_and_root_with_the_cli_preview(
    served: tuple[PrivateBus, Path], make_user: Any
) -> None:
    bus, crash_dir = served
    owner, other = make_user(), make_user()
    name = f"_usr_bin_gedit.{owner.pw_uid}.crash"
    path = write(crash_dir / name, {**ENRICHED, "CoreDump": b"\x7fELF\x02\x01\x00 core"}, owner=(owner.pw_uid, owner.pw_gid))
    expected = preview(path)

    assert answer(what_is_sent(bus, name, owner)) == expected
    assert answer(what_is_sent(bus, name)) == expected  # root may read every report

    refused = what_is_sent(bus, name, other)
    assert refused.returncode != 0
    assert "org.freedesktop.DBus.Error.AccessDenied" in refused.stderr
    assert f"belongs to uid {owner.pw_uid}" in refused.stderr
    assert ENRICHED["Title"] not in refused.stderr  # nothing of the report leaks

    introspected = subprocess.run(["gdbus", "introspect", "--system", "-d", C_NAME, "-o", C_PATH],
                                  capture_output=True, text=True, timeout=DEADLINE, check=True)  # fmt: skip
    assert "WhatIsSent(in  s name,\n" in introspected.stdout and "out s json);" in introspected.stdout

    missing = what_is_sent(bus, f"_usr_bin_nothing.{owner.pw_uid}.crash", owner)
    assert "org.freedesktop.DBus.Error.FileNotFound" in missing.stderr
    for bad in ("../../etc/shadow", "x.txt", ".hidden.crash"):
        assert "org.freedesktop.DBus.Error.InvalidArgs" in what_is_sent(bus, bad, owner).stderr


def test_whatissent_refuses_unsafe_files_before_reading_them(
    served: tuple[PrivateBus, Path], make_user: Any
) -> None:
    bus, crash_dir = served
    owner = make_user()
    name = f"_usr_bin_gedit.{owner.pw_uid}.crash"
    (crash_dir / name).symlink_to("/etc/shadow")
    result = what_is_sent(bus, name, owner)
    assert "org.freedesktop.DBus.Error.Failed" in result.stderr
    assert "symbolic link" in result.stderr
    assert "root:" not in result.stderr


@pytest.mark.parametrize(
    ("caller", "owner", "allowed"),
    [(1000, 1000, True), (0, 1000, True), (0, 0, True), (1001, 1000, False), (1000, 0, False)],
)
def test_who_may_read_a_report(caller: int, owner: int, allowed: bool) -> None:
    assert may_read(caller, owner) is allowed


def test_the_daemon_serves_whatissent_for_its_crash_directory(tmp_path: Path, daisy: DaisyServer) -> None:
    """``crashd daemon`` itself (not a stand-in) answers WhatIsSent from the crash directory it watches."""
    if shutil.which("gdbus") is None:
        pytest.skip("gdbus not installed (libglib2.0-bin)")
    crash_dir, state = tmp_path / "crash", tmp_path / "state"
    crash_dir.mkdir()
    state.mkdir()
    name = "_usr_bin_gedit.0.crash"
    expected = preview(write(crash_dir / name, ENRICHED))  # held: automatic reporting is off by default
    with PrivateBus(tmp_path / "bus") as bus:
        env = os.environ | {"PYTHONPATH": str(REPO), "CRASH_DB_IDENTIFIER": TOKEN,
                            "DBUS_SYSTEM_BUS_ADDRESS": bus.address}  # fmt: skip
        with (tmp_path / "daemon.log").open("w") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "crashd", "daemon", "--crash-dir", str(crash_dir), "--state-dir",
                 str(state), "--url", daisy.url, "--idle-timeout", "120"], stderr=log, env=env,
            )  # fmt: skip
        try:
            waited = subprocess.run(["gdbus", "wait", "--system", "--timeout", str(int(DEADLINE)), C_NAME],
                                    env=env, capture_output=True, text=True, timeout=DEADLINE + 5, check=False)  # fmt: skip
            assert waited.returncode == 0, (tmp_path / "daemon.log").read_text()
            shown = answer(what_is_sent(bus, name))
            assert shown == expected
        finally:
            daemon.terminate()
            assert daemon.wait(DEADLINE) == 0, (tmp_path / "daemon.log").read_text()
    assert daisy.reports == []  # previewing sends nothing


def test_a_preview_too_big_for_the_bus_is_refused_naming_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dbus-daemon drops messages over 32 MiB; a bigger preview gets LimitsExceeded, never a lost reply."""
    crash_dir = tmp_path / "crash"
    crash_dir.mkdir()
    write(crash_dir / "_usr_bin_gedit.0.crash", {**ENRICHED, "Big": "x" * 4096})
    monkeypatch.setattr(reports, "MAX_PREVIEW", 4096)
    with Spool(crash_dir) as spool:
        service = dbus_prefs.Service(
            None, state_dir=tmp_path, config=None, status_provider=list, on_activity=lambda: None,  # type: ignore[arg-type]
            on_consent_change=lambda consent: None, on_upload_now=lambda: None, polkit_timeout=1.0,
            whoopsie_default=tmp_path / "none", apport_default=tmp_path / "none", spool=spool,
        )  # fmt: skip
        with pytest.raises(DBusError, match=r"more than a D-Bus answer carries \(4096\): use crashd show --what-is-sent") as refused:
            service.what_is_sent("_usr_bin_gedit.0.crash", 0)
        assert refused.value.type == "org.freedesktop.DBus.Error.LimitsExceeded"
        monkeypatch.setattr(reports, "MAX_PREVIEW", 1 << 20)
        assert json.loads(service.what_is_sent("_usr_bin_gedit.0.crash", 0))["fields"][-1]["name"] == "Big"
