"""Delivery: advance one report by at most one report POST and one core POST, durably.

The order of writes is what makes a ``kill -9`` at any point harmless:

1. the record says ``posting`` before the POST goes out (before it waits for the wire: a report's
   first record is made so);
2. the server's answer is classified (:mod:`crashd.policy`) and the record
   updated before anything else happens — both writes reach the page cache at
   once, which a killed process cannot undo; the POST and this write are one *exchange*, and
   exchanges run one at a time (:class:`crashd.wire.Wire`); the writes are fsynced (against power
   cuts) after the exchange, or, with ``grouped`` (``upload-all``, the daemon),
   all at once by the caller's :meth:`~crashd.state.StateStore.flush`;
3. only then is ``.uploaded`` written.

4. last, when nothing more is due for the report (sent with no core pending, or final), the fields
   crashd added in memory are written into it (:meth:`Courier.write_back`): a new file, with the old
   one's times, renamed over it only if it still is the file that was sent; then the record follows
   the new file.

A kill before 2 leaves ``posting``: the next run resends, and daisy's 409
("already reported") counts as sent — at most one duplicate POST per kill,
because only one exchange runs at a time (:mod:`crashd.wire`): a report whose record says
``posting`` while it waited for the wire is sent for the first time by the next run. A kill
between 2 and 3 leaves a ``sent`` record without a stamp: the next run writes
the stamp and sends nothing. A kill in 4 before the rename leaves the file as it was, stamped: sent, and
it keeps only what it had (the server has the added fields); after the rename, before the record
follows, the new file reads as sent by its stamps (it has the old file's times, and ``.uploaded`` is
newer): nothing is sent again. A rejected or expired report has no stamp: that kill costs one repeated
POST, answered as before.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import random as _random
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from crashd import collector, lifecycle, policy
from crashd.collector import Collected, event, stamped_id
from crashd.hooks.options import HookOptions
from crashd.lifecycle import Core, CorePhase, Fingerprint, Gate, Record, State, Status, Step
from crashd.policy import Backoff, Decision, Rejected, RetryAt, Sent
from crashd.report import Limits, ReportError
from crashd.spool import OpenReport, ReportName, Spool, UnsafeFileError
from crashd.state import StateStore
from crashd.uploader import (
    Answer,
    CoreUnavailable,
    Job,
    OfflineError,
    Uploader,
    UploadError,
    WorkerError,
    encode_report,
)
from crashd.wire import Wire

log = logging.getLogger(__name__)

EARLY_LOOK = 64  # reports looked at for one without a .uploaded (start_uploader_early)
T = TypeVar("T")


@dataclass(frozen=True)
class Post:
    """A report's POST, which its delivery waits for: the job, and what records the answer (or the
    UploadError in its place) — the exchange's second half, done before the next POST goes out."""

    job: Job
    settle: Callable[[Answer | UploadError], Any]


@dataclass(frozen=True)
class Exchange:
    """An exchange run whole in its turn on the wire (a core's POST, which records its own start)."""

    run: Callable[[], Any]


# A report's delivery as steps (Courier._process): yields what it waits for on the wire, is sent its outcome.
Steps = Generator[Post | Exchange, Any, T]


