"""``apport.packaging`` for dpkg systems without python3-apt: each query a bounded dpkg or apt-cache run.

Module functions stand in for the methods of apport's packaging object
(``apport.packaging.get_version(pkg)`` reads the same). What "exists" means is
apt's: a package exists when dpkg's database or apt's cache knows it, installed
or not. The errors are apport 2.36's, because hooks test for them:

* an unknown package: ``ValueError("package X does not exist")`` (a real general
  hook matches that text);
* ``get_version`` of a known but uninstalled package raises the same;
* ``get_modified_conffiles`` of any package that is not installed: ``{}``;
* ``get_dependencies`` of an uninstalled one: ``[]``;
* ``get_package_origin`` of an uninstalled one: ``ValueError("package is not installed")``.

Past ~400 lines on purpose: it mirrors apport.packaging, whose names hooks import;
one apport module, one file.
"""

import fnmatch
import functools
import os
import re

from apport import _run

__all__ = [
    "compare_versions",
    "enabled",
    "get_architecture",
    "get_available_version",
    "get_dependencies",
    "get_file_package",
    "get_files",
    "get_kernel_package",
    "get_library_paths",
    "get_modified_conffiles",
    "get_modified_files",
    "get_os_version",
    "get_package_origin",
    "get_source",
    "get_system_architecture",
    "get_version",
    "is_distro_package",
    "is_native_origin_package",
    "package_name_glob",
    "set_mirror",
]

MAX_CONFFILE = 8 << 20  # bytes of one conffile read to compare its checksum
MULTIARCH_TRIPLETS = {
    "amd64": "x86_64-linux-gnu",
    "arm64": "aarch64-linux-gnu",
    "armhf": "arm-linux-gnueabihf",
    "i386": "i386-linux-gnu",
    "ppc64el": "powerpc64le-linux-gnu",
    "riscv64": "riscv64-linux-gnu",
    "s390x": "s390x-linux-gnu",
}
_STATUS_FORMAT = "${db:Status-Abbrev}\t${Version}\t${Architecture}\t${Source}\n"


def _output(argv):
    """The command's stdout as text, or None when it failed or is missing."""
    try:
        status, output, _ = _run.run(argv, stderr=_run.subprocess.DEVNULL)
    except OSError:
        return None
    return output.decode("utf-8", "replace") if status == 0 else None


def _md5(data, usedforsecurity=False):
    import hashlib  # on first use: the hook child starts once per report, most hooks never get here

    return hashlib.md5(data, usedforsecurity=usedforsecurity)


def _missing(package):
    return ValueError(f"package {package} does not exist")


def _dpkg_record(package):
    """dpkg's view: {"installed": bool, "version", "architecture", "source"}; None if dpkg never knew it."""
    output = _output(["dpkg-query", "-W", "-f", _STATUS_FORMAT, "--", package])
    for line in (output or "").splitlines():
        abbrev, version, arch, source = [*line.split("\t"), "", "", ""][:4]
        if abbrev.strip() in ("un", "pn", ""):
            continue
        installed = abbrev[1:2] in ("i", "U", "F", "W", "t") and bool(version)
        return {"installed": installed, "version": version, "architecture": arch, "source": source}
    return None


@functools.lru_cache(maxsize=256)
def _candidate(package):
    """apt's candidate version as a field → value dict (``apt-cache show``), or None if apt has none."""
    text = _output(["apt-cache", "show", "--no-all-versions", "--", package])
    if not text:
        return None
    fields, key = {}, None
    for line in text.split("\n\n")[0].splitlines():
        if line[:1] in (" ", "\t") and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields or None


def _source_name(source_field, package):
    words = (source_field or "").split()
    return words[0] if words else package


def _known(package):
    """(dpkg record or None, apt candidate or None); ValueError when neither knows the package."""
    record = _dpkg_record(package)
    candidate = None if record and record["installed"] else _candidate(package)
    if record is None and candidate is None:
        raise _missing(package)
    return record, candidate


