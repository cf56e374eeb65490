"""The configuration keys of DESIGN.md §7's bounds (issue 14 item 6): each parsed, each bad value refused
naming the key, the defaults the dataclasses' own, and a bound really taking effect end to end."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from crashd import config
from crashd.config import KEYS, ConfigError, Settings, load_settings, value
from crashd.hooks import HookLimits, HookOptions
from crashd.policy import Backoff
from crashd.report import Limits, write_report
from tests.settings import write_config

REPO = Path(__file__).resolve().parent.parent

# key, text in the file, the value it gives
PARSED = [
    ("max_report_size", "1M", 1 << 20),
    ("max_keys", "100", 100),
    ("max_key_length", "64", 64),
    ("max_text_value", "512K", 512 << 10),
    ("max_binary_value", "1.5G", 3 << 29),
    ("max_upload_text", "4096", 4096),
    ("hook_output_cap", "2MiB", 2 << 20),
    ("hook_address_space", "1G", 1 << 30),
    ("hook_file_size", "8M", 8 << 20),
    ("hook_open_files", "32", 32),
    ("hook_processes", "8", 8),
    ("hook_timeout", "2.5", 2.5),
    ("backoff_base", "5", 5.0),
    ("expire_after", "600", 600.0),
    ("hook_user", "daemon", "daemon"),
]

# key, bad text, what the error says
REFUSED = [
    ("max_report_size", "0", "more than 0 bytes"),
    ("max_report_size", "big", "must be a size"),
    ("max_text_value", "-1M", "must be a size"),
    ("max_keys", "0", "more than 0"),
    ("max_keys", "1.5", "whole number"),
    ("max_key_length", "many", "whole number"),
    ("hook_output_cap", "0K", "more than 0 bytes"),
    ("hook_processes", "-3", "more than 0"),
]


@pytest.mark.parametrize(("key", "text", "expected"), PARSED)
def test_each_key_is_parsed_into_its_place(tmp_path: Path, key: str, text: str, expected: object) -> None:
    settings = load_settings(write_config(tmp_path / "crashd.conf", **{key: text}), environ={})
    assert value(settings, key) == expected
    others = {k: value(settings, k) for k in KEYS if k not in (key, "unprivileged_user")}
    defaults = {k: value(Settings(), k) for k in KEYS if k not in (key, "unprivileged_user")}
    assert others == defaults  # one key changes one place


@pytest.mark.parametrize(("key", "text", "reason"), REFUSED)
def test_a_bad_value_is_refused_naming_file_key_and_value(
    tmp_path: Path, key: str, text: str, reason: str
) -> None:
    path = write_config(tmp_path / "crashd.conf", **{key: text})
    with pytest.raises(ConfigError, match=reason) as error:
        load_settings(path, environ={})
    assert f"{path} [crashd] {key}" in str(error.value) and repr(text) in str(error.value)


def test_the_defaults_are_the_dataclasses_own() -> None:
    settings = Settings()
    assert settings.limits == Limits() and settings.backoff == Backoff() and settings.hooks == HookOptions()
    assert settings.hooks.limits == HookLimits()
    assert settings.unprivileged_user == HookOptions().worker_user
    assert set(KEYS) >= {"max_report_size", "max_upload_text", "hook_output_cap"}
    for key in KEYS:  # every key lands somewhere real
        value(settings, key)


def test_unprivileged_user_also_keeps_the_hooks_off_the_workers_user(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path / "crashd.conf", unprivileged_user="someone"), environ={})
    assert settings.unprivileged_user == settings.hooks.worker_user == "someone"


def test_every_report_bound_and_hook_option_has_a_key() -> None:
    """DESIGN.md §7: every bound configurable. A new field in Limits, HookOptions or Backoff needs its key."""
    placed = {KEYS[key].path for key in KEYS}
    for part, cls in (("limits", Limits), ("backoff", Backoff), ("hooks", HookOptions)):
        for field in dataclasses.fields(cls):
            if (part, field.name) in placed or field.name in ("roots", "worker_user", "limits"):
                continue
            raise AssertionError(f"{part}.{field.name} has no configuration key")
    for field in dataclasses.fields(HookLimits):
        assert ("hooks", "limits", field.name) in placed, field.name


def _crashd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crashd", *args], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def test_max_report_size_makes_show_refuse_a_larger_report(tmp_path: Path) -> None:
    report = tmp_path / "big.crash"
    with report.open("wb") as f:
        write_report(f, {"ProblemType": "Crash", "Big": "x" * 5000})
    small = write_config(tmp_path / "small.conf", max_report_size="4K")
    refused = _crashd("--config", str(small), "show", str(report))
    assert refused.returncode == 4, refused.stderr
    assert "larger than 4 KiB" in refused.stderr, refused.stderr
    roomy = write_config(tmp_path / "roomy.conf", max_report_size="64K")
    assert _crashd("--config", str(roomy), "show", str(report)).returncode == 0


def test_max_upload_text_makes_what_is_sent_refuse_the_report(tmp_path: Path) -> None:
    report = tmp_path / "text.crash"
    with report.open("wb") as f:
        write_report(f, {"ProblemType": "Crash", "Big": "x" * 5000})
    small = write_config(tmp_path / "small.conf", max_upload_text="4K")
    refused = _crashd("--config", str(small), "show", "--what-is-sent", str(report))
    assert refused.returncode == 4, refused.stderr
    assert "upload_text" in refused.stderr and "4 KiB" in refused.stderr, refused.stderr


def test_the_keys_are_listed_in_the_order_of_the_error_message(tmp_path: Path) -> None:
    path = tmp_path / "crashd.conf"
    path.write_text("[crashd]\nmax_reportsize = 1M\n")
    with pytest.raises(ConfigError, match="max_report_size"):
        config.load_settings(path, environ={})
