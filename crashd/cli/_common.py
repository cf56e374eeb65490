"""What the commands share when they run: the parts a command builds from the command line and the
configuration (settings, spool, uploader, hook options, backoff, tidy, consent gate) and the output
several commands share, so that each command module holds only its own options, steps and wording.

Imported by a command when it runs, not when the parser is built: this is where the library comes in.
The exit codes, the errors :func:`crashd.cli.main` maps to them and the shared options are
:mod:`crashd.cli._base`'s (standard library only), re-exported here.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import pwd
import signal
import sys
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

from crashd.cli._base import (
    EXIT_CONSENT,
    EXIT_INCOMPLETE,
    EXIT_INVALID,
    EXIT_NOT_ALLOWED,
    EXIT_OK,
    EXIT_USAGE,
    NotAllowed,
    UsageError,
    add_locations,
    fail,
    seconds_argument,
)
from crashd.config import ConfigError, Settings, load_settings
from crashd.consent import Consent, ConsentReader, may_send
from crashd.hooks.options import HookOptions
from crashd.identity import system_identifier
from crashd.lifecycle import Gate, Status
from crashd.network import read_conditions
from crashd.spool import Spool, UnsafeFileError
from crashd.state import StateStore
from crashd.tidy import Tidy
from crashd.uploader import DirectUploader, HttpTransport, Uploader
from crashd.worker import WorkerUploader

__all__ = [  # the re-exports of crashd.cli._base too, so that a command imports its names from one place
    "EXIT_CONSENT",
    "EXIT_INCOMPLETE",
    "EXIT_INVALID",
    "EXIT_NOT_ALLOWED",
    "EXIT_OK",
    "EXIT_USAGE",
    "WORKER_FALLBACK_USER",
    "NotAllowed",
    "UsageError",
    "add_locations",
    "consent_gate",
    "exit_on_signals",
    "fail",
    "hook_options",
    "identifier_for",
    "make_uploader",
    "network_now",
    "open_spool",
    "print_statuses",
    "seconds_argument",
    "settings_from",
    "switched_off",
    "tidy_for",
    "worker_name",
    "worker_user",
]

log = logging.getLogger("crashd")

# Who runs the upload worker when unprivileged_user does not exist: root never does the HTTP itself.
WORKER_FALLBACK_USER = "nobody"


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings, with the command's ``--url``, ``--crash-dir`` and ``--state-dir`` (if it has them)."""
    names = ("url", "crash_dir", "state_dir")
    return load_settings(args.config, overrides={name: getattr(args, name, None) for name in names})


def open_spool(directory: Path) -> Spool:
    try:
        return Spool(directory)
    except FileNotFoundError:
        raise UsageError(f"the crash directory {directory} does not exist") from None
    except (NotADirectoryError, PermissionError) as error:
        raise UsageError(f"the crash directory {directory} cannot be used: {error.strerror}") from None
    except UnsafeFileError as error:
        raise UsageError(f"the crash directory {error}") from None


def identifier_for(settings: Settings) -> str:
    try:
        return system_identifier(settings.state_dir)
    except (LookupError, ValueError) as error:
        raise UsageError(f"{error} (set CRASH_DB_IDENTIFIER to choose one)") from None


def make_uploader(settings: Settings, transport_deadline: float | None) -> Uploader:
    """Where the HTTP happens: as root, in the unprivileged upload worker (DESIGN.md §2); else right here.

    A user flushing their own reports has no privilege to shed. Root never opens a
    network socket itself (fail closed, issue 11): without ``unprivileged_user``
    (sysusers.d/crashd.conf not applied, e.g. after ``pip install``) the worker
    runs as ``nobody``, said once in the log; without that either, nothing is sent.
    """
    if os.geteuid() != 0:
        transport = HttpTransport(settings.connect_timeout, settings.read_timeout, transport_deadline)
        return DirectUploader(transport)
    user = worker_user(settings.unprivileged_user)
    try:
        return WorkerUploader(user, settings.connect_timeout, settings.read_timeout, transport_deadline,
                              tls=urllib.parse.urlsplit(settings.url).scheme != "http")  # fmt: skip
    except ValueError as error:  # uid or gid 0: the point of the split would be lost
        raise ConfigError(f"unprivileged_user {settings.unprivileged_user!r}: {error}") from None


