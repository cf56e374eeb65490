"""Realistic ~3 KB Crash reports, the benchmark inputs of issue 15: "spec" and "deps".

"spec" is what apport's crash handler writes before any hook has run (the built-in hooks
still have work to do: no ``Dependencies``); "deps" already carries what the built-in hooks
add, with ``_HooksRun: yes``. Deterministic for a given index, so every benchmark that
uses them sends the same bytes; ``Date`` and the first ``StacktraceTop`` frame vary with *index*,
so that daisy never sees a repeat within one run (add an offset between runs) and crashd's duplicate
collapse, which keys on the signature, keeps every report.
"""

from __future__ import annotations

import time
from pathlib import Path

from crashd.report import write_report

_FRAMES = [
    ("g_main_context_dispatch", "../../../glib/gmain.c", 3476),
    ("g_main_context_iterate_unlocked", "../../../glib/gmain.c", 4284),
    ("g_main_loop_run", "../../../glib/gmain.c", 4479),
    ("gtk_main", "../../../gtk/gtkmain.c", 1329),
    ("g_signal_emit_valist", "../../../gobject/gsignal.c", 3565),
    ("g_signal_emit", "../../../gobject/gsignal.c", 3629),
    ("g_object_unref", "../../../gobject/gobject.c", 4127),
    ("editor_document_save_async", "../src/editor-document.c", 1984),
    ("on_save_clicked", "../src/editor-window-actions.c", 212),
    ("__libc_start_call_main", "../sysdeps/nptl/libc_start_call_main.h", 58),
]

_DEPENDENCIES = [
    ("adwaita-icon-theme", "46.0-1"), ("libc6", "2.39-0ubuntu8.3"), ("libglib2.0-0t64", "2.80.0-6ubuntu3.1"),
    ("libgtk-4-1", "4.14.2+ds-1ubuntu1"), ("libadwaita-1-0", "1.5.0-1ubuntu2"), ("libcairo2", "1.18.0-3build1"),
    ("libpango-1.0-0", "1.52.1+ds-1build1"), ("libgtksourceview-5-0", "5.12.0-1build1"),
    ("libstdc++6", "14-20240412-0ubuntu1"), ("libgcc-s1", "14-20240412-0ubuntu1"),
    ("libffi8", "3.4.6-1build1"), ("libpcre2-8-0", "10.42-4ubuntu2"), ("zlib1g", "1:1.3.dfsg-3.1ubuntu2"),
    ("libmount1", "2.39.3-9ubuntu6.1"), ("libselinux1", "3.5-2ubuntu2"), ("libenchant-2-2", "2.3.3-2build2"),
]  # fmt: skip


def _stacktrace() -> str:
    """A 30-frame gdb-style Stacktrace, one line a frame."""
    lines = []
    for n in range(30):
        function, source, line = _FRAMES[n % len(_FRAMES)]
        lines.append(f"#{n}  0x00007f3a{0x1c2d3000 + n * 0x1f4:08x} in {function} () at {source}:{line}")
    return "\n".join(lines)


def _stacktrace_top(index: int) -> str:
    """Five frames, the first named after *index*: every report has its own signature, so duplicate
    collapse (:mod:`crashd.tidy`) sends each one instead of one per burst."""
    frames = [f"editor_crash_site_{index} () from /usr/lib/gnome-text-editor/libeditor.so"]
    frames += [f"{f} () from /usr/lib/x86_64-linux-gnu/libglib-2.0.so.0" for f, _, _ in _FRAMES[:4]]
    return "\n".join(frames)


def spec_report(index: int) -> dict[str, str]:
    """A Crash report as apport's crash handler writes it, before hooks: about 3 KB."""
    date = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(1_700_000_000 + index))
    return {
        "ProblemType": "Crash",
        "Architecture": "amd64",
        "Date": date,
        "DistroRelease": "Ubuntu 24.04",
        "ExecutablePath": "/usr/bin/gnome-text-editor",
        "Package": "gnome-text-editor 46.3-0ubuntu2",
        "ProcCmdline": "/usr/bin/gnome-text-editor --gapplication-service",
        "ProcEnviron": "LANG=en_US.UTF-8\nPATH=(custom, no user)\nSHELL=/bin/bash\nTERM=xterm-256color\n"
        "XDG_RUNTIME_DIR=<set>",
        "Signal": "11",
        "SourcePackage": "gnome-text-editor",
        "StacktraceTop": _stacktrace_top(index),
        "Stacktrace": _stacktrace(),
        "Title": "gnome-text-editor crashed with SIGSEGV in g_main_context_dispatch()",
        "Uname": "Linux 6.8.0-51-generic x86_64",
        "UserGroups": "adm cdrom dip lpadmin plugdev sambashare sudo users",
    }


def deps_report(index: int) -> dict[str, str]:
    """The same report after the built-in hooks: Dependencies and their other keys, ``_HooksRun: yes``."""
    fields = spec_report(index)
    fields.update(
        {
            "Dependencies": "\n".join(f"{name} {version}" for name, version in _DEPENDENCIES),
            "ExecutableTimestamp": "1712345678",
            "PackageArchitecture": "amd64",
            "ProcCwd": "/home/user",
            "ApportVersion": "2.28.1-0ubuntu3.1",
            "CurrentDesktop": "ubuntu:GNOME",
            "_HooksRun": "yes",
        }
    )
    return fields


def write_reports(directory: Path, kind: str, count: int, offset: int = 0) -> list[Path]:
    """*count* "spec" or "deps" reports in *directory* as ``_usr_bin_app<N>.1000.crash``."""
    make = {"spec": spec_report, "deps": deps_report}[kind]
    paths = []
    for i in range(offset, offset + count):
        path = directory / f"_usr_bin_{kind}{i:05d}.1000.crash"
        with path.open("wb") as f:
            write_report(f, make(i))
        paths.append(path)
    return paths
