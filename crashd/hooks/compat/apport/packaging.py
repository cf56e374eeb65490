"""``apport.packaging`` for dpkg systems: the queries package hooks make, each one bounded ``dpkg-query``.

Module functions stand in for the methods of apport's packaging object
(``apport.packaging.get_version(pkg)`` reads the same). A package that is not
installed raises ``ValueError``, as in apport.
"""

import hashlib
import os
import stat

from apport import _run

__all__ = [
    "get_architecture",
    "get_dependencies",
    "get_file_package",
    "get_files",
    "get_modified_conffiles",
    "get_source",
    "get_version",
    "is_distro_package",
    "package_name_glob",
]


def _query(*args):
    status, output, _ = _run.run(["dpkg-query", *args], stderr=_run.subprocess.DEVNULL)
    return output.decode("utf-8", "replace") if status == 0 else None


def _field(package, field):
    output = _query("-W", "-f", "${db:Status-Abbrev}\t" + field + "\n", "--", package)
    for line in (output or "").splitlines():
        abbrev, _, value = line.partition("\t")
        if abbrev.startswith("ii"):
            return value
    raise ValueError(f"package {package} is not installed")


def get_version(package):
    return _field(package, "${Version}")


def get_architecture(package):
    return _field(package, "${Architecture}")


def get_source(package):
    source = _field(package, "${Source}").split()
    return source[0] if source else package


def get_dependencies(package):
    """Pre-Depends, Depends and Recommends, first alternative of each (apport's choice)."""
    names = []
    for group in _field(package, "${Pre-Depends},${Depends},${Recommends}").split(","):
        words = group.split("|")[0].split()
        if words and words[0].split(":")[0] not in names:
            names.append(words[0].split(":")[0])
    return names


def get_files(package):
    output = _query("-L", "--", package)
    if output is None:
        raise ValueError(f"package {package} is not installed")
    return [line for line in output.splitlines() if line.startswith("/")]


def get_file_package(path, uninstalled=False, map_cachedir=None, release=None, arch=None):
    for line in (_query("-S", "--", path) or "").splitlines():
        owners, sep, owned = line.partition(": ")
        if sep and owned == path and not line.startswith("diversion by"):
            return owners.split(",")[0].strip().split(":")[0]
    return None


def package_name_glob(glob):
    output = _query("-W", "-f", "${Package}\n", "--", glob)
    return sorted(set((output or "").split()))


def is_distro_package(package):
    """Whether the package comes from the distribution: unknown without apt; assumed so."""
    get_version(package)
    return True


def get_modified_conffiles(package):
    """conffile → its contents (modified), ``[deleted]`` or ``[inaccessible: …]``, as apport."""
    modified = {}
    for line in _field(package, "${Conffiles}").splitlines():
        words = line.split()
        if len(words) < 2 or "obsolete" in words[2:]:
            continue
        path, md5 = words[0], words[1]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            modified[path] = "[deleted]"
            continue
        except OSError as error:
            modified[path] = f"[inaccessible: {error.strerror}]"
            continue
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            contents = f.read(1 << 20)
        if hashlib.md5(contents, usedforsecurity=False).hexdigest() != md5:
            modified[path] = contents.decode("utf-8", "replace")
    return modified
