"""crashd.spool against a real, hostile crash directory: real symlinks, hard
links, FIFOs, sockets, files owned by throwaway users, and a child process that
runs as one of them."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import pwd
import signal
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crashd.collector import Collected, collect
from crashd.fs import sparse_refusal
from crashd.report import Limits
from crashd.spool import (
    MAX_REPORT_SIZE,
    STAMP_MODE,
    OpenFile,
    OpenReport,
    ReportName,
    Spool,
    Stamps,
    UnsafeFileError,
    open_file,
)

GiB = 1024**3
BODY = b"ProblemType: Crash\nExecutablePath: /usr/bin/gedit\n"


# --- helpers and fixtures ---------------------------------------------------------------------------


@contextlib.contextmanager
def deadline(seconds: float = 5.0) -> Iterator[None]:
    """Fail instead of hanging (a FIFO opened without O_NONBLOCK would block forever)."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def put(directory: Path, filename: str, data: bytes = BODY, *, uid: int = 0, gid: int = 0) -> Path:
    """A report-like regular file, owned uid:gid, mode 0640 (as apport writes them)."""
    path = directory / filename
    path.write_bytes(data)
    os.chown(path, uid, gid)
    path.chmod(0o640)
    return path


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def leftovers(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if n.startswith(".crashd-")]


def file_facts(path: str) -> tuple[bytes, int, int, int, int, int]:
    st = os.stat(path)
    return (
        hashlib.sha256(Path(path).read_bytes()).digest(),
        st.st_ino,
        st.st_mode,
        st.st_uid,
        st.st_size,
        st.st_mtime_ns,
    )


@pytest.fixture(scope="module")
def alice(make_user: Callable[[], pwd.struct_passwd]) -> pwd.struct_passwd:
    return make_user()


@pytest.fixture(scope="module")
def bob(make_user: Callable[[], pwd.struct_passwd]) -> pwd.struct_passwd:
    return make_user()


@pytest.fixture
def crash_dir(user_tmp_path: Path) -> Path:
    """A scratch crash directory like /var/crash: root-owned, mode 3777."""
    directory = user_tmp_path / "crash"
    directory.mkdir()
    directory.chmod(0o3777)
    return directory


@pytest.fixture
def spool(crash_dir: Path) -> Iterator[Spool]:
    with Spool(crash_dir) as s:
        yield s


# --- names ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "stem", "uid"),
    [
        ("_usr_bin_gedit.1000.crash", "_usr_bin_gedit.1000", 1000),
        ("_usr_sbin_cupsd.0.crash", "_usr_sbin_cupsd.0", 0),
        (
            "linux-image-6.8.0-51-generic.0f3b9c2a1e5d.crash",
            "linux-image-6.8.0-51-generic.0f3b9c2a1e5d",
            None,
        ),
        ("bash.crash", "bash", None),
        ("_usr_bin_x.١٠٠٠.crash", "_usr_bin_x.١٠٠٠", None),  # not ASCII digits: no uid
        ("_usr_bin_x.-5.crash", "_usr_bin_x.-5", None),
    ],
)
def test_report_name_parse(filename: str, stem: str, uid: int | None) -> None:
    name = ReportName.parse(filename)
    assert (name.stem, name.uid) == (stem, uid)
    assert (name.crash, str(name)) == (filename, filename)
    assert name.upload == stem + ".upload"
    assert name.uploaded == stem + ".uploaded"


@pytest.mark.parametrize(
    "filename",
    ["foo", "x.1000.upload", "x.1000.crash.upload", ".crash", ".x.1000.crash", "a/b.0.crash", "../x.0.crash"],
)
def test_report_name_parse_refuses(filename: str) -> None:
    with pytest.raises(ValueError, match="crash"):
        ReportName.parse(filename)


def test_report_names_order_and_hash() -> None:
    a, b = ReportName.parse("a.1.crash"), ReportName.parse("b.0.crash")
    assert sorted([b, a]) == [a, b]
    assert {a, ReportName("a.1")} == {a}


def test_unsafe_file_error_message_and_pickle() -> None:
    err = UnsafeFileError("/var/crash/x.0.crash", "is a symbolic link")
    assert str(err) == "/var/crash/x.0.crash: is a symbolic link"
    assert isinstance(err, ValueError)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.reason, str(copy)) == (err.path, err.reason, str(err))


# --- the directory -------------------------------------------------------------------------------------


def test_missing_directory_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Spool(tmp_path / "nowhere")


