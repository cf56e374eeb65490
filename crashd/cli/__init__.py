"""``crashd COMMAND …``: the command line (DESIGN.md §9 is the contract scripts rely on).

Only this package imports argparse and decides exit codes and wording: the library
raises or returns, and each command module (one a command: its options, its steps,
its output) turns that into output and a code; :func:`main` turns the errors every
command may raise into one ``crashd: …`` line on stderr and a code:

    0  success, or nothing to do
    1  some report failed, was rejected or refused, or is still pending at the timeout;
       hook-test: the hook failed
    2  usage or configuration error
    3  reporting is switched off by consent
    4  an input file is invalid (``show``, ``hook-test``, ``ingest-coredump``)
    5  not allowed: polkit refused a preference change, or the administrator locked the preferences

What the commands share (these codes, the errors, building the settings, spool and
uploader) is in :mod:`crashd.cli._common`.

A command imports the library when it runs (and, to build the parser, only what its ``--help`` shows),
so that each process loads only what it uses (issue 15: the idle daemon): a named command's module is the
only one imported, its parser the only one built; ``crashd daemon`` chooses what its process may load
before any of it (:func:`crashd.cli.daemon.prepare`). ``tests/test_imports.py`` holds the idle daemon to
it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from crashd import __version__
from crashd.cli._base import (
    EXIT_CONSENT,
    EXIT_INCOMPLETE,
    EXIT_INVALID,
    EXIT_NOT_ALLOWED,
    EXIT_OK,
    EXIT_USAGE,
    NotAllowed,
    UsageError,
    fail,
)
from crashd.errors import CrashdError

__all__ = [
    "EXIT_CONSENT",
    "EXIT_INCOMPLETE",
    "EXIT_INVALID",
    "EXIT_NOT_ALLOWED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

# In the order `crashd --help` lists them; each is the module crashd.cli.<name, "-" as "_">.
COMMANDS = ("show", "upload-all", "daemon", "prefs", "hook-test", "ingest-coredump", "status", "identifier")


def _module(command: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{command.replace('-', '_')}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"crashd: {message} (see '{self.prog} --help')\n")


def _global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="configuration file (default /etc/crashd/crashd.conf)"
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="say more (repeat for debug output)"
    )


class _Peek(argparse.ArgumentParser):
    """A parser that only finds the command: it never prints help, so its formatter has a fixed width
    (argparse would otherwise ask ``shutil`` for the terminal's, importing it — and with it bz2 and
    lzma — before :func:`crashd.cli.daemon.prepare` can keep them out)."""

    def __init__(self) -> None:
        super().__init__(add_help=False, formatter_class=lambda prog: argparse.HelpFormatter(prog, width=80))

    def error(self, message: str) -> None:  # type: ignore[override]  # said by the real parser, if at all
        raise argparse.ArgumentError(None, message)


def _command_of(argv: Sequence[str] | None) -> str | None:
    """The command *argv* names, read with the parser's own global options (so ``-v``, ``--config=F``
    and abbreviations count as they will), before anything is imported for the parser; None when the
    parser itself will have to say what is wrong."""
    peek = _Peek()
    _global_options(peek)
    peek.add_argument("command", nargs="?")
    peek.add_argument("rest", nargs=argparse.REMAINDER)
    try:
        known, _ = peek.parse_known_args(argv)
    except argparse.ArgumentError:
        return None
    return known.command if isinstance(known.command, str) else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with *command* (one of ours), that command's parser alone: a command's
    options import its library for their defaults, and the service need not pay for the others'."""
    parser = _Parser(
        prog="crashd",
        description="Collect crash reports from the crash directory and send them to a crash database "
        "speaking the Ubuntu Error Tracker (daisy) protocol.",
        epilog="Exit codes: 0 success or nothing to do; 1 a report failed, was rejected or refused, or is "
        "still pending; 2 usage or configuration error; 3 reporting is switched off; 4 invalid input file; "
        "5 not allowed (polkit refused, or the preferences are locked).",
    )
    parser.add_argument("--version", action="version", version=f"crashd {__version__}")
    _global_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for each in COMMANDS if command is None else (command,):
        _module(each).add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    command = _command_of(argv)
    if command == "daemon":
        _module(command).prepare()  # before the parser imports anything of crashd's library
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
        format="crashd: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _module(args.command).run(args)
    except UsageError as error:
        return fail(EXIT_USAGE, str(error))
    except NotAllowed as error:
        return fail(EXIT_NOT_ALLOWED, str(error))
    except CrashdError as error:
        if (refusal := _refusal(error)) is None:
            raise
        return fail(*refusal)
    except KeyboardInterrupt:
        return 130
    except ImportError as error:  # an installed dependency too old for crashd (dependencies.py)
        from crashd.dependencies import explain

        if (problem := explain(error)) is None:
            raise
        return fail(EXIT_USAGE, problem)


def _refusal(error: CrashdError) -> tuple[int, str] | None:
    """The exit code and line for the library's refusals every command may meet; None for the others
    (a bug: the traceback stays). Imported here, where one was raised, not when crashd starts."""
    from crashd.config import ConfigError
    from crashd.report import ReportError
    from crashd.spool import UnsafeFileError

    if isinstance(error, ConfigError):
        return EXIT_USAGE, f"configuration error: {error}"
    if isinstance(error, (ReportError, UnsafeFileError)):
        return EXIT_INVALID, str(error)
    return None
