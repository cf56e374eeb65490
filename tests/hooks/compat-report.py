# ruff: noqa: F405  (the names come from apport's star import, as in real hooks)
"""apport.Report, problem_report, apport.hook_ui, apport.fileutils and apport.ui as hooks use them."""

import os

import apport
import apport.fileutils
import apport.hook_ui
import apport.ui
import problem_report
from apport.hookutils import *  # noqa: F403


def add_info(report, ui):
    installed, missing = report["Installed"], report["Missing"]
    report["IsReport"] = repr(isinstance(report, apport.Report))
    report["IsProblemReport"] = repr(isinstance(report, problem_report.ProblemReport))
    report["UiType"] = type(ui).__name__
    report["UiAnswers"] = repr([ui.yesno("?"), ui.choice("?", ["a"]), ui.file("?"), ui.information("!")])
    report["HookUi"] = repr(apport.hook_ui.NoninteractiveHookUI().yesno("?"))
    report["StarApport"] = repr(apport is __import__("apport"))
    fresh = apport.Report("Bug")
    report["Fresh"] = " ".join(sorted(fresh))
    fresh.add_package_info(installed)
    for key in ("Package", "SourcePackage", "PackageArchitecture", "Dependencies"):
        report[f"Installed.{key}"] = fresh.get(key, "<none>")
    gone = apport.Report()
    gone.add_package_info(missing)
    report["Missing.Package"] = gone.get("Package", "<none>")
    report["Missing.SourcePackage"] = gone.get("SourcePackage", "<none>")
    fresh.add_os_info()
    fresh.add_user_info()
    report["Os"] = " ".join(sorted(k for k in fresh if k in ("Architecture", "DistroRelease", "Uname", "UserGroups")))
    proc = apport.Report()
    proc.add_proc_info()
    report["Proc"] = " ".join(sorted(k for k in proc if k.startswith(("Proc", "Executable"))))
    crash = apport.Report()
    crash.update({"ExecutablePath": "/usr/bin/foo", "Signal": "11", "StacktraceTop": "f (x=1)\ng ()\nmain ()"})
    report["Signature"] = crash.crash_signature()
    report["Title"] = crash.standard_title()
    py = apport.Report()
    py["ExecutablePath"] = "/usr/bin/tool"
    py["Traceback"] = (
        'Traceback (most recent call last):\n  File "/usr/bin/tool", line 3, in <module>\n    main()\n'
        '  File "/usr/lib/tool.py", line 9, in main\n    raise KeyError("k")\nKeyError: \'k\''
    )
    report["PySignature"] = py.crash_signature()
    report["PyTitle"] = py.standard_title()
    report["NoHooks"] = repr(apport.Report().add_hooks_info(ui, package="crashd-no-such-pkg-hooks"))
    report["Compressed"] = problem_report.CompressedValue(b"zipped").get_value().decode()
    report["Zipped"] = problem_report.CompressedValue(b"\x00zipped")  # apport's reports take one: its bytes
    report["Likely"] = repr([apport.fileutils.likely_packaged(p) for p in ("/usr/bin/x", "/usr/local/bin/x")])
    report["FindFile"] = repr(apport.fileutils.find_file_package("/usr/bin/bash"))
    libs = shared_libraries("/bin/ls")
    report["Libc"] = repr(("libc.so.6" in libs, links_with_shared_library("/bin/ls", "libc")))
    report["NoLibs"] = repr(shared_libraries("/nonexistent/crashd-binary"))
    report["UiVersion"] = apport.ui.__version__
    report["Tagged"] = repr(report.add_tags(["compat"]))
    report["Where"] = os.path.dirname(os.path.dirname(apport.__file__))
