"""The parts of crashd's D-Bus service, one concept a module; :mod:`crashd.dbus_prefs` is its face.

- :mod:`.bus`          the connection: connect, keep it through a full socket, who is calling, replies
- :mod:`.polkit`       asking polkit whether a caller may do an action
- :mod:`.interface`    the base of the exported interfaces (argument names in the introspection data)
- :mod:`.preferences`  ``org.crashd.Preferences1``, crashd's own consent interface
- :mod:`.whoopsie`     ``com.ubuntu.WhoopsiePreferences``, the drop-in for whoopsie-preferences
- :mod:`.reports`      ``org.crashd.Reports1``: List, UploadNow, WhatIsSent, ReportChanged
- :mod:`.service`      the running service: both names, the message handler, consent changes

Import from :mod:`crashd.dbus_prefs`; these modules are its parts, not an API of their own.
"""
