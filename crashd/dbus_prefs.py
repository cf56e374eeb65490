"""Consent on the system bus (DESIGN.md §5): crashd's own interface and a drop-in whoopsie-preferences.

One connection serves two names, both D-Bus-activatable (``data/dbus/``)::

    org.crashd.Crashd1  /org/crashd/Crashd1
      org.crashd.Preferences1   ReportCrashes b, AutomaticallyReportCrashes b, Identifier s, Locked b
                                (read-only); SetReportCrashes(b), SetAutomaticallyReportCrashes(b)
      org.crashd.Reports1       List() -> a(ssxs), UploadNow(), WhatIsSent(s name) -> s json;
                                signal ReportChanged(s name, s state)
    com.ubuntu.WhoopsiePreferences  /com/ubuntu/WhoopsiePreferences, interface of the same name
                                ReportCrashes b, ReportMetrics b, AutomaticallyReportCrashes b (read-only);
                                SetReportCrashes(b), SetReportMetrics(b), SetAutomaticallyReportCrashes(b),
                                GetIdentifier() -> s

**Authorisation.** Every call that changes something asks polkit first (``CheckAuthorization``, subject
``system-bus-name`` = the caller's unique name, interactive only when the caller's message carries
ALLOW_INTERACTIVE_AUTHORIZATION). crashd's interface checks ``org.crashd.change-preferences``; the façade
checks whoopsie's own ``com.ubuntu.whoopsiepreferences.change``, so KDE's KCM — which executes that action
to cache the authorisation before calling the setters — does not prompt twice, and polkit rules written
for whoopsie keep working. ``UploadNow`` counts as a change (sending is a consent decision, and it must
not let any local user make the daemon retry in a loop). A refusal, a polkit error or silence, and a
locked preference (the message names the config file) are ``org.freedesktop.DBus.Error.AccessDenied``;
nothing changes. Authorisations run concurrently; the changes they allow apply in the order the calls
arrived. The properties themselves are read-only: ``Properties.Set`` gets ``PropertyReadOnly``.
``WhatIsSent`` changes nothing but shows a report's contents, so it asks the bus for the caller's uid
(``GetConnectionUnixUser``) instead of polkit: the report's owner and root may read it
(:mod:`crashd.preview`).

Only the message knows its sender and flags, and dbus-fast hands a ``ServiceInterface`` method its
arguments alone. So the calls that need polkit are answered by a message handler
(``MessageBus.add_message_handler``, dbus-fast's public hook: it sees each message before the exported
interfaces do, and returning True marks a call handled, its reply to be sent later with ``bus.send``).
The ``ServiceInterface`` declarations of those methods exist for introspection and fail closed if they
are ever reached.

**Change notification.** ``PropertiesChanged`` goes out on both objects whenever the effective consent
changes, whoever changed it: after a set here, when ``crashd prefs --offline`` rewrites the consent file
or an admin edits the lock or a legacy switch (inotify on their directories), and at the latest when the
next call arrives (every call re-reads the consent first, so no client ever sees a stale value).

Usage, in the daemon::

    bus = await connect_system_bus()
    service = await serve(bus, state_dir=..., config=..., status_provider=..., on_activity=...,
                          on_consent_change=..., on_upload_now=...)
    ...                             # race bus.wait_for_disconnect() against the daemon's own work:
    await service.close()           # a dropped connection must end the process non-zero
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from asyncinotify import Inotify, Mask
from dbus_fast import (
    BusType,
    DBusError,
    ErrorType,
    Message,
    MessageFlag,
    MessageType,
    NameFlag,
    RequestNameReply,
    Variant,
)
from dbus_fast import introspection as intr
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusSignature, DBusStr
from dbus_fast.errors import AuthError, InvalidAddressError
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_method, dbus_property, dbus_signal

from crashd.collector import Status
from crashd.config import DEFAULT_CONFIG, ConfigError
from crashd.consent import APPORT_DEFAULT, FILE_NAME, WHOOPSIE_DEFAULT, Consent, load_consent, set_preference
from crashd.errors import CrashdError
from crashd.identity import system_identifier
from crashd.preview import preview_in_spool
from crashd.report import ReportError
from crashd.spool import Spool, UnsafeFileError

__all__ = [
    "BUS_NAME", "CHANGE_ACTION", "PATH", "PREFERENCES_INTERFACE", "REPORTS_INTERFACE", "WHOOPSIE_ACTION",
    "WHOOPSIE_NAME", "WHOOPSIE_PATH", "BusUnavailable", "Service", "connect_system_bus", "serve",
    "tolerate_full_socket",
]  # fmt: skip

log = logging.getLogger(__name__)

BUS_NAME = "org.crashd.Crashd1"
PATH = "/org/crashd/Crashd1"
PREFERENCES_INTERFACE = "org.crashd.Preferences1"
REPORTS_INTERFACE = "org.crashd.Reports1"
WHOOPSIE_NAME = "com.ubuntu.WhoopsiePreferences"  # also its interface name
WHOOPSIE_PATH = "/com/ubuntu/WhoopsiePreferences"
CHANGE_ACTION = "org.crashd.change-preferences"
WHOOPSIE_ACTION = "com.ubuntu.whoopsiepreferences.change"

POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_INTERFACE = "org.freedesktop.PolicyKit1.Authority"
POLKIT_ALLOW_USER_INTERACTION = 1  # CheckAuthorizationFlags
POLKIT_TIMEOUT = 25.0  # a non-interactive check; D-Bus clients give up after 25 s by default too
POLKIT_INTERACTIVE_TIMEOUT = 300.0  # someone is typing a password
DEFAULT_SYSTEM_BUS = "unix:path=/var/run/dbus/system_bus_socket"
BUS_TIMEOUT = 25.0  # the bus daemon's own answers (who is calling)
# WhatIsSent's largest answer: dbus-daemon refuses messages over 32 MiB (max_message_size), and a
# report may carry up to 32 MiB of text; a bigger preview is refused, naming the command that shows it.
MAX_PREVIEW = 16 * 1024 * 1024

ReportList = Annotated[list[tuple[str, str, int, str]], DBusSignature("a(ssxs)")]
NameState = Annotated[tuple[str, str], DBusSignature("ss")]
_ACCESS_DENIED = ErrorType.ACCESS_DENIED.value
_WATCH = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.CREATE | Mask.DELETE | Mask.ONLYDIR


class BusUnavailable(CrashdError, ConnectionError):
    """The system bus cannot be used: no connection, or a name we must own is taken or refused."""


async def connect_system_bus() -> MessageBus:
    """A connection to the system bus (``DBUS_SYSTEM_BUS_ADDRESS`` when set); must run inside the loop.

    Raises :class:`BusUnavailable` naming the address.
    """
    address = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or DEFAULT_SYSTEM_BUS
    try:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    except (OSError, AuthError, InvalidAddressError, DBusError, EOFError) as error:
        raise BusUnavailable(f"cannot connect to the system bus at {address}: {error}") from error
    tolerate_full_socket(bus)
    return bus


def tolerate_full_socket(bus: MessageBus) -> None:
    """Keep *bus* connected when its socket buffer is full, instead of dropping it.

    dbus-fast 5.2 (like dbus-next, altdesktop/python-dbus-next#153, still open) treats EAGAIN from a
    non-blocking ``send`` as a fatal error and closes the connection: a burst of a few hundred calls,
    whose replies outrun dbus-daemon for a moment, took the service off the bus (1 run in 10 with 1,000
    concurrent calls, every run with 5,000). Its writer already handles a short write — it keeps the
    rest and waits until the socket is writable — so a ``send`` that reports "0 bytes written" on EAGAIN
    gets exactly that behaviour. This wraps the writer's socket accordingly; it relies on dbus-fast's
    ``MessageBus._writer.sock`` (checked: without it nothing is changed, and tests/test_dbus.py's burst
    test shows the regression). Call it right after ``connect()``; calling it twice is harmless.
    """
    writer = getattr(bus, "_writer", None)
    sock = getattr(writer, "sock", None)
    if sock is None or isinstance(sock, _PatientSocket):
        if sock is None:
            log.warning("dbus-fast internals changed: a burst of D-Bus calls may drop the connection")
        return
    writer.sock = _PatientSocket(sock)  # type: ignore[union-attr]


class _PatientSocket:
    """A socket whose ``send`` answers EAGAIN with 0 bytes written (see :func:`tolerate_full_socket`)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: bytes | memoryview, flags: int = 0) -> int:
        try:
            return self._sock.send(data, flags)
        except BlockingIOError:
            return 0

    def sendmsg(self, buffers: Any, ancdata: Any = (), flags: int = 0, address: Any = None) -> int:
        try:
            return self._sock.sendmsg(buffers, ancdata, flags, *([address] if address else []))
        except BlockingIOError:
            return 0  # nothing went out, the descriptors neither: the writer resends both

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