def worker_user(name: str) -> pwd.struct_passwd:
    """*name*'s account, else ``nobody``'s (said once); without either, a ConfigError saying what to do."""
    chosen = worker_name(name)
    try:
        user = pwd.getpwnam(chosen)
    except KeyError:
        raise ConfigError(
            f"unprivileged_user {name!r} does not exist, nor does {WORKER_FALLBACK_USER!r}: root never "
            f"uploads itself; {_create_hint(name)}"
        ) from None
    if chosen != name:
        log.warning("the user %r for the upload worker does not exist: it runs as %r instead; %s",
                    name, chosen, _create_hint(name))  # fmt: skip
    return user


def worker_name(name: str) -> str:
    """The user the upload worker runs as: *name*, or ``nobody`` when *name* does not exist. The hooks
    of root's reports must never share it (``HookOptions.worker_user``)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return WORKER_FALLBACK_USER
    return name


def _create_hint(name: str) -> str:
    return f"create it with 'systemd-sysusers' (crashd's sysusers.d file) or 'useradd --system {name}'"


def network_now(settings: Settings) -> Gate | None:
    """What NetworkManager says now (one look), for the commands that do not follow it; None without it."""
    return read_conditions(settings.metered)


def exit_on_signals() -> None:
    """Stop at once on SIGTERM/SIGINT, even mid-upload: every step is recorded before it is taken.

    Waiting for a hung server to time out would break "stop within a second";
    a report cut off mid-POST is resent next time and daisy answers 409.
    """

    def stop(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        print(f"crashd: stopped by {name}; unfinished reports stay pending", file=sys.stderr)
        os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


def hook_options(settings: Settings) -> HookOptions:
    """The settings' hook options, with the user the upload worker really runs as: hooks never share it."""
    return dataclasses.replace(settings.hooks, worker_user=worker_name(settings.unprivileged_user))


def tidy_for(spool: Spool, store: StateStore, settings: Settings) -> Tidy:
    """Duplicate collapse and the disk budget (crashd.tidy); its ledger beside the records, if usable."""
    state_dir = settings.state_dir if store.directory is not None else None
    return Tidy(
        spool,
        store,
        state_dir,
        window=settings.duplicate_window,
        max_use=settings.max_use,
        limits=settings.limits,
    )


# -- consent --------------------------------------------------------------------------------


def consent_gate(settings: Settings, config: Path) -> Gate:
    """Consent as the daemon asks it, per report: a change to any of its files applies to the next report
    (read again only then: :class:`crashd.consent.ConsentReader`)."""
    read = ConsentReader(settings.state_dir, config=config)

    def gate(marked_for_upload: bool) -> str | None:
        consent = read()
        if may_send(consent, marked_for_upload=marked_for_upload):
            return None
        if not consent.report_crashes:
            return switched_off(consent)
        return "waiting for someone to send it: automatic reporting is off"

    return gate


def switched_off(consent: Consent) -> str:
    why = consent.reason or "ReportCrashes is off; 'crashd prefs set ReportCrashes on' switches it on"
    return f"reporting is switched off ({why})"


# -- output ---------------------------------------------------------------------------------


def print_statuses(statuses: Iterable[Status], crash_dir: Path) -> None:
    """One line a report (``status``, ``upload-all``), or that there are none."""
    printed = False
    for status in statuses:
        printed = True
        notes = [f"OOPS {status.oops_id}" if status.oops_id else ""]
        if status.attempts:
            notes.append(f"{status.attempts} attempt{'s' if status.attempts > 1 else ''}")
        if status.next_attempt:
            notes.append(f"next {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(status.next_attempt))}")
        if status.detail:
            notes.append(f"({status.detail})")
        print(f"{status.state.value:<9} {status.name}  {'  '.join(filter(None, notes))}".rstrip())
    if not printed:
        print(f"no reports in {crash_dir}")
