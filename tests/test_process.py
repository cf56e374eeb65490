"""crashd.process, the one door for children and privileges: real processes, no mocks."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from crashd import process
from tests.daemon_run import wait_until


@pytest.mark.parametrize(
    ("status", "sentence"),
    [
        (0, "exited with status 0"),
        (3, "exited with status 3"),
        (255, "exited with status 255"),
        (-signal.SIGKILL, "was killed by signal 9 (SIGKILL)"),
        (-signal.SIGSEGV, "was killed by signal 11 (SIGSEGV)"),
        (-200, "was killed by signal 200"),
    ],
)
def test_exit_status_sentences(status: int, sentence: str) -> None:
    assert process.exit_sentence(status) == sentence


@pytest.mark.parametrize(
    ("script", "failure"),
    [
        ("exit 0", None),
        ("exit 3", "exited with status 3"),
        ("kill -9 $$", "was killed by signal 9 (SIGKILL)"),
    ],
)
def test_a_run_says_how_the_child_ended(script: str, failure: str | None) -> None:
    assert process.run(["/bin/sh", "-c", script], timeout=60).failure == failure


def test_the_environment_is_an_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    source = {"HOME": "/h", "SECRET": "x", "http_proxy": "http://p", "EMPTY": ""}
    assert process.environment(passed=("http_proxy", "EMPTY"), source=source, USER="u") == {
        "PATH": process.SAFE_PATH, "LANG": "C.UTF-8", "http_proxy": "http://p", "USER": "u",
    }  # fmt: skip
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("LD_PRELOAD", "/x.so")
    monkeypatch.setenv("HOME", "/home/someone")
    done = process.run(["/usr/bin/env", "-0"], timeout=60)
    names = {entry.partition(b"=")[0].decode() for entry in done.output.split(b"\0") if entry}
    assert done.failure is None and names <= {"PATH", "LANG", *process.IDENTITY}, names
    assert "HOME" in names


def test_stdin_is_dev_null_and_no_descriptor_leaks() -> None:
    leaked = os.open(os.devnull, os.O_RDONLY)  # inheritable, as a careless caller's would be
    os.set_inheritable(leaked, True)
    script = f"readlink /proc/$$/fd/0; test -e /proc/$$/fd/{leaked} && echo leaked || echo closed"
    try:
        done = process.run(["/bin/sh", "-c", script], timeout=60)
    finally:
        os.close(leaked)
    assert done.output.decode().split() == ["/dev/null", "closed"]


def test_a_timeout_kills_the_whole_group_and_reaps_the_child() -> None:
    script = "echo $$; sleep 600 & echo $!; wait"
    done = process.run(["/bin/sh", "-c", script], timeout=3)
    assert done.status is None and done.problem == "timed out after 3 seconds"
    shell, sleeper = (int(pid) for pid in done.output.split())
    with pytest.raises(ChildProcessError):  # reaped: no zombie of ours is left
        os.waitpid(shell, os.WNOHANG)
    assert wait_until(lambda: process.parent_of(sleeper) is None or _state(sleeper) == "Z", 30)


def test_too_much_output_stops_the_child() -> None:
    done = process.run(["/usr/bin/yes"], timeout=60, cap=1 << 16)
    assert (
        done.status is None and done.problem == "wrote more than 0.0625 MiB" and len(done.output) == 1 << 16
    )


def test_kept_lines_are_streamed_and_filtered() -> None:
    done = process.run(
        ["/bin/sh", "-c", "printf 'a 1\\nb 2\\na 3'"], timeout=60, keep=lambda line: line[:1] == b"a"
    )
    assert done.status == 0 and done.output == b"a 1\na 3\n"


def test_proc_parsing() -> None:
    assert process.parent_of(os.getpid()) == os.getppid()
    assert process.parse_status(b"Name:\tx\nUid:\t1\t1\t1\t1\nUid:\t0\nbroken\n") == {
        "Name": "x",
        "Uid": "1\t1\t1\t1",
    }
    assert process.read_status()["Pid"] == str(os.getpid())


def test_privileges_are_dropped_one_way(make_user: Callable[[], pwd.struct_passwd]) -> None:
    user = make_user()
    groups = os.getgrouplist(user.pw_name, user.pw_gid)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop, then say what the kernel says
        try:
            os.close(read)
            process.drop_privileges(user.pw_uid, user.pw_gid, groups)
            os.write(write, json.dumps(process.read_status()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        status = json.loads(f.read() or b"{}")
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert status["Uid"].split() == [str(user.pw_uid)] * 4 and status["Gid"].split() == [str(user.pw_gid)] * 4
    assert sorted(int(g) for g in status["Groups"].split()) == sorted(set(groups))
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0 and status["NoNewPrivs"] == "1"


def test_root_is_refused() -> None:
    with pytest.raises(process.PrivilegeError, match="uid or gid 0"):
        process.drop_privileges(0, 1000)


def _state(pid: int) -> str | None:
    try:
        return process.read_status(pid)["State"][:1]
    except OSError:
        return None


_HEAP_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from crashd import process

def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4

blocks = [bytes(2000) + bytes([i % 256]) for i in range(20_000)]  # ~40 MB of malloc'd (not mmap'd) blocks
kept = blocks[::500]  # a few survivors keep the heap from shrinking by itself
del blocks
before = rss_kib()
released = process.release_free_memory()
print(released, before - rss_kib())
"""


@pytest.mark.skipif(
    "CS_GNU_LIBC_VERSION" not in os.confstr_names or not os.confstr("CS_GNU_LIBC_VERSION"), reason="glibc only"
)
def test_free_heap_pages_go_back_to_the_system() -> None:
    """What the idle daemon does after a burst: ~40 MB freed but held by glibc is returned."""
    out = subprocess.run(
        [sys.executable, "-I", "-c", _HEAP_SCRIPT, str(Path(process.__file__).parents[1])],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()  # fmt: skip
    assert out[0] == "True"
    assert int(out[1]) > 20_000, f"only {out[1]} KiB went back"
