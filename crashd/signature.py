"""apport's crash signature: the string that says two reports are one crash (research/apport.md §5.1).

A pure function of a report's text fields, so that it can be computed on the
device — for ``crashd show``, and to recognise a repeated crash — exactly as
apport and the crash database compute it. The first rule that applies wins:

1. a KernelCrash with a Stacktrace: ``kernel:fn:fn:…``;
2. SIGABRT with an AssertionMessage: ``<exe>:<message>`` (addresses → ``ADDR``);
3. StacktraceTop and Signal: ``<exe>:<signal>:fn:fn:…`` (no ``??`` frame);
4. a Python Traceback: ``<exe>:<Exception>[(<qualifier>)]:frame:…``;
5. a suspend/resume KernelOops: ``<Failure>[:<MachineType>][:<dmi.bios.version>]``;
6. an OopsText: what the kernel could not handle, the IP function and the call trace.

crashd does not write it into ``DuplicateSignature``: daisy buckets a report
with one at once and then never asks for its core.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

_KERNEL_FRAME = re.compile(r"^\s*#\d+\s\[\w+\]\s(\w+)")
_ADDRESS = re.compile(r"0x[0-9a-f]{6,}")
_TOP_FRAME = re.compile(r"^(?:([\w:~]+).*|(<signal handler called>)\s*)$")
_PY_FRAME = re.compile(r'^\s*File "(.*)", line (\d+), in (.+)$')
_PY_ONE_LINE = re.compile(r"(\w+): ")
_OOPS_WHAT = re.compile(r"BUG: unable to handle (.*) at ")
_OOPS_IP = re.compile(r"IP: \[<[0-9a-f]+>\] (.*)")
_OOPS_CALL = re.compile(r"^\s+\[<[0-9a-f]+>\] (.+)$")


def crash_signature(fields: Mapping[str, str]) -> str | None:
    """The crash signature of a report given its text fields, or None when it has none."""
    kind = fields.get("ProblemType", "")
    if kind == "KernelCrash" and "Stacktrace" in fields:
        matches = (_KERNEL_FRAME.match(line) for line in fields["Stacktrace"].splitlines())
        return ":".join(["kernel", *(match.group(1) for match in matches if match)])
    if "ExecutablePath" not in fields:
        failure = fields.get("Failure", "")
        if kind == "KernelOops" and ("suspend" in failure or "resume" in failure):
            parts = [fields["Failure"], fields.get("MachineType", ""), fields.get("dmi.bios.version", "")]
            return ":".join(part for part in parts if part)
        return _oops_signature(fields.get("OopsText", "")) if "OopsText" in fields else None
    exe = fields["ExecutablePath"]
    if fields.get("Signal") == "6" and "AssertionMessage" in fields:
        return f"{exe}:{_ADDRESS.sub('ADDR', fields['AssertionMessage'])}"
    if "StacktraceTop" in fields and "Signal" in fields:
        return _stack_signature(exe, fields["Signal"], fields["StacktraceTop"])
    if "Traceback" in fields:
        return _python_signature(exe, fields["Traceback"], fields.get("_PythonExceptionQualifier"))
    return None


def _stack_signature(exe: str, signal: str, top: str) -> str | None:
    frames = []
    for line in top.splitlines():
        match = _TOP_FRAME.match(line)
        if match is None:
            return None  # an unresolved frame ("?? ()"): no signature without symbols
        frames.append(match.group(1) or match.group(2))
    return ":".join([exe, signal, *frames]) if len(frames) >= 2 else None


def _python_signature(exe: str, traceback: str, qualifier: str | None) -> str | None:
    lines = traceback.splitlines()
    if len(lines) == 1:
        match = _PY_ONE_LINE.match(lines[0])
        return f"{exe}:{match.group(1)}" if match else None
    if len(lines) < 3:
        return None
    exception = lines[-1].split(":", 1)[0].strip()
    parts = [exe, exception + (f"({qualifier})" if qualifier else "")]
    for line in lines:
        match = _PY_FRAME.match(line)
        if match is None:
            continue
        path, number, function = match.groups()
        parts.append(f"{os.path.realpath(path)}@{number}" if function == "<module>" else function)
    return ":".join(parts)


def _oops_signature(text: str) -> str | None:
    parts = []
    for line in text.splitlines():
        match = _OOPS_WHAT.search(line) or _OOPS_IP.search(line) or _OOPS_CALL.match(line)
        if match and not match.group(1).startswith("?"):  # "? fn" frames are guesses
            parts.append(match.group(1))
    return ":".join(parts) or None
