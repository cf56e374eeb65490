"""``crashd daemon``: the asyncio service that watches the crash directory.

systemd starts it (``crashd.path`` when the crash directory changes,
``crashd.timer`` for deferred retries); it scans the directory, then reacts to
inotify events within milliseconds, and exits 0 once nothing is due within
the idle timeout, so that it costs nothing while there is nothing to do.

The event loop only schedules. Each report is worked on by one task at a
time (:meth:`Courier.process` in a worker thread; the POSTs themselves go out
one at a time); a report touched again while it is being worked on is simply
looked at once more afterwards. When many reports are due at once (a queue
found at start), a task works through a batch of them in its thread, so that
each report does not cost a hop from the loop to a thread and back; a report
whose turn in a batch has not come is taken back by the loop when an event
comes for it, and handled as any other. Retries wake the loop when they fall due —
it sleeps until then, it never polls.

A stop (SIGTERM, SIGINT) is honoured at once, even while an upload hangs: every
step is recorded before it is taken, so a report cut off mid-POST is resent
next time and daisy answers 409 "already reported".

Past ~400 lines on purpose: one scheduler, whose state (what is due, busy, waiting in a batch, held
back by the tidy, new since it, stamped while busy) every part of it reads and writes; split, each
part would reach into the others' state.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Collection, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from asyncinotify import Inotify, Mask

from crashd import _inotify, lifecycle, network, process
from crashd.config import Settings
from crashd.consent import Consent, may_collect_automatically
from crashd.delivery import Courier
from crashd.hooks.options import HookOptions
from crashd.lifecycle import Gate, Status
from crashd.report import Limits
from crashd.spool import ReportName, Spool

if TYPE_CHECKING:
    from crashd import dbus_prefs  # imported when the bus is used: dbus-fast is not idle's to pay for
    from crashd.tidy import Tidy

log = logging.getLogger(__name__)

# Batches in hand at once, each a thread's: one worked through at a time (Courier.pipeline holds
# Courier.working), the others while it waits for a report's hooks.
WORKERS = 4
# Reports one task works through in its thread when that many are due: one loop-thread-loop hop per batch,
# not per report, and the next report prepared while one is on the wire (the queued rate; a report alone
# still goes at once, in a batch of its own).
BATCH = 32
# While reports are in hand, the watch's events are read when a batch ends, or this many seconds after
# the first: nearly all are crashd's own (stamps, write-backs), and a wake-up each — four to five a report
# — took the GIL from the report being worked on (issue 15, the queued rate).
EVENTS_HELD = 0.05
INLINE_ADMIT = 256 * 1024  # a new report this small is judged for duplicates in the loop (Daemon._admitted)
DUE_LIMIT = 16384  # reports remembered by name (~4 MiB); past that, a streamed rescan finds them
_WATCH = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.ATTRIB | Mask.ONLYDIR  # written, renamed in, touched
_EVENT_SUFFIXES = (b".crash", b".upload")  # the names _report_for reads; the rest are not decoded
_FILES_WATCH = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.CREATE | Mask.DELETE | Mask.ONLYDIR


@dataclass(frozen=True)
class DBusSettings:
    """What the D-Bus preferences service needs (DESIGN.md §5); None on Daemon: no D-Bus."""

    state_dir: Path
    config: Path | None
    status_provider: Callable[[], Iterable[Status]]


@dataclass
class Daemon:
    """The service's state: what is due when, what is being worked on."""

    spool: Spool
    courier: Courier
    limits: Limits
    consent: Gate
    idle_timeout: float = Settings.idle_timeout
    once: bool = False
    hooks: HookOptions | None = None
    dbus: DBusSettings | None = None
    bus_lost: bool = False
    bus_watch: asyncio.Task[None] | None = None
    service: dbus_prefs.Service | None = None  # the bus service: ReportChanged goes out through it
    monitor: network.Monitor | None = None  # follows NetworkManager; its hold() is the courier's gate
    held_by_network: set[ReportName] = field(default_factory=set)  # kept running for these
    tidy: Tidy | None = None  # duplicate collapse and the disk budget, before anything is sent
    untidy: bool = True  # a report arrived since the last tidy
    fresh: set[str] | None = None  # ...and these are the only ones (None: a full sweep, crashd.tidy.Tidy)
    held: set[ReportName] = field(default_factory=set)  # duplicates the last tidy said not to send yet
    due: dict[ReportName, float] = field(default_factory=dict)  # courier.clock() time; at most DUE_LIMIT
    scan: Generator[ReportName, None, None] | None = None  # a rescan in progress, pulled as workers free up
    scan_again: bool = False  # a rescan was asked for while one was in progress
    rescan_at: float | None = None  # when the reports that did not fit in `due` fall due (their records say)
    busy: set[ReportName] = field(default_factory=set)
    # Busy, in a batch, and not begun: claimed by its worker thread when its turn comes, or taken back by
    # the loop when an event comes for it first (set.remove decides: only one of them can succeed).
    waiting: set[ReportName] = field(default_factory=set)
    again: set[ReportName] = field(default_factory=set)
    # `.upload` stamps that appeared while their report was being worked on: crashd's own stamp, or a
    # UI's request that the pass in hand may have missed (it read the stamps before) — looked at again
    # when that pass ended held (issue 15 fault: a held report stayed held after its .upload).
    stamped: set[ReportName] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    last_activity: float = field(default_factory=time.monotonic)
    heap_released: bool = False  # since the last report was worked on (process.release_free_memory)
    events_fd: int = -1  # the inotify watch's
    events_held: float = EVENTS_HELD
    held_events: asyncio.TimerHandle | None = None  # reports in hand: the watch is read when this fires

    async def run(self) -> int:
        self.spool.defer_upload_stamp = True  # stamped after the POST (crashd.collector.collect)
        # Records made durable in groups, when the daemon goes idle and when it stops, not one fsync per
        # report: a power cut in between costs at most a resend, which daisy answers 409.
        self.courier.grouped = True
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop.set)
        self.service = service = await self._serve_dbus()  # before READY=1: activated calls find the names
        if self.monitor is not None:  # before the first scan: a held report must not go out first
            await self.monitor.start(self._network_changed)
        try:
            return await self._run()
        finally:
            if self.monitor is not None:
                await self.monitor.close()
            if service is not None:
                await service.close()  # release the names first: the next call activates a new daemon
                service.bus.disconnect()

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        with Inotify() as inotify:
            inotify.add_watch(Path(self.spool.path), _WATCH)
            os.set_blocking(inotify.fd, False)  # asyncinotify 4.4's NONBLOCK flag is O_CLOEXEC's value
            self.events_fd = inotify.fd
            loop.add_reader(inotify.fd, self._events, inotify.fd)  # read by crashd._inotify
            self.rescan()
            gc.collect()  # start-up's cycles (imports, settings, the bus), freed before the first idle trims
            sd_notify("READY=1", f"STATUS=watching {self.spool.path}")
            log.info("watching %s", self.spool.path)
            try:
                await self._schedule()
            finally:
                loop.remove_reader(inotify.fd)
                if self.held_events is not None:  # a batch ending after this reads nothing more
                    self.held_events.cancel()
                    self.held_events = None
                sd_notify("STOPPING=1")
                self.courier.flush()  # what went out is durable (a worker still in flight saves unsynced)
        code = 1 if self.bus_lost else 0  # non-zero: systemd's Restart=on-failure brings us back
        if self.busy:  # a worker stuck in a hung upload must not hold up the stop
            log.info("stopping with %d report(s) in flight; they stay pending", len(self.busy))
            logging.shutdown()
            os._exit(code)
        return code

    async def _serve_dbus(self) -> dbus_prefs.Service | None:
        """The consent service on the system bus; None with --once, or when there is no bus to use."""
        if self.dbus is None or self.once:
            return None
        from crashd import dbus_prefs

        try:
            bus = await dbus_prefs.connect_system_bus()
        except dbus_prefs.BusUnavailable as error:
            log.warning("%s: running without the D-Bus preferences service", error)
            return None
        try:
            service = await dbus_prefs.serve(
                bus, state_dir=self.dbus.state_dir, config=self.dbus.config,
                status_provider=self.dbus.status_provider, on_activity=self._touch,
                on_consent_change=self._consent_changed, on_upload_now=self.rescan, spool=self.spool,
                watch=watch_files,
            )  # fmt: skip
        except dbus_prefs.BusUnavailable as error:  # another crashd, or whoopsie-preferences, has a name
            log.warning("%s: running without the D-Bus preferences service", error)
            bus.disconnect()
            return None
        self.bus_watch = asyncio.create_task(self._watch_bus(bus))
        return service

    async def _watch_bus(self, bus: dbus_prefs.MessageBus) -> None:
        with contextlib.suppress(Exception):  # EOFError/OSError when the bus dies; None when we hang up
            await bus.wait_for_disconnect()
        if not self.stop.is_set():
            log.error("lost the system bus connection; exiting so that systemd restarts crashd")
            self.bus_lost = True
            self.stop.set()

    def _touch(self) -> None:
        """A D-Bus client called: the idle exit waits (the scheduler re-checks when its sleep ends)."""
        self.last_activity = time.monotonic()

    def _consent_changed(self, consent: Consent) -> None:
        """Automatic switched on: held reports go out now. Off needs nothing: the gate is read per
        report, so nothing new starts (an upload already on the wire may finish)."""
        if may_collect_automatically(consent):
            self.rescan()

    def _network_changed(self, _conditions: network.Conditions) -> None:
        """Whatever changed, what the network held is looked at again now, not at the next timer."""
        self.held_by_network.clear()
        self.last_activity = time.monotonic()
        self.rescan()

    def rescan(self) -> None:
        """Look at every report: at start, when inotify lost events, and when reports that did not fit
        in ``due`` fall due. The directory is streamed (names pulled as workers free up), so memory
        does not grow with the number of reports; their delivery state is on disk."""
        self.untidy, self.fresh = True, None
        if self.scan is None:
            self.scan = self.spool.scan()
        else:  # one more pass once this one ends: restarting it would redo its start again and again
            self.scan_again = True
        self.wake.set()

    def schedule(self, name: ReportName, when: float) -> None:
        if name in self.busy:
            self.again.add(name)
            return
        if name in self.due or len(self.due) < DUE_LIMIT:
            self.due[name] = min(when, self.due.get(name, when))
        else:  # bounded memory: a rescan at that time finds it (and any other) due
            self.rescan_at = min(when, self.rescan_at if self.rescan_at is not None else when)
        self.wake.set()

    def _start_due(
        self,
        now: float,
        slots: asyncio.Semaphore,
        tasks: set[asyncio.Task[None]],
        finished: Callable[[asyncio.Task[None]], None],
    ) -> None:
        """Start work on due reports while worker slots are free: named ones first, then the rescan; up to
        BATCH reports a task when more are due than there are free slots.

        Never more tasks than workers: 100,000 reports at once were 100,000 tasks (224 MiB)."""
        picked: list[ReportName] = []

        def pick(name: ReportName) -> None:
            self.due.pop(name, None)
            self.busy.add(name)
            self.waiting.add(name)
            picked.append(name)

        if self.rescan_at is not None and self.rescan_at <= now:
            self.rescan_at = None
            self.rescan()
        free = WORKERS - len(tasks)
        room = max(free, 0) * BATCH
        ready = (name for name, when in self.due.items() if when <= now and name not in self.busy)
        for name in list(itertools.islice(ready, room)):  # only as many as start: O(room) a pass
            pick(name)
        while len(picked) < room and self.scan is not None:
            name = next(self.scan, None)
            if name is None:
                self.scan = self.spool.scan() if self.scan_again else None
                self.scan_again = False
            elif name in self.busy:
                if name not in self.waiting:  # being worked on: it may have changed since
                    self.again.add(name)
            elif name in self.held:
                continue  # a duplicate the last tidy holds back
            elif self._untidied(name):  # the scan met a file newer than the last tidy (its event is
                self._arrived(name)  # not read yet): it waits for the next pass, tidied first
                self.schedule(name, now)
            elif name not in self.due:
                pick(name)
            else:
                self.due[name] = now
        if not picked:
            return
        size = -(-len(picked) // min(free, len(picked)))  # as evenly as the free slots allow
        for start in range(0, len(picked), size):
            task = asyncio.create_task(self._work(picked[start : start + size], slots))
            tasks.add(task)
            task.add_done_callback(finished)

    def _admitted(self, fresh: Collection[str]) -> bool | None:
        """The tidy's :meth:`crashd.tidy.Tidy.admit` of a few small new reports, in the loop: a thread hop
        less before their POST. Only up to WORKERS files of at most INLINE_ADMIT bytes each (their parse
        takes ~0.1 ms); None, not judged here, for more or larger ones (a core): the tidy in its thread
        judges them. False: judged and found wanting, or the judging failed."""
        if self.tidy is None or len(fresh) > WORKERS:
            return None
        try:
            for name in fresh:  # a hint (a larger one goes to the thread at once); admit checks the fd
                if os.stat(os.path.join(self.spool.path, name), follow_symlinks=False).st_size > INLINE_ADMIT:
                    return None
            return self.tidy.admit(fresh, max_size=INLINE_ADMIT)  # on its fstat: a file swapped in since
        except Exception:  # gone (a sweep finds that out), or a bug: the sweep, in a thread, decides
            log.debug("judging %s in the loop failed", sorted(fresh), exc_info=True)
            return False

    def _arrived(self, name: ReportName) -> None:
        """A report new since the last tidy: the next one looks at it (alone, if nothing else changed)."""
        self.untidy = True
        if self.fresh is not None:
            self.fresh.add(name.crash)

    def _rewritten_by_us(self, name: ReportName) -> bool:
        """Whether the report is the very file its delivery record follows, and that record needs no POST:
        crashd's own write-back after the POST, whose event came after its work ended or while it was busy.
        Nothing to tidy or do again (it was a full sweep of the directory per report sent, then a second
        pass of each: the queued rate of "spec" reports). A report that still needs something, or that
        changed since its record was saved, is looked at as any other."""
        try:
            st = os.stat(os.path.join(self.spool.path, name.crash), follow_symlinks=False)
        except OSError:
            return False  # gone, or not ours to look at: processing says what it is
        record = self.courier.store.peek(name.crash)
        if record is None or record.fingerprint != lifecycle.Fingerprint.of(st):
            return False
        return lifecycle.due(record) is None

    def _untidied(self, name: ReportName) -> bool:
        """Whether the report was made or changed after the last tidy began (its duplicates not collapsed)."""
        if self.tidy is None:
            return False
        try:
            st = os.stat(os.path.join(self.spool.path, name.crash), follow_symlinks=False)
        except OSError:
            return False  # gone, or not ours to look at: processing says what it is
        # Since the last *sweep* began, not the last tidy: an admission judges only the reports whose events
        # were read, and a rescan may meet others made before it (a duplicate was sent twice so).
        return st.st_ctime_ns >= self.tidy.swept_ns  # ctime: no user can set it ahead to stay untidied

    def _events(self, fd: int) -> None:
        """On the loop, when the watch has events: read now, or — reports in hand — held (EVENTS_HELD)."""
        if not self.busy:
            self._read_events(fd)
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(fd)
        self.held_events = loop.call_later(self.events_held, self._release_events)

    def _release_events(self) -> None:
        """The events held while reports were in hand: read now, and the watch followed again."""
        if self.held_events is None:
            return
        self.held_events.cancel()
        self.held_events = None
        self._read_events(self.events_fd)
        asyncio.get_running_loop().add_reader(self.events_fd, self._events, self.events_fd)

    def _read_events(self, fd: int) -> None:
        """What the watch's events ask for (:meth:`_event`)."""
        data = _inotify.read(fd)
        if data:
            self.last_activity = time.monotonic()
        for filename in _inotify.decode(data, _EVENT_SUFFIXES):
            if filename is None:
                log.warning("inotify queue overflowed: rescanning %s", self.spool.path)
                self.rescan()
            elif (name := _report_for(filename)) is not None:
                self._event(name, filename.endswith(".upload"))

    def _event(self, name: ReportName, stamp: bool) -> None:
        """Report *name* was written, renamed in or touched, or (*stamp*) its ``.upload`` was."""
        self._take_back(name)  # not begun in its batch: it is looked at as if it were not busy
        if stamp:
            if name in self.busy:
                self.stamped.add(name)  # our own stamp on the report in hand, or a UI's request
                return
            if self.spool.answered(name):
                return  # crashd's own stamp, written just after the POST: nothing asked
        elif name not in self.busy:
            if self._rewritten_by_us(name):
                return
            self._arrived(name)  # a new report (a busy one's event is its own rewrite, by its hooks)
        self.schedule(name, self.courier.clock())

    def _take_back(self, name: ReportName) -> None:
        """A report waiting for its turn in a batch is no longer busy, unless its thread has begun it."""
        try:
            self.waiting.remove(name)  # atomic: a worker thread claims a report the same way
        except KeyError:
            return
        self.busy.discard(name)

    async def _schedule(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(WORKERS)

        def finished(task: asyncio.Task[None]) -> None:
            # Wake the loop only once the task has left `tasks`: a wake-up set by the task itself can be
            # consumed by a loop pass that still counts it as running, and cleared by the next sleep —
            # which then lasted the whole idle timeout (issue 15: `--once` exiting 30 s late).
            tasks.discard(task)
            self.wake.set()

        while not self.stop.is_set():
            self.wake.clear()  # before looking: whatever changes from here on wakes the sleep below
            while self.tidy is not None and self.untidy and not self.stop.is_set():  # duplicates and the
                self.untidy = False  # budget before anything is sent, again if more reports arrived meanwhile
                busy = {name.crash for name in self.busy}
                fresh, self.fresh = self.fresh, set()
                if fresh and (admitted := self._admitted(fresh)) is not None:
                    if admitted:
                        continue  # judged here, alone: nothing held back or removed changes
                    fresh = None  # found wanting: the sweep decides (in a thread), without judging them again
                held = {ReportName.parse(name) for name in await asyncio.to_thread(self.tidy, busy, fresh)}
                for name in self.held - held:
                    self.schedule(name, self.courier.clock())  # no longer held back: due as before
                for name in held:
                    self.due.pop(name, None)
                self.held = held
            now = self.courier.clock()
            self._start_due(now, slots, tasks, finished)
            sd_notify(f"STATUS={len(self.busy)} in progress, {len(self.due)} waiting")
            if not tasks and self._idle(now):
                log.info("idle: nothing due within %.0f s; exiting", self.idle_timeout)
                return
            if tasks:
                self.heap_released = False
            elif not self.heap_released:  # going idle: the burst's records durable, what start-up or the
                await asyncio.to_thread(self.courier.flush)  # burst freed back to the system (issue 15)
                process.release_free_memory()
                self.heap_released = True
            await self._sleep(self._next_wake(now, len(tasks)))

    def _idle(self, now: float) -> bool:
        if self.scan is not None:
            return False
        later = [*self.due.values(), *([self.rescan_at] if self.rescan_at is not None else [])]
        if self.once:
            return not any(when <= now for when in later)
        if self.held_by_network:  # only a running daemon hears the network change
            return False
        quiet = time.monotonic() - self.last_activity >= self.idle_timeout
        return quiet and all(when - now > self.idle_timeout for when in later)

    def _next_wake(self, now: float, running: int) -> float:
        """Seconds until the next report falls due, or until the idle timeout could end the run."""
        if running >= WORKERS:
            return float("inf")  # nothing can start before a worker frees up, which sets `wake`
        if self.scan is not None:
            return 0.0  # more of the rescan to start
        rescan = self.rescan_at if self.rescan_at is not None else float("inf")
        next_due = min(min(self.due.values(), default=float("inf")), rescan) - now
        if self.busy:  # a finishing task sets `wake`
            return max(0.0, next_due)
        idle_end = self.last_activity + self.idle_timeout - time.monotonic()
        return max(0.0, min(next_due, idle_end) if idle_end > 0 else next_due)

    async def _sleep(self, seconds: float) -> None:
        """Until *seconds* pass, `wake` is set (it is cleared at the top of each pass) or a stop."""
        waiters = [asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(self.stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=None if seconds == float("inf") else seconds,
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _work_through(self, names: list[ReportName]) -> list[tuple[ReportName, Status | None]]:
        """In a worker thread: each of *names* in turn that the loop has not taken back, until a stop, through
        the courier's pipeline (the next report made ready while one is on the wire); the outcome of each
        one begun."""

        def claimed() -> Iterator[ReportName]:
            for name in names:
                if self.stop.is_set():
                    return  # the rest stay waiting, and pending: nothing new starts once a stop is asked
                try:
                    self.waiting.remove(name)  # atomic: the loop takes a report back the same way
                except KeyError:
                    continue  # an event came for it first: the loop has it
                yield name

        return list(self.courier.pipeline(self.spool, claimed(), self.limits, self.consent, self.hooks))

    async def _work(self, names: list[ReportName], slots: asyncio.Semaphore) -> None:
        done: list[tuple[ReportName, Status | None]] = []
        try:
            async with slots:
                done = await asyncio.to_thread(self._work_through, names)
        except Exception:  # a bug must not take the daemon down with it; the reports wait for a restart
            log.exception("%s: processing failed", ", ".join(name.crash for name in names))
            done = [(name, None) for name in names if name in self.busy]
        finally:
            for name in names:  # not begun (a stop): no longer anyone's
                with contextlib.suppress(KeyError):
                    self.waiting.remove(name)
                    self.busy.discard(name)
            self.busy.difference_update(name for name, _ in done)
            self._release_events()  # before the outcomes: an event of a report done meanwhile is seen
            self.last_activity = time.monotonic()
            if self.held:  # a kept report came free: count its duplicates (a full sweep)
                self.untidy, self.fresh = True, None
        for name, status in done:
            self._worked(name, status)
        self.wake.set()

    def _worked(self, name: ReportName, status: Status | None) -> None:
        """What follows one report's pass: its signal, its retry, another look if something came meanwhile."""
        if status is not None and self.service is not None:
            self.service.report_changed(status.name, status.state.value)  # settings UIs follow each outcome
        if status is not None and network.held_by_network(status.detail):
            self.held_by_network.add(name)
        if status is not None and (when := lifecycle.retry_at(status)) is not None:
            self.schedule(name, when)  # a retry, a core upload or a failure's backoff falls due
        stamped = name in self.stamped
        self.stamped.discard(name)
        if stamped and status is not None and status.state is lifecycle.State.HELD:
            self.again.add(name)  # a request for it came while this pass held it: answer it now
        if name in self.again:
            self.again.discard(name)
            # Its own write-back's event comes while it is busy (a report enriched in memory is rewritten
            # after its POST): looked at again, every such report was processed twice (issue 15).
            if not self._rewritten_by_us(name):
                self.schedule(name, self.courier.clock())


def _report_for(filename: str) -> ReportName | None:
    """The report an event is about: ``X.crash`` itself, or its ``X.upload`` stamp."""
    stem, dot, suffix = filename.rpartition(".")
    if not dot or suffix not in ("crash", "upload"):
        return None
    try:
        return ReportName(stem)
    except ValueError:
        return None


def sd_notify(*assignments: str) -> None:
    """Tell systemd about our state (READY=1, STATUS=…, STOPPING=1); a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.sendto("\n".join(assignments).encode(), address)


def watch_files(files: Collection[Path], on_change: Callable[[], None]) -> Callable[[], None]:
    """inotify on the directories of *files* (the consent file, its lock, the legacy switches): call
    *on_change* on the loop when one of them is written, moved or deleted. Returns the function that
    stops watching. Only the daemon watches files (DESIGN.md §2); the D-Bus service gets this as *watch*.
    """
    watched = {Path(path).absolute() for path in files}
    inotify = Inotify()
    for directory in {path.parent for path in watched}:
        with contextlib.suppress(OSError):  # missing (no /etc/crashd): the per-call re-read covers it
            inotify.add_watch(directory, _FILES_WATCH)

    async def follow() -> None:
        with contextlib.suppress(OSError):  # closed under us by stop()
            async for event in inotify:
                if Mask.Q_OVERFLOW in event.mask or event.path in watched:
                    on_change()

    task = asyncio.create_task(follow())

    def stop() -> None:
        inotify.close()
        task.cancel()

    return stop


def run(daemon_factory: Callable[[], Daemon]) -> int:
    """Run the daemon built by *daemon_factory* inside a fresh event loop."""

    async def main() -> int:
        return await daemon_factory().run()

    return asyncio.run(main())
