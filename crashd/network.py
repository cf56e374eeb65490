"""Metered and offline awareness: what NetworkManager says about the network, and what may go out on it.

whoopsie decides "metered" from the device type (3G, WiMAX), which is wrong for tethering and for
metered Wi-Fi. crashd asks NetworkManager instead: ``org.freedesktop.NetworkManager`` at
``/org/freedesktop/NetworkManager`` has ``Metered`` (NM_METERED_YES = 1 and GUESS_YES = 3 mean metered)
and ``Connectivity`` (NM_CONNECTIVITY_NONE = 1 means offline; UNKNOWN = 0, a captive portal and limited
connectivity count as online: an attempt costs little and tells more than a guess). Both are followed
through ``PropertiesChanged``, and NetworkManager starting or stopping through ``NameOwnerChanged``.

Two pure parts, table-tested, and one that talks to the bus:

- :class:`Conditions` (metered, online) and :func:`hold_reason`: given the conditions, the ``metered``
  setting (:class:`Metered`) and whether the next POST is a core, None (go) or the reason it waits.
  A wait is not an attempt: no retry budget is burnt, no backoff grows.
- :class:`Monitor` (the daemon: follows the properties and calls back on every change, so held
  reports go out when the network changes, not when a timer fires) and :func:`read_conditions`
  (one look, for ``crashd status`` and ``upload-all``).

Without NetworkManager on the bus (or without a bus) crashd behaves as it always did — everything
goes, a failed POST is retried with backoff — and says so once in the log.

dbus-fast and asyncio are imported only where the bus is used, so that the configuration (which
names :class:`Metered`) costs the other commands nothing, and ``crashd daemon`` reaches the upload
worker's head start (:func:`crashd.delivery.start_uploader_early`) ~15 ms sooner.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from crashd.lifecycle import Gate  # asked with whether the POST is a core: None, or why it waits

if TYPE_CHECKING:
    import asyncio

    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

log = logging.getLogger(__name__)

NM_NAME = "org.freedesktop.NetworkManager"  # also its interface name
NM_PATH = "/org/freedesktop/NetworkManager"
PROPERTIES = "org.freedesktop.DBus.Properties"
METERED_VALUES = frozenset({1, 3})  # NM_METERED_YES, NM_METERED_GUESS_YES
CONNECTIVITY_NONE = 1  # NM_CONNECTIVITY_NONE
READ_TIMEOUT = 5.0  # one GetAll; NetworkManager answers in milliseconds
_MATCHES = (
    f"type='signal',sender='{NM_NAME}',path='{NM_PATH}',interface='{PROPERTIES}',member='PropertiesChanged'",
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
    f"member='NameOwnerChanged',arg0='{NM_NAME}'",
)


class Metered(StrEnum):
    """The ``metered`` setting: what goes out on a metered network."""

    SEND = "send"  # everything, as on any other network
    REPORTS_ONLY = "reports-only"  # report bodies (small); cores wait for an unmetered network
    HOLD = "hold"  # nothing; everything waits for an unmetered network


@dataclass(frozen=True)
class Conditions:
    """The network as NetworkManager sees it; :data:`UNKNOWN` when nobody says."""

    metered: bool
    online: bool

    @classmethod
    def from_properties(cls, metered: int | None, connectivity: int | None) -> Conditions:
        """From NetworkManager's ``Metered`` (NMMetered) and ``Connectivity`` (NMConnectivityState)."""
        return cls(metered=metered in METERED_VALUES, online=connectivity != CONNECTIVITY_NONE)

    def describe(self) -> str:
        return f"{'online' if self.online else 'offline'}, {'metered' if self.metered else 'not metered'}"


UNKNOWN = Conditions(metered=False, online=True)  # no NetworkManager: behave as if it did not exist

OFFLINE = "held: offline (NetworkManager reports no connectivity); sent when the network is back"
METERED_CORE = "core held: metered network (metered = reports-only); sent on an unmetered network"
METERED_ALL = "held: metered network (metered = hold); sent on an unmetered network"
REASONS = frozenset({OFFLINE, METERED_CORE, METERED_ALL})


def hold_reason(conditions: Conditions, setting: Metered, *, core: bool) -> str | None:
    """None when the next POST (a core when *core*, else a report body) may go out now, else why not."""
    if not conditions.online:
        return OFFLINE
    if conditions.metered and setting is Metered.HOLD:
        return METERED_ALL
    if conditions.metered and setting is Metered.REPORTS_ONLY and core:
        return METERED_CORE
    return None


def held_by_network(detail: str | None) -> bool:
    """Whether a status' reason is one of ours (it waits for the network, not for consent or a timer)."""
    return detail in REASONS


def gate(conditions: Conditions, setting: Metered) -> Gate:
    """A fixed answer, for commands that look once (``status``, ``upload-all``)."""
    return lambda core: hold_reason(conditions, setting, core=core)


