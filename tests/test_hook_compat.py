"""Package hooks written for apport behave as under apport 2.36 (issue 12): the conformance suite.

The hooks in ``tests/hooks/`` are crashd's own, each exercising one family of
apport's hook API; they run through the real hook path (``run_hooks``: a child
under ``/usr/bin/python3``, as a throwaway user) and the test checks the keys
and values apport's documented behaviour gives, on an installed package
(``coreutils``) and on one that does not exist. Where no real apport is
importable (this machine), the hooks get crashd's compatibility layer, which
the report says in ``_HooksRunWith``; a venv of the system Python holding a
stand-in "real" apport checks the other branch.
"""

from __future__ import annotations

import datetime
import os
import platform
import pwd
import re
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crashd.hooks import HookResult, HookRoots, run_hooks

pytestmark = pytest.mark.skipif(not shutil.which("dpkg-query"), reason="the conformance suite is for dpkg systems")

HOOKS = Path(__file__).with_name("hooks")
INSTALLED, MISSING = "coreutils", "crashd-no-such-package"

# Every public name of apport 2.36's apport/hookutils.py (canonical/apport, tag 2.36.0), read from its
# source: the functions and constants it defines, and the modules and names it imports, which
# ``from apport.hookutils import *`` hands to hooks as well.
APPORT_236_HOOKUTILS_FUNCTIONS = (
    "anonymized_udevdb", "attach_alsa", "attach_alsa_old", "attach_conffiles", "attach_default_grub",
    "attach_dmesg", "attach_dmi", "attach_drm_info", "attach_file", "attach_file_if_exists",
    "attach_gconf", "attach_gsettings_package", "attach_gsettings_schema", "attach_hardware",
    "attach_journal_errors", "attach_mac_events", "attach_network", "attach_printing",
    "attach_related_packages", "attach_root_command_outputs", "attach_upstart_logs",
    "attach_upstart_overrides", "attach_wifi", "command_available", "command_output",
    "execute_multiple_root_commands", "files_in_package", "in_session_of_problem", "kill_pkttyagent",
    "links_with_shared_library", "nonfree_kernel_modules", "package_versions", "path_to_key",
    "pci_devices", "read_file", "recent_syslog", "root_command_output", "shared_libraries", "usb_devices",
    "xsession_errors",
)
APPORT_236_HOOKUTILS_CONSTANTS = (
    "PCI_BASE_SYSTEM_PERIPHERALS", "PCI_BRIDGE", "PCI_DISPLAY", "PCI_DOCKING_STATIONS",
    "PCI_INPUT_DEVICES", "PCI_MASS_STORAGE", "PCI_MEMORY", "PCI_MULTIMEDIA", "PCI_NETWORK",
    "PCI_PROCESSORS", "PCI_SERIAL_BUS", "PCI_SIMPLE_COMMUNICATIONS",
)
APPORT_236_HOOKUTILS_IMPORTS = (
    "Iterable", "Mapping", "ProblemReport", "apport", "base64", "datetime", "glob", "os", "packaging",
    "re", "select", "shutil", "stat", "subprocess", "sys", "tempfile", "warnings",
)


@pytest.fixture(scope="module")
def user(make_user: Callable[[], pwd.struct_passwd]) -> pwd.struct_passwd:
    return make_user()


