"""What a report's first upload will carry, shown before it is sent (issue 16, item 3).

``crashd show --what-is-sent FILE`` prints it and ``org.crashd.Reports1.WhatIsSent`` answers it as JSON
for settings UIs. Both are built from :func:`crashd.uploader.sent_fields` and
:func:`crashd.uploader.core_offer` — the very functions that build the upload — so what is shown
cannot drift from what is sent (tests/test_what_is_sent.py compares the two through the loopback
daisy server).

It is the report *as it stands*: when its package hooks have not run yet (:func:`needs_hooks`), the
daemon runs them before sending and they may add or change fields; the preview says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from crashd.collector import SENT_KINDS, needs_hooks
from crashd.report import DEFAULT_LIMITS, Limits, Report, read_report
from crashd.spool import ReportName, Spool
from crashd.uploader import CoreOffer, CoreUnavailable, core_offer, sent_fields

__all__ = ["Preview", "may_read", "preview_in_spool", "what_is_sent"]


@dataclass(frozen=True)
class Preview:
    """The first upload of one report: its fields in BSON order, and the core it could send later."""

    path: str
    hooks_run: bool  # False: the hooks run before sending and may still add or change fields
    fields: list[tuple[str, str]]
    core: CoreOffer | None  # sent only if the server asks for it after the first upload
    core_unavailable: str | None  # why no core can be sent, when core is None
    not_sent: str | None  # why the report is never sent at all (a kind daisy does not take)

    def as_json(self) -> dict[str, object]:
        """The object ``show --what-is-sent --json`` prints and ``WhatIsSent`` returns."""
        core: dict[str, object] = {"available": self.core is not None}
        if self.core is not None:
            core.update(architecture=self.core.architecture, size=self.core.size)
        else:
            core["reason"] = self.core_unavailable
        return {
            "path": self.path,
            "hooks_run": self.hooks_run,
            "not_sent": self.not_sent,
            "fields": [{"name": name, "value": value} for name, value in self.fields],
            "core": core,
        }


def what_is_sent(report: Report, path: str) -> Preview:
    """The preview of *report*; raises :class:`~crashd.report.ReportError` exactly when sending would
    (text that is not UTF-8, more text than one upload may carry): such a report is never sent."""
    fields = list(sent_fields(report))
    try:
        core, unavailable = core_offer(report), None
    except CoreUnavailable as error:
        core, unavailable = None, str(error)
    kind = report.problem_type
    not_sent = None
    if kind not in SENT_KINDS:
        what = f"ProblemType {kind}" if kind else "a report without a ProblemType"
        not_sent = f"{what} is not sent to the crash database"
    return Preview(path, not needs_hooks(report), fields, core, unavailable, not_sent)


def may_read(caller_uid: int, owner_uid: int) -> bool:
    """Whether a caller may see a report's contents: its owner, and root."""
    return caller_uid in (0, owner_uid)


def preview_in_spool(spool: Spool, name: str, caller_uid: int, limits: Limits = DEFAULT_LIMITS) -> Preview:
    """The preview of ``name`` in the crash directory, for a caller the bus identified as *caller_uid*.

    The file is opened safely (:meth:`Spool.open_report`) and its owner checked on the descriptor
    before a byte of it is read. Raises ValueError (not a report name), FileNotFoundError,
    :class:`~crashd.spool.UnsafeFileError`, PermissionError (not the caller's report) or
    :class:`~crashd.report.ReportError`.
    """
    report_name = ReportName.parse(name)
    with spool.open_report(report_name) as opened:
        if not may_read(caller_uid, opened.stat.st_uid):
            owner = opened.stat.st_uid
            raise PermissionError(f"{name} belongs to uid {owner}: only its owner and root may read it")
        with opened.file() as file:
            return what_is_sent(read_report(file, limits=limits, name=name), f"{spool.path}/{name}")
