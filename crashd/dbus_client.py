"""``crashd prefs`` over the system bus: read and change consent through the running service.

A blocking API for the command line (each call runs its own short event loop); D-Bus activation
starts the service when it is installed. Changing a preference is authorised by polkit on the
service's side — root always passes, anyone else needs an administrator's authentication, which a
desktop polkit agent may ask for (the calls allow interactive authorisation)::

    >>> set_preference("AutomaticallyReportCrashes", True)
    Preferences(report_crashes=True, automatic=True, report_metrics=True, locked=False)

ReportCrashes and AutomaticallyReportCrashes go through ``org.crashd.Preferences1``; ReportMetrics
exists only on the ``com.ubuntu.WhoopsiePreferences`` façade and goes through it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from dbus_fast import DBusError, ErrorType, Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus

from crashd import dbus_prefs
from crashd.dbus_prefs import BusUnavailable
from crashd.errors import CrashdError

__all__ = ["TIMEOUT", "BusUnavailable", "NotAuthorized", "Preferences", "get_preferences", "set_preference"]

TIMEOUT = 120.0  # long enough for someone to type a password into a polkit agent
_T = TypeVar("_T")
_PROPERTIES = "org.freedesktop.DBus.Properties"
_OURS = (dbus_prefs.BUS_NAME, dbus_prefs.PATH, dbus_prefs.PREFERENCES_INTERFACE)  # name, path, interface
_THEIRS = (dbus_prefs.WHOOPSIE_NAME, dbus_prefs.WHOOPSIE_PATH, dbus_prefs.WHOOPSIE_NAME)
# Errors that mean "no service to talk to" (not installed, failed to start, gone), besides Spawn.*.
_NO_SERVICE = {
    ErrorType.SERVICE_UNKNOWN.value, ErrorType.NAME_HAS_NO_OWNER.value, ErrorType.NO_REPLY.value,
    ErrorType.TIMEOUT.value, ErrorType.TIMED_OUT.value, "org.freedesktop.systemd1.NoSuchUnit",
}  # fmt: skip


class NotAuthorized(CrashdError, PermissionError):
    """The service refused the change: polkit said no, or the administrator locked the preferences."""


@dataclass(frozen=True)
class Preferences:
    """What the service reports (the effective values, after the lock and the legacy switches)."""

    report_crashes: bool
    automatic: bool
    report_metrics: bool
    locked: bool

    def as_properties(self) -> dict[str, bool]:
        return {"ReportCrashes": self.report_crashes, "AutomaticallyReportCrashes": self.automatic,
                "ReportMetrics": self.report_metrics}  # fmt: skip


def get_preferences(*, timeout: float = TIMEOUT) -> Preferences:
    """The preferences as the running service sees them. Raises :class:`BusUnavailable`."""
    return _run(_read, timeout)


def set_preference(
    name: str, value: bool, *, interactive: bool = True, timeout: float = TIMEOUT
) -> Preferences:
    """Change one preference by its D-Bus name; return the preferences afterwards.

    Raises :class:`NotAuthorized` (the service's message says why: polkit, or the locking config file),
    :class:`BusUnavailable`, or ValueError for an unknown name.
    """
    if name in ("ReportCrashes", "AutomaticallyReportCrashes"):
        where = _OURS
    elif name == "ReportMetrics":
        where = _THEIRS
    else:
        raise ValueError(f"unknown preference {name!r}")
    flags = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if interactive else MessageFlag.NONE

    async def change(bus: MessageBus) -> Preferences:
        await _call(bus, *where, f"Set{name}", "b", [bool(value)], flags=flags)
        return await _read(bus)

    return _run(change, timeout)


async def _read(bus: MessageBus) -> Preferences:
    ours = await _call(bus, *_OURS[:2], _PROPERTIES, "GetAll", "s", [_OURS[2]])
    theirs = await _call(bus, *_THEIRS[:2], _PROPERTIES, "Get", "ss", [_THEIRS[2], "ReportMetrics"])
    values = {name: variant.value for name, variant in ours[0].items()}
    return Preferences(values["ReportCrashes"], values["AutomaticallyReportCrashes"], theirs[0].value,
                       values["Locked"])  # fmt: skip


async def _call(
    bus: MessageBus, destination: str, path: str, interface: str, member: str, signature: str = "",
    body: list[Any] | None = None, *, flags: MessageFlag = MessageFlag.NONE,
) -> list[Any]:  # fmt: skip
    message = Message(destination=destination, path=path, interface=interface, member=member,
                      signature=signature, body=body or [], flags=flags)  # fmt: skip
    reply = await bus.call(message)
    if reply is None:
        raise BusUnavailable(f"no reply from {destination}")
    if reply.message_type is MessageType.ERROR:
        text = str(reply.body[0]) if reply.body else reply.error_name or "error"
        if reply.error_name == ErrorType.ACCESS_DENIED.value:
            raise NotAuthorized(text)
        name = reply.error_name or ""
        if name in _NO_SERVICE or name.startswith("org.freedesktop.DBus.Error.Spawn."):
            raise BusUnavailable(f"crashd's D-Bus service is not available ({text})")
        raise DBusError(reply.error_name or ErrorType.FAILED, text)
    return reply.body


def _run(work: Callable[[MessageBus], Awaitable[_T]], timeout: float) -> _T:
    async def main() -> _T:
        async with asyncio.timeout(timeout):
            bus = await dbus_prefs.connect_system_bus()
            try:
                return await work(bus)
            finally:
                bus.disconnect()
                with contextlib.suppress(Exception):
                    await bus.wait_for_disconnect()

    try:
        return asyncio.run(main())
    except TimeoutError:
        raise BusUnavailable(f"crashd's D-Bus service did not answer within {timeout:g} s") from None
    except (NotAuthorized, BusUnavailable):
        raise
    except (OSError, EOFError) as error:
        raise BusUnavailable(f"lost the system bus connection: {error}") from error