async def serve(
    bus: MessageBus,
    *,
    state_dir: Path,
    config: Path | None = DEFAULT_CONFIG,
    status_provider: Callable[[], Iterable[Status]],
    on_activity: Callable[[], None] = lambda: None,
    on_consent_change: Callable[[Consent], None] = lambda consent: None,
    on_upload_now: Callable[[], None] = lambda: None,
    polkit_timeout: float = POLKIT_TIMEOUT,
    whoopsie_default: Path = WHOOPSIE_DEFAULT,
    apport_default: Path = APPORT_DEFAULT,
    spool: Spool | None = None,
) -> Service:
    """Export both objects on *bus*, own both names, and return the running :class:`Service`.

    *status_provider* lists the reports for ``Reports1.List`` (called in a worker thread, e.g.
    ``lambda: survey(spool, StateStore.reader(state_dir))``). The callbacks run on the event loop and
    must not block: *on_activity* on every incoming call (the daemon's idle exit waits for clients),
    *on_consent_change* with the new effective consent whenever it changes, *on_upload_now* after an
    authorised ``UploadNow``. *polkit_timeout* bounds a non-interactive authorisation; the legacy
    switch files can be moved for tests. *spool* is the crash directory ``Reports1.WhatIsSent`` reads
    (without it, that call fails saying so). Raises :class:`ConfigError` for a bad ``[consent]`` section and
    :class:`BusUnavailable` when a name cannot be owned (nothing stays exported then).
    """
    tolerate_full_socket(bus)
    service = Service(
        bus, state_dir=Path(state_dir), config=config, status_provider=status_provider,
        on_activity=on_activity, on_consent_change=on_consent_change, on_upload_now=on_upload_now,
        polkit_timeout=polkit_timeout, whoopsie_default=whoopsie_default, apport_default=apport_default,
        spool=spool,
    )  # fmt: skip
    try:
        await service.start()
    except BaseException:
        await service.close()
        raise
    return service


