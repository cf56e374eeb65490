"""Shared fixtures for tests that switch uids: throwaway users, a way to run
Python as one of them, and a tmp_path they can reach.

The suite runs as root (DESIGN.md §11); these fixtures skip their tests otherwise.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon_run import crash_dir_at
from tests.daisy import DaisyServer

REPO_ROOT = Path(__file__).resolve().parent.parent
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def _tool(name: str) -> str:
    path = shutil.which(name, path=_SBIN_PATH)
    if path is None:
        pytest.skip(f"{name} not found")
    return path


@pytest.hookimpl(tryfirst=True)  # before pytest's tmp_path plugin reads --basetemp
def pytest_configure(config: pytest.Config) -> None:
    """Without ``--basetemp``, each run gets its own base directory, ``/tmp/crashd-pytest-*/t``.

    pytest's default base, ``/tmp/pytest-of-root``, is shared by every run on the machine, and each
    run starting resets its mode to 0700: that locks out the throwaway users of another run's
    :func:`user_tmp_path` mid-test, so two ``make check`` in parallel failed each other's tests.
    A base of our own has no ancestor another run touches. It is removed when the run passes, and
    kept (its path printed) when it fails, like pytest's ``tmp_path_retention_policy = "failed"``.
    """
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        own = Path(tempfile.mkdtemp(prefix="crashd-pytest-"))
        config.option.basetemp = str(own / "t")
        config.stash[_OWN_BASETEMP] = own


_OWN_BASETEMP = pytest.StashKey[Path]()


@pytest.hookimpl(trylast=True)  # after the session fixtures' teardown
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    own = session.config.stash.get(_OWN_BASETEMP, None)
    if own is None:
        return
    if exitstatus == 0 or not (own / "t").exists():
        shutil.rmtree(own, ignore_errors=True)
    else:
        print(f"\ntemporary files of this run kept in {own}", file=sys.stderr)


@pytest.fixture(scope="session")
def make_user() -> Iterator[Callable[[], pwd.struct_passwd]]:
    """A factory for throwaway users ``crashdt-<random>``, each with its own
    group and no home; all of them (and their groups) are deleted at the end of
    the session, whatever happened."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create throwaway users")
    useradd, userdel, groupdel = _tool("useradd"), _tool("userdel"), _tool("groupdel")
    created: list[str] = []

    def make() -> pwd.struct_passwd:
        name = f"crashdt-{secrets.token_hex(4)}"
        created.append(name)  # before useradd: clean up even after a partial failure
        subprocess.run(
            [useradd, "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)

    try:
        yield make
    finally:
        from crashd.hooks import host

        host.close_all()  # idle hook hosts run as these users: userdel refuses a user with processes
        for name in created:
            subprocess.run([userdel, name], capture_output=True, check=False)
            with contextlib.suppress(KeyError):
                grp.getgrnam(name)
                subprocess.run([groupdel, name], capture_output=True, check=False)


RunAs = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="session")
def run_as(make_user: Callable[[], pwd.struct_passwd]) -> RunAs:
    """``run_as(user, code, *args, cwd=None)`` runs ``python -I -c code args``
    as ``user`` (its uid, primary gid and no other groups) with ``crashd``
    importable, and returns the completed process (text output, not checked).

    The test interpreter may live under a 0700 directory (pyenv in /root), so
    the first interpreter of at least 3.11 that a throwaway user can execute
    is used.
    """
    probe = make_user()
    python = None
    for candidate in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        with contextlib.suppress(OSError):
            done = subprocess.run(
                [candidate, "-I", "-c", "import sys; sys.exit(sys.version_info < (3, 11))"],
                user=probe.pw_uid,
                group=probe.pw_gid,
                extra_groups=[],
                cwd="/",
                capture_output=True,
                check=False,
            )
            if done.returncode == 0:
                python = candidate
                break
    if python is None:
        pytest.skip("no Python >= 3.11 that an unprivileged user can run")

    def run(
        user: pwd.struct_passwd, code: str, *args: str, cwd: str | os.PathLike[str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        prelude = f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        return subprocess.run(
            [python, "-I", "-c", prelude + code, *args],
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            cwd=cwd or "/",
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run


@pytest.fixture
def user_tmp_path(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path``, made reachable by other users: search permission (o+x,
    never read) is added to it and each ancestor that lacks it — pytest makes
    them 0700 — and removed again afterwards."""
    changed: list[tuple[Path, int]] = []
    for directory in [tmp_path, *tmp_path.parents]:
        mode = stat.S_IMODE(directory.stat().st_mode)
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)
            changed.append((directory, mode))
    try:
        yield tmp_path
    finally:
        for directory, mode in changed:
            directory.chmod(mode)


@pytest.fixture(scope="session", autouse=True)
def system_state_untouched() -> Iterator[None]:
    """No test may write crashd's real state directory: every run passes a scratch --state-dir."""
    real = Path("/var/lib/crashd")
    existed = real.exists()
    yield
    assert existed or not real.exists(), f"a test created {real}; pass --state-dir"


@pytest.fixture(scope="session", autouse=True)
def no_real_system_bus() -> Iterator[None]:
    """A daemon started by a test must never take crashd's names on the machine's real system bus.

    Tests of the D-Bus service start a private bus and pass its address to their children.
    """
    saved = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = "unix:path=/nonexistent/crashd-tests-use-a-private-bus"
    yield
    if saved is None:
        os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
    else:
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = saved


@pytest.fixture
def crash_dir(tmp_path: Path) -> Path:
    """An empty crash directory with /var/crash's mode (3777: sticky, setgid, writable by all)."""
    return crash_dir_at(tmp_path / "crash")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """An empty state directory, root's 0700 as a test's own."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    return state


@pytest.fixture
def daisy() -> Iterator[DaisyServer]:
    """A loopback daisy for one test; a bug in the server itself fails the test."""
    with DaisyServer() as server:
        yield server
        assert server.errors == []
