"""``org.crashd.Preferences1``: crashd's own consent interface, at ``/org/crashd/Crashd1``.

Properties (read-only: ``Properties.Set`` gets ``PropertyReadOnly``): ReportCrashes b,
AutomaticallyReportCrashes b, Identifier s, Locked b. Setters: SetReportCrashes(b),
SetAutomaticallyReportCrashes(b), authorised by polkit's ``org.crashd.change-preferences``
(the service's message handler answers them: see :mod:`crashd.dbus.service`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dbus_fast import DBusError
from dbus_fast.annotations import DBusBool, DBusStr
from dbus_fast.service import PropertyAccess, dbus_method, dbus_property

from crashd.dbus.interface import Interface, unrouted

if TYPE_CHECKING:
    from crashd.dbus.service import Service

PREFERENCES_INTERFACE = "org.crashd.Preferences1"
CHANGE_ACTION = "org.crashd.change-preferences"
SETTABLE = ("ReportCrashes", "AutomaticallyReportCrashes")  # Set<name>(b), each polkit-guarded


class Preferences(Interface):
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
        unrouted()

    @dbus_method()
    def SetAutomaticallyReportCrashes(self, report: DBusBool):
        unrouted()
