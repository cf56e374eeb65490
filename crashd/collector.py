"""Collection: from a name in the crash directory to a report ready to send, or the reason it is not.

Each report goes through the same steps whoever asks (``upload-all`` now, the
daemon later): open it safely (:func:`open_report`), read its stamps (:func:`read_stamps`; whether
it was already sent is :mod:`crashd.lifecycle`'s to say), then :func:`collect` it: index it, check it is a
kind the crash database takes, enrich it once (what crashd adds itself, then the package hooks that
apply), and stamp it ``.upload``. What crashd adds itself, with no hook process run, is sent from memory
and written into the file after the POST (:attr:`Collected.write_back`): a file creation less before
the wire. Every report
that is not collected comes back as a :class:`Status` with a reason — nothing
is dropped silently, and a refused file is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import crashd
from crashd import fs
from crashd.hooks.options import HookOptions
from crashd.lifecycle import State, Status
from crashd.report import Limits, Report, ReportError, StoredBinary, read_report, valid_key, write_report
from crashd.spool import OpenReport, ReportName, Spool, Stamps, UnsafeFileError

log = logging.getLogger(__name__)

# The kinds daisy handles (DESIGN.md §3). Bug reports belong in a bug tracker and
# daisy refuses kernel vmcores, so those are left alone, with the reason.
SENT_KINDS = frozenset({"Crash", "Package", "KernelOops", "Hang", "RecoverableProblem"})


# A journal MESSAGE_ID per event kind (`journalctl MESSAGE_ID=…`), passed as logging "extra".
_MESSAGE_IDS = {
    State.SENT: "3b8f0b5a1c2d4e6f8a9b0c1d2e3f4a51",
    State.REJECTED: "3b8f0b5a1c2d4e6f8a9b0c1d2e3f4a52",
    State.FAILED: "3b8f0b5a1c2d4e6f8a9b0c1d2e3f4a53",
    State.INVALID: "3b8f0b5a1c2d4e6f8a9b0c1d2e3f4a54",
    State.EXPIRED: "3b8f0b5a1c2d4e6f8a9b0c1d2e3f4a55",
    State.HELD: "3b8f0b5a1c2d4e6f8a9b0c1d2e3f4a56",
    State.SKIPPED: "3b8f0b5a1c2d4e6f8a9b0c1d2e3f4a57",
}


def event(state: State, name: str) -> dict[str, str]:
    """Structured fields for a log line about one report: journald keeps them, stderr ignores them."""
    return {"MESSAGE_ID": _MESSAGE_IDS[state], "CRASHD_REPORT": name}


@dataclass
class Collected:
    """An indexed report of a kind that is sent, stamped ``.upload``; close it (or use ``with``)."""

    opened: OpenReport
    file: BinaryIO
    report: Report
    owned: bool = False  # *opened* is the rewritten report, opened here: closed with this
    # The ``.upload`` stamp still to write when this is closed, and the time it gets (see collect()).
    stamp: tuple[Spool, int] | None = None
    # crashd's own fields, added in memory (no hook process ran): *added* is the report with them, its
    # text only, and what is sent; *write_back* writes the whole report with them into a new file, which
    # crashd.delivery puts in the report's place after the POST. None: the file is what is sent.
    added: Report | None = None
    write_back: Callable[[BinaryIO], None] | None = None

    @property
    def name(self) -> str:
        return self.opened.name.crash

    @property
    def sent(self) -> Report:
        """The report as its first POST carries it (:func:`crashd.uploader.encode_report` of this)."""
        return self.added or self.report

    def close(self) -> None:
        self.file.close()
        stamp, self.stamp = self.stamp, None
        try:
            if stamp is not None:
                spool, at_ns = stamp
                spool.mark_upload(self.opened, at_ns=at_ns)
        except OSError as error:  # e.g. another user's directory under the stamp's name: sent all the same
            log.warning("%s: cannot stamp it for upload (it is sent all the same): %s", self.name, error)
        finally:
            if self.owned:
                self.opened.close()

    def __enter__(self) -> Collected:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_report(spool: Spool, name: ReportName) -> OpenReport | Status | None:
    """Open a report safely; a :class:`Status` saying why not, or None when it vanished meanwhile."""
    try:
        return spool.open_report(name)
    except FileNotFoundError:
        return None
    except PermissionError:  # a user flushing their own reports meets another user's 0640 report
        return Status(name.crash, State.SKIPPED, detail="not readable by you", owner=spool.owner(name.crash))
    except UnsafeFileError as error:
        return invalid(name, error.reason)


def read_stamps(spool: Spool, opened: OpenReport) -> Stamps:
    """The report's ``.upload``/``.uploaded`` times; a stamp crashd cannot trust counts as absent."""
    try:
        stamps = spool.stamps(opened.name, opened.stat.st_uid)
    except OSError as error:  # not a refusal (those are in stamps.ignored): an I/O error; no stamps then
        log.info("%s: its stamps cannot be read: %s", opened.name.crash, error.strerror or error)
        return Stamps(None, None)
    for reason in stamps.ignored:
        # A stamp planted by another user, or not a file at all: ignored, and crashd's own stamp
        # replaces it when it has one to write. The other stamp is judged on its own.
        log.info("%s: ignoring a stamp crashd cannot trust: %s", opened.name.crash, reason)
    return stamps


