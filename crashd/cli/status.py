"""``crashd status``: every report with its state, and the tidy ledger; sends nothing."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from crashd.cli._base import add_locations

NAME = "status"


def add_parser(commands: Any) -> None:
    status = commands.add_parser(
        NAME,
        help="every report with its state",
        description="List every report in the crash directory with its delivery state, attempts, next "
        "attempt, OOPS id and last error; what waits for the network (offline, or metered, as NetworkManager "
        "reports it now) reads held, with the reason. Sends nothing.",
    )
    status.add_argument("--json", action="store_true", help='print {"reports": [...]} as one JSON object')
    add_locations(status, url=False)


def run(args: argparse.Namespace) -> int:
    from crashd.cli._common import (
        EXIT_OK,
        consent_gate,
        network_now,
        open_spool,
        print_statuses,
        settings_from,
    )
    from crashd.config import DEFAULT_CONFIG
    from crashd.state import StateStore
    from crashd.status import survey
    from crashd.tidy import read_ledger

    settings = settings_from(args)
    with open_spool(settings.crash_dir) as spool:
        gate = consent_gate(settings, args.config or DEFAULT_CONFIG)
        statuses = survey(spool, StateStore.reader(settings.state_dir), gate, network_now(settings))
        ledger = read_ledger(settings.state_dir)
        if args.json:  # streamed, a report at a time: the text of json.dumps({"reports": [...], **ledger})
            sys.stdout.write('{"reports": [')
            for n, status in enumerate(statuses):
                sys.stdout.write((", " if n else "") + json.dumps(status.as_json()))
            rest = (f", {json.dumps(key)}: {json.dumps(value)}" for key, value in ledger.as_json().items())
            sys.stdout.write(f"]{''.join(rest)}}}\n")
        else:
            print_statuses(statuses, settings.crash_dir)
            for line in ledger.lines():
                print(line)
    return EXIT_OK
