"""The names a hook gets from ``from apport.hookutils import *``, and whether each is callable."""

from apport.hookutils import *  # noqa: F403


def add_info(report, ui):
    names = {name: callable(value) for name, value in globals().items() if not name.startswith("_")}
    report["StarNames"] = " ".join(sorted(name for name in names if name != "add_info"))
    report["Callables"] = " ".join(sorted(name for name, is_callable in names.items() if is_callable))
