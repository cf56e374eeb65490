"""StateStore and Record in process: atomic writes, what a damaged record reads as, the fallbacks."""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import signal
import stat
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crashd.lifecycle import Core, CorePhase, Fingerprint, Record, State
from crashd.state import MAX_RECORD, StateStore

NAME = "_usr_bin_app.0.crash"
PRINT = Fingerprint(device=2049, inode=1234, size=5678, mtime_ns=1_700_000_000_123_456_789)
NOW = 1_700_000_000.5


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def a_record(**changes: object) -> Record:
    fields: dict[str, object] = {
        "name": NAME, "fingerprint": PRINT, "first_seen": NOW - 100, "phase": State.QUEUED, "attempts": 2,
        "next_attempt": NOW + 60, "last_error": "503: busy",
    }  # fmt: skip
    return Record(**(fields | changes))  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "reports")


# -- saving -----------------------------------------------------------------------------


def test_save_is_atomic_leaves_no_temporary_and_is_private(tmp_path):
    store = StateStore(tmp_path / "reports")
    assert mode(tmp_path / "reports") == 0o700
    saved = store.save(a_record(), NOW)
    assert saved.updated == NOW
    record = store.record_path(NAME)
    assert [p.name for p in (tmp_path / "reports").iterdir()] == [record.name]
    assert mode(record) == 0o600
    assert json.loads(record.read_bytes())["attempts"] == 2


def test_saving_again_replaces_the_record_whole(store):
    store.save(a_record(), NOW)
    store.save(a_record(phase=State.SENT, oops_id="abc", next_attempt=None), NOW + 1)
    assert store.peek(NAME) == a_record(phase=State.SENT, oops_id="abc", next_attempt=None)
    assert len(list(store.directory.iterdir())) == 1


def test_open_creates_the_state_directory_private(tmp_path):
    state_dir = tmp_path / "var" / "lib" / "crashd"
    store = StateStore.open(state_dir)
    assert store.directory == state_dir / "reports"
    assert mode(state_dir / "reports") == 0o700


def test_open_creates_the_state_directory_0711_and_its_records_0700(tmp_path):
    """Users may reach the consent file in the state directory, never the delivery records."""
    state_dir = tmp_path / "crashd"
    StateStore.open(state_dir)
    assert mode(state_dir) == 0o711
    assert mode(state_dir / "reports") == 0o700


def test_a_failed_write_leaves_neither_temporary_nor_record(store):
    with pytest.raises(OSError):
        # The temporary is written, the rename fails: the temporary must go.
        store.record_path("blocked").mkdir()
        (store.record_path("blocked") / "inside").touch()
        store.save(a_record(name="blocked"), NOW)
    assert sorted(p.name for p in store.directory.iterdir()) == [store.record_path("blocked").name]


# -- record names: bounded, whatever the report's name (issue 11 robustness 2) ------------------


@pytest.mark.parametrize(
    "name",
    ["x" * 249 + ".crash", "_usr_bin_" + "\udcff" * 10 + ".0.crash", "é" * 120 + ".0.crash"],
    ids=["255-bytes", "not-utf8", "multibyte"],
)
def test_any_name_the_crash_directory_accepts_has_a_record(store, name):
    """Old: the record was NAME.json, 14 bytes more than the name: ENAMETOOLONG from 242 on."""
    record = a_record(name=name)
    store.save(record, NOW)
    assert store.peek(name) == record
    assert len(store.record_path(name).name) <= 64
    assert store.peek("other.crash") is None


def test_a_record_written_under_the_old_name_is_read_and_moved(store):
    legacy = store.directory / f"{NAME}.json"
    legacy.write_text(json.dumps(a_record().as_json()))
    store = StateStore(store.directory)  # opened as after an upgrade: the old record is there
    assert store.peek(NAME) == a_record()
    store.save(a_record(attempts=3), NOW)
    assert not legacy.exists()
    assert sorted(p.name for p in store.directory.iterdir()) == [store.record_path(NAME).name]
    assert store.peek(NAME) == a_record(attempts=3)


def test_a_store_opened_without_old_names_reads_only_the_hashed_one(store):
    """Every store written since the names were hashed: a report with no record costs one failed open."""
    (store.directory / f"{NAME}.json").write_text(json.dumps(a_record().as_json()))  # after the open
    assert store.peek(NAME) is None
    assert StateStore.reader(store.directory.parent).peek(NAME) == a_record()  # a reader looks at both


