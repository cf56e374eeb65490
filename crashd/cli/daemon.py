"""``crashd daemon``: the service; the parts built from the settings, the loop in :mod:`crashd.daemon`."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from crashd.cli._common import (
    add_locations,
    consent_gate,
    hook_options,
    identifier_for,
    make_uploader,
    open_spool,
    seconds_argument,
    settings_from,
    tidy_for,
)
from crashd.config import DEFAULT_CONFIG, Settings
from crashd.delivery import Courier
from crashd.state import StateStore
from crashd.status import survey

NAME = "daemon"


def add_parser(commands: Any) -> None:
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
    # command its start-up time and ~6 MiB.
    from crashd.daemon import Daemon, DBusSettings, journal_logging
    from crashd.daemon import run as run_daemon
    from crashd.network import Monitor

    if not args.once:  # the service serves the bus: a missing or too-old dbus-fast is said first, alone
        import crashd.dbus_prefs  # noqa: F401
    settings = settings_from(args)
    if not journal_logging(logging.INFO) and not args.verbose:
        logging.getLogger().setLevel(logging.INFO)  # a service says what it does
    config = args.config or DEFAULT_CONFIG
    system_id = identifier_for(settings)
    store = StateStore.open(settings.state_dir)
    uploader = make_uploader(settings, None)
    monitor = Monitor(settings.metered)
    try:
        backoff = settings.backoff
        courier = Courier(uploader, settings.url, system_id, store, backoff, network=monitor.hold)
        gate = consent_gate(settings, config)
        with open_spool(settings.crash_dir) as spool:
            store.collect(spool.exists)  # records of reports that are gone (issue 11: bounded state)
            idle = args.idle_timeout or settings.idle_timeout
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
                    idle_timeout=idle,
                    once=args.once,
                    hooks=hook_options(settings),
                    dbus=dbus,
                    monitor=monitor,
                    tidy=tidy_for(spool, store, settings),
                )
            )
    finally:
        uploader.close()
