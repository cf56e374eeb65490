"""Consent in process: the send rules as a table, the stored file, the legacy switches and the admin lock.

Every path is under tmp_path: nothing here reads the real /etc or /var/lib.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from crashd.config import ConfigError
from crashd.consent import (
    MAX_FILE,
    Consent,
    ConsentLocked,
    ConsentReader,
    load_consent,
    may_collect_automatically,
    may_send,
    parse_bool,
    set_preference,
    store_consent,
)
from tests.daemon_run import wait_until

OFF = Consent(report_crashes=False, automatic=False, report_metrics=True, locked=False, reason=None)
MANUAL = Consent(report_crashes=True, automatic=False, report_metrics=True, locked=False, reason=None)
AUTO = Consent(report_crashes=True, automatic=True, report_metrics=True, locked=False, reason=None)
# Not what load_consent returns (it clears automatic when off), but may_send must not depend on that.
OFF_BUT_AUTO = Consent(report_crashes=False, automatic=True, report_metrics=True, locked=False, reason=None)


@pytest.fixture
def where(tmp_path: Path) -> dict[str, Path]:
    """The outside files, all absent until a test writes one."""
    return {
        "config": tmp_path / "etc" / "crashd.conf",
        "whoopsie_default": tmp_path / "etc" / "default-whoopsie",
        "apport_default": tmp_path / "etc" / "default-apport",
    }


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# -- the rules ----------------------------------------------------------------------------

SEND = [
    (OFF, False, False),
    (OFF, True, False),  # off: not even a report a UI stamped .upload
    (OFF_BUT_AUTO, False, False),
    (OFF_BUT_AUTO, True, False),
    (MANUAL, False, False),
    (MANUAL, True, True),
    (AUTO, False, True),
    (AUTO, True, True),
]


@pytest.mark.parametrize(("consent", "marked", "expected"), SEND)
def test_may_send(consent: Consent, marked: bool, expected: bool) -> None:
    assert may_send(consent, marked_for_upload=marked) is expected


@pytest.mark.parametrize(
    ("consent", "expected"), [(OFF, False), (OFF_BUT_AUTO, False), (MANUAL, False), (AUTO, True)]
)
def test_may_collect_automatically(consent: Consent, expected: bool) -> None:
    assert may_collect_automatically(consent) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("Yes", True), ("ON", True), ("1", True), (" false ", False), ("no", False),
     ("Off", False), ("0", False)],
)  # fmt: skip
def test_parse_bool(text: str, expected: bool) -> None:
    assert parse_bool(text) is expected


@pytest.mark.parametrize("text", ["", "2", "enabled", "tru"])
def test_parse_bool_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bool(text)


# -- stored preferences -----------------------------------------------------------------------


def test_defaults_with_nothing_on_disk(state: Path, where: dict[str, Path]) -> None:
    consent = load_consent(state, **where)
    assert consent == MANUAL
    assert consent.as_properties() == {
        "ReportCrashes": True, "AutomaticallyReportCrashes": False, "ReportMetrics": True,
    }  # fmt: skip
    assert not state.exists()  # reading creates nothing


def test_config_none_means_no_file(state: Path) -> None:
    assert (
        load_consent(state, config=None, whoopsie_default=state / "a", apport_default=state / "b") == MANUAL
    )


def test_store_and_load_round_trip(state: Path, where: dict[str, Path]) -> None:
    effective = store_consent(state, automatic=True, report_metrics=False, **where)
    assert effective == Consent(True, True, False, False, None)
    assert load_consent(state, **where) == effective
    assert json.loads((state / "consent.json").read_text()) == {
        "report_crashes": True, "automatic": True, "report_metrics": False,
    }  # fmt: skip
    # One at a time, by D-Bus name: the others stay as stored.
    assert set_preference(state, "ReportCrashes", False, **where) == Consent(False, False, False, False, None)
    assert set_preference(state, "ReportCrashes", True, **where) == Consent(True, True, False, False, None)


def test_off_hides_automatic_but_keeps_it_stored(state: Path, where: dict[str, Path]) -> None:
    """apport's "never" is SetReportCrashes(false) then SetAutomaticallyReportCrashes(true): GNOME reads
    AutomaticallyReportCrashes first, so the effective value must be false or it would show "Automatic"."""
    set_preference(state, "ReportCrashes", False, **where)
    consent = set_preference(state, "AutomaticallyReportCrashes", True, **where)
    assert (consent.report_crashes, consent.automatic) == (False, False)
    assert json.loads((state / "consent.json").read_text())["automatic"] is True


def test_write_is_atomic_and_private(state: Path, where: dict[str, Path]) -> None:
    old_umask = os.umask(0)
    try:
        store_consent(state, report_crashes=False, **where)
        store_consent(state, report_crashes=True, **where)
    finally:
        os.umask(old_umask)
    assert mode(state) == 0o711
    assert mode(state / "consent.json") == 0o644
    assert sorted(path.name for path in state.iterdir()) == ["consent.json"]  # no temporary file left


def test_existing_state_dir_is_left_as_it_is(state: Path, where: dict[str, Path]) -> None:
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    store_consent(state, report_crashes=False, **where)
    assert mode(state) == 0o755


def test_a_planted_symlink_is_replaced_not_followed(
    state: Path, where: dict[str, Path], tmp_path: Path
) -> None:
    target = write(tmp_path / "elsewhere" / "passwd", "root:x:0:0\n")
    target.chmod(0o644)
    state.mkdir(mode=0o700)
    (state / "consent.json").symlink_to(target)
    consent = set_preference(state, "ReportCrashes", False, **where)
    assert not consent.report_crashes
    assert target.read_text() == "root:x:0:0\n"
    assert mode(target) == 0o644
    assert not (state / "consent.json").is_symlink()
    assert mode(state / "consent.json") == 0o644


def test_a_symlink_is_not_read_either(state: Path, where: dict[str, Path], tmp_path: Path, caplog) -> None:
    target = write(tmp_path / "fake.json", json.dumps({"report_crashes": False}))
    state.mkdir()
    (state / "consent.json").symlink_to(target)
    with caplog.at_level(logging.WARNING, logger="crashd.consent"):
        assert load_consent(state, **where) == MANUAL
    assert "consent.json" in caplog.text


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"[true, false]",
        b'{"report_crashes": "no"}',
        b'{"report_crashes": 0}',
        b"\xff\xfe{}",
        b"[" * 60000,
        b'{"report_crashes": false, "pad": "' + b"x" * MAX_FILE + b'"}',
    ],
    ids=["empty", "garbage", "not-an-object", "string", "integer", "not-utf8", "deeply-nested", "too-large"],
)
def test_corrupt_file_reads_as_defaults_with_a_warning(
    state: Path, where: dict[str, Path], content: bytes, caplog
) -> None:
    state.mkdir()
    (state / "consent.json").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="crashd.consent"):
        assert load_consent(state, **where) == MANUAL
    assert [record.levelno for record in caplog.records] == [logging.WARNING]
    assert str(state / "consent.json") in caplog.text


def test_missing_keys_take_their_defaults_and_unknown_keys_are_ignored(
    state: Path, where: dict[str, Path]
) -> None:
    write(state / "consent.json", json.dumps({"automatic": True, "from_the_future": 1}))
    assert load_consent(state, **where) == AUTO


def test_a_directory_reads_as_defaults_and_cannot_be_written_over(
    state: Path, where: dict[str, Path], caplog
) -> None:
    (state / "consent.json").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="crashd.consent"):
        assert load_consent(state, **where) == MANUAL
    assert "not a regular file" in caplog.text
    with pytest.raises(IsADirectoryError):
        set_preference(state, "ReportCrashes", False, **where)
    assert sorted(path.name for path in state.iterdir()) == ["consent.json"]  # the temporary was removed


def test_a_fifo_does_not_hang_the_reader(state: Path, where: dict[str, Path], caplog) -> None:
    state.mkdir()
    os.mkfifo(state / "consent.json")
    with caplog.at_level(logging.WARNING, logger="crashd.consent"):
        assert load_consent(state, **where) == MANUAL
    assert "not a regular file" in caplog.text


def test_users_read_consent_but_an_unreadable_file_means_off(
    user_tmp_path: Path, state: Path, where: dict[str, Path], make_user, run_as
) -> None:
    """A user flushing their own reports reads the choice; one who cannot read it may send nothing."""
    store_consent(state, automatic=True, **where)
    user = make_user()
    code = (
        "from pathlib import Path; from crashd.consent import load_consent\n"
        f"c = load_consent(Path({str(state)!r}), config=None, whoopsie_default=Path('/nonexistent/w'),"
        " apport_default=Path('/nonexistent/a'))\n"
        "print(c.report_crashes, c.automatic, c.reason)"
    )
    result = run_as(user, code)
    assert (result.returncode, result.stdout) == (0, "True True None\n"), result.stderr
    (state / "consent.json").chmod(0o600)  # as an administrator might have made it
    result = run_as(user, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("False False cannot read")
    assert "consent.json" in result.stdout


# -- legacy switches ----------------------------------------------------------------------------

WHOOPSIE_OFF = [
    ("report_crashes=false\n", "report_crashes=false"),
    ("[General]\nreport_crashes=false\n", "report_crashes=false"),  # as whoopsie-preferences wrote it
    ('report_crashes="false"\n', "report_crashes=false"),
    ("report_crashes='FALSE'  # the admin said so\n", "report_crashes=FALSE"),
    ("REPORT_CRASHES=False\n", "report_crashes=False"),
    ("export report_crashes=no\n", "report_crashes=no"),
    ("report_crashes = false\n", "report_crashes=false"),  # GKeyFile allows spaces
    ("report_crashes=true\nreport_crashes=false\n", "report_crashes=false"),  # the last one wins
    ("report_crashes=maybe\n", "report_crashes=maybe"),  # whoopsie itself started only on "true"
    ("report_crashes='false\n", "report_crashes=false"),  # an unbalanced quote
]
WHOOPSIE_ON = [
    "report_crashes=true\n",
    "[General]\nreport_crashes=TRUE\n",
    "# report_crashes=false\nreport_crashes=true\n",
    "report_crashes=false\nreport_crashes=true\n",
    "report_metrics=false\nother=0\n",  # unrelated keys
    "my_report_crashes=false\nreport_crashes_old=false\n",
    "",
]
APPORT_OFF = [
    ("enabled=0\n", "enabled=0"),
    ('# set this to 0 to disable apport\nenabled="0"\n', "enabled=0"),
    ("  enabled = 0  \n", "enabled=0"),
    ("enabled=1\nenabled=0\n", "enabled=0"),
    ("ENABLED='0'\n", "enabled=0"),
]
APPORT_ON = [
    "enabled=1\n",
    "#enabled=0\nenabled=1\n",
    "enabled=0\nenabled=1\n",
    "other=0\n",
    "enabled=\n",
    "",
]


@pytest.mark.parametrize(("text", "shown"), WHOOPSIE_OFF)
def test_whoopsie_switch_forces_off(state: Path, where: dict[str, Path], text: str, shown: str) -> None:
    store_consent(state, automatic=True, **where)
    path = write(where["whoopsie_default"], text)
    consent = load_consent(state, **where)
    assert (consent.report_crashes, consent.automatic, consent.locked) == (False, False, False)
    assert consent.reason == f"switched off in {path} ({shown})"


@pytest.mark.parametrize("text", WHOOPSIE_ON)
def test_whoopsie_switch_left_on(state: Path, where: dict[str, Path], text: str) -> None:
    write(where["whoopsie_default"], text)
    assert load_consent(state, **where) == MANUAL


@pytest.mark.parametrize(("text", "shown"), APPORT_OFF)
def test_apport_switch_forces_off(state: Path, where: dict[str, Path], text: str, shown: str) -> None:
    path = write(where["apport_default"], text)
    consent = load_consent(state, **where)
    assert not consent.report_crashes
    assert consent.reason == f"switched off in {path} ({shown})"


@pytest.mark.parametrize("text", APPORT_ON)
def test_apport_switch_left_on(state: Path, where: dict[str, Path], text: str) -> None:
    write(where["apport_default"], text)
    assert load_consent(state, **where) == MANUAL


def test_unreadable_legacy_switch_means_off(state: Path, where: dict[str, Path]) -> None:
    where["whoopsie_default"].mkdir(parents=True)  # not a file: what the admin chose is unknown
    consent = load_consent(state, **where)
    assert not consent.report_crashes
    assert consent.reason is not None and consent.reason.startswith(
        f"cannot read {where['whoopsie_default']}"
    )


def test_preference_can_change_under_a_legacy_switch(state: Path, where: dict[str, Path]) -> None:
    """The stored choice still changes (it is what applies once the admin removes the switch)."""
    write(where["apport_default"], "enabled=0\n")
    set_preference(state, "ReportCrashes", False, **where)
    consent = set_preference(state, "ReportCrashes", True, **where)
    assert not consent.report_crashes and "enabled=0" in (consent.reason or "")
    assert json.loads((state / "consent.json").read_text())["report_crashes"] is True
    where["apport_default"].unlink()
    assert load_consent(state, **where) == MANUAL


# -- admin lock ----------------------------------------------------------------------------------


def test_lock_overrides_stored_values(state: Path, where: dict[str, Path]) -> None:
    store_consent(state, report_crashes=True, automatic=False, **where)
    config = write(where["config"], "[crashd]\n[consent]\nlocked = yes\nautomatically_report_crashes = on\n")
    consent = load_consent(state, **where)
    assert (consent.report_crashes, consent.automatic, consent.locked) == (True, True, True)
    assert consent.reason == f"locked by the administrator in {config} ([consent] locked = true)"


def test_lock_switched_off(state: Path, where: dict[str, Path]) -> None:
    store_consent(state, automatic=True, **where)
    config = write(where["config"], "[consent]\nlocked = true\nreport_crashes = false\n")
    consent = load_consent(state, **where)
    assert (consent.report_crashes, consent.automatic, consent.locked) == (False, False, True)
    assert consent.reason == f"switched off by the administrator in {config} ([consent] locked = true)"


def test_values_without_the_lock_are_ignored(state: Path, where: dict[str, Path]) -> None:
    write(where["config"], "[consent]\nlocked = false\nreport_crashes = false\n")
    assert load_consent(state, **where) == MANUAL


def test_legacy_switch_wins_over_a_lock_that_says_on(state: Path, where: dict[str, Path]) -> None:
    write(where["config"], "[consent]\nlocked = true\nreport_crashes = true\n")
    path = write(where["whoopsie_default"], "report_crashes=false\n")
    consent = load_consent(state, **where)
    assert (consent.report_crashes, consent.locked) == (False, True)
    assert consent.reason == f"switched off in {path} (report_crashes=false)"


def test_locked_setters_refuse_changes(state: Path, where: dict[str, Path]) -> None:
    config = write(where["config"], "[consent]\nlocked = true\nreport_crashes = false\n")
    for name, value in (("ReportCrashes", True), ("AutomaticallyReportCrashes", True)):
        with pytest.raises(ConsentLocked, match=str(config)) as raised:
            set_preference(state, name, value, **where)
        assert isinstance(raised.value, PermissionError)
    assert not state.exists()  # nothing was written


def test_locked_setters_accept_the_value_already_held(state: Path, where: dict[str, Path]) -> None:
    """KDE and GNOME re-apply every switch on save: the values the lock holds are not an error."""
    write(where["config"], "[consent]\nlocked = true\nreport_crashes = false\n")
    set_preference(state, "ReportCrashes", False, **where)
    set_preference(state, "AutomaticallyReportCrashes", False, **where)
    assert not state.exists()
    # ReportMetrics is not part of the lock.
    consent = set_preference(state, "ReportMetrics", False, **where)
    assert (consent.report_crashes, consent.report_metrics, consent.locked) == (False, False, True)


def test_lock_without_values_freezes_the_stored_ones(state: Path, where: dict[str, Path]) -> None:
    store_consent(state, automatic=True, **where)
    write(where["config"], "[consent]\nlocked = 1\n")
    assert set_preference(state, "AutomaticallyReportCrashes", True, **where).automatic
    with pytest.raises(ConsentLocked):
        set_preference(state, "AutomaticallyReportCrashes", False, **where)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("locked = maybe\n", "[consent] locked: bad value 'maybe'"),
        ("locked = true\nreport_crashes = 2\n", "[consent] report_crashes: bad value '2'"),
        ("automatically_report_crashes =\n", "[consent] automatically_report_crashes: bad value ''"),
        ("lock = true\n", "unknown key 'lock' in [consent]"),
        ("locked = true\nlocked = false\n", "not a valid INI file"),
    ],
)
def test_bad_consent_section_is_a_config_error(
    state: Path, where: dict[str, Path], section: str, message: str
) -> None:
    config = write(where["config"], "[consent]\n" + section)
    with pytest.raises(ConfigError) as raised:
        load_consent(state, **where)
    assert str(raised.value).startswith(str(config))
    assert message in str(raised.value)
    with pytest.raises(ConfigError):
        set_preference(state, "ReportCrashes", False, **where)
    assert not state.exists()


def test_unknown_preference_name(state: Path, where: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="ReportCrashes, AutomaticallyReportCrashes, ReportMetrics"):
        set_preference(state, "reportcrashes", True, **where)
    assert not state.exists()


# -- the daemon's cached reader -----------------------------------------------------------------


def counting_reader(state: Path, where: dict[str, Path], racy_ns: int = 0) -> tuple[ConsentReader, list[int]]:
    """A reader whose loads are counted; *racy_ns* 0 trusts even a file changed this very moment."""
    reader = ConsentReader(state, **where)
    reader.RACY_NS = racy_ns
    loads: list[int] = []
    load = reader._load

    def counted() -> Consent:
        loads.append(1)
        return load()

    reader._load = counted
    return reader, loads


def changed_ctime(path: Path, before: int) -> bool:
    """Touch *path* back to its own times until its ctime moves (a clock tick): readiness, not a sleep."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return path.stat().st_ctime_ns != before


