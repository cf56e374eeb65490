# crashd developer entry points.  `make` alone lists the targets.
#
# `make check` and `make demo` work on a fresh Debian bookworm (or newer) machine as root: they first
# install whatever is missing (apt packages, then a .venv with the Python dependencies) and are fast and
# offline once everything is there.  As a normal user the apt step is skipped with a message.
#
# crashd itself is NOT installed into .venv: an editable meson-python install needs meson and ninja at
# import time and rebuilds on import.  Everything runs from the source tree with PYTHONPATH=$(CURDIR)
# instead, so `python -m crashd`, `import crashd` and `from tests.daisy import ...` all work.  The one process
# that cannot get PYTHONPATH, the upload worker (`python -I -m crashd.worker`, isolated on purpose), finds
# this tree through a crashd-source.pth in the venv's site-packages, which the `source-pth` step writes.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

# Interpreter used to create .venv; must be >= 3.11 (e.g. `make check PYTHON=python3.13`).
PYTHON ?= python3
VENV := .venv
VENV_PY := $(CURDIR)/$(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
# Extras of pyproject.toml installed into the venvs, besides [project].dependencies.
EXTRAS ?= test dev
# Extra arguments for pytest, e.g. `make test PYTEST_ARGS='-k spool -x'`.
PYTEST_ARGS ?=
# Interpreters for `make check-all-pythons` (each gets .venv-X.Y); missing ones are skipped.
ALL_PYTHONS ?= 3.12 3.13
RUN := env PYTHONPATH=$(CURDIR)

# System packages (Debian names) the test suite and the demo use:
#   python3 python3-venv       an interpreter and `python3 -m venv` (ensurepip lives in python3-venv)
#   python3-dev gcc pkg-config headers and compiler for any dependency pip has to build from source
#                              (when no wheel fits); pkg-config also lets meson find systemd.pc
#                              (the optional [journal] extra would need libsystemd-dev as well: not
#                              installed, crashd and its tests work without it)
#   dbus-daemon dbus-bin       private test system buses; dbus-send / dbus-monitor as real clients
#   libglib2.0-bin             gdbus, the client GNOME Settings uses
#   gdb                        gcore: real core dumps of live processes
#   zstd                       compressing cores the way systemd-coredump stores them
#   systemd                    systemd-analyze verify for the units (needs no systemd as PID 1)
#   passwd                     useradd/userdel for throwaway users in uid-switch tests
#   procps                     ps/pgrep/pkill for process checks in tests and the demo
#   systemd-journal-remote     real journal files from export text (ingest-coredump's tests)
#   python3-systemd            the journal reader for ingest-coredump, and journald logging
#   python3-docutils           rst2man: the man pages crashd(8) and crashd.conf(5) from docs/man/*.rst
#                              (meson builds them when it finds it; tests/test_man.py builds them too)
#   meson ninja-build git      the system install with its build options (tests/test_packaging.py)
# (`make system-test` installs its own: debootstrap and systemd-container, see tests/system/run.)
APT_PACKAGES := python3 python3-venv python3-dev gcc pkg-config dbus-daemon dbus-bin libglib2.0-bin \
                gdb zstd systemd passwd procps systemd-journal-remote python3-systemd python3-docutils \
                meson ninja-build git

.PHONY: help deps apt-deps venv source-pth check test lint fix demo bench system-test check-all-pythons clean distclean FORCE

help:
	@echo 'crashd make targets:'
	@echo '  make check              install what is missing, then ruff + meson source lists + the whole pytest suite'
	@echo '  make demo               install what is missing, then run tools/demo.py (local crash database + daemon)'
	@echo '  make deps               apt packages (as root, only the missing ones) and .venv (only when pyproject.toml changed)'
	@echo '  make test               pytest only (PYTEST_ARGS="-k name -x" to narrow)'
	@echo '  make lint               ruff check + meson.build source lists vs. crashd/**/*.py'
	@echo '  make fix                ruff check --fix'
	@echo '  make bench              python -m bench'
	@echo '  make system-test        as root: install crashd as README says into a booted Debian container, run the scenarios'
	@echo '  make check-all-pythons  the suite under python$(firstword $(ALL_PYTHONS)) ... (.venv-X.Y), where installed'
	@echo '  make clean              remove build dirs and caches;  make distclean  also the venvs'
	@echo 'Variables: PYTHON=$(PYTHON) (creates .venv, >= 3.11)  EXTRAS=$(EXTRAS)  PYTEST_ARGS=$(PYTEST_ARGS)'

deps: apt-deps $(VENV_STAMP) source-pth

venv: $(VENV_STAMP) source-pth

# crashd-source.pth (this checkout's path) in the venv's site-packages, so that an isolated `python -I -m
# crashd.worker` imports this tree's crashd (.pth entries come after the standard library). Run every time,
# not only when the stamp is made: the checkout may have moved, and it costs one interpreter start.
source-pth: $(VENV_STAMP)
	$(call source-pth-recipe,$(VENV))

# Only the missing packages are installed, and `apt-get update` runs only when something is missing, so a
# second run costs one dpkg-query per package and never touches the network.
apt-deps:
	@if ! command -v dpkg-query >/dev/null 2>&1; then \
	  echo "make deps: no dpkg here; skipping system packages (Debian names: $(APT_PACKAGES))"; exit 0; \
	fi; \
	missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -qx 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make deps: not root (or no apt-get); skipping system packages. Missing:$$missing"; exit 0; \
	fi; \
	echo "make deps: apt-get install$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -q; \
	apt-get install -y -q --no-install-recommends $$missing

# A venv whose interpreter no longer runs (e.g. it came from a pyenv version that is gone) is rebuilt.
VENV_OK := $(shell $(VENV_PY) -c 'print("ok")' 2>/dev/null)

# $(call venv-recipe,DIR,PYTHON): (re)create DIR from PYTHON if it has no working >= 3.11 interpreter, then
# pip-install [project].dependencies + $(EXTRAS) read from pyproject.toml.  pip is fast and offline when
# everything is already satisfied; the stamp keeps even that from running unless pyproject.toml changed.
define venv-recipe
	@dir='$(1)'; py='$(2)'; \
	if ! "$$dir/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	  if ! command -v "$$py" >/dev/null 2>&1; then \
	    echo "make: $$py not found; crashd needs Python >= 3.11 (set PYTHON=/path/to/python3.X)" >&2; exit 1; \
	  fi; \
	  if ! "$$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
	    echo "make: crashd needs Python >= 3.11, but $$py is $$("$$py" -V 2>&1); set PYTHON=python3.11 or newer" >&2; \
	    exit 1; \
	  fi; \
	  echo "make: creating $$dir with $$("$$py" -V 2>&1) ($$(command -v "$$py"))"; \
	  rm -rf "$$dir"; \
	  "$$py" -m venv "$$dir"; \
	fi; \
	"$$dir/bin/python" -c "$$PYPROJECT_REQUIREMENTS_PY" $(EXTRAS) > "$$dir/requirements.txt"; \
	echo "make: pip install into $$dir:" $$(cat "$$dir/requirements.txt"); \
	"$$dir/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$$dir/requirements.txt"; \
	touch "$$dir/.installed"
endef

# $(call source-pth-recipe,DIR): write DIR's crashd-source.pth, only when its content would change.
# A venv that is a symbolic link belongs to another checkout (a git worktree sharing it): its .pth is
# that checkout's, and rewriting it would make the other tree's upload worker run this tree's code.
define source-pth-recipe
	@if [ -L "$(1)" ]; then echo "make: $(1) is a link to another checkout's venv; its crashd-source.pth is left alone"; \
	else "$(1)/bin/python" -c 'import pathlib, sys, sysconfig; \
	  pth = pathlib.Path(sysconfig.get_paths()["purelib"], "crashd-source.pth"); \
	  text = sys.argv[1] + "\n"; \
	  pth.exists() and pth.read_text() == text or pth.write_text(text)' "$(CURDIR)"; fi
endef

# Prints [project].dependencies plus the requirements of the extras named in argv, one per line,
# expanding self-references such as dev = ["crashd[test]", ...] so pip never looks crashd up on an index.
# (Passed through the environment; no dollar signs in here, make would expand them.)
define PYPROJECT_REQUIREMENTS_PY
import re, sys, tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
extras = project.get("optional-dependencies", {})
self_ref = re.compile(re.escape(project["name"]) + r"\s*\[([^\]]*)\]\s*")
out, seen = [], set()

def add(reqs):
    for req in reqs:
        m = self_ref.fullmatch(req)
        if m is None:
            if req not in out:
                out.append(req)
            continue
        for extra in (e.strip() for e in m.group(1).split(",")):
            if extra not in seen:
                seen.add(extra)
                add(extras[extra])

add(project.get("dependencies", []))
add(project["name"] + "[" + e + "]" for e in sys.argv[1:])
print("\n".join(out))
endef

# Every crashd/**/*.py must be listed in the meson.build of its directory (meson has no recursive glob,
# and a module missing there is silently missing from system installs), every listed file must exist, and
# every package directory must be reached by a subdir() line in its parent's meson.build.
define CHECK_MESON_SOURCES_PY
import pathlib, re, sys

def code(path):
    return re.sub(r"#[^\n]*", "", path.read_text()) if path.is_file() else None

root = pathlib.Path("crashd")
dirs = {p.parent for p in root.rglob("*.py") if "__pycache__" not in p.parts} | {root}
problems = []
for d in sorted(dirs):
    build = d / "meson.build"
    text = code(build)
    if text is None:
        problems.append(f"{d}/ has Python files but no {build}")
        continue
    # configure_file(output: 'x.py') names a generated module, not one of the tree
    listed = set(re.findall(r"'([^'/]+[.]py)'", re.sub(r"output:\s*'[^']*'", "", text)))
    present = {p.name for p in d.glob("*.py")}
    problems += [f"{d / n} is not listed in {build}" for n in sorted(present - listed)]
    problems += [f"{build} lists {n}, which does not exist" for n in sorted(listed - present)]
    if d != root and "subdir('" + d.name + "')" not in (code(d.parent / "meson.build") or ""):
        problems.append(f"{d.parent / 'meson.build'} has no subdir('{d.name}')")
for p in problems:
    print("meson sources:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
endef

$(VENV_STAMP): export PYPROJECT_REQUIREMENTS_PY := $(value PYPROJECT_REQUIREMENTS_PY)
$(VENV_STAMP): pyproject.toml $(if $(VENV_OK),,FORCE) | apt-deps
	$(call venv-recipe,$(VENV),$(PYTHON))

.venv-%/.installed: export PYPROJECT_REQUIREMENTS_PY := $(value PYPROJECT_REQUIREMENTS_PY)
.venv-%/.installed: pyproject.toml
	$(call venv-recipe,.venv-$*,$(or $(VENV_PYTHON),python$*))

FORCE:

lint check: export CHECK_MESON_SOURCES_PY := $(value CHECK_MESON_SOURCES_PY)

# Runs every step even if an earlier one failed, and fails if any did.  pytest runs last so that, on
# success, its summary line is the last line printed.  pytest's exit 5 (no tests collected) is a failure.
check: deps
	@rc=0; \
	echo "== ruff check ."; $(VENV)/bin/ruff check . || rc=1; \
	echo "== meson.build source lists"; $(VENV_PY) -c "$$CHECK_MESON_SOURCES_PY" || rc=1; \
	echo "== pytest"; prc=0; $(RUN) $(VENV_PY) -m pytest $(PYTEST_ARGS) || prc=$$?; \
	if [ $$prc -eq 5 ]; then echo "make check: FAILED: pytest collected no tests (exit 5)" >&2; \
	elif [ $$prc -ne 0 ]; then echo "make check: FAILED: pytest exit $$prc" >&2; fi; \
	if [ $$rc -ne 0 ]; then echo "make check: FAILED: lint (ruff or meson.build source lists, see above)" >&2; fi; \
	if [ $$rc -ne 0 ] || [ $$prc -ne 0 ]; then exit 1; fi

test: deps
	@prc=0; $(RUN) $(VENV_PY) -m pytest $(PYTEST_ARGS) || prc=$$?; \
	if [ $$prc -eq 5 ]; then echo "make test: FAILED: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$prc

lint: deps
	@rc=0; $(VENV)/bin/ruff check . || rc=1; $(VENV_PY) -c "$$CHECK_MESON_SOURCES_PY" || rc=1; exit $$rc

fix: deps
	$(VENV)/bin/ruff check --fix .

demo: deps
	$(RUN) $(VENV_PY) tools/demo.py

# The fleet simulation needs numpy and matplotlib (the `bench` extra): installed into .venv on demand,
# so that `make check` and CI do not carry them.
bench: deps
	@$(VENV_PY) -c 'import numpy, matplotlib' 2>/dev/null || $(VENV_PY) -m pip install \
	  --disable-pip-version-check -q $$($(VENV_PY) -c 'import tomllib; \
	  print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bench"])')
	$(RUN) $(VENV_PY) -m bench

# crashd on a real, booted system: a cached Debian bookworm root (debootstrap, rebuilt when
# tests/system/packages.txt or deps.sh change), booted with systemd-nspawn; crashd installed into it the way
# README's "Installing on a system" says, then tests/system/scenarios.py. Needs root; installs debootstrap
# and systemd-container itself; skips with one line where no container can be booted.
# CRASHD_SYSTEST_ONLY="scenario ..." runs some scenarios only.
system-test:
	bash tests/system/run

# Optional, not run by CI: the suite under other interpreters.  pythonX.Y from PATH, else the newest
# pyenv-installed X.Y (pyenv's shims only expose its global version).
check-all-pythons: apt-deps
	@rc=0; \
	for v in $(ALL_PYTHONS); do \
	  py=python$$v; \
	  if ! $$py -c '' >/dev/null 2>&1; then \
	    py=$$(ls -d "$$(pyenv root 2>/dev/null || echo /nonexistent)"/versions/$$v.*/bin/python$$v 2>/dev/null | sort -V | tail -n 1); \
	  fi; \
	  if [ -z "$$py" ]; then echo "== python$$v: not installed, skipped"; continue; fi; \
	  $(MAKE) -s --no-print-directory .venv-$$v/.installed VENV_PYTHON="$$py" || { rc=1; continue; }; \
	  $(call source-pth-recipe,.venv-$$v); \
	  echo "== pytest under $$(.venv-$$v/bin/python -V)"; \
	  $(RUN) $(CURDIR)/.venv-$$v/bin/python -m pytest $(PYTEST_ARGS) || rc=1; \
	done; \
	exit $$rc

clean:
	rm -rf build builddir .pytest_cache .ruff_cache .hypothesis
	find . -path './.venv*' -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .venv-*