@dataclass
class Courier:
    """Everything needed to deliver reports to one crash database."""

    uploader: Uploader
    url: str
    system_id: str
    store: StateStore
    backoff: Backoff = field(default_factory=Backoff)
    clock: Callable[[], float] = time.time
    random: Callable[[], float] = _random.random
    wire: Wire = field(default_factory=Wire)  # one exchange (a POST, its answer recorded) at a time
    # Reports that made processing fail, and how many times in a row: their retries back off
    # exponentially, so a report that always fails never becomes a loop (DESIGN.md §7 rule 6).
    failures: dict[str, int] = field(default_factory=dict)
    network: Gate | None = None  # metered/offline (crashd.network); None: always go
    # True: the caller makes the records durable once per batch (StateStore.flush) instead of
    # one fsync per report; they are in the page cache all the same, so a kill -9 loses nothing.
    grouped: bool = False
    # Held while a report is worked on, except while it waits (on the wire, on its hooks' processes):
    # the threads take turns instead of contending for the GIL, which made every step of the exchange
    # on the wire wait for it (issue 15: "spec" +8-14 % queued). Reports still overlap their waits.
    working: threading.Lock = field(default_factory=threading.Lock)

    def process(
        self,
        spool: Spool,
        name: ReportName,
        limits: Limits,
        consent: Gate | None = None,
        hooks: HookOptions | None = None,
    ) -> Status | None:
        """Do what one report needs next, and say where it stands afterwards.

        Without *consent* (``upload-all``: someone asked to send everything now)
        every report that is not final is attempted at once. With it (the
        daemon) a report goes out only when consent allows, and a retry only
        when its backoff says it is due.

        Never raises: whatever one report does (rewritten under crashd while its hooks run, a name
        too long for its stamps, a bug it triggers) is that report's ``failed`` state, retried after
        a backoff, never the end of the run (issue 11).
        """
        try:
            with self.working:
                status = self._run(self._process(spool, name, limits, consent, hooks))
        except Exception as error:  # contained per report: the run goes on with the others
            return self._failed(name, error)
        self.failures.pop(name.crash, None)
        return status

    def pipeline(
        self,
        spool: Spool,
        names: Iterable[ReportName],
        limits: Limits,
        consent: Gate | None = None,
        hooks: HookOptions | None = None,
    ) -> Iterator[tuple[ReportName, Status | None]]:
        """:meth:`process` each of *names* in turn, in this thread, and yield each outcome: the next report
        is read, enriched and made ready while one is on the wire (issue 15, the queued rate).

        A POST is sent, the next report prepared, then the answer received and recorded, and only then
        the next POST sent: kill-safety is :meth:`process`'s. Report N+1 is made ready while N's job is
        with the worker and the server, not after its answer, and in the thread that sent N: no other
        thread has to wake up for it. *names* is read one ahead of the report on the wire, never more.
        """
        from crashd.pipeline import Pipeline  # loaded with the first batch: the idle daemon needs none of it

        with self.working:
            line = Pipeline(self)
            reports = (
                (name, self._process(spool, name, limits, consent, hooks, line.hooks_running))
                for name in names
            )
            yield from line.run(reports)

    def _process(
        self,
        spool: Spool,
        name: ReportName,
        limits: Limits,
        consent: Gate | None,
        hooks: HookOptions | None,
        waiting: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
    ) -> Steps[Status | None]:
        """The steps of :meth:`process`: a generator that yields what it waits for on the wire (a
        :class:`Post`, an :class:`Exchange`) and is sent its outcome (:meth:`_run`,
        :class:`crashd.pipeline.Pipeline`). *waiting*: what a hook process of the report runs in (by
        default :meth:`waiting`)."""
        opened = collector.open_report(spool, name)
        if not isinstance(opened, OpenReport):
            return opened
        with opened:
            fingerprint = Fingerprint.of(opened.stat)
            record = self.store.load(name.crash, fingerprint, self.clock())
            stamps = collector.read_stamps(spool, opened)
            step = lifecycle.next_step(
                name.crash, record, fingerprint, stamps, self.clock(),
                consent=consent, network=self.network, eager=consent is None,
            )  # fmt: skip
            record = step.record
            if step.step is Step.DONE and step.status.state is State.SENT:
                return lifecycle.uploaded_before(name.crash, record.oops_id or stamped_id(spool, opened))
            if step.step is Step.HELD:  # not an attempt: nothing counted, no backoff
                line = "%s: %s" if step.by_network else "%s: held: %s"
                log.info(line, name.crash, step.status.detail, extra=event(State.HELD, name.crash))
                return step.status
            if step.step in (Step.DONE, Step.WAIT):
                return step.status  # final for this file, or backing off: not yet
            if step.step is not Step.STAMP:  # a POST is due and allowed: the upload worker, if it has
                self.uploader.prepare()  # to start, starts while the report is read and enriched
                # (asked only now, so a run with nothing to send starts nothing)
            # Only the core left to send: the report itself went out, so it is neither enriched nor
            # marked again.
            first = step.step is Step.SEND
            collected = collector.collect(
                spool, opened, limits, stamp=first, hooks=hooks if first else None, stamps=stamps,
                waiting=waiting or self.waiting,
            )  # fmt: skip
            if isinstance(collected, Status):
                self._remember(record, collected)
                return collected
            if collected.opened is not opened:  # rewritten with what its hooks added: a new file
                record = replace(record, fingerprint=Fingerprint.of(collected.opened.stat))
            with collected:
                try:
                    record = yield from self._deliver(spool, collected, record)
                except ReportError as error:  # found only when encoding: not UTF-8, too much text
                    refused = collector.invalid(name, error.detail)
                    self._remember(record, refused)
                    return refused
                except OSError as error:  # the state could not be recorded: nothing went out unrecorded
                    where = self.store.directory or "memory"
                    log.error("%s: cannot record delivery state in %s: %s", name.crash, where, error)
                    reason = f"cannot record delivery state in {where}: {error.strerror or error}"
                    return Status(name.crash, State.FAILED, detail=reason)
        settled = lifecycle.settled(record, self.network)
        if settled.state is State.HELD:  # a core (or a retry) the network holds says so
            log.info("%s: %s", record.name, settled.detail, extra=event(State.HELD, record.name))
        return settled

    def _network_allows(self, *, core: bool) -> bool:
        return self.network is None or self.network(core) is None

    def _remember(self, record: Record, verdict: Status) -> None:
        """Record a final verdict on this very file, so nobody parses it again to reach it."""
        if verdict.state in (State.INVALID, State.SKIPPED):
            phase = verdict.state
            try:
                self.store.save(replace(record, phase=phase, last_error=verdict.detail), self.clock())
            except OSError as error:  # only a shortcut for next time: the verdict stands without it
                log.warning("%s: cannot record that it is %s: %s", record.name, phase.value, error)

    def _deliver(self, spool: Spool, collected: Collected, record: Record) -> Steps[Record]:
        """Send the report if it is not sent yet, write its stamp, then its core if one is due."""
        if record.phase in (State.QUEUED, State.POSTING):
            record = yield from self._post_report(collected, record)
        if record.phase is State.SENT:
            _stamp(spool, collected, record)
        if collected.write_back is not None and (record.phase is State.SENT or lifecycle.due(record) is None):
            # Before the core: it is read from the file, and named by the Architecture crashd may have added.
            record = self.write_back(spool, collected, record)
        core_due = record.core is not None and not record.core.phase.final
        if record.phase is State.SENT and core_due and self._network_allows(core=True):
            record = yield from self._post_core(collected, record)
        return record

    def write_back(self, spool: Spool, collected: Collected, record: Record) -> Record:
        """Write what crashd added in memory (and sent) into the report, after its POST, and have the
        record follow the new file; the record as it was when the file cannot be rewritten.

        Once the report itself is settled (sent, or never to be): a report waiting for a retry is
        enriched again in memory then (in-process, cheap); a core that is due is then read from the new
        file, which *collected* holds from here on. Never raises: the POST's outcome stands whatever
        happens to the copy on disk. The new file gets the old one's times, so that its ``.uploaded``,
        written before, still says it was sent — a kill before the record follows resends nothing. The
        follow is not fsynced: lost to a power cut, the stamps still say sent.
        """
        write, collected.write_back = collected.write_back, None
        assert write is not None
        shown = os.path.join(spool.path, collected.name)
        try:
            replaced = spool.replace_report(collected.opened, write, keep_times=True)
        except (OSError, UnsafeFileError) as error:
            log.warning("%s: %s, but the fields crashd added could not be written into it: %s",
                        shown, record.phase.value, error)  # fmt: skip
            return record
        if replaced is None:
            log.info("%s: replaced by a newer crash after its POST: the fields crashd added are not "
                     "written into that one", shown)  # fmt: skip
            return record
        assert not collected.owned  # written back only when no hook ran: *opened* is the caller's
        collected.opened, collected.owned = replaced, True  # a core is read from the new file
        try:
            return self._save(replace(record, fingerprint=Fingerprint.of(replaced.stat)))
        except OSError as error:  # the stamps still say sent; a final verdict may be reached again
            log.warning("%s: rewritten, but its delivery record cannot follow it: %s", shown, error)
            return record

    def _post_report(self, collected: Collected, record: Record) -> Steps[Record]:
        body = encode_report(collected.sent)  # a report crashd refuses fails here, before any state
        # "posting" is saved before the exchange is handed to the wire, not in it: of the records a kill
        # leaves saying so, only the one whose POST was on the wire can have reached the server; the
        # others are sent for the first time. A report's first record is made with that state (one save,
        # not two, per report), and the exchange saves only the answer. Unsynced: in the page cache, a
        # record survives kill -9; the fsync (against power cuts, where the worst case is a resend
        # answered 409) comes after the exchange.
        record = self._save(replace(record, phase=State.POSTING, attempts=record.attempts + 1))
        job = Job.of_report(body, self.url, self.system_id, collected.report.limits)

        def settle(outcome: Answer | UploadError) -> tuple[Record, Decision]:
            if isinstance(outcome, UploadError):
                decision: Decision = self._retry(outcome, record.attempts)
            else:
                decision = policy.classify(
                    outcome.status, outcome.headers, outcome.body, self.clock(),
                    attempts=record.attempts, backoff=self.backoff, random=self.random,
                )  # fmt: skip
            return self._save(self._apply(record, decision)), decision

        record, decision = yield Post(job, settle)
        self._say(record, decision)
        self._sync(record.name)
        return record

    def _apply(self, record: Record, decision: Decision) -> Record:
        """The record once the server answered (or could not be reached): what the exchange saves."""
        if isinstance(decision, Sent):
            core = Core() if decision.core_requested else None
            return replace(record, phase=State.SENT, oops_id=decision.oops_id, next_attempt=None,
                           last_error=decision.detail, core=core)  # fmt: skip
        if isinstance(decision, Rejected):
            return replace(record, phase=State.REJECTED, next_attempt=None, last_error=decision.reason)
        if policy.expired(record.first_seen, decision.when, self.backoff):
            return replace(record, phase=State.EXPIRED, next_attempt=None, last_error=decision.reason)
        reason = f"{decision.reason}: {self.url}" if decision.misconfigured else decision.reason
        return replace(record, phase=State.QUEUED, next_attempt=decision.when, last_error=reason)

    def _say(self, record: Record, decision: Decision) -> None:
        """The log line of an answer, once it is recorded: after the exchange, which holds up every other
        report's POST (issue 15: the line was ~50 µs of it a report)."""
        name, state = record.name, record.phase
        if state is State.SENT:
            log.info("%s: sent, OOPS id %s", name, record.oops_id or "(none)", extra=event(state, name))
        elif state is State.REJECTED:
            log.info("%s: rejected by the server: %s", name, record.last_error, extra=event(state, name))
        elif state is State.EXPIRED:
            log.warning("%s: expired, unsent since %s: %s", name, time.ctime(record.first_seen),
                        record.last_error, extra=event(state, name))  # fmt: skip
        else:
            misconfigured = isinstance(decision, RetryAt) and decision.misconfigured
            level = logging.ERROR if misconfigured else logging.INFO
            next_try = time.ctime(record.next_attempt or 0)
            log.log(level, "%s: not delivered (%s); next try %s", name, record.last_error, next_try,
                    extra=event(State.FAILED, name))  # fmt: skip

    def _post_core(self, collected: Collected, record: Record) -> Steps[Record]:
        assert record.core is not None and record.oops_id is not None
        pending, oops_id = record.core, record.oops_id

        def exchange() -> Record:
            core = replace(pending, phase=CorePhase.POSTING, attempts=pending.attempts + 1)
            posting = self._save(replace(record, core=core))
            try:
                fd, limits = collected.opened.fd, collected.report.limits
                answer = self.uploader.send(Job.of_core(fd, limits, self.url, self.system_id, oops_id))
            except CoreUnavailable as error:
                log.info("%s: %s", record.name, error)
                core = replace(core, phase=CorePhase.UNAVAILABLE, next_attempt=None, last_error=str(error))
                return self._save(replace(posting, core=core))
            except UploadError as error:
                decision: Decision = self._retry(error, core.attempts)
            else:
                decision = policy.classify_core(
                    answer.status, answer.body, self.clock(),
                    attempts=core.attempts, backoff=self.backoff, random=self.random,
                )  # fmt: skip
            return self._save(replace(posting, core=self._apply_core(posting, core, decision)))

        record = yield Exchange(exchange)
        self._sync(record.name)
        return record

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """While this thread waits (its POST's turn and answer, its hooks' processes), another report is
        worked on: :attr:`working` is let go, and taken back after."""
        self.working.release()
        try:
            yield
        finally:
            self.working.acquire()

    def _run(self, steps: Steps[T]) -> T:
        """Take *steps* to their end in this thread, each exchange on the wire in its turn."""
        resume: Callable[[Any], Post | Exchange] = steps.send
        value: Any = None
        while True:
            try:
                wait = resume(value)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            try:
                with self.waiting():
                    value, resume = self.wire.run(functools.partial(self._exchange, wait)), steps.send
            except Exception as error:  # what the exchange raised is raised where the steps wait for it
                value, resume = error, steps.throw

    def _exchange(self, wait: Post | Exchange) -> Any:
        if isinstance(wait, Exchange):
            return wait.run()
        return wait.settle(self._start(wait.job)())

    def _start(self, job: Job) -> Callable[[], Answer | UploadError]:
        """Send *job*; the call returned receives its answer, or the UploadError in its place."""
        try:
            receive = self.uploader.start(job)
        except UploadError as error:
            failed = error  # outlives the except clause, which unbinds *error*
            return lambda: failed

        def outcome() -> Answer | UploadError:
            try:
                return receive()
            except UploadError as error:
                return error

        return outcome

    def _failed(self, name: ReportName, error: Exception) -> Status:
        """A report whose processing raised: ``failed``, retried after a backoff that grows each time."""
        reason = f"crashd could not process it: {type(error).__name__}: {error}"
        log.error("%s: %s", name.crash, reason, exc_info=log.isEnabledFor(logging.DEBUG),
                  extra=event(State.FAILED, name.crash))  # fmt: skip
        failures = self.failures[name.crash] = self.failures.get(name.crash, 0) + 1
        when = self.clock() + self.backoff.delay(failures, self.random, server=False)
        return Status(name.crash, State.FAILED, detail=reason, attempts=failures, next_attempt=when)

    def _save(self, record: Record) -> Record:
        return self.store.save(record, self.clock(), sync=False)

    def flush(self) -> None:
        """Make every record saved while *grouped* durable (:meth:`~crashd.state.StateStore.flush`); a
        failure is logged: it costs at most a resend after a power cut, which daisy answers 409."""
        try:
            self.store.flush()
        except OSError as error:
            where = self.store.directory
            log.warning("delivery records in %s could not be made durable (%s): after a power cut, "
                        "reports may be sent again (daisy answers 409)", where, error)  # fmt: skip

    def _sync(self, name: str) -> None:
        if not self.grouped:
            self.store.sync(name)

    def _retry(self, error: UploadError, attempts: int) -> RetryAt:
        # Trouble on this side (no network, the upload worker died) retries soon; a failing server, not.
        server = not isinstance(error, (OfflineError, WorkerError))
        return policy.retry(str(error), self.clock(), attempts, self.backoff, self.random, server=server)

    def _apply_core(self, record: Record, core: Core, decision: Decision) -> Core:
        if isinstance(decision, Sent):
            log.info("%s: core sent on request", record.name)
            return replace(core, phase=CorePhase.SENT, next_attempt=None, last_error=None)
        if isinstance(decision, Rejected):
            return replace(core, phase=CorePhase.REJECTED, next_attempt=None, last_error=decision.reason)
        assert isinstance(decision, RetryAt)
        if policy.expired(record.first_seen, decision.when, self.backoff):
            return replace(core, phase=CorePhase.EXPIRED, next_attempt=None, last_error=decision.reason)
        return replace(core, phase=CorePhase.PENDING, next_attempt=decision.when, last_error=decision.reason)


