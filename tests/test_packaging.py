"""What a distribution (and an administrator following README) relies on: the install section is what
`make system-test` runs, every dependency has a lower bound that crashd itself enforces with one clear
line, the licence, the meson options, and no path of the build machine in the tree."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import crashd
from crashd import dependencies

REPO = Path(__file__).resolve().parent.parent
DEADLINE = 120


def _commands(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _readme_install_blocks() -> list[list[str]]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Installing on a system\n", 1)[1].split("\n## ", 1)[0]
    return [[line.strip() for line in block.strip().splitlines()]
            for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_readme_install_is_exactly_what_the_system_test_runs() -> None:
    deps, install = _commands(REPO / "tests/system/deps.sh"), _commands(REPO / "tests/system/install.sh")
    assert _readme_install_blocks() == [deps, install]
    assert "systemctl enable --now crashd.path crashd.timer" in install
    assert install[:2] == ["meson setup build --prefix=/usr", "meson install -C build"]


def _pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _requirements() -> list[str]:
    project = _pyproject()
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += [r for r in extra if not r.startswith(project["name"] + "[")]
    return reqs


def test_every_dependency_has_a_lower_bound() -> None:
    unbounded = [r for r in _requirements() if ">=" not in r.split(";")[0]]
    assert unbounded == []


def test_pip_install_line_matches_pyproject_bounds() -> None:
    """README's pip line asks for the same minimums pyproject declares (and crashd enforces)."""
    pip = next(c for c in _commands(REPO / "tests/system/deps.sh") if "pip install" in c)
    asked = dict(re.findall(r"'([A-Za-z0-9_.-]+)>=([0-9.]+)'", pip))
    declared = dict(re.findall(r"^([A-Za-z0-9_.-]+)>=([0-9.]+)", r, re.M)[0] for r in _pyproject()["dependencies"])
    assert asked and all(declared[name] == minimum for name, minimum in asked.items()), (asked, declared)


def test_enforced_minimums_equal_pyproject_bounds() -> None:
    declared = dict(re.findall(r"^([A-Za-z0-9_.-]+)>=([0-9.]+)", r)[0] for r in _pyproject()["dependencies"])
    assert {dist: minimum for dist, minimum in dependencies.MINIMUMS.values()} == declared


def _fake_old_dbus_fast(root: Path) -> Path:
    """Debian bookworm's python3-dbus-fast as crashd sees it: version 1.84.2, no dbus_fast.annotations."""
    package = root / "dbus_fast"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("class Message:\n    pass\n")
    info = root / "dbus_fast-1.84.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dbus-fast\nVersion: 1.84.2\n")
    return root


@pytest.mark.parametrize("argv", [["daemon"], ["prefs", "set", "ReportCrashes", "on"]])
def test_too_old_dependency_is_one_line_and_exit_2(tmp_path: Path, argv: list[str]) -> None:
    old = _fake_old_dbus_fast(tmp_path / "site")
    crash_dir, state = tmp_path / "crash", tmp_path / "state"
    crash_dir.mkdir()
    state.mkdir()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{old}{os.pathsep}{REPO}"}
    done = subprocess.run([sys.executable, "-m", "crashd", *argv, "--crash-dir", str(crash_dir), "--state-dir",
                           str(state)] if argv == ["daemon"] else [sys.executable, "-m", "crashd", *argv],
                          capture_output=True, text=True, env=env, timeout=DEADLINE, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("crashd: dbus-fast 1.84.2 is too old or broken: crashd needs dbus-fast >= 4.0")


def test_an_unrelated_import_error_keeps_its_traceback() -> None:
    assert dependencies.explain(ImportError("no", name="crashd.nothing")) is None


def test_service_is_not_restarted_on_exit_2() -> None:
    unit = (REPO / "data/systemd/crashd.service.in").read_text()
    assert re.search(r"^RestartPreventExitStatus=2$", unit, re.M)


def test_the_version_is_written_in_one_place() -> None:
    """meson.build's project(version:); pyproject.toml takes it from there, crashd.__version__ too."""
    project = _pyproject()
    assert "version" not in project and project["dynamic"] == ["version"]
    build = (REPO / "meson.build").read_text()
    assert re.findall(r"^\s*version:\s*'([^']+)'", build, re.M) == [crashd.__version__]
    assert crashd.__version__ not in (REPO / "crashd/__init__.py").read_text()


def test_license_is_gpl2_or_later() -> None:
    assert (REPO / "LICENSE").read_text().lstrip().startswith("GNU GENERAL PUBLIC LICENSE\n")
    assert "Version 2, June 1991" in (REPO / "LICENSE").read_text()[:200]
    assert _pyproject()["license"] == {"text": "GPL-2.0-or-later"}


def test_no_build_machine_path_in_the_tree() -> None:
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, timeout=DEADLINE,
                             check=False).stdout.decode().split("\0")
    if not any(tracked):
        pytest.skip("not a git checkout")
    offenders = []
    for name in filter(None, tracked):
        path = REPO / name
        if not path.is_file() or name == "LICENSE":
            continue
        with open(path, "rb") as f:
            text = f.read(1 << 20)
        if b"/" + b"work/" in text or str(REPO).encode() in text:  # spelt apart: this file is tracked too
            offenders.append(name)
    assert offenders == []


@pytest.mark.skipif(shutil.which("meson") is None or shutil.which("ninja") is None, reason="meson not installed")
@pytest.mark.parametrize(
    ("options", "present", "absent"),
    [
        ([], ["usr/share/dbus-1/system.d/com.ubuntu.WhoopsiePreferences.conf", "crashd-excepthook.pth",
              "usr/lib/tmpfiles.d/crashd.conf", "usr/lib/sysusers.d/crashd.conf"], []),
        (["-Dwhoopsie-preferences=false", "-Dpython-excepthook=false", "-Dtmpfilesdir=/usr/lib/tmpfiles.x",
          "-Dsysusersdir=/usr/lib/sysusers.x"],
         ["usr/share/dbus-1/system.d/org.crashd.Crashd1.conf", "usr/lib/tmpfiles.x/crashd.conf",
          "usr/lib/sysusers.x/crashd.conf"],
         ["com.ubuntu.WhoopsiePreferences", "crashd-excepthook.pth", "usr/lib/tmpfiles.d/crashd.conf"]),
    ],
)
def test_meson_options(tmp_path: Path, options: list[str], present: list[str], absent: list[str]) -> None:
    build, dest = tmp_path / "build", tmp_path / "dest"
    for argv in (["meson", "setup", str(build), "--prefix=/usr", *options],
                 ["meson", "install", "-C", str(build), "--destdir", str(dest), "--quiet"]):
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=DEADLINE, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    installed = [str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()]
    version_files = list(dest.rglob("crashd/_version.py"))
    assert len(version_files) == 1 and f'__version__ = "{crashd.__version__}"' in version_files[0].read_text()
    assert list(dest.rglob("crashd/py.typed")), "the library's type hints are published (PEP 561)"
    for want in present:
        assert any(want in name for name in installed), (want, installed)
    for unwanted in absent:
        assert not any(unwanted in name for name in installed), (unwanted, installed)
