"""Running a report's hooks: batches in, one child at a time, a :class:`HookResult` out (DESIGN.md §6).

:func:`run_hooks` is the collector's entry: it chooses a report's hooks, the user and the Python they run
as, then :func:`run` runs them.

One child (``child.py``: a keeper, an unprivileged runner, a process per hook; started by
:mod:`crashd.hooks.process`) runs every hook of a report, so the interpreter start is paid once per
report, not per hook — and with *reuse*, once per burst of one user's reports: a child whose report
settled is kept as a hook host (:mod:`crashd.hooks.host`) for the next. Hooks come in batches (each may
be chosen from the fields as the hooks before it left them), handed to the child as it asks for more. The
runner's messages are checked against what was handed out: a ``start`` only for the next hook, in order,
a ``done`` only for the hook that started; anything else kills the child.

A hook whose process crashes or calls ``os._exit`` gets ``HookError_<name>`` with a sentence saying
what happened, and the next hook runs. A hook that times out ends its child (the whole tree is
killed), gets ``HookError_<name>`` too, and a fresh child runs the hooks after it: one bad hook never
stops the others (only ``StopIteration`` does, as in apport) — unless the report's output cap or
time budget is spent, which no child can reset. Whatever does not run is listed in ``skipped`` with
why.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crashd.errors import CrashdError
from crashd.hooks import host
from crashd.hooks.accounts import Account, HookSetupError, account_for, interpreter_for
from crashd.hooks.discovery import HookRoots, Plan, package_plan
from crashd.hooks.options import HookLimits, HookOptions, MiB
from crashd.hooks.process import STARTUP_TIMEOUT, Budget, HookChild
from crashd.report import valid_key

__all__ = ["Batches", "HookResult", "error_key", "run", "run_hooks"]

log = logging.getLogger(__name__)

SLACK_PER_HOOK = 1.0
"""Seconds each hook handed out adds to the report's time budget on top of its timeout (fork, results)."""

Batches = Callable[[Mapping[str, str | bytes]], Plan | None]
"""Called with the report's current fields whenever the child has run out of hooks:
the next batch to run (a :class:`Plan`), or None when there are no more."""


@dataclass
class HookResult:
    """What the hooks of one report did.

    ``fields`` holds the values added or changed (``HookError_*`` are in
    ``errors``, not here: :meth:`report_fields` merges both), ``removed`` the keys
    hooks deleted. ``unreportable`` is a new ``UnreportableReason``. ``stopped``:
    a hook raised ``StopIteration``. ``ran`` lists the hooks started, in order;
    ``skipped`` every hook not run, with the reason; ``output`` the end of what
    the hooks printed.
    """

    fields: dict[str, str | bytes] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    unreportable: str | None = None
    stopped: bool = False
    ran: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    output: str = ""

    def report_fields(self) -> dict[str, str | bytes]:
        """Everything to write into the report: ``fields`` and the ``HookError_*`` entries."""
        return {**self.fields, **self.errors}


def error_key(hook: str | os.PathLike[str]) -> str:
    """``HookError_<name>``: apport's key (file stem, ``-`` → ``_``), made a valid report key."""
    return "HookError_" + re.sub(r"[^A-Za-z0-9._-]", "_", Path(hook).stem.replace("-", "_"))


@dataclass
class _State:
    original: Mapping[str, str | bytes]
    current: dict[str, str | bytes]
    budget: Budget
    per_hook: float  # what each hook handed out adds to the report's time budget
    result: HookResult = field(default_factory=HookResult)
    exhausted: bool = False
    tail: bytearray = field(default_factory=bytearray)

    def next_batch(self, batches: Batches) -> list[str]:
        while not self.exhausted:
            plan = batches(self.current)
            if plan is None:
                self.exhausted = True
                break
            self.result.skipped.update(plan.skipped)
            if plan.hooks:
                self.budget.deadline += len(plan.hooks) * self.per_hook
                return [str(hook) for hook in plan.hooks]
        return []

    def finish(self) -> HookResult:
        result = self.result
        result.fields = {k: v for k, v in self.current.items() if self.original.get(k) != v}
        result.removed = [k for k in self.original if k not in self.current]
        reason = result.fields.get("UnreportableReason")
        if reason is not None:
            result.unreportable = reason if isinstance(reason, str) else reason.decode("utf-8", "replace")
        result.output = self.tail.decode("utf-8", "replace")
        return result


