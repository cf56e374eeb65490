"""``crashd hook-test HOOK FILE``: run one hook on one report as the daemon would, and print what it did.

The running is :func:`crashd.hooks.hook_test`'s; this module adds the options, the
wording and the exit codes:

    0  the hook ran and returned normally
    1  the hook failed (HookError_*: an exception, a timeout, the output cap), or could not run
    2  usage: the hook or the report file cannot be found or read
    4  the report is invalid — refused by the reader, a bad Package name — or the hook made
       it unreportable (UnreportableReason): either way the daemon would record it ``invalid``
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crashd.cli._base import seconds_argument

if TYPE_CHECKING:
    from crashd.hooks import HookResult

NAME = "hook-test"


def add_parser(commands: Any) -> None:
    from crashd.hooks import HookOptions  # defaults shown in --help

    parser = commands.add_parser(
        NAME,
        help="run one hook on one report, as the daemon would",
        description="Run the package hook HOOK (a Python file with add_info(report, ui)) on the report "
        "FILE exactly as the daemon would: as the report's owner (root's reports: the crashd-hook user), "
        "in a contained process tree, with the report's text fields. Prints the fields it adds or "
        "changes; the report is not modified. Exit 0: the hook ran; 1: it failed; 4: the report is "
        "invalid or the hook made it unreportable.",
    )
    parser.add_argument("hook", type=Path, metavar="HOOK", help="the hook file")
    parser.add_argument(
        "file", type=Path, metavar="FILE", help="a .crash report (symbolic links are refused)"
    )
    parser.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    parser.add_argument(
        "--timeout",
        type=seconds_argument,
        metavar="S",
        help=f"seconds the hook may take ({HookOptions.timeout:g})",
    )
    parser.add_argument(
        "--fallback-user",
        metavar="NAME",
        help=f"who runs root's reports' hooks (default: hook_user, {HookOptions.fallback_user})",
    )


def run(args: argparse.Namespace) -> int:
    """``crashd hook-test``: see the module docstring for the exit codes."""
    from crashd.cli._common import (
        EXIT_INCOMPLETE,
        EXIT_INVALID,
        EXIT_OK,
        EXIT_USAGE,
        fail,
        settings_from,
    )
    from crashd.hooks import HookSetupError, InvalidPackageError, hook_test
    from crashd.hooks.discovery import hook_refusal
    from crashd.report import ReportError
    from crashd.spool import UnsafeFileError

    hook: Path = args.hook
    try:
        st = os.stat(hook)
    except OSError as error:
        return fail(EXIT_USAGE, f"{hook}: {error.strerror}")
    reason = hook_refusal(st, trusted_uids=(0,))
    if reason and reason != "not a regular file":
        print(f"crashd: warning: the daemon would skip {hook}: {reason}", file=sys.stderr)
    elif reason:
        return fail(EXIT_USAGE, f"{hook}: {reason}")
    settings = settings_from(args)  # a bad configuration file is exit 2, in main()
    started = time.monotonic()
    try:
        result = hook_test(
            hook,
            args.file,
            timeout=args.timeout or settings.hooks.timeout,
            output_cap=settings.hooks.output_cap,
            fallback_user=args.fallback_user or settings.hooks.fallback_user,
            worker_user=settings.unprivileged_user,
            limits=settings.hooks.limits,
            python=settings.hooks.python,
            report_limits=settings.limits,
        )
    except (FileNotFoundError, PermissionError, IsADirectoryError) as error:
        return fail(EXIT_USAGE, f"{args.file}: {error.strerror}")
    except (UnsafeFileError, ReportError, InvalidPackageError) as error:
        return fail(
            EXIT_INVALID,
            str(error) if not isinstance(error, InvalidPackageError) else f"{args.file}: {error}",
        )
    except HookSetupError as error:
        return fail(EXIT_INCOMPLETE, f"{args.file}: {error}")
    seconds = time.monotonic() - started
    if args.json:
        print(json.dumps(_as_json(hook, args.file, result, seconds)))
    else:
        _print(hook, args.file, result, seconds)
    if result.unreportable is not None:
        return EXIT_INVALID
    return EXIT_INCOMPLETE if result.errors or result.skipped or not result.ran else EXIT_OK


def _as_json(hook: Path, report: Path, result: HookResult, seconds: float) -> dict[str, object]:
    return {
        "hook": str(hook),
        "report": str(report),
        "seconds": round(seconds, 3),
        "fields": _json_values(result.fields),
        "removed": result.removed,
        "errors": result.errors,
        "unreportable": result.unreportable,
        "stopped": result.stopped,
        "ran": result.ran,
        "skipped": result.skipped,
        "output": result.output,
    }


def _json_values(fields: Mapping[str, str | bytes]) -> dict[str, object]:
    return {
        k: v if isinstance(v, str) else {"base64": base64.b64encode(v).decode("ascii")}
        for k, v in fields.items()
    }


def _print(hook: Path, report: Path, result: HookResult, seconds: float) -> None:
    what = "ran" if result.ran else "did not run"
    print(f"# {hook} {what} on {report} in {seconds:.2f} s: {len(result.fields)} fields added or changed")
    for key, value in {**result.fields, **result.errors}.items():
        if isinstance(value, bytes):
            print(f"{key}: <binary, {len(value)} bytes>")
        elif "\n" in value:
            print(f"{key}:\n " + value.rstrip("\n").replace("\n", "\n "))
        else:
            print(f"{key}: {value}")
    for key in result.removed:
        print(f"# removed: {key}")
    for path, reason in result.skipped.items():
        print(f"# not run: {path}: {reason}")
    if result.stopped:
        print("# the hook raised StopIteration: the daemon would run no further hooks for this report")
    if result.unreportable is not None:
        print(f"# the daemon would record this report as invalid: {result.unreportable}")
    if result.output.strip():
        print("# the hook's output:\n " + result.output.rstrip("\n").replace("\n", "\n "))
