"""``crashd show FILE``: decode one report, or (``--what-is-sent``) print what its first upload carries."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crashd.cli._base import EXIT_OK, UsageError

if TYPE_CHECKING:
    from crashd.preview import Preview
    from crashd.report import Digest, Report

NAME = "show"


def add_parser(commands: Any) -> None:
    show = commands.add_parser(
        NAME,
        help="decode one report",
        description="Decode one report file as apport's loader reads it. Text fields are printed; binary "
        "fields are summarised by decoded size and sha256 (they are streamed, never loaded whole). With "
        "--what-is-sent, print instead exactly what the first upload of the report as it stands will carry "
        "(the same code builds the upload).",
    )
    show.add_argument("file", type=Path, metavar="FILE", help="a .crash report (symbolic links are refused)")
    show.add_argument("--json", action="store_true", help="print one JSON object: path, problem_type, fields")
    show.add_argument(
        "--what-is-sent",
        action="store_true",
        help="print exactly the fields the first upload will carry, in the order it sends them, whether "
        "the package hooks have run, and the core that is sent if the server asks for it",
    )


def run(args: argparse.Namespace) -> int:
    from crashd.cli._common import settings_from
    from crashd.preview import what_is_sent
    from crashd.report import read_report
    from crashd.spool import open_file

    limits = settings_from(args).limits  # a bad configuration file is exit 2, in main()
    try:
        opened = open_file(args.file)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as error:
        raise UsageError(f"{args.file}: {error.strerror}") from None
    with opened, opened.file() as f:
        report = read_report(f, limits=limits, name=str(args.file))
        if args.what_is_sent:
            return _show_what_is_sent(what_is_sent(report, str(args.file)), as_json=args.json)
        digests = {key: report.digest(key) for key in report}
    if args.json:
        print(json.dumps(_show_json(str(args.file), report, digests)))
    else:
        _show_text(str(args.file), report, digests)
    return EXIT_OK


def _show_json(path: str, report: Report, digests: dict[str, Digest]) -> dict[str, object]:
    fields: dict[str, dict[str, object]] = {}
    for key, digest in digests.items():
        field: dict[str, object] = {
            "binary": report.entries[key].binary,
            "size": digest.size,
            "sha256": digest.sha256,
        }
        if digest.text is not None:
            field["text"] = digest.text
        fields[key] = field
    problem_type = digests["ProblemType"].text if "ProblemType" in digests else None
    return {"path": path, "problem_type": problem_type, "fields": fields}


def _show_text(path: str, report: Report, digests: dict[str, Digest]) -> None:
    from crashd.signature import crash_signature

    kind = digests["ProblemType"].text if "ProblemType" in digests else None
    print(f"# {path}: {kind or 'no ProblemType'}, {len(report)} fields")
    text = {key: digest.text for key, digest in digests.items() if digest.text is not None}
    if (signature := crash_signature(text)) is not None:
        print(f"# crash signature: {signature}")
    for key, digest in digests.items():
        binary = "binary, " if report.entries[key].binary else ""
        if digest.text is None:
            what = "text" if digest.is_text else "data"
            print(f"{key}: <{binary}{what}, {digest.size} bytes, sha256 {digest.sha256}>")
        elif "\n" in digest.text:
            print(f"{key}:\n " + digest.text.replace("\n", "\n "))
        else:
            print(f"{key}: {digest.text}")


def _show_what_is_sent(preview: Preview, *, as_json: bool) -> int:
    if as_json:
        print(json.dumps(preview.as_json()))
        return EXIT_OK
    print(f"# {preview.path}: the first upload carries these {len(preview.fields)} fields, in this order")
    if preview.not_sent:
        print(f"# but it is never sent: {preview.not_sent}")
    if preview.hooks_run:
        print("# package hooks have already run: these are the fields as they will be sent")
    else:
        print("# package hooks have not run yet (no _HooksRun: yes): they run before the upload and may "
              "add or change fields")  # fmt: skip
    if preview.core is not None:
        core = preview.core
        print(f"# core: not in this upload; if the server asks for it, {core.size} bytes (base64, "
              f"architecture {core.architecture}) are sent")  # fmt: skip
    else:
        print(f"# core: none can be sent ({preview.core_unavailable})")
    for key, value in preview.fields:
        print(f"{key}:\n " + value.replace("\n", "\n ") if "\n" in value else f"{key}: {value}")
    return EXIT_OK
