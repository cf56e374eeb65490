"""The command line as scripts see it: real `python -m crashd` processes, exit codes, one-line errors."""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crashd import cli
from crashd.config import ConfigError, load_settings
from crashd.report import write_report
from tests.fixtures import APPORT, WHOOPSIE, apport_manifest, require

REPO = Path(__file__).resolve().parents[1]


def crashd(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("CRASH_DB_URL", "APPORT_REPORT_DIR")}
    environment |= {"PYTHONPATH": str(REPO)} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "crashd", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("crashd: "), result.stderr
    return lines[0]


# -- show -------------------------------------------------------------------------------


def manifest_records():
    manifest = apport_manifest()
    return [pytest.param(r, id=r["file"]) for r in manifest["files"]] if manifest else []


@pytest.mark.parametrize("record", manifest_records())
def test_show_json_agrees_with_apports_loader(record):
    path = APPORT / record["file"]
    result = crashd("show", "--json", str(path))
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["path"] == str(path)
    assert shown["problem_type"] == record["ProblemType"]
    assert list(shown["fields"]) == record["key_order"]
    for key, expected in record["keys"].items():
        field = shown["fields"][key]
        assert (field["size"], field["sha256"], field["binary"]) == (
            expected["len"],
            expected["sha256"],
            expected["binary"],
        )
        has_text = expected["type"] == "str" and expected["len"] <= 64 * 1024
        assert ("text" in field) == has_text, key
        if has_text:
            assert len(field["text"].encode()) == expected["len"]


def test_show_human_output(tmp_path):
    report = tmp_path / "r.crash"
    with report.open("wb") as f:
        write_report(f, {"ProblemType": "Crash", "Multi": "a\nb", "CoreDump": b"\x7fELF\0" * 10})
    result = crashd("show", str(report))
    assert result.returncode == 0
    assert "ProblemType: Crash" in result.stdout
    assert "Multi:\n a\n b" in result.stdout
    assert "CoreDump: <binary, data, 50 bytes, sha256 " in result.stdout


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("invalid_key_no_value", 1),
        ("invalid_value", 2),
        ("invalid_no_spaces", 5),
        ("invalid_key_leading_spaces", 1),
    ],
)
def test_show_refuses_invalid_reports_with_file_line_and_reason(name, line):
    path = require(WHOOPSIE / "crash" / name)
    result = crashd("show", "--json", str(path))
    assert result.returncode == 4
    assert one_error_line(result).startswith(f"crashd: {path}: line {line}: ")
    assert result.stdout == ""


def test_show_refuses_a_symlink_and_a_fifo(tmp_path):
    target = tmp_path / "real.crash"
    target.write_bytes(b"ProblemType: Crash\n")
    (tmp_path / "link.crash").symlink_to(target)
    os.mkfifo(tmp_path / "fifo.crash")
    for name, reason in (("link.crash", "symbolic link"), ("fifo.crash", "FIFO")):
        result = crashd("show", str(tmp_path / name), timeout=20)
        assert result.returncode == 4 and reason in one_error_line(result)


def test_show_missing_file_is_a_usage_error(tmp_path):
    result = crashd("show", str(tmp_path / "nope.crash"))
    assert result.returncode == 2 and "No such file" in one_error_line(result)


def test_show_a_big_core_streams(tmp_path):
    report = tmp_path / "big.crash"
    core = os.urandom(1 << 20) * 40  # 40 MiB, compressible: a real stream, not a huge file
    with report.open("wb") as f:
        write_report(f, {"ProblemType": "Crash", "CoreDump": io.BytesIO(core)})
    shown = json.loads(crashd("show", "--json", str(report)).stdout)
    assert shown["fields"]["CoreDump"]["size"] == len(core)


# -- usage, help, identifier, configuration ---------------------------------------------


