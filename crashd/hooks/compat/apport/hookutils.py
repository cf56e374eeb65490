"""apport 2.36's ``hookutils``: every public function, same names, arguments, keys and values.

``from apport.hookutils import *`` exports what apport's module does, including
the modules it imports (``os``, ``re``, ``subprocess``, ``glob``, ``apport``,
``packaging``, ``ProblemReport`` …), because hooks rely on them. The hardware
and network attachments live in :mod:`apport._devices` and are re-exported here.

Behaviour is apport's, including for uninstalled packages (attach nothing),
missing files (``"Error: …"`` values where apport stores them) and missing
commands; where apport raises, this raises the same exception. What differs is
containment, never results:

* files are read like apport's hardened ``read_file`` (no ``../``, no symbolic
  link in the path, regular files only, non-blocking open), at most ``MAX_FILE``
  bytes;
* every command has a timeout and an output cap (``apport._run``);
* nothing asks for a password: ``root_command_output`` and
  ``attach_root_command_outputs`` run the commands as the hook's user, which is
  what apport does where ``pkexec`` is absent.

Past ~400 lines on purpose: it mirrors apport.hookutils, whose names hooks import;
one apport module, one file.
"""

import base64  # noqa: F401  (exported, as apport's module does)
import datetime
import glob
import os
import re
import select  # noqa: F401
import shutil
import stat
import subprocess
import sys  # noqa: F401
import tempfile
import warnings
from collections.abc import Iterable, Mapping  # noqa: F401

from problem_report import ProblemReport  # noqa: F401

import apport
import apport.fileutils
from apport import _run
from apport import packaging as packaging

MAX_FILE = 5 << 20  # bytes of one attached file
_invalid_key_chars_re = re.compile(r"[^0-9a-zA-Z_.-]")


def path_to_key(path):
    """A valid report key from a file path (space → ``_``, other invalid characters → ``.``)."""
    if isinstance(path, bytes):
        path = path.decode("UTF-8")
    return _invalid_key_chars_re.sub(".", path.replace(" ", "_"))


def read_file(path, force_unicode=False):
    """The file's contents, stripped (str if UTF-8 or *force_unicode*, else bytes), or ``"Error: …"``."""
    if "../" in path:
        return "Error: invalid path."
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        return f"Error: {error!s}"
    with os.fdopen(fd, "rb") as f:
        try:
            st = os.fstat(fd)
            real = os.path.realpath(path)
            if st.st_ino != os.stat(real).st_ino or path != real:
                return "Error: path contained symlinks."
            if not stat.S_ISREG(st.st_mode):
                return "Error: path was not a regular file."
            contents = f.read(MAX_FILE).strip()
        except OSError as error:
            return f"Error: {error!s}"
    if force_unicode:
        return contents.decode("UTF-8", errors="replace")
    try:
        return contents.decode("UTF-8")
    except UnicodeDecodeError:
        return contents


def attach_file(report, path, key=None, overwrite=True, force_unicode=False):
    key = key or path_to_key(path)
    if not overwrite:
        while key in report:
            key += "_"
    report[key] = read_file(path, force_unicode=force_unicode)


def attach_file_if_exists(report, path, key=None, overwrite=True, force_unicode=False):
    if "../" in path:  # checked before exists(): do not even disclose whether the file is there
        return
    if os.path.exists(path):
        attach_file(report, path, key or path_to_key(path), overwrite, force_unicode)


def command_available(command):
    if "PATH" not in os.environ:
        return False
    for directory in os.environ["PATH"].split(os.pathsep):
        candidate = os.path.join(directory, command)
        if directory and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return True
    return False


def command_output(command, input=None, stderr=subprocess.STDOUT, keep_locale=False, decode_utf8=True):
    """The command's stripped stdout, or ``"Error: command [...] failed with exit code N: <output>"``.

    A str *command* is one program (no shell), as in apport; a missing
    program gives ``"Error: [Errno 2] …"``.
    """
    env = os.environ.copy()
    if not keep_locale:
        env["LC_MESSAGES"] = "C"
    if stderr == subprocess.PIPE:
        stderr = subprocess.DEVNULL  # apport captures it and never returns it
    try:
        argv = [command] if isinstance(command, (str, bytes)) else list(command)
        status, output, problem = _run.run(argv, input=input, stderr=stderr, env=env)
    except OSError as error:
        return f"Error: {error!s}"
    if status == 0:
        result = output.strip()
    else:
        why = problem or f"failed with exit code {status}"
        result = f"Error: command {command!s} {why}: ".encode() + output
    return result.decode("UTF-8", errors="replace") if decode_utf8 else result


def root_command_output(command, input=None, stderr=subprocess.STDOUT, decode_utf8=True):
    """The command's output, run as the hook's user (apport without pkexec; crashd never elevates)."""
    assert isinstance(command, list), "command must be a list"
    return command_output(command, input, stderr, keep_locale=True, decode_utf8=decode_utf8)