def collect(
    spool: Spool,
    opened: OpenReport,
    limits: Limits,
    *,
    stamp: bool = True,
    hooks: HookOptions | None = None,
    stamps: Stamps | None = None,
    waiting: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
) -> Collected | Status:
    """Index an opened report, check that it is a kind daisy takes, enrich it with its hooks (once),
    and (with *stamp*) mark it ``.upload``: now, or with :attr:`Spool.defer_upload_stamp` (the daemon)
    when the :class:`Collected` is closed, after its POST.

    Deferred, the stamp is a file creation less between the report and the wire. Nothing before the
    POST needs it there: the POST is guarded by the delivery record (``posting`` is saved before it goes
    out, so a kill -9 at any point resends at most once); the daemon stamps only what automatic consent
    sends (a report a UI marked has its stamp), and a report cut off mid-POST goes out again while
    consent stays automatic — switched to manual meanwhile, it waits for someone to mark it, as consent
    says. ``upload-all`` stamps first: its stamp is the record of a request no consent implies. The
    stamp gets the time of this call from the clock file times are taken from, so a ``.uploaded``
    written after this call is never older than it (equal times count as sent): the pair reads "asked
    for, then sent" whichever file was created first. A POST that failed leaves the stamp newer than
    any older ``.uploaded``: pending, as before.

    The caller keeps *opened*; on success the returned :class:`Collected` owns a reader of it, or of
    the rewritten report that replaced it. *stamps*: its stamps as the caller just read them (delivery
    did, to decide on the POST), not read again. *waiting*: what to be in while the package hooks run
    (:meth:`crashd.delivery.Courier.waiting`: others' reports are worked on meanwhile).
    """
    asked = fs.file_clock_ns()
    collected = _index(opened, limits)
    if isinstance(collected, Collected) and hooks is not None and needs_hooks(collected.report):
        enriched = _enrich(spool, collected, limits, hooks, waiting)
        if enriched is not collected:
            collected.close()
        collected = enriched
    if isinstance(collected, Status):
        return collected
    if stamp and spool.defer_upload_stamp:
        if stamps is None or collected.opened is not opened:
            stamps = read_stamps(spool, collected.opened)
        if not stamps.pending:  # a UI's .upload stays as the UI wrote it
            collected.stamp = (spool, asked)
    elif stamp:
        try:
            spool.mark_upload(collected.opened)
        except OSError as error:  # e.g. another user's directory under the stamp's name: deliver anyway
            log.warning("%s: cannot stamp it for upload (it is sent all the same): %s", collected.name, error)
    return collected


def _index(opened: OpenReport, limits: Limits, *, owned: bool = False) -> Collected | Status:
    name = opened.name
    with contextlib.ExitStack() as cleanup:
        if owned:
            cleanup.callback(opened.close)
        file = cleanup.enter_context(opened.file())
        try:
            report = read_report(file, limits=limits, name=name.crash)
            kind = report.problem_type
        except ReportError as error:
            return invalid(name, error.detail)
        if kind not in SENT_KINDS:
            what = f"ProblemType {kind}" if kind else "a report without a ProblemType"
            log.info("%s: skipped: %s is not sent", name.crash, what, extra=event(State.SKIPPED, name.crash))
            return Status(name.crash, State.SKIPPED, detail=f"{what} is not sent to the crash database")
        cleanup.pop_all()
        return Collected(opened, file, report, owned=owned)


def needs_hooks(report: Report) -> bool:
    """apport's rule: a report whose ``_HooksRun`` is "no", or that has no ``Dependencies`` yet, was not
    enriched (apport's UI collects before it stamps ``.upload``; crashd writes ``_HooksRun: yes``)."""
    entry = report.entries.get("_HooksRun")
    if entry is not None and not entry.binary:
        return report.text_bytes("_HooksRun").strip() == b"no"
    return "Dependencies" not in report


