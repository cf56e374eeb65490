"""The man pages describe crashd as it is: every command, option, exit code, environment variable and
configuration key (issue 16, item 5).

The facts come from the code, not from a list kept beside it: the argparse parser of
``crashd.cli.build_parser`` (walked into every subcommand), the exit-code constants, the environment
variables the sources read, and the keys the configuration parsers accept. A new option or key that
is not documented fails here, and so does a documented one that no longer exists. The pages are
also built with rst2man --strict, as meson builds them.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from crashd import cli, config, consent, identity, worker
from crashd.capture import excepthook

REPO = Path(__file__).resolve().parent.parent
MAN = REPO / "docs" / "man"
PAGE_8 = (MAN / "crashd.8.rst").read_text()
PAGE_5 = (MAN / "crashd.conf.5.rst").read_text()
# Sources whose environment reads are crashd's own (the apport compatibility layer is the hooks' API).
ENV_READ = re.compile(r"""(?:environ(?:\.get)?\(|environ\[|getenv\()\s*["']([A-Za-z_][A-Za-z0-9_]*)["']""")


def sections(text: str, underline: str) -> dict[str, str]:
    """reStructuredText sections whose titles are underlined with *underline*: title -> body."""
    lines = text.splitlines()
    starts = [i for i in range(len(lines) - 1)
              if lines[i].strip() and re.fullmatch(re.escape(underline) + "{3,}", lines[i + 1])
              and (i == 0 or not re.fullmatch(re.escape(underline) + "+", lines[i - 1]))]  # fmt: skip
    bodies = {}
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        bodies[lines[start].strip()] = "\n".join(lines[start + 2 : end])
    return bodies


TOP = sections(PAGE_8, "=")
COMMANDS = sections(TOP["COMMANDS"], "-")
SHARED = TOP["COMMANDS"].split("\ncrashd ", 1)[0]  # the options several commands share, before the first


def option_entries(text: str) -> set[str]:
    """The options an rst option list in *text* describes (``--state-dir DIR`` / ``-v, --verbose``)."""
    found = set()
    for line in text.splitlines():
        if line.startswith("-"):
            found.update(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", line))
    return found


def mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("crashd's parser has no subcommands")


def test_every_global_option_is_described() -> None:
    parser = cli.build_parser()
    options = {o for action in parser._actions for o in action.option_strings}
    assert options, "no global options found: the walk is broken"
    assert options <= option_entries(TOP["GLOBAL OPTIONS"]), options - option_entries(TOP["GLOBAL OPTIONS"])
    assert option_entries(TOP["GLOBAL OPTIONS"]) <= options  # nothing documented that is gone


def test_every_command_has_its_section_and_nothing_else_does() -> None:
    commands = set(subcommands(cli.build_parser()))
    assert {"daemon", "show", "upload-all", "status"} <= commands
    assert {title.removeprefix("crashd ") for title in COMMANDS} == commands
    assert all(title.startswith("crashd ") for title in COMMANDS)


@pytest.mark.parametrize("command", sorted(subcommands(cli.build_parser())))
def test_every_option_and_argument_of_a_command_is_described(command: str) -> None:
    parser = subcommands(cli.build_parser())[command]
    section = COMMANDS[f"crashd {command}"]
    described = option_entries(section) | option_entries(SHARED)
    options = set()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue  # GLOBAL OPTIONS: "Every command also takes --help"
        for option in action.option_strings:
            options.add(option)
            assert mentions(section, option), f"crashd {command}: {option} is not in its section"
            assert option in described, f"crashd {command}: {option} has no description"
        if not action.option_strings:  # a positional: its name and every value it takes
            assert f"*{action.metavar or action.dest}*" in section or action.choices, (command, action.dest)
            for choice in action.choices or ():
                assert mentions(section, str(choice)), f"crashd {command}: {choice} is not described"
    local = option_entries(section)
    assert local <= options, f"crashd {command} documents options it does not have: {local - options}"


def exit_codes() -> set[int]:
    codes = {value for name, value in vars(cli).items() if name.startswith("EXIT_")}  # every command's
    return codes | {130}  # main()'s KeyboardInterrupt


def test_every_exit_code_is_described() -> None:
    terms = {line for line in TOP["EXIT STATUS"].splitlines() if line and not line.startswith(" ")}
    assert {str(code) for code in exit_codes()} <= terms
    assert "128 + *N*" in terms  # upload-all stopped by a signal


def environment_variables() -> set[str]:
    names = set(config.ENVIRONMENT.values()) | {identity.ENV_VAR, *worker.PASSED_ENVIRONMENT}
    names |= {excepthook.STATE_DIR_ENV, excepthook.CONFIG_ENV}
    for path in (REPO / "crashd").rglob("*.py"):
        if "compat" not in path.relative_to(REPO / "crashd").parts:
            names.update(ENV_READ.findall(path.read_text()))
    return names


def test_every_environment_variable_is_described() -> None:
    names = environment_variables()
    assert {"CRASH_DB_URL", "CRASHD_EXCEPTHOOK", "NOTIFY_SOCKET", "https_proxy"} <= names  # the scan works
    section = TOP["ENVIRONMENT"]
    missing = {name for name in names if not re.search(rf"\*\*{name}\*\*", section, re.IGNORECASE)}
    assert not missing, f"environment variables crashd reads but crashd(8) does not describe: {missing}"


def key_blocks(section: str) -> dict[str, str]:
    """``**key** = *VALUE*`` entries of a crashd.conf(5) section: key -> its text."""
    blocks: dict[str, str] = {}
    key = None
    for line in section.splitlines():
        match = re.match(r"\*\*([a-z_]+)\*\* = ", line)
        if match:
            key = match.group(1)
            blocks[key] = ""
        elif key is not None and (line.startswith(" ") or not line):
            blocks[key] += line.strip() + " "
        else:
            key = None
    return blocks


def shown_default(value: object) -> str:
    if isinstance(value, tuple):
        return "empty" if not value else f"``{' '.join(map(str, value))}``"
    if isinstance(value, float):
        return f"``{int(value)}``" if value.is_integer() else f"``{value:g}``"
    return f"``{value}``"


def test_every_crashd_key_is_described_with_its_default_and_bound() -> None:
    man5 = sections(PAGE_5, "=")
    blocks = key_blocks(man5["[crashd] SECTION"])
    fields = {key: config.value(config.Settings(), key) for key in config.KEYS}
    assert set(blocks) == set(fields), set(blocks) ^ set(fields)
    for key, default in fields.items():
        assert f"Default: {shown_default(default)}" in blocks[key], (key, default, blocks[key])
        assert "Bound: " in blocks[key], key


def test_every_consent_key_is_described() -> None:
    blocks = key_blocks(sections(PAGE_5, "=")["[consent] SECTION"])
    assert set(blocks) == {"locked", *consent._LOCKABLE}
    assert "Default: ``false``" in blocks["locked"]
    assert all("Default: " in text and "Bound: " in text for text in blocks.values())


def test_the_installed_config_file_lists_every_key_too() -> None:
    shipped = (REPO / "data" / "crashd.conf").read_text()
    listed = set(re.findall(r"^#([a-z_]+) =", shipped, re.MULTILINE))
    keys = set(config.KEYS) | {"locked", *consent._LOCKABLE}
    assert listed == keys, listed ^ keys


def test_conf_page_is_what_the_parser_accepts(tmp_path: Path) -> None:
    """Every key crashd.conf(5) names is accepted by the parser with a value inside its bound."""
    path = tmp_path / "crashd.conf"
    keys = key_blocks(sections(PAGE_5, "=")["[crashd] SECTION"])
    path.write_text("[crashd]\n" + "".join(f"{key} = {_sample(key)}\n" for key in sorted(keys)))
    settings = config.load_settings(path, environ={})
    assert settings.hooks.timeout == 1.5 and settings.unprivileged_user == "nobody"
    assert settings.metered == "hold"
    path.write_text("[crashd]\nno_such_key = 1\n")
    with pytest.raises(config.ConfigError, match="unknown key 'no_such_key'"):
        config.load_settings(path, environ={})


def _sample(key: str) -> str:
    samples = {"url": "https://errors.example.com", "crash_dir": "/tmp", "state_dir": "/tmp",
               "hook_dirs": "/a /b", "unprivileged_user": "nobody", "hook_user": "daemon",
               "hook_python": "/usr/bin/python3", "metered": "hold", "max_keys": "100", "max_key_length": "64",
               "hook_open_files": "64", "hook_processes": "16"}  # fmt: skip
    return samples.get(key, "1.5")


@pytest.mark.parametrize(("page", "header"), [("crashd.8", r'\.TH "CRASHD" "?8"? '),
                                              ("crashd.conf.5", r'\.TH "CRASHD\.CONF" "?5"? ')])  # fmt: skip
def test_pages_build_with_rst2man_strict(tmp_path: Path, page: str, header: str) -> None:
    rst2man = shutil.which("rst2man") or shutil.which("rst2man.py")
    if rst2man is None:
        pytest.skip("rst2man not found (Debian: python3-docutils)")
    out = tmp_path / page
    result = subprocess.run([rst2man, "--strict", str(MAN / f"{page}.rst"), str(out)],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    roff = out.read_text()
    assert len(re.findall(f"^{header}", roff, re.MULTILINE)) == 1, roff[-2000:]
    assert "SEE ALSO" in roff
