"""``org.crashd.Reports1``: the reports, for settings UIs (``/org/crashd/Crashd1``).

List() -> a(ssxs): name, state, next attempt (epoch seconds, 0 for none), detail — root sees every
report, anyone else only their own (the OOPS ids of other users' crashes are theirs). UploadNow():
look at every report now; it counts as a change, so polkit authorises it (the service's message
handler does). WhatIsSent(s name) -> s: :mod:`crashd.preview`'s JSON, for the report's owner and
root. Signal ReportChanged(s name, s state): once per state change of one report.

List and WhatIsSent ask the bus for the caller's uid (``GetConnectionUnixUser``) rather than polkit:
they change nothing, and the answer depends on who asks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Annotated

from dbus_fast import DBusError, ErrorType, Message
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature, DBusStr
from dbus_fast.service import dbus_method, dbus_signal

from crashd.dbus.bus import ACCESS_DENIED, caller_uid, send_reply
from crashd.dbus.interface import Interface, unrouted

if TYPE_CHECKING:
    from crashd.dbus.service import Service
    from crashd.lifecycle import Status
    from crashd.spool import Spool

log = logging.getLogger("crashd.dbus_prefs")

REPORTS_INTERFACE = "org.crashd.Reports1"
# WhatIsSent's largest answer: dbus-daemon refuses messages over 32 MiB (max_message_size), and a
# report may carry up to 32 MiB of text; a bigger preview is refused, naming the command that shows it.
MAX_PREVIEW = 16 * 1024 * 1024

ReportList = Annotated[list[tuple[str, str, int, str]], DBusSignature("a(ssxs)")]
NameState = Annotated[tuple[str, str], DBusSignature("ss")]


class ReportsInterface(Interface):
    def __init__(self, service: Service) -> None:
        names = {"List": ("reports",), "ReportChanged": ("name", "state"), "WhatIsSent": ("json",)}
        super().__init__(REPORTS_INTERFACE, service, names)

    @dbus_method()
    def List(self) -> ReportList:  # answered by the message handler, which knows the caller
        unrouted()
        return []

    @dbus_method()
    def UploadNow(self):
        unrouted()

    @dbus_method()
    def WhatIsSent(self, name: DBusStr) -> DBusStr:  # answered by Reports.answer_what_is_sent
        unrouted()

    @dbus_signal()
    def ReportChanged(self, name: str, state: str) -> NameState:
        return name, state


class Reports:
    """The answers to List and WhatIsSent: *status_provider* lists the reports (in a worker thread),
    *spool* is the crash directory WhatIsSent reads (without it, that call fails saying so)."""

    def __init__(self, status_provider: Callable[[], Iterable[Status]], spool: Spool | None) -> None:
        self._status_provider = status_provider
        self._spool = spool
        self._preview_slot = asyncio.Semaphore(1)  # one report read at a time for WhatIsSent's callers
        self._escaped_names: set[str] = set()  # not-UTF-8 report names already logged

    async def answer_list(self, bus: MessageBus, msg: Message) -> None:
        """``Reports1.List``: the reports the caller may read — all for root, else the caller's own."""
        try:
            uid = await caller_uid(bus, msg)
            entries = await asyncio.to_thread(self.list_reports, uid)
        except DBusError as error:
            reply = Message.new_error(msg, error.type, error.text)
        except Exception as error:
            log.exception("Reports1.List failed")
            reply = Message.new_error(msg, ErrorType.FAILED, f"cannot list the reports: {error}")
        else:
            reply = Message.new_method_return(msg, "a(ssxs)", [entries])
        send_reply(bus, msg, reply)

    async def answer_what_is_sent(self, bus: MessageBus, msg: Message) -> None:
        """``Reports1.WhatIsSent(s name) -> s``: :mod:`crashd.preview`'s JSON, for its owner or root."""
        try:
            uid = await caller_uid(bus, msg)
            async with self._preview_slot:
                text = await asyncio.to_thread(self.what_is_sent, msg.body[0], uid)
            reply = Message.new_method_return(msg, "s", [text])
        except DBusError as error:
            reply = Message.new_error(msg, error.type, error.text)
        except Exception as error:
            log.exception("Reports1.WhatIsSent failed")
            reply = Message.new_error(msg, ErrorType.FAILED, f"{type(error).__name__}: {error}")
        send_reply(bus, msg, reply)

    def what_is_sent(self, name: str, caller_uid: int) -> str:
        """``WhatIsSent``'s answer for *caller_uid* (blocking: the caller runs it in a worker thread)."""
        import json  # the preview and its JSON only when someone asks: not in the idle daemon

        from crashd.preview import preview_in_spool
        from crashd.report import ReportError
        from crashd.spool import UnsafeFileError

        if self._spool is None:
            raise DBusError(ErrorType.FAILED, "this service was started without a crash directory")
        try:
            preview = preview_in_spool(self._spool, name, caller_uid)
        except PermissionError as error:
            raise DBusError(ACCESS_DENIED, str(error)) from None
        except FileNotFoundError:
            missing = f"{name}: no such report in {self._spool.path}"
            raise DBusError(ErrorType.FILE_NOT_FOUND, missing) from None
        except (UnsafeFileError, ReportError) as error:  # refused, or a report that is never sent
            raise DBusError(ErrorType.FAILED, str(error)) from None
        except ValueError as error:  # not a report name
            raise DBusError(ErrorType.INVALID_ARGS, str(error)) from None
        text = json.dumps(preview.as_json())  # ASCII: its length is its size on the bus
        if len(text) > MAX_PREVIEW:
            why = f"the preview of {name} is {len(text)} bytes"
            bound = f"more than a D-Bus answer carries ({MAX_PREVIEW})"
            raise DBusError(ErrorType.LIMITS_EXCEEDED, f"{why}, {bound}: use crashd show --what-is-sent")
        return text

    def list_reports(self, caller_uid: int = 0) -> list[tuple[str, str, int, str]]:
        """``Reports1.List``'s answer for *caller_uid* (blocking: the caller runs it in a worker thread).

        Root sees every report; anyone else only the reports they own (the OOPS ids of other users'
        crashes are theirs). A name that is not UTF-8 cannot travel as a D-Bus string: it is shown
        with its bytes escaped (``\\xff``), and logged once.
        """
        entries = []
        for status in self._status_provider():
            if caller_uid != 0 and status.owner != caller_uid:
                continue
            entry = list_entry(status)
            if any(_not_utf8(text) for text in (entry[0], entry[3])):
                if status.name not in self._escaped_names:
                    self._escaped_names.add(status.name)
                    shown = _escaped(status.name)
                    log.warning("%s: the name is not UTF-8; Reports1.List shows it escaped", shown)
                entry = (_escaped(entry[0]), entry[1], entry[2], _escaped(entry[3]))
            entries.append(entry)
        return entries


def list_entry(status: Status) -> tuple[str, str, int, str]:
    """One ``a(ssxs)`` entry: name, state, next attempt (epoch seconds, 0 for none), detail (the OOPS id
    first when there is one)."""
    detail = "; ".join(filter(None, [f"OOPS {status.oops_id}" if status.oops_id else None, status.detail]))
    return status.name, status.state.value, int(status.next_attempt or 0), detail


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _escaped(text: str) -> str:
    """*text* with the bytes that are not UTF-8 (surrogate escapes of a file name) written as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
