"""Issue 15: what the one-POST-at-a-time section (``Courier.wire``) holds, and what it leaves to others.

The queued rate is bounded by this section: what it does for one report, no other report's POST can
overlap. These tests hold one POST on the wire (its send waits for the test) and look at what another
report, prepared meanwhile, has on disk — and at what a kill at that moment would cost.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from crashd.delivery import Courier
from crashd.lifecycle import State
from crashd.report import DEFAULT_LIMITS
from crashd.spool import ReportName, Spool
from crashd.state import StateStore
from crashd.uploader import Answer, DirectUploader, HttpTransport, Job, OfflineError
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
            assert courier.wire.locked() and daisy.reports == []  # the first POST still holds the wire
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