def start_uploader_early(uploader: Uploader, spool: Spool, consent: Gate, look: int = EARLY_LOOK) -> bool:
    """Start the upload worker now (:meth:`~crashd.uploader.Uploader.prepare`: in a thread, returning at
    once) when a report is likely to go out: *consent* is automatic and one of the first *look* reports
    has no ``.uploaded``. Whether it was asked to start.

    The daemon calls it first thing, before its own imports: the worker's start (an interpreter, imports,
    a drop of privileges: ~100 ms) then runs beside the daemon's, instead of after it, in front of the
    first POST. A run that finds only sent reports, or that may not send on its own, starts no worker here:
    the first POST that is due starts it (:meth:`Courier.process`)."""
    try:
        if consent(False) is not None:  # not automatic (or reporting off): held unless marked
            return False
        for name in itertools.islice(spool.scan(), look):
            if not spool.exists(name.uploaded):
                uploader.prepare()
                return True
    except Exception:  # only a head start: the first POST starts the worker anyway
        log.debug("could not tell whether to start the upload worker early", exc_info=True)
    return False


def _stamp(spool: Spool, collected: Collected, record: Record) -> None:
    """``.uploaded`` with the OOPS id; a failure is logged, the record already says sent."""
    try:
        if not spool.mark_uploaded(collected.opened, record.oops_id or ""):
            log.info("%s: replaced by a newer crash while it was sent; that one goes out next", record.name)
    except (OSError, UnsafeFileError) as error:
        log.error("%s: sent as %s, but the .uploaded stamp failed: %s", record.name, record.oops_id, error)
