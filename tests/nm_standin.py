"""A NetworkManager stand-in on a private system bus (DESIGN.md §11: real D-Bus, not a mock of crashd).

It owns ``org.freedesktop.NetworkManager`` and exports ``/org/freedesktop/NetworkManager`` with the two
properties crashd reads, typed as NetworkManager types them: ``Metered`` (u, NMMetered) and
``Connectivity`` (u, NMConnectivityState). :meth:`NetworkManager.set` changes them at run time and emits
``org.freedesktop.DBus.Properties.PropertiesChanged`` exactly as NetworkManager does; :meth:`stop`
releases the name (``NameOwnerChanged``), as when NetworkManager exits. It runs its own event loop in a
thread, so a test may block on a client process while the stand-in keeps answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from dbus_fast import NameFlag, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusUInt32
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property

__all__ = ["CONNECTIVITY_FULL", "CONNECTIVITY_NONE", "METERED_GUESS_YES", "METERED_NO", "METERED_YES",
           "NetworkManager"]  # fmt: skip

METERED_YES, METERED_NO, METERED_GUESS_YES = 1, 2, 3  # NMMetered
CONNECTIVITY_NONE, CONNECTIVITY_FULL = 1, 4  # NMConnectivityState
START_TIMEOUT = 10.0


class _Interface(ServiceInterface):
    def __init__(self, metered: int, connectivity: int) -> None:
        super().__init__("org.freedesktop.NetworkManager")
        self.metered, self.connectivity = metered, connectivity

    @dbus_property(access=PropertyAccess.READ)
    def Metered(self) -> DBusUInt32:
        return self.metered

    @dbus_property(access=PropertyAccess.READ)
    def Connectivity(self) -> DBusUInt32:
        return self.connectivity


class NetworkManager:
    """``with NetworkManager(bus.address, metered=METERED_YES) as nm: ... nm.set(metered=METERED_NO)``."""

    def __init__(self, address: str, *, metered: int = METERED_NO, connectivity: int = CONNECTIVITY_FULL):
        self.address = address
        self._interface = _Interface(metered, connectivity)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> NetworkManager:
        ready = threading.Event()
        failure: list[BaseException] = []

        async def run() -> None:
            self._loop, self._stopped = asyncio.get_running_loop(), asyncio.Event()
            try:
                bus = await MessageBus(bus_address=self.address).connect()
                bus.export("/org/freedesktop/NetworkManager", self._interface)
                reply = await bus.request_name("org.freedesktop.NetworkManager", NameFlag.DO_NOT_QUEUE)
                assert reply is RequestNameReply.PRIMARY_OWNER, reply
            except BaseException as error:
                failure.append(error)
                ready.set()
                return
            ready.set()
            await self._stopped.wait()
            bus.disconnect()
            with contextlib.suppress(Exception):
                await bus.wait_for_disconnect()

        self._thread = threading.Thread(target=asyncio.run, args=(run(),), name="nm-standin", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT) or failure:
            raise RuntimeError(f"the NetworkManager stand-in did not start: {failure[:1]!r}")
        return self

    def set(self, *, metered: int | None = None, connectivity: int | None = None) -> None:
        """Change the properties and emit PropertiesChanged with the changed ones; returns once sent."""
        assert self._loop is not None
        done = threading.Event()

        def change() -> None:
            interface, changed = self._interface, {}
            if metered is not None:
                interface.metered = changed["Metered"] = metered
            if connectivity is not None:
                interface.connectivity = changed["Connectivity"] = connectivity
            interface.emit_properties_changed(changed)
            done.set()

        self._loop.call_soon_threadsafe(change)
        assert done.wait(START_TIMEOUT), "the NetworkManager stand-in did not change its properties"

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended (the bus died)
                self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(START_TIMEOUT)
            self._loop = None

    def __enter__(self) -> NetworkManager:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
