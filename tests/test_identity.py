"""crashd.identity: known answers for both hashes, the override, the cache and
its failure modes, and the root-only product_uuid read as a normal user."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import pwd
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from crashd.identity import (
    CRASHD_APP_ID,
    ENV_VAR,
    check_override,
    hash_machine_id,
    hash_product_uuid,
    system_identifier,
)

UUID = b"4C4C4544-0042-3510-8051-B4C04F4E3132"
# sha512(UUID), pinned: errors.ubuntu.com/user/<id> links depend on it never changing.
UUID_ID = (
    "72dd5e46e4ecfdd390a40c64e347cdc36800a60d8c31754cc229eec822998fbf"
    "9808dd2eb1f7407a7074f3f03b99ac6a0cfd0dbbc2924f99d60f3b372311e317"
)
MACHINE_ID = "0123456789abcdef0123456789abcdef"
# HMAC-SHA-512(key=machine id bytes, msg=CRASHD_APP_ID), pinned so CRASHD_APP_ID never changes.
MACHINE_ID_ID = (
    "d6a53d131f1d1a3e3ad665fb5902b16e4543d93daef54f8f030983aa8224799e"
    "a79343fb04ea7051568397008a35853c2b31dea0f7325edafb94b0201610d118"
)


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    """Paths for product_uuid and machine-id (not created) and an empty state dir."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    return {"dmi": tmp_path / "product_uuid", "mid": tmp_path / "machine-id", "state": state}


def ident(sources: dict[str, Path], environ: dict[str, str] | None = None, *, state: bool = True) -> str:
    return system_identifier(
        sources["state"] if state else None,
        environ=environ or {},
        dmi_path=sources["dmi"],
        machine_id_path=sources["mid"],
    )


# --- the hashes -----------------------------------------------------------------------------------------


def test_product_uuid_known_answer(sources: dict[str, Path]) -> None:
    sources["dmi"].write_bytes(UUID + b"\n")
    assert hashlib.sha512(UUID).hexdigest() == UUID_ID
    assert ident(sources) == UUID_ID


@pytest.mark.parametrize("tail", [b"", b"\n", b"\nanything after the 36 bytes is ignored"])
def test_product_uuid_hashes_exactly_36_bytes(tail: bytes) -> None:
    assert hash_product_uuid(UUID + tail) == UUID_ID


def test_product_uuid_case_is_kept() -> None:
    lower = UUID.lower()
    assert hash_product_uuid(lower + b"\n") == hashlib.sha512(lower).hexdigest() != UUID_ID


@pytest.mark.parametrize(
    "data",
    [
        b"",
        UUID[:35],
        b"Not Settable\n",
        b"4C4C4544_0042_3510_8051_B4C04F4E3132\n",
        b"00000000-0000-0000-0000-000000000000\n",
        b"FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF\n",
    ],
)
def test_product_uuid_unusable(data: bytes) -> None:
    assert hash_product_uuid(data) is None


def test_machine_id_known_answer(sources: dict[str, Path]) -> None:
    sources["mid"].write_text(MACHINE_ID + "\n")
    expected = hmac.new(bytes.fromhex(MACHINE_ID), CRASHD_APP_ID, hashlib.sha512).hexdigest()
    assert len(CRASHD_APP_ID) == 16
    assert expected == MACHINE_ID_ID
    assert ident(sources) == MACHINE_ID_ID
    assert MACHINE_ID not in MACHINE_ID_ID


@pytest.mark.parametrize(
    "data",
    [b"", b"uninitialized\n", MACHINE_ID.upper().encode(), MACHINE_ID[:31].encode(), b"0" * 32 + b"\n"],
)
def test_machine_id_unusable(data: bytes) -> None:
    assert hash_machine_id(data) is None


def test_dmi_wins_over_machine_id(sources: dict[str, Path]) -> None:
    sources["dmi"].write_bytes(UUID + b"\n")
    sources["mid"].write_text(MACHINE_ID + "\n")
    assert ident(sources) == UUID_ID


@pytest.mark.parametrize("dmi", [None, b"Not Settable\n", b"00000000-0000-0000-0000-000000000000\n"])
def test_falls_back_to_machine_id_without_a_usable_dmi_uuid(
    sources: dict[str, Path], dmi: bytes | None
) -> None:
    if dmi is not None:
        sources["dmi"].write_bytes(dmi)
    sources["mid"].write_text(MACHINE_ID + "\n")
    assert ident(sources) == MACHINE_ID_ID


def test_nothing_usable_names_what_was_tried(sources: dict[str, Path]) -> None:
    sources["mid"].write_text("uninitialized\n")
    with pytest.raises(LookupError, match="no system identifier") as info:
        ident(sources)
    message = str(info.value)
    assert ENV_VAR in message
    assert f"{sources['dmi']} does not exist" in message
    assert f"{sources['mid']} does not hold" in message
    assert os.listdir(sources["state"]) == []


# --- the override ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["i_am_a_machine", "deadbeef" * 16, "x" * 256, "a.b-c~d:e@f"])
def test_override_wins_and_is_not_cached(sources: dict[str, Path], value: str) -> None:
    sources["dmi"].write_bytes(UUID + b"\n")
    (sources["state"] / "identifier").write_text(UUID_ID + "\n")
    assert ident(sources, {ENV_VAR: value}) == value
    assert (sources["state"] / "identifier").read_text() == UUID_ID + "\n"


