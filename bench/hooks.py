"""hooks: what running a report's hooks costs — a new child, a kept hook host, and each further hook.

DESIGN.md §8: < 80 ms per hook (fork, uid switch, interpreter start). One child runs all of a
report's hooks, so the figure has parts: the fixed cost of a child (one trivial hook, the user's
hook host closed first, so the report starts one: the first report of a burst), the same report
run by the host the report before left (issue 15: ≤ 15 ms for ``.upload`` → body with one package
hook; crashd.hooks.host), and what each further hook adds (21 hooks against 1, both on a kept
host). A bare ``python3 -I -c pass`` started as the same user is the floor: the interpreter start
a child per report cannot avoid.

End to end (issue 15's own measure): ``bench.daemon``'s *manual* latency — ``NAME.upload``
created for a held report → its body at the loopback daisy, each report meeting an idle daemon —
on "spec" reports (``bench.reports``: no ``Dependencies`` yet, so their hooks are due), with a
``crashd.conf`` of ours that gives the daemon one package hook for their package (``hook_dirs``) and
the throwaway user as ``hook_user`` (the reports are root's); against the same without the hook. The
reports come a few ms apart, so all but the first meet the kept host.

The hooks run through the real runner (``crashd.hooks.run_hooks``) as a throwaway user made for
the run (``useradd``; deleted afterwards), from a hook tree of the benchmark's own. The three
measurements are interleaved round by round, so a change of load on a shared machine touches
all of them alike. Needs root (the child switches uid): skipped otherwise.

This was an assertion in tests/test_hooks.py; a wall-clock figure is not a test's to assert
on a shared 2-core machine (issue 14), so it is reported here.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench._common import Stats
from crashd.hooks import HookRoots, host, run_hooks
from crashd.hooks.accounts import Account, interpreter_for

TARGET_MS = 80
KEPT_TARGET_MS = 15  # issue 15, for the whole of `.upload` -> body; the hook part is measured here
EXTRA = 20  # the further hooks of the second measurement


def _tree(base: Path, hook_count: int) -> HookRoots:
    general = base / "general"
    general.mkdir(parents=True)
    for i in range(hook_count):
        (general / f"h{i:02}.py").write_text(f"def add_info(report):\n    report['T{i}'] = '1'\n")
    return HookRoots(general=(general,), package=(base / "package",), opt=base / "opt")


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _measure(uid: int, gid: int, base: Path, rounds: int) -> dict[str, Stats]:
    roots = {count: _tree(base / f"tree{count}", count) for count in (1, 1 + EXTRA)}
    python = interpreter_for(Account.from_passwd(pwd.getpwuid(uid)))
    report = {"ProblemType": "Crash", "ExecutablePath": "/usr/bin/true"}

    def hooks(count: int) -> None:
        result = run_hooks(report, owner_uid=uid, roots=roots[count])
        assert len(result.ran) == count and not result.errors, result.errors

    def bare() -> None:
        subprocess.run(
            [python, "-I", "-c", "pass"], user=uid, group=gid, extra_groups=[], check=True, timeout=60
        )

    hooks(1), hooks(1 + EXTRA), bare()  # warm caches: the interpreter probe, the page cache
    samples: dict[str, list[float]] = {"one": [], "kept": [], "many": [], "bare": []}
    for _ in range(rounds):
        host.close_all()  # the next report starts a child
        samples["one"].append(_timed(lambda: hooks(1)))
        samples["kept"].append(_timed(lambda: hooks(1)))  # run by the host the report before left
        samples["many"].append(_timed(lambda: hooks(1 + EXTRA)))
        samples["bare"].append(_timed(bare))
    host.close_all()  # before userdel: an idle host is a process of the user
    return {name: Stats(tuple(values)) for name, values in samples.items()}


def _tool(name: str) -> str:
    return (
        shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])) or name
    )


def _end_to_end(user: str, base: Path, count: int) -> tuple[Stats, Stats]:
    """Seconds from ``NAME.upload`` to the body at the server: with one package hook that applies,
    and (the same run's baseline) with none."""
    from bench.daemon import _daisy, _latency_manual
    from bench.reports import spec_report

    hooks = base / "e2e-hooks"
    hooks.mkdir(mode=0o755)
    package = spec_report(0)["Package"].split()[0]  # every "spec" report's: the hook applies to each
    (hooks / f"{package}.py").write_text("def add_info(report):\n    report['BenchHook'] = 'ran'\n")
    config = base / "crashd.conf"
    config.write_text(f"[crashd]\nhook_dirs = {hooks}\nhook_user = {user}\n")
    work, baseline = base / "e2e", base / "e2e-no-hook"
    work.mkdir()
    baseline.mkdir()
    with _daisy(work / "daisy.log") as daisy:  # a server each: the reports' bodies are alike (daisy: 409)
        samples = _latency_manual(work, daisy, count, "spec", config=config)  # hooks due: no Dependencies
    with _daisy(baseline / "daisy.log") as daisy:
        without = _latency_manual(baseline, daisy, count, "spec")
    ran = sum(
        b"\nBenchHook: ran\n" in p.read_bytes() for p in (work / "crash-latency-manual-spec").glob("*.crash")
    )
    if ran != count:  # written back before the upload: every report must have run the hook
        raise RuntimeError(f"the package hook ran for {ran} of {count} reports; see {work}")
    return Stats(tuple(ms / 1000 for ms in samples)), Stats(tuple(ms / 1000 for ms in without))


def run(quick: bool = False) -> dict[str, object]:
    if os.geteuid() != 0:
        print("hooks: skipped, needs root (the hook child switches uid)")
        return {"skipped": "needs root"}
    rounds = 5 if quick else 15
    name = f"crashdb-{secrets.token_hex(4)}"
    subprocess.run(
        [_tool("useradd"), "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    base = Path(tempfile.mkdtemp(prefix="crashd-bench-hooks-"))
    try:
        base.chmod(0o711)  # the hook user reads the tree through it
        account = pwd.getpwnam(name)
        stats = _measure(account.pw_uid, account.pw_gid, base, rounds)
        stats["e2e"], stats["e2e_no_hook"] = _end_to_end(name, base, 20 if quick else 100)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run([_tool("userdel"), name], capture_output=True, check=False)
        subprocess.run([_tool("groupdel"), name], capture_output=True, check=False)
    one, kept, many = stats["one"].median, stats["kept"].median, stats["many"].median
    bare = stats["bare"].median
    per_hook = max(0.0, (many - kept) / EXTRA)
    for label, key in (("1 hook, new child", "one"), ("1 hook, kept host", "kept"),
                       (f"{1 + EXTRA} hooks, kept host", "many"), ("bare interpreter", "bare"),
                       (".upload → body, daemon, 1 package hook", "e2e"),
                       (".upload → body, daemon, no hook", "e2e_no_hook")):  # fmt: skip
        print(f"hooks: {label}: {stats[key].describe()}")
    verdict = "met" if one * 1000 < TARGET_MS and kept * 1000 <= KEPT_TARGET_MS else "MISSED"
    print(
        f"hooks: SUMMARY one hook {kept * 1000:.1f} ms on the user's kept host ({kept / bare:.2f}x a bare "
        f"`python3 -I -c pass` as that user: {bare * 1000:.1f} ms), {one * 1000:.1f} ms starting a child "
        f"({one / bare:.2f}x), {per_hook * 1000:.2f} ms per further hook: {verdict} "
        f"(< {TARGET_MS} ms; kept ≤ {KEPT_TARGET_MS} ms)"
    )
    e2e, no_hook = stats["e2e"], stats["e2e_no_hook"]
    e2e_ok = e2e.median * 1000 <= KEPT_TARGET_MS
    print(
        f"hooks: SUMMARY .upload → body at the server with one package hook: {e2e.median * 1000:.2f} ms median, "
        f"worst {e2e.worst * 1000:.1f} ms over {len(e2e.samples)}; without a hook {no_hook.median * 1000:.2f} ms "
        f"(≤ {KEPT_TARGET_MS} ms): "
        f"{'met' if e2e_ok else 'MISSED'}"
    )
    return {
        "e2e_upload_to_body_ms": {
            "median": e2e.median * 1000,
            "best": e2e.best * 1000,
            "worst": e2e.worst * 1000,
        },
        "e2e_no_hook_upload_to_body_ms": {"median": no_hook.median * 1000, "worst": no_hook.worst * 1000},
        "rounds": rounds,
        "target_ms": TARGET_MS,
        "kept_target_ms": KEPT_TARGET_MS,
        "one_hook_ms": one * 1000,
        "one_hook_kept_host_ms": kept * 1000,
        "per_further_hook_ms": per_hook * 1000,
        "bare_interpreter_ms": bare * 1000,
    }


if __name__ == "__main__":
    run("--quick" in sys.argv)
