"""apport.report.Report as hooks use it: the ``add_*_info`` collectors, titles, signatures, nested hooks.

The methods follow apport 2.36's documented results (field names, value
formats, ``None`` where apport gives none). Debugger-, network- and
crash-database-related methods (``add_gdb_info``, ``search_bug_patterns``,
``anonymize`` …) are not hook API and are not provided.

Past ~400 lines on purpose: it mirrors apport.report.Report, whose names hooks import;
one apport module, one file.
"""

import contextlib
import glob
import grp
import os
import pwd
import re
import signal
import traceback

import problem_report

import apport.fileutils
from apport import packaging
from apport.hook_ui import NoninteractiveHookUI

_data_dir = os.environ.get("APPORT_DATA_DIR", "/usr/share/apport")
GENERAL_HOOK_DIR = f"{_data_dir}/general-hooks/"
PACKAGE_HOOK_DIR = f"{_data_dir}/package-hooks/"
_OPT_DIR = "/opt"
_SAFE_ENVIRON = {
    "SHELL", "TERM", "LANGUAGE", "LANG", "LC_CTYPE", "LC_COLLATE", "LC_TIME", "LC_NUMERIC", "LC_MONETARY",
    "LC_MESSAGES", "LC_PAPER", "LC_NAME", "LC_ADDRESS", "LC_TELEPHONE", "LC_MEASUREMENT",
    "LC_IDENTIFICATION", "LOCPATH", "PATH", "XDG_RUNTIME_DIR", "LD_LIBRARY_PATH", "LD_PRELOAD",
}  # fmt: skip


def _transitive_dependencies(package, found):
    try:
        packaging.get_version(package)
    except ValueError:
        return
    for dependency in packaging.get_dependencies(package):
        if dependency not in found:
            found.add(dependency)
            _transitive_dependencies(dependency, found)


def _run_hook(report, ui, hook):
    """Run one hook file as apport does: True if it raised StopIteration, errors into ``HookError_<name>``."""
    if not os.path.exists(hook):
        return False
    namespace = {}
    try:
        with open(hook, encoding="utf-8") as f:
            exec(compile(f.read(), hook, "exec"), namespace)
        try:
            namespace["add_info"](report, ui)
        except TypeError as error:
            if not str(error).startswith("add_info()"):
                raise
            namespace["add_info"](report)
    except StopIteration:
        return True
    except Exception:  # a hook's failure is recorded, never fatal
        name = os.path.splitext(os.path.basename(hook))[0].replace("-", "_")
        report["HookError_" + name] = traceback.format_exc().strip()
        apport.logging.error("hook %s crashed:", hook)
    return False


def _read_proc(pid, name):
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read(8 << 20).decode("UTF-8", errors="replace")