def _enrich(
    spool: Spool,
    collected: Collected,
    limits: Limits,
    hooks: HookOptions,
    waiting: Callable[[], contextlib.AbstractContextManager[object]],
) -> Collected | Status:
    """Add what crashd knows itself (:mod:`crashd.enrich`, in this process), run the package hooks that
    apply (as the report's owner; none applying, no process starts), and write both into the report
    once, with ``_HooksRun: yes`` so it is not enriched again. The report as it was when it cannot be
    rewritten — it is still sent.

    When no hook process ran, only crashd's own fields are added: they are sent from memory
    (:func:`_added`) and written into the file after the POST (crashd.delivery), so the rewrite — a
    file creation and an fsync, 0.3 to 2 ms — is off the path to the wire. What a hook added is written
    first, as before: its process cost tens of ms (the rewrite is noise beside it), a retry must not
    run hooks again (``_HooksRun: yes`` on disk says they ran), and the size bound on the rewritten file
    decides whether their output goes out at all ("sending it as it is" when it does not fit).
    """
    # Loaded by the first report to enrich, not at start: an idle daemon needs none of it (issue 15).
    from crashd.enrich import added_fields, system_facts
    from crashd.hooks.discovery import InvalidFieldError, executable_path, package_names
    from crashd.hooks.hooktest import text_fields
    from crashd.hooks.runner import run_hooks

    name, report = collected.opened.name, collected.report
    fields = text_fields(report)
    try:
        package_names(fields)  # a Package naming a path (CVE-2016-9950), a 512 KiB ExecutablePath:
        executable_path(fields)  # refused before crashd looks anything up by them
        own = added_fields(fields, system_facts(), crashd.__version__)
        # The hooks are chosen by the fields with crashd's: the Package it found is checked there too.
        result = run_hooks(
            {**fields, **own}, owner_uid=collected.opened.stat.st_uid, roots=hooks.roots,
            extra_dirs=hooks.extra_dirs, timeout=hooks.timeout, fallback_user=hooks.fallback_user,
            worker_user=hooks.worker_user, python=hooks.python, output_cap=hooks.output_cap,
            limits=hooks.limits, waiting=waiting,  # their process runs on its own: others' work goes on
        )  # fmt: skip
    except InvalidFieldError as error:
        return invalid(name, str(error))
    for key in result.errors:
        log.warning("%s: hook failed: %s", name.crash, key)
    if result.unreportable:
        return invalid(name, f"a package hook says it cannot be reported: {result.unreportable}")
    added = {
        key: value
        for key, value in {**own, **result.report_fields()}.items()
        if valid_key(key) and key not in result.removed
    }
    added["_HooksRun"] = "yes"
    kept = [key for key in report if key not in added and key not in result.removed]

    def write(out: BinaryIO) -> None:
        old = [(key, _stored(report, key)) for key in kept]
        write_report(out, [*old, *added.items()])

    if not (result.ran or result.errors or result.fields or result.removed):  # no hook process ran
        collected.added, written = _added(report, kept, added, limits)

        def write_as_sent(out: BinaryIO) -> None:  # no binary value: the bytes sent are the file's as they
            out.write(written)  # are, not written out twice (issue 15)

        binary = any(report.entries[key].binary for key in kept)
        collected.write_back = write if binary else write_as_sent
        log.info("%s: enriched in memory: %d field(s) added, 0 hook(s) run, %d skipped; written back after "
                 "its POST", name.crash, len(added), len(result.skipped))  # fmt: skip
        return collected
    try:
        replaced = spool.replace_report(collected.opened, write)
    except (OSError, UnsafeFileError) as error:
        log.warning("%s: cannot write its added fields into it (%s); sending it as it is", name.crash, error)
        return collected
    if replaced is None:
        return Status(name.crash, State.NEW, detail="replaced by a newer crash while it was enriched")
    log.info(
        "%s: enriched: %d field(s) added, %d hook(s) run, %d skipped",
        name.crash, len(added), len(result.ran), len(result.skipped),
    )  # fmt: skip
    return _index(replaced, limits, owned=True)


def _added(
    report: Report, kept: list[str], added: dict[str, str | bytes], limits: Limits
) -> tuple[Report, bytes]:
    """The report as its rewrite will read, without the binary values' contents: *kept* then *added*,
    written and indexed in memory by the same writer and reader, so that what is sent is exactly what
    the rewritten file holds (a value the writer keeps as a block is not sent, as from the file). A
    binary value stays an empty block in its place (never sent; its key still counts). The file size
    bound is the rewrite's to enforce (:meth:`Spool.replace_report`, after the POST): this is no file.
    Also the bytes written: the rewrite's own, when the report has no binary value."""
    out = io.BytesIO()
    old = [(key, _EMPTY if report.entries[key].binary else report.text_bytes(key)) for key in kept]
    write_report(out, [*old, *added.items()])
    written = out.getvalue()
    out.seek(0)
    unbounded = dataclasses.replace(limits, file_size=max(limits.file_size, len(written)))
    return read_report(out, limits=unbounded, name=report.name), written


_EMPTY = StoredBinary((), empty=True)


def _stored(report: Report, key: str) -> bytes | StoredBinary:
    """A field as it is: text decoded, a binary block copied as stored (never decompressed)."""
    return StoredBinary.of(report, key) if report.entries[key].binary else report.text_bytes(key)


def stamped_id(spool: Spool, opened: OpenReport) -> str | None:
    """The OOPS id another run (or whoopsie) wrote into ``.uploaded``, if it can be read."""
    try:
        return spool.oops_id(opened.name, opened.stat.st_uid)
    except (OSError, UnsafeFileError):
        return None


def invalid(name: ReportName, reason: str) -> Status:
    log.info("%s: refused: %s", name.crash, reason, extra=event(State.INVALID, name.crash))
    return Status(name.crash, State.INVALID, detail=reason)