def run(
    fields: Mapping[str, str | bytes],
    batches: Batches,
    *,
    account: Account,
    python: str,
    timeout: float = HookOptions.timeout,
    output_cap: int = HookOptions.output_cap,
    limits: HookLimits = HookOptions.limits,
    owners: list[int] | None = None,
    reuse: bool = False,
) -> HookResult:
    """Run every batch *batches* hands out, as *account*, and collect what the hooks did.

    *owners*: the uids a hook file may belong to (the child re-checks each file it
    opens); None accepts any owner (``crashd hook-test``). Bounds: *timeout* seconds
    per hook from its start; *output_cap* bytes of output for all the hooks together;
    and the report's whole run at most ``timeout + 1`` s per hook handed out plus
    ``STARTUP_TIMEOUT`` per child started. *reuse*: take the child from, and give it back to, the
    hook hosts of *account* (:mod:`crashd.hooks.host`), so that a burst of reports starts one.
    """
    if account.uid == 0 or account.gid == 0:
        raise RuntimeError("refusing to run hooks as root")  # not assert: must hold under -O too
    budget = Budget(output_cap, deadline=time.monotonic())
    state = _State(fields, dict(fields), budget, per_hook=timeout + SLACK_PER_HOOK)
    queue = state.next_batch(batches)
    config = _Config(account, python, timeout, limits, owners, reuse)
    while queue:
        queue, failure = _session(state, queue, batches, config)
        if state.result.stopped:
            _skip(state, queue, batches, "not run: an earlier hook raised StopIteration")
            break
        if failure is not None:  # the child failed before running any hook, or the report's bounds are spent
            _skip(state, queue, batches, f"not run: {failure}")
            break
        if not queue:
            queue = state.next_batch(batches)
    return state.finish()


def _skip(state: _State, queue: list[str], batches: Batches, reason: str) -> None:
    """Record *queue* and every later batch as not run, for *reason*: nothing disappears silently."""
    while queue:
        state.result.skipped.update(dict.fromkeys(queue, reason))
        queue = state.next_batch(batches)


@dataclass(frozen=True)
class _Config:
    account: Account
    python: str
    timeout: float
    limits: HookLimits
    owners: list[int] | None
    reuse: bool

    @property
    def host_key(self) -> tuple[Account, str, HookLimits]:
        """Who a hook host runs as: reports with the same key may share one."""
        return self.account, self.python, self.limits


class _ProtocolError(CrashdError):
    """The runner said something crashd did not ask for: the child is killed."""


