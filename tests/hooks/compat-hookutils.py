# ruff: noqa: F405  (the names come from apport's star import, as in real hooks)
"""apport.hookutils' package, file and command helpers on installed and unknown packages and missing things."""

from apport.hookutils import *  # noqa: F403


def add_info(report, ui):
    installed, missing = report["Installed"], report["Missing"]
    attach_conffiles(report, missing)  # apport: nothing, no error
    attach_conffiles(report, installed, ui=ui)
    attach_related_packages(report, [installed, missing])
    report["Versions"] = package_versions(installed, missing)
    report["InPackage"] = " ".join(files_in_package(installed, "*/bin/ls"))
    report["Missing.Command"] = command_output(["crashd-no-such-command"])
    report["Missing.Available"] = repr(command_available("crashd-no-such-command"))
    report["Echo"] = command_output(["echo", "hi"])
    attach_file_if_exists(report, "/nonexistent/crashd-file", "MissingFile")
    report["ReadMissing"] = read_file("/nonexistent/crashd-file")
    report["RootShell"] = repr(execute_multiple_root_commands({"Said": "echo said", "Quiet": "true"}))
    attach_root_command_outputs(report, {"RootOut": "echo out"})
    report["Udev"] = anonymized_udevdb("E: ID_FS_LABEL=secret\nS: disk/by-label/secret\n")
    report["Grep"] = recent_syslog(re.compile("crashd-never-logged-this"), path="/etc/hostname")
    attach_gsettings_package(report, installed)  # no schemas: nothing attached
    report["GsettingsMissing"] = "no error"
    try:
        attach_gsettings_package(report, missing)
    except ValueError as error:  # apport: files_in_package of an unknown package raises
        report["GsettingsMissing"] = f"ValueError: {error}"
    report["Session"] = repr(in_session_of_problem(report))
    report["Nonfree"] = repr(type(nonfree_kernel_modules("/nonexistent/modules")))
    attach_upstart_overrides(report, installed)
    attach_upstart_logs(report, installed)
    attach_gconf(report, installed)
    kill_pkttyagent()
    # attach_conffiles' keys and values for a changed conffile, without changing one of the system's: this hook
    # itself says /etc/hostname is a changed conffile of "crashd-fake" (packaging is looked up at call time).
    real = packaging.get_modified_conffiles
    packaging.get_modified_conffiles = lambda name: {"/etc/hostname": b"changed"} if name == "crashd-fake" else {}
    try:
        attach_conffiles(report, "crashd-fake", ui=ui)
    finally:
        packaging.get_modified_conffiles = real
