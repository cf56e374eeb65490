"""Who a report's hooks run as, and with which Python.

A hook runs as the owner of the ``.crash`` file, with that user's groups and
home; a report owned by root runs its hooks as the unprivileged ``crashd-hook``
system user instead (the ``hook_user`` setting), never as the upload worker's
``crashd``. No path here ever yields uid or gid 0 (DESIGN.md §6).

The interpreter is the ``hook_python`` setting, ``/usr/bin/python3`` by default:
the system's Python, the one package hooks are written for and the one that
imports the system's real apport where it is installed. It must be one the hook
user can execute, at least 3.11.
"""

from __future__ import annotations

import functools
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from crashd import process
from crashd.errors import CrashdError

__all__ = ["CHILD", "Account", "HookSetupError", "account_for", "interpreter_for"]

CHILD = Path(__file__).resolve().with_name("child.py")
SYSTEM_PYTHON = "/usr/bin/python3"
_READ, _EXEC = 4, 1


class HookSetupError(CrashdError, RuntimeError):
    """Hooks cannot run for this report at all (no user to run them as, no usable Python).

    ``str(e)`` is the reason; :func:`crashd.hooks.run_hooks` records it for every
    hook it would have run instead of raising.
    """


@dataclass(frozen=True)
class Account:
    """A user hooks run as: never root."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    home: str

    @classmethod
    def from_passwd(cls, entry: pwd.struct_passwd) -> Account:
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise HookSetupError(f"user {entry.pw_name} has uid or gid 0; hooks never run as root")
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        return cls(entry.pw_uid, entry.pw_gid, groups, entry.pw_name, entry.pw_dir or "/")

    def environment(self) -> dict[str, str]:
        """The child's whole environment: built from an allow-list, nothing inherited."""
        return process.environment(HOME=self.home, USER=self.name, LOGNAME=self.name)


def account_for(owner_uid: int, fallback_user: str, worker_user: str | None = None) -> Account:
    """The account for a report owned by *owner_uid*: its owner, or *fallback_user* (the ``hook_user``
    setting) for root's reports — and for reports of *worker_user*, the upload worker's user.

    HookSetupError when that account does not exist, when it is the worker's user (a hook must not be
    able to signal or read the process that talks to the network), or when this process is not root
    and the account is not its own (only root can switch users).
    """
    worker_uid = _uid_of(worker_user)
    use_fallback = owner_uid == 0 or owner_uid == worker_uid
    try:
        entry = pwd.getpwnam(fallback_user) if use_fallback else pwd.getpwuid(owner_uid)
    except KeyError:
        who = f"the system user {fallback_user!r}" if use_fallback else f"uid {owner_uid}"
        raise HookSetupError(f"hooks not run: {who} does not exist") from None
    account = Account.from_passwd(entry)
    if account.uid == worker_uid:
        raise HookSetupError(
            f"hooks not run: {account.name} is also the upload worker's user; set hook_user to another user"
        )
    if os.geteuid() != 0 and account.uid != os.geteuid():
        raise HookSetupError(f"hooks not run: only root can run them as {account.name} (uid {account.uid})")
    return account


def _uid_of(user: str | None) -> int | None:
    if user is None:
        return None
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def interpreter_for(account: Account, python: str = SYSTEM_PYTHON) -> str:
    """*python* (the ``hook_python`` setting), once checked: *account* can run it and read the child, >= 3.11.

    Hooks are written for the system's ``python3``, where the real apport is
    importable when it is installed; never the daemon's own interpreter, which
    may be a venv that hides it (issue 12).
    """
    for part in (CHILD, CHILD.with_name("hook_api.py"), CHILD.parent.parent / "process.py"):  # what it loads
        if not _reachable(str(part), account, _READ):
            raise HookSetupError(f"hooks not run: {account.name} cannot read {part}")
    if _reachable(python, account, _EXEC) and _recent_enough(python):
        return python
    raise HookSetupError(f"hooks not run: {account.name} cannot run {python} (hook_python), or it is < 3.11")


@functools.cache
def _recent_enough(python: str) -> bool:
    try:
        done = process.run([python, "-I", "-c", "import sys; sys.exit(sys.version_info < (3, 11))"],
                           timeout=30)  # fmt: skip
    except OSError:
        return False
    return done.status == 0


def _reachable(path: str, account: Account, want: int) -> bool:
    """Whether *account* may search every directory down to *path* and has *want* on it.

    Judged from mode bits (ACLs are not read), for the resolved path.
    """
    real = Path(os.path.realpath(path))
    try:
        for directory in reversed(real.parents):
            if not _allowed(os.stat(directory), account, _EXEC):
                return False
        return _allowed(os.stat(real), account, want)
    except OSError:
        return False


def _allowed(st: os.stat_result, account: Account, want: int) -> bool:
    if st.st_uid == account.uid:
        bits = stat.S_IMODE(st.st_mode) >> 6
    elif st.st_gid in account.groups:
        bits = stat.S_IMODE(st.st_mode) >> 3
    else:
        bits = stat.S_IMODE(st.st_mode)
    return bits & want == want
