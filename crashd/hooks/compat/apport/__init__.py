"""crashd's stand-in for apport 2.36's public hook API, for systems where apport is not installed.

The hook child appends the directory holding this package to ``sys.path`` last:
``import apport`` finds the real apport whenever the hooks' Python can import it,
and this one otherwise. It provides what package hooks use: ``apport.Report``
(a class, so ``isinstance`` works), ``apport.hookutils`` (every public function
of apport 2.36's), ``apport.packaging`` (dpkg and apt-cache based),
``apport.fileutils`` (the read-only parts), ``apport.hook_ui``, ``apport.ui``'s
constants, ``apport.logging`` and the top-level ``problem_report`` module.
Nothing here prompts or needs root; every command has a timeout and an output cap.
"""

from apport import packaging
from apport.logging import error, fatal, log, memdbg, warning
from apport.report import Report

__all__ = ["Report", "error", "fatal", "log", "memdbg", "packaging", "unicode_gettext", "warning"]
__version__ = "2.36.0"  # the apport API this stand-in follows
CRASHD_COMPAT = 1  # the stand-in's own revision: reported as "_HooksRunWith: crashd-compat 1"


def unicode_gettext(message):
    import gettext  # on first use: the hook child starts once per report

    return gettext.gettext(message)
