"""crashd.lifecycle, the pure decision: a table of record × stamps × file × consent × network × now → next step.

Every driver (the courier, ``crashd status``, the D-Bus ``List``, the daemon, ``upload-all``, the exception
hook) asks these functions, so the table below is the lifecycle's specification.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crashd.lifecycle import (
    UPLOADED_BEFORE,
    Core,
    CorePhase,
    Fingerprint,
    Gate,
    Record,
    State,
    Status,
    Step,
    attempted,
    due,
    next_step,
    pending,
    retry_at,
    sent_before,
    settled,
    status,
)
from crashd.spool import Stamps

NAME = "_usr_bin_app.0.crash"
NOW = 1_700_000_000.0
MTIME = 1_699_999_000_000_000_000  # the report file's mtime, ns
FILE = Fingerprint(device=2049, inode=12, size=4096, mtime_ns=MTIME)
OTHER_FILE = replace(FILE, inode=13)  # a new crash replaced the report
LATER, EARLIER = NOW + 60, NOW - 60
NONE = Stamps(None, None)
MARKED = Stamps(MTIME + 1, None)  # .upload, never sent
UPLOADED = Stamps(None, MTIME + 5)  # .uploaded as new as the report
MARKED_AND_UPLOADED = Stamps(MTIME + 1, MTIME + 5)
REMARKED = Stamps(MTIME + 9, MTIME + 5)  # a newer .upload asks again after it was sent
EARLIER_CRASH = Stamps(None, MTIME - 1)  # an .uploaded of the crash this file replaced
SAME_TICK = Stamps(MTIME + 5, MTIME + 5)  # .upload and .uploaded in one clock tick: sent


def record(phase: State = State.QUEUED, **changes: object) -> Record:
    fields: dict[str, object] = {"name": NAME, "fingerprint": FILE, "first_seen": NOW - 600, "phase": phase}
    return Record(**(fields | changes))  # type: ignore[arg-type]


def core(phase: CorePhase = CorePhase.PENDING, **changes: object) -> Core:
    return Core(phase, **changes)  # type: ignore[arg-type]


QUEUED_LATER = record(attempts=2, next_attempt=LATER, last_error="503: busy")
QUEUED_DUE = record(attempts=2, next_attempt=EARLIER, last_error="503: busy")
SENT = record(State.SENT, attempts=1, oops_id="abc")
CORE_DUE = record(State.SENT, attempts=1, oops_id="abc", core=core())
CORE_LATER = record(
    State.SENT, attempts=1, oops_id="abc", core=core(attempts=1, next_attempt=LATER, last_error="500")
)


# Gates: None lets everything out; these hold something, with a reason.
def off(_marked: bool) -> str:
    return "ReportCrashes is off"


def asked_only(marked: bool) -> str | None:
    return None if marked else "waiting for someone to send it"


def offline(_core: bool) -> str:
    return "offline"


def metered_core(core: bool) -> str | None:
    return "metered: the core waits" if core else None


def metered_report(core: bool) -> str | None:
    return None if core else "metered: the report waits"


@dataclass(frozen=True)
class Case:
    id: str
    record: Record | None
    stamps: Stamps
    step: Step
    state: State
    detail: str | None = None
    consent: Gate | None = None
    network: Gate | None = None
    eager: bool = False
    fingerprint: Fingerprint = FILE
    when: float | None = None
    next_attempt: float | None = None
    oops_id: str | None = None


# fmt: off
CASES = [
    # -- no record: the stamps decide ------------------------------------------------------------------
    Case("new", None, NONE, Step.SEND, State.NEW),
    Case("marked", None, MARKED, Step.SEND, State.QUEUED, "marked for upload"),
    Case("uploaded by someone", None, UPLOADED, Step.DONE, State.SENT, UPLOADED_BEFORE),
    Case("uploaded after it was marked", None, MARKED_AND_UPLOADED, Step.DONE, State.SENT, UPLOADED_BEFORE),
    Case("marked and uploaded in one tick", None, SAME_TICK, Step.DONE, State.SENT, UPLOADED_BEFORE),
    Case("marked again after it was sent", None, REMARKED, Step.SEND, State.QUEUED, "marked for upload"),
    Case("uploaded stamp of an earlier crash", None, EARLIER_CRASH, Step.SEND, State.NEW),
    Case("record of a replaced file", record(State.REJECTED, attempts=1), NONE, Step.SEND, State.NEW,
         fingerprint=OTHER_FILE),
    # -- consent ---------------------------------------------------------------------------------------
    Case("new, automatic off", None, NONE, Step.HELD, State.HELD, "waiting for someone to send it",
         consent=asked_only),
    Case("marked, automatic off", None, MARKED, Step.SEND, State.QUEUED, "marked for upload", consent=asked_only),
    Case("marked, switched off", None, MARKED, Step.HELD, State.HELD, "ReportCrashes is off", consent=off),
    Case("queued, switched off", QUEUED_LATER, MARKED, Step.HELD, State.HELD, "ReportCrashes is off", consent=off),
    Case("sent before, switched off", None, UPLOADED, Step.DONE, State.SENT, UPLOADED_BEFORE, consent=off),
    Case("rejected, switched off", record(State.REJECTED, last_error="400: no"), MARKED, Step.DONE,
         State.REJECTED, "400: no", consent=off),
    Case("core due, switched off", CORE_DUE, MARKED_AND_UPLOADED, Step.HELD, State.HELD, "ReportCrashes is off",
         consent=off, oops_id="abc"),
    # -- backoff ---------------------------------------------------------------------------------------
    Case("queued, retry later", QUEUED_LATER, MARKED, Step.WAIT, State.QUEUED, "503: busy", when=LATER,
         next_attempt=LATER, consent=asked_only),
    Case("queued, retry later, upload-all", QUEUED_LATER, MARKED, Step.SEND, State.QUEUED, "503: busy",
         eager=True, next_attempt=LATER),
    Case("queued, retry due", QUEUED_DUE, MARKED, Step.SEND, State.QUEUED, "503: busy", consent=asked_only,
         next_attempt=EARLIER),
    Case("posting when crashd stopped", record(State.POSTING, attempts=1), MARKED, Step.SEND, State.POSTING,
         next_attempt=0.0, consent=asked_only),
    # -- network ---------------------------------------------------------------------------------------
    Case("new, offline", None, NONE, Step.HELD, State.HELD, "offline", network=offline),
    Case("queued due, offline", QUEUED_DUE, MARKED, Step.HELD, State.HELD, "offline", network=offline),
    Case("queued later, offline: it waits first", QUEUED_LATER, MARKED, Step.WAIT, State.QUEUED, "503: busy",
         consent=asked_only, network=offline, when=LATER, next_attempt=LATER),
    Case("sent, core retry later, not marked", CORE_LATER, UPLOADED, Step.HELD, State.HELD,
         "waiting for someone to send it", consent=asked_only, oops_id="abc"),
    Case("new, metered with the core held", None, NONE, Step.SEND, State.NEW, network=metered_core),
    Case("core due, metered with the core held", CORE_DUE, UPLOADED, Step.HELD, State.HELD,
         "metered: the core waits", network=metered_core, oops_id="abc"),
    Case("core due, only reports held", CORE_DUE, UPLOADED, Step.SEND_CORE, State.SENT, "core pending",
         network=metered_report, next_attempt=0.0, oops_id="abc"),
    Case("sent before, offline", None, UPLOADED, Step.DONE, State.SENT, UPLOADED_BEFORE, network=offline),
    Case("stamp missing, offline: no POST needed", SENT, MARKED, Step.STAMP, State.SENT, network=offline,
         oops_id="abc"),
    # -- sent: the core, the stamp, asked again --------------------------------------------------------
    Case("sent and stamped", SENT, MARKED_AND_UPLOADED, Step.DONE, State.SENT, oops_id="abc"),
    Case("sent, stamp missing", SENT, MARKED, Step.STAMP, State.SENT, oops_id="abc"),
    Case("sent, core due", CORE_DUE, MARKED_AND_UPLOADED, Step.SEND_CORE, State.SENT, "core pending",
         next_attempt=0.0, oops_id="abc"),
    Case("sent, core due, stamp missing", CORE_DUE, MARKED, Step.SEND_CORE, State.SENT, "core pending",
         next_attempt=0.0, oops_id="abc"),
    Case("sent, core retry later", CORE_LATER, MARKED_AND_UPLOADED, Step.WAIT, State.SENT, "core pending: 500",
         consent=asked_only, when=LATER, next_attempt=LATER, oops_id="abc"),
    Case("sent, core sent", replace(SENT, core=core(CorePhase.SENT)), UPLOADED, Step.DONE, State.SENT,
         "core sent on request", oops_id="abc"),
    Case("sent, core unavailable", replace(SENT, core=core(CorePhase.UNAVAILABLE, last_error="no CoreDump")),
         UPLOADED, Step.DONE, State.SENT, "core unavailable: no CoreDump", oops_id="abc"),
    Case("sent, marked again", SENT, REMARKED, Step.SEND, State.QUEUED, "marked for upload"),
    Case("sent, marked again, switched off", SENT, REMARKED, Step.HELD, State.HELD, "ReportCrashes is off",
         consent=off),
    # -- final for this file ---------------------------------------------------------------------------
    *(
        Case(f"{phase.value} for good", record(phase, last_error="why"), MARKED, Step.DONE, phase, "why",
             consent=asked_only, network=offline)
        for phase in (State.REJECTED, State.EXPIRED, State.INVALID, State.SKIPPED)
    ),
    Case("rejected, then uploaded by someone", record(State.REJECTED), UPLOADED, Step.DONE, State.SENT,
         UPLOADED_BEFORE),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_next_step(case: Case) -> None:
    decided = next_step(
        NAME, case.record, case.fingerprint, case.stamps, NOW,
        consent=case.consent, network=case.network, eager=case.eager,
    )  # fmt: skip
    shown = decided.status
    assert (decided.step, shown.state, shown.detail) == (case.step, case.state, case.detail)
    assert (decided.when, shown.next_attempt, shown.oops_id) == (case.when, case.next_attempt, case.oops_id)
    assert shown.name == NAME and decided.record.name == NAME
    assert decided.by_network == (decided.step is Step.HELD and case.network is not None and shown.detail in (
        "offline", "metered: the core waits"))  # fmt: skip
    if case.record is None or case.fingerprint != case.record.fingerprint:  # a fresh record, first seen now
        assert decided.record == Record(NAME, case.fingerprint, NOW)
    if decided.step is Step.SEND:
        assert decided.record.phase in (State.QUEUED, State.POSTING) and decided.record.core is None


def test_a_report_asked_again_restarts_its_record_but_keeps_its_history() -> None:
    sent = replace(CORE_LATER, last_error="already reported")
    decided = next_step(NAME, sent, FILE, REMARKED, NOW)
    assert decided.record == replace(sent, phase=State.QUEUED, core=None)


class Asked:
    """A gate that remembers what it was asked."""

    def __init__(self, answer: str | None = None) -> None:
        self.answer, self.asked = answer, []

    def __call__(self, flag: bool) -> str | None:
        self.asked.append(flag)
        return self.answer


@pytest.mark.parametrize(
    ("record", "stamps", "consent_asked", "network_asked"),
    [
        (None, NONE, [False], [False]),  # not marked; a report POST
        (None, MARKED, [True], [False]),
        (CORE_DUE, UPLOADED, [False], [True]),  # a core POST
        (SENT, MARKED, [True], []),  # only the stamp is left: no POST, no network
        (QUEUED_LATER, MARKED, [True], []),  # waiting: the network is asked when it falls due
        (None, UPLOADED, [], []),  # sent before: nobody is asked
        (record(State.EXPIRED), MARKED, [], []),
    ],
)
def test_each_gate_is_asked_only_when_its_answer_matters(
    record, stamps, consent_asked, network_asked
) -> None:
    consent, network = Asked(), Asked()
    next_step(NAME, record, FILE, stamps, NOW, consent=consent, network=network)
    assert (consent.asked, network.asked) == (consent_asked, network_asked)


def test_held_by_consent_asks_no_network() -> None:
    network = Asked("offline")
    decided = next_step(NAME, None, FILE, NONE, NOW, consent=off, network=network)
    assert (decided.step, decided.by_network, network.asked) == (Step.HELD, False, [])


def test_a_held_report_keeps_its_history_but_no_time() -> None:
    decided = next_step(NAME, QUEUED_LATER, FILE, MARKED, NOW, consent=off)
    assert decided.status == Status(NAME, State.HELD, None, "ReportCrashes is off", 2, None)


# -- was it sent? --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upload", "uploaded", "is_pending", "is_sent"),
    [
        (None, None, False, False),
        (10, None, True, False),
        (None, 10, False, True),
        (10, 10, False, True),  # one clock tick: sent, never twice
        (10, 11, False, True),
        (11, 10, True, False),  # asked again after it went out
        (None, 9, False, False),  # older than the report (mtime 10): an earlier crash's stamp
    ],
)
def test_pending_and_sent_before(upload, uploaded, is_pending, is_sent) -> None:
    assert pending(upload, uploaded) is is_pending
    assert sent_before(upload, uploaded, 10) is is_sent
    assert Stamps(upload, uploaded).pending is is_pending  # the spool's stamps ask the same rule


stamp_times = st.none() | st.integers(0, 2**63)


@given(upload=stamp_times, uploaded=stamp_times, mtime=st.integers(0, 2**63))
def test_sent_before_is_the_capture_writers_rule(upload, uploaded, mtime) -> None:
    """The rule the exception hook applied on its own before: a current .uploaded is as new as both the
    report and any .upload."""
    expected = uploaded is not None and uploaded >= max(mtime, upload or 0)
    assert sent_before(upload, uploaded, mtime) is expected


# -- what a record says ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rec", "expected"),
    [
        (record(), 0.0),
        (QUEUED_LATER, LATER),
        (record(State.POSTING), 0.0),
        (SENT, None),
        (CORE_DUE, 0.0),
        (CORE_LATER, LATER),
        *((replace(SENT, core=core(phase)), None) for phase in CorePhase if phase.final),
        *((record(phase), None) for phase in (State.REJECTED, State.EXPIRED, State.INVALID, State.SKIPPED)),
    ],
)
def test_due(rec: Record, expected: float | None) -> None:
    assert due(rec) == expected


def test_status_of_a_record_joins_its_notes() -> None:
    rec = replace(CORE_LATER, last_error="already reported")
    assert status(rec) == Status(NAME, State.SENT, "abc", "already reported; core pending: 500", 1, LATER)
    assert status(record(State.REJECTED, last_error="400: no")).detail == "400: no"
    assert status(record()).detail is None


@pytest.mark.parametrize(
    ("rec", "network", "state", "detail"),
    [
        (SENT, offline, State.SENT, None),  # nothing left to POST: nothing to hold
        (CORE_DUE, metered_core, State.HELD, "metered: the core waits"),
        (CORE_DUE, metered_report, State.SENT, "core pending"),
        (QUEUED_LATER, offline, State.HELD, "offline"),  # its retry waits for the network too
        (QUEUED_LATER, None, State.QUEUED, "503: busy"),
        (record(State.REJECTED, last_error="400"), offline, State.REJECTED, "400"),
    ],
)
def test_settled_after_work(rec, network, state, detail) -> None:
    shown = settled(rec, network)
    assert (shown.state, shown.detail) == (state, detail)
    assert shown.next_attempt is None or state is not State.HELD


# -- when to look again ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "looked_at_again"),
    [(State.QUEUED, True), (State.SENT, True), (State.FAILED, True)]
    + [(state, False) for state in State if state not in (State.QUEUED, State.SENT, State.FAILED)],
)
def test_retry_at(state: State, looked_at_again: bool) -> None:
    assert retry_at(Status(NAME, state, next_attempt=LATER)) == (LATER if looked_at_again else None)
    assert retry_at(Status(NAME, state)) is None


@pytest.mark.parametrize("state", list(State))
def test_attempted_makes_queued_failed_only(state: State) -> None:
    shown = Status(NAME, state, detail="x", attempts=3, next_attempt=LATER)
    expected = State.FAILED if state is State.QUEUED else state
    assert attempted(shown) == replace(shown, state=expected)


# -- the one state enum ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["queued", "posting", "sent", "rejected", "expired", "invalid", "skipped"])
def test_records_of_the_current_format_load(value: str) -> None:
    document = json.loads(json.dumps(record(State(value), core=core()).as_json()))
    assert document["phase"] == value and document["core"]["phase"] == "pending"
    loaded = Record.from_json(document)
    assert loaded.phase is State(value) and loaded.core == core()


@pytest.mark.parametrize("value", ["new", "failed", "pending", "held", "bogus"])
def test_a_record_never_holds_a_state_of_one_run(value: str) -> None:
    document = record().as_json() | {"phase": value}
    with pytest.raises(ValueError):
        Record.from_json(document)


def test_final_states() -> None:
    assert {state for state in State if state.final} == {
        State.SENT, State.REJECTED, State.EXPIRED, State.INVALID, State.SKIPPED,
    }  # fmt: skip
    assert {state for state in State if state.persisted} == {
        State.QUEUED, State.POSTING, *(state for state in State if state.final),
    }  # fmt: skip


# -- invariants over every input -------------------------------------------------------------------------

phases = st.sampled_from([state for state in State if state.persisted])
cores = st.none() | st.builds(
    Core, st.sampled_from(CorePhase), st.integers(0, 5), st.none() | st.floats(0, 2 * NOW)
)
records = st.none() | st.builds(
    Record, st.just(NAME), st.sampled_from([FILE, OTHER_FILE]), st.just(NOW - 600), phases, st.integers(0, 5),
    st.none() | st.floats(0, 2 * NOW), st.none() | st.text(max_size=5), st.none() | st.just("abc"), cores,
)  # fmt: skip
gates = st.sampled_from([None, off, asked_only])
networks = st.sampled_from([None, offline, metered_core, metered_report])
stamps = st.builds(
    Stamps, st.none() | st.integers(MTIME - 5, MTIME + 5), st.none() | st.integers(MTIME - 5, MTIME + 5)
)


@given(rec=records, stamps=stamps, consent=gates, network=networks, eager=st.booleans())
def test_every_decision_is_coherent(rec, stamps, consent, network, eager) -> None:
    decided = next_step(NAME, rec, FILE, stamps, NOW, consent=consent, network=network, eager=eager)
    shown, working = decided.status, decided.record
    assert working.fingerprint == FILE and shown.name == NAME
    if decided.step is Step.DONE:
        before = sent_before(stamps.upload_ns, stamps.uploaded_ns, MTIME)
        assert before or (shown.state.final and shown.state is not State.SENT)
    if decided.step is Step.WAIT:
        assert not eager and decided.when is not None and decided.when > NOW and decided.when == due(working)
    if decided.step is Step.HELD:
        assert shown.state is State.HELD and shown.detail and shown.next_attempt is None
    if decided.step in (Step.SEND, Step.SEND_CORE):
        assert due(working) is not None and (eager or due(working) <= NOW)
    if decided.step in (Step.SEND_CORE, Step.STAMP):
        assert working.phase is State.SENT
    if decided.step is not Step.HELD:
        assert shown.state is not State.HELD


@pytest.mark.parametrize(
    "record",
    [
        Record("a.crash", Fingerprint(1, 2, 3, 4), 1.5),
        Record(
            "b.crash",
            Fingerprint(5, 6, 7, 8),
            2.0,
            State.SENT,
            3,
            None,
            "x",
            "id-1",
            Core(CorePhase.PENDING, 1, 9.5, "busy"),
            10.0,
        ),
    ],
)
def test_a_record_is_saved_with_every_field_and_read_back_the_same(record: Record) -> None:
    """as_json is spelled out (asdict was a quarter of a millisecond a save): it must still hold every
    field, as asdict would, and read back equal."""
    assert json.dumps(record.as_json(), sort_keys=True) == json.dumps(asdict(record), sort_keys=True)
    assert Record.from_json(json.loads(json.dumps(record.as_json()))) == record