def _session(
    state: _State, queue: list[str], batches: Batches, config: _Config, *, fresh: bool = False
) -> tuple[list[str], str | None]:
    """One child over *queue* and the batches after it.

    Returns the hooks of the batch in progress that never started (empty when the
    child finished normally), and a sentence when the rest must not run: the child
    failed before any hook started, or the report's time or output is spent.
    Every message is checked against what was handed out: a ``start`` only for the
    next hook in order, a ``done`` only for the hook that started. A kept child (*reuse*) that fails
    before its first hook is replaced by a fresh one (*fresh*) once.
    """
    budget = state.budget
    budget.deadline = max(budget.deadline, time.monotonic()) + STARTUP_TIMEOUT
    talk = None if fresh or not config.reuse else host.take(config.host_key)
    kept = talk is not None
    if talk is not None:
        talk.next_report(budget, state.tail)
    else:
        try:
            talk = HookChild(
                config.python, config.account, config.limits.__dict__, budget=budget, tail=state.tail
            )
        except (OSError, subprocess.SubprocessError) as error:  # no child at all: exec failed
            return list(queue), f"the hook child could not be started: {error}"
    batch, started, any_started = list(queue), 0, False
    current: str | None = None
    settled = False  # every batch handed out is done: the child may end, or be kept
    try:
        talk.send({"fields": _encode(state.current), "hooks": batch, "owners": config.owners,
                   "timeout": config.timeout, "output_cap": budget.output_cap})  # fmt: skip
        for message in talk.messages():
            if "start" in message:
                if current is not None or started >= len(batch) or message["start"] != batch[started]:
                    raise _ProtocolError
                current = batch[started]
                started, any_started = started + 1, True
                state.result.ran.append(current)
                talk.deadline = time.monotonic() + config.timeout  # fixed: nothing resets it
                talk.deadline_reason = f"timed out after {config.timeout:g} s"
            elif "done" in message:
                if current is None or message["done"] != current:
                    raise _ProtocolError
                if "died" in message:
                    state.result.errors[error_key(current)] = (
                        f"crashd: the hook {message['died']}{talk.last_words()}"
                    )
                else:
                    _apply(state, current, message)
                current = None
                _between_hooks(talk)
            elif message.get("batch") == "done" and current is None:
                if state.result.stopped:
                    settled = True
                    return batch[started:], None  # run() records the rest
                if started != len(batch):
                    raise _ProtocolError
                more = state.next_batch(batches)
                if not more:
                    settled = True
                    return [], None
                batch, started = more, 0
                talk.send({"hooks": batch})
                _between_hooks(talk)
            else:
                raise _ProtocolError
    except _ProtocolError:
        talk.failure = "broke crashd's hook protocol"
    finally:
        if settled and config.reuse:
            host.give_back(config.host_key, talk)  # kept only if nothing is amiss; else ended
        else:
            talk.end()
    failure = talk.failure or talk.exit_problem()
    if failure is None:  # the tree ended while hooks were still to answer
        failure = "ended before its hooks were done (exit status 0)"
    if current is not None:
        state.result.errors[error_key(current)] = f"crashd: the hook {failure}{talk.last_words()}"
    if budget.output > budget.output_cap:
        cap = budget.output_cap / MiB
        return batch[started:], f"this report's hooks wrote more than {cap:g} MiB of output"
    if time.monotonic() >= budget.deadline:
        return batch[started:], "this report's hooks ran out of time"
    if current is not None or any_started:
        return batch[started:], None  # a fresh child runs the rest
    if kept:
        return _session(state, queue, batches, config, fresh=True)
    return batch, f"the hook child {failure}{talk.last_words()}"


def _between_hooks(talk: HookChild) -> None:
    """The runner's own step between two hooks (or to its end) gets ``STARTUP_TIMEOUT``."""
    talk.deadline = time.monotonic() + STARTUP_TIMEOUT
    talk.deadline_reason = f"stalled for {STARTUP_TIMEOUT:g} s between hooks"


def _apply(state: _State, hook: str, message: Mapping[str, object]) -> None:
    problems: list[str] = []
    fields = message.get("fields")
    for key, value in (fields if isinstance(fields, dict) else {}).items():
        decoded = _decode(value)
        if valid_key(key) and decoded is not None:
            state.current[key] = decoded
        else:
            problems.append(f"dropped an invalid field {key[:80]!r}")
    removed = message.get("removed")
    for key in removed if isinstance(removed, list) else []:
        state.current.pop(str(key), None)
    error = message.get("error")
    if error or problems:
        state.result.errors[error_key(hook)] = "\n".join(filter(None, [str(error or ""), *problems]))
    if message.get("stop"):
        state.result.stopped = True


def _encode(fields: Mapping[str, str | bytes]) -> dict[str, object]:
    return {
        k: v if isinstance(v, str) else {"base64": base64.b64encode(v).decode("ascii")}
        for k, v in fields.items()
    }


def _decode(value: object) -> str | bytes | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("base64"), str):
        with contextlib.suppress(ValueError):
            return base64.b64decode(value["base64"], validate=True)
    return None


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
    waiting: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
) -> HookResult:
    """Run the general, package and source-package hooks for a report with these text *fields*, owned by
    *owner_uid*; in *waiting* while their process runs (the caller lets others work meanwhile:
    :meth:`crashd.delivery.Courier.waiting`).

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
            with waiting():
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
