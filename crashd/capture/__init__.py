"""Capture: turning crashes into reports without apport (issue 7).

* :mod:`crashd.capture.coredump` — one systemd-coredump journal entry → a report
  (``crashd ingest-coredump``; started by ``crashd-coredump@.service``).
* :mod:`crashd.capture.excepthook` — an uncaught Python exception → a report, plus
  the crash-directory helpers both writers share (standard library only, so the
  hook works in any interpreter that can import crashd).

This file is imported by ``crashd-excepthook.pth`` at *every* interpreter start-up,
so it holds only :func:`install_excepthook` and imports nothing but ``sys``: the
writer is imported when an exception actually reaches the top.
"""

import sys  # no `from __future__ import annotations`: one module less at every start-up

__all__ = ["install_excepthook"]


def install_excepthook() -> None:
    """Chain crashd's hook in front of the current ``sys.excepthook``; cheap and idempotent.

    Why lazily: the ``.pth`` runs in every Python process on the system, so the
    start-up cost must stay near zero (goal < 1 ms) — nothing here reads a file
    or imports a module.  ``CRASHD_EXCEPTHOOK=0`` in the environment opts out,
    except in a privileged process (setuid, setgid or root), which trusts no
    environment variable (DESIGN.md §7 rule 7).
    """
    import os  # already in sys.modules during site processing: free

    if getattr(sys.excepthook, "_crashd", False):
        return
    unprivileged = os.getuid() == os.geteuid() != 0 and os.getgid() == os.getegid()
    if os.environ.get("CRASHD_EXCEPTHOOK") == "0" and unprivileged:
        return
    previous = sys.excepthook

    def crashd_excepthook(exc_type: type[BaseException], exc: BaseException, tb: object) -> None:
        try:
            # Interactive sessions and ^C / a closed pipe are not crashes (apport skips them too).
            interactive = hasattr(sys, "ps1") or sys.flags.interactive or sys.flags.inspect
            if not interactive and not issubclass(exc_type, (KeyboardInterrupt, BrokenPipeError)):
                from crashd.capture.excepthook import report_exception

                report_exception(exc_type, exc, tb)  # type: ignore[arg-type]
        except BaseException:
            pass  # a failing reporter must never hide the traceback or change the exit status
        finally:
            previous(exc_type, exc, tb)  # type: ignore[arg-type]  # the user still sees the traceback

    crashd_excepthook._crashd = True  # type: ignore[attr-defined]
    sys.excepthook = crashd_excepthook