@dataclass(frozen=True)
class _Guarded:
    """A method answered by the message handler after polkit agreed."""

    action: str
    signature: str
    run: Callable[[list[Any]], Any]  # the message body -> an awaitable


class Service:
    """The running service; build it with :func:`serve`."""

    def __init__(
        self,
        bus: MessageBus,
        *,
        state_dir: Path,
        config: Path | None,
        status_provider: Callable[[], Iterable[Status]],
        on_activity: Callable[[], None],
        on_consent_change: Callable[[Consent], None],
        on_upload_now: Callable[[], None],
        polkit_timeout: float,
        whoopsie_default: Path,
        apport_default: Path,
        spool: Spool | None = None,
    ) -> None:
        self.bus = bus
        self._spool = spool
        self._preview_slot = asyncio.Semaphore(1)  # one report read at a time for WhatIsSent's callers
        self._state_dir = state_dir
        self._files = dict(config=config, whoopsie_default=whoopsie_default, apport_default=apport_default)
        self._status_provider = status_provider
        self._on_activity = on_activity
        self._on_consent_change = on_consent_change
        self._on_upload_now = on_upload_now
        self._polkit_timeout = polkit_timeout
        self.consent = load_consent(state_dir, **self._files)  # ConfigError reaches the caller
        self._identifier: str | None = None
        self._config_problem: str | None = None
        self._preferences = _Preferences(self)
        self._reports = _Reports(self)
        self._whoopsie = _WhoopsiePreferences(self)
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_change: asyncio.Future[None] | None = None
        self._cancel_ids = itertools.count(1)
        self._inotify: Inotify | None = None
        self._names: list[str] = []
        self._escaped_names: set[str] = set()  # not-UTF-8 report names already logged
        # (path, interface, member) -> what polkit must allow before it runs
        self._guarded = {
            (PATH, REPORTS_INTERFACE, "UploadNow"): _Guarded(CHANGE_ACTION, "", self._upload_now),
        }
        for name in ("ReportCrashes", "AutomaticallyReportCrashes"):
            self._guarded[PATH, PREFERENCES_INTERFACE, f"Set{name}"] = self._setter(CHANGE_ACTION, name)
        for name in ("ReportCrashes", "ReportMetrics", "AutomaticallyReportCrashes"):
            self._guarded[WHOOPSIE_PATH, WHOOPSIE_NAME, f"Set{name}"] = self._setter(WHOOPSIE_ACTION, name)

    # -- life cycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self.bus.export(PATH, self._preferences)
        self.bus.export(PATH, self._reports)
        self.bus.export(WHOOPSIE_PATH, self._whoopsie)
        self.bus.add_message_handler(self._on_message)
        self._watch_files()
        for name in (BUS_NAME, WHOOPSIE_NAME):
            try:
                reply = await self.bus.request_name(name, NameFlag.DO_NOT_QUEUE)
            except DBusError as error:  # e.g. the bus policy: only root may own the names
                raise BusUnavailable(f"cannot own {name} on the system bus: {error.text}") from None
            if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
                raise BusUnavailable(f"cannot own {name} on the system bus: another process owns it")
            self._names.append(name)
        log.info("serving %s and %s on the system bus", BUS_NAME, WHOOPSIE_NAME)

    async def close(self) -> None:
        """Give up the names and stop answering; the connection itself stays the caller's."""
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        for task in list(self._tasks):
            task.cancel()
        self.bus.remove_message_handler(self._on_message)
        if self.bus.connected:
            for name in self._names:
                with contextlib.suppress(DBusError, OSError, EOFError):
                    await self.bus.release_name(name)
        self._names.clear()
        self.bus.unexport(PATH)
        self.bus.unexport(WHOOPSIE_PATH)

    # -- what the daemon calls ---------------------------------------------------------------------

    def report_changed(self, name: str, state: str) -> None:
        """Emit ``Reports1.ReportChanged``: once per state change of one report, never in a loop."""
        self._reports.ReportChanged(name, state)

    def refresh(self) -> Consent:
        """Re-read the effective consent; announce it (PropertiesChanged, on_consent_change) if it changed."""
        try:
            consent = load_consent(self._state_dir, **self._files)
        except ConfigError as error:
            if str(error) != self._config_problem:
                log.warning("keeping the last preferences read: %s", error)
                self._config_problem = str(error)
            return self.consent
        self._config_problem = None
        before, self.consent = self.consent, consent
        if _visible(consent) != _visible(before):
            self._announce(before, consent)
        return consent

    def identifier(self) -> str:
        if self._identifier is None:
            try:
                self._identifier = system_identifier(self._state_dir)
            except (LookupError, ValueError) as error:
                raise DBusError(ErrorType.FAILED, str(error)) from None
        return self._identifier

    # -- internals ---------------------------------------------------------------------------------

    def _announce(self, before: Consent, after: Consent) -> None:
        mine = {"ReportCrashes": after.report_crashes, "AutomaticallyReportCrashes": after.automatic,
                "Locked": after.locked}  # fmt: skip
        theirs = after.as_properties()
        was = {**before.as_properties(), "Locked": before.locked}
        for interface, values in ((self._preferences, mine), (self._whoopsie, theirs)):
            changed = {name: value for name, value in values.items() if was[name] != value}
            if changed:
                interface.emit_properties_changed(changed)
        log.info("preferences now %s", ", ".join(f"{k}={'on' if v else 'off'}" for k, v in theirs.items()))
        _guard(self._on_consent_change, after)

    def _on_message(self, msg: Message) -> bool | None:
        """Every incoming message passes here first (see the module docstring)."""
        if msg.message_type is not MessageType.METHOD_CALL:
            return None
        _guard(self._on_activity)
        self.refresh()
        if _is_call(msg, PATH, REPORTS_INTERFACE, "List"):
            task = asyncio.create_task(self._answer_list(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True
        if (msg.path, msg.member, msg.signature) == (PATH, "WhatIsSent", "s") and msg.interface in (
            None, REPORTS_INTERFACE,
        ):  # fmt: skip
            task = asyncio.create_task(self._answer_what_is_sent(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True
        guarded = self._guarded_for(msg)
        if guarded is None:
            return None  # dbus-fast answers it: properties, introspection, GetIdentifier, errors
        previous, self._last_change = self._last_change, asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._answer(msg, guarded, previous, self._last_change))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _answer_list(self, msg: Message) -> None:
        """``Reports1.List``: the reports the caller may read — all for root, else the caller's own."""
        try:
            uid = await self._caller_uid(msg)
            entries = await asyncio.to_thread(self.list_reports, uid)
        except DBusError as error:
            reply = Message.new_error(msg, error.type, error.text)
        except Exception as error:
            log.exception("Reports1.List failed")
            reply = Message.new_error(msg, ErrorType.FAILED, f"cannot list the reports: {error}")
        else:
            reply = Message.new_method_return(msg, "a(ssxs)", [entries])
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED and self.bus.connected:
            self.bus.send(reply)

    def _guarded_for(self, msg: Message) -> _Guarded | None:
        if msg.interface is not None:
            guarded = self._guarded.get((msg.path, msg.interface, msg.member))
        else:  # allowed by the spec: the member is looked up on every interface of the object
            guarded = next((g for (path, _, member), g in self._guarded.items()
                            if path == msg.path and member == msg.member), None)  # fmt: skip
        return guarded if guarded is not None and guarded.signature == msg.signature else None

    async def _answer(
        self, msg: Message, guarded: _Guarded, before: asyncio.Future[None] | None, done: asyncio.Future[None]
    ) -> None:
        try:
            await self._authorize(msg, guarded.action)
            if before is not None:
                await asyncio.shield(before)  # changes apply in the order the calls arrived
            await guarded.run(msg.body)
        except DBusError as error:
            reply = Message.new_error(msg, error.type, error.text)
        except Exception as error:
            log.exception("%s.%s failed", msg.interface, msg.member)
            reply = Message.new_error(msg, ErrorType.FAILED, f"{type(error).__name__}: {error}")
        else:
            reply = Message.new_method_return(msg)
        finally:
            done.set_result(None)
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED and self.bus.connected:
            self.bus.send(reply)

    async def _authorize(self, msg: Message, action: str) -> None:
        """Return when polkit allows *action* for the caller of *msg*; AccessDenied otherwise."""
        if not msg.sender:
            raise DBusError(_ACCESS_DENIED, "not authorized: the caller has no bus name")
        interactive = bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)
        cancel_id = f"crashd-{os.getpid()}-{next(self._cancel_ids)}"
        subject = ["system-bus-name", {"name": Variant("s", msg.sender)}]
        flags = POLKIT_ALLOW_USER_INTERACTION if interactive else 0
        arguments = [subject, action, {}, flags, cancel_id]
        query = _polkit_call("CheckAuthorization", "(sa{sv})sa{ss}us", arguments)
        timeout = POLKIT_INTERACTIVE_TIMEOUT if interactive else self._polkit_timeout
        try:
            async with asyncio.timeout(timeout):
                reply = await self.bus.call(query)
        except TimeoutError:
            with contextlib.suppress(Exception):  # take the password prompt away again
                self.bus.send(_polkit_call("CancelCheckAuthorization", "s", [cancel_id], no_reply=True))
            why = f"polkit did not answer within {timeout:g} s"
            raise DBusError(_ACCESS_DENIED, f"could not authorize {action}: {why}") from None
        except (OSError, EOFError) as error:
            raise DBusError(_ACCESS_DENIED, f"could not authorize {action}: {error}") from None
        if reply is None:
            raise DBusError(_ACCESS_DENIED, f"could not authorize {action}: no reply from polkit")
        if reply.message_type is MessageType.ERROR:
            why = f"{reply.error_name}: {reply.body[0] if reply.body else ''}"
            raise DBusError(_ACCESS_DENIED, f"could not authorize {action} ({why})")
        authorized, challenge, _details = reply.body[0]
        if not authorized:
            hint = " (authentication is required: allow interactive authorization)" if challenge else ""
            raise DBusError(_ACCESS_DENIED, f"not authorized (polkit action {action}){hint}")

    def _setter(self, action: str, preference: str) -> _Guarded:
        async def run(body: list[Any]) -> None:
            try:
                await asyncio.to_thread(set_preference, self._state_dir, preference, body[0], **self._files)
            except PermissionError as error:  # ConsentLocked names the file; or the state dir refused us
                raise DBusError(_ACCESS_DENIED, str(error)) from None
            except (ConfigError, OSError) as error:
                raise DBusError(ErrorType.FAILED, f"cannot change {preference}: {error}") from None
            self.refresh()

        return _Guarded(action, "b", run)

    async def _upload_now(self, body: list[Any]) -> None:
        _guard(self._on_upload_now)

    def _watch_files(self) -> None:
        """inotify on the directories of the consent file, the lock and the legacy switches."""
        files = [self._state_dir / FILE_NAME, *(Path(p) for p in self._files.values() if p is not None)]
        watched = {path.absolute() for path in files}
        inotify = Inotify()
        for directory in {path.parent for path in watched}:
            with contextlib.suppress(OSError):  # missing (no /etc/crashd): the per-call re-read covers it
                inotify.add_watch(directory, _WATCH)
        self._inotify = inotify
        task = asyncio.create_task(self._follow(inotify, watched))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow(self, inotify: Inotify, watched: set[Path]) -> None:
        with contextlib.suppress(OSError):  # closed under us by close()
            async for event in inotify:
                if Mask.Q_OVERFLOW in event.mask or event.path in watched:
                    self.refresh()

    async def _answer_what_is_sent(self, msg: Message) -> None:
        """``Reports1.WhatIsSent(s name) -> s``: :mod:`crashd.preview`'s JSON, for its owner or root."""
        try:
            uid = await self._caller_uid(msg)
            async with self._preview_slot:
                text = await asyncio.to_thread(self.what_is_sent, msg.body[0], uid)
            reply = Message.new_method_return(msg, "s", [text])
        except DBusError as error:
            reply = Message.new_error(msg, error.type, error.text)
        except Exception as error:
            log.exception("Reports1.WhatIsSent failed")
            reply = Message.new_error(msg, ErrorType.FAILED, f"{type(error).__name__}: {error}")
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED and self.bus.connected:
            self.bus.send(reply)

    async def _caller_uid(self, msg: Message) -> int:
        """The uid the bus itself vouches for as the sender of *msg*; AccessDenied when it cannot."""
        query = Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus", member="GetConnectionUnixUser", signature="s",
                        body=[msg.sender or ""])  # fmt: skip
        try:
            async with asyncio.timeout(BUS_TIMEOUT):
                reply = await self.bus.call(query)
        except (TimeoutError, OSError, EOFError) as error:
            raise DBusError(_ACCESS_DENIED, f"cannot identify the caller: {error or 'no answer'}") from None
        if reply is None or reply.message_type is MessageType.ERROR or not reply.body:
            raise DBusError(_ACCESS_DENIED, "cannot identify the caller: the bus did not say who it is")
        return int(reply.body[0])

    def what_is_sent(self, name: str, caller_uid: int) -> str:
        """``WhatIsSent``'s answer for *caller_uid* (blocking: the caller runs it in a worker thread)."""
        if self._spool is None:
            raise DBusError(ErrorType.FAILED, "this service was started without a crash directory")
        try:
            preview = preview_in_spool(self._spool, name, caller_uid)
        except PermissionError as error:
            raise DBusError(_ACCESS_DENIED, str(error)) from None
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
            entry = _list_entry(status)
            if any(_not_utf8(text) for text in (entry[0], entry[3])):
                if status.name not in self._escaped_names:
                    self._escaped_names.add(status.name)
                    shown = _escaped(status.name)
                    log.warning("%s: the name is not UTF-8; Reports1.List shows it escaped", shown)
                entry = (_escaped(entry[0]), entry[1], entry[2], _escaped(entry[3]))
            entries.append(entry)
        return entries


def _visible(consent: Consent) -> tuple[bool, ...]:
    return consent.report_crashes, consent.automatic, consent.report_metrics, consent.locked


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _escaped(text: str) -> str:
    """*text* with the bytes that are not UTF-8 (surrogate escapes of a file name) written as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_call(msg: Message, path: str, interface: str, member: str) -> bool:
    routed = msg.path == path and msg.member == member and msg.interface in (interface, None)
    return routed and not msg.signature


def _list_entry(status: Status) -> tuple[str, str, int, str]:
    """One ``a(ssxs)`` entry: name, state, next attempt (epoch seconds, 0 for none), detail (the OOPS id
    first when there is one)."""
    detail = "; ".join(filter(None, [f"OOPS {status.oops_id}" if status.oops_id else None, status.detail]))
    return status.name, status.state.value, int(status.next_attempt or 0), detail


def _polkit_call(member: str, signature: str, body: list[Any], *, no_reply: bool = False) -> Message:
    flags = MessageFlag.NO_REPLY_EXPECTED if no_reply else MessageFlag.NONE
    return Message(destination=POLKIT_NAME, path=POLKIT_PATH, interface=POLKIT_INTERFACE, member=member,
                   signature=signature, body=body, flags=flags)  # fmt: skip


def _guard(callback: Callable[..., None], *args: object) -> None:
    """Run a daemon callback; its bug must not turn every D-Bus call into an error."""
    try:
        callback(*args)
    except Exception:
        log.exception("%s failed", getattr(callback, "__qualname__", callback))


def _unrouted() -> None:
    """The body of a method the message handler answers; reached only if it did not (fail closed)."""
    raise DBusError(_ACCESS_DENIED, "not authorized: the caller could not be identified")


# -- the exported interfaces: names and signatures exactly as DESIGN.md §5 --------------------------


_ARG_NAMES = {"GetIdentifier": ("identifier",), "List": ("reports",), "ReportChanged": ("name", "state"),
              "WhatIsSent": ("json",)}  # fmt: skip


class _Interface(ServiceInterface):
    """Names the out arguments and signal arguments in the introspection data, which dbus-fast leaves
    as ``arg_0``…: ``GetIdentifier(out s identifier)`` as whoopsie-preferences' XML has it."""

    def __init__(self, name: str, service: Service) -> None:
        super().__init__(name)
        self._service = service

    def introspect(self) -> intr.Interface:
        data = super().introspect()
        for member in [*data.methods, *data.signals]:
            names = _ARG_NAMES.get(member.name, ())
            args = member.out_args if isinstance(member, intr.Method) else member.args
            for arg, name in zip(args, names, strict=False):
                arg.name = name
        return data


class _Preferences(_Interface):
    def __init__(self, service: Service) -> None:
        super().__init__(PREFERENCES_INTERFACE, service)

    @dbus_property(access=PropertyAccess.READ)
    def ReportCrashes(self) -> DBusBool:
        return self._service.consent.report_crashes

    @dbus_property(access=PropertyAccess.READ)
    def AutomaticallyReportCrashes(self) -> DBusBool:
        return self._service.consent.automatic

    @dbus_property(access=PropertyAccess.READ)
    def Identifier(self) -> DBusStr:
        try:
            return self._service.identifier()
        except DBusError:  # "" = unknown, so that GetAll still answers; GetIdentifier says why
            return ""

    @dbus_property(access=PropertyAccess.READ)
    def Locked(self) -> DBusBool:
        return self._service.consent.locked

    @dbus_method()
    def SetReportCrashes(self, report: DBusBool):  # no return annotation: no out args
        _unrouted()

    @dbus_method()
    def SetAutomaticallyReportCrashes(self, report: DBusBool):
        _unrouted()


class _Reports(_Interface):
    def __init__(self, service: Service) -> None:
        super().__init__(REPORTS_INTERFACE, service)

    @dbus_method()
    def List(self) -> ReportList:  # answered by the message handler, which knows the caller
        _unrouted()
        return []

    @dbus_method()
    def UploadNow(self):
        _unrouted()

    @dbus_method()
    def WhatIsSent(self, name: DBusStr) -> DBusStr:  # answered by Service._answer_what_is_sent
        _unrouted()

    @dbus_signal()
    def ReportChanged(self, name: str, state: str) -> NameState:
        return name, state


class _WhoopsiePreferences(_Interface):
    """whoopsie-preferences' interface, member for member (research/whoopsie.md §5.1)."""

    def __init__(self, service: Service) -> None:
        super().__init__(WHOOPSIE_NAME, service)

    @dbus_property(access=PropertyAccess.READ)
    def ReportCrashes(self) -> DBusBool:
        return self._service.consent.report_crashes

    @dbus_property(access=PropertyAccess.READ)
    def ReportMetrics(self) -> DBusBool:
        return self._service.consent.report_metrics

    @dbus_property(access=PropertyAccess.READ)
    def AutomaticallyReportCrashes(self) -> DBusBool:
        return self._service.consent.automatic

    @dbus_method()
    def SetReportCrashes(self, report: DBusBool):
        _unrouted()

    @dbus_method()
    def SetReportMetrics(self, report: DBusBool):
        _unrouted()

    @dbus_method()
    def SetAutomaticallyReportCrashes(self, report: DBusBool):
        _unrouted()

    @dbus_method()
    def GetIdentifier(self) -> DBusStr:
        return self._service.identifier()
