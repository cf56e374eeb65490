"""apport.fileutils, the read-only parts hooks use: which package owns a file, linked libraries, reports.

Functions that change the report directory (``mark_report_seen``,
``delete_report``, ``make_report_file`` …) are crashd's own business and are not
provided: a hook calling one gets AttributeError, never a changed spool.
"""

import configparser
import glob
import os
import subprocess

from apport import _run, packaging

report_dir = os.environ.get("APPORT_REPORT_DIR", "/var/crash")
core_dir = os.environ.get("APPORT_COREDUMP_DIR", "/var/lib/apport/coredump")
_CONFIG_FILE = "/etc/default/apport"


def allowed_to_report():
    """Whether crash reporting is enabled (crashd decides that before hooks run): always True here."""
    return True


def find_package_desktopfile(package):
    """The package's only visible .desktop file in applications or autostart, else None."""
    if package is None:
        return None
    found = None
    for line in packaging.get_files(package):
        if not line.endswith(".desktop"):
            continue
        if not line.startswith(("/etc/xdg/autostart", "/usr/share/applications/")):
            continue
        if found:
            return None
        try:
            with open(line, "rb") as f:
                if b"NoDisplay=true" not in f.read(1 << 20):
                    found = line
        except FileNotFoundError:
            continue
    return found


def likely_packaged(file):
    """False when *file* is certainly not from a package (outside the directories packages use)."""
    allowed = ("/bin/", "/boot", "/etc/", "/initrd", "/lib", "/sbin/", "/opt", "/usr/", "/var")
    return file.startswith(allowed) and not file.startswith(("/usr/local/", "/var/lib/"))


def find_file_package(file):
    """The package shipping *file* (its directory's symbolic links resolved), or None."""
    directory, name = os.path.split(file)
    resolved = os.path.realpath(directory)
    if os.path.isdir(resolved):
        file = os.path.join(resolved, name)
    if not likely_packaged(file):
        return None
    return packaging.get_file_package(file)


def seen_report(report):
    st = os.stat(report)
    return st.st_atime > st.st_mtime or st.st_size == 0


def get_all_reports():
    reports = []
    for path in glob.glob(os.path.join(report_dir, "*.crash")):
        try:
            if os.path.getsize(path) > 0 and os.access(path, os.R_OK):
                reports.append(path)
        except OSError:
            pass
    return reports


def get_new_reports():
    return [r for r in get_all_reports() if not _quiet(seen_report, r, True)]


def _quiet(function, argument, default):
    try:
        return function(argument)
    except OSError:
        return default


def get_login_defs():
    values = {}
    try:
        with open("/etc/login.defs", encoding="utf-8") as f:
            for line in f:
                words = line.split()
                if len(words) >= 2 and not words[0].startswith("#"):
                    values[words[0]] = words[1]
    except OSError:
        pass
    return values


def get_sys_gid_max():
    return int(get_login_defs().get("SYS_GID_MAX", 999))


def get_sys_uid_max():
    return int(get_login_defs().get("SYS_UID_MAX", 999))


def get_recent_crashes(report):
    """``CrashCounter`` of an open report file (binary), 0 if it is old or absent."""
    import time

    import problem_report

    fields = {}
    for raw in report:
        line = raw.decode("UTF-8", errors="replace")
        for key in ("CrashCounter", "Date"):
            if line.startswith(key + ": "):
                fields[key] = line.split(": ", 1)[1].strip()
    if "CrashCounter" not in fields:
        return 0
    stamp = problem_report.ProblemReport(date=fields.get("Date", "")).get_timestamp()
    if stamp is None or time.time() - stamp > 24 * 3600:
        return 0
    return int(fields["CrashCounter"])


def get_config(section, setting, default=None, path=None, boolean=False):
    """A value of apport's configuration file (``~/.config/apport/settings`` style), or *default*."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path or os.path.expanduser("~/.config/apport/settings"), encoding="utf-8")
        return parser.getboolean(section, setting) if boolean else parser.get(section, setting)
    except (configparser.Error, ValueError):
        return default


def get_starttime(contents):
    """The start time (field 22) from the contents of /proc/<pid>/stat."""
    return int(contents.rsplit(")", 1)[1].split()[19])


def get_uid_and_gid(contents):
    """(real uid, real gid) from the contents of /proc/<pid>/status."""
    uid = gid = None
    for line in contents.splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
        elif line.startswith("Gid:"):
            gid = int(line.split()[1])
    return uid, gid


def get_boot_id():
    with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as f:
        return f.read().strip()


def shared_libraries(path):
    """name → path of the libraries ``ldd`` says *path* links with (linux-vdso left out); {} if ldd fails."""
    status, output, _ = _run.run(["ldd", path], stderr=subprocess.STDOUT)
    if status != 0:
        return {}
    libs = {}
    for line in output.decode("UTF-8", errors="replace").splitlines():
        name, sep, rest = line.partition("=>")
        if not sep or "linux-vdso" in name:
            continue
        words = rest.split()
        if words and not words[0].startswith("("):
            libs[name.strip()] = words[0]
    return libs


def links_with_shared_library(path, lib):
    """Whether *path* links with *lib* (``libfoo`` or ``libfoo.so.N``)."""
    libs = shared_libraries(path)
    return lib in libs or any(name.startswith(f"{lib}.so.") for name in libs)
