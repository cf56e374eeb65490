"""What a hook gets in the hook child: the ``report`` and ``ui`` objects, the apport behind them, and
the call of its ``add_info`` (DESIGN.md §6).

Loaded by ``child.py`` by path, like ``crashd/process.py`` (see its docstring): the standard
library only, nothing of crashd, and only modules that load fast. ``import apport`` finds the
real apport when the hooks' Python has it and otherwise ``compat/apport`` beside this file
(appended to ``sys.path`` by the runner, so the real one always wins).
"""

import contextlib
import os
import sys
from collections import UserDict

MAX_SOURCE = 4 << 20
KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
KEY_PUNCTUATION = frozenset("._-")
COMPAT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compat")


def valid_key(key):
    """The one key rule, :func:`crashd.report.valid_key`'s (this file imports nothing from crashd;
    tests/test_hooks.py pins the two equal): ASCII letters, digits and ``. - _``, one letter or digit."""
    return isinstance(key, str) and KEY_CHARS.issuperset(key) and not KEY_PUNCTUATION.issuperset(key)


class HookReport(UserDict):
    """What ``add_info`` gets: apport's ``Report`` as far as hooks use it — str keys, str or bytes values.

    A ``UserDict``, like apport's ``ProblemReport``, so ``update()`` and
    ``setdefault()`` go through the same checks as ``report[key] = value``.
    """

    def __setitem__(self, key, value):
        if not valid_key(key):
            raise ValueError(f"invalid key {key!r}: letters, digits, '.', '_' and '-', one letter or digit")
        if isinstance(value, bytearray):
            value = bytes(value)
        elif type(value).__name__ == "CompressedValue":  # problem_report's, which apport's reports accept
            value = value.get_value()
        if not isinstance(value, (str, bytes)):
            raise TypeError(f"value of {key} must be str or bytes, not {type(value).__name__}")
        self.data[key] = value

    def add_tags(self, tags):
        """Add words to ``Tags`` (a sorted, space-separated set), as apport's ``add_tags``."""
        current = set(self.get("Tags", "").split())
        self["Tags"] = " ".join(sorted(current.union(tags)))

    def get_timestamp(self):
        """``Date`` as seconds since the epoch, or None (apport's ``get_timestamp``)."""
        import time

        try:
            return int(time.mktime(time.strptime(self["Date"])))
        except (KeyError, TypeError, ValueError, OverflowError):
            return None


class NoninteractiveUI:
    """The ``ui`` a hook gets: nobody is there to answer, so every question gets None."""

    def information(self, text):
        return None

    def yesno(self, text):
        return None

    def choice(self, text, options, multiple=False):
        return None

    def file(self, text):
        return None


def apport_api(fields):
    """(report, ui, name): the ``report`` and ``ui`` hooks get, from the apport ``import apport`` finds.

    The real apport when the hooks' Python has it (it is the reference), else
    crashd's ``compat/apport``. Either way ``report`` is an instance of that
    apport's ``Report`` (hooks check ``isinstance`` and call its ``add_*_info``),
    with :class:`HookReport`'s checks in front, holding *fields*; *name* is
    ``apport 2.x.y`` or ``crashd-compat N``, stored as ``_HooksRunWith``. Called
    before the first hook that is not one of crashd's built-in ones: a report
    with only those never pays for importing apport.
    """
    try:
        import apport
        from apport.hook_ui import NoninteractiveHookUI
        from apport.report import Report
    except Exception as error:  # a broken apport: hooks still run, and the report says why
        report = HookReport()
        report.data.update(fields)
        return report, NoninteractiveUI(), f"no apport ({type(error).__name__}: {error})"
    report = type("HookReport", (HookReport, Report), {})()
    report.data.clear()  # Report() adds ProblemType and Date of its own
    report.data.update(fields)
    report.old_keys = set(report.data)
    if os.path.dirname(os.path.dirname(os.path.abspath(apport.__file__))) == COMPAT:
        return report, NoninteractiveHookUI(), f"crashd-compat {apport.CRASHD_COMPAT}"
    return report, NoninteractiveHookUI(), f"apport {_apport_version(apport)}"


def _apport_version(apport):
    """The real apport's version: its distribution metadata, else ``apport/ui.py``'s ``__version__`` line."""
    from importlib import metadata

    with contextlib.suppress(Exception):
        return metadata.version("apport")
    import re

    ui_py = os.path.join(os.path.dirname(apport.__file__), "ui.py")
    with contextlib.suppress(OSError), open(ui_py, "rb") as f:
        found = re.search(rb'^__version__ = "([^"]+)"', f.read(1 << 20), re.MULTILINE)
        if found:
            return found.group(1).decode("ascii", "replace")
    return "(version unknown)"


def run_hook(path, report, ui, owners):
    """Run one hook's ``add_info``: (error text or None, whether it asked to stop the rest)."""
    try:
        namespace = {"__file__": path, "__name__": "crashd_hook", "__builtins__": __builtins__}
        exec(compile(load(path, owners), path, "exec"), namespace)
        call_add_info(namespace["add_info"], report, ui)
    except StopIteration:
        return None, True
    except BaseException as error:  # a hook's failure of any kind is recorded, never fatal
        return describe(error), False
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a hook may have closed or replaced them
                stream.flush()
    return None, False


def load(path, owners):
    """The hook's source, read through one descriptor that was checked like discovery checks the path."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PermissionError(f"{path}: not a regular file")
        if owners is not None and (st.st_uid not in owners or st.st_mode & 0o022):
            raise PermissionError(f"{path}: not owned by root, or writable by group or others")
        source = f.read(MAX_SOURCE + 1)
    if len(source) > MAX_SOURCE:
        raise ValueError(f"{path}: larger than {MAX_SOURCE >> 20} MiB")
    return source


def call_add_info(add_info, report, ui):
    """``add_info(report, ui)``, or ``add_info(report)`` when that is all it takes (apport's legacy form)."""
    code = getattr(add_info, "__code__", None)
    if code is not None:
        positional = code.co_argcount - (1 if getattr(add_info, "__self__", None) is not None else 0)
        two = positional >= 2 or bool(code.co_flags & 0x04)  # CO_VARARGS
    else:
        import inspect

        try:
            inspect.signature(add_info).bind(report, None)
            two = True
        except TypeError:
            two = False
    if two:
        add_info(report, ui)
    else:
        add_info(report)


def describe(error):
    """The traceback from the hook's own frames down, as apport stores it in ``HookError_<name>``."""
    try:
        import traceback

        tb = error.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        return "".join(traceback.format_exception(type(error), error, tb))
    except MemoryError:
        return f"{type(error).__name__} (no traceback: out of memory)\n"
