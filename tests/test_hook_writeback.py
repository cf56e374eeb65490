"""Issue 11, robustness 6 and vulnerability 7 (write-back part): what hooks add never grows a report past
its bound, and a sparse report is never rewritten into real data.

Real reports in a real 3777 crash directory, owned by a throwaway user, enriched by a real hook that runs
as that user through :func:`crashd.collector.collect`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crashd.collector import Collected, HookOptions, collect
from crashd.hooks import HookRoots
from crashd.report import Limits
from crashd.spool import Spool, UnsafeFileError

HEADER = b"ProblemType: Crash\nExecutablePath: /usr/bin/app\nPackage: app 1.0\n"
HOOK = "def add_info(report, ui=None):\n    report['Added'] = 'x' * 1000\n"


@pytest.fixture
def world(make_user: Callable[[], pwd.struct_passwd]) -> Iterator[tuple[Path, HookOptions, pwd.struct_passwd]]:
    base = Path(tempfile.mkdtemp(prefix="crashd-writeback-"))
    try:
        base.chmod(0o755)
        crash_dir = base / "crash"
        crash_dir.mkdir()
        crash_dir.chmod(0o3777)
        general = base / "general"
        general.mkdir(mode=0o755)
        (general / "add.py").write_text(HOOK)
        roots = HookRoots(general=(general,), package=(), opt=base / "none")
        yield crash_dir, HookOptions(roots=roots, timeout=30), make_user()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def place(crash_dir: Path, user: pwd.struct_passwd, body: bytes, *, length: int | None = None) -> Path:
    path = crash_dir / f"_usr_bin_app.{user.pw_uid}.crash"
    with open(path, "wb") as f:
        f.write(body)
        if length is not None:
            f.truncate(length)  # a hole up to *length*; the last byte ends the value's line
            f.seek(length - 1)
            f.write(b"\n")
    os.chown(path, user.pw_uid, user.pw_gid)
    path.chmod(0o640)
    return path


def enrich(crash_dir: Path, hooks: HookOptions, max_report_size: int | None = None) -> object:
    spool = Spool(crash_dir) if max_report_size is None else Spool(crash_dir, max_report_size=max_report_size)
    with spool:
        name = spool.report_names()[0]
        with spool.open_report(name) as opened:
            result = collect(spool, opened, Limits(), stamp=False, hooks=hooks)
            if isinstance(result, Collected):
                result.close()
            return result


def temp_files(crash_dir: Path) -> list[str]:
    return [name for name in os.listdir(crash_dir) if name.endswith(".tmp")]


def test_hook_fields_that_would_pass_the_size_bound_are_not_written(world) -> None:
    crash_dir, hooks, user = world
    path = place(crash_dir, user, HEADER)
    before = os.stat(path)
    # The bound leaves room for the report, not for the 1000 bytes the hook adds.
    result = enrich(crash_dir, hooks, max_report_size=before.st_size + 200)
    assert isinstance(result, Collected)  # sent as it was
    after = os.stat(path)
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    assert path.read_bytes() == HEADER
    assert temp_files(crash_dir) == []
    # With room for them, the same hook's fields are written.
    assert isinstance(enrich(crash_dir, hooks, max_report_size=before.st_size + 4096), Collected)
    assert b"Added: " + b"x" * 1000 in path.read_bytes()


def test_a_sparse_report_is_refused_before_it_is_read_or_rewritten(world) -> None:
    """Issue 11 vuln 7: refused on ``fstat`` by the spool's open (the one place the rule lives), so
    neither hooks nor a rewrite ever see it; the file is left exactly as it was."""
    crash_dir, _hooks, user = world
    length = 16 << 20
    path = place(crash_dir, user, HEADER + b"Blob:\n ", length=length)
    before = os.stat(path)
    assert before.st_blocks * 512 < length // 8  # the file system made a hole
    with Spool(crash_dir) as spool, pytest.raises(UnsafeFileError, match="is sparse: 16 MiB long"):
        spool.open_report(spool.report_names()[0])
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_blocks) == (before.st_ino, length, before.st_blocks)
    assert temp_files(crash_dir) == []