def test_reader_reads_again_only_when_a_file_changed(state: Path, where: dict[str, Path]) -> None:
    reader, loads = counting_reader(state, where)
    assert reader() == MANUAL and reader() == MANUAL
    assert len(loads) == 1  # nothing changed: not read again
    store_consent(state, automatic=True, **where)  # a new file (replaced by rename)
    assert reader() == AUTO
    write(where["whoopsie_default"], "report_crashes=false\n")  # a file that was missing
    assert reader().report_crashes is False
    where["whoopsie_default"].unlink()  # and gone again
    assert reader() == AUTO
    assert len(loads) == 4


def test_reader_sees_a_same_size_same_mtime_rewrite_in_place(state: Path, where: dict[str, Path]) -> None:
    store_consent(state, automatic=True, **where)
    path = state / "consent.json"
    reader, loads = counting_reader(state, where)
    assert reader() == AUTO
    before = path.stat()
    text = path.read_bytes()
    off = text.replace(b'"automatic": true, ', b'"automatic": false,')
    assert len(off) == len(text)
    with path.open("r+b") as f:  # in place: same inode, same size
        f.write(off)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the mtime put back
    assert wait_until(lambda: changed_ctime(path, before.st_ctime_ns), 5)
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert reader() == MANUAL
    assert len(loads) == 2


def test_reader_sees_a_replaced_lock(state: Path, where: dict[str, Path]) -> None:
    reader, _ = counting_reader(state, where)
    assert reader() == MANUAL
    replacement = write(where["config"].with_name("new.conf"), "[consent]\nlocked = true\nreport_crashes = false\n")
    replacement.rename(where["config"])
    assert reader().report_crashes is False


def test_reader_does_not_trust_a_file_changed_as_it_was_read(state: Path, where: dict[str, Path]) -> None:
    store_consent(state, automatic=True, **where)
    reader, loads = counting_reader(state, where, racy_ns=10**18)  # every file counts as just changed
    assert reader() == AUTO and reader() == AUTO
    assert len(loads) == 2  # a change within the same clock tick would look unchanged: read again


def test_reader_raises_a_bad_lock_every_time(state: Path, where: dict[str, Path]) -> None:
    write(where["config"], "[consent]\nlocked = maybe\n")
    reader, loads = counting_reader(state, where)
    for _ in range(2):
        with pytest.raises(ConfigError):
            reader()
    assert len(loads) == 2
