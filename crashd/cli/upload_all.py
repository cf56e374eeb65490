"""``crashd upload-all``: send every report in the crash directory now, and say what became of each (CI)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from typing import Any

from crashd.cli._base import add_locations, seconds_argument

log = logging.getLogger("crashd")

NAME = "upload-all"


def add_parser(commands: Any) -> None:
    upload = commands.add_parser(
        NAME,
        help="send every report in the crash directory now (for CI)",
        description="Validate every .crash report in the crash directory, stamp it .upload, send it to the "
        "crash database (and its core when the server asks), and stamp it .uploaded with the OOPS id. "
        "Invalid reports are listed with the reason and left untouched. Exits 0 only when every report "
        "was sent (or is a kind that is never sent: Bug, KernelCrash). NetworkManager is honoured as by the "
        "daemon: offline nothing is attempted, on a metered network cores (or, with metered = hold, "
        "everything) are held; held reports are listed and the exit status is 1. First, reports of one "
        "crash (same signature, executable, version and owner within duplicate_window) are collapsed "
        "into one, counted in its CrashCounter, and the crash directory is kept within max_use. A "
        ".uploaded stamp of whoopsie's (owned by its user) counts as sent: what whoopsie sent is not "
        "sent again.",
    )
    upload.add_argument(
        "--timeout",
        type=seconds_argument,
        metavar="S",
        help="give up after S seconds; what is left is pending",
    )
    upload.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    add_locations(upload, url=True)


def run(args: argparse.Namespace) -> int:
    from crashd.cli._common import (
        EXIT_CONSENT,
        EXIT_INCOMPLETE,
        EXIT_OK,
        exit_on_signals,
        fail,
        hook_options,
        identifier_for,
        make_uploader,
        network_now,
        open_spool,
        print_statuses,
        settings_from,
        switched_off,
        tidy_for,
    )
    from crashd.config import DEFAULT_CONFIG
    from crashd.consent import load_consent
    from crashd.delivery import Courier
    from crashd.state import StateStore
    from crashd.upload_all import upload_all

    settings = settings_from(args)
    consent = load_consent(settings.state_dir, config=args.config or DEFAULT_CONFIG)
    if not consent.report_crashes:
        return fail(EXIT_CONSENT, f"{switched_off(consent)}: nothing was sent")
    exit_on_signals()
    system_id = identifier_for(settings)
    deadline = None if args.timeout is None else time.time() + args.timeout
    store = StateStore.open(settings.state_dir)
    backoff = settings.backoff
    if args.timeout is not None:
        backoff = backoff.interactive(args.timeout)
    uploader = make_uploader(settings, None if args.timeout is None else time.monotonic() + args.timeout)
    try:
        courier = Courier(uploader, settings.url, system_id, store, backoff, network=network_now(settings))
        with open_spool(settings.crash_dir) as spool:
            if os.geteuid() != 0:
                log.info("not running as root: only reports this user may read can be sent")
            hooks = hook_options(settings)
            tidy_for(spool, store, settings)()  # duplicates collapsed and the budget kept before sending
            summary = upload_all(spool, courier, limits=settings.limits, deadline=deadline, hooks=hooks)
            store.collect(spool.exists)  # records of reports that are gone (issue 11: bounded state)
    finally:
        uploader.close()
    if args.json:
        print(json.dumps(summary.as_json()))
    else:
        print_statuses(summary.reports, settings.crash_dir)
    return EXIT_OK if summary.complete else EXIT_INCOMPLETE
