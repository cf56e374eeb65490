"""How package hooks run: the options and bounds every part of hooks takes its defaults from.

A module of its own, importing nothing of the runner, so that the settings (:mod:`crashd.config`) can hold
one without bringing the hook child's start, ``subprocess`` and the runner into every process that reads a
configuration file: an idle daemon loads the rest of :mod:`crashd.hooks` with its first report to enrich.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from crashd.hooks.accounts import SYSTEM_PYTHON

if TYPE_CHECKING:
    from crashd.hooks.discovery import HookRoots

__all__ = ["GiB", "HookLimits", "HookOptions", "MiB"]

MiB, GiB = 1 << 20, 1 << 30


@dataclass(frozen=True)
class HookLimits:
    """rlimits of the hook child and of everything it starts (CPU time follows the timeout)."""

    address_space: int = 2 * GiB
    file_size: int = 64 * MiB
    open_files: int = 256
    processes: int = 64  # on top of the tasks the user already runs: RLIMIT_NPROC counts them all


@dataclass(frozen=True)
class HookOptions:
    """How package hooks run (DESIGN.md §6): the one home of every hook default and bound.

    ``crashd.config.Settings.hooks`` is one of these (settings ``hook_dirs``, ``hook_timeout``,
    ``hook_output_cap``, ``hook_user``, ``hook_python``, the ``hook_*`` rlimits); the runner,
    ``run_hooks`` and ``hook_test`` take their defaults from here.
    """

    extra_dirs: tuple[Path, ...] = ()
    timeout: float = 30.0  # seconds per hook, from its start
    output_cap: int = 10 * MiB  # output of all the hooks of one report together, their fields included
    limits: HookLimits = HookLimits()
    roots: HookRoots | None = None  # None: the system's hook directories
    fallback_user: str = "crashd-hook"  # who runs the hooks of root's reports (setting hook_user)
    worker_user: str = "crashd"  # the upload worker's user (unprivileged_user): never the hooks'
    python: str = SYSTEM_PYTHON  # the interpreter hooks run under (setting hook_python)
