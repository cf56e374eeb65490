"""What crashd needs from its third-party dependencies, and one clear line when an installed one is unusable.

crashd's system install (README, "Installing on a system") runs under the system interpreter, next to
whatever the distribution ships: Debian bookworm's python3-dbus-fast 1.84.2, for instance, lacks
``dbus_fast.annotations``. Without this, the daemon would die with a traceback and systemd would restart it
every few seconds. :func:`explain` turns such an ImportError into ``<dist> <found> is too old: crashd needs
<dist> >= <minimum>``; the CLI prints it as one ``crashd:`` line and exits 2, which crashd.service does not
restart (RestartPreventExitStatus=2).

The minimums are pyproject.toml's lower bounds (tests/test_packaging.py keeps the two equal).
"""

from __future__ import annotations

# top-level import name -> (distribution, minimum version)
MINIMUMS: dict[str, tuple[str, str]] = {
    "dbus_fast": ("dbus-fast", "4.0"),
    "asyncinotify": ("asyncinotify", "4.0"),
    "bson": ("pymongo", "3.11"),
    "backports": ("backports.zstd", "1.0"),
}


def explain(error: ImportError) -> str | None:
    """One line naming the dependency behind *error* and the version crashd needs, or None when the
    import that failed is not one of crashd's dependencies (then it is a bug, and the traceback stays)."""
    top = (error.name or "").partition(".")[0]
    if top not in MINIMUMS:
        return None
    dist, minimum = MINIMUMS[top]
    from importlib import metadata  # only once an import has failed: not a cost of every start

    try:
        found = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return f"{dist} is not installed: crashd needs {dist} >= {minimum} ({error})"
    return f"{dist} {found} is too old or broken: crashd needs {dist} >= {minimum} ({error})"
