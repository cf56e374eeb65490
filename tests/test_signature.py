"""apport's crash signature, computed on the device: the same string apport gives, for every fixture."""

from __future__ import annotations

import contextlib

import pytest

from crashd.report import read_report
from crashd.signature import crash_signature
from tests.fixtures import APPORT, apport_manifest


def text_fields(path) -> dict[str, str]:
    with open(path, "rb") as f:
        report = read_report(f)
        fields = {}
        for key, entry in report.entries.items():
            if not entry.binary:
                with contextlib.suppress(UnicodeDecodeError):
                    fields[key] = report.text_bytes(key).decode()
        return fields


def cases():
    manifest = apport_manifest()
    return [pytest.param(record, id=record["file"]) for record in manifest["files"]] if manifest else []


@pytest.mark.parametrize("record", cases())
def test_signature_matches_apport(record):
    expected = (record.get("apport_functions") or {}).get("crash_signature")
    assert crash_signature(text_fields(APPORT / record["file"])) == expected


TABLE = [
    ({"ProblemType": "Crash"}, None),  # no ExecutablePath
    (
        {"ExecutablePath": "/bin/x", "Signal": "6", "AssertionMessage": "x.c:1: at 0xdeadbeef00"},
        "/bin/x:x.c:1: at ADDR",
    ),
    ({"ExecutablePath": "/bin/x", "Signal": "11", "StacktraceTop": "f ()\ng ()"}, "/bin/x:11:f:g"),
    ({"ExecutablePath": "/bin/x", "Signal": "11", "StacktraceTop": "f ()\n?? ()"}, None),  # no symbols
    ({"ExecutablePath": "/bin/x", "Signal": "11", "StacktraceTop": "f ()"}, None),  # one frame
    ({"ExecutablePath": "/bin/x", "Traceback": "ValueError: bad"}, "/bin/x:ValueError"),
    ({"ExecutablePath": "/bin/x", "Traceback": "Traceback:\nValueError: bad"}, None),
    (
        {
            "ExecutablePath": "/bin/x",
            "Traceback": 'Traceback (most recent call last):\n  File "/bin/x", line 3, in main\n    f()\nOSError: no',
        },
        "/bin/x:OSError:main",
    ),
    ({"ProblemType": "KernelOops", "Failure": "suspend/resume", "MachineType": "M"}, "suspend/resume:M"),
]


@pytest.mark.parametrize(("fields", "expected"), TABLE)
def test_signature_rules(fields, expected):
    assert crash_signature(fields) == expected
