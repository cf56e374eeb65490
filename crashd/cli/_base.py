"""What the parser and :func:`crashd.cli.main` need: the exit codes, the errors main maps to them,
``crashd:`` lines and the options several commands share. The parts built from the command line and the
configuration (settings, spool, uploader, hook options, tidy, consent gate) are in
:mod:`crashd.cli._common`, which a command imports when it runs (it re-exports these names too).

Standard library and :mod:`crashd.errors` only, at import: ``crashd --help`` and the parser import this
for every command, and ``crashd daemon`` must choose what its process loads before any of crashd's
library is imported (issue 15: the idle daemon imports only what it uses; see :mod:`crashd.cli.daemon`).

The exit codes are explained in :mod:`crashd.cli`'s table; they live here, beside the errors, because
every command module returns them and the package's ``__init__`` imports the command modules.
"""

from __future__ import annotations

import argparse
import sys

from crashd.errors import CrashdError

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_CONSENT, EXIT_INVALID, EXIT_NOT_ALLOWED = 0, 1, 2, 3, 4, 5


class UsageError(CrashdError):
    """A problem with what the user asked for; exit 2."""


class NotAllowed(CrashdError):
    """The request was understood but refused (polkit, a lock, not root); exit 5, so that a script can
    tell "ask an administrator" from "fix the command line"."""


def fail(code: int, message: str) -> int:
    """Say *message* as crashd's one line on stderr and return *code*."""
    print(f"crashd: {message}", file=sys.stderr)
    return code


# -- options --------------------------------------------------------------------------------


def seconds_argument(text: str) -> float:
    """A duration given on the command line (``--timeout 60``), for argparse's ``type=``."""
    from crashd.config import parse_seconds  # when a value is read: after crashd daemon's prepare()

    try:
        return parse_seconds(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}") from None


def add_locations(parser: argparse.ArgumentParser, *, url: bool) -> None:
    """``--crash-dir`` and ``--state-dir`` (and ``--url``): where a command finds reports and records."""
    parser.add_argument(
        "--crash-dir", metavar="DIR", help="crash directory (default /var/crash, $APPORT_REPORT_DIR)"
    )
    parser.add_argument(
        "--state-dir", metavar="DIR", help="crashd's state directory (default /var/lib/crashd)"
    )
    if url:
        parser.add_argument(
            "--url", metavar="URL", help="crash database (default https://daisy.ubuntu.com, $CRASH_DB_URL)"
        )
