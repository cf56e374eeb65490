"""Asking polkit whether the caller of a message may do an action (``CheckAuthorization``).

The subject is the caller's unique bus name (``system-bus-name``); the check is interactive only when
the caller's message carries ALLOW_INTERACTIVE_AUTHORIZATION. A refusal, a polkit error or silence is
``org.freedesktop.DBus.Error.AccessDenied``; a check that times out is cancelled, so that a password
prompt does not stay on screen for a call nobody waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from typing import Any

from dbus_fast import DBusError, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from crashd.dbus.bus import ACCESS_DENIED

POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_INTERFACE = "org.freedesktop.PolicyKit1.Authority"
POLKIT_ALLOW_USER_INTERACTION = 1  # CheckAuthorizationFlags
POLKIT_TIMEOUT = 25.0  # a non-interactive check; D-Bus clients give up after 25 s by default too
POLKIT_INTERACTIVE_TIMEOUT = 300.0  # someone is typing a password


class Authority:
    """polkit's authority as seen from *bus*; *timeout* bounds a non-interactive check."""

    def __init__(self, bus: MessageBus, timeout: float = POLKIT_TIMEOUT) -> None:
        self.bus = bus
        self.timeout = timeout
        self._cancel_ids = itertools.count(1)

    async def authorize(self, msg: Message, action: str) -> None:
        """Return when polkit allows *action* for the caller of *msg*; AccessDenied otherwise."""
        if not msg.sender:
            raise DBusError(ACCESS_DENIED, "not authorized: the caller has no bus name")
        interactive = bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)
        cancel_id = f"crashd-{os.getpid()}-{next(self._cancel_ids)}"
        subject = ["system-bus-name", {"name": Variant("s", msg.sender)}]
        flags = POLKIT_ALLOW_USER_INTERACTION if interactive else 0
        arguments = [subject, action, {}, flags, cancel_id]
        query = _polkit_call("CheckAuthorization", "(sa{sv})sa{ss}us", arguments)
        timeout = POLKIT_INTERACTIVE_TIMEOUT if interactive else self.timeout
        try:
            async with asyncio.timeout(timeout):
                reply = await self.bus.call(query)
        except TimeoutError:
            with contextlib.suppress(Exception):  # take the password prompt away again
                self.bus.send(_polkit_call("CancelCheckAuthorization", "s", [cancel_id], no_reply=True))
            why = f"polkit did not answer within {timeout:g} s"
            raise DBusError(ACCESS_DENIED, f"could not authorize {action}: {why}") from None
        except (OSError, EOFError) as error:
            raise DBusError(ACCESS_DENIED, f"could not authorize {action}: {error}") from None
        if reply is None:
            raise DBusError(ACCESS_DENIED, f"could not authorize {action}: no reply from polkit")
        if reply.message_type is MessageType.ERROR:
            why = f"{reply.error_name}: {reply.body[0] if reply.body else ''}"
            raise DBusError(ACCESS_DENIED, f"could not authorize {action} ({why})")
        authorized, challenge, _details = reply.body[0]
        if not authorized:
            hint = " (authentication is required: allow interactive authorization)" if challenge else ""
            raise DBusError(ACCESS_DENIED, f"not authorized (polkit action {action}){hint}")


def _polkit_call(member: str, signature: str, body: list[Any], *, no_reply: bool = False) -> Message:
    flags = MessageFlag.NO_REPLY_EXPECTED if no_reply else MessageFlag.NONE
    return Message(destination=POLKIT_NAME, path=POLKIT_PATH, interface=POLKIT_INTERFACE, member=member,
                   signature=signature, body=body, flags=flags)  # fmt: skip
