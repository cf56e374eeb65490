"""crashd.fs, the one filesystem layer, against real files: symlinks, hard links, FIFOs, sockets,
oversized files, failing writers and a write cut short by RLIMIT_FSIZE."""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from crashd import fs
from tests.test_spool import deadline

BODY = b"0123456789"


def _plain(d: Path) -> Path:
    (d / "f").write_bytes(BODY)
    return d / "f"


def _symlink(d: Path) -> Path:
    (d / "link").symlink_to(_plain(d))
    return d / "link"


def _hard_link(d: Path) -> Path:
    os.link(_plain(d), d / "second")
    return d / "f"


def _fifo(d: Path) -> Path:
    os.mkfifo(d / "fifo")
    return d / "fifo"


def _socket(d: Path) -> Path:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(d / "sock"))
    return d / "sock"


def _directory(d: Path) -> Path:
    (d / "dir").mkdir()
    return d / "dir"


def _deleted(d: Path) -> Path:
    return d / "missing"


# (what is at the path, open_regular's keywords, the refusal; None: opened)
OPEN_CASES: dict[str, tuple[Callable[[Path], Path], dict[str, object], str | None]] = {
    "regular": (_plain, {}, None),
    "symlink refused": (_symlink, {}, "is a symbolic link"),
    "symlink followed when asked": (_symlink, {"follow": True}, None),
    "hard link refused when asked": (_hard_link, {"one_link": True}, "has 2 hard links"),
    "hard link allowed otherwise": (_hard_link, {}, None),
    "FIFO refused without blocking": (_fifo, {}, "is a FIFO, not a regular file"),
    "socket refused": (_socket, {}, "is a socket or a device, not a regular file"),
    "directory refused": (_directory, {}, "is a directory, not a regular file"),
    "oversize refused": (_plain, {"max_size": 9}, "is 10 bytes, over the 9 bytes limit"),
    "at the bound": (_plain, {"max_size": 10}, None),
    "the caller's rule": (_plain, {"refusal": lambda st: f"is owned by uid {st.st_uid}"}, "is owned by uid"),
    "looked at, not read": (_fifo, {"look": True}, "is a FIFO, not a regular file"),
}


@pytest.mark.parametrize("make, kwargs, refusal", OPEN_CASES.values(), ids=OPEN_CASES.keys())
def test_open_regular(
    tmp_path: Path, make: Callable[[Path], Path], kwargs: dict, refusal: str | None
) -> None:
    path = make(tmp_path)
    with deadline():
        if refusal is not None:
            with pytest.raises(fs.UnsafeFileError) as info:
                fs.open_regular(path, **kwargs)
            assert info.value.path == str(path)
            assert refusal in info.value.reason and str(info.value).startswith(f"{path}: ")
            return
        with fs.open_regular(path, **kwargs) as opened:
            assert stat.S_ISREG(opened.stat.st_mode)
            assert os.get_blocking(opened.fd), "plain reads once judged"
            assert os.get_inheritable(opened.fd) is False
            with opened.file() as f:
                assert f.read() == BODY
        assert opened.closed
        opened.close()  # twice is harmless


def test_open_regular_relative_to_a_directory_names_the_file_as_shown(tmp_path: Path) -> None:
    _symlink(tmp_path)
    with fs.directory(tmp_path) as dir_fd, pytest.raises(fs.UnsafeFileError, match=r"^/shown/link: is a sym"):
        fs.open_regular("link", dir_fd=dir_fd, shown="/shown/link")
    with pytest.raises(FileNotFoundError):
        fs.open_regular(_deleted(tmp_path))


def test_reading_with_keep_atime_leaves_apports_seen_mark(tmp_path: Path) -> None:
    """A report's atime newer than its mtime is apport's "seen" mark: crashd reading it must not set it,
    so an unseen crash still gets apport's notification. (relatime would set it: atime <= mtime.)"""
    report = tmp_path / "x.crash"
    report.write_bytes(b"ProblemType: Crash\n")
    os.utime(report, ns=(1_000_000_000, 2_000_000_000))  # unseen: read before it was written
    with fs.open_regular(report, keep_atime=True) as opened:
        assert fs.read_fd(opened.fd, 100) == b"ProblemType: Crash\n"
    assert report.stat().st_atime_ns == 1_000_000_000