@pytest.fixture(scope="module")
def reachable() -> Iterator[Path]:
    """A root-owned scratch directory (0711) the hook user can reach, directly under /tmp."""
    path = Path(tempfile.mkdtemp(prefix="crashd-test-compat-", dir="/tmp"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def roots(reachable: Path) -> HookRoots:
    """Our hooks, as root-owned 0644 package hooks (``compat-*.py`` runs for ``Package: compat_*``)."""
    package = reachable / "package"
    package.mkdir(mode=0o755)
    for hook in HOOKS.glob("compat-*.py"):
        target = package / hook.name
        shutil.copyfile(hook, target)
        target.chmod(0o644)
    return HookRoots(general=(), package=(package,), opt=None)


def run_compat_hook(
    name: str, user: pwd.struct_passwd, roots: HookRoots, python: str = "/usr/bin/python3"
) -> HookResult:
    fields = {
        "ProblemType": "Crash",
        "Date": "Thu Dec  3 10:00:00 2026",
        "ExecutablePath": "/usr/bin/true",
        "Package": f"{name} 1.0",
        "Installed": INSTALLED,
        "Missing": MISSING,
    }
    result = run_hooks(fields, owner_uid=user.pw_uid, roots=roots, python=python, timeout=120)
    assert result.ran and not result.skipped, result.skipped
    return result


def dpkg(*args: str) -> str:
    return subprocess.run(["dpkg-query", *args], capture_output=True, text=True, check=True, timeout=60).stdout


@pytest.fixture(scope="module")
def names(user: pwd.struct_passwd, roots: HookRoots) -> HookResult:
    return run_compat_hook("compat-names", user, roots)


def test_every_public_name_of_apport_236_hookutils_is_exported(names: HookResult) -> None:
    assert names.errors == {}
    exported = set(names.fields["StarNames"].split())
    callables = set(names.fields["Callables"].split())
    assert not set(APPORT_236_HOOKUTILS_FUNCTIONS) - callables, "functions of apport's hookutils missing"
    assert not set(APPORT_236_HOOKUTILS_CONSTANTS) - exported, "constants of apport's hookutils missing"
    assert not set(APPORT_236_HOOKUTILS_IMPORTS) - exported, "names apport's star import hands out missing"


def test_the_report_says_the_hooks_got_crashds_compatibility_layer(names: HookResult) -> None:
    assert names.fields["_HooksRunWith"] == "crashd-compat 1"


@pytest.fixture(scope="module")
def packaging_result(user: pwd.struct_passwd, roots: HookRoots) -> dict[str, str | bytes]:
    result = run_compat_hook("compat-packaging", user, roots)
    assert result.errors == {}
    return result.fields


def test_packaging_on_an_installed_package(packaging_result: dict[str, str | bytes]) -> None:
    fields = packaging_result
    assert fields["Installed.Version"] == repr(dpkg("-W", "-f", "${Version}", INSTALLED))
    assert fields["Installed.Source"] == repr(INSTALLED)
    assert fields["Installed.Architecture"] == repr(dpkg("-W", "-f", "${Architecture}", INSTALLED))
    depends = dpkg("-W", "-f", "${Depends},${Pre-Depends},${Recommends}", INSTALLED)
    first = [g.split("|")[0].split()[0].split(":")[0] for g in depends.split(",") if g.strip()]
    assert sorted(eval(fields["Installed.Dependencies"])) == sorted(first)
    assert isinstance(eval(fields["Installed.ModifiedConffiles"]), dict)
    assert fields["Installed.IsDistro"] in ("True", "False")
    files = eval(fields["Installed.Files"])
    assert "/usr/share/doc/coreutils/copyright" in files and "/." in files


def test_packaging_on_an_unknown_package_raises_apports_errors(packaging_result: dict[str, str | bytes]) -> None:
    fields = packaging_result
    does_not_exist = f"ValueError: package {MISSING} does not exist"
    for name in ("Version", "Source", "Architecture", "Dependencies", "IsDistro", "Origin"):
        assert fields[f"Missing.{name}"] == does_not_exist, name
    assert fields["Missing.ModifiedConffiles"] == "{}"  # apport: dpkg-query fails, nothing modified
    assert fields["Missing.Files"] == "ValueError: package does not exist"


def test_file_package_is_merged_usr_aware(packaging_result: dict[str, str | bytes]) -> None:
    fields = packaging_result
    assert fields["FilePackage.usr.bin.bash"] == fields["FilePackage.bin.bash"] == "'bash'"
    assert fields["FilePackage.bin.ls"] == fields["FilePackage.usr.bin.ls"] == "'coreutils'"
    assert fields["FilePackage.nonexistent.crashd-x"] == "None"


def test_system_queries_and_version_order(packaging_result: dict[str, str | bytes]) -> None:
    fields = packaging_result
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout
    assert fields["SystemArchitecture"] == arch.strip()
    assert fields["KernelPackage"] == f"linux-image-{platform.release()}"
    assert fields["LibraryPaths"].split(":")[2:] == ["/lib", "/usr/lib"]
    assert fields["Compare"] == "0 -1 1 1 -1 -1 1"  # what dpkg --compare-versions says of each pair
    for pair, expected in zip(
        ("1.0 1.1", "1:0.9 2.0", "1.0~rc1 1.0", "1.0-1 1.0-1ubuntu1", "2.0a 2.0"),
        ("-1", "1", "-1", "-1", "1"),
        strict=True,
    ):
        ver1, ver2 = pair.split()
        lower = subprocess.run(["dpkg", "--compare-versions", ver1, "lt", ver2], check=False).returncode == 0
        assert lower == (expected == "-1"), pair


@pytest.fixture(scope="module")
def hookutils_result(user: pwd.struct_passwd, roots: HookRoots) -> dict[str, str | bytes]:
    result = run_compat_hook("compat-hookutils", user, roots)
    assert result.errors == {}, result.errors
    return result.fields


def test_hookutils_attach_nothing_for_an_unknown_package(hookutils_result: dict[str, str | bytes]) -> None:
    fields = hookutils_result
    version = dpkg("-W", "-f", "${Version}", INSTALLED)
    width = len(MISSING)
    assert fields["Versions"] == f"{INSTALLED:<{width}} {version}\n{MISSING} N/A"
    assert fields["RelatedPackageVersions"] == fields["Versions"]
    conffiles = [k for k in fields if k.startswith(("modified.conffile.", "mtime.conffile."))]
    assert all(MISSING not in k for k in conffiles)
    for key in (k for k in conffiles if k.startswith("mtime.")):  # apport 2.36: local time with its offset
        assert re.search(r"[+-]\d\d:\d\d$", str(fields[key])), fields[key]
    assert fields["modified.conffile..etc.hostname"] == "[modified]"  # nobody answered "include it?"
    stamp = datetime.datetime.fromisoformat(str(fields["mtime.conffile..etc.hostname"]))
    assert stamp.tzinfo is not None and abs(stamp.timestamp() - os.stat("/etc/hostname").st_mtime) < 0.001
    assert fields["GsettingsMissing"] == "ValueError: package does not exist"
    assert "GsettingsChanges" not in fields  # coreutils ships no schemas


def test_hookutils_missing_files_and_commands(hookutils_result: dict[str, str | bytes]) -> None:
    fields = hookutils_result
    assert fields["InPackage"] in ("/bin/ls", "/usr/bin/ls")
    assert fields["Missing.Command"] == "Error: [Errno 2] No such file or directory: 'crashd-no-such-command'"
    assert fields["Missing.Available"] == "False"
    assert fields["Echo"] == "hi"
    assert "MissingFile" not in fields
    assert fields["ReadMissing"] == "Error: [Errno 2] No such file or directory: '/nonexistent/crashd-file'"
    assert fields["RootShell"] == "{'Said': 'said'}"  # a command without output is left out, as in apport
    assert fields["RootOut"] == "out"
    assert fields["Udev"] == "E: ID_FS_LABEL=<hidden>\nS: disk/by-label/<hidden>\n"
    assert fields["Grep"] == ""
    assert fields["Session"] == "None"
    assert fields["Nonfree"] == "<class 'list'>"


def test_hardware_attachments_add_apports_keys(user: pwd.struct_passwd, roots: HookRoots) -> None:
    result = run_compat_hook("compat-hardware", user, roots)
    assert result.errors == {}, result.errors
    keys = {k[len("Keys.") :]: set(str(v).split()) for k, v in result.fields.items() if k.startswith("Keys.")}
    alsa = {"AudioDevicesInUse", "CurrentDmesg"}
    if not Path("/usr/sbin/alsa-info").exists() and not Path("/usr/share/alsa-base/alsa-info.sh").exists():
        alsa |= {"AlsaDevices", "AplayDevices", "ArecordDevices", "PciMultimedia", "ProcCpuinfo"}
    if Path("/usr/bin/pacmd").exists():
        alsa.add("PulseList")
    if Path("/usr/bin/pa-info").exists():
        alsa.add("PaInfo")
    assert alsa <= keys["Alsa"]
    assert {"WifiSyslog", "RfKill", "CRDA"} <= keys["Wifi"]
    assert {"Locale", "Lpstat", "PrintingPackages"} <= keys["Printing"]
    assert re.search(r"^cups +\S+", str(result.fields["PrintingPackages"]), re.MULTILINE)
    assert {"IpRoute", "IpAddr", "PciNetwork"} <= keys["Network"]
    hardware = {"ProcInterrupts", "ProcKernelCmdLine", "Lsusb", "Lsusb-v", "Lsusb-t", "ProcModules", "UdevDb"}
    assert hardware | {"acpidump"} <= keys["Hardware"]
    assert "ProcCmdline" in keys["Mac"]
    assert (Path("/run/systemd/system").exists()) == ("JournalErrors" in keys["Journal"])
    assert (Path("/etc/default/grub").exists()) == ("etc.default.grub" in keys["Grub"])
    if not Path("/sys/class/drm").is_dir():
        assert keys["Drm"] == set()


def test_report_hook_ui_fileutils_problem_report(user: pwd.struct_passwd, roots: HookRoots) -> None:
    result = run_compat_hook("compat-report", user, roots)
    assert result.errors == {}, result.errors
    fields = result.fields
    assert fields["IsReport"] == fields["IsProblemReport"] == "True"
    assert fields["UiType"] == "NoninteractiveHookUI"
    assert fields["UiAnswers"] == "[None, None, None, None]" and fields["HookUi"] == "None"
    assert fields["StarApport"] == "True"
    assert fields["Fresh"] == "Date ProblemType"
    version = dpkg("-W", "-f", "${Version}", INSTALLED)
    assert fields["Installed.Package"] == f"{INSTALLED} {version}"
    assert fields["Installed.SourcePackage"] == INSTALLED
    dependencies = str(fields["Installed.Dependencies"]).splitlines()
    assert any(line.startswith("libc6 ") for line in dependencies)
    assert fields["Missing.Package"] == f"{MISSING} (not installed)"
    assert fields["Missing.SourcePackage"] == "<none>"
    assert fields["Os"] == "Architecture DistroRelease Uname UserGroups"
    assert {"ProcStatus", "ProcCmdline", "ProcMaps", "ProcEnviron", "ExecutablePath"} <= set(
        str(fields["Proc"]).split()
    )
    assert fields["Signature"] == "/usr/bin/foo:11:f:g:main"
    assert fields["Title"] == "foo crashed with SIGSEGV in f()"
    assert fields["PySignature"] == "/usr/bin/tool:KeyError:/usr/bin/tool@3:main"
    assert fields["PyTitle"] == "tool crashed with KeyError in main(): 'k'"
    assert fields["NoHooks"] == "False"
    assert fields["Compressed"] == "zipped" and fields["Zipped"] == b"\x00zipped"
    assert fields["Likely"] == "[True, False]"
    assert fields["FindFile"] == "'bash'"
    assert fields["Libc"] == "(True, True)"
    assert fields["NoLibs"] == "{}"
    assert fields["UiVersion"] == "2.36.0"
    assert fields["Tags"] == "compat"
    assert str(fields["Where"]).endswith("crashd/hooks/compat")


# --- where the real apport is importable, hooks get it ---------------------------------------------------

FAKE_APPORT = {
    "__init__.py": "Report = None\n",
    "ui.py": '__version__ = "2.99.1"\n',
    "hook_ui.py": "class NoninteractiveHookUI:\n    def yesno(self, text):\n        return None\n",
    "report.py": """
        from collections import UserDict
        class Report(UserDict):
            def __init__(self, problem_type="Crash", date=None):
                super().__init__({"ProblemType": problem_type, "Date": date or "now"})
            def real(self):
                return "yes"
    """,
}


@pytest.fixture
def python_with_apport(reachable: Path) -> Iterator[str]:
    """A venv of the system Python whose site-packages holds a stand-in for an installed apport 2.99.1."""
    venv = Path(tempfile.mkdtemp(prefix="venv-", dir=reachable))
    venv.chmod(0o755)
    version = subprocess.run(
        ["/usr/bin/python3", "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (venv / "bin").mkdir()
    (venv / "bin" / "python3").symlink_to(os.path.realpath("/usr/bin/python3"))
    (venv / "pyvenv.cfg").write_text(f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {version}\n")
    package = venv / "lib" / f"python{version}" / "site-packages" / "apport"
    package.mkdir(parents=True)
    for name, text in FAKE_APPORT.items():
        (package / name).write_text(textwrap.dedent(text))
    for path in [venv, *venv.rglob("*")]:
        if not path.is_symlink():  # chmod follows a symbolic link: never touch the system's python3
            path.chmod(0o755 if path.is_dir() else 0o644)
    try:
        yield str(venv / "bin" / "python3")
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def test_the_real_apport_wins_where_it_is_importable(
    user: pwd.struct_passwd, reachable: Path, python_with_apport: str
) -> None:
    hooks = reachable / "real"
    hooks.mkdir(mode=0o755, exist_ok=True)
    hook = hooks / "realpkg.py"
    hook.write_text(
        "import apport\ndef add_info(report, ui):\n"
        "    report['From'] = apport.__file__\n    report['Real'] = report.real()\n"
        "    report['Ui'] = type(ui).__name__\n"
    )
    hook.chmod(0o644)
    roots = HookRoots(general=(), package=(hooks,), opt=None)
    fields = {"ProblemType": "Crash", "ExecutablePath": "/usr/bin/true", "Package": "realpkg 1"}
    result = run_hooks(fields, owner_uid=user.pw_uid, roots=roots, python=python_with_apport)
    assert result.errors == {}, result.errors
    assert result.fields["_HooksRunWith"] == "apport 2.99.1"
    assert "site-packages/apport/" in str(result.fields["From"])
    assert result.fields["Real"] == "yes"  # the report is an instance of that apport's Report
    assert result.fields["Ui"] == "NoninteractiveHookUI"


def test_no_hook_to_run_imports_no_apport(user: pwd.struct_passwd, reachable: Path) -> None:
    """No hook applies: nothing ran and no apport was loaded, so the report says nothing of one.

    (crashd's own fields are added in its own process, not by hooks: tests/test_enrich.py.)"""
    empty = reachable / "empty"
    empty.mkdir(mode=0o755, exist_ok=True)
    roots = HookRoots(general=(empty,), package=(empty,), opt=None)
    fields = {"ProblemType": "Crash", "ExecutablePath": "/usr/bin/true", "Package": "coreutils 9.1"}
    result = run_hooks(fields, owner_uid=user.pw_uid, roots=roots)
    assert result.ran == [] and result.errors == {}
    assert "_HooksRunWith" not in result.fields
