"""The hardware, audio, network and printing parts of apport 2.36's ``hookutils`` (re-exported there).

Same keys and values as apport's functions; commands that are missing give
apport's ``"Error: …"`` values, files that are missing are not attached.
"""

import base64
import glob
import os
import re
import stat
import subprocess

from apport import _run
from apport import hookutils as _h

__all__ = [
    "PCI_BASE_SYSTEM_PERIPHERALS",
    "PCI_BRIDGE",
    "PCI_DISPLAY",
    "PCI_DOCKING_STATIONS",
    "PCI_INPUT_DEVICES",
    "PCI_MASS_STORAGE",
    "PCI_MEMORY",
    "PCI_MULTIMEDIA",
    "PCI_NETWORK",
    "PCI_PROCESSORS",
    "PCI_SERIAL_BUS",
    "PCI_SIMPLE_COMMUNICATIONS",
    "anonymized_udevdb",
    "attach_alsa",
    "attach_alsa_old",
    "attach_dmesg",
    "attach_dmi",
    "attach_drm_info",
    "attach_hardware",
    "attach_network",
    "attach_printing",
    "attach_wifi",
    "nonfree_kernel_modules",
    "pci_devices",
    "usb_devices",
]

PCI_MASS_STORAGE = 0x01
PCI_NETWORK = 0x02
PCI_DISPLAY = 0x03
PCI_MULTIMEDIA = 0x04
PCI_MEMORY = 0x05
PCI_BRIDGE = 0x06
PCI_SIMPLE_COMMUNICATIONS = 0x07
PCI_BASE_SYSTEM_PERIPHERALS = 0x08
PCI_INPUT_DEVICES = 0x09
PCI_DOCKING_STATIONS = 0x0A
PCI_PROCESSORS = 0x0B
PCI_SERIAL_BUS = 0x0C

PRINTING_PACKAGES = (  # the order apport lists them in
    "foo2zjs", "foomatic-db", "foomatic-db-engine", "foomatic-db-gutenprint", "foomatic-db-hpijs",
    "foomatic-filters", "foomatic-gui", "hpijs", "hplip", "m2300w", "min12xxw", "c2050", "hpoj",
    "pxljr", "pnm2ppa", "splix", "hp-ppd", "hpijs-ppds", "linuxprinting.org-ppds",
    "openprinting-ppds", "openprinting-ppds-extra", "ghostscript", "cups", "cups-driver-gutenprint",
    "foomatic-db-gutenprint", "ijsgutenprint", "cupsys-driver-gutenprint", "gimp-gutenprint",
    "gutenprint-doc", "gutenprint-locales", "system-config-printer-common", "kdeprint",
)


def attach_dmesg(report):
    """``CurrentDmesg``, unless a non-empty one is there already."""
    if not report.get("CurrentDmesg", "").strip():
        report["CurrentDmesg"] = _h.root_command_output(["dmesg"])


def attach_dmi(report):
    """``dmi.*`` from the world-readable files of /sys/class/dmi/id, and ``MachineType``."""
    dmi_dir = "/sys/class/dmi/id"
    if os.path.isdir(dmi_dir):
        for name in os.listdir(dmi_dir):
            if name in {"subsystem", "uevent"}:
                continue
            path = os.path.realpath(f"{dmi_dir}/{name}")
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_mode & 4 == 0:  # root-only ones hold serial numbers
                continue
            value = _h.read_file(path)
            if value:
                report[f"dmi.{name.replace('_', '.')}"] = value
    if "dmi.sys.vendor" in report and "dmi.product.name" in report:
        report["MachineType"] = f"{report['dmi.sys.vendor']} {report['dmi.product.name']}"


def anonymized_udevdb(udevdb):
    """``udevadm info -e`` output with file system labels hidden."""
    udevdb = re.sub(r"ID_FS_LABEL=(.*)", "ID_FS_LABEL=<hidden>", udevdb)
    udevdb = re.sub(r"ID_FS_LABEL_ENC=(.*)", "ID_FS_LABEL_ENC=<hidden>", udevdb)
    return re.sub(r"by-label/[^ /\n]*", "by-label/<hidden>", udevdb)