def test_keep_atime_reads_a_file_that_is_not_ones_own_plainly(request, run_as, make_user) -> None:
    """O_NOATIME is only the owner's (or root's) to ask: anyone else still reads the file."""
    shared = Path(tempfile.mkdtemp(dir="/var/tmp"))  # the test's own tmp_path is not the user's to reach
    request.addfinalizer(lambda: shutil.rmtree(shared))
    shared.chmod(0o755)
    report = shared / "x.crash"
    report.write_bytes(b"ProblemType: Crash\n")
    report.chmod(0o644)
    code = "from crashd import fs\nwith fs.open_regular(sys.argv[1], keep_atime=True) as f: print(fs.read_fd(f.fd, 99))"
    done = run_as(make_user(), code, str(report))
    assert done.stdout.strip() == "b'ProblemType: Crash\\n'", done.stderr


def test_a_refusal_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(fs.UnsafeFileError("/var/crash/x.0.crash", "is a symbolic link")))
    assert (error.path, error.reason, str(error)) == (
        "/var/crash/x.0.crash", "is a symbolic link", "/var/crash/x.0.crash: is a symbolic link"
    )  # fmt: skip


# (file contents, limit, head, what read_bounded gives; a str: the refusal)
READ_CASES: dict[str, tuple[bytes, int, bool, bytes | str]] = {
    "under the bound": (BODY, 11, False, BODY),
    "at the bound": (BODY, 10, False, BODY),
    "oversize refused": (BODY, 9, False, "is too large: over the 9 bytes limit"),
    "head of a longer file": (BODY, 4, True, b"0123"),
    "empty": (b"", 4, False, b""),
    "past one read of 64 KiB": (b"x" * 200_000, 200_000, False, b"x" * 200_000),
}


@pytest.mark.parametrize("data, limit, head, expected", READ_CASES.values(), ids=READ_CASES.keys())
def test_read_bounded(tmp_path: Path, data: bytes, limit: int, head: bool, expected: bytes | str) -> None:
    (tmp_path / "f").write_bytes(data)
    if isinstance(expected, str):
        with pytest.raises(fs.UnsafeFileError, match=expected):
            fs.read_bounded(tmp_path / "f", limit, head=head)
    else:
        assert fs.read_bounded(tmp_path / "f", limit, head=head) == expected


@pytest.mark.parametrize("make", [_fifo, _symlink, _directory], ids=["FIFO", "symlink", "directory"])
def test_read_bounded_refuses_what_is_not_a_regular_file_without_blocking(
    tmp_path: Path, make: Callable[[Path], Path]
) -> None:
    with deadline(), pytest.raises(fs.UnsafeFileError):
        fs.read_bounded(make(tmp_path), 100)


def test_read_bounded_reads_a_proc_file_whose_size_says_nothing() -> None:
    assert fs.read_bounded("/proc/self/status", 1 << 20, head=True).startswith(b"Name:")


def test_read_fd_continues_after_a_short_read() -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"abc")  # a pipe read returns what is there: a short read
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child writes the rest and leaves
            os.close(r)
            os.write(w, b"def")
            os._exit(0)
        os.close(w)
        w = -1
        assert fs.read_fd(r, 100) == b"abcdef"
        os.waitpid(pid, 0)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


# --- the positional reader ---------------------------------------------------------------------------