class Monitor:
    """Follows NetworkManager on the system bus for the daemon; :meth:`hold` is its :data:`Gate`.

    :attr:`conditions` is replaced whole (never mutated), so the worker threads that call
    :meth:`hold` read a consistent value without a lock.
    """

    def __init__(self, setting: Metered) -> None:
        self.setting = setting
        self.conditions = UNKNOWN
        self.present = False  # NetworkManager is on the bus and answered
        self._bus: MessageBus | None = None
        self._on_change: Callable[[Conditions], None] = lambda _conditions: None
        self._tasks: set[asyncio.Task[None]] = set()

    def hold(self, core: bool) -> str | None:
        return hold_reason(self.conditions, self.setting, core=core)

    async def start(self, on_change: Callable[[Conditions], None]) -> None:
        """Connect, subscribe, read the properties once; every later change calls *on_change*.

        Never raises for a missing bus or NetworkManager: crashd then sends as it always did.
        """
        from crashd.dbus.bus import BusUnavailable, connect_system_bus  # dbus-fast only where the bus is

        self._on_change = on_change
        try:
            bus = await connect_system_bus()
        except BusUnavailable as error:
            log.info("%s: sending without regard to metered or offline networks", error)
            return
        self._bus = bus
        try:
            bus.add_message_handler(self._on_message)
            for rule in _MATCHES:  # subscribed before the first read: no change can fall in between
                await _call(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                            "AddMatch", "s", [rule])  # fmt: skip
            await self._read(first=True)
        except Exception:  # a bug here must not keep the daemon from sending at all
            log.exception("cannot follow NetworkManager: sending without regard to metered or offline "
                          "networks")  # fmt: skip
            self.conditions = UNKNOWN

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._bus is not None:
            self._bus.disconnect()
            with contextlib.suppress(Exception):
                await self._bus.wait_for_disconnect()
            self._bus = None

    async def _read(self, *, first: bool = False) -> None:
        assert self._bus is not None
        properties = await _get_all(self._bus)
        if properties is None:
            if first or self.present:
                log.info("NetworkManager is not on the system bus: sending without regard to metered or "
                         "offline networks")  # fmt: skip
            self.present = False
            self._update(UNKNOWN)
            return
        if not self.present:
            log.info("following NetworkManager (metered = %s)", self.setting.value)
        self.present = True
        self._update(Conditions.from_properties(properties.get("Metered"), properties.get("Connectivity")))

    def _update(self, conditions: Conditions) -> None:
        before, self.conditions = self.conditions, conditions
        if conditions != before:
            log.info("network: %s (was %s)", conditions.describe(), before.describe())
            try:
                self._on_change(conditions)
            except Exception:  # a bug in the callback must not stop us following the network
                log.exception("reacting to a network change failed")

    def _on_message(self, msg: Message) -> None:
        from dbus_fast import MessageType

        if msg.message_type is not MessageType.SIGNAL:
            return
        if msg.member == "PropertiesChanged" and msg.path == NM_PATH and msg.body and msg.body[0] == NM_NAME:
            changed = {key: variant.value for key, variant in msg.body[1].items()}
            if not ({"Metered", "Connectivity"} & changed.keys()):
                return
            self.present = True
            current = self.conditions
            metered = changed.get("Metered")
            connectivity = changed.get("Connectivity")
            self._update(Conditions(
                metered=current.metered if metered is None else metered in METERED_VALUES,
                online=current.online if connectivity is None else connectivity != CONNECTIVITY_NONE,
            ))  # fmt: skip
        elif msg.member == "NameOwnerChanged" and msg.body and msg.body[0] == NM_NAME:
            import asyncio

            task = asyncio.ensure_future(self._read())  # appeared: read it; gone: back to UNKNOWN
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


def read_conditions(setting: Metered) -> Gate | None:
    """One look at NetworkManager (``status``, ``upload-all``): its gate, or None without it."""

    async def look() -> dict[str, Any] | None:
        from crashd.dbus.bus import BusUnavailable, connect_system_bus

        try:
            bus = await connect_system_bus()
        except BusUnavailable:
            return None
        try:
            return await _get_all(bus)
        finally:
            bus.disconnect()

    import asyncio

    try:
        properties = asyncio.run(asyncio.wait_for(look(), READ_TIMEOUT))
    except TimeoutError:
        properties = None
    if properties is None:
        log.info("NetworkManager is not on the system bus: sending without regard to metered or offline "
                 "networks")  # fmt: skip
        return None
    conditions = Conditions.from_properties(properties.get("Metered"), properties.get("Connectivity"))
    log.info("network: %s (NetworkManager); metered = %s", conditions.describe(), setting.value)
    return gate(conditions, setting)


async def _get_all(bus: MessageBus) -> dict[str, Any] | None:
    """NetworkManager's properties, or None when it is not there (or not answering)."""
    # NO_AUTO_START: asking must not start a NetworkManager the administrator left stopped.
    reply = await _call(bus, NM_NAME, NM_PATH, PROPERTIES, "GetAll", "s", [NM_NAME], auto_start=False)
    if reply is None:
        return None
    return {key: variant.value for key, variant in reply[0].items()}


async def _call(bus: MessageBus, destination: str, path: str, interface: str, member: str,
                signature: str, body: list[Any], *, auto_start: bool = True) -> list[Any] | None:  # fmt: skip
    """A method call's reply body, or None on an error reply, a dropped bus or no answer in time."""
    import asyncio

    from dbus_fast import Message, MessageFlag, MessageType

    flags = MessageFlag.NONE if auto_start else MessageFlag.NO_AUTOSTART
    message = Message(destination=destination, path=path, interface=interface, member=member,
                      signature=signature, body=body, flags=flags)  # fmt: skip
    try:
        reply = await asyncio.wait_for(bus.call(message), READ_TIMEOUT)
    except (TimeoutError, EOFError, OSError) as error:
        log.debug("%s.%s: %s", interface, member, error)
        return None
    if reply is None or reply.message_type is MessageType.ERROR:
        log.debug("%s.%s: %s", interface, member, reply.error_name if reply is not None else "no reply")
        return None
    return list(reply.body)