def test_symlinked_directory_is_refused(crash_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(crash_dir)
    with pytest.raises(UnsafeFileError, match="is a symbolic link"):
        Spool(tmp_path / "link")


def test_file_instead_of_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        Spool(tmp_path / "f")


def test_closed_spool_refuses_work(crash_dir: Path) -> None:
    s = Spool(crash_dir)
    s.close()
    s.close()
    with pytest.raises(ValueError, match="closed"):
        s.report_names()


def test_spool_keeps_its_directory_after_a_rename(crash_dir: Path, tmp_path: Path) -> None:
    put(crash_dir, "a.0.crash")
    with Spool(crash_dir) as s:
        crash_dir.rename(tmp_path / "moved")
        crash_dir.mkdir()  # a new, empty directory under the old path
        assert [n.crash for n in s.report_names()] == ["a.0.crash"]
        with s.open_report("a.0.crash") as report:
            assert report.stat.st_size == len(BODY)


def test_report_names_lists_names_without_opening(spool: Spool, crash_dir: Path) -> None:
    put(crash_dir, "b.0.crash")
    put(crash_dir, "a.1000.crash")
    os.mkfifo(crash_dir / "fifo.0.crash")
    (crash_dir / "dir.crash").mkdir()
    (crash_dir / "link.0.crash").symlink_to("/etc/shadow")
    for other in (".hidden.0.crash", ".crash", "a.1000.upload", "a.1000.uploaded", "notes.txt"):
        put(crash_dir, other)
    with deadline():
        names = spool.report_names()
    assert [n.crash for n in names] == [
        "a.1000.crash",
        "b.0.crash",
        "dir.crash",
        "fifo.0.crash",
        "link.0.crash",
    ]


# --- open_report: every refusal -----------------------------------------------------------------------


def refused(spool: Spool, filename: str) -> UnsafeFileError:
    """open_report must refuse, within the deadline and without leaking a descriptor."""
    before = open_fds()
    with deadline(), pytest.raises(UnsafeFileError) as info:
        spool.open_report(filename)
    assert open_fds() == before
    assert info.value.path == os.path.join(spool.path, filename)
    assert str(info.value) == f"{info.value.path}: {info.value.reason}"
    return info.value


def test_symlink_to_shadow_is_refused(spool: Spool, crash_dir: Path) -> None:
    (crash_dir / "_usr_bin_evil.0.crash").symlink_to("/etc/shadow")
    assert refused(spool, "_usr_bin_evil.0.crash").reason == "is a symbolic link"


def test_symlink_to_another_users_report_is_refused(
    spool: Spool, crash_dir: Path, alice: pwd.struct_passwd, bob: pwd.struct_passwd
) -> None:
    target = put(crash_dir, f"_usr_bin_a.{alice.pw_uid}.crash", uid=alice.pw_uid, gid=alice.pw_gid)
    (crash_dir / f"_usr_bin_b.{bob.pw_uid}.crash").symlink_to(target)
    (crash_dir / f"_usr_bin_c.{alice.pw_uid}.crash").symlink_to(target.name)
    assert refused(spool, f"_usr_bin_b.{bob.pw_uid}.crash").reason == "is a symbolic link"
    assert refused(spool, f"_usr_bin_c.{alice.pw_uid}.crash").reason == "is a symbolic link"


def test_hard_link_is_refused_under_both_names(
    spool: Spool, crash_dir: Path, alice: pwd.struct_passwd
) -> None:
    original = put(crash_dir, f"a.{alice.pw_uid}.crash", uid=alice.pw_uid, gid=alice.pw_gid)
    os.link(original, crash_dir / f"b.{alice.pw_uid}.crash")
    assert refused(spool, f"b.{alice.pw_uid}.crash").reason == "has 2 hard links"
    assert refused(spool, f"a.{alice.pw_uid}.crash").reason == "has 2 hard links"


def test_fifo_is_refused_without_hanging(spool: Spool, crash_dir: Path) -> None:
    os.mkfifo(crash_dir / "fifo.0.crash")
    assert refused(spool, "fifo.0.crash").reason == "is a FIFO, not a regular file"


def test_directory_named_crash_is_refused(spool: Spool, crash_dir: Path) -> None:
    (crash_dir / "x.crash").mkdir()
    assert refused(spool, "x.crash").reason == "is a directory, not a regular file"


def test_socket_is_refused(spool: Spool, crash_dir: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(crash_dir / "s.0.crash"))
        assert "not a regular file" in refused(spool, "s.0.crash").reason


def test_owner_must_match_the_uid_in_the_name(
    spool: Spool, crash_dir: Path, alice: pwd.struct_passwd, bob: pwd.struct_passwd
) -> None:
    put(crash_dir, f"_usr_bin_x.{alice.pw_uid}.crash", uid=bob.pw_uid, gid=bob.pw_gid)
    assert (
        refused(spool, f"_usr_bin_x.{alice.pw_uid}.crash").reason
        == f"is owned by uid {bob.pw_uid} but named for uid {alice.pw_uid}"
    )


def test_root_may_own_a_report_named_for_anyone(
    spool: Spool, crash_dir: Path, alice: pwd.struct_passwd
) -> None:
    put(crash_dir, f"_usr_bin_su.{alice.pw_uid}.crash")
    with spool.open_report(f"_usr_bin_su.{alice.pw_uid}.crash") as report:
        assert report.stat.st_uid == 0


def test_name_without_uid_must_be_root_owned(spool: Spool, crash_dir: Path, alice: pwd.struct_passwd) -> None:
    oops = "linux-image-6.8.0-51-generic.0f3b9c2a1e5d.crash"
    put(crash_dir, oops, uid=alice.pw_uid, gid=alice.pw_gid)
    assert refused(spool, oops).reason.startswith(
        f"is owned by uid {alice.pw_uid} but its name carries no uid"
    )
    os.chown(crash_dir / oops, 0, 0)
    with spool.open_report(oops) as report:
        assert report.name.uid is None


def test_size_limit(crash_dir: Path) -> None:
    put(crash_dir, "ten.0.crash", b"x" * 10)
    put(crash_dir, "eleven.0.crash", b"x" * 11)
    with Spool(crash_dir, max_report_size=10) as small:
        small.open_report("ten.0.crash").close()
        assert refused(small, "eleven.0.crash").reason == "is 11 bytes, over the 10 bytes limit"


def test_size_limit_in_words(spool: Spool, crash_dir: Path) -> None:
    assert spool.max_report_size == MAX_REPORT_SIZE == 2 * GiB
    with open(crash_dir / "big.0.crash", "wb") as f:  # sparse: no disk used
        f.truncate(3 * GiB)
    with open(crash_dir / "edge.0.crash", "wb") as f:
        f.truncate(2 * GiB + 1)
    assert refused(spool, "big.0.crash").reason == "is 3 GiB, over the 2 GiB limit"
    assert refused(spool, "edge.0.crash").reason == f"is {2 * GiB + 1} bytes, over the {2 * GiB} bytes limit"


def test_missing_report_is_not_a_refusal(spool: Spool) -> None:
    with pytest.raises(FileNotFoundError):
        spool.open_report("gone.0.crash")


# --- an accepted report --------------------------------------------------------------------------------


def test_open_report_descriptor(spool: Spool, crash_dir: Path, alice: pwd.struct_passwd) -> None:
    path = put(crash_dir, f"_usr_bin_gedit.{alice.pw_uid}.crash", uid=alice.pw_uid, gid=alice.pw_gid)
    with spool.open_report(ReportName.parse(path.name)) as report:
        assert isinstance(report, OpenReport)
        assert report.name.uid == alice.pw_uid
        assert (report.stat.st_ino, report.stat.st_uid) == (path.stat().st_ino, alice.pw_uid)
        flags = fcntl.fcntl(report.fd, fcntl.F_GETFL)
        assert not flags & os.O_NONBLOCK
        assert flags & os.O_ACCMODE == os.O_RDONLY
        assert not os.get_inheritable(report.fd)
        fd = report.fd
    assert report.closed
    with pytest.raises(OSError):
        os.fstat(fd)
    report.close()  # twice is fine


def test_file_readers_are_independent(spool: Spool, crash_dir: Path) -> None:
    put(crash_dir, "r.0.crash")
    report = spool.open_report("r.0.crash")
    os.lseek(report.fd, 7, os.SEEK_SET)  # someone moved the shared offset
    with report.file() as first, report.file() as second:
        assert first.readline() == b"ProblemType: Crash\n"
        assert second.read() == BODY  # not disturbed by the first reader
        assert first.tell() == len(b"ProblemType: Crash\n")
        first.seek(-6, os.SEEK_END)
        assert first.read() == b"gedit\n"
        report.close()
        first.seek(0)
        assert first.read() == BODY  # still usable: it reads its own dup
    with pytest.raises(ValueError, match="closed"):
        report.file()


# --- stamps ---------------------------------------------------------------------------------------------


T = 1_700_000_000_900_000_000  # .9 s into a second


@pytest.mark.parametrize(
    ("upload_ns", "uploaded_ns", "pending"),
    [
        (None, None, False),
        (T, None, True),
        (None, T, False),
        (T, T - 800_000_000, True),  # same second, .uploaded older
        (T - 800_000_000, T, False),  # same second, .uploaded newer: whoopsie got this wrong
        (T, T - 1, True),
        (T, T + 1, False),
        (T, T, False),  # one clock tick: counts as sent, so it is not sent twice
    ],
)
def test_pending(
    spool: Spool, crash_dir: Path, upload_ns: int | None, uploaded_ns: int | None, pending: bool
) -> None:
    put(crash_dir, "p.0.crash")
    for suffix, ns in (("upload", upload_ns), ("uploaded", uploaded_ns)):
        if ns is not None:
            stamp = put(crash_dir, f"p.0.{suffix}", b"")
            os.utime(stamp, ns=(ns, ns))
    stamps = spool.stamps("p.0.crash", 0)
    assert stamps == Stamps(upload_ns, uploaded_ns)
    assert stamps.pending is pending


@pytest.mark.parametrize("suffix", ["upload", "uploaded"])
def test_stamp_owned_by_another_user_is_ignored_and_the_other_stamp_still_counts(
    spool: Spool, crash_dir: Path, alice: pwd.struct_passwd, bob: pwd.struct_passwd, suffix: str
) -> None:
    """Issue 11 vuln 6: bob's planted stamp neither counts nor hides alice's own stamp."""
    name = ReportName(f"_usr_bin_x.{alice.pw_uid}")
    put(crash_dir, name.crash, uid=alice.pw_uid, gid=alice.pw_gid)
    other = "uploaded" if suffix == "upload" else "upload"
    os.utime(put(crash_dir, f"{name.stem}.{other}", b"", uid=alice.pw_uid, gid=alice.pw_gid), ns=(T, T))
    put(crash_dir, f"{name.stem}.{suffix}", b"", uid=bob.pw_uid, gid=bob.pw_gid)
    stamps = spool.stamps(name, alice.pw_uid)
    reason = f"is owned by uid {bob.pw_uid} but the report belongs to uid {alice.pw_uid}"
    assert stamps.ignored == (f"{crash_dir / f'{name.stem}.{suffix}'}: {reason}",)
    kept = {"upload": stamps.upload_ns, "uploaded": stamps.uploaded_ns}
    assert (kept[suffix], kept[other]) == (None, T)
    assert stamps.pending is (other == "upload")


def test_legacy_uploaders_uploaded_stamp_counts_as_sent(
    crash_dir: Path, alice: pwd.struct_passwd, bob: pwd.struct_passwd
) -> None:
    """Issue 16 item 4: whoopsie's own ``.uploaded`` (bob plays whoopsie) is trusted; its
    ``.upload`` is not (whoopsie never writes one), and nobody else's ``.uploaded`` is."""
    name = ReportName(f"_usr_bin_x.{alice.pw_uid}")
    put(crash_dir, name.crash, uid=alice.pw_uid, gid=alice.pw_gid)
    os.utime(put(crash_dir, name.upload, b"", uid=alice.pw_uid, gid=alice.pw_gid), ns=(T, T))
    os.utime(put(crash_dir, name.uploaded, b"oops-1", uid=bob.pw_uid, gid=bob.pw_gid), ns=(T + 1, T + 1))
    with Spool(crash_dir, legacy_uploader=bob.pw_name) as whoopsie_spool:
        stamps = whoopsie_spool.stamps(name, alice.pw_uid)
        assert (stamps.upload_ns, stamps.uploaded_ns, stamps.ignored) == (T, T + 1, ())
        assert not stamps.pending
        assert whoopsie_spool.oops_id(name, alice.pw_uid) == "oops-1"
    with Spool(crash_dir, legacy_uploader="crashd-no-such-user") as plain:
        stamps = plain.stamps(name, alice.pw_uid)
        assert (stamps.uploaded_ns, stamps.pending, len(stamps.ignored)) == (None, True, 1)
    os.chown(crash_dir / name.upload, bob.pw_uid, bob.pw_gid)
    with Spool(crash_dir, legacy_uploader=bob.pw_name) as whoopsie_spool:
        assert whoopsie_spool.stamps(name, alice.pw_uid).upload_ns is None


def test_the_legacy_uploader_is_looked_up_when_a_stamp_is_judged_not_at_start(
    crash_dir: Path, alice: pwd.struct_passwd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user NSS cannot find loads its other modules for good (issue 15: ~0.35 MiB of an idle daemon):
    opening the crash directory and listing it ask nothing; the first stamp judged asks once."""
    asked: list[str] = []
    real = pwd.getpwnam
    monkeypatch.setattr(pwd, "getpwnam", lambda name: asked.append(name) or real(name))
    name = ReportName(f"_usr_bin_x.{alice.pw_uid}")
    put(crash_dir, name.crash, uid=alice.pw_uid, gid=alice.pw_gid)
    put(crash_dir, name.uploaded, b"oops-1", uid=alice.pw_uid, gid=alice.pw_gid)
    with Spool(crash_dir, legacy_uploader="crashd-no-such-user") as spool:
        assert spool.report_names() == [name]
        assert asked == []
        assert spool.oops_id(name, alice.pw_uid) == "oops-1"
        assert spool.stamps(name, alice.pw_uid).uploaded_ns is not None
        assert asked == ["crashd-no-such-user"]


def test_root_owned_stamps_are_trusted(spool: Spool, crash_dir: Path, alice: pwd.struct_passwd) -> None:
    name = ReportName(f"x.{alice.pw_uid}")
    put(crash_dir, name.upload, b"")
    assert spool.stamps(name, alice.pw_uid).pending


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("symlink", "is a symbolic link"),
        ("fifo", "is a FIFO, not a regular file"),
        ("hardlink", "has 2 hard links"),
        ("directory", "is a directory, not a regular file"),
    ],
)
def test_unsafe_stamps_are_ignored(spool: Spool, crash_dir: Path, kind: str, reason: str) -> None:
    name = ReportName("x.0")
    put(crash_dir, name.crash)
    stamp = crash_dir / name.uploaded
    if kind == "symlink":
        stamp.symlink_to("/etc/passwd")
    elif kind == "fifo":
        os.mkfifo(stamp)
    elif kind == "hardlink":
        os.link(put(crash_dir, "other", b""), stamp)
    else:
        stamp.mkdir()
    with deadline():
        stamps = spool.stamps(name, 0)
    assert stamps == Stamps(None, None, (f"{stamp}: {reason}",))


def test_a_report_name_with_no_room_for_its_stamps_has_none(spool: Spool, crash_dir: Path) -> None:
    """255 bytes is a valid report name, but ``NAME.uploaded`` would be 258: no stamp, no error."""
    name = ReportName("x" * (255 - len(".0.crash")) + ".0")
    put(crash_dir, name.crash)
    assert spool.stamps(name, 0) == Stamps(None, None)
    assert spool.oops_id(name, 0) is None


# --- sparse files (issue 11 vuln 7) ----------------------------------------------------------------


def _stat(size: int, allocated: int) -> os.stat_result:
    fields = list(os.stat("/"))
    fields[6] = size  # st_size
    st = os.stat_result(fields, {"st_blocks": allocated // 512})
    assert (st.st_size, st.st_blocks * 512) == (size, allocated)
    return st


MiB = 1024**2


@pytest.mark.parametrize(
    ("size", "allocated", "refused"),
    [
        (0, 0, False),
        (MiB, 0, False),  # small files may live inline or in one compressed extent
        (MiB + 1, 0, True),
        (16 * MiB, 2 * MiB, False),  # exactly 1/8 stored: a compressing file system, not holes
        (16 * MiB, 2 * MiB - 512, True),
        (3 * GiB, 4096, True),  # the attack: 3 GiB with one page on disk
        (100 * MiB, 100 * MiB + 4096, False),
    ],
)
def test_sparse_refusal_table(size: int, allocated: int, refused: bool) -> None:
    reason = sparse_refusal(_stat(size, allocated))
    assert (reason is not None) is refused
    if refused:
        assert reason is not None and reason.startswith("is sparse: ") and reason.endswith(" allocated")


def test_a_sparse_report_is_refused_on_open_before_any_read(spool: Spool, crash_dir: Path) -> None:
    path = put(crash_dir, "sparse.0.crash")
    os.truncate(path, 2 * GiB - 1)
    with deadline(), pytest.raises(UnsafeFileError) as info:
        spool.open_report("sparse.0.crash")
    assert info.value.reason.startswith("is sparse: 2.0 GiB long but only ")


# --- writing stamps -------------------------------------------------------------------------------------


def check_stamp(path: Path, uid: int, gid: int, content: bytes) -> None:
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_nlink) == (uid, gid, STAMP_MODE, 1)
    assert path.read_bytes() == content


def test_mark_upload_and_uploaded_belong_to_the_reports_owner(
    spool: Spool, crash_dir: Path, alice: pwd.struct_passwd
) -> None:
    name = ReportName(f"_usr_bin_gedit.{alice.pw_uid}")
    put(crash_dir, name.crash, uid=alice.pw_uid, gid=alice.pw_gid)
    with spool.open_report(name) as report:
        spool.mark_upload(report)
        check_stamp(crash_dir / name.upload, alice.pw_uid, alice.pw_gid, b"")
        assert spool.stamps(name, alice.pw_uid).pending
        spool.mark_uploaded(report, "d8f5e1a2-9c3b-11ef-8000-525400123456")
    check_stamp(
        crash_dir / name.uploaded, alice.pw_uid, alice.pw_gid, b"d8f5e1a2-9c3b-11ef-8000-525400123456"
    )
    assert not spool.stamps(name, alice.pw_uid).pending
    assert leftovers(crash_dir) == []


def test_root_owned_report_gets_root_stamps_with_the_reports_group(
    spool: Spool, crash_dir: Path, bob: pwd.struct_passwd
) -> None:
    put(crash_dir, "_usr_bin_passwd.1000.crash", gid=bob.pw_gid)  # like root:whoopsie
    with spool.open_report("_usr_bin_passwd.1000.crash") as report:
        spool.mark_upload(report)
        spool.mark_uploaded(report, "oops")
    check_stamp(crash_dir / "_usr_bin_passwd.1000.upload", 0, bob.pw_gid, b"")
    check_stamp(crash_dir / "_usr_bin_passwd.1000.uploaded", 0, bob.pw_gid, b"oops")


def test_mark_upload_leaves_a_pending_stamp_alone(spool: Spool, crash_dir: Path) -> None:
    put(crash_dir, "x.0.crash")
    stamp = put(crash_dir, "x.0.upload", b"")
    os.utime(stamp, ns=(T, T))
    before = os.stat(stamp)
    with spool.open_report("x.0.crash") as report:
        spool.mark_upload(report)
    after = os.stat(stamp)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, T)


def test_mark_upload_after_a_send_makes_it_pending_again(spool: Spool, crash_dir: Path) -> None:
    put(crash_dir, "x.0.crash")
    for suffix, ns in (("upload", T - 2), ("uploaded", T - 1)):
        os.utime(put(crash_dir, f"x.0.{suffix}", b""), ns=(ns, ns))
    with spool.open_report("x.0.crash") as report:
        assert not spool.stamps(report.name, 0).pending
        spool.mark_upload(report)
        assert spool.stamps(report.name, 0).pending


def collected_deferred(spool: Spool, crash_dir: Path) -> tuple[OpenReport, Collected]:
    """x.0.crash collected as the daemon collects it: its .upload stamp deferred to close()."""
    put(crash_dir, "x.0.crash")
    spool.defer_upload_stamp = True
    report = spool.open_report("x.0.crash")
    collected = collect(spool, report, Limits())
    assert isinstance(collected, Collected)
    return report, collected


def test_a_deferred_upload_stamp_is_written_at_close_and_reads_as_sent_with_the_uploaded_after_it(
    spool: Spool, crash_dir: Path
) -> None:
    report, collected = collected_deferred(spool, crash_dir)
    with report, collected:
        assert not (crash_dir / "x.0.upload").exists()  # not before the POST
        assert spool.mark_uploaded(report, "oops")  # at once: within the clock tick of collect()
    assert (crash_dir / "x.0.upload").exists()
    stamps = spool.stamps(report.name, 0)
    assert stamps.upload_ns is not None and stamps.uploaded_ns is not None
    assert stamps.upload_ns <= stamps.uploaded_ns  # time.time_ns() would be ahead of the file clock
    assert not stamps.pending


def test_a_deferred_upload_stamp_without_a_send_leaves_the_report_pending(
    spool: Spool, crash_dir: Path
) -> None:
    put(crash_dir, "x.0.uploaded", b"old")  # an earlier crash under the name was sent
    os.utime(crash_dir / "x.0.uploaded", ns=(T, T))
    report, collected = collected_deferred(spool, crash_dir)
    with report, collected:
        pass  # the POST failed: no .uploaded
    assert spool.stamps(report.name, 0).pending


def test_a_ui_stamp_is_left_as_it_is_by_a_deferred_stamp(spool: Spool, crash_dir: Path) -> None:
    stamp = put(crash_dir, "x.0.upload", b"")
    os.utime(stamp, ns=(T, T))
    inode = os.stat(stamp).st_ino
    report, collected = collected_deferred(spool, crash_dir)
    with report, collected:
        assert spool.mark_uploaded(report, "oops")
    after = os.stat(stamp)
    assert (after.st_ino, after.st_mtime_ns) == (inode, T)  # not rewritten after the send


def test_answered_upload_stamps(
    spool: Spool, crash_dir: Path, alice: pwd.struct_passwd, bob: pwd.struct_passwd
) -> None:
    """The daemon ignores the event of an .upload only when a trusted .uploaded at least as new answers it."""
    name = ReportName(f"x.{alice.pw_uid}")

    def stamp(suffix: str, ns: int, uid: int = alice.pw_uid) -> Path:
        path = put(crash_dir, f"{name.stem}.{suffix}", b"", uid=uid)
        os.utime(path, ns=(ns, ns))
        return path

    assert not spool.answered(name)  # no stamps
    stamp("upload", T)
    assert not spool.answered(name)  # asked, not answered
    uploaded = stamp("uploaded", T)
    assert spool.answered(name)  # equal times count as sent
    stamp("upload", T + 1)
    assert not spool.answered(name)  # asked again
    stamp("uploaded", T + 1, uid=0)
    assert spool.answered(name)  # root's stamp counts
    stamp("uploaded", T + 1, uid=bob.pw_uid)
    assert not spool.answered(name)  # planted by another user: look at the report
    uploaded.unlink()
    uploaded.symlink_to(crash_dir / f"{name.stem}.upload")
    assert not spool.answered(name)


def test_upload_all_stamps_before_the_post(spool: Spool, crash_dir: Path) -> None:
    put(crash_dir, "x.0.crash")
    with spool.open_report("x.0.crash") as report:
        collected = collect(spool, report, Limits())
        assert isinstance(collected, Collected)
        with collected:
            assert spool.stamps(report.name, 0).pending


def test_mark_uploaded_replaces_atomically(spool: Spool, crash_dir: Path) -> None:
    put(crash_dir, "x.0.crash")
    put(crash_dir, "x.0.uploaded", b"old-id")
    with open(crash_dir / "x.0.uploaded", "rb") as old, spool.open_report("x.0.crash") as report:
        old_inode = os.fstat(old.fileno()).st_ino
        spool.mark_uploaded(report, "new-id")
        assert old.read() == b"old-id"  # the old file was replaced, not rewritten in place
    assert os.stat(crash_dir / "x.0.uploaded").st_ino != old_inode
    check_stamp(crash_dir / "x.0.uploaded", 0, 0, b"new-id")


@pytest.mark.parametrize("suffix", ["upload", "uploaded"])
def test_planted_symlink_is_replaced_not_followed(
    spool: Spool, crash_dir: Path, alice: pwd.struct_passwd, suffix: str
) -> None:
    name = ReportName(f"x.{alice.pw_uid}")
    put(crash_dir, name.crash, uid=alice.pw_uid, gid=alice.pw_gid)
    (crash_dir / f"{name.stem}.{suffix}").symlink_to("/etc/passwd")
    passwd = file_facts("/etc/passwd")
    with spool.open_report(name) as report:
        spool.mark_upload(report)
        spool.mark_uploaded(report, "oops-1")
    assert file_facts("/etc/passwd") == passwd
    check_stamp(crash_dir / name.upload, alice.pw_uid, alice.pw_gid, b"")
    check_stamp(crash_dir / name.uploaded, alice.pw_uid, alice.pw_gid, b"oops-1")
    assert leftovers(crash_dir) == []


@pytest.mark.parametrize("oops_id", ["two words", "line\n", "é", "x" * 257])
def test_mark_uploaded_refuses_odd_ids(spool: Spool, crash_dir: Path, oops_id: str) -> None:
    put(crash_dir, "x.0.crash")
    with spool.open_report("x.0.crash") as report, pytest.raises(ValueError, match="OOPS id"):
        spool.mark_uploaded(report, oops_id)
    assert sorted(os.listdir(crash_dir)) == ["x.0.crash"]


def test_already_reported_without_an_id_writes_an_empty_stamp(spool: Spool, crash_dir: Path) -> None:
    put(crash_dir, "x.0.crash")
    with spool.open_report("x.0.crash") as report:
        spool.mark_upload(report)
        spool.mark_uploaded(report, "")
    check_stamp(crash_dir / "x.0.uploaded", 0, 0, b"")
    assert not spool.stamps("x.0.crash", 0).pending
    assert spool.oops_id("x.0.crash") is None


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"d8f5e1a2-9c3b-11ef", "d8f5e1a2-9c3b-11ef"), (b"abc\n", "abc"), (b"", None), (b"two words", None)],
)
def test_oops_id_reads_the_uploaded_stamp(
    spool: Spool, crash_dir: Path, content: bytes, expected: str | None
) -> None:
    assert spool.oops_id("x.0.crash") is None  # no stamp yet
    put(crash_dir, "x.0.uploaded", content)
    assert spool.oops_id(ReportName("x.0"), owner_uid=0) == expected


def test_oops_id_applies_the_stamp_rules(
    spool: Spool, crash_dir: Path, alice: pwd.struct_passwd, bob: pwd.struct_passwd
) -> None:
    name = ReportName(f"x.{alice.pw_uid}")
    put(crash_dir, name.uploaded, b"forged", uid=bob.pw_uid, gid=bob.pw_gid)
    with pytest.raises(UnsafeFileError, match=f"belongs to uid {alice.pw_uid}"):
        spool.oops_id(name, owner_uid=alice.pw_uid)
    (crash_dir / name.uploaded).unlink()
    (crash_dir / name.uploaded).symlink_to("/etc/hostname")
    with pytest.raises(UnsafeFileError, match="is a symbolic link"):
        spool.oops_id(name)


def test_failed_rename_leaves_no_temporary_file(spool: Spool, crash_dir: Path) -> None:
    put(crash_dir, "x.0.crash")
    (crash_dir / "x.0.uploaded").mkdir()
    (crash_dir / "x.0.uploaded" / "keep").write_bytes(b"")
    with spool.open_report("x.0.crash") as report, pytest.raises(OSError):
        spool.mark_uploaded(report, "oops")
    assert leftovers(crash_dir) == []
    assert os.listdir(crash_dir / "x.0.uploaded") == ["keep"]


def test_failed_fchown_leaves_no_temporary_file(
    spool: Spool, crash_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(crash_dir, "x.65534.crash", uid=65534, gid=65534)  # another user's: the stamp is given to them

    def refuse(fd: int, uid: int, gid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refuse)
    with spool.open_report("x.65534.crash") as report, pytest.raises(PermissionError):
        spool.mark_upload(report)
    assert sorted(os.listdir(crash_dir)) == ["x.65534.crash"]


def test_a_stamp_that_has_its_owner_already_is_not_chowned(
    spool: Spool, crash_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root's report, root's stamp: an fchown would change only the stamp's ctime, and send the daemon's
    watch one more event per stamp (issue 15). Another user's report still gets its stamp chowned."""
    put(crash_dir, "mine.0.crash")
    put(crash_dir, "theirs.65534.crash", uid=65534, gid=65534)
    chowned: list[tuple[int, int]] = []
    real = os.fchown

    def record(fd: int, uid: int, gid: int) -> None:
        chowned.append((uid, gid))
        real(fd, uid, gid)

    monkeypatch.setattr(os, "fchown", record)
    for name in ("mine.0.crash", "theirs.65534.crash"):
        with spool.open_report(name) as report:
            spool.mark_upload(report)
    assert chowned == [(65534, 65534)]
    for stem, owner in (("mine.0", (0, 0)), ("theirs.65534", (65534, 65534))):
        st = (crash_dir / f"{stem}.upload").stat()
        assert (st.st_uid, st.st_gid) == owner


# --- open_file: a report named on the command line ---------------------------------------------------


def test_open_file_reads_a_regular_file_but_refuses_a_final_symlink(tmp_path: Path) -> None:
    (tmp_path / "report").write_bytes(BODY)
    (tmp_path / "latest.crash").symlink_to("report")
    with pytest.raises(UnsafeFileError, match=r"latest\.crash: is a symbolic link"):
        open_file(tmp_path / "latest.crash")
    (tmp_path / "dir").symlink_to(tmp_path)  # a link earlier in the path is the caller's choice
    with open_file(tmp_path / "dir" / "report") as opened, opened.file() as f:
        assert isinstance(opened, OpenFile) and not isinstance(opened, OpenReport)
        assert not fcntl.fcntl(opened.fd, fcntl.F_GETFL) & os.O_NONBLOCK
        assert f.read() == BODY
    assert opened.closed


def test_open_file_refusals(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "big").write_bytes(b"x" * 11)
    with deadline(), pytest.raises(UnsafeFileError, match="fifo: is a FIFO, not a regular file"):
        open_file(tmp_path / "fifo")
    with pytest.raises(UnsafeFileError, match="is a directory"):
        open_file(tmp_path)
    with pytest.raises(UnsafeFileError, match="is 11 bytes, over the 10 bytes limit"):
        open_file(tmp_path / "big", max_size=10)
    with pytest.raises(FileNotFoundError):
        open_file(tmp_path / "missing")


# --- as a normal user -----------------------------------------------------------------------------------

CHILD = """
import json, os, sys
from crashd.spool import Spool, UnsafeFileError
uid, other, readable = os.getuid(), sys.argv[1], sys.argv[2]
mine = f"_usr_bin_tool.{uid}"
fd = os.open(mine + ".crash", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
os.write(fd, b"ProblemType: Crash\\n")
os.close(fd)
os.symlink(mine + ".crash", f"_usr_bin_link.{uid}.crash")
out = {}
with Spool(".") as spool:
    out["names"] = [n.crash for n in spool.report_names()]
    with spool.open_report(mine + ".crash") as report:
        spool.mark_upload(report)
        out["pending"] = spool.stamps(report.name, uid).pending
        spool.mark_uploaded(report, "oops-from-user")
        out["pending_after"] = spool.stamps(report.name, uid).pending
        os.chmod(report.name.uploaded, 0)  # stamps are looked at, not read
        out["mode_0_stamp"] = spool.stamps(report.name, uid).pending
    try:
        spool.open_report(f"_usr_bin_link.{uid}.crash")
    except UnsafeFileError as e:
        out["link"] = e.reason
    try:
        spool.open_report(other)
    except PermissionError:
        out["other"] = "PermissionError"
    with spool.open_report(readable) as report:
        try:
            spool.mark_upload(report)
        except PermissionError:
            out["stamp_other"] = "PermissionError"
print(json.dumps(out))
"""


def test_a_normal_user_stamps_its_own_report(
    crash_dir: Path, alice: pwd.struct_passwd, bob: pwd.struct_passwd, run_as: Callable[..., object]
) -> None:
    other = f"_usr_bin_b.{bob.pw_uid}.crash"
    put(crash_dir, other, uid=bob.pw_uid, gid=bob.pw_gid)
    readable = put(crash_dir, f"_usr_bin_c.{bob.pw_uid}.crash", uid=bob.pw_uid, gid=bob.pw_gid)
    readable.chmod(0o644)
    done = run_as(alice, CHILD, other, readable.name, cwd=crash_dir)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    mine = f"_usr_bin_tool.{alice.pw_uid}"
    assert out == {
        "names": sorted([f"{mine}.crash", f"_usr_bin_link.{alice.pw_uid}.crash", other, readable.name]),
        "pending": True,
        "pending_after": False,
        "mode_0_stamp": False,
        "link": "is a symbolic link",
        "other": "PermissionError",
        "stamp_other": "PermissionError",
    }
    report_gid = os.stat(crash_dir / f"{mine}.crash").st_gid  # the directory's group (setgid)
    check_stamp(crash_dir / f"{mine}.upload", alice.pw_uid, report_gid, b"")
    (crash_dir / f"{mine}.uploaded").chmod(STAMP_MODE)
    check_stamp(crash_dir / f"{mine}.uploaded", alice.pw_uid, report_gid, b"oops-from-user")
    assert leftovers(crash_dir) == []