def _installed(package):
    record = _dpkg_record(package)
    return record if record and record["installed"] else None


def get_version(package):
    """The installed version; ValueError "package X does not exist" when not installed."""
    record = _installed(package)
    if record is None:
        raise _missing(package)
    return record["version"]


def get_available_version(package):
    candidate = _candidate(package)
    if candidate is None:
        installed = _installed(package)
        if installed is None:
            raise _missing(package)
        return installed["version"]
    return candidate.get("Version", "")


def get_source(package):
    record, candidate = _known(package)
    if record and record["installed"]:
        return _source_name(record["source"], package)
    if candidate:
        return _source_name(candidate.get("Source"), package)
    raise _missing(package)


def get_architecture(package):
    record, candidate = _known(package)
    if record and record["installed"]:
        return record["architecture"] or "unknown"
    if candidate:
        return candidate.get("Architecture") or "unknown"
    raise _missing(package)


def get_dependencies(package):
    """Depends, Pre-Depends, Recommends of the installed version, first alternatives; [] if not installed."""
    record, _ = _known(package)
    if not (record and record["installed"]):
        return []
    output = _output(["dpkg-query", "-W", "-f", "${Depends}\n${Pre-Depends}\n${Recommends}\n", "--", package])
    names = []
    for group in re.split(r"[,\n]", output or ""):
        words = group.split("|")[0].split()
        if words:
            names.append(words[0].split(":")[0])
    return names


def get_files(package):
    output = _output(["dpkg", "-L", package])
    if output is None:
        raise ValueError("package does not exist")
    return [line for line in output.splitlines() if not line.startswith("diverted")]


def _conffiles(package):
    output = _output(["dpkg-query", "-W", "--showformat=${Conffiles}", "--", package])
    for line in (output or "").splitlines():
        words = line.split()
        if len(words) >= 2:
            yield words[0], words[1]


def _read_capped(path):
    with open(path, "rb") as f:
        return f.read(MAX_CONFFILE + 1)


def get_modified_conffiles(package):
    """conffile → contents (bytes) if changed, ``[deleted]`` or ``[inaccessible: …]``; {} if unknown."""
    modified = {}
    for path, md5 in _conffiles(package):
        if not os.path.exists(path):
            modified[path] = "[deleted]"
            continue
        try:
            contents = _read_capped(path)
        except OSError as error:
            modified[path] = f"[inaccessible: {error!s}]"
            continue
        if _md5(contents, usedforsecurity=False).hexdigest() != md5:
            modified[path] = contents
    return modified


def get_modified_files(package):
    """Files of *package* whose checksum differs from dpkg's md5sums (of those changed since installation)."""
    arch = get_system_architecture()
    info = "/var/lib/dpkg/info"
    lists = [f"{info}/{package}:{arch}.list", f"{info}/{package}.list"]
    sums = [f"{info}/{package}:{arch}.md5sums", f"{info}/{package}.md5sums"]
    try:
        listed = os.stat(next((p for p in lists if os.path.exists(p)), lists[-1]))
        sumfile = next(p for p in sums if os.path.exists(p))
    except (OSError, StopIteration):
        return []
    newest = max(listed.st_mtime, listed.st_ctime)
    modified = []
    with open(sumfile, encoding="utf-8", errors="replace") as f:
        for line in f:
            expected, path = line[:32], line[34:].rstrip("\n")
            if not path or "\0" in line:
                continue
            try:
                st = os.stat("/" + path)
                if max(st.st_mtime, st.st_ctime) <= newest:
                    continue
                if (
                    _md5(_read_capped("/" + path), usedforsecurity=False).hexdigest()
                    != expected.lower()
                ):
                    modified.append(path)
            except OSError:
                pass
    return modified


def _usr_merge_alternative(path):
    if re.match("^/usr/(bin|lib|lib32|lib64|libx32|sbin)/", path):
        return path[4:]
    if re.match("^/(bin|lib|lib32|lib64|libx32|sbin)/", path):
        return "/usr" + path
    return None