def test_a_record_at_another_names_hash_is_not_taken_for_this_one(store):
    store.record_path(NAME).write_text(json.dumps(a_record(name="someone-else.crash").as_json()))
    assert store.peek(NAME) is None


# -- collecting the records of reports that are gone (issue 11 robustness 3) ---------------------


def test_collect_removes_only_the_records_of_reports_that_are_gone(store):
    kept = {f"kept{n}.crash" for n in range(3)}
    for name in [*kept, "gone1.crash", "gone2.crash"]:
        store.save(a_record(name=name), NOW)
    (store.directory / "gone3.crash.json").write_text(json.dumps(a_record(name="gone3.crash").as_json()))
    (store.directory / "damaged.json").write_bytes(b"{")
    (store.directory / ".in-flight.tmp").write_bytes(b"")
    assert store.collect(kept.__contains__) == 4
    assert {store.peek(name).name for name in kept} == kept
    assert sorted(p.name for p in store.directory.iterdir()) == sorted(
        [".in-flight.tmp", *(store.record_path(name).name for name in kept)]
    )


def test_a_user_keeps_state_in_memory_and_leaves_roots_records_alone(tmp_path, make_user, run_as):
    """A user flushing their own reports cannot write root's 0700 records: their run keeps its state in
    memory (the booted system test found every report "failed: cannot record delivery state"), and
    ``collect`` leaves root's records to root (it died on them with a PermissionError traceback)."""
    state = Path(tempfile.mkdtemp(prefix="crashd-state-"))  # pytest's base is 0700: out of a user's reach
    try:
        state.chmod(0o711)  # as installed
        store = StateStore.open(state)
        store.save(a_record(name="gone.crash"), NOW)
        store.directory.chmod(0o700)
        code = ("import sys\nfrom pathlib import Path\nfrom crashd.state import StateStore\n"
                "store = StateStore.open(Path(sys.argv[1]))\n"
                "print(store.directory, store.collect(lambda name: False))")  # fmt: skip
        done = run_as(make_user(), code, str(state))
        assert (done.returncode, done.stdout.split()) == (0, ["None", "0"]), done.stderr
        assert store.peek("gone.crash") is not None  # root's record is still there, for root to collect
    finally:
        shutil.rmtree(state)


def test_collect_in_memory(tmp_path):
    store = StateStore(None)
    for name in ("a.crash", "b.crash"):
        store.save(a_record(name=name), NOW)
    assert store.collect({"a.crash"}.__contains__) == 1
    assert (store.peek("a.crash") is not None, store.peek("b.crash")) == (True, None)


def test_a_short_write_never_becomes_the_record(store):
    store.save(a_record(), NOW)
    ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))  # writes past 64 bytes come up short
    try:
        with pytest.raises(OSError):
            store.save(a_record(attempts=3, last_error="x" * 500), NOW + 1)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, ignored)
    assert store.peek(NAME) == a_record()  # the previous record, whole
    assert [p.name for p in store.directory.iterdir()] == [store.record_path(NAME).name]


# -- loading ----------------------------------------------------------------------------


def test_missing_record_is_fresh_and_first_seen_now(store):
    record = store.load(NAME, PRINT, NOW)
    assert record == Record(name=NAME, fingerprint=PRINT, first_seen=NOW)
    assert (record.phase, record.attempts, record.next_attempt, record.core) == (State.QUEUED, 0, None, None)
    assert store.peek(NAME) is None
    assert list(store.directory.iterdir()) == []  # loading writes nothing


def test_matching_fingerprint_gives_the_stored_record(store):
    store.save(a_record(), NOW)
    assert store.load(NAME, PRINT, NOW + 5) == a_record()


@pytest.mark.parametrize(
    "changed",
    [
        Fingerprint(PRINT.device, PRINT.inode + 1, PRINT.size, PRINT.mtime_ns),  # a new file
        Fingerprint(PRINT.device, PRINT.inode, PRINT.size + 1, PRINT.mtime_ns),  # rewritten in place
        Fingerprint(PRINT.device, PRINT.inode, PRINT.size, PRINT.mtime_ns + 1),  # touched within a second
        Fingerprint(PRINT.device + 1, PRINT.inode, PRINT.size, PRINT.mtime_ns),
    ],
    ids=["inode", "size", "mtime_ns", "device"],
)
def test_stale_fingerprint_starts_afresh(store, changed, caplog):
    store.save(a_record(phase=State.REJECTED, last_error="400: no"), NOW)
    with caplog.at_level(logging.INFO, logger="crashd.state"):
        record = store.load(NAME, changed, NOW + 10)
    assert record == Record(name=NAME, fingerprint=changed, first_seen=NOW + 10)
    assert "starts afresh" in caplog.text
    assert store.peek(NAME) == a_record(phase=State.REJECTED, last_error="400: no")  # until saved over


