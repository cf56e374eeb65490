"""``crashd hook-test HOOK FILE``: run one hook on one report exactly as the daemon would (DESIGN.md §9).

For package authors: the hook runs as the report file's owner (root's reports:
the ``crashd-hook`` user), in the same contained child, with the same timeout, output
cap and rlimits, and with the report's text fields; what it adds or changes is
printed and nothing is written back. Unlike the daemon, it runs a hook file whoever
owns it (a hook being written usually belongs to its author) but warns when
the daemon would skip it.

Exit codes (cli.py's table)::

    0  the hook ran and returned normally
    1  the hook failed (HookError_*: an exception, a timeout, the output cap), or could not run
    2  usage: the hook or the report file cannot be found or read
    4  the report is invalid — refused by the reader, a bad Package name — or the hook made
       it unreportable (UnreportableReason): either way the daemon would record it ``invalid``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crashd.config import Settings, load_settings, seconds_argument
from crashd.hooks.accounts import SYSTEM_PYTHON, HookSetupError, account_for, interpreter_for
from crashd.hooks.discovery import InvalidPackageError, Plan, hook_refusal, package_names
from crashd.hooks.runner import HookLimits, HookResult, MiB, run
from crashd.report import Report, ReportError, read_report
from crashd.spool import UnsafeFileError, open_file

__all__ = ["add_hook_test_command", "cmd_hook_test", "hook_test", "text_fields"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INVALID = 0, 1, 2, 4


def text_fields(report: Report) -> dict[str, str | bytes]:
    """The report's text fields, as hooks get them: ``str``, or ``bytes`` where the value is not UTF-8.

    Binary (base64) fields — CoreDump and the like — are never given to hooks.
    """
    fields: dict[str, str | bytes] = {}
    for key, entry in report.entries.items():
        if not entry.binary:
            value = report.text_bytes(key)
            try:
                fields[key] = value.decode("utf-8")
            except UnicodeDecodeError:
                fields[key] = value
    return fields


def hook_test(
    hook: Path,
    report_path: Path,
    *,
    timeout: float = 30,
    output_cap: int = 10 * MiB,
    fallback_user: str = "crashd-hook",
    worker_user: str | None = "crashd",
    limits: HookLimits | None = None,
    python: str = SYSTEM_PYTHON,
) -> HookResult:
    """Run the hook file *hook* on the report at *report_path* as the daemon would, and say what it did.

    Raises what opening and reading the report raises (``OSError``,
    ``UnsafeFileError``, ``ReportError``), :class:`InvalidPackageError`, and
    :class:`HookSetupError` when no user or Python can run it.
    """
    with open_file(report_path) as opened, opened.file() as f:
        fields = text_fields(read_report(f, name=str(report_path)))
        owner = opened.stat.st_uid
    package_names(fields)
    account = account_for(owner, fallback_user, worker_user)
    python = interpreter_for(account, python)
    plans = iter([Plan([Path(os.path.abspath(hook))])])  # the child's working directory is /
    return run(
        fields,
        lambda _current: next(plans, None),
        account=account,
        python=python,
        timeout=timeout,
        output_cap=output_cap,
        limits=limits,
        owners=None,
    )


def add_hook_test_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``hook-test`` to cli.py's sub-parsers (the lead maps it to :func:`cmd_hook_test`)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "hook-test",
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
        "--timeout", type=seconds_argument, metavar="S", help="seconds the hook may take (30)"
    )
    parser.add_argument(
        "--fallback-user",
        metavar="NAME",
        help="who runs root's reports' hooks (default: hook_user, crashd-hook)",
    )
    return parser


def cmd_hook_test(args: argparse.Namespace) -> int:
    """``crashd hook-test``: see the module docstring for the exit codes."""
    hook: Path = args.hook
    try:
        st = os.stat(hook)
    except OSError as error:
        return _fail(EXIT_USAGE, f"{hook}: {error.strerror}")
    reason = hook_refusal(st, trusted_uids=(0,))
    if reason and reason != "not a regular file":
        print(f"crashd: warning: the daemon would skip {hook}: {reason}", file=sys.stderr)
    elif reason:
        return _fail(EXIT_USAGE, f"{hook}: {reason}")
    started = time.monotonic()
    try:
        result = hook_test(
            hook,
            args.file,
            timeout=args.timeout or _settings(args).hook_timeout,
            fallback_user=args.fallback_user or _settings(args).hook_user,
            worker_user=_settings(args).unprivileged_user,
            python=_settings(args).hook_python,
        )
    except (FileNotFoundError, PermissionError, IsADirectoryError) as error:
        return _fail(EXIT_USAGE, f"{args.file}: {error.strerror}")
    except (UnsafeFileError, ReportError, InvalidPackageError) as error:
        return _fail(
            EXIT_INVALID,
            str(error) if not isinstance(error, InvalidPackageError) else f"{args.file}: {error}",
        )
    except HookSetupError as error:
        return _fail(EXIT_FAILED, f"{args.file}: {error}")
    seconds = time.monotonic() - started
    if args.json:
        print(json.dumps(_as_json(hook, args.file, result, seconds)))
    else:
        _print(hook, args.file, result, seconds)
    if result.unreportable is not None:
        return EXIT_INVALID
    return EXIT_FAILED if result.errors or result.skipped or not result.ran else EXIT_OK


def _settings(args: argparse.Namespace) -> Settings:
    """The configuration, read only when a flag leaves a value to it (a bad file is exit 2 in cli.py)."""
    return load_settings(getattr(args, "config", None))


def _fail(code: int, message: str) -> int:
    print(f"crashd: {message}", file=sys.stderr)
    return code


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
    import base64

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