def _owner(path):
    for line in (_output(["dpkg-query", "-S", "--", path]) or "").splitlines():
        owners, sep, owned = line.rpartition(": ")
        if sep and owned == path and not line.startswith(("diversion by", "local diversion")):
            return owners.split(",")[0].strip().split(":")[0]
    return None


def get_file_package(file, uninstalled=False, map_cachedir=None, release=None, arch=None):
    """The installed package shipping *file* (a diversion's package first; merged-/usr aware), or None.

    *uninstalled* would need the archive's Contents index from the network:
    here only installed packages are searched.
    """
    diversion = _output(["dpkg-divert", "--list", file])
    if diversion and diversion.split()[-1] != "hardening-wrapper":
        return diversion.split()[-1]
    package = _owner(file)
    alternative = _usr_merge_alternative(file)
    if package is None and alternative:
        package = _owner(alternative)
    return package


@functools.cache
def get_system_architecture():
    arch = (_output(["dpkg", "--print-architecture"]) or "").strip()
    if not arch:
        raise RuntimeError("dpkg --print-architecture failed")
    return arch


def get_library_paths(architecture=None):
    architecture = architecture or get_system_architecture()
    triplet = MULTIARCH_TRIPLETS.get(architecture)
    if triplet is None:
        raise NotImplementedError(f"Missing multi-arch triplet information for architecture {architecture}")
    return f"/lib/{triplet}:/usr/lib/{triplet}:/lib:/usr/lib"


def get_kernel_package():
    return f"linux-image-{os.uname().release}"


def get_os_version():
    """(name, version) from os-release, "GNU/Linux" stripped: ("Debian", "12")."""
    import platform

    try:
        info = platform.freedesktop_os_release()
    except OSError:
        return ("Linux", "n/a")
    name = info.get("NAME", "Linux")
    if name.endswith(" GNU/Linux"):
        name = name.rsplit(maxsplit=1)[0]
    return (name, info.get("VERSION_ID", "n/a"))


@functools.cache
def _origins_by_source():
    """apt-cache policy's "source line" → Origin (o=) of that archive."""
    origins, current = {}, None
    for line in (_output(["apt-cache", "policy"]) or "").splitlines():
        stripped = line.strip()
        if re.match(r"^-?\d+ ", stripped):
            current = stripped
        elif stripped.startswith("release ") and current:
            for part in stripped[len("release ") :].split(","):
                if part.startswith("o="):
                    origins[current] = part[2:]
    return origins


_POLICIES = {}


def _policies(packages):
    """``apt-cache policy`` of every package not fetched yet, in one run (a run loads apt's cache)."""
    wanted = [p for p in dict.fromkeys(packages) if p not in _POLICIES]
    if not wanted:
        return
    current = None
    found = {p: [] for p in wanted}
    for line in (_output(["apt-cache", "policy", "--", *wanted]) or "").splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            name = line[:-1]
            current = name if name in found else name.split(":")[0] if name.split(":")[0] in found else None
        elif current is not None:
            found[current].append(line)
    _POLICIES.update(found)


def _version_sources(package, version):
    """The archive lines apt-cache policy lists under *version* of *package* (8-space indented, below it)."""
    _policies([package])
    sources, inside = [], False
    for line in _POLICIES[package]:
        indent = len(line) - len(line.lstrip())
        words = line.replace("***", " ").split()
        if not words:
            continue
        if indent <= 5 and len(words) == 2 and words[1].lstrip("-").isdigit():
            inside = words[0] == version
        elif indent > 5 and inside:
            sources.append(line.strip())
    return sources


def _policy_candidate(package):
    _policies([package])
    for line in _POLICIES[package]:
        key, _, value = line.strip().partition(": ")
        if key == "Candidate":
            return None if value == "(none)" else value
    return None