def execute_multiple_root_commands(command_map):
    """key → output of each shell command (``/bin/sh``, as the hook's user); keys without output left out."""
    if not command_map:
        return {}
    output = {}
    workdir = tempfile.mkdtemp()
    try:
        lines = []
        for key, command in command_map.items():
            assert hasattr(command, "strip"), "command must be a string (shell command)"
            lines.append(f"{command} | cat > {os.path.join(workdir, key)}\n")
        _run.run(["/bin/sh", "-c", "".join(lines)], stderr=subprocess.DEVNULL)
        for key in command_map:
            try:
                with open(os.path.join(workdir, key), "rb") as f:
                    buf = f.read(MAX_FILE).strip()
            except OSError:
                continue
            if buf:
                try:
                    output[key] = buf.decode("UTF-8")
                except UnicodeDecodeError:
                    output[key] = buf
        return output
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def attach_root_command_outputs(report, command_map):
    for key, value in execute_multiple_root_commands(command_map).items():
        report[key] = value


def kill_pkttyagent():
    """Nothing to kill: no polkit agent is ever started for hooks here."""


def recent_syslog(pattern, path=None, *, journald_only_system=True):
    """Lines of this boot's journal (or syslog, or *path*) that the compiled regex *pattern* matches."""
    if path:
        command = ["tail", "-n", "10000", path]
    elif os.path.exists("/run/systemd/system"):
        command = ["journalctl", "--quiet", "-b", "-a"]
        if journald_only_system:
            command.append("--system")
    elif os.access("/var/log/syslog", os.R_OK):
        command = ["tail", "-n", "10000", "/var/log/syslog"]
    else:
        return ""
    return _run.matching_lines(command, pattern)


def xsession_errors(pattern=None):
    """glib/X error lines (or *pattern*'s) of ``~/.xsession-errors``; "" when there is none."""
    path = os.path.expanduser("~/.xsession-errors")
    if not os.path.exists(path) or not os.access(path, os.R_OK):
        return ""
    if not pattern:
        pattern = re.compile(
            r"^(\(.*:\d+\): \w+-(WARNING|CRITICAL|ERROR))|(Error: .*No Symbols named)"
            r"|([^ ]+\[\d+\]: ([A-Z]+):)|([^ ]-[A-Z]+ \*\*:)|(received an X Window System error)"
            r"|(^The error was \')|(^  \(Details: serial \d+ error_code)"
        )
    lines = []
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode("UTF-8", errors="replace")
            if pattern.search(line):
                lines.append(line)
    return "".join(lines)


def attach_conffiles(report, package, conffiles=None, ui=None):
    """``modified.conffile.<key>``, ``mtime.conffile.<key>`` per changed conffile; none if not installed."""
    for path, contents in packaging.get_modified_conffiles(package).items():
        if conffiles and path not in conffiles:
            continue
        key = f"modified.conffile.{path_to_key(path)}"
        if isinstance(contents, str) and (contents == "[deleted]" or contents.startswith("[inaccessible")):
            report[key] = contents
            continue
        answer = None
        if ui:
            answer = ui.yesno(
                f'It seems you have modified the contents of "{path}".  '
                "Would you like to add the contents of it to your bug report?"
            )
        report[key] = contents if answer else "[modified]"
        mtime = datetime.datetime.fromtimestamp(os.stat(path).st_mtime).astimezone()
        report[f"mtime.conffile.{path_to_key(path)}"] = mtime.isoformat()


def attach_upstart_overrides(report, package):
    warnings.warn(
        "apport.hookutils.attach_upstart_overrides() is obsolete. Upstart is dead. Please drop this call.",
        PendingDeprecationWarning,
        stacklevel=2,
    )


def attach_upstart_logs(report, package):
    warnings.warn(
        "apport.hookutils.attach_upstart_logs() is obsolete. Upstart is dead. Please drop this call.",
        PendingDeprecationWarning,
        stacklevel=2,
    )


def attach_gconf(report, package):
    """Obsolete in apport too: does nothing."""


def files_in_package(package, globpat=None):
    """The package's files (ValueError "package does not exist" when dpkg does not list it)."""
    files = packaging.get_files(package)
    return [f for f in files if glob.fnmatch.fnmatch(f, globpat)] if globpat else files


def _gsettings(schema, env=None):
    """(schema, key, value) byte triples of ``gsettings list-recursively``, as apport reads them.

    A missing ``gsettings`` raises FileNotFoundError, as apport's ``Popen`` does.
    """
    _, output, _ = _run.run(["gsettings", "list-recursively", schema], stderr=None, env=env)
    triples = []
    for line in output.splitlines(keepends=True):
        try:
            schema_name, key, value = line.split(None, 2)
        except ValueError:
            continue
        triples.append((schema_name, key, value.rstrip()))
    return triples


