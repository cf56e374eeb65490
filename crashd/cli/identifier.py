"""``crashd identifier``: print the anonymous system identifier sent with every report."""

from __future__ import annotations

import argparse
from typing import Any

NAME = "identifier"


def add_parser(commands: Any) -> None:
    identifier = commands.add_parser(
        NAME,
        help="print the system identifier",
        description="Print the anonymous system identifier sent with every report (whoopsie-compatible: "
        "SHA-512 of the DMI product UUID; override with CRASH_DB_IDENTIFIER).",
    )
    identifier.add_argument("--state-dir", metavar="DIR", help="where the identifier is cached")


def run(args: argparse.Namespace) -> int:
    from crashd.cli._common import EXIT_OK, identifier_for, settings_from

    print(identifier_for(settings_from(args)))
    return EXIT_OK
