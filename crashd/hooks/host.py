"""Hook hosts: a report's hook child kept for the next report of the same user (issue 15).

Starting the child (an interpreter as the hook user, apport imported) is most of what a package
hook costs; a burst of reports of one user pays it once. After a report whose hooks all ran to a
clean end, :mod:`crashd.hooks.runner` gives its :class:`HookChild` back here, keyed by who it runs
as (the account, the interpreter, the rlimits); the next report with that key within
:data:`IDLE_SECONDS` takes it and sends it a new report header on the same protocol.

What makes that as safe as a child per report (docs/hooks.md, "Hook hosts"):

- Only a child that *settled* is kept: every message asked for read, nothing more, the hooks'
  output read to its end within the report's cap, the runner still waiting. A timeout, a protocol
  error, an output cap, a runner that died: the child is ended, as before, never kept.
- Only crashd starts a report (the header on the requests pipe, which no hook holds); the runner
  then starts afresh: a new ``report``, the new report's owners, timeout and result cap. The
  parent's bounds (:class:`Budget`) belong to the report, never to the child.
- Nothing a hook starts outlives its hook: the runner, a subreaper, kills and reaps it before it
  answers, and again at each new report header. A host holds no process of any report.
- One report at a time: a taken child is out of the pool; a second report of the same user at
  the same time starts a child of its own (and only one idle child per key is kept).
- Idle hosts end :data:`IDLE_SECONDS` after their last report (a timer thread that exists only
  while some host is idle, so an idle daemon has no wake-ups), at interpreter exit, or with
  :func:`close_all`. Should crashd die, the keeper sees its control pipe close and ends them.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Hashable

from crashd.hooks.process import HookChild

__all__ = ["IDLE_SECONDS", "close_all", "give_back", "idle", "take"]

IDLE_SECONDS = 10.0
"""How long a hook host waits for the next report of its user before it ends."""

_lock = threading.Lock()
_idle: dict[Hashable, tuple[HookChild, float]] = {}  # key -> (child, monotonic time it was given back)
_timer: threading.Timer | None = None


def take(key: Hashable) -> HookChild | None:
    """The idle host for *key*, now the caller's alone; None when there is none fit to use."""
    with _lock:
        entry = _idle.pop(key, None)
    if entry is None:
        return None
    child, since = entry
    if time.monotonic() - since >= IDLE_SECONDS or not child.settled():  # expired, or its runner died
        child.end()
        return None
    return child


def give_back(key: Hashable, child: HookChild) -> None:
    """Keep *child* for the next report of *key* if it settled, else end it: it is no longer the caller's."""
    if not child.settled():
        child.end()
        return
    with _lock:
        replaced = _idle.pop(key, None)
        _idle[key] = (child, time.monotonic())
        _arm()
    if replaced is not None:  # one idle host per key is enough
        replaced[0].end()


def idle() -> list[HookChild]:
    """The hosts waiting for a report now (for tests and diagnostics)."""
    with _lock:
        return [child for child, _ in _idle.values()]


def close_all() -> None:
    """End every idle host now (the daemon's exit; tests)."""
    global _timer
    with _lock:
        ending = [child for child, _ in _idle.values()]
        _idle.clear()
        if _timer is not None:
            _timer.cancel()
            _timer = None
    for child in ending:
        child.end()


def _arm() -> None:
    """Start the timer that ends idle hosts, if none runs (called with the lock held)."""
    global _timer
    if _timer is None and _idle:
        first = min(since for _, since in _idle.values())
        _timer = threading.Timer(max(0.0, first + IDLE_SECONDS - time.monotonic()), _expire)
        _timer.daemon = True
        _timer.start()


def _expire() -> None:
    global _timer
    now = time.monotonic()
    with _lock:
        _timer = None
        expired = [key for key, (_, since) in _idle.items() if now - since >= IDLE_SECONDS]
        ending = [_idle.pop(key)[0] for key in expired]
        _arm()
    for child in ending:
        child.end()


atexit.register(close_all)