def valid_json() -> bytes:
    return json.dumps(a_record().as_json()).encode()


DAMAGED = {
    "not json": b"\x00\x01garbage",
    "empty": b"",
    "truncated": valid_json()[: len(valid_json()) // 2],
    "not utf-8": b'{"name": "\xff"}',
    "missing key": json.dumps({k: v for k, v in a_record().as_json().items() if k != "phase"}).encode(),
    "unknown phase": valid_json().replace(b'"queued"', b'"lost"'),
    "a state no record holds": valid_json().replace(b'"queued"', b'"held"'),
    "bad attempts": valid_json().replace(b'"attempts": 2', b'"attempts": "two"'),
    "bad fingerprint": valid_json().replace(b'"device": 2049', b'"colour": 2049'),
    "bad core": valid_json().replace(b'"core": null', b'"core": {"phase": "pending"}'),
    "core not an object": valid_json().replace(b'"core": null', b'"core": 7'),
    "oversized": valid_json()[:-1] + b', "pad": "' + b"x" * MAX_RECORD + b'"}',
    "huge integer": valid_json().replace(b'"attempts": 2', b'"attempts": ' + b"9" * 5000),
}


CURRENT_FORMAT = (  # a record as the versions before crashd.lifecycle wrote it, byte for byte
    '{"attempts": 1, "core": {"attempts": 0, "last_error": null, "next_attempt": null, "phase": "pending"}, '
    '"fingerprint": {"device": 2049, "inode": 1234, "mtime_ns": 1700000000123456789, "size": 5678}, '
    '"first_seen": 1699999900.5, "last_error": null, "name": "_usr_bin_app.0.crash", "next_attempt": null, '
    '"oops_id": "abc", "phase": "PHASE", "updated": 1700000000.5}'
)


@pytest.mark.parametrize("phase", ["queued", "posting", "sent", "rejected", "expired", "invalid", "skipped"])
def test_records_written_by_earlier_versions_are_read(store, phase):
    (store.record_path(NAME)).write_text(CURRENT_FORMAT.replace("PHASE", phase))
    record = store.load(NAME, PRINT, NOW)
    assert (record.phase, record.attempts, record.oops_id, record.core) == (State(phase), 1, "abc", Core())
    store.save(record, NOW)
    assert json.loads(store.record_path(NAME).read_text())["phase"] == phase  # and written the same way


@pytest.mark.parametrize("data", DAMAGED.values(), ids=DAMAGED.keys())
def test_damaged_record_is_fresh_with_a_warning(store, data, caplog):
    (store.record_path(NAME)).write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="crashd.state"):
        record = store.load(NAME, PRINT, NOW)
    assert record == Record(name=NAME, fingerprint=PRINT, first_seen=NOW)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert NAME in caplog.text and "unreadable" in caplog.text
    store.save(record, NOW)  # and it can be written over
    assert store.peek(NAME) == record


def test_oversized_record_is_not_read_whole(store, caplog):
    (store.record_path(NAME)).write_bytes(b" " * (64 * MAX_RECORD) + valid_json())
    with caplog.at_level(logging.WARNING, logger="crashd.state"):
        assert store.load(NAME, PRINT, NOW).attempts == 0  # the valid JSON at the end is never reached
    assert "too large" in caplog.text


@pytest.mark.parametrize(
    "data", [b"[]", b"null", b'"queued"', b"42"], ids=["list", "null", "string", "number"]
)
def test_record_that_is_not_an_object_is_fresh_with_a_warning(store, data, caplog):
    (store.record_path(NAME)).write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="crashd.state"):
        assert store.load(NAME, PRINT, NOW) == Record(name=NAME, fingerprint=PRINT, first_seen=NOW)
    assert "unreadable" in caplog.text


def test_deeply_nested_record_is_fresh_with_a_warning(store, caplog):
    (store.record_path(NAME)).write_bytes(b"[" * 50_000)
    with caplog.at_level(logging.WARNING, logger="crashd.state"):
        assert store.load(NAME, PRINT, NOW) == Record(name=NAME, fingerprint=PRINT, first_seen=NOW)
    assert "unreadable" in caplog.text


# -- what is at the record's path -------------------------------------------------------


