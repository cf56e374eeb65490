"""Run crashd's D-Bus service alone, as its own process, for tests/test_dbus.py.

    python -m tests.dbus_service_main --state-dir D --crash-dir C [--config F] [--polkit-timeout S]

It connects to the system bus (``DBUS_SYSTEM_BUS_ADDRESS``), serves both names, prints ``ready`` once
it owns them, then one line per daemon callback (``consent ReportCrashes=on …``, ``upload-now``), and
serves until SIGTERM (exit 0) or until the bus connection drops (exit 1, as ``crashd daemon`` must,
so systemd restarts it). The legacy switches are read from ``--legacy-dir`` (absent files: not off), so
the machine's /etc/default does not leak into tests.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from crashd import dbus_prefs
from crashd.consent import Consent
from crashd.daemon import watch_files
from crashd.spool import Spool
from crashd.state import StateStore
from crashd.status import survey


def say(line: str) -> None:
    print(line, flush=True)


def on_consent_change(consent: Consent) -> None:
    say("consent " + " ".join(f"{k}={'on' if v else 'off'}" for k, v in consent.as_properties().items()))


async def main(args: argparse.Namespace) -> int:
    bus = await dbus_prefs.connect_system_bus()
    with Spool(args.crash_dir) as spool:
        service = await dbus_prefs.serve(
            bus,
            state_dir=args.state_dir,
            config=args.config,
            status_provider=lambda: survey(spool, StateStore.reader(args.state_dir)),
            on_consent_change=on_consent_change,
            on_upload_now=lambda: say("upload-now"),
            polkit_timeout=args.polkit_timeout,
            whoopsie_default=args.legacy_dir / "whoopsie",
            apport_default=args.legacy_dir / "apport",
            spool=spool,
            watch=watch_files,  # as crashd daemon does: the daemon is the one that watches files
        )
        say("ready")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        stopped = asyncio.ensure_future(stop.wait())
        dropped = asyncio.ensure_future(bus.wait_for_disconnect())
        await asyncio.wait([stopped, dropped], return_when=asyncio.FIRST_COMPLETED)
        if dropped.done():
            error = dropped.exception() if not dropped.cancelled() else None
            print(f"crashd: lost the system bus connection ({error or 'closed'})", file=sys.stderr)
            return 1
        dropped.cancel()
        await service.close()
        bus.disconnect()
        return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--crash-dir", type=Path, required=True)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--legacy-dir", type=Path, default=Path("/nonexistent"))
    parser.add_argument("--polkit-timeout", type=float, default=dbus_prefs.POLKIT_TIMEOUT)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
