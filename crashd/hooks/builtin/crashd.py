"""crashd's own hook: which crashd collected the report (``CrashdVersion``).

Built-in hooks run in the hook child like any package hook, as the report's
owner; they import nothing from crashd, so the version is read from the
package's ``__init__.py`` beside this directory rather than imported.
"""

import os
import re


def add_info(report, ui=None):
    package_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    init = os.path.join(package_dir, "__init__.py")
    with open(init, encoding="utf-8") as f:
        match = re.search(r'^__version__ = "([^"]+)"', f.read(65536), re.MULTILINE)
    if match:
        report["CrashdVersion"] = match.group(1)
