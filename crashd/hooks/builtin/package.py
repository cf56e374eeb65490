"""crashd's package hook: ``Package``, ``SourcePackage``, ``PackageArchitecture`` and ``Dependencies``.

apport's ``add_package_info`` for dpkg systems, as daisy needs it
(``research/whoopsie.md`` §8.3): the package owning ``ExecutablePath`` (also
under its /usr-merged name), its version, source and architecture, and the
installed versions of everything it depends on (Pre-Depends, Depends and
Recommends, first alternative, transitively — as apport does). Only fields that
are missing are filled. Every query is one bounded ``dpkg-query`` call; where
there is no dpkg the hook adds nothing, and a program no package owns gets no
``Package`` (apport does the same). apport's ``[modified: …]`` and
``[origin: …]`` suffixes are not computed: they need every file's checksum.
"""

import os

import crashd_process  # crashd/process.py, loaded by the hook child (its docstring says why)

TIMEOUT = 10  # seconds per dpkg-query call; the hook as a whole is bounded by the runner
GLOB = frozenset("*?[\\")


def add_info(report, ui=None):
    package = _first_word(report.get("Package"))
    if package is None:
        executable = report.get("ExecutablePath")
        if not isinstance(executable, str) or not executable.startswith("/"):
            return
        package = _owner(executable)
        if package is None:
            return
    installed = _installed()
    info = installed.get(package)
    if "Package" not in report:
        report["Package"] = f"{package} {info[0] if info else '(not installed)'}"
    if info is None:
        return
    source, architecture = info[1], info[2]
    report.setdefault("SourcePackage", source or package)
    report.setdefault("PackageArchitecture", architecture)
    if "Dependencies" not in report:
        report["Dependencies"] = "\n".join(
            f"{dep} {installed[dep][0]}" for dep in _closure(package, installed)
        )


def _first_word(value):
    words = value.split() if isinstance(value, str) else []
    return words[0] if words else None


def _dpkg_query(*args):
    try:
        done = crashd_process.run(["dpkg-query", *args], timeout=TIMEOUT)
    except OSError:
        return ""
    return "" if done.problem else done.output.decode("utf-8", "replace")


def _owner(executable):
    """The package owning the file, trying its resolved and its /usr-merged names too."""
    candidates = []
    for path in (executable, os.path.realpath(executable)):
        if path.startswith("/usr/"):
            other = path[4:]
        elif path.startswith(("/bin/", "/sbin/", "/lib")):
            other = "/usr" + path
        else:
            other = None
        candidates += [p for p in (path, other) if p and p not in candidates and not GLOB.intersection(p)]
    if not candidates:
        return None
    for line in _dpkg_query("-S", "--", *candidates).splitlines():
        owners, sep, path = line.partition(": ")
        if sep and not line.startswith("diversion by") and path in candidates:
            return owners.split(",")[0].strip().split(":")[0]
    return None


def _installed():
    """name → (version, source, architecture, dependency names) of every installed package: one query."""
    fields = "${Package}\t${Version}\t${Source}\t${Architecture}\t${Pre-Depends}\t${Depends}\t${Recommends}"
    packages = {}
    for line in _dpkg_query("-W", "-f", fields + "\t${db:Status-Abbrev}\n").splitlines():
        parts = line.split("\t")
        if len(parts) != 8 or not parts[7].startswith("ii") or parts[0] in packages:
            continue
        depends = []
        for group in ",".join(parts[4:7]).split(","):
            words = group.split("|")[0].split()
            if words:
                depends.append(words[0].split(":")[0])
        source = parts[2].split()[0] if parts[2].strip() else parts[0]
        packages[parts[0]] = (parts[1], source, parts[3], depends)
    return packages


def _closure(package, installed):
    """Installed packages *package* depends on, transitively, sorted (itself excluded)."""
    seen, stack = set(), [package]
    while stack:
        for dep in installed.get(stack.pop(), (None, None, None, ()))[3]:
            if dep in installed and dep not in seen:
                seen.add(dep)
                stack.append(dep)
    seen.discard(package)
    return sorted(seen)