class Report(problem_report.ProblemReport):
    """An apport problem report (a crash, a bug, a package failure)."""

    def __init__(self, problem_type="Crash", date=None):
        super().__init__(problem_type, date)
        self.pid = None

    # -- packages ---------------------------------------------------------

    @staticmethod
    def _customized_package_suffix(package):
        suffix = ""
        modified = packaging.get_modified_files(package)
        if modified:
            suffix += f" [modified: {' '.join(modified)}]"
        try:
            if not packaging.is_distro_package(package):
                origin = packaging.get_package_origin(package)
                suffix += f" [origin: {origin or 'unknown'}]"
        except ValueError:
            pass
        return suffix

    def add_package(self, package):
        """``Package: name version`` (``(not installed)`` if it is not); the version or None."""
        try:
            version = packaging.get_version(package)
        except ValueError:
            version = None
        self["Package"] = (
            f"{package} {version or '(not installed)'}{self._customized_package_suffix(package)}"
        )
        return version

    def add_package_info(self, package=None):
        """``Package``, ``SourcePackage``, ``PackageArchitecture``, ``Dependencies`` (of ExecutablePath's)."""
        if not package:
            if "ExecutablePath" not in self and self["ProblemType"] == "KernelCrash":
                package = self["Package"]
            else:
                package = apport.fileutils.find_file_package(self["ExecutablePath"])
            if not package:
                return
        version = self.add_package(package)
        if version or "SourcePackage" not in self:
            with contextlib.suppress(ValueError):  # none for some third-party packages
                self["SourcePackage"] = packaging.get_source(package)
        if not version:
            return
        if "PackageArchitecture" not in self:
            self["PackageArchitecture"] = packaging.get_architecture(package)
        if "Dependencies" not in self:
            found = set()
            _transitive_dependencies(package, found)
            packaging.prefetch(found)
            lines = []
            for dependency in sorted(found):
                try:
                    dep_version = packaging.get_version(dependency)
                except ValueError:
                    continue
                lines.append(f"{dependency} {dep_version}{self._customized_package_suffix(dependency)}")
            self["Dependencies"] = "\n".join(lines)

    def obsolete_packages(self):
        obsolete = []
        for line in (self.get("Package", "") + "\n" + self.get("Dependencies", "")).splitlines():
            if not line:
                continue
            package, version = line.split()[:2]
            available = packaging.get_available_version(package)
            if (
                version not in (None, "None")
                and available
                and packaging.compare_versions(version, available) < 0
            ):
                obsolete.append(package)
        return obsolete

    # -- system, user, process ------------------------------------------------

    def add_os_info(self):
        """``DistroRelease``, ``Uname``, ``Architecture`` (those missing)."""
        if "DistroRelease" not in self:
            name, version = packaging.get_os_version()
            self["DistroRelease"] = f"{name} {version}"
        if "Uname" not in self:
            u = os.uname()
            self["Uname"] = f"{u.sysname} {u.release} {u.machine}"
        if "Architecture" not in self:
            self["Architecture"] = packaging.get_system_architecture()

    def add_user_info(self):
        """``UserGroups``: the system groups (gid ≤ SYS_GID_MAX) the effective user is in, or ``N/A``."""
        try:
            user = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            return
        limit = apport.fileutils.get_sys_gid_max()
        groups = sorted(g.gr_name for g in grp.getgrall() if user in g.gr_mem and g.gr_gid <= limit)
        self["UserGroups"] = " ".join(groups) if groups else "N/A"

    def add_proc_environ(self, pid=None, extraenv=None, proc_pid_fd=None):
        """``ProcEnviron``: the process's harmless environment variables (paths of $HOME hidden)."""
        pid = pid or os.getpid()
        try:
            raw = _read_proc(pid, "environ")
        except OSError as error:
            self["ProcEnviron"] = f"Error: {error}"
            return
        wanted = _SAFE_ENVIRON | set(extraenv or ())
        lines = []
        for entry in raw.split("\0"):
            name, sep, value = entry.partition("=")
            if not sep or name not in wanted:
                continue
            if name in ("LD_LIBRARY_PATH", "LD_PRELOAD", "XDG_RUNTIME_DIR"):
                value = "<set>"
            elif name == "PATH" and value not in (
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ):
                value = "(custom, no user)" if os.path.expanduser("~") not in value else "(custom, user)"
            lines.append(f"{name}={value}")
        self["ProcEnviron"] = "\n".join(sorted(lines))
        desktop = dict(e.partition("=")[::2] for e in raw.split("\0") if "=" in e).get("XDG_CURRENT_DESKTOP")
        if desktop:
            self["CurrentDesktop"] = desktop

    def add_proc_info(self, pid=None, proc_pid_fd=None, extraenv=None):
        """``ProcStatus``, ``ProcCmdline``, ``ProcMaps``, ``ProcCwd``, ``ProcEnviron``, ``ExecutablePath``, …

        ValueError("invalid process") for a pid that does not exist,
        ValueError("not accessible") for one this user may not read.
        """
        pid = pid or self.pid or os.getpid()
        self.pid = self.pid or pid
        if not os.path.isdir(f"/proc/{pid}"):
            raise ValueError("invalid process")
        with contextlib.suppress(OSError):
            self["ProcCwd"] = os.readlink(f"/proc/{pid}/cwd")
        self.add_proc_environ(pid=pid, extraenv=extraenv)
        try:
            self["ProcStatus"] = _read_proc(pid, "status")
            cmdline = _read_proc(pid, "cmdline").rstrip("\0")
            self["ProcMaps"] = _read_proc(pid, "maps")
            if "ExecutablePath" not in self:
                self["ExecutablePath"] = os.readlink(f"/proc/{pid}/exe")
        except PermissionError as error:
            raise ValueError("not accessible") from error
        except FileNotFoundError as error:
            raise ValueError("invalid process") from error
        if not os.path.exists(self["ExecutablePath"]):
            raise ValueError(f"{self['ExecutablePath']} does not exist")
        try:
            self["ExecutableTimestamp"] = str(int(os.stat(self["ExecutablePath"]).st_mtime))
        except FileNotFoundError:
            self["ExecutableTimestamp"] = f"Error: Executable '{self['ExecutablePath']}' not found"
        self["ProcCmdline"] = cmdline.replace("\\", "\\\\").replace(" ", "\\ ").replace("\0", " ")

    def get_executable_timestamp(self):
        try:
            return int(os.stat(self["ExecutablePath"]).st_mtime)
        except (KeyError, OSError):
            return None

    # -- hooks --------------------------------------------------------------

    def add_hooks_info(self, ui=None, package=None, srcpackage=None):
        """Run apport's general hooks and the hooks of *package*/*srcpackage* on this report (apport's dirs).

        True if a hook asked to stop (StopIteration). A ``/`` in a package
        name sets ``UnreportableReason`` and runs nothing.
        """
        ui = ui or NoninteractiveHookUI()
        package = (package or self.get("Package") or "").split()[:1]
        srcpackage = (srcpackage or self.get("SourcePackage") or "").split()[:1]
        for kind, name in (("Package", package), ("SourcePackage", srcpackage)):
            if name and "/" in name[0]:
                self["UnreportableReason"] = f"invalid {kind}: {name[0]}"
                return False
        dirs = [PACKAGE_HOOK_DIR]
        opt_path = os.path.realpath(self.get("ExecutablePath", ""))
        opt_path = opt_path if opt_path.startswith(_OPT_DIR) else None
        while opt_path and len(opt_path) >= len(_OPT_DIR):
            dirs.append(os.path.join(opt_path, "share", "apport", "package-hooks"))
            opt_path = os.path.dirname(opt_path)
        hooks = sorted(glob.glob(GENERAL_HOOK_DIR + "/*.py"))
        hooks += [os.path.join(d, f"{package[0]}.py") for d in dirs] if package else []
        hooks += [os.path.join(d, f"source_{srcpackage[0]}.py") for d in dirs] if srcpackage else []
        stop = any(_run_hook(self, ui, hook) for hook in hooks)
        self.pop("_HooksRun", None)
        return stop

    # -- titles and signatures -------------------------------------------------

    def stacktrace_top_function(self):
        for line in self.get("StacktraceTop", "").splitlines():
            name = line.split("(")[0].strip()
            if name != "??":
                return name
        return None

    def _signal_name(self):
        try:
            return signal.Signals(int(self.get("Signal", ""))).name
        except ValueError:
            return f"signal {self.get('Signal')}"

    def _python_title(self):
        trace = self["Traceback"].splitlines()
        executable = os.path.basename(self["ExecutablePath"])
        if not trace:
            return None
        if len(trace) < 3:
            return f"{executable} crashed with {trace[0]}"
        module_path, function = None, "unknown"
        for line in reversed(trace):
            m = re.match(r'^\s*File\s*"(\S+)".* in (.+)$', line)
            if m:
                module_path, function = m.groups()
                break
        exception = trace[-1].split(":")[0]
        m = re.match(f"^{re.escape(exception)}: (.+)$", trace[-1])
        if function == "<module>":
            context = "__main__" if module_path == self["ExecutablePath"] else module_path
        else:
            context = f"{function}()"
        return f"{executable} crashed with {exception} in {context}" + (f": {m.group(1)}" if m else "")

    def standard_title(self):
        """A crash database title, as apport makes it; None if the report is not one apport titles."""
        if self.get("Signal") == "6" and "ExecutablePath" in self and "AssertionMessage" in self:
            return f"{os.path.basename(self['ExecutablePath'])} assert failure: {self['AssertionMessage']}"
        if "Signal" in self and "ExecutablePath" in self and "StacktraceTop" in self:
            function = self.stacktrace_top_function()
            where = f" in {function}()" if function else ""
            mismatch = ""
            arch, pkg_arch = self.get("Architecture"), self.get("PackageArchitecture")
            if arch and pkg_arch and arch != pkg_arch and pkg_arch != "all":
                mismatch = f" [non-native {pkg_arch} package]"
            executable = os.path.basename(self["ExecutablePath"])
            return f"{executable} crashed with {self._signal_name()}{where}{mismatch}"
        if "Traceback" in self and "ExecutablePath" in self:
            return self._python_title()
        if self.get("ProblemType") == "Package" and "Package" in self:
            title = f"package {self['Package']} failed to install/upgrade"
            if self.get("ErrorMessage"):
                title += ": " + self["ErrorMessage"].splitlines()[-1]
            return title
        if self.get("ProblemType") == "KernelOops" and "OopsText" in self:
            oops = self["OopsText"]
            if oops.startswith("------------[ cut here ]------------"):
                return oops.split("\n", 2)[1]
            return oops.split("\n", 1)[0]
        if self.get("ProblemType") == "KernelOops" and "Failure" in self:
            title = f"[{self['MachineType']}] " if "MachineType" in self else ""
            title += self["Failure"] + " failure"
            if "NonfreeKernelModules" in self:
                title += f" [non-free: {self['NonfreeKernelModules']}]"
            return title + "\n"
        return None

    def crash_signature(self):
        """apport's duplicate signature: ``ExecutablePath:Signal:fn:fn…``, ``…:Exception:fn…``."""
        if "ExecutablePath" not in self and self["ProblemType"] not in {"KernelCrash", "KernelOops"}:
            return None
        if "Stacktrace" in self and self["ProblemType"] == "KernelCrash":
            names = re.findall(r"^\s*#\d+\s\[\w+\]\s(\w+)", self["Stacktrace"], re.MULTILINE)
            return ":".join(["kernel", *names])
        if self.get("Signal") == "6" and "AssertionMessage" in self:
            return re.sub(r"0x[0-9a-f]{6,}", "ADDR", self["ExecutablePath"] + ":" + self["AssertionMessage"])
        if "StacktraceTop" in self and "Signal" in self:
            return self._signal_signature()
        if "Traceback" in self:
            return self._python_signature()
        failure = self.get("Failure", "") if self["ProblemType"] == "KernelOops" else ""
        if "suspend" in failure or "resume" in failure:
            parts = [self["Failure"], self.get("MachineType"), self.get("dmi.bios.version")]
            return ":".join(p for p in parts if p)
        if "OopsText" in self:
            return self._oops_signature()
        return None

    def _signal_signature(self):
        lines = self["StacktraceTop"].splitlines()
        if len(lines) < 2:
            return None
        names = []
        for line in lines:
            m = re.match(r"^(?:([\w:~]+).*|(<signal handler called>)\s*)$", line)
            if not m:
                return None
            names.append(m.group(1) or m.group(2))
        return ":".join([self["ExecutablePath"], self["Signal"], *names])

    def _python_signature(self):
        trace = self["Traceback"].splitlines()
        if len(trace) == 1:
            m = re.match(r"(\w+): ", trace[0])
            return self["ExecutablePath"] + ":" + m.group(1) if m else None
        if len(trace) < 3:
            return None
        parts = []
        for line in trace:
            m = re.match(r'^\s+File "([^"]+).*line (\d+).*\sin (.*)$', line)
            if m:
                path = os.path.realpath(m.group(1)) if os.path.islink(m.group(1)) else m.group(1)
                parts.append(m.group(3) if m.group(3) != "<module>" else f"{path}@{m.group(2)}")
        exception = trace[-1].split(":")[0]
        if "_PythonExceptionQualifier" in self:
            exception += f"({self['_PythonExceptionQualifier']})"
        return ":".join([self["ExecutablePath"], exception, *parts])

    def _oops_signature(self):
        parts, in_trace = [], False
        for line in self["OopsText"].split("\n"):
            if line.startswith("BUG: unable to handle"):
                m = re.search("^BUG: unable to handle (.*) at ", line)
                if m:
                    parts.append(m.group(1))
            if line.startswith("IP: "):
                found = _function_and_address(line)
                parts += [found] if found else []
            elif line.startswith("Call Trace:"):
                in_trace = True
            elif in_trace:
                found = _function_and_address(line) if line[:1] == " " else None
                in_trace = line[:1] == " "
                parts += [found] if found else []
        return ":".join(parts) or None


def _function_and_address(line):
    m = re.search(r"\[([0-9a-f]+)\] ([a-zA-Z0-9_]+)\+0x[0-9a-f]+/0x[0-9a-f]+", line)
    return f"{m.group(2)}" if m else None
