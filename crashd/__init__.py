"""crashd: an on-device crash-reporting daemon and library.

The library surface is small: :mod:`crashd.report` reads and writes the
problem-report format; :mod:`crashd.spool` handles the crash directory safely;
:mod:`crashd.uploader` speaks the daisy protocol.
"""


def _version() -> str:
    """project(version:) of meson.build, the one place the version is written: meson writes it into
    crashd/_version.py when it installs the package (system installs and wheels alike); a source tree
    has no _version.py but has meson.build beside the package."""
    try:
        from crashd._version import __version__ as installed
    except ImportError:
        import os
        import re

        build = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "meson.build")
        with open(build, encoding="utf-8") as f:
            match = re.search(r"^\s*version:\s*'([^']+)'", f.read(65536), re.MULTILINE)
        return match.group(1) if match else "unknown"
    return installed


def __getattr__(name: str) -> str:
    """``crashd.__version__``, looked up on first use only: every Python program of the machine imports
    this package at start-up (the excepthook .pth), and must not pay for reading a file there."""
    if name == "__version__":
        globals()["__version__"] = version = _version()
        return version
    raise AttributeError(f"module 'crashd' has no attribute {name!r}")