def attach_hardware(report):
    out = _h.command_output
    attach_dmesg(report)
    _h.attach_file(report, "/proc/interrupts", "ProcInterrupts")
    _h.attach_file(report, "/proc/cpuinfo", "ProcCpuinfo")
    _h.attach_file(report, "/proc/cmdline", "ProcKernelCmdLine")
    if os.path.exists("/sys/bus/pci"):
        report["Lspci"] = out(["lspci", "-vvnn"])
        report["Lspci-vt"] = out(["lspci", "-vt"])
    report["Lsusb"] = out(["lsusb"])
    report["Lsusb-v"] = out(["lsusb", "-v"])
    report["Lsusb-t"] = out(["lsusb", "-t"])
    report["ProcModules"] = out(["sort", "/proc/modules"])
    report["UdevDb"] = anonymized_udevdb(out(["udevadm", "info", "--export-db"]))
    report["acpidump"] = _h.root_command_output(["/usr/share/apport/dump_acpi_tables.py"])
    attach_dmi(report)
    if _h.command_available("prtconf"):
        report["Prtconf"] = out(["prtconf"])
    if _h.command_available("pccardctl"):
        for what, key in (("status", "PccardctlStatus"), ("ident", "PccardctlIdent")):
            value = out(["pccardctl", what]).strip()
            if value:
                report[key] = value


def attach_alsa_old(report):
    """What alsa-info would tell, gathered piecewise: for systems without alsa-info."""
    out = _h.command_output
    _h.attach_file_if_exists(report, os.path.expanduser("~/.asoundrc"), "UserAsoundrc")
    _h.attach_file_if_exists(report, os.path.expanduser("~/.asoundrc.asoundconf"), "UserAsoundrcAsoundconf")
    _h.attach_file_if_exists(report, "/etc/asound.conf")
    _h.attach_file_if_exists(report, "/proc/asound/version", "AlsaVersion")
    _h.attach_file(report, "/proc/cpuinfo", "ProcCpuinfo")
    report["AlsaDevices"] = out(["ls", "-l", "/dev/snd/"])
    report["AplayDevices"] = out(["aplay", "-l"])
    report["ArecordDevices"] = out(["arecord", "-l"])
    report["PciMultimedia"] = pci_devices(PCI_MULTIMEDIA)
    cards = []
    if os.path.exists("/proc/asound/cards"):
        with open("/proc/asound/cards", encoding="utf-8") as f:
            cards = [int(line.lstrip().split()[0]) for line in f if "]:" in line]
    for card in cards:
        report[f"Card{card}.Amixer.info"] = out(["amixer", "-c", str(card), "info"])
        report[f"Card{card}.Amixer.values"] = out(["amixer", "-c", str(card)])
        for codec_path in glob.glob(f"/proc/asound/card{card}/codec*"):
            codec = _h.path_to_key(os.path.basename(codec_path))
            if os.path.isfile(codec_path):
                _h.attach_file(report, codec_path, key=f"Card{card}.Codecs.{codec}")
            elif os.path.isdir(codec_path):
                for name in os.listdir(codec_path):
                    key = f"Card{card}.Codecs.{codec}.{_h.path_to_key(name)}"
                    _h.attach_file(report, os.path.join(codec_path, name), key)


def attach_alsa(report):
    out = _h.command_output
    if os.path.exists("/usr/sbin/alsa-info"):
        report["AlsaInfo"] = out(["/usr/sbin/alsa-info", "--stdout", "--no-upload"])
    elif os.path.exists("/usr/share/alsa-base/alsa-info.sh"):
        report["AlsaInfo"] = out(["/usr/share/alsa-base/alsa-info.sh", "--stdout", "--no-upload"])
    else:
        attach_alsa_old(report)
    devices = glob.glob("/dev/dsp*") + glob.glob("/dev/snd/*") + glob.glob("/dev/seq*")
    report["AudioDevicesInUse"] = out(["fuser", "-v", *devices])
    if os.path.exists("/usr/bin/pacmd"):
        report["PulseList"] = out(["pacmd", "list"])
    if os.path.exists("/usr/bin/pa-info"):
        report["PaInfo"] = out(["/usr/bin/pa-info"])
    attach_dmi(report)
    attach_dmesg(report)


def pci_devices(*pci_classes):
    """``lspci -vvnn``; with classes, the devices of those classes only."""
    if not pci_classes:
        return _h.command_output(["lspci", "-vvnn"])
    result = []
    for paragraph in _h.command_output(["lspci", "-vvmmnn"]).split("\n\n"):
        pci_class = slot = None
        for line in paragraph.split("\n"):
            key, sep, value = line.partition(":")
            if not sep:
                continue
            key, value = key.strip(), value.strip()
            if key == "Class":
                pci_class = (int(value[-5:-1], 16) & 0xFF00) >> 8
            elif key == "Slot":
                slot = value
        if pci_class and slot and pci_class in pci_classes:
            result.append(_h.command_output(["lspci", "-vvnns", slot]).strip())
    return "\n\n".join(result)


