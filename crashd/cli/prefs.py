"""``crashd prefs [get | set NAME on|off]``: the consent preferences, changed through the service
(polkit decides) or, as root with ``--offline``, in the file directly."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from crashd.cli._base import EXIT_OK, NotAllowed, UsageError

if TYPE_CHECKING:
    from crashd.consent import Consent

NAME = "prefs"


def add_parser(commands: Any) -> None:
    from crashd.consent import PREFERENCES  # the names it takes; the library, after crashd daemon's prepare()

    prefs = commands.add_parser(
        NAME,
        help="show or change the crash-reporting preferences",
        description="Show the consent preferences (ReportCrashes: may anything be sent at all; "
        "AutomaticallyReportCrashes: send without asking; ReportMetrics, kept for whoopsie's clients), "
        "or set one. Settings UIs change the same values over D-Bus. The file lives in the state directory; "
        "an administrator can lock it in /etc/crashd/crashd.conf ([consent] locked = true).",
    )
    prefs.add_argument("action", nargs="?", choices=["get", "set"], default="get")
    prefs.add_argument("name", nargs="?", choices=list(PREFERENCES), help="with set: the preference")
    prefs.add_argument("value", nargs="?", choices=["on", "off"], help="with set: on or off")
    prefs.add_argument("--json", action="store_true", help="print the preferences as one JSON object")
    prefs.add_argument(
        "--offline", action="store_true", help="as root: change the file directly, not through D-Bus"
    )
    prefs.add_argument(
        "--state-dir", metavar="DIR", help="crashd's state directory (default /var/lib/crashd)"
    )


def run(args: argparse.Namespace) -> int:
    from crashd.cli._common import settings_from, switched_off
    from crashd.config import DEFAULT_CONFIG
    from crashd.consent import PREFERENCES, load_consent, set_preference

    settings, config = settings_from(args), args.config or DEFAULT_CONFIG
    if args.action == "set":
        if args.name is None or args.value is None:
            raise UsageError(f"prefs set needs NAME on|off (NAME: {', '.join(PREFERENCES)})")
        if args.offline:
            try:
                consent = set_preference(settings.state_dir, args.name, args.value == "on", config=config)
            except PermissionError as error:  # ConsentLocked, or not root
                raise NotAllowed(f"cannot change {args.name}: {error}") from None
        else:
            local = load_consent(settings.state_dir, config=config)
            consent = _set_over_dbus(args.name, args.value == "on", local)
        if args.name == "ReportCrashes" and args.value == "on" and not consent.report_crashes:
            print(f"crashd: stored, but {switched_off(consent)}", file=sys.stderr)
    else:
        consent = load_consent(settings.state_dir, config=config)
    if args.json:
        print(json.dumps({**consent.as_properties(), "Locked": consent.locked, "Reason": consent.reason}))
        return EXIT_OK
    for name, value in consent.as_properties().items():
        print(f"{name}: {'on' if value else 'off'}")
    print(
        f"Locked: {'yes' if consent.locked else 'no'}" + (f"  ({consent.reason})" if consent.reason else "")
    )
    return EXIT_OK


def _set_over_dbus(name: str, value: bool, local: Consent) -> Consent:
    """Change one preference through the running service (polkit decides; D-Bus activation starts it).
    The bus carries no reason, so the one read locally (the lock, a legacy switch) is shown with it."""
    from crashd import dbus_client  # dbus-fast only for the one command that needs the bus
    from crashd.consent import Consent

    try:
        now = dbus_client.set_preference(name, value)
    except dbus_client.NotAuthorized as error:
        raise NotAllowed(f"cannot change {name}: {error}") from None
    except dbus_client.BusUnavailable as error:
        hint = "as root, --offline changes the file directly"
        raise UsageError(f"cannot change {name}: {error} ({hint})") from None
    return Consent(now.report_crashes, now.automatic, now.report_metrics, now.locked, local.reason)
