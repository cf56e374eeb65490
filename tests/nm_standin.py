"""A NetworkManager stand-in on a private system bus (DESIGN.md §11: real D-Bus, not a mock of crashd).

It owns ``org.freedesktop.NetworkManager`` and exports ``/org/freedesktop/NetworkManager`` with the two
properties crashd reads, typed as NetworkManager types them: ``Metered`` (u, NMMetered) and
``Connectivity`` (u, NMConnectivityState). :meth:`NetworkManager.set` changes them at run time and emits
``org.freedesktop.DBus.Properties.PropertiesChanged`` exactly as NetworkManager does; :meth:`stop`
releases the name (``NameOwnerChanged``), as when NetworkManager exits. It runs its own event loop in a
thread, so a test may block on a client process while the stand-in keeps answering.
"""

from __future__ import annotations

from dbus_fast.annotations import DBusUInt32
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property

from tests.dbus_bus import StandIn

__all__ = ["CONNECTIVITY_FULL", "CONNECTIVITY_NONE", "METERED_GUESS_YES", "METERED_NO", "METERED_YES",
           "NetworkManager"]  # fmt: skip

METERED_YES, METERED_NO, METERED_GUESS_YES = 1, 2, 3  # NMMetered
CONNECTIVITY_NONE, CONNECTIVITY_FULL = 1, 4  # NMConnectivityState


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
        self._service = StandIn("NetworkManager")

    def start(self) -> NetworkManager:
        self._service.start(self.address, "org.freedesktop.NetworkManager", "/org/freedesktop/NetworkManager",
                            self._interface)  # fmt: skip
        return self

    def set(self, *, metered: int | None = None, connectivity: int | None = None) -> None:
        """Change the properties and emit PropertiesChanged with the changed ones; returns once sent."""

        def change() -> None:
            interface, changed = self._interface, {}
            if metered is not None:
                interface.metered = changed["Metered"] = metered
            if connectivity is not None:
                interface.connectivity = changed["Connectivity"] = connectivity
            interface.emit_properties_changed(changed)

        self._service.call(change)

    def stop(self) -> None:
        self._service.stop()

    def __enter__(self) -> NetworkManager:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
