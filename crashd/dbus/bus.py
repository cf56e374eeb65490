"""The system-bus connection the service and NetworkManager's follower share.

:func:`connect_system_bus` connects (naming the address when it cannot), :func:`tolerate_full_socket`
keeps a connection through a burst of replies, :func:`caller_uid` asks the bus who sent a message and
:func:`send_reply` answers a call the message handler took over.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from dbus_fast import BusType, DBusError, ErrorType, Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.errors import AuthError, InvalidAddressError

from crashd.errors import CrashdError

log = logging.getLogger("crashd.dbus_prefs")

DEFAULT_SYSTEM_BUS = "unix:path=/var/run/dbus/system_bus_socket"
BUS_TIMEOUT = 25.0  # the bus daemon's own answers (who is calling)
ACCESS_DENIED = ErrorType.ACCESS_DENIED.value


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


async def caller_uid(bus: MessageBus, msg: Message) -> int:
    """The uid the bus itself vouches for as the sender of *msg*; AccessDenied when it cannot."""
    query = Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus", member="GetConnectionUnixUser", signature="s",
                    body=[msg.sender or ""])  # fmt: skip
    try:
        async with asyncio.timeout(BUS_TIMEOUT):
            reply = await bus.call(query)
    except (TimeoutError, OSError, EOFError) as error:
        raise DBusError(ACCESS_DENIED, f"cannot identify the caller: {error or 'no answer'}") from None
    if reply is None or reply.message_type is MessageType.ERROR or not reply.body:
        raise DBusError(ACCESS_DENIED, "cannot identify the caller: the bus did not say who it is")
    return int(reply.body[0])


def send_reply(bus: MessageBus, msg: Message, reply: Message) -> None:
    """Answer *msg* (a call the message handler took over) unless its caller wants no reply or the bus
    is gone."""
    if not msg.flags & MessageFlag.NO_REPLY_EXPECTED and bus.connected:
        bus.send(reply)