def attach_gsettings_schema(report, schema):
    """Append the keys of *schema* the user changed to ``GsettingsChanges``.

    The lines are formatted exactly as apport 2.36 writes them, which reads
    gsettings' output as bytes: ``b'org.foo' b'key' b'value'``.
    """
    current = report.get("GsettingsChanges", "")
    env = os.environ.copy()
    env["XDG_CONFIG_HOME"] = "/nonexisting"
    defaults = {}
    for schema_name, key, value in _gsettings(schema, env):
        defaults.setdefault(schema_name, {})[key] = value
    for schema_name, key, value in _gsettings(schema):
        if value != defaults.get(schema_name, {}).get(key, ""):
            if schema_name == b"org.gnome.shell" and key in {b"command-history", b"favorite-apps"}:
                value = "redacted by apport"
            current += f"{schema_name} {key} {value}\n"
    report["GsettingsChanges"] = current


def attach_gsettings_package(report, package):
    for schema_file in files_in_package(package, "/usr/share/glib-2.0/schemas/*.gschema.xml"):
        attach_gsettings_schema(report, os.path.basename(schema_file)[:-12])


def attach_journal_errors(report, time_window=10):
    if not os.path.exists("/run/systemd/system"):
        return
    when = report.get_timestamp()
    args = (
        [f"--since=@{when - time_window}", f"--until=@{when + time_window}"]
        if when
        else ["-b", "--lines=1000"]
    )
    report["JournalErrors"] = command_output(["journalctl", "--priority=warning", *args])


def attach_mac_events(report, profiles=None):
    """AppArmor/SELinux kernel and audit messages, ``ProcVersionSignature``, ``ProcCmdline``; tag apparmor."""
    if isinstance(profiles, str):
        profiles = [profiles]
    mac_regex = r"(?:audit\(|apparmor|selinux|security).*"
    mac_re = re.compile(mac_regex, re.IGNORECASE)
    commands = {}
    if "KernLog" not in report:
        commands["dmesg"] = "dmesg"
    if "AuditLog" not in report and os.path.exists("/var/run/auditd.pid"):
        commands["AuditLog"] = f'egrep "{mac_regex}" /var/log/audit/audit.log'
    outputs = execute_multiple_root_commands(commands)
    if "dmesg" in outputs:
        report["KernLog"] = "\n".join(re.findall(mac_re, str(outputs["dmesg"])))
    if "AuditLog" in outputs:
        report["AuditLog"] = outputs["AuditLog"]
    attach_file_if_exists(report, "/proc/version_signature", "ProcVersionSignature")
    attach_file(report, "/proc/cmdline", "ProcCmdline")
    logs = "\n".join((report.get("KernLog", ""), report.get("AuditLog", "")))
    for match in re.findall('apparmor="DENIED".+?profile=([^ ]+?)[ ]', logs, re.IGNORECASE):
        if not profiles:
            report.add_tags(["apparmor"])
            break
        try:
            profile = (
                match[1:-1] if match[0] == '"' else bytes.fromhex(match).decode("UTF-8", errors="replace")
            )
        except (IndexError, ValueError):
            continue
        if any(re.match(f"^{wanted}$", profile) for wanted in profiles):
            report.add_tags(["apparmor"])


def package_versions(*packages):
    """An aligned "name version" table; ``N/A`` for names (or globs) not installed."""
    if not packages:
        return ""
    versions = []
    for pattern in packages:
        if not pattern:
            continue
        names = packaging.package_name_glob(pattern)
        if not names:
            versions.append((pattern, "N/A"))
        for name in sorted(names):
            try:
                version = packaging.get_version(name)
            except ValueError:
                version = "N/A"
            versions.append((name, version or "N/A"))
    width = max(len(name) for name, _ in versions)  # ValueError for only-empty names, as in apport
    return "\n".join(f"{name:<{width}s} {version}" for name, version in versions)


def attach_related_packages(report, packages):
    report["RelatedPackageVersions"] = package_versions(*packages)


def in_session_of_problem(report):
    """Whether the problem happened in the running login session; None if that cannot be told."""
    session_id = os.environ.get("XDG_SESSION_ID")
    if not session_id:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if "name=systemd:" in line and line.endswith(".scope") and "/session-" in line:
                    session_id = line.split("/session-", 1)[1][:-6]
                    break
            else:
                return None
    try:
        report_time = report.get_timestamp()
    except AttributeError:
        return None
    if report_time is None:
        return None
    try:
        return os.stat(f"/run/systemd/sessions/{session_id}").st_mtime <= report_time
    except OSError:
        return None


def attach_default_grub(report, key=None):
    """``/etc/default/grub`` with its password lines replaced."""
    path = "/etc/default/grub"
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            lines = [
                line if not line.startswith("password") else "### PASSWORD LINE REMOVED ###" for line in f
            ]
        report[key or path_to_key(path)] = "".join(lines)


from apport._devices import *  # noqa: E402,F403  (hardware, audio, network, printing)

shared_libraries = apport.fileutils.shared_libraries
links_with_shared_library = apport.fileutils.links_with_shared_library
