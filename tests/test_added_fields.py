"""crashd.enrich: the fields crashd adds itself, in-process, exactly as its former built-in hooks did."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import crashd
from crashd.enrich import (
    PackageInfo,
    Packages,
    SystemFacts,
    _parse_status,
    _public_stat,
    _stanza,
    added_fields,
)

STATUS = b"""\
Package: app
Status: install ok installed
Architecture: amd64
Source: app-src (1.0-1)
Version: 1.0-1+b1
Pre-Depends: libc6 (>= 2.36)
Depends: libfoo1:any (>= 1) | libbar1, missing-pkg, libc6
Recommends: helper
Description: an app
 with a long description
 Depends: not-a-field

Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9
Depends: libgcc-s1

Package: libgcc-s1
Status: hold ok installed
Architecture: amd64
Version: 12.2.0-14

Package: libfoo1
Status: install ok installed
Architecture: amd64
Version: 1.5

Package: helper
Status: deinstall ok config-files
Architecture: all
Version: 3

Package: libbar1
Status: install ok installed
Architecture: amd64
Version: 9

Package: libfoo1
Status: install ok installed
Architecture: i386
Version: 1.4

Package: dpkg
Status: install ok installed
Architecture: amd64
Version: 1.21.22
"""


def test_status_parse_keeps_installed_packages_with_apport_dependency_rules() -> None:
    packages = _parse_status(STATUS)
    assert set(packages) == {"app", "libc6", "libgcc-s1", "libfoo1", "libbar1", "dpkg"}  # helper: config only
    assert packages["app"] == PackageInfo(
        "1.0-1+b1", "app-src", "amd64", ("libc6", "libfoo1", "missing-pkg", "libc6", "helper")
    )
    assert packages["libfoo1"].version == "1.5"  # the first stanza of a name wins, as dpkg-query -W
    assert packages["libc6"].source == "libc6"  # no Source: the package is its own source


def test_the_database_is_parsed_stanza_by_stanza_with_the_answers_of_a_whole_parse() -> None:
    """Only the packages a report asks for are parsed (issue 15: the first report after a start); a name is
    the stanza's last Package: line wherever it stands, and its first installed stanza wins."""
    status = STATUS + (
        b"\nStatus: install ok installed\nPackage: late-name\nVersion: 2\n"  # Package: not first
        b"\nPackage: twice\nStatus: deinstall ok config-files\nVersion: 1\n"  # not installed, then installed
        b"\nPackage: twice\nStatus: install ok installed\nVersion: 2\n"
    )
    whole: dict[str, PackageInfo] = {}
    for stanza in status.split(b"\n\n"):
        if (parsed := _stanza(stanza)) is not None:
            whole.setdefault(*parsed)
    lazy = _parse_status(status)
    assert lazy["late-name"].version == "2" and lazy["twice"].version == "2"
    assert "helper" not in lazy and lazy.get("missing-pkg") is None
    assert dict(lazy) == whole and len(lazy) == len(whole) == 8


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"Package": "app 1.0"}, {"SourcePackage": "app-src", "PackageArchitecture": "amd64",
                                  "Dependencies": "libc6 2.36-9\nlibfoo1 1.5\nlibgcc-s1 12.2.0-14"}),
        ({"Package": "app 1.0", "SourcePackage": "mine", "Dependencies": ""}, {"PackageArchitecture": "amd64"}),
        ({"Package": "unknown 1"}, {}),
        ({"Package": "libgcc-s1 12"}, {"SourcePackage": "libgcc-s1", "PackageArchitecture": "amd64",
                                       "Dependencies": ""}),
    ],
)  # fmt: skip
def test_package_fields_fill_only_what_is_missing(tmp_path: Path, fields: dict, expected: dict) -> None:
    status = tmp_path / "status"
    status.write_bytes(STATUS)
    facts = SystemFacts(Packages(status), os_release=(tmp_path / "os-release",))
    added = added_fields({"Architecture": "x", "Uname": "y", **fields}, facts, "9.9")
    assert added == {"CrashdVersion": "9.9", **expected}


def test_the_database_is_read_again_only_when_it_changes(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_bytes(STATUS)
    packages = Packages(status)
    first = packages.installed()
    assert packages.installed() is first  # unchanged: not parsed again
    status.write_bytes(STATUS.replace(b"Version: 2.36-9", b"Version: 2.36-10"))
    os.utime(status, ns=(1, 1))
    assert packages.installed()["libc6"].version == "2.36-10"
    assert packages.native_architecture() == "amd64"
    status.unlink()
    assert packages.installed() == {} and packages.native_architecture() is None


def test_os_release_gives_name_and_version(tmp_path: Path) -> None:
    release = tmp_path / "os-release"
    release.write_text('NAME="Debian GNU/Linux"\nVERSION_ID="12"\n')
    facts = SystemFacts(Packages(tmp_path / "none"), os_release=(tmp_path / "missing", release))
    assert facts.distro_release() == "Debian 12"
    added = added_fields({}, facts, "1")
    assert added["DistroRelease"] == "Debian 12" and "Architecture" not in added
    assert added["Uname"] == f"{os.uname().sysname} {os.uname().release} {os.uname().machine}"


def test_a_path_behind_a_private_directory_is_not_looked_at(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    program = private / "program"
    program.write_text("")
    tmp_path.chmod(0o755)
    assert _public_stat(str(program)) is None  # root could stat it; the crashing user could not
    assert _public_stat("relative/path") is None and _public_stat("/a\0b") is None
    assert _public_stat("/usr/bin/env") is not None
    facts = SystemFacts(Packages(tmp_path / "none"), os_release=())
    assert "ExecutableTimestamp" not in added_fields({"ExecutablePath": str(program)}, facts, "1")


@pytest.mark.skipif(not shutil.which("dpkg-query"), reason="needs a dpkg system")
def test_on_this_system_the_fields_match_dpkg_query() -> None:
    added = added_fields(
        {"ProblemType": "Crash", "ExecutablePath": "/usr/bin/dpkg"}, SystemFacts(), crashd.__version__
    )
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "dpkg"], capture_output=True, text=True)
    assert added["Package"] == f"dpkg {version.stdout}"
    assert added["SourcePackage"] == "dpkg"
    native = subprocess.check_output(["dpkg", "--print-architecture"], text=True).strip()
    assert added["Architecture"] == added["PackageArchitecture"] == native
    assert any(line.startswith("libc6 ") for line in added["Dependencies"].splitlines())
    assert added["ExecutableTimestamp"] == str(int(os.stat("/usr/bin/dpkg").st_mtime))
    assert added["CrashdVersion"] == crashd.__version__
    unowned = added_fields({"ExecutablePath": "/usr/bin/no-such-program"}, SystemFacts(), "1")
    assert "Package" not in unowned
