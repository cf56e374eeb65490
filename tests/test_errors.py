"""One exception tree: every exception class crashd defines descends from crashd.errors.CrashdError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import crashd
from crashd.errors import CrashdError
from crashd.uploader import UploadError

# Run inside the hook child without importing crashd: apport's own API, with apport's own bases; and the
# modules the child loads by path (crashd.process's PrivilegeError stays a RuntimeError).
OUTSIDE = ("crashd.hooks.child", "crashd.hooks.compat", "crashd.hooks.hook_api", "crashd.process")


def crashd_modules() -> list[str]:
    names = [info.name for info in pkgutil.walk_packages(crashd.__path__, "crashd.")]
    return [name for name in names if not name.startswith(OUTSIDE) and name != "crashd.__main__"]


def exception_classes() -> list[type[BaseException]]:
    found = []
    for name in crashd_modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == name:
                found.append(cls)
    return found


def test_every_exception_class_in_crashd_is_a_crashd_error():
    classes = exception_classes()
    assert len(classes) >= 20, classes  # the walk found the modules
    outside = [f"{cls.__module__}.{cls.__qualname__}" for cls in classes if not issubclass(cls, CrashdError)]
    assert outside == []


def test_every_upload_error_is_one_branch_and_delivery_needs_no_worker_to_classify_them():
    from crashd import uploader

    names = {"ConnectError", "OfflineError", "UploadTimeout", "ExchangeError", "WorkerError"}
    assert all(issubclass(getattr(uploader, name), UploadError) for name in names)
    source = inspect.getsource(importlib.import_module("crashd.delivery"))
    assert "crashd.worker" not in source


def test_the_tree_keeps_the_built_in_bases_callers_catch():
    from crashd.consent import ConsentLocked
    from crashd.report import MalformedReportError
    from crashd.spool import UnsafeFileError

    assert issubclass(MalformedReportError, ValueError) and issubclass(UnsafeFileError, ValueError)
    error = ConsentLocked(13, "locked")
    assert isinstance(error, PermissionError) and error.errno == 13 and isinstance(error, CrashdError)


def test_the_docstring_draws_every_public_class():
    drawn = crashd.errors.__doc__ or ""
    for cls in exception_classes():
        if not cls.__name__.startswith("_"):
            assert cls.__name__ in drawn, f"{cls.__name__} is missing from crashd.errors' tree"
