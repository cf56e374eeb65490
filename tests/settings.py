"""The settings every crashd process started by the suite runs with, so no result depends on the host's users.

A machine where crashd is installed has a ``crashd`` system user; a bare one has not. crashd's
defaults look that user up (it runs root's reports' hooks and the upload worker), so a test that left
``unprivileged_user`` to the default got hooks on one machine and none on the other (issue 14). Every
config file a test writes names the user explicitly: a throwaway user when the test is about that
user, else :data:`NO_SUCH_USER` — root's reports then get no hooks, and the upload worker runs as
``nobody`` (see ``crashd.cli._common.WORKER_FALLBACK_USER``).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

__all__ = ["NO_SUCH_USER", "default_config", "write_config"]

NO_SUCH_USER = "crashdt-no-such-user"  # make_user's prefix, a name no host has


def write_config(path: Path, **keys: object) -> Path:
    """A ``[crashd]`` config file with *keys* (durations in seconds), and always an ``unprivileged_user``."""
    keys = {"unprivileged_user": NO_SUCH_USER} | keys
    path.write_text("[crashd]\n" + "".join(f"{key} = {value}\n" for key, value in keys.items()))
    return path


@functools.cache
def default_config() -> Path:
    """The config of a test that needs no setting of its own: only the explicit user above."""
    directory = Path(tempfile.mkdtemp(prefix="crashd-test-config-"))
    atexit.register(shutil.rmtree, directory, True)
    directory.chmod(0o755)
    return write_config(directory / "crashd.conf")
