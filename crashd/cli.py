"""``crashd COMMAND …``: the command line (DESIGN.md §9 is the contract scripts rely on).

Only this module decides exit codes and wording: the library raises, and
:func:`main` turns each error into one ``crashd: …`` line on stderr and a code:

    0  success, or nothing to do
    1  some report failed, was rejected or refused, or is still pending at the timeout
    2  usage or configuration error
    3  reporting is switched off by consent
    4  an input file is invalid (``show``, ``hook-test``)
    5  not allowed: polkit refused a preference change, or the administrator locked the preferences
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from crashd import __version__
from crashd.capture.coredump import add_ingest_coredump_command, cmd_ingest_coredump
from crashd.collector import Gate, HookOptions, Status
from crashd.config import DEFAULT_CONFIG, ConfigError, Settings, load_settings, seconds_argument
from crashd.consent import PREFERENCES, Consent, load_consent, may_send, set_preference
from crashd.delivery import Courier
from crashd.dependencies import explain as explain_dependency
from crashd.errors import CrashdError
from crashd.hooks import add_hook_test_command, cmd_hook_test
from crashd.identity import system_identifier
from crashd.network import NetworkGate, read_conditions
from crashd.policy import Backoff
from crashd.preview import Preview, what_is_sent
from crashd.report import DEFAULT_LIMITS, Digest, Report, ReportError, read_report
from crashd.signature import crash_signature
from crashd.spool import Spool, UnsafeFileError, open_file
from crashd.state import StateStore
from crashd.status import survey
from crashd.tidy import Tidy, read_ledger
from crashd.upload_all import upload_all
from crashd.uploader import DirectUploader, HttpTransport, Uploader
from crashd.worker import WorkerUploader

log = logging.getLogger("crashd")

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_CONSENT, EXIT_INVALID, EXIT_NOT_ALLOWED = 0, 1, 2, 3, 4, 5
# Who runs the upload worker when unprivileged_user does not exist: root never does the HTTP itself.
WORKER_FALLBACK_USER = "nobody"


class UsageError(CrashdError):
    """A problem with what the user asked for; exit 2."""


class NotAllowed(CrashdError):
    """The request was understood but refused (polkit, a lock, not root); exit 5, so that a script can
    tell "ask an administrator" from "fix the command line"."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"crashd: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="crashd",
        description="Collect crash reports from the crash directory and send them to a crash database "
        "speaking the Ubuntu Error Tracker (daisy) protocol.",
        epilog="Exit codes: 0 success or nothing to do; 1 a report failed, was rejected or refused, or is "
        "still pending; 2 usage or configuration error; 3 reporting is switched off; 4 invalid input file; "
        "5 not allowed (polkit refused, or the preferences are locked).",
    )
    parser.add_argument("--version", action="version", version=f"crashd {__version__}")
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="configuration file (default /etc/crashd/crashd.conf)"
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="say more (repeat for debug output)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    show = commands.add_parser(
        "show",
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

    upload = commands.add_parser(
        "upload-all",
        help="send every report in the crash directory now (for CI)",
        description="Validate every .crash report in the crash directory, stamp it .upload, send it to the "
        "crash database (and its core when the server asks), and stamp it .uploaded with the OOPS id. "
        "Invalid reports are listed with the reason and left untouched. Exits 0 only when every report "
        "was sent (or is a kind that is never sent: Bug, KernelCrash). NetworkManager is honoured as by the "
        "daemon: offline nothing is attempted, on a metered network cores (or, with metered = hold, "
        "everything) are held; held reports are listed and the exit status is 1. First, reports of one "
        "crash (same signature, executable, version and owner within duplicate_window) are collapsed "
        "into one, counted in its CrashCounter, and the crash directory is kept within max_use. A "
        ".uploaded stamp of whoopsie's (owned by its user) counts as sent: what whoopsie sent is not "
        "sent again.",
    )
    upload.add_argument(
        "--timeout",
        type=seconds_argument,
        metavar="S",
        help="give up after S seconds; what is left is pending",
    )
    upload.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    _add_locations(upload, url=True)

    daemon = commands.add_parser(
        "daemon",
        help="the service: watch the crash directory and send reports (systemd starts it)",
        description="Watch the crash directory with inotify and deliver reports as consent allows: with "
        "automatic reporting every new report, otherwise those a UI marked .upload; failures are retried "
        "with backoff. Follows NetworkManager: offline nothing is attempted; on a metered network cores wait "
        "for an unmetered one (config key metered = send | reports-only | hold), and go out as soon as the "
        "network changes. Exits 0 when nothing is due within the idle timeout (crashd.path and crashd.timer "
        "start it again). Honours SIGTERM at once.",
    )
    daemon.add_argument("--once", action="store_true", help="process what is there now, then exit")
    daemon.add_argument(
        "--idle-timeout", type=seconds_argument, metavar="S", help="exit after S idle seconds (30)"
    )
    _add_locations(daemon, url=True)

    prefs = commands.add_parser(
        "prefs",
        help="show or change the crash-reporting preferences",
        description="Show the consent preferences (ReportCrashes: may anything be sent at all; "
        "AutomaticallyReportCrashes: send without asking; ReportMetrics, kept for whoopsie's clients), "
        "or set one. Settings UIs change the same values over D-Bus. The file lives in the state directory; "
        "an administrator can lock it in /etc/crashd/crashd.conf ([consent] locked = true).",
    )
    prefs.add_argument("action", nargs="?", choices=["get", "set"], default="get")
    prefs.add_argument("name", nargs="?", choices=list(PREFERENCES), help="with set: the preference")
    prefs.add_argument("value", nargs="?", choices=["on", "off"], help="with set: on or off")
    prefs.add_argument("--json", action="store_true", help="print the preferences as one JSON object")
    prefs.add_argument(
        "--offline", action="store_true", help="as root: change the file directly, not through D-Bus"
    )
    prefs.add_argument(
        "--state-dir", metavar="DIR", help="crashd's state directory (default /var/lib/crashd)"
    )

    add_hook_test_command(commands)
    add_ingest_coredump_command(commands)

    status = commands.add_parser(
        "status",
        help="every report with its state",
        description="List every report in the crash directory with its delivery state, attempts, next "
        "attempt, OOPS id and last error; what waits for the network (offline, or metered, as NetworkManager "
        "reports it now) reads held, with the reason. Sends nothing.",
    )
    status.add_argument("--json", action="store_true", help='print {"reports": [...]} as one JSON object')
    _add_locations(status, url=False)

    identifier = commands.add_parser(
        "identifier",
        help="print the system identifier",
        description="Print the anonymous system identifier sent with every report (whoopsie-compatible: "
        "SHA-512 of the DMI product UUID; override with CRASH_DB_IDENTIFIER).",
    )
    identifier.add_argument("--state-dir", metavar="DIR", help="where the identifier is cached")
    return parser


