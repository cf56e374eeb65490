"""The import graph (DESIGN.md §2): a tree with no cycles, each third-party package imported by its home.

Read from the source with ``ast`` (nothing is imported), so a test run proves the shape of the code
as it is written: module-level imports make the graph; imports inside functions (the lazy ones) and
under ``TYPE_CHECKING`` do not, but they still count for where a third-party package is used.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "crashd"
# Run by path in the hook child, or apport's API for hooks: not part of crashd's import graph.
OUTSIDE = ("crashd.hooks.child", "crashd.hooks.hook_api", "crashd.hooks.compat")

# Where each third-party package may be imported (DESIGN.md §2: a swap touches one place).
HOMES = {
    "asyncinotify": ("crashd.daemon",),
    "dbus_fast": ("crashd.dbus", "crashd.dbus_prefs", "crashd.dbus_client", "crashd.network"),
    "requests": ("crashd.uploader", "crashd.worker"),
    "urllib3": ("crashd.uploader", "crashd.worker"),
    "bson": ("crashd.uploader",),
    "systemd": ("crashd.cli.daemon", "crashd.capture.journal"),
    "backports": ("crashd._codec",),
    "compression": ("crashd._codec",),
    "zlib_ng": ("crashd._codec",),  # the optional inflater (the `fast` extra)
    "argparse": ("crashd.cli",),  # only the command line parses arguments and decides exit codes
}
# The foundations: standard library only, and from crashd only each other, so the exception hook, the
# hook child and the library's users can import them anywhere.
FOUNDATIONS = {
    "crashd.errors": (),
    "crashd.fs": ("crashd.errors",),
    "crashd.process": (),  # loaded by path in the hook child, where there is no crashd package
    "crashd.lifecycle": (),
    "crashd._codec": ("crashd.errors",),
    "crashd._scan": ("crashd.errors",),
    "crashd.report": ("crashd._codec", "crashd._scan", "crashd.errors"),
}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(path): path for path in sorted(PACKAGE.rglob("*.py")) if not _name(path).startswith(OUTSIDE)}


def _imports(tree: ast.Module, *, top_level: bool) -> Iterator[str]:
    """Names imported, as ``module`` and ``module.name``; with *top_level*, only what runs at import."""

    def walk(nodes: list[ast.stmt]) -> Iterator[ast.stmt]:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            yield node
            if isinstance(node, (ast.If, ast.Try, ast.With)):
                for body in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, body, []):
                        yield from walk(child.body if isinstance(child, ast.ExceptHandler) else [child])

    for node in walk(tree.body) if top_level else ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _crashd_module(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        targets = {_crashd_module(name) for name in _imports(ast.parse(path.read_text()), top_level=True)}
        # A package's own __init__ is not an edge: importing crashd.hooks.runner runs crashd.hooks first.
        graph[module] = {t for t in targets if t and t != module and not module.startswith(f"{t}.")}
    return graph


def test_the_import_graph_has_no_cycle() -> None:
    graph, state, path = _graph(), dict[str, int](), list[str]()
    cycles: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" → ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, cycles


@pytest.mark.parametrize("module", sorted(FOUNDATIONS))
def test_foundations_import_only_the_standard_library(module: str) -> None:
    names = set(_imports(ast.parse(MODULES[module].read_text()), top_level=True))
    roots = {name.partition(".")[0] for name in names}
    third_party = {root for root in roots if root not in sys.stdlib_module_names and root != "crashd"}
    from_crashd = {_crashd_module(name) for name in names if name.startswith("crashd.")} - {None}
    assert not third_party, third_party
    assert from_crashd <= set(FOUNDATIONS[module]), from_crashd


@pytest.mark.parametrize("package", sorted(HOMES))
def test_each_third_party_package_is_imported_by_its_home_only(package: str) -> None:
    users = {
        module
        for module, path in MODULES.items()
        if any(
            name.partition(".")[0] == package
            for name in _imports(ast.parse(path.read_text()), top_level=False)
        )
    }
    strays = {module for module in users if not module.startswith(HOMES[package])}
    assert not strays, f"{package} imported outside {HOMES[package]}: {sorted(strays)}"


def test_nothing_below_the_command_line_imports_it() -> None:
    upward = {
        module
        for module, targets in _graph().items()
        if not module.startswith("crashd.cli") and module != "crashd.__main__" and any(
            target.startswith("crashd.cli") for target in targets
        )
    }  # fmt: skip
    assert not upward, upward


# What the idle daemon must not load (issue 15: < 24 MiB while up). Each was once imported at start-up for
# a moment that may never come: another command (upload-all, show, ingest-coredump: their options'
# defaults), a report to enrich (crashd's own fields, the hook runner and its child), a batch to work
# through (the pipeline), an upload (BSON, HTTP, the mapped buffer answers are received in), a
# Retry-After with an HTTP date (email), an ImportError to explain (importlib.metadata).
NOT_IDLE = (
    "crashd.upload_all",
    "crashd.pipeline",
    "crashd.preview",
    "crashd.dependencies",
    "crashd.capture",
    "crashd.enrich",
    "crashd.hooks.runner",
    "crashd.hooks.process",
    "crashd.hooks.host",
    "crashd.hooks.hooktest",
    "bson",
    "mmap",
    "http.client",
    "urllib3",
    "requests",
    "email",
    "importlib.metadata",
)
# ...and as root, OpenSSL (root speaks no TLS), bz2 and lzma (crashd.cli.daemon.WITHOUT).
NOT_IDLE_AS_ROOT = ("ssl", "_ssl", "_hashlib", "bz2", "_bz2", "lzma", "_lzma")
_LOADED = (
    "import sys\n"
    "from crashd.__main__ import main\n"
    "code = main()\n"
    "print(' '.join(name for name, module in sys.modules.items() if module is not None))\n"
    "sys.exit(code)\n"
)


def test_the_idle_daemon_loads_only_what_idling_needs(tmp_path: Path) -> None:
    """The real ``crashd daemon`` in a fresh ``python -I``, on an empty directory without a bus, until it
    exits idle: start-up, first scan, tidy and idle exit, then the modules it had loaded."""
    import os
    import subprocess

    crash_dir = tmp_path / "crash"
    crash_dir.mkdir(mode=0o3777)
    (config := tmp_path / "crashd.conf").write_text("")  # the defaults, whatever /etc/crashd holds
    nobus = f"unix:path={tmp_path}/no-bus"
    env = os.environ | {"CRASH_DB_IDENTIFIER": "a" * 128, "DBUS_SYSTEM_BUS_ADDRESS": nobus}
    env.pop("NOTIFY_SOCKET", None)
    argv = [sys.executable, "-I", "-c", _LOADED, "--config", str(config), "daemon", "--idle-timeout", "0.1", "--crash-dir",
            str(crash_dir), "--state-dir", str(tmp_path / "state"), "--url", "http://127.0.0.1:9"]  # fmt: skip
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    loaded = set(run.stdout.split())
    assert "crashd.daemon" in loaded and "asyncinotify" in loaded, "the walk did not reach the daemon"
    unwanted = NOT_IDLE + (NOT_IDLE_AS_ROOT if os.geteuid() == 0 else ())
    assert not loaded & set(unwanted), sorted(loaded & set(unwanted))


def test_the_configuration_loads_no_event_loop() -> None:
    """``crashd.config`` (which every command reads first) without asyncio: ``upload-all`` and ``status``
    never need it, and ``crashd daemon`` asks for its upload worker (the ~100 ms start that the first POST
    waits for) before it loads the service, asyncio included (issue 15: ~15 ms sooner)."""
    import subprocess

    probe = "import sys, crashd.config; print(sorted(m for m in sys.modules if m.split('.')[0] == 'asyncio'))"
    run = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
