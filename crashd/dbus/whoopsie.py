"""``com.ubuntu.WhoopsiePreferences``: whoopsie-preferences' interface, member for member
(research/whoopsie.md §5.1), so that GNOME Settings, KDE's KCM and apport keep working unchanged.

At ``/com/ubuntu/WhoopsiePreferences``, on a bus name of the same name. Properties (read-only):
ReportCrashes b, ReportMetrics b, AutomaticallyReportCrashes b. SetReportCrashes(b),
SetReportMetrics(b), SetAutomaticallyReportCrashes(b) check whoopsie's own polkit action
``com.ubuntu.whoopsiepreferences.change``, so that KDE's KCM — which executes that action to cache
the authorisation before calling the setters — does not prompt twice, and polkit rules written for
whoopsie keep working. GetIdentifier() -> s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dbus_fast.annotations import DBusBool, DBusStr
from dbus_fast.service import PropertyAccess, dbus_method, dbus_property

from crashd.dbus.interface import Interface, unrouted

if TYPE_CHECKING:
    from crashd.dbus.service import Service

WHOOPSIE_NAME = "com.ubuntu.WhoopsiePreferences"  # also its interface name
WHOOPSIE_PATH = "/com/ubuntu/WhoopsiePreferences"
WHOOPSIE_ACTION = "com.ubuntu.whoopsiepreferences.change"
SETTABLE = ("ReportCrashes", "ReportMetrics", "AutomaticallyReportCrashes")  # Set<name>(b)


class WhoopsiePreferences(Interface):
    def __init__(self, service: Service) -> None:
        super().__init__(WHOOPSIE_NAME, service, {"GetIdentifier": ("identifier",)})

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
        unrouted()

    @dbus_method()
    def SetReportMetrics(self, report: DBusBool):
        unrouted()

    @dbus_method()
    def SetAutomaticallyReportCrashes(self, report: DBusBool):
        unrouted()

    @dbus_method()
    def GetIdentifier(self) -> DBusStr:
        return self._service.identifier()