def _add_locations(parser: argparse.ArgumentParser, *, url: bool) -> None:
    parser.add_argument(
        "--crash-dir", metavar="DIR", help="crash directory (default /var/crash, $APPORT_REPORT_DIR)"
    )
    parser.add_argument(
        "--state-dir", metavar="DIR", help="crashd's state directory (default /var/lib/crashd)"
    )
    if url:
        parser.add_argument(
            "--url", metavar="URL", help="crash database (default https://daisy.ubuntu.com, $CRASH_DB_URL)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
        format="crashd: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _COMMANDS[args.command](args)
    except UsageError as error:
        return _fail(EXIT_USAGE, str(error))
    except NotAllowed as error:
        return _fail(EXIT_NOT_ALLOWED, str(error))
    except ConfigError as error:
        return _fail(EXIT_USAGE, f"configuration error: {error}")
    except (ReportError, UnsafeFileError) as error:
        return _fail(EXIT_INVALID, str(error))
    except KeyboardInterrupt:
        return 130
    except ImportError as error:  # an installed dependency too old for crashd (dependencies.py)
        if (problem := explain_dependency(error)) is None:
            raise
        return _fail(EXIT_USAGE, problem)


def _fail(code: int, message: str) -> int:
    print(f"crashd: {message}", file=sys.stderr)
    return code


def _settings(args: argparse.Namespace) -> Settings:
    names = ("url", "crash_dir", "state_dir")
    return load_settings(args.config, overrides={name: getattr(args, name, None) for name in names})


# -- show -----------------------------------------------------------------------------


def cmd_show(args: argparse.Namespace) -> int:
    try:
        opened = open_file(args.file)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as error:
        raise UsageError(f"{args.file}: {error.strerror}") from None
    with opened, opened.file() as f:
        report = read_report(f, name=str(args.file))
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


# -- upload-all -----------------------------------------------------------------------


def cmd_upload_all(args: argparse.Namespace) -> int:
    settings = _settings(args)
    consent = load_consent(settings.state_dir, config=args.config or DEFAULT_CONFIG)
    if not consent.report_crashes:
        return _fail(EXIT_CONSENT, f"{_switched_off(consent)}: nothing was sent")
    _exit_on_signals()
    system_id = _identifier(settings)
    deadline = None if args.timeout is None else time.time() + args.timeout
    store = StateStore.open(settings.state_dir)
    backoff = _backoff(settings)
    if args.timeout is not None:
        backoff = backoff.interactive(args.timeout)
    uploader = _uploader(settings, None if args.timeout is None else time.monotonic() + args.timeout)
    try:
        courier = Courier(uploader, settings.url, system_id, store, backoff, network=_network(settings))
        with _spool(settings.crash_dir) as spool:
            if os.geteuid() != 0:
                log.info("not running as root: only reports this user may read can be sent")
            hooks = _hooks(settings)
            _tidy(spool, store, settings)()  # duplicates collapsed and the budget kept before sending
            summary = upload_all(spool, courier, limits=DEFAULT_LIMITS, deadline=deadline, hooks=hooks)
            store.collect(spool.exists)  # records of reports that are gone (issue 11: bounded state)
    finally:
        uploader.close()
    if args.json:
        print(json.dumps(summary.as_json()))
    else:
        _print_statuses(summary.reports, settings.crash_dir)
    return EXIT_OK if summary.complete else EXIT_INCOMPLETE


def _uploader(settings: Settings, transport_deadline: float | None) -> Uploader:
    """Where the HTTP happens: as root, in the unprivileged upload worker (DESIGN.md §2); else right here.

    A user flushing their own reports has no privilege to shed. Root never opens a
    network socket itself (fail closed, issue 11): without ``unprivileged_user``
    (sysusers.d/crashd.conf not applied, e.g. after ``pip install``) the worker
    runs as ``nobody``, said once in the log; without that either, nothing is sent.
    """
    if os.geteuid() != 0:
        transport = HttpTransport(settings.connect_timeout, settings.read_timeout, transport_deadline)
        return DirectUploader(transport)
    user = _worker_user(settings.unprivileged_user)
    try:
        return WorkerUploader(user, settings.connect_timeout, settings.read_timeout, transport_deadline)
    except ValueError as error:  # uid or gid 0: the point of the split would be lost
        raise ConfigError(f"unprivileged_user {settings.unprivileged_user!r}: {error}") from None


def _worker_user(name: str) -> pwd.struct_passwd:
    """*name*'s account, else ``nobody``'s (said once); without either, a ConfigError saying what to do."""
    chosen = _worker_name(name)
    try:
        user = pwd.getpwnam(chosen)
    except KeyError:
        raise ConfigError(
            f"unprivileged_user {name!r} does not exist, nor does {WORKER_FALLBACK_USER!r}: root never "
            f"uploads itself; {_create_hint(name)}"
        ) from None
    if chosen != name:
        log.warning("the user %r for the upload worker does not exist: it runs as %r instead; %s",
                    name, chosen, _create_hint(name))  # fmt: skip
    return user


def _worker_name(name: str) -> str:
    """The user the upload worker runs as: *name*, or ``nobody`` when *name* does not exist. The hooks
    of root's reports must never share it (``HookOptions.worker_user``)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return WORKER_FALLBACK_USER
    return name


def _create_hint(name: str) -> str:
    return f"create it with 'systemd-sysusers' (crashd's sysusers.d file) or 'useradd --system {name}'"


def _network(settings: Settings) -> NetworkGate | None:
    """What NetworkManager says now (one look), for the commands that do not follow it; None without it."""
    return read_conditions(settings.metered)


def _exit_on_signals() -> None:
    """Stop at once on SIGTERM/SIGINT, even mid-upload: every step is recorded before it is taken.

    Waiting for a hung server to time out would break "stop within a second";
    a report cut off mid-POST is resent next time and daisy answers 409.
    """

    def stop(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        print(f"crashd: stopped by {name}; unfinished reports stay pending", file=sys.stderr)
        os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


def _hooks(settings: Settings) -> HookOptions:
    return HookOptions(
        extra_dirs=settings.hook_dirs, timeout=settings.hook_timeout, fallback_user=settings.hook_user,
        worker_user=_worker_name(settings.unprivileged_user),  # hooks never share the worker's uid
        python=settings.hook_python,
    )  # fmt: skip


def _backoff(settings: Settings) -> Backoff:
    return Backoff(
        base=settings.backoff_base,
        cap=settings.backoff_cap,
        expire_after=settings.expire_after,
        server_base=settings.backoff_server_base,
    )


def _print_statuses(statuses: Iterable[Status], crash_dir: Path) -> None:
    printed = False
    for status in statuses:
        printed = True
        notes = [f"OOPS {status.oops_id}" if status.oops_id else ""]
        if status.attempts:
            notes.append(f"{status.attempts} attempt{'s' if status.attempts > 1 else ''}")
        if status.next_attempt:
            notes.append(f"next {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(status.next_attempt))}")
        if status.detail:
            notes.append(f"({status.detail})")
        print(f"{status.state.value:<9} {status.name}  {'  '.join(filter(None, notes))}".rstrip())
    if not printed:
        print(f"no reports in {crash_dir}")


# -- daemon -----------------------------------------------------------------------------


def cmd_daemon(args: argparse.Namespace) -> int:
    # Imported here: the service's dependencies (asyncio, inotify, dbus-fast) would cost every other
    # command its start-up time and ~6 MiB.
    from crashd.daemon import Daemon, DBusSettings, journal_logging
    from crashd.daemon import run as run_daemon
    from crashd.network import Monitor

    settings = _settings(args)
    if not journal_logging(logging.INFO) and not args.verbose:
        logging.getLogger().setLevel(logging.INFO)  # a service says what it does
    config = args.config or DEFAULT_CONFIG
    system_id = _identifier(settings)
    store = StateStore.open(settings.state_dir)
    uploader = _uploader(settings, None)
    monitor = Monitor(settings.metered)
    try:
        courier = Courier(uploader, settings.url, system_id, store, _backoff(settings), network=monitor.hold)
        gate = _consent_gate(settings, config)
        with _spool(settings.crash_dir) as spool:
            store.collect(spool.exists)  # records of reports that are gone (issue 11: bounded state)
            idle = args.idle_timeout or settings.idle_timeout
            dbus = DBusSettings(
                settings.state_dir, config,
                lambda: survey(spool, StateStore.reader(settings.state_dir), gate, monitor.hold),
            )  # fmt: skip
            return run_daemon(
                lambda: Daemon(
                    spool,
                    courier,
                    DEFAULT_LIMITS,
                    gate,
                    idle_timeout=idle,
                    once=args.once,
                    hooks=_hooks(settings),
                    dbus=dbus,
                    monitor=monitor,
                    tidy=_tidy(spool, store, settings),
                )
            )
    finally:
        uploader.close()


def _tidy(spool: Spool, store: StateStore, settings: Settings) -> Tidy:
    """Duplicate collapse and the disk budget (crashd.tidy); its ledger beside the records, if usable."""
    state_dir = settings.state_dir if store.directory is not None else None
    return Tidy(spool, store, state_dir, window=settings.duplicate_window, max_use=settings.max_use)


def _consent_gate(settings: Settings, config: Path) -> Gate:
    """Consent as the daemon asks it, read afresh every time, so a change applies to the next report."""

    def gate(marked_for_upload: bool) -> str | None:
        consent = load_consent(settings.state_dir, config=config)
        if may_send(consent, marked_for_upload=marked_for_upload):
            return None
        if not consent.report_crashes:
            return _switched_off(consent)
        return "waiting for someone to send it: automatic reporting is off"

    return gate


def _switched_off(consent: Consent) -> str:
    why = consent.reason or "ReportCrashes is off; 'crashd prefs set ReportCrashes on' switches it on"
    return f"reporting is switched off ({why})"


# -- prefs ------------------------------------------------------------------------------


def cmd_prefs(args: argparse.Namespace) -> int:
    settings, config = _settings(args), args.config or DEFAULT_CONFIG
    if args.action == "set":
        if args.name is None or args.value is None:
            raise UsageError(f"prefs set needs NAME on|off (NAME: {', '.join(PREFERENCES)})")
        if args.offline:
            try:
                consent = set_preference(settings.state_dir, args.name, args.value == "on", config=config)
            except PermissionError as error:  # ConsentLocked, or not root
                raise NotAllowed(f"cannot change {args.name}: {error}") from None
        else:
            local = load_consent(settings.state_dir, config=config)
            consent = _set_over_dbus(args.name, args.value == "on", local)
        if args.name == "ReportCrashes" and args.value == "on" and not consent.report_crashes:
            print(f"crashd: stored, but {_switched_off(consent)}", file=sys.stderr)
    else:
        consent = load_consent(settings.state_dir, config=config)
    if args.json:
        print(json.dumps({**consent.as_properties(), "Locked": consent.locked, "Reason": consent.reason}))
        return EXIT_OK
    for name, value in consent.as_properties().items():
        print(f"{name}: {'on' if value else 'off'}")
    print(
        f"Locked: {'yes' if consent.locked else 'no'}" + (f"  ({consent.reason})" if consent.reason else "")
    )
    return EXIT_OK


def _set_over_dbus(name: str, value: bool, local: Consent) -> Consent:
    """Change one preference through the running service (polkit decides; D-Bus activation starts it).
    The bus carries no reason, so the one read locally (the lock, a legacy switch) is shown with it."""
    from crashd import dbus_client  # dbus-fast only for the one command that needs the bus

    try:
        now = dbus_client.set_preference(name, value)
    except dbus_client.NotAuthorized as error:
        raise NotAllowed(f"cannot change {name}: {error}") from None
    except dbus_client.BusUnavailable as error:
        hint = "as root, --offline changes the file directly"
        raise UsageError(f"cannot change {name}: {error} ({hint})") from None
    return Consent(now.report_crashes, now.automatic, now.report_metrics, now.locked, local.reason)


# -- status -----------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with _spool(settings.crash_dir) as spool:
        gate = _consent_gate(settings, args.config or DEFAULT_CONFIG)
        statuses = survey(spool, StateStore.reader(settings.state_dir), gate, _network(settings))
        ledger = read_ledger(settings.state_dir)
        if args.json:  # streamed, a report at a time: the text of json.dumps({"reports": [...], **ledger})
            sys.stdout.write('{"reports": [')
            for n, status in enumerate(statuses):
                sys.stdout.write((", " if n else "") + json.dumps(status.as_json()))
            rest = (f", {json.dumps(key)}: {json.dumps(value)}" for key, value in ledger.as_json().items())
            sys.stdout.write(f"]{''.join(rest)}}}\n")
        else:
            _print_statuses(statuses, settings.crash_dir)
            for line in ledger.lines():
                print(line)
    return EXIT_OK


def _spool(directory: Path) -> Spool:
    try:
        return Spool(directory)
    except FileNotFoundError:
        raise UsageError(f"the crash directory {directory} does not exist") from None
    except (NotADirectoryError, PermissionError) as error:
        raise UsageError(f"the crash directory {directory} cannot be used: {error.strerror}") from None
    except UnsafeFileError as error:
        raise UsageError(f"the crash directory {error}") from None


# -- identifier -----------------------------------------------------------------------


def cmd_identifier(args: argparse.Namespace) -> int:
    print(_identifier(_settings(args)))
    return EXIT_OK


def _identifier(settings: Settings) -> str:
    try:
        return system_identifier(settings.state_dir)
    except (LookupError, ValueError) as error:
        raise UsageError(f"{error} (set CRASH_DB_IDENTIFIER to choose one)") from None


_COMMANDS = {
    "daemon": cmd_daemon,
    "hook-test": cmd_hook_test,
    "ingest-coredump": cmd_ingest_coredump,
    "prefs": cmd_prefs,
    "show": cmd_show,
    "upload-all": cmd_upload_all,
    "status": cmd_status,
    "identifier": cmd_identifier,
}
