"""``crashd daemon``: the service; the parts built from the settings, the loop in :mod:`crashd.daemon`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crashd.cli._base import add_locations, seconds_argument

if TYPE_CHECKING:
    from crashd.config import Settings
    from crashd.lifecycle import Gate
    from crashd.spool import Spool
    from crashd.uploader import Uploader

NAME = "daemon"
# The root daemon loads no OpenSSL: it speaks no TLS (root's HTTP is the upload worker's, a process of its
# own, DESIGN.md §2) and hashes only names and the machine id, which Python's own sha256 and sha512 do as
# well. libcrypto, libssl and the ssl module are ~4 MiB of an idle daemon's 24 (issue 15); without them
# the TLS stack is not even in root's address space. asyncio, hashlib and hmac take them only if present;
# anything else that asks for them fails at once with ModuleNotFoundError. Nor bz2 and lzma, which crashd
# never uses (reports are gzip and zlib): shutil imports them for the archive formats it offers, and the
# daemon imports shutil (asyncinotify's ctypes.util, to find libc); ~0.2 MiB with their libraries, which
# shutil does without. Each group is one library, kept out together.
WITHOUT = (("ssl", "_ssl", "_hashlib"), ("bz2", "_bz2"), ("lzma", "_lzma"))


def prepare() -> None:
    """What ``crashd daemon`` does before anything of crashd's library is imported (crashd.cli.main calls
    it first): as root, keep OpenSSL, bz2 and lzma out of the process. A user's daemon speaks HTTPS itself;
    and a group already loaded (crashd imported by another program) is left as it is: keeping the rest of
    its library out would save nothing."""
    if os.geteuid() != 0:
        return
    for group in WITHOUT:
        if not any(name in sys.modules for name in group):
            for name in group:
                sys.modules[name] = None  # type: ignore[assignment]  # "import ssl" raises ModuleNotFoundError


def add_parser(commands: Any) -> None:
    from crashd.config import Settings  # the library, after prepare(): see crashd.cli

    daemon = commands.add_parser(
        NAME,
        help="the service: watch the crash directory and send reports (systemd starts it)",
        description="Watch the crash directory with inotify and deliver reports as consent allows: with "
        "automatic reporting every new report, otherwise those a UI marked .upload; failures are retried "
        "with backoff. Follows NetworkManager: offline nothing is attempted; on a metered network cores wait "
        "for an unmetered one (config key metered = send | reports-only | hold), and go out as soon as the "
        "network changes. Exits 0 when nothing is due within the idle timeout (crashd.path and crashd.timer "
        "start it again). Honours SIGTERM at once.",
    )
    daemon.add_argument("--once", action="store_true", help="process what is there now, then exit")
    daemon.add_argument(
        "--idle-timeout",
        type=seconds_argument,
        metavar="S",
        help=f"exit after S idle seconds ({Settings.idle_timeout:g})",
    )
    add_locations(daemon, url=True)


def run(args: argparse.Namespace) -> int:
    # Imported here: the service's dependencies (asyncio, inotify, dbus-fast) would cost every other
    # command its start-up time and ~6 MiB, and the library those of the service.
    from crashd.cli._common import consent_gate, make_uploader, open_spool, settings_from
    from crashd.config import DEFAULT_CONFIG
    from crashd.delivery import start_uploader_early

    if not args.once:  # the service serves the bus: a missing or too-old dbus-fast is said first, alone
        import crashd.dbus_prefs  # noqa: F401
    settings = settings_from(args)
    if not journal_logging(logging.INFO) and not args.verbose:
        logging.getLogger().setLevel(logging.INFO)  # a service says what it does
    config = args.config or DEFAULT_CONFIG
    gate = consent_gate(settings, config)
    uploader = make_uploader(settings, None)
    try:
        with open_spool(settings.crash_dir) as spool:
            # First, before the service's own imports (~60 ms): the worker starts beside them.
            start_uploader_early(uploader, spool, gate)
            return _serve(args, settings, config, gate, uploader, spool)
    finally:
        uploader.close()


def _serve(args: argparse.Namespace, settings: Settings, config: Path, gate: Gate, uploader: Uploader,
           spool: Spool) -> int:  # fmt: skip
    """The service itself, once the upload worker has its head start."""
    from crashd.cli._common import hook_options, identifier_for, tidy_for
    from crashd.daemon import Daemon, DBusSettings
    from crashd.daemon import run as run_daemon
    from crashd.delivery import Courier
    from crashd.network import Monitor
    from crashd.state import StateStore
    from crashd.status import survey

    system_id = identifier_for(settings)
    store = StateStore.open(settings.state_dir)
    monitor = Monitor(settings.metered)
    courier = Courier(uploader, settings.url, system_id, store, settings.backoff, network=monitor.hold)
    store.collect(spool.exists)  # records of reports that are gone (issue 11: bounded state)
    dbus = DBusSettings(
        settings.state_dir, config,
        lambda: survey(spool, StateStore.reader(settings.state_dir), gate, monitor.hold),
    )  # fmt: skip
    return run_daemon(
        lambda: Daemon(
            spool,
            courier,
            settings.limits,
            gate,
            idle_timeout=args.idle_timeout or settings.idle_timeout,
            once=args.once,
            hooks=hook_options(settings),
            dbus=dbus,
            monitor=monitor,
            tidy=tidy_for(spool, store, settings),
        )
    )


def journal_logging(level: int) -> bool:
    """Log to journald with structured fields when running under it and systemd-python is installed."""
    if not os.environ.get("JOURNAL_STREAM"):
        return False
    try:
        from systemd.journal import JournalHandler  # optional extra [journal]
    except ImportError:
        return False
    root = logging.getLogger()
    root.handlers[:] = [JournalHandler(SYSLOG_IDENTIFIER="crashd")]
    root.setLevel(level)
    return True