def usb_devices():
    return _h.command_output(["lsusb", "-v"])


def attach_network(report):
    report["IpRoute"] = _h.command_output(["ip", "route"])
    report["IpAddr"] = _h.command_output(["ip", "addr"])
    report["PciNetwork"] = pci_devices(PCI_NETWORK)
    _h.attach_file_if_exists(report, "/etc/network/interfaces", key="IfupdownConfig")
    for var in ("http_proxy", "ftp_proxy", "no_proxy"):
        if var in os.environ:
            report[var] = os.environ[var]


def attach_wifi(report):
    """``WifiSyslog``, ``RfKill``, ``CRDA``, ``IwDev<dev>Link`` (SSIDs and MAC addresses hidden)."""
    report["WifiSyslog"] = _h.recent_syslog(
        re.compile(r"(NetworkManager|modem-manager|dhclient|kernel|wpa_supplicant)(\[\d+\])?:")
    )
    report["RfKill"] = _h.command_output(["rfkill", "list"])
    if os.path.exists("/sbin/iw"):
        for device in (p.split("/")[4] for p in glob.glob("/sys/class/net/*/wireless")):
            link = re.sub("SSID: (.*)", "SSID: <hidden>", _h.command_output(["iw", "dev", device, "link"]))
            report[f"IwDev{device.capitalize()}Link"] = re.sub(
                "([0-9a-f]{2}:){5}[0-9a-f]{2}", "<hidden-mac>", link
            )
        report["CRDA"] = _h.command_output(["iw", "reg", "get"])
    else:
        report["CRDA"] = "N/A"
    _h.attach_file_if_exists(report, "/var/log/wpa_supplicant.log", key="WpaSupplicantLog")


def attach_printing(report):
    _h.attach_file_if_exists(report, "/etc/papersize", "Papersize")
    _h.attach_file_if_exists(report, "/var/log/cups/error_log", "CupsErrorLog")
    report["Locale"] = _h.command_output(["locale"])
    report["Lpstat"] = _h.command_output(["lpstat", "-v"])
    ppds = glob.glob("/etc/cups/ppd/*.ppd")
    if ppds:
        nicknames = _h.command_output(["fgrep", "-H", "*NickName", *ppds])
        report["PpdFiles"] = re.sub(r'/etc/cups/ppd/(.*).ppd:\*NickName: *"(.*)"', r"\g<1>: \g<2>", nicknames)
    report["PrintingPackages"] = _h.package_versions(*PRINTING_PACKAGES)


def _module_license(module):
    try:
        status, output, _ = _run.run(["/sbin/modinfo", module], stderr=subprocess.DEVNULL)
    except OSError:
        return None
    if status != 0:
        return "invalid"
    for line in output.decode("UTF-8", errors="replace").splitlines():
        name, sep, value = line.partition(":")
        if sep and name == "license":
            return value.strip()
    return None


def nonfree_kernel_modules(module_list="/proc/modules"):
    try:
        with open(module_list, encoding="utf-8") as f:
            modules = [line.split()[0] for line in f]
    except OSError:
        return []
    nonfree = []
    for module in modules:
        license_ = _module_license(module)
        if license_ and not any(free in license_ for free in ("GPL", "BSD", "MPL", "MIT")):
            nonfree.append(module)
    return nonfree


def _drm_connector(connector):
    info = []
    for name in os.listdir(connector):
        path = os.path.join(connector, name)
        if name == "uevent" or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            value = f.read(_h.MAX_FILE).strip()
        if name == "modes":
            value = value.replace(b"\n", b" ")
        if name == "edid":
            value, name = base64.b64encode(value), name + "-base64"
        info.append(f"{name}: {value.decode('UTF-8', errors='replace')}\n")
    return "".join(info)


def attach_drm_info(report):
    """``DRM.<connector>`` for each connector in /sys/class/drm that has an ``enabled`` file."""
    drm_dir = "/sys/class/drm"
    if not os.path.isdir(drm_dir):
        return
    for name in os.listdir(drm_dir):
        connector = os.path.join(drm_dir, name)
        if os.path.exists(os.path.join(connector, "enabled")):
            report[f"DRM.{_h.path_to_key(name)}"] = _drm_connector(connector)
