"""apport.packaging on an installed and an unknown package: values, and the errors' types and texts."""

import apport.packaging


def outcome(function, *args):
    try:
        return repr(function(*args))
    except Exception as error:  # the test checks the type and the text
        return f"{type(error).__name__}: {error}"


def add_info(report, ui):
    installed, missing = report["Installed"], report["Missing"]
    p = apport.packaging
    for name, function in (
        ("Version", p.get_version),
        ("Source", p.get_source),
        ("Architecture", p.get_architecture),
        ("Dependencies", p.get_dependencies),
        ("ModifiedConffiles", p.get_modified_conffiles),
        ("IsDistro", p.is_distro_package),
        ("Origin", p.get_package_origin),
        ("Files", p.get_files),
    ):
        report[f"Installed.{name}"] = outcome(function, installed)
        report[f"Missing.{name}"] = outcome(function, missing)
    for path in ("/usr/bin/bash", "/bin/bash", "/bin/ls", "/usr/bin/ls", "/nonexistent/crashd-x"):
        report["FilePackage" + path.replace("/", ".")] = outcome(p.get_file_package, path)
    report["SystemArchitecture"] = p.get_system_architecture()
    report["KernelPackage"] = p.get_kernel_package()
    report["LibraryPaths"] = p.get_library_paths()
    pairs = ("1.0 1.0", "1.0 1.1", "1.1 1.0", "1:0.9 2.0", "1.0~rc1 1.0", "1.0-1 1.0-1ubuntu1", "2.0a 2.0")
    report["Compare"] = " ".join(str(p.compare_versions(*pair.split())) for pair in pairs)
