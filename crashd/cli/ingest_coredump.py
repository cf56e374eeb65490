"""``crashd ingest-coredump [INSTANCE]``: write the report for one systemd-coredump crash.

The mapping and the checks are :mod:`crashd.capture.coredump`'s; this module finds the
entry — ``--from-export FILE`` (``journalctl -o export``, binary-safe fields), or the
journal (``_SYSTEMD_UNIT=systemd-coredump@INSTANCE.service`` and the MESSAGE_ID)
through ``systemd-python``, or ``journalctl -o export`` without it; an entry not
stored yet is looked for again for up to ``--wait`` seconds — and says what became of it.

Exit codes: 0 written, counted (flood rule) or skipped with a printed reason;
2 usage (no input, missing crash dir, no way to read the journal); 3 consent off; 4 invalid input.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

NAME = "ingest-coredump"
INSTANCE = re.compile(r"[A-Za-z0-9:_.\\-]{1,200}")  # what systemd allows in a unit's instance name


def add_parser(commands: Any) -> None:
    from crashd.capture.coredump import COREDUMP_DIR  # defaults shown in --help
    from crashd.capture.journal import ENTRY_WAIT

    parser = commands.add_parser(
        NAME,
        help="write the report for one systemd-coredump crash",
        description="Turn one systemd-coredump crash into a report in the crash directory: the journal "
        "entry of systemd-coredump@INSTANCE.service, or the entry in a `journalctl -o export` file. A "
        "repeat of an unsent report less than a day old only increments its CrashCounter. Exit 0: written, "
        "counted or skipped (the reason is printed); 3: reporting is switched off; 4: invalid input.",
    )
    parser.add_argument("instance", nargs="?", metavar="INSTANCE", help="the systemd-coredump@ instance")
    parser.add_argument("--from-export", type=Path, metavar="FILE", help="read `journalctl -o export` text")
    parser.add_argument(
        "--journal-file", action="append", metavar="FILE", help="read this journal file (repeatable)"
    )
    parser.add_argument(
        "--coredump-dir", type=Path, default=COREDUMP_DIR, metavar="DIR",
        help=f"where systemd-coredump stores cores (default {COREDUMP_DIR})",
    )  # fmt: skip
    parser.add_argument(
        "--wait", type=float, default=ENTRY_WAIT, metavar="SECONDS",
        help=f"how long to keep looking for an entry the journal has not stored yet (default {ENTRY_WAIT:g})",
    )  # fmt: skip
    parser.add_argument(
        "--crash-dir", metavar="DIR", help="crash directory (default /var/crash, $APPORT_REPORT_DIR)"
    )
    parser.add_argument(
        "--state-dir", metavar="DIR", help="crashd's state directory (default /var/lib/crashd)"
    )


def run(args: argparse.Namespace) -> int:
    """``crashd ingest-coredump``; see the module docstring for the exit codes."""
    from crashd.capture.coredump import Skipped, ingest
    from crashd.capture.journal import (
        InvalidEntry,
        JournalEntry,
        find_entry,
        parse_export,
        select_entry,
    )
    from crashd.cli._common import EXIT_CONSENT, EXIT_INVALID, EXIT_OK, EXIT_USAGE, fail, settings_from
    from crashd.config import DEFAULT_CONFIG
    from crashd.consent import load_consent

    settings = settings_from(args)  # a configuration error is exit 2, in main()
    consent = load_consent(settings.state_dir, config=args.config or DEFAULT_CONFIG)
    if not consent.report_crashes:
        why = f" ({consent.reason})" if consent.reason else ""
        return fail(EXIT_CONSENT, f"reporting crashes is switched off{why}: no report written")
    if args.instance is not None and not INSTANCE.fullmatch(args.instance):
        return fail(EXIT_USAGE, f"{args.instance!r}: not a unit instance name")
    if not os.path.isdir(settings.crash_dir):
        return fail(EXIT_USAGE, f"the crash directory {settings.crash_dir} does not exist")
    entry: JournalEntry | None = None
    try:
        if args.from_export is not None:
            try:
                with open(args.from_export, "rb") as f:
                    entry = select_entry(parse_export(f), args.instance)
            except OSError as error:
                return fail(EXIT_USAGE, f"{args.from_export}: {error.strerror}")
        elif args.instance is None:
            return fail(EXIT_USAGE, "name the systemd-coredump INSTANCE or give --from-export FILE")
        else:
            try:
                entry = find_entry(args.instance, args.journal_file, wait=max(0.0, args.wait))
            except ImportError as error:
                return fail(EXIT_USAGE, f"{error}: use --from-export FILE")
        outcome = ingest(entry, settings.crash_dir, args.coredump_dir, args.instance)
    except InvalidEntry as error:
        return fail(EXIT_INVALID, str(error))
    finally:
        if entry is not None:
            entry.close()
    if isinstance(outcome, Skipped):
        print(f"skipped: {outcome.reason}")
    elif outcome.action == "counted":
        print(f"counted: {outcome.path} (CrashCounter {outcome.crash_counter}): {outcome.detail}")
    elif outcome.action == "skipped":
        print(f"skipped: {outcome.path}: {outcome.detail}")
    else:
        print(f"written: {outcome.path}" + (f" ({outcome.detail})" if outcome.detail else ""))
    return EXIT_OK
