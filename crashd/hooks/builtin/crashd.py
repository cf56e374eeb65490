"""crashd's own hook: which crashd collected the report (``CrashdVersion``).

Built-in hooks run in the hook child like any package hook, as the report's
owner; they import nothing from crashd, so the version is read (from the file meson
wrote, or meson.build in a source tree) rather than imported.
"""

import os
import re


def add_info(report, ui=None):
    package_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # Installed: crashd/_version.py, written by meson; a source tree: meson.build's project(version:).
    for path, pattern in (
        (os.path.join(package_dir, "_version.py"), r'^__version__ = "([^"]+)"'),
        (os.path.join(os.path.dirname(package_dir), "meson.build"), r"^\s*version:\s*'([^']+)'"),
    ):
        try:
            with open(path, encoding="utf-8") as f:
                match = re.search(pattern, f.read(65536), re.MULTILINE)
        except OSError:
            continue
        if match:
            report["CrashdVersion"] = match.group(1)
            return
