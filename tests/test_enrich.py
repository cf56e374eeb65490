"""Collection runs a report's hooks once, as its owner, and writes what they add into the report."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from crashd.report import read_report
from tests.crashd_run import write_config
from tests.daisy import DaisyServer
from tests.test_faults import upload_all
from tests.test_upload_all import crash, write

HOOK = """
import os
def add_info(report, ui=None):
    report["EnrichedBy"] = "uid %d" % os.getuid()
    report["Multi"] = "line one\\nline two"
"""


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory every throwaway user can reach (pytest's tmp_path lives under a 0700 parent)."""
    path = Path(tempfile.mkdtemp(prefix="crashd-enrich-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def setup(world_dir: Path, make_user):
    crash_dir = world_dir / "crash"
    crash_dir.mkdir()
    crash_dir.chmod(0o3777)
    hooks = world_dir / "hooks"
    hooks.mkdir(mode=0o755)
    user = make_user()
    config = write_config(world_dir / "crashd.conf", hook_dirs=str(hooks))
    return crash_dir, hooks, user, config


def test_hooks_run_once_as_the_owner_and_their_fields_are_sent(setup):
    crash_dir, hooks, user, config = setup
    (hooks / "app.py").write_text(HOOK)
    core = os.urandom(20_000)
    report = write(
        crash_dir / f"_usr_bin_app.{user.pw_uid}.crash",
        crash("app", Package="app 1.0", CoreDump=core),
        (user.pw_uid, user.pw_gid),
    )
    report.chmod(0o640)
    with DaisyServer(core_policy="always") as daisy:
        run = upload_all(crash_dir, daisy.url, config=config)
        assert run.code == 0, run.stderr
        document = daisy.reports[0].document
        assert document["EnrichedBy"] == f"uid {user.pw_uid}"  # as the crashing user, never root
        assert document["Multi"] == "line one\nline two"
        assert document["_HooksRun"] == "yes"
        assert daisy.cores[0].decoded_sha256 == hashlib.sha256(core).hexdigest()  # the core, untouched

        st = report.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (user.pw_uid, user.pw_gid, 0o640)
        with report.open("rb") as f:
            stored = read_report(f)
            assert stored.text_bytes("EnrichedBy") == f"uid {user.pw_uid}".encode()
            assert b"".join(stored.chunks("CoreDump")) == core
        assert not [p for p in crash_dir.iterdir() if p.name.startswith(".")]  # no temporary left behind

        (hooks / "app.py").write_text(HOOK.replace("EnrichedBy", "Again"))
        report.with_suffix(".upload").touch()  # asked again: sent again, but not enriched again
        assert upload_all(crash_dir, daisy.url, config=config).code == 0
        assert "Again" not in daisy.reports[-1].document


def test_unreportable_reason_makes_the_report_invalid(setup):
    crash_dir, hooks, user, config = setup
    (hooks / "app.py").write_text('def add_info(report):\n    report["UnreportableReason"] = "not ours"\n')
    write(
        crash_dir / f"_usr_bin_app.{user.pw_uid}.crash",
        crash("app", Package="app 1.0"),
        (user.pw_uid, user.pw_gid),
    )
    with DaisyServer() as daisy:
        run = upload_all(crash_dir, daisy.url, config=config)
        (entry,) = run.json["reports"]
        assert entry["state"] == "invalid" and "not ours" in entry["detail"]
        assert daisy.reports == []


def test_a_package_name_that_would_name_a_path_is_invalid(setup):
    crash_dir, _hooks, user, config = setup
    write(
        crash_dir / f"_usr_bin_app.{user.pw_uid}.crash",
        crash("app", Package="../../x 1"),
        (user.pw_uid, user.pw_gid),
    )
    with DaisyServer() as daisy:
        (entry,) = upload_all(crash_dir, daisy.url, config=config).json["reports"]
        assert entry["state"] == "invalid" and "Package" in entry["detail"]
        assert daisy.reports == []


def test_reports_already_collected_by_apport_are_left_as_they_are(setup):
    crash_dir, hooks, user, config = setup
    (hooks / "app.py").write_text(HOOK)
    report = write(
        crash_dir / f"_usr_bin_app.{user.pw_uid}.crash",
        crash("app", Package="app 1.0", Dependencies="libc6 2.39"),
        (user.pw_uid, user.pw_gid),
    )
    before = report.read_bytes()
    with DaisyServer() as daisy:
        assert upload_all(crash_dir, daisy.url, config=config).code == 0
        assert "EnrichedBy" not in daisy.reports[0].document
    assert report.read_bytes() == before
