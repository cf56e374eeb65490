"""Run one hook on one report exactly as the daemon would: the library part of ``crashd hook-test``
(DESIGN.md §9; the options, wording and exit codes are :mod:`crashd.cli.hook_test`'s).

For package authors: the hook runs as the report file's owner (root's reports:
the ``crashd-hook`` user), in the same contained child, with the same timeout, output
cap and rlimits, and with the report's text fields; what it adds or changes is
returned and nothing is written back. Unlike the daemon, it runs a hook file whoever
owns it (a hook being written usually belongs to its author); the command warns when
the daemon would skip it.
"""

from __future__ import annotations

import os
from pathlib import Path

from crashd.hooks.accounts import account_for, interpreter_for
from crashd.hooks.discovery import Plan, package_names
from crashd.hooks.options import HookLimits, HookOptions
from crashd.hooks.runner import HookResult, run
from crashd.report import DEFAULT_LIMITS, Limits, Report, read_report
from crashd.spool import open_file

__all__ = ["hook_test", "text_fields"]


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
    timeout: float = HookOptions.timeout,
    output_cap: int = HookOptions.output_cap,
    fallback_user: str = HookOptions.fallback_user,
    worker_user: str | None = HookOptions.worker_user,
    limits: HookLimits = HookOptions.limits,
    python: str = HookOptions.python,
    report_limits: Limits = DEFAULT_LIMITS,
) -> HookResult:
    """Run the hook file *hook* on the report at *report_path* as the daemon would, and say what it did.

    Raises what opening and reading the report raises (``OSError``,
    ``UnsafeFileError``, ``ReportError``), :class:`InvalidPackageError`, and
    :class:`HookSetupError` when no user or Python can run it.
    """
    with open_file(report_path) as opened, opened.file() as f:
        fields = text_fields(read_report(f, limits=report_limits, name=str(report_path)))
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
