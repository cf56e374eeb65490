"""A small stand-in for apport, so package hooks run where apport is not installed.

The hook child appends the directory holding this package to ``sys.path`` last:
``import apport`` finds the real apport whenever it is installed, and this one
otherwise. It provides what hooks use (``research/apport.md`` §4.4):
``apport.hookutils``, ``apport.packaging`` (dpkg-based), and the logging helpers.
Nothing here prompts, needs root or runs a shell; every command has a timeout and
an output cap; files are read like apport's hardened ``read_file``.
"""

import sys

from apport import packaging

__all__ = ["error", "fatal", "log", "memdbg", "packaging", "unicode_gettext", "warning"]
__version__ = "2.28.0+crashd"  # the apport API level this stand-in follows


def log(message, timestamp=False):
    print(message, file=sys.stderr)


def error(message, *args):
    print("ERROR: " + (message % args if args else message), file=sys.stderr)


def warning(message, *args):
    print("WARNING: " + (message % args if args else message), file=sys.stderr)


def fatal(message, *args):
    """apport's fatal() exits; in a hook that ends only the hook, recorded as its HookError."""
    error(message, *args)
    sys.exit(1)


def memdbg(checkpoint):
    pass


def unicode_gettext(message):
    return message
