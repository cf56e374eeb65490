"""apport's ``hookutils`` as hooks use them (``research/apport.md`` §4.4), small and bounded.

Same names, arguments and results as apport 2.28+, so ``from apport.hookutils
import *`` hooks run unchanged; what differs is containment:

* files are read like apport's hardened ``read_file`` (CVE-2021-32547…32555,
  CVE-2021-3710): no ``../``, no symbolic link anywhere in the path, regular
  files only, opened non-blocking — and at most ``MAX_FILE`` bytes;
* commands run from an argv list (never a shell) with a timeout and an output
  cap (``_run``);
* nothing needs root or prompts: hooks run unprivileged and unattended, so
  ``root_command_output`` answers with an explanation, and the root-only
  attachments (``attach_root_command_outputs``, the dmesg and audit parts of
  ``attach_mac_events``) attach what an unprivileged user may read.
"""

import datetime
import glob
import os
import re
import stat
import subprocess

from apport import _run, packaging

MAX_FILE = 5 << 20  # bytes of one attached file
_INVALID_KEY_CHARS = re.compile(r"[^0-9a-zA-Z_.-]")
ROOT_ONLY = "Error: {} needs root; crashd runs hooks unprivileged and never asks for a password"

PCI_MASS_STORAGE, PCI_NETWORK, PCI_DISPLAY, PCI_MULTIMEDIA = 0x01, 0x02, 0x03, 0x04
PCI_MEMORY, PCI_BRIDGE, PCI_SIMPLE_COMMUNICATIONS, PCI_BASE_SYSTEM_PERIPHERALS = 0x05, 0x06, 0x07, 0x08
PCI_INPUT_DEVICES, PCI_DOCKING_STATIONS, PCI_PROCESSORS, PCI_SERIAL_BUS = 0x09, 0x0A, 0x0B, 0x0C


def path_to_key(path):
    """A valid report key from a file path (space → ``_``, other invalid characters → ``.``)."""
    if isinstance(path, bytes):
        path = path.decode("UTF-8")
    return _INVALID_KEY_CHARS.sub(".", path.replace(" ", "_"))


def read_file(path, force_unicode=False):
    """The file's contents (str if UTF-8 or *force_unicode*, else bytes), or ``"Error: …"``."""
    if "../" in path:
        return "Error: invalid path."
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        return f"Error: {error}"
    with os.fdopen(fd, "rb") as f:
        try:
            st = os.fstat(fd)
            real = os.path.realpath(path)
            if path != real or os.stat(real).st_ino != st.st_ino:
                return "Error: path contained symlinks."
            if not stat.S_ISREG(st.st_mode):
                return "Error: path was not a regular file."
            contents = f.read(MAX_FILE).strip()
        except OSError as error:
            return f"Error: {error}"
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
    return any(
        os.path.isfile(os.path.join(d, command)) and os.access(os.path.join(d, command), os.X_OK)
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d
    )


def command_output(command, input=None, stderr=subprocess.STDOUT, keep_locale=False, decode_utf8=True):
    """The command's stripped output, or ``"Error: command … failed with exit code N: …"``."""
    env = dict(os.environ)
    if not keep_locale:
        env["LC_MESSAGES"] = "C"
    if stderr == subprocess.PIPE:
        stderr = subprocess.DEVNULL  # only stdout is returned; an unread pipe could only block
    try:
        argv = [command] if isinstance(command, str) else list(command)  # a str is one program, as in apport
        status, output, problem = _run.run(argv, input=input, stderr=stderr, env=env)
    except OSError as error:
        return f"Error: {error}"
    if status == 0:
        result = output.strip()
    else:
        why = problem or f"failed with exit code {status}"
        result = f"Error: command {command} {why}: ".encode() + output
    return result.decode("UTF-8", errors="replace") if decode_utf8 else result


def root_command_output(command, input=None, stderr=subprocess.STDOUT, decode_utf8=True):
    if os.getuid() == 0:  # never in crashd's hook child; kept for hooks run elsewhere
        return command_output(command, input, stderr, keep_locale=True, decode_utf8=decode_utf8)
    result = ROOT_ONLY.format(command)
    return result if decode_utf8 else result.encode()


def execute_multiple_root_commands(command_map):
    return {}


def attach_root_command_outputs(report, command_map):
    """Attaches nothing: these are shell commands meant for root, and hooks here are neither."""


def kill_pkttyagent():
    pass


def attach_dmesg(report):
    if not report.get("CurrentDmesg", "").strip():
        report["CurrentDmesg"] = command_output(["dmesg"])


