"""Hooks: package authors' scripts, run for a report as the crashing user, contained (DESIGN.md §6).

Public surface::

    run_hooks(fields, owner_uid=uid) -> HookResult     the collector's entry point
    hook_test(hook, report_path) -> HookResult          what ``crashd hook-test HOOK FILE`` runs
    text_fields(report)                                 the fields hooks get, from a parsed report

Modules: :mod:`~crashd.hooks.discovery` (which hooks, in which order: pure),
:mod:`~crashd.hooks.accounts` (which user, which Python), :mod:`~crashd.hooks.runner` (batches in, a
result out), :mod:`~crashd.hooks.process` (the hook child as a process tree: start, bound, kill, reap),
:mod:`~crashd.hooks.host` (a child kept for the next report of its user), ``child.py`` (the keeper, the
runner and the hook processes: standard library only, run by path with ``hook_api.py`` beside it, never
imported here), :mod:`~crashd.hooks.hooktest` (one hook on one report, for ``crashd hook-test``) and
``compat/apport/`` (``apport.hookutils`` for hooks where apport is absent). What crashd adds to a report
itself is not a hook: it is computed in the daemon's process (:mod:`crashd.enrich`) before these run.

Exceptions::

    InvalidPackageError (ValueError)   Package/SourcePackage is no plain name: the report is invalid
    HookSetupError (RuntimeError)      hooks cannot run at all; run_hooks records it instead of raising
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from crashd.hooks.accounts import HookSetupError, account_for, interpreter_for
from crashd.hooks.discovery import HookRoots, InvalidPackageError, package_plan
from crashd.hooks.hooktest import hook_test, text_fields
from crashd.hooks.runner import HookLimits, HookOptions, HookResult, error_key, run

log = logging.getLogger(__name__)

__all__ = [
    "HookLimits",
    "HookOptions",
    "HookResult",
    "HookRoots",
    "HookSetupError",
    "InvalidPackageError",
    "error_key",
    "hook_test",
    "run_hooks",
    "text_fields",
]


def run_hooks(
    fields: Mapping[str, str | bytes],
    *,
    owner_uid: int,
    roots: HookRoots | None = None,
    extra_dirs: Sequence[Path] = (),
    timeout: float = HookOptions.timeout,
    output_cap: int = HookOptions.output_cap,
    fallback_user: str = HookOptions.fallback_user,
    worker_user: str | None = HookOptions.worker_user,
    limits: HookLimits = HookOptions.limits,
    python: str = HookOptions.python,
) -> HookResult:
    """Run the general, package and source-package hooks for a report with these text *fields*, owned by
    *owner_uid*.

    The hooks are chosen from *fields* as given: the collector puts the fields crashd adds itself
    (:mod:`crashd.enrich`: ``Package`` above all) in first. When no hook applies nothing starts — no account
    is looked up, no process runs (issue 15) — and the result holds only the candidates refused. Otherwise
    every hook runs in one child process (kept for the owner's next report: a hook host,
    :mod:`crashd.hooks.host`) as the owner (root's reports: as *fallback_user*), each bounded by *timeout*
    seconds and *output_cap* bytes of output (its fields included), under the interpreter *python* (the
    ``hook_python`` setting).

    Raises :class:`InvalidPackageError` when ``Package`` or ``SourcePackage`` could name a file
    outside a hook directory, and ``InvalidFieldError`` for an ``ExecutablePath`` no kernel would
    resolve: both before anything runs. Never raises for a hook's failure or for hooks that cannot
    run at all: those are in the result's ``errors`` and ``skipped``.
    """
    plan = package_plan(fields, roots or HookRoots(), extra_dirs)
    if not plan.hooks:
        result = HookResult(skipped=dict(plan.skipped))
    else:
        try:
            account = account_for(owner_uid, fallback_user, worker_user)
            python = interpreter_for(account, python)
        except HookSetupError as error:
            log.warning("%s", error)  # e.g. hook_user missing: root's reports go without their hooks
            result = HookResult(skipped={**plan.skipped, **dict.fromkeys(map(str, plan.hooks), str(error))})
        else:
            batches = iter([plan])
            result = run(
                fields,
                lambda _current: next(batches, None),
                account=account,
                python=python,
                timeout=timeout,
                output_cap=output_cap,
                limits=limits,
                owners=[0],
                reuse=True,
            )
    for path, reason in result.skipped.items():
        # A refused hook file (wrong owner, writable by others) is the administrator's to fix: say so.
        if not reason.startswith(("shadowed", "not run", "hooks not run")):
            log.warning("hook %s skipped: %s", path, reason)
    return result
