"""apport.logging: messages of hooks go to the hook child's stdout/stderr (both end up in crashd's log)."""

import os
import sys
import time


def log(message, timestamp=False):
    if timestamp:
        sys.stdout.write(f"{time.strftime('%x %X')}: ")
    print(message)


def fatal(msg, *args):
    """apport's fatal() exits: in a hook that ends the hook, recorded as its HookError."""
    error(msg, *args)
    sys.exit(1)


def error(msg, *args):
    if sys.stderr:
        sys.stderr.write("ERROR: " + (msg % args) + "\n")


def warning(msg, *args):
    if sys.stderr:
        sys.stderr.write("WARNING: " + (msg % args) + "\n")


def memdbg(checkpoint):
    if "APPORT_MEMDEBUG" in os.environ and sys.stderr:
        sys.stderr.write(f"Size: ?, RSS: ?, Shared: ? ({checkpoint})\n")
