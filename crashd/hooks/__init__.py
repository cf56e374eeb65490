"""Hooks: package authors' scripts, run for a report as the crashing user, contained (DESIGN.md §6).

Public surface::

    run_hooks(fields, owner_uid=uid) -> HookResult     the collector's entry point
    hook_test(hook, report_path) -> HookResult          what ``crashd hook-test HOOK FILE`` runs
    text_fields(report)                                 the fields hooks get, from a parsed report

Modules: :mod:`~crashd.hooks.discovery` (which hooks, in which order: pure), :mod:`~crashd.hooks.accounts`
(which user, which Python), :mod:`~crashd.hooks.options` (the defaults and bounds),
:mod:`~crashd.hooks.runner` (``run_hooks``: batches in, a result out), :mod:`~crashd.hooks.process` (the
hook child as a process tree: start, bound, kill, reap), :mod:`~crashd.hooks.host` (a child kept for the
next report of its user), ``child.py`` (the keeper, the runner and the hook processes: standard library
only, run by path with ``hook_api.py`` beside it, never imported here), :mod:`~crashd.hooks.hooktest` (one
hook on one report, for ``crashd hook-test``) and ``compat/apport/`` (``apport.hookutils`` for hooks where
apport is absent). What crashd adds to a report itself is not a hook: it is computed in the daemon's
process (:mod:`crashd.enrich`) before these run.

The names below are imported from their modules when first asked for (PEP 562): the settings hold a
:class:`HookOptions` (:mod:`~crashd.hooks.options`), and an idle daemon must not load the runner, the
child's start and ``subprocess`` for it (issue 15).

Exceptions::

    InvalidPackageError (ValueError)   Package/SourcePackage is no plain name: the report is invalid
    HookSetupError (RuntimeError)      hooks cannot run at all; run_hooks records it instead of raising
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crashd.hooks.accounts import HookSetupError
    from crashd.hooks.discovery import HookRoots, InvalidPackageError
    from crashd.hooks.hooktest import hook_test, text_fields
    from crashd.hooks.options import HookLimits, HookOptions
    from crashd.hooks.runner import HookResult, error_key, run_hooks

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

_HOMES = {
    "HookLimits": "options",
    "HookOptions": "options",
    "HookResult": "runner",
    "HookRoots": "discovery",
    "HookSetupError": "accounts",
    "InvalidPackageError": "discovery",
    "error_key": "runner",
    "hook_test": "hooktest",
    "run_hooks": "runner",
    "text_fields": "hooktest",
}


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