def attach_dmi(report):
    dmi = "/sys/class/dmi/id"
    for name in sorted(os.listdir(dmi)) if os.path.isdir(dmi) else []:
        path = os.path.realpath(f"{dmi}/{name}")
        try:
            st = os.stat(path)
        except OSError:
            continue
        # World-readable regular files only: the root-only ones hold serial numbers.
        if name in ("subsystem", "uevent") or not stat.S_ISREG(st.st_mode) or not st.st_mode & 4:
            continue
        value = read_file(path)
        if value and not (isinstance(value, str) and value.startswith("Error:")):
            report[f"dmi.{name.replace('_', '.')}"] = value
    if "dmi.sys.vendor" in report and "dmi.product.name" in report:
        report["MachineType"] = f"{report['dmi.sys.vendor']} {report['dmi.product.name']}"


def attach_hardware(report):
    attach_dmesg(report)
    attach_file(report, "/proc/interrupts", "ProcInterrupts")
    attach_file(report, "/proc/cpuinfo", "ProcCpuinfo")
    attach_file(report, "/proc/cmdline", "ProcKernelCmdLine")
    if os.path.exists("/sys/bus/pci"):
        report["Lspci"] = command_output(["lspci", "-vvnn"])
        report["Lspci-vt"] = command_output(["lspci", "-vt"])
    report["Lsusb"] = command_output(["lsusb"])
    report["Lsusb-v"] = command_output(["lsusb", "-v"])
    report["Lsusb-t"] = command_output(["lsusb", "-t"])
    report["ProcModules"] = command_output(["sort", "/proc/modules"])
    udev = command_output(["udevadm", "info", "--export-db"])
    udev = re.sub("ID_FS_LABEL=(.*)", "ID_FS_LABEL=<hidden>", udev)
    udev = re.sub("ID_FS_LABEL_ENC=(.*)", "ID_FS_LABEL_ENC=<hidden>", udev)
    report["UdevDb"] = re.sub("by-label/(.*)", "by-label/<hidden>", udev)
    attach_dmi(report)


def attach_alsa(report):
    for script in ("/usr/sbin/alsa-info", "/usr/share/alsa-base/alsa-info.sh"):
        if os.path.exists(script):
            report["AlsaInfo"] = command_output([script, "--stdout", "--no-upload"])
            break
    else:
        attach_file_if_exists(report, "/proc/asound/version", "AlsaVersion")
        report["AlsaDevices"] = command_output(["ls", "-l", "/dev/snd/"])
        report["AplayDevices"] = command_output(["aplay", "-l"])
        report["ArecordDevices"] = command_output(["arecord", "-l"])
    devices = glob.glob("/dev/dsp*") + glob.glob("/dev/snd/*") + glob.glob("/dev/seq*")
    report["AudioDevicesInUse"] = command_output(["fuser", "-v", *devices])
    attach_dmi(report)
    attach_dmesg(report)


def recent_syslog(pattern, path=None, *, journald_only_system=True):
    """Lines of this boot's journal (or syslog, or *path*) matching the compiled regex *pattern*."""
    if path:
        command = ["tail", "-n", "10000", path]
    elif os.path.exists("/run/systemd/system"):
        command = ["journalctl", "--quiet", "-b", "-a", "--lines=10000"]
        if journald_only_system:
            command.append("--system")
    elif os.access("/var/log/syslog", os.R_OK):
        command = ["tail", "-n", "10000", "/var/log/syslog"]
    else:
        return ""
    status, output, _ = _run.run(command, stderr=subprocess.DEVNULL)
    if status != 0:
        return ""
    lines = output.decode("UTF-8", errors="replace").splitlines(keepends=True)
    return "".join(line for line in lines if pattern.search(line))


def attach_journal_errors(report, time_window=10):
    if not os.path.exists("/run/systemd/system"):
        return
    when = report.get_timestamp() if hasattr(report, "get_timestamp") else None
    args = (
        [f"--since=@{when - time_window}", f"--until=@{when + time_window}"]
        if when
        else ["-b", "--lines=1000"]
    )
    report["JournalErrors"] = command_output(["journalctl", "--priority=warning", *args])


def attach_mac_events(report, profiles=None):
    """AppArmor/SELinux kernel messages the hook user may read, ``ProcVersionSignature``, ``ProcCmdline``."""
    if isinstance(profiles, str):
        profiles = [profiles]
    mac_re = re.compile(r"(?:audit\(|apparmor|selinux|security).*", re.IGNORECASE)
    if "KernLog" not in report:
        status, output, _ = _run.run(["dmesg"], stderr=subprocess.DEVNULL)
        if status == 0:  # dmesg is root-only where kernel.dmesg_restrict=1: then nothing is attached
            report["KernLog"] = "\n".join(mac_re.findall(output.decode("UTF-8", errors="replace")))
    attach_file_if_exists(report, "/proc/version_signature", "ProcVersionSignature")
    attach_file(report, "/proc/cmdline", "ProcCmdline")
    logs = "\n".join(str(report.get(key, "")) for key in ("KernLog", "AuditLog"))
    for match in re.findall(r'apparmor="DENIED".+?profile=([^ ]+?)[ ]', logs, re.IGNORECASE):
        profile = match.strip('"')
        if not profiles or any(re.match(f"^{wanted}$", profile) for wanted in profiles):
            report.add_tags(["apparmor"])
            break


