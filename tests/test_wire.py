"""Issue 15: what the one-exchange-at-a-time wire (``Courier.wire``) holds, and what it leaves to others.

The queued rate is bounded by this section: what it does for one report, no other report's POST can
overlap. These tests hold one POST on the wire (its send waits for the test) and look at what another
report, prepared meanwhile, has on disk — and at what a kill at that moment would cost.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from crashd.delivery import Courier
from crashd.lifecycle import State
from crashd.report import DEFAULT_LIMITS
from crashd.spool import ReportName, Spool
from crashd.state import StateStore
from crashd.uploader import Answer, DirectUploader, HttpTransport, Job, OfflineError
from crashd.wire import Wire
from tests.daemon_run import TOKEN, crash, drop, wait_until
from tests.daisy import DaisyServer


@pytest.fixture
def daisy() -> Iterator[DaisyServer]:
    """A loopback daisy that asks for no core: a report's delivery is its one POST."""
    with DaisyServer(core_policy="never") as server:
        yield server
        assert server.errors == []


class HeldUploader(DirectUploader):
    """Sends through the loopback daisy; the first POST waits, on the wire, until ``release`` is set.
    With ``dead`` set, nothing more is sent (what a killed process does)."""

    def __init__(self) -> None:
        super().__init__(HttpTransport(5, 5))
        self.on_wire = threading.Event()
        self.release = threading.Event()
        self.dead = False
        self.held: Job | None = None

    def send(self, job: Job) -> Answer:
        if self.held is None:
            self.held = job
            self.on_wire.set()
            assert self.release.wait(30)
        if self.dead:
            raise OfflineError("killed")
        return super().send(job)


class SaveCountingStore(StateStore):
    saves: Counter[str]

    def save(self, record, now, *, sync=True):  # type: ignore[no-untyped-def]
        self.saves = getattr(self, "saves", Counter())
        self.saves[record.name] += 1
        return super().save(record, now, sync=sync)


def test_a_report_waiting_for_the_wire_says_posting_and_its_record_is_written_twice(daisy, crash_dir):
    """Its record is made with ``posting`` while another POST holds the wire, not in the section: only the
    POST on the wire can have reached the server, so a kill now repeats at most that one. A report's first
    delivery writes its record twice (``posting``, then the answer), not three times (queued first)."""
    for name in ("first", "second"):
        drop(crash_dir / f"_usr_bin_{name}.0.crash", crash(name))
    state = crash_dir.parent / "state"
    store = SaveCountingStore.open(state)
    uploader = HeldUploader()
    courier = Courier(uploader, daisy.url, TOKEN, store, grouped=True)
    results = {}
    with Spool(crash_dir) as spool:

        def process(name: str) -> None:
            results[name] = courier.process(spool, ReportName.parse(name), DEFAULT_LIMITS)

        first = threading.Thread(target=process, args=("_usr_bin_first.0.crash",))
        first.start()
        assert uploader.on_wire.wait(30)
        second = threading.Thread(target=process, args=("_usr_bin_second.0.crash",))
        second.start()
        try:

            def waiting_and_posting() -> bool:
                record = StateStore.reader(state).peek("_usr_bin_second.0.crash")
                return record is not None and record.phase is State.POSTING and record.attempts == 1

            assert wait_until(waiting_and_posting, timeout=10)
            assert courier.wire.busy and daisy.reports == []  # the first POST still holds the wire
        finally:
            uploader.release.set()
            first.join(30)
            second.join(30)
        courier.flush()
    assert {name: status.state for name, status in results.items()} == {
        "_usr_bin_first.0.crash": State.SENT, "_usr_bin_second.0.crash": State.SENT,
    }  # fmt: skip
    assert len(daisy.reports) == 2
    assert store.saves == Counter({"_usr_bin_first.0.crash": 2, "_usr_bin_second.0.crash": 2})
    for name in results:
        record = StateStore.reader(state).peek(name)
        assert record is not None and record.phase is State.SENT and record.attempts == 1


def test_a_kill_while_reports_wait_for_the_wire_repeats_only_the_post_on_it(daisy, crash_dir):
    """What the records a kill leaves say: every waiting report ``posting``, so the next run sends them
    all — and the server answers 409 (a repeat) to the one whose POST was on the wire, and only to it."""
    names = [f"_usr_bin_app{i}.0.crash" for i in range(4)]
    for i, name in enumerate(names):
        drop(crash_dir / name, crash(f"app{i}"))
    state = crash_dir.parent / "state"
    uploader = HeldUploader()
    courier = Courier(uploader, daisy.url, TOKEN, StateStore.open(state), grouped=True)
    with Spool(crash_dir) as spool:
        threads = [
            threading.Thread(target=courier.process, args=(spool, ReportName.parse(name), DEFAULT_LIMITS))
            for name in names
        ]
        for thread in threads:
            thread.start()
        try:
            assert uploader.on_wire.wait(30)

            def all_posting() -> bool:
                records = [StateStore.reader(state).peek(name) for name in names]
                return all(record is not None and record.phase is State.POSTING for record in records)

            assert wait_until(all_posting, timeout=10)
            # Killed now: the POST on the wire reached the server, its answer was never recorded, and the
            # reports waiting for the wire were never sent.
            assert uploader.held is not None
            DirectUploader(HttpTransport(5, 5)).send(uploader.held)
            rerun = Courier(DirectUploader(HttpTransport(5, 5)), daisy.url, TOKEN, StateStore.open(state))
            statuses = [rerun.process(spool, ReportName.parse(name), DEFAULT_LIMITS) for name in names]
        finally:
            uploader.dead = True
            uploader.release.set()
            for thread in threads:
                thread.join(30)
    assert all(status is not None and status.state is State.SENT for status in statuses)
    assert Counter(report.status for report in daisy.reports) == Counter({200: 4, 409: 1})