@pytest.fixture
def planted(store, tmp_path) -> Path:
    """A valid record for NAME outside the store, and a symlink to it at NAME's record path."""
    target = tmp_path / "elsewhere.json"
    target.write_bytes(json.dumps(a_record(phase=State.SENT, oops_id="planted").as_json()).encode())
    (store.record_path(NAME)).symlink_to(target)
    return target


def test_symlink_at_record_path_is_refused_not_followed(store, planted, caplog):
    with caplog.at_level(logging.WARNING, logger="crashd.state"):
        record = store.load(NAME, PRINT, NOW)
    assert record == Record(name=NAME, fingerprint=PRINT, first_seen=NOW)  # not the planted "sent"
    assert store.peek(NAME) is None
    assert NAME in caplog.text


def test_directory_at_record_path_is_refused(store, caplog):
    (store.record_path(NAME)).mkdir()
    with caplog.at_level(logging.WARNING, logger="crashd.state"):
        assert store.load(NAME, PRINT, NOW).attempts == 0


def test_symlink_at_record_path_is_never_read(store, planted):
    try:
        record = store.load(NAME, PRINT, NOW)
    except OSError:
        record = None  # refusing loudly is acceptable here; following the link is not
    assert record is None or record.oops_id != "planted"


def test_saving_over_a_symlink_replaces_the_link_not_its_target(store, planted):
    before = planted.read_bytes()
    store.save(a_record(), NOW)
    assert planted.read_bytes() == before
    path = store.record_path(NAME)
    assert not path.is_symlink() and json.loads(path.read_bytes())["phase"] == "queued"


# -- leftovers, memory, fallbacks --------------------------------------------------------


def test_old_temporaries_are_removed_fresh_ones_kept(tmp_path):
    directory = tmp_path / "reports"
    directory.mkdir(mode=0o700)
    old, fresh, other = (
        directory / f".{NAME}.0badf00d.tmp",
        directory / f".{NAME}.cafe0001.tmp",
        directory / "x.tmp",
    )
    for path in (old, fresh, other):
        path.write_bytes(b'{"half')
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    os.utime(other, (two_hours_ago, two_hours_ago))
    StateStore(directory)
    assert not old.exists()
    assert fresh.exists()  # another crashd may be writing it right now
    assert other.exists()  # not one of ours: hidden temporaries only


def test_in_memory_store_keeps_records_for_the_run_only(tmp_path):
    store = StateStore(None)
    assert store.directory is None
    assert store.load(NAME, PRINT, NOW).first_seen == NOW
    store.save(a_record(), NOW)
    assert store.peek(NAME) == a_record()
    assert store.load(NAME, PRINT, NOW + 1) == a_record()
    assert store.load(NAME, Fingerprint(1, 2, 3, 4), NOW + 1).attempts == 0  # stale in memory too
    assert StateStore(None).peek(NAME) is None  # nothing shared between stores


@pytest.mark.parametrize("obstacle", ["file", "file-parent"])
def test_open_falls_back_to_memory_when_the_directory_is_unusable(tmp_path, obstacle, caplog):
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    state_dir = blocker if obstacle == "file" else blocker / "deeper"
    with caplog.at_level(logging.INFO, logger="crashd.state"):
        store = StateStore.open(state_dir)
    assert store.directory is None
    assert str(state_dir) in caplog.text and "this run only" in caplog.text
    store.save(a_record(), NOW)
    assert store.peek(NAME) == a_record()
    assert blocker.read_text() == "not a directory"


def test_open_falls_back_to_memory_when_reports_is_a_file(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "reports").write_text("")
    assert StateStore.open(tmp_path / "state").directory is None


def test_reader_creates_nothing(tmp_path):
    state_dir = tmp_path / "absent"
    store = StateStore.reader(state_dir)
    assert store.directory is None and not state_dir.exists()
    assert store.peek(NAME) is None
    (tmp_path / "empty").mkdir()
    StateStore.reader(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []


def test_reader_reads_what_a_writer_saved(tmp_path):
    StateStore.open(tmp_path / "state").save(a_record(), NOW)
    leftover = tmp_path / "state" / "reports" / f".{NAME}.00000000.tmp"
    leftover.write_bytes(b"")
    os.utime(leftover, (0, 0))
    reader = StateStore.reader(tmp_path / "state")
    assert reader.directory == tmp_path / "state" / "reports"
    assert reader.peek(NAME) == a_record()
    assert leftover.exists()  # a reader removes nothing either


# -- every field round-trips ---------------------------------------------------------------

names = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-", min_size=1, max_size=100
).filter(lambda s: s not in (".", ".."))
times = st.floats(allow_nan=False, allow_infinity=False)
maybe_time = st.none() | times
maybe_text = st.none() | st.text()
cores = st.builds(
    Core,
    phase=st.sampled_from(CorePhase),
    attempts=st.integers(min_value=0, max_value=10**6),
    next_attempt=maybe_time,
    last_error=maybe_text,
)
records = st.builds(
    Record,
    name=names,
    fingerprint=st.builds(
        Fingerprint,
        st.integers(0, 2**64),
        st.integers(0, 2**64),
        st.integers(0, 2**63),
        st.integers(-(2**63), 2**63),
    ),
    first_seen=times,
    phase=st.sampled_from([state for state in State if state.persisted]),
    attempts=st.integers(min_value=0, max_value=10**6),
    next_attempt=maybe_time,
    last_error=maybe_text,
    oops_id=maybe_text,
    core=st.none() | cores,
    updated=times,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=records, now=times)
