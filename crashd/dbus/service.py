"""The running service: one connection, two names, the message handler, and consent changes.

Only the message knows its sender and flags, and dbus-fast hands a ``ServiceInterface`` method its
arguments alone. So the calls that need polkit are answered by a message handler
(``MessageBus.add_message_handler``, dbus-fast's public hook: it sees each message before the exported
interfaces do, and returning True marks a call handled, its reply to be sent later with ``bus.send``).
The ``ServiceInterface`` declarations of those methods exist for introspection and fail closed if they
are ever reached. Authorisations run concurrently; the changes they allow apply in the order the calls
arrived.

Every call re-reads the consent first, so no client ever sees a stale value; ``PropertiesChanged`` goes
out on both objects whenever the effective consent changes, whoever changed it. Changes made by no call
(``crashd prefs --offline``, an admin editing the lock or a legacy switch) are heard through *watch*:
the daemon, the one process that watches files, passes its inotify follower.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbus_fast import DBusError, ErrorType, Message, MessageType, NameFlag, RequestNameReply
from dbus_fast.aio import MessageBus

from crashd.config import DEFAULT_CONFIG, ConfigError
from crashd.consent import APPORT_DEFAULT, FILE_NAME, WHOOPSIE_DEFAULT, Consent, load_consent, set_preference
from crashd.dbus import preferences, whoopsie
from crashd.dbus.bus import ACCESS_DENIED, BusUnavailable, send_reply, tolerate_full_socket
from crashd.dbus.polkit import POLKIT_TIMEOUT, Authority
from crashd.dbus.preferences import CHANGE_ACTION, PREFERENCES_INTERFACE, Preferences
from crashd.dbus.reports import REPORTS_INTERFACE, Reports, ReportsInterface
from crashd.dbus.whoopsie import WHOOPSIE_ACTION, WHOOPSIE_NAME, WHOOPSIE_PATH, WhoopsiePreferences

if TYPE_CHECKING:
    from crashd.lifecycle import Status
    from crashd.spool import Spool

log = logging.getLogger("crashd.dbus_prefs")  # the face's name: one logger for the whole service

BUS_NAME = "org.crashd.Crashd1"
PATH = "/org/crashd/Crashd1"

# Watch: (files, on_change) -> stop. Calls on_change (on the loop) whenever one of the files may have
# changed; the returned function stops watching.
Watch = Callable[[Collection[Path], Callable[[], None]], Callable[[], None]]


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
    watch: Watch | None = None,
) -> Service:
    """Export both objects on *bus*, own both names, and return the running :class:`Service`.

    *status_provider* lists the reports for ``Reports1.List`` (called in a worker thread, e.g.
    ``lambda: survey(spool, StateStore.reader(state_dir))``). The callbacks run on the event loop and
    must not block: *on_activity* on every incoming call (the daemon's idle exit waits for clients),
    *on_consent_change* with the new effective consent whenever it changes, *on_upload_now* after an
    authorised ``UploadNow``. *polkit_timeout* bounds a non-interactive authorisation; the legacy
    switch files can be moved for tests. *spool* is the crash directory ``Reports1.WhatIsSent`` reads
    (without it, that call fails saying so). *watch* follows the consent files (the daemon's
    :func:`crashd.daemon.watch_files`); without it a change made by no call shows at the next call.
    Raises :class:`ConfigError` for a bad ``[consent]`` section and :class:`BusUnavailable` when a
    name cannot be owned (nothing stays exported then).
    """
    tolerate_full_socket(bus)
    service = Service(
        bus, state_dir=Path(state_dir), config=config, status_provider=status_provider,
        on_activity=on_activity, on_consent_change=on_consent_change, on_upload_now=on_upload_now,
        polkit_timeout=polkit_timeout, whoopsie_default=whoopsie_default, apport_default=apport_default,
        spool=spool, watch=watch,
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
        watch: Watch | None = None,
    ) -> None:
        self.bus = bus
        self._state_dir = state_dir
        self._files = dict(config=config, whoopsie_default=whoopsie_default, apport_default=apport_default)
        self._on_activity = on_activity
        self._on_consent_change = on_consent_change
        self._on_upload_now = on_upload_now
        self._watch = watch
        self._stop_watching: Callable[[], None] | None = None
        self._authority = Authority(bus, polkit_timeout)
        self._answers = Reports(status_provider, spool)
        self.consent = load_consent(state_dir, **self._files)  # ConfigError reaches the caller
        self._identifier: str | None = None
        self._config_problem: str | None = None
        self._preferences = Preferences(self)
        self._reports = ReportsInterface(self)
        self._whoopsie = WhoopsiePreferences(self)
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_change: asyncio.Future[None] | None = None
        self._names: list[str] = []
        # (path, interface, member) -> what polkit must allow before it runs
        self._guarded = {
            (PATH, REPORTS_INTERFACE, "UploadNow"): _Guarded(CHANGE_ACTION, "", self._upload_now),
        }
        for name in preferences.SETTABLE:
            self._guarded[PATH, PREFERENCES_INTERFACE, f"Set{name}"] = self._setter(CHANGE_ACTION, name)
        for name in whoopsie.SETTABLE:
            self._guarded[WHOOPSIE_PATH, WHOOPSIE_NAME, f"Set{name}"] = self._setter(WHOOPSIE_ACTION, name)

    # -- life cycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self.bus.export(PATH, self._preferences)
        self.bus.export(PATH, self._reports)
        self.bus.export(WHOOPSIE_PATH, self._whoopsie)
        self.bus.add_message_handler(self._on_message)
        if self._watch is not None:
            self._stop_watching = self._watch(self.consent_files, self.refresh)
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
        if self._stop_watching is not None:
            self._stop_watching()
            self._stop_watching = None
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

    @property
    def consent_files(self) -> frozenset[Path]:
        """The files the effective consent is read from: the consent file, the lock, the legacy switches."""
        files = [self._state_dir / FILE_NAME, *(Path(p) for p in self._files.values() if p is not None)]
        return frozenset(path.absolute() for path in files)

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
        from crashd.identity import system_identifier  # read once, on the first call that asks

        if self._identifier is None:
            try:
                self._identifier = system_identifier(self._state_dir)
            except (LookupError, ValueError) as error:
                raise DBusError(ErrorType.FAILED, str(error)) from None
        return self._identifier

    def what_is_sent(self, name: str, caller_uid: int) -> str:
        """``Reports1.WhatIsSent``'s answer (blocking): see :meth:`Reports.what_is_sent`."""
        return self._answers.what_is_sent(name, caller_uid)

    def list_reports(self, caller_uid: int = 0) -> list[tuple[str, str, int, str]]:
        """``Reports1.List``'s answer (blocking): see :meth:`Reports.list_reports`."""
        return self._answers.list_reports(caller_uid)

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
            self._spawn(self._answers.answer_list(self.bus, msg))
            return True
        if (msg.path, msg.member, msg.signature) == (PATH, "WhatIsSent", "s") and msg.interface in (
            None, REPORTS_INTERFACE,
        ):  # fmt: skip
            self._spawn(self._answers.answer_what_is_sent(self.bus, msg))
            return True
        guarded = self._guarded_for(msg)
        if guarded is None:
            return None  # dbus-fast answers it: properties, introspection, GetIdentifier, errors
        previous, self._last_change = self._last_change, asyncio.get_running_loop().create_future()
        self._spawn(self._answer(msg, guarded, previous, self._last_change))
        return True

    def _spawn(self, answer: Any) -> None:
        task = asyncio.create_task(answer)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
            await self._authority.authorize(msg, guarded.action)
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
        send_reply(self.bus, msg, reply)

    def _setter(self, action: str, preference: str) -> _Guarded:
        async def run(body: list[Any]) -> None:
            try:
                await asyncio.to_thread(set_preference, self._state_dir, preference, body[0], **self._files)
            except PermissionError as error:  # ConsentLocked names the file; or the state dir refused us
                raise DBusError(ACCESS_DENIED, str(error)) from None
            except (ConfigError, OSError) as error:
                raise DBusError(ErrorType.FAILED, f"cannot change {preference}: {error}") from None
            self.refresh()

        return _Guarded(action, "b", run)

    async def _upload_now(self, body: list[Any]) -> None:
        _guard(self._on_upload_now)


def _visible(consent: Consent) -> tuple[bool, ...]:
    return consent.report_crashes, consent.automatic, consent.report_metrics, consent.locked


def _is_call(msg: Message, path: str, interface: str, member: str) -> bool:
    routed = msg.path == path and msg.member == member and msg.interface in (interface, None)
    return routed and not msg.signature


def _guard(callback: Callable[..., None], *args: object) -> None:
    """Run a daemon callback; its bug must not turn every D-Bus call into an error."""
    try:
        callback(*args)
    except Exception:
        log.exception("%s failed", getattr(callback, "__qualname__", callback))