# -- crashd.wire.Wire itself: the order, the thread an exchange runs on, whose outcome is whose


def test_an_exchange_alone_runs_on_the_thread_that_hands_it_over():
    """A report in hand goes out with no hand-over: its exchange runs in its own thread."""
    wire = Wire()
    assert wire.run(threading.current_thread) is threading.current_thread()
    assert not wire.busy and wire.waiting == 0


def test_exchanges_handed_over_meanwhile_run_after_the_running_one_in_order_on_its_thread():
    """One at a time, first handed over first run, by the thread already running: the others only wait.
    A failing exchange's exception is its own thread's; the wire goes on with the next one."""
    wire = Wire()
    release = threading.Event()
    ran: list[tuple[str, threading.Thread]] = []
    outcomes: dict[str, object] = {}

    def exchange(label: str, fail: bool = False) -> Callable[[], str]:
        def run() -> str:
            ran.append((label, threading.current_thread()))
            if label == "first":
                assert release.wait(30)
            if fail:
                raise OSError(f"{label} failed")
            return label

        return run

    def hand_over(label: str, fail: bool = False) -> None:
        try:
            outcomes[label] = wire.run(exchange(label, fail))
        except OSError as error:
            outcomes[label] = error

    first = threading.Thread(target=hand_over, args=("first",))
    first.start()
    assert wait_until(lambda: wire.busy and len(ran) == 1, timeout=10)
    others = []
    for count, (label, fail) in enumerate([("second", True), ("third", False)], start=1):
        thread = threading.Thread(target=hand_over, args=(label, fail))
        thread.start()
        others.append(thread)
        assert wait_until(lambda count=count: wire.waiting == count, timeout=10)  # handed over in this order
    assert len(ran) == 1  # nothing overlaps the exchange that is running
    release.set()
    for thread in (first, *others):
        thread.join(30)
    assert [label for label, _ in ran] == ["first", "second", "third"]
    assert {thread for _, thread in ran} == {first}  # run by the thread that was running, not by their own
    assert outcomes["first"] == "first" and outcomes["third"] == "third"
    assert isinstance(outcomes["second"], OSError) and str(outcomes["second"]) == "second failed"
    assert not wire.busy and wire.waiting == 0
    assert wire.run(threading.current_thread) is threading.current_thread()  # idle again: no hand-over


def test_a_turn_holds_the_wire_until_it_ends_and_its_end_runs_what_was_handed_over_meanwhile():
    """``begin``/``end`` (Courier.pipeline): an exchange in two parts keeps the wire between them, whatever
    its thread does meanwhile; another thread's exchange waits, and runs in the thread that ends the turn."""
    wire = Wire()
    order: list[str] = []
    ran_in: list[threading.Thread] = []
    wire.begin()  # nothing running: the turn is ours at once

    def other() -> None:
        order.append(wire.run(lambda: ran_in.append(threading.current_thread()) or "other's exchange"))

    thread = threading.Thread(target=other)
    thread.start()
    assert wait_until(lambda: wire.waiting == 1, 10)
    assert order == [] and wire.busy
    order.append("our turn ends")
    wire.end()
    thread.join(10)
    assert order == ["our turn ends", "other's exchange"]
    assert ran_in == [threading.current_thread()]
    assert not wire.busy and wire.waiting == 0


def test_a_turn_comes_after_the_exchanges_handed_over_before_it():
    wire = Wire()
    order: list[str] = []
    release = threading.Event()

    def first() -> None:
        order.append("first")
        assert release.wait(10)

    def turn() -> None:
        wire.begin()
        order.append("turn")
        wire.end()

    threads = [threading.Thread(target=wire.run, args=(first,))]
    threads[0].start()
    assert wait_until(lambda: order == ["first"], 10)
    threads.append(threading.Thread(target=wire.run, args=(lambda: order.append("second"),)))
    threads[1].start()
    assert wait_until(lambda: wire.waiting == 1, 10)
    threads.append(threading.Thread(target=turn))
    threads[2].start()
    assert wait_until(lambda: wire.waiting == 2, 10)
    release.set()
    for thread in threads:
        thread.join(10)
    assert order == ["first", "second", "turn"]
    assert not wire.busy and wire.waiting == 0