def test_positional_reader_reads_at_its_own_offsets(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1024  # 256 KiB: more than one buffer
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        with fs.reader(os.dup(fd)) as one, fs.reader(os.dup(fd)) as two:
            assert one.read(3) == data[:3]
            two.seek(100_000)
            assert two.read(5) == data[100_000:100_005]
            assert one.read(2) == data[3:5], "another reader's seek moved nothing"
            assert one.seek(-10, os.SEEK_END) == len(data) - 10 and one.read() == data[-10:]
            two.seek(7, os.SEEK_CUR)
            assert two.tell() == 100_012 and two.read(1) == data[100_012:100_013]
            assert two.raw.seek(0) == 0 and two.raw.read(4) == data[:4]
            with pytest.raises(ValueError, match="negative seek"):
                two.raw.seek(-1)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0, "the shared file offset was never used"
    finally:
        os.close(fd)


def test_positional_reader_owns_and_judges_its_descriptor(tmp_path: Path) -> None:
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(fs.UnsafeFileError, match=r"^the report descriptor: is a FIFO, not a regular file$"):
        fs.reader(r, shown="the report descriptor")
    with pytest.raises(OSError):
        os.fstat(r)  # closed by the refusal
    fd = os.open(_plain(tmp_path), os.O_RDONLY)
    file = fs.reader(fd)
    file.close()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed with its reader


# --- atomic writes -----------------------------------------------------------------------------------


def _entries(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def _failing(out: BinaryIO) -> None:
    out.write(b"half a report")
    raise RuntimeError("the writer failed")


# (what the old file is, what is written, the error; None: placed)
PLACE_CASES: dict[
    str, tuple[Callable[[Path], Path] | None, bytes | Callable[[BinaryIO], None], type | None]
] = {
    "new, bytes": (None, b"new", None),
    "new, a writer": (None, lambda out: out.write(b"new"), None),
    "replaces a file": (_plain, b"new", None),
    "replaces a symlink, never follows it": (_symlink, b"new", None),
    "a failing writer": (_plain, _failing, RuntimeError),
    "a directory holds the name": (_directory, b"new", IsADirectoryError),
}


@pytest.mark.parametrize("old, content, error", PLACE_CASES.values(), ids=PLACE_CASES.keys())
def test_place_file(
    tmp_path: Path,
    old: Callable[[Path], Path] | None,
    content: bytes | Callable[[BinaryIO], None],
    error: type | None,
) -> None:
    name = old(tmp_path).name if old is not None else "new"
    before = _entries(tmp_path)
    target = (tmp_path / name).resolve() if old is _symlink else None
    with fs.directory(tmp_path) as dir_fd:
        if error is not None:
            with pytest.raises(error):
                fs.place_file(dir_fd, name, content, mode=0o640, sync_dir=True)
            assert _entries(tmp_path) == before, "no temporary is left behind"
            return
        assert fs.place_file(dir_fd, name, content, mode=0o640, times=(1_000_000_000, 2_000_000_000))
    st = (tmp_path / name).lstat()
    assert (tmp_path / name).read_bytes() == b"new"
    assert (stat.S_ISREG(st.st_mode), stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (
        True,
        0o640,
        2_000_000_000,
    )
    assert _entries(tmp_path) == sorted({*before, name})
    if target is not None:
        assert target.read_bytes() == BODY, "the symlink's target is untouched"


def test_place_file_only_over_the_file_that_was_judged(tmp_path: Path) -> None:
    judged = _plain(tmp_path).stat()
    (tmp_path / "g").write_bytes(b"a newer crash")  # made while f lives: another inode
    (tmp_path / "g").rename(tmp_path / "f")
    with fs.directory(tmp_path) as dir_fd:
        assert not fs.place_file(dir_fd, "f", b"rewritten", mode=0o600, expect=judged)
        assert (tmp_path / "f").read_bytes() == b"a newer crash" and _entries(tmp_path) == ["f"]
        assert fs.place_file(dir_fd, "f", b"rewritten", mode=0o600, expect=(tmp_path / "f").stat())
    assert (tmp_path / "f").read_bytes() == b"rewritten"


def test_replace_file_by_path(tmp_path: Path) -> None:
    fs.replace_file(tmp_path / "record.json", b"{}", mode=0o600, sync=False)
    fs.replace_file(tmp_path / "record.json", b"[]", mode=0o644, sync_dir=True)
    assert (tmp_path / "record.json").read_bytes() == b"[]" and _entries(tmp_path) == ["record.json"]
    assert stat.S_IMODE((tmp_path / "record.json").stat().st_mode) == 0o644
    fs.fsync_path(tmp_path / "record.json")
    fs.fsync_path(tmp_path, is_dir=True)


_SHORT_WRITE = textwrap.dedent(
    """
    import os, resource, signal, sys
    from crashd import fs
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    with fs.directory(sys.argv[1]) as dir_fd:
        try:
            fs.place_file(dir_fd, "f", b"x" * 40_000, mode=0o600)
        except OSError as error:
            print(error.errno)
    """
)


def test_a_write_cut_short_renames_nothing_and_leaves_no_temporary(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes the first write short and the next one fail: the torn file never takes the name."""
    _plain(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    run = subprocess.run(
        [sys.executable, "-c", _SHORT_WRITE, str(tmp_path)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "27"  # EFBIG, after a short write of the first 4096 bytes
    assert (tmp_path / "f").read_bytes() == BODY and _entries(tmp_path) == ["f"]


# --- sizes in words ----------------------------------------------------------------------------------

SIZE_CASES = {
    (10, 10): None,
    (11, 10): "is 11 bytes, over the 10 bytes limit",
    (3 * 1024**3, 2 * 1024**3): "is 3 GiB, over the 2 GiB limit",
    (2 * 1024**3 + 1, 2 * 1024**3): "is 2147483649 bytes, over the 2147483648 bytes limit",
    (1536 * 1024, 1024 * 1024): "is 1.5 MiB, over the 1 MiB limit",
}


@pytest.mark.parametrize("size, limit", SIZE_CASES.keys())
def test_size_refusal(size: int, limit: int) -> None:
    assert fs.size_refusal(size, limit) == SIZE_CASES[size, limit]


# -- rewrite_file: crashd's own small records, overwritten in place ---------------------------


def _inode(path: Path) -> int:
    return path.lstat().st_ino


def test_rewrite_file_creates_padded_then_overwrites_in_place(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    assert not fs.rewrite_file(path, b'{"a": 1}', mode=0o600)  # created: atomically, padded
    created = path.read_bytes()
    assert created.startswith(b'{"a": 1}') and created[8:].strip(b" ") == b"" and len(created) % 256 == 0
    assert len(created) >= 8 + 256 and stat.S_IMODE(path.stat().st_mode) == 0o600
    inode = _inode(path)
    assert fs.rewrite_file(path, b'{"a": 22, "b": "longer"}', mode=0o600)  # longer, still fits
    assert fs.rewrite_file(path, b"{}", mode=0o600)  # shorter: the rest is spaces, never a truncate
    assert _inode(path) == inode and len(path.read_bytes()) == len(created)
    assert path.read_bytes().rstrip(b" ") == b"{}"
    assert _entries(tmp_path) == ["record.json"]


def test_rewrite_file_longer_than_the_file_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    fs.rewrite_file(path, b"x", mode=0o600)
    inode, longer = _inode(path), b"y" * 1000
    assert not fs.rewrite_file(path, longer, mode=0o600)
    assert _inode(path) != inode and path.read_bytes().rstrip(b" ") == longer
    assert fs.rewrite_file(path, b"z", mode=0o600)  # and in place again from then on


def _other_owner(path: Path) -> None:
    os.chown(path, 12345, 12345)


def _other_mode(path: Path) -> None:
    path.chmod(0o644)


def _second_link(path: Path) -> None:
    os.link(path, path.with_name("second"))


def _too_big(path: Path) -> None:
    path.write_bytes(b" " * (fs.IN_PLACE_MAX + 1))


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(_other_owner, marks=pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")),
        _other_mode,
        _second_link,
        _too_big,
    ],
)
def test_rewrite_file_never_writes_into_a_file_that_is_not_exactly_its_own(
    tmp_path: Path, spoil: Callable[[Path], None]
) -> None:
    path = tmp_path / "record.json"
    fs.rewrite_file(path, b"old", mode=0o600)
    spoil(path)
    before = path.read_bytes()
    inode = _inode(path)
    assert not fs.rewrite_file(path, b"new", mode=0o600)
    assert _inode(path) != inode and path.read_bytes().rstrip(b" ") == b"new"
    st = path.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode), st.st_nlink) == (os.geteuid(), 0o600, 1)
    if (tmp_path / "second").exists():
        assert (tmp_path / "second").read_bytes() == before, "the other name's file is untouched"


@pytest.mark.parametrize("make", [_symlink, _fifo, _socket, _directory])
def test_rewrite_file_replaces_a_planted_name_never_following_it(
    tmp_path: Path, make: Callable[[Path], Path]
) -> None:
    planted = make(tmp_path)
    if planted.is_dir() and not planted.is_symlink():
        with pytest.raises(OSError):  # rename cannot put a file over a directory: refused loudly
            fs.rewrite_file(planted, b"new", mode=0o600)
        return
    with deadline(5):
        assert not fs.rewrite_file(planted, b"new", mode=0o600)
    assert not planted.is_symlink() and planted.read_bytes().rstrip(b" ") == b"new"
    if (tmp_path / "f").exists():
        assert (tmp_path / "f").read_bytes() == BODY, "the symlink's target is untouched"


def test_a_reader_waits_for_an_in_place_write_under_way(tmp_path: Path) -> None:
    import fcntl
    import threading

    path = tmp_path / "record.json"
    fs.rewrite_file(path, b'{"phase": "posting"}', mode=0o600)
    fd = os.open(path, os.O_WRONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a writer mid-write: what it has written so far is torn
    os.pwrite(fd, b'{"phase": "se', 0)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fs.read_bounded(path, 4096, locked=True)))
    reader.start()
    inode = f":{path.stat().st_ino} "
    with deadline(5):  # the kernel lists the reader as waiting on the writer's lock
        while not any("-> FLOCK" in line and inode in line for line in Path("/proc/locks").read_text().splitlines()):
            reader.join(0.001)
    assert got == [], "the reader waits while the writer holds the lock"
    os.pwrite(fd, b'{"phase": "sent"}   ', 0)
    os.close(fd)  # the write is complete: the lock goes with the descriptor
    reader.join(5)
    assert got and got[0].rstrip(b" ") == b'{"phase": "sent"}'
