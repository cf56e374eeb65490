"""The base of crashd's exported interfaces: introspection data with real argument names.

dbus-fast names out arguments and signal arguments ``arg_0``…; clients that read the introspection
data (d-feet, qdbus, generated proxies) should see ``GetIdentifier(out s identifier)`` as
whoopsie-preferences' XML has it. Each interface passes its names as *arg_names*.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dbus_fast import DBusError
from dbus_fast import introspection as intr
from dbus_fast.service import ServiceInterface

from crashd.dbus.bus import ACCESS_DENIED

if TYPE_CHECKING:
    from crashd.dbus.service import Service


class Interface(ServiceInterface):
    """An interface of *service* (its properties read the service's state); *arg_names*: member ->
    the names of its out arguments (a signal's arguments)."""

    def __init__(self, name: str, service: Service, arg_names: dict[str, tuple[str, ...]] | None = None):
        super().__init__(name)
        self._service = service
        self._arg_names = arg_names or {}

    def introspect(self) -> intr.Interface:
        data = super().introspect()
        for member in [*data.methods, *data.signals]:
            names = self._arg_names.get(member.name, ())
            args = member.out_args if isinstance(member, intr.Method) else member.args
            for arg, name in zip(args, names, strict=False):
                arg.name = name
        return data


def unrouted() -> None:
    """The body of a method the message handler answers; reached only if it did not (fail closed).

    Only the message knows its sender and flags, and dbus-fast hands a ``ServiceInterface`` method its
    arguments alone: these declarations exist for the introspection data."""
    raise DBusError(ACCESS_DENIED, "not authorized: the caller could not be identified")