def attach_network(report):
    report["IpRoute"] = command_output(["ip", "route"])
    report["IpAddr"] = command_output(["ip", "addr"])
    report["PciNetwork"] = pci_devices(PCI_NETWORK)
    attach_file_if_exists(report, "/etc/network/interfaces", key="IfupdownConfig")


def attach_conffiles(report, package, conffiles=None, ui=None):
    """``modified.conffile.<key>`` for changed or deleted conffiles; contents only if *ui* says yes."""
    for path, contents in packaging.get_modified_conffiles(package).items():
        if conffiles and path not in conffiles:
            continue
        key = path_to_key(path)
        if contents == "[deleted]" or contents.startswith("[inaccessible"):
            report[f"modified.conffile.{key}"] = contents
            continue
        answer = ui.yesno(f'It seems you have modified the contents of "{path}". Include it?') if ui else None
        report[f"modified.conffile.{key}"] = contents if answer else "[modified]"
        mtime = datetime.datetime.fromtimestamp(os.stat(path).st_mtime)
        report[f"mtime.conffile.{key}"] = mtime.isoformat()


def package_versions(*packages):
    """An aligned "name version" table; ``N/A`` for packages (or globs) that are not installed."""
    versions = []
    for pattern in filter(None, packages):
        names = packaging.package_name_glob(pattern)
        if not names:
            versions.append((pattern, "N/A"))
        for name in names:
            try:
                versions.append((name, packaging.get_version(name) or "N/A"))
            except ValueError:
                versions.append((name, "N/A"))
    if not versions:
        return ""
    width = max(len(name) for name, _ in versions)
    return "\n".join(f"{name:<{width}s} {version}" for name, version in versions)


def attach_related_packages(report, packages):
    report["RelatedPackageVersions"] = package_versions(*packages)


def files_in_package(package, globpat=None):
    import fnmatch

    files = packaging.get_files(package)
    return [f for f in files if fnmatch.fnmatch(f, globpat)] if globpat else files


def pci_devices(*pci_classes):
    if not pci_classes:
        return command_output(["lspci", "-vvnn"])
    result = []
    for paragraph in command_output(["lspci", "-vvmmnn"]).split("\n\n"):
        fields = dict(line.split(":", 1) for line in paragraph.splitlines() if ":" in line)
        try:
            pci_class = int(fields.get("Class", "").strip()[-5:-1], 16) >> 8
        except ValueError:
            continue
        slot = fields.get("Slot", "").strip()
        if slot and pci_class in pci_classes:
            result.append(command_output(["lspci", "-vvnns", slot]).strip())
    return "\n\n".join(result)


def usb_devices():
    return command_output(["lsusb", "-v"])


def nonfree_kernel_modules(module_list="/proc/modules"):
    try:
        with open(module_list, encoding="utf-8") as f:
            modules = [line.split()[0] for line in f if line.strip()]
    except OSError:
        return []
    nonfree = []
    for module in modules:
        status, output, _ = _run.run(["/sbin/modinfo", "-F", "license", module], stderr=subprocess.DEVNULL)
        text = output.decode("UTF-8", errors="replace") if status == 0 else ""
        if text and not any(free in text for free in ("GPL", "BSD", "MPL", "MIT")):
            nonfree.append(module)
    return nonfree


def xsession_errors(pattern=None):
    return ""  # the session's log belongs to the desktop session, which hooks here do not run in


def in_session_of_problem(report):
    return None  # "cannot be determined": hooks run outside the user's session


def attach_default_grub(report, key=None):
    contents = read_file("/etc/default/grub")
    if isinstance(contents, str) and not contents.startswith("Error:"):
        lines = contents.splitlines(keepends=True)
        hidden = [
            "### PASSWORD LINE REMOVED ###\n" if line.startswith("password") else line for line in lines
        ]
        report[key or path_to_key("/etc/default/grub")] = "".join(hidden)


def attach_gconf(report, package):
    pass  # obsolete in apport too


def attach_upstart_overrides(report, package):
    pass  # obsolete in apport too


def attach_upstart_logs(report, package):
    pass  # obsolete in apport too