def get_package_origin(package):
    """Where the installed version came from ("Debian", "Ubuntu", a PPA's name); None if apt cannot tell."""
    record, _ = _known(package)
    if not (record and record["installed"]):
        raise ValueError("package is not installed")
    origins = _origins_by_source()
    for source in _version_sources(package, record["version"]):
        if origins.get(source):
            return origins[source]
    return None


def is_distro_package(package):
    """Whether apt's candidate comes from this distribution's archive (its Origin is the os-release name)."""
    record, _ = _known(package)
    if record and record["installed"] and not record["version"]:
        return False
    version = _policy_candidate(package)
    if version is None:
        return False
    origins = _origins_by_source()
    found = {origins.get(source, "") for source in _version_sources(package, version)}
    if get_os_version()[0] in found:
        return True
    return found <= {""} and os.path.exists("/etc/system-image/channel.ini")


def is_native_origin_package(package):
    _known(package)
    return False


@functools.cache
def _apt_names():
    return frozenset((_output(["apt-cache", "pkgnames"]) or "").split())


def package_name_glob(nameglob):
    """Package names apt or dpkg knows that match the glob."""
    if not re.search(r"[*?\[]", nameglob):
        return [nameglob] if _dpkg_record(nameglob) or nameglob in _apt_names() else []
    listed = _output(["dpkg-query", "-W", "-f", "${Package}\t${Version}\n", "--", nameglob]) or ""
    dpkg_names = {line.split("\t")[0] for line in listed.splitlines() if line.partition("\t")[2].strip()}
    apt_names = sorted(name for name in _apt_names() - dpkg_names if fnmatch.fnmatchcase(name, nameglob))
    _policies(apt_names)  # apt lists purely virtual names too: python-apt's cache has no such package
    real = {name for name in apt_names if _policy_has_version(name)}
    return sorted(real | {name for name in dpkg_names if fnmatch.fnmatchcase(name, nameglob)})


def _policy_has_version(package):
    for line in _POLICIES.get(package, []):
        key, _, value = line.strip().partition(": ")
        if key in ("Installed", "Candidate") and value != "(none)":
            return True
    return False


def set_mirror(url):
    """Accepted and ignored: hooks here never download packages."""


def enabled():
    return os.path.exists("/var/lib/dpkg/status")


def _order(char):
    if char == "~":
        return -1
    if char.isalpha():
        return ord(char)
    return ord(char) + 256 if char else 0


def _compare_part(a, b):
    """Debian's comparison of an upstream version or revision (deb-version(5))."""
    while a or b:
        text_a, a = re.match(r"([^0-9]*)(.*)", a).groups()
        text_b, b = re.match(r"([^0-9]*)(.*)", b).groups()
        for i in range(max(len(text_a), len(text_b))):
            left = _order(text_a[i] if i < len(text_a) else "")
            right = _order(text_b[i] if i < len(text_b) else "")
            if left != right:
                return -1 if left < right else 1
        num_a, a = re.match(r"([0-9]*)(.*)", a).groups()
        num_b, b = re.match(r"([0-9]*)(.*)", b).groups()
        if int(num_a or 0) != int(num_b or 0):
            return -1 if int(num_a or 0) < int(num_b or 0) else 1
    return 0


def _split_version(version):
    epoch, _, rest = version.strip().partition(":") if ":" in version else ("0", "", version.strip())
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch or 0), upstream, revision


def compare_versions(ver1, ver2):
    """-1, 0 or 1 as Debian orders *ver1* and *ver2* (``dpkg --compare-versions``)."""
    epoch1, upstream1, revision1 = _split_version(ver1)
    epoch2, upstream2, revision2 = _split_version(ver2)
    if epoch1 != epoch2:
        return -1 if epoch1 < epoch2 else 1
    return _compare_part(upstream1, upstream2) or _compare_part(revision1, revision2)


def prefetch(packages):
    """Ask apt about all *packages* at once, so that later per-package questions need no run of their own."""
    _policies(sorted(packages))
