"""Consent on the system bus (DESIGN.md §5): crashd's own interface and a drop-in whoopsie-preferences.

One connection serves two names, both D-Bus-activatable (``data/dbus/``)::

    org.crashd.Crashd1  /org/crashd/Crashd1
      org.crashd.Preferences1   ReportCrashes b, AutomaticallyReportCrashes b, Identifier s, Locked b
                                (read-only); SetReportCrashes(b), SetAutomaticallyReportCrashes(b)
      org.crashd.Reports1       List() -> a(ssxs), UploadNow(), WhatIsSent(s name) -> s json;
                                signal ReportChanged(s name, s state)
    com.ubuntu.WhoopsiePreferences  /com/ubuntu/WhoopsiePreferences, interface of the same name
                                ReportCrashes b, ReportMetrics b, AutomaticallyReportCrashes b (read-only);
                                SetReportCrashes(b), SetReportMetrics(b), SetAutomaticallyReportCrashes(b),
                                GetIdentifier() -> s

**Authorisation.** Every call that changes something asks polkit first (``CheckAuthorization``, subject
``system-bus-name`` = the caller's unique name, interactive only when the caller's message carries
ALLOW_INTERACTIVE_AUTHORIZATION). crashd's interface checks ``org.crashd.change-preferences``; the façade
checks whoopsie's own ``com.ubuntu.whoopsiepreferences.change``, so KDE's KCM — which executes that action
to cache the authorisation before calling the setters — does not prompt twice, and polkit rules written
for whoopsie keep working. ``UploadNow`` counts as a change (sending is a consent decision, and it must
not let any local user make the daemon retry in a loop). A refusal, a polkit error or silence, and a
locked preference (the message names the config file) are ``org.freedesktop.DBus.Error.AccessDenied``;
nothing changes. Authorisations run concurrently; the changes they allow apply in the order the calls
arrived. The properties themselves are read-only: ``Properties.Set`` gets ``PropertyReadOnly``.
``WhatIsSent`` changes nothing but shows a report's contents, so it asks the bus for the caller's uid
(``GetConnectionUnixUser``) instead of polkit: the report's owner and root may read it
(:mod:`crashd.preview`).

Only the message knows its sender and flags, so the calls that need polkit are answered by a
message handler (:mod:`crashd.dbus.service` says how).

**Change notification.** ``PropertiesChanged`` goes out on both objects whenever the effective consent
changes, whoever changed it: after a set here, when ``crashd prefs --offline`` rewrites the consent file
or an admin edits the lock or a legacy switch (the daemon's inotify on their directories: *watch*), and at
the latest when the next call arrives (every call re-reads the consent first, so no client ever sees a
stale value).

Usage, in the daemon::

    bus = await connect_system_bus()
    service = await serve(bus, state_dir=..., config=..., status_provider=..., on_activity=...,
                          on_consent_change=..., on_upload_now=..., watch=watch_files)
    ...                             # race bus.wait_for_disconnect() against the daemon's own work:
    await service.close()           # a dropped connection must end the process non-zero

This module is the service's face: the parts live in :mod:`crashd.dbus`, one concept a module (the
connection, polkit, each interface, the running service); import them from here.
"""

from __future__ import annotations

from dbus_fast.aio import MessageBus as MessageBus  # "X as X": importable from here, not in __all__

from crashd.dbus.bus import BUS_TIMEOUT as BUS_TIMEOUT
from crashd.dbus.bus import DEFAULT_SYSTEM_BUS as DEFAULT_SYSTEM_BUS
from crashd.dbus.bus import BusUnavailable, connect_system_bus, tolerate_full_socket
from crashd.dbus.polkit import POLKIT_INTERACTIVE_TIMEOUT as POLKIT_INTERACTIVE_TIMEOUT
from crashd.dbus.polkit import POLKIT_TIMEOUT as POLKIT_TIMEOUT
from crashd.dbus.preferences import CHANGE_ACTION, PREFERENCES_INTERFACE
from crashd.dbus.reports import MAX_PREVIEW as MAX_PREVIEW
from crashd.dbus.reports import REPORTS_INTERFACE
from crashd.dbus.service import BUS_NAME, PATH, Service, serve
from crashd.dbus.service import Watch as Watch
from crashd.dbus.whoopsie import WHOOPSIE_ACTION, WHOOPSIE_NAME, WHOOPSIE_PATH

__all__ = [
    "BUS_NAME", "CHANGE_ACTION", "PATH", "PREFERENCES_INTERFACE", "REPORTS_INTERFACE", "WHOOPSIE_ACTION",
    "WHOOPSIE_NAME", "WHOOPSIE_PATH", "BusUnavailable", "Service", "connect_system_bus", "serve",
    "tolerate_full_socket",
]  # fmt: skip