def test_override_alone_needs_no_other_source(sources: dict[str, Path]) -> None:
    assert ident(sources, {ENV_VAR: "ci-box-7"}) == "ci-box-7"
    assert os.listdir(sources["state"]) == []


def test_empty_override_is_ignored(sources: dict[str, Path]) -> None:
    sources["dmi"].write_bytes(UUID + b"\n")
    assert ident(sources, {ENV_VAR: ""}) == UUID_ID


@pytest.mark.parametrize(
    "value", ["a/b", "../x", ".", "..", "two words", "x" * 257, "é", "a?b", "a#b", "a%2fb", "line\n", "tab\t"]
)
def test_bad_override_is_an_error_naming_the_variable(sources: dict[str, Path], value: str) -> None:
    with pytest.raises(ValueError, match=ENV_VAR):
        ident(sources, {ENV_VAR: value})
    with pytest.raises(ValueError, match=ENV_VAR):
        check_override(value)


# --- the cache ------------------------------------------------------------------------------------------


def test_computed_value_is_cached_and_reused(sources: dict[str, Path]) -> None:
    sources["dmi"].write_bytes(UUID + b"\n")
    assert ident(sources) == UUID_ID
    cache = sources["state"] / "identifier"
    st = os.lstat(cache)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644
    assert cache.read_text() == UUID_ID + "\n"
    assert os.listdir(sources["state"]) == ["identifier"]  # no temporary file left
    sources["dmi"].unlink()
    assert ident(sources) == UUID_ID  # from the cache alone


def test_without_a_state_dir_nothing_is_cached(sources: dict[str, Path]) -> None:
    sources["mid"].write_text(MACHINE_ID + "\n")
    assert ident(sources, state=False) == MACHINE_ID_ID
    assert os.listdir(sources["state"]) == []


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage\n", UUID_ID.upper().encode(), UUID_ID[:127].encode(), (UUID_ID + "\n\n").encode()],
)
def test_malformed_cache_is_recomputed_and_replaced(sources: dict[str, Path], content: bytes) -> None:
    (sources["state"] / "identifier").write_bytes(content)
    sources["mid"].write_text(MACHINE_ID + "\n")
    assert ident(sources) == MACHINE_ID_ID
    assert (sources["state"] / "identifier").read_text() == MACHINE_ID_ID + "\n"


def test_cache_without_newline_is_accepted(sources: dict[str, Path]) -> None:
    (sources["state"] / "identifier").write_text(MACHINE_ID_ID)
    assert ident(sources) == MACHINE_ID_ID


def test_symlinked_cache_is_not_followed(sources: dict[str, Path], tmp_path: Path) -> None:
    decoy = tmp_path / "decoy"
    decoy.write_text("f" * 128 + "\n")
    (sources["state"] / "identifier").symlink_to(decoy)
    sources["dmi"].write_bytes(UUID + b"\n")
    assert ident(sources) == UUID_ID
    assert not (sources["state"] / "identifier").is_symlink()
    assert (sources["state"] / "identifier").read_text() == UUID_ID + "\n"
    assert decoy.read_text() == "f" * 128 + "\n"


def test_failing_to_cache_is_not_an_error(
    sources: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sources["dmi"].write_bytes(UUID + b"\n")
    caplog.set_level(logging.DEBUG, logger="crashd.identity")
    missing = tmp_path / "no-such-dir"
    assert system_identifier(missing, environ={}, dmi_path=sources["dmi"]) == UUID_ID
    assert not missing.exists()
    assert "not caching the identifier" in caplog.text


def test_cache_write_failure_leaves_no_temporary_file(sources: dict[str, Path]) -> None:
    sources["dmi"].write_bytes(UUID + b"\n")
    cache = sources["state"] / "identifier"
    cache.mkdir()
    (cache / "x").write_bytes(b"")  # rename onto a non-empty directory fails
    assert ident(sources) == UUID_ID
    assert os.listdir(sources["state"]) == ["identifier"]


# --- as a normal user -----------------------------------------------------------------------------------

CHILD = """
import sys
from crashd.identity import system_identifier
try:
    print(system_identifier(None, environ={}, dmi_path=sys.argv[1], machine_id_path=sys.argv[2]))
except LookupError as e:
    print("LookupError:", e)
"""


def test_root_only_product_uuid_is_an_error_not_a_fallback(
    user_tmp_path: Path,
    make_user: Callable[[], pwd.struct_passwd],
    run_as: Callable[..., object],
) -> None:
    dmi, mid = user_tmp_path / "product_uuid", user_tmp_path / "machine-id"
    dmi.write_bytes(UUID + b"\n")
    dmi.chmod(0o400)  # as in sysfs
    mid.write_text(MACHINE_ID + "\n")
    mid.chmod(0o444)
    done = run_as(make_user(), CHILD, str(dmi), str(mid))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("LookupError: no system identifier: cannot read")
    assert str(dmi) in done.stdout and ENV_VAR in done.stdout
    dmi.unlink()  # no DMI at all: the machine id is the fallback, for users too
    done = run_as(make_user(), CHILD, str(dmi), str(mid))
    assert done.stdout.strip() == MACHINE_ID_ID
