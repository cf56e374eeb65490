"""crashd's system hook: ``Architecture``, ``DistroRelease``, ``Uname`` and ``ExecutableTimestamp``.

apport's ``add_os_info`` fields daisy keys reports by, for reports written
without them (a systemd-coredump capture, a language hook). Only missing fields
are filled. ``ExecutableTimestamp`` is the executable's mtime now, which is the
crash-time value unless the program was upgraded since.
"""

import contextlib
import os

import crashd_process  # crashd/process.py, loaded by the hook child (its docstring says why)


def add_info(report, ui=None):
    if "Architecture" not in report:
        architecture = _dpkg_architecture()
        if architecture:
            report["Architecture"] = architecture
    if "DistroRelease" not in report:
        release = _distro_release()
        if release:
            report["DistroRelease"] = release
    if "Uname" not in report:
        uname = os.uname()
        report["Uname"] = f"{uname.sysname} {uname.release} {uname.machine}"
    executable = report.get("ExecutablePath")
    if "ExecutableTimestamp" not in report and isinstance(executable, str) and executable.startswith("/"):
        with contextlib.suppress(OSError):
            report["ExecutableTimestamp"] = str(int(os.stat(executable).st_mtime))


def _dpkg_architecture():
    try:
        done = crashd_process.run(["dpkg", "--print-architecture"], timeout=10)
    except OSError:
        return None
    return None if done.problem else done.output.decode("ascii", "replace").strip() or None


def _distro_release():
    """``Ubuntu 24.04``, ``Debian 12``: os-release's NAME (without " GNU/Linux") and VERSION_ID, as apport."""
    values = {}
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            with open(path, encoding="utf-8") as f:
                for line in f.read(65536).splitlines():
                    key, sep, value = line.partition("=")
                    if sep:
                        values[key.strip()] = value.strip().strip("\"'")
            break
        except OSError:
            continue
    name = values.get("NAME", "").replace(" GNU/Linux", "").strip()
    return f"{name} {values.get('VERSION_ID', '')}".strip() or None