def test_every_field_round_trips_through_a_file(tmp_path, record, now):
    store = StateStore(tmp_path / "reports")
    saved = store.save(record, now)
    for loaded in (store.load(record.name, record.fingerprint, 0.0), store.peek(record.name)):
        assert loaded == record
        assert loaded.updated == now
        assert (loaded.phase, loaded.core and loaded.core.phase) == (
            record.phase,
            record.core and record.core.phase,
        )
        assert type(loaded.phase) is State and (loaded.core is None or type(loaded.core.phase) is CorePhase)
    assert saved == record and saved.updated == now
    assert Record.from_json(json.loads(json.dumps(record.as_json()))) == record
    assert not [p for p in store.directory.iterdir() if p.name.endswith(".tmp")]


# -- in-place records, grouped durability ------------------------------------------------------


def test_later_states_overwrite_the_record_in_place(store):
    store.save(a_record(), NOW, sync=False)
    path = store.record_path(NAME)
    inode, size = path.stat().st_ino, path.stat().st_size
    for record in (a_record(phase=State.POSTING), a_record(phase=State.SENT, oops_id="x" * 36, next_attempt=None)):
        store.save(record, NOW + 1, sync=False)
        assert (path.stat().st_ino, path.stat().st_size) == (inode, size)
        assert store.peek(NAME) == record
    store.save(a_record(last_error="e" * 2000), NOW + 2)  # longer than the file: a new one, whole
    assert path.stat().st_ino != inode and store.peek(NAME) == a_record(last_error="e" * 2000)
    assert [p.name for p in store.directory.iterdir()] == [path.name]


def _differ(old: bytes, new: bytes) -> int:
    return next(i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b)


@pytest.mark.parametrize(
    "torn",
    [
        lambda old, new: new[: _differ(old, new) + 1] + old[_differ(old, new) + 1 :],  # new, then old
        lambda old, new: old[: _differ(old, new) + 1] + new[_differ(old, new) + 1 :],  # old, then new
        lambda old, new: b"\0" * len(old),  # a page never written back
        lambda old, new: new[:40],  # cut short
    ],
)
def test_a_torn_record_is_unreadable_and_started_afresh(store, torn, caplog):
    """A power cut mid-write may keep any mix of the two versions: one that parses is caught by its check."""
    path = store.record_path(NAME)
    store.save(a_record(phase=State.SENT, oops_id="abc", fingerprint=Fingerprint(1, 2, 3, 4)), NOW)
    old = path.read_bytes()
    store.save(a_record(), NOW)  # the report was replaced by a new crash: its record starts again
    new = path.read_bytes()
    path.write_bytes(torn(old, new))
    with caplog.at_level(logging.WARNING, logger="crashd.state"):
        assert store.load(NAME, PRINT, NOW) == Record(name=NAME, fingerprint=PRINT, first_seen=NOW)
    assert "unreadable" in caplog.text


def test_flush_makes_every_unsynced_record_durable_once(store, monkeypatch):
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    for name in ("a.crash", "b.crash"):
        store.save(a_record(name=name), NOW, sync=False)
        store.save(a_record(name=name, phase=State.SENT), NOW, sync=False)
    assert synced == []
    assert store.flush() == 2
    records = {str(store.record_path(n)) for n in ("a.crash", "b.crash")}
    assert sorted(synced) == sorted([*records, str(store.directory)])  # one per record, one directory
    synced.clear()
    assert store.flush() == 0 and synced == []  # nothing left to do
    store.save(a_record(name="a.crash", attempts=9), NOW, sync=False)  # in place: no new name
    store.flush()
    assert synced == [str(store.record_path("a.crash"))]