def test_help_explains_every_command():
    result = crashd("--help")
    assert result.returncode == 0
    for command in ("show", "upload-all", "identifier", "Exit codes"):
        assert command in result.stdout
    assert "--timeout" in crashd("upload-all", "--help").stdout


@pytest.mark.parametrize(
    "args",
    [(), ("frobnicate",), ("show",), ("upload-all", "--timeout", "soon"), ("upload-all", "--timeout", "-1")],
)
def test_usage_errors_exit_2_with_one_line(args):
    result = crashd(*args)
    assert result.returncode == 2
    assert one_error_line(result)


def test_a_command_is_parsed_by_its_own_parser_and_an_unknown_one_meets_them_all():
    """``build_parser(command)`` builds the named command's parser alone (its options' defaults import its
    library: the service need not load the others', issue 15); a name that is none of ours gets them all."""
    line = one_error_line(crashd("frobnicate"))
    assert all(command in line for command in ("show", "upload-all", "daemon", "ingest-coredump", "status"))
    assert "/var/lib/systemd/coredump" in crashd("ingest-coredump", "--help").stdout
    assert cli.build_parser("status").parse_args(["status"]).command == "status"
    for command in cli.COMMANDS:  # each is the module of its name, imported when the command is named
        assert command == importlib.import_module(f"crashd.cli.{command.replace('-', '_')}").NAME
    with pytest.raises(SystemExit):  # status's parser alone knows no other command
        cli.build_parser("status").parse_args(["show", "x.crash"])


def test_identifier_honours_the_override(tmp_path):
    result = crashd("identifier", "--state-dir", str(tmp_path), env={"CRASH_DB_IDENTIFIER": "i_am_a_machine"})
    assert (result.returncode, result.stdout) == (0, "i_am_a_machine\n")


def test_identifier_is_stable_and_cached(tmp_path):
    first = crashd("identifier", "--state-dir", str(tmp_path))
    if first.returncode != 0:
        pytest.skip(f"this machine has no identifier source: {first.stderr.strip()}")
    assert len(first.stdout.strip()) == 128
    assert crashd("identifier", "--state-dir", str(tmp_path)).stdout == first.stdout


def test_configuration_error_names_file_key_and_value(tmp_path):
    config = tmp_path / "crashd.conf"
    config.write_text("[crashd]\nread_timeout = soon\n")
    result = crashd("--config", str(config), "upload-all", "--crash-dir", str(tmp_path))
    assert result.returncode == 2
    line = one_error_line(result)
    assert str(config) in line and "read_timeout" in line and "'soon'" in line


CONFIG_CASES = [
    ("[crashd]\nurl = ftp://x\n", "url"),
    ("[crashd]\ncolour = blue\n", "unknown key 'colour'"),
    ("[elsewhere]\nx = 1\n", "unknown section"),
    ("[crashd]\nconnect_timeout = 0\n", "positive"),
    ("[crashd]\ncrash_dir =\n", "must not be empty"),
    ("not ini at all\n", "not a valid INI file"),
]


@pytest.mark.parametrize(("text", "reason"), CONFIG_CASES)
def test_configuration_errors(tmp_path, text, reason):
    config = tmp_path / "crashd.conf"
    config.write_text(text)
    with pytest.raises(ConfigError, match=reason):
        load_settings(config, environ={})


def test_configuration_precedence(tmp_path):
    config = tmp_path / "crashd.conf"
    config.write_text("[crashd]\nurl = http://file.example\ncrash_dir = /from/file\nread_timeout = 5\n")
    environ = {"CRASH_DB_URL": "http://env.example/", "APPORT_REPORT_DIR": "/from/env"}
    settings = load_settings(
        config, environ=environ, overrides={"url": "http://flag.example", "crash_dir": None}
    )
    assert settings.url == "http://flag.example"
    assert settings.crash_dir == Path("/from/env")
    assert settings.read_timeout == 5
    assert load_settings(config, environ={}).url == "http://file.example"
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.conf", environ={})
