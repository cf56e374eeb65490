"""parse: throughput of ``crashd.report`` on a generated corpus, and memory vs. core size.

DESIGN.md §8: "parse the shared corpus — apport's loader ≈ 440 reports/s; target ≥ 2x
apport; memory independent of core size". The default run compares with that external
anchor; ``--apport`` (:func:`compare_with_apport`, also part of the default run when
``APPORT_SRC`` is set) measures apport 2.36's own loader and a floor (a minimal line splitter)
in the same run, on three corpora, as ratios (bench/README.md says how to get its source).

Three passes over the same files, each in a fresh child so its peak RSS is its own:

* ``index``  — :func:`read_report` only (what collecting a report costs);
* ``decode`` — index + every text value + every binary value streamed, the work of
  apport's ``load(binary=True)``;
* ``digest`` — :meth:`Report.digest` of every field (what ``crashd show --json`` does).

Then one report with a 1 GiB core against one with a 1 MiB core, decode and digest:
peak RSS must not follow the core. The 40 shared fixtures are timed too when present.

Child mode (used by the parent): ``python -m bench.parse --child MODE DIR REPEAT``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from bench._common import KiB, MiB, Stats, child_env, mib, rss_now_kib, run_child, write_core_block
from crashd.report import write_report

APPORT_ANCHOR = 440.0  # reports/s, apport 2.36's loader, external
MODES = ("index", "decode", "digest")
SEED = 20261121
FIXTURES = Path(os.environ.get("CRASHD_SHARED", Path(__file__).resolve().parents[2] / "shared")) / (
    "fixtures/apport"
)
VENDORED_FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "corpus" / "apport"
# A directory holding apport 2.36's problem_report.py, for a same-run ratio (see bench/README.md).
APPORT_SRC = os.environ.get("APPORT_SRC")


# -- the corpus ---------------------------------------------------------------------------

_FUNCS = [
    "g_main_context_dispatch",
    "g_main_loop_run",
    "gtk_main",
    "g_signal_emit",
    "g_object_unref",
    "__pthread_kill_implementation",
    "raise",
    "abort",
    "__libc_start_main",
    "_start",
    "malloc",
    "free",
    "memcpy",
    "strlen",
    "start_thread",
    "clone3",
    "QCoreApplication::exec",
    "main",
    "g_type_check_instance_cast",
    "wl_display_dispatch",
    "poll",
    "epoll_wait",
    "__GI___poll",
]
_LIBS = [
    "/usr/lib/x86_64-linux-gnu/libglib-2.0.so.0.8000.0",
    "/usr/lib/x86_64-linux-gnu/libc.so.6",
    "/usr/lib/x86_64-linux-gnu/libgtk-4.so.1.1400.2",
    "/usr/lib/x86_64-linux-gnu/libgobject-2.0.so.0",
    "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.33",
    "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
]


class _CorpusWriter:
    """Deterministic, apport-like reports; every size is drawn from one seeded RNG."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.noise = self.rng.randbytes(4 * MiB)  # pages of "heap data" are sliced from here

    def _frames(self, n: int) -> str:
        rng = self.rng
        return "\n".join(
            f"#{i}  0x{rng.getrandbits(48):012x} in {rng.choice(_FUNCS)} (data=0x{rng.getrandbits(40):x}, "
            f"flags={rng.randrange(64)}) at ../src/{rng.choice(_FUNCS)}.c:{rng.randrange(9999)}"
            for i in range(n)
        )

    def _sized(self, make: str, target: int) -> str:
        """Text of about *target* bytes made of lines like *make* (one of the generators)."""
        lines, total = [], 0
        while total < target:
            line = self._line(make)
            lines.append(line)
            total += len(line) + 1
        return "\n".join(lines)

    def _line(self, make: str) -> str:
        rng = self.rng
        if make == "maps":
            lo = rng.getrandbits(44)
            return f"{lo:012x}-{lo + 4096 * rng.randrange(1, 512):012x} r-xp 00000000 fd:01 {rng.randrange(1 << 20)}  {rng.choice(_LIBS)}"
        if make == "thread":
            return self._frames(1) + (
                f"\n\nThread {rng.randrange(64)} (LWP {rng.randrange(99999)}):" if rng.random() < 0.1 else ""
            )
        if make == "deps":
            return f"lib{rng.choice(_FUNCS).lower()[:12]}{rng.randrange(9)} {rng.randrange(9)}.{rng.randrange(99)}-{rng.randrange(9)}ubuntu{rng.randrange(9)}"
        return f'  File "/usr/lib/python3/dist-packages/app/{rng.choice(_FUNCS)}.py", line {rng.randrange(999)}, in {rng.choice(_FUNCS)}'

    def _core(self, size: int) -> bytes:
        """Zero pages, random pages and repeated text pages, roughly like a real core."""
        rng, pages = self.rng, []
        for _ in range(max(1, size // 4096)):
            kind = rng.random()
            if kind < 0.5:
                pages.append(bytes(4096))
            elif kind < 0.75:
                at = rng.randrange(len(self.noise) - 4096)
                pages.append(self.noise[at : at + 4096])
            else:
                pages.append((rng.choice(_FUNCS).encode() + b"\0") * 200)
        return b"".join(page[:4096].ljust(4096, b"\0") for page in pages)

    def _common(self, i: int) -> dict[str, str | bytes]:
        rng = self.rng
        exe = f"/usr/bin/app{i:04d}"
        return {
            "ProblemType": "Crash",
            "Architecture": "amd64",
            "Date": f"Sat Nov 21 21:{i // 60 % 60:02d}:{i % 60:02d} 2026",
            "DistroRelease": "Ubuntu 24.04",
            "ExecutablePath": exe,
            "ExecutableTimestamp": str(1_700_000_000 + i),
            "Package": f"app{i:04d} 1.{rng.randrange(20)}-1ubuntu1",
            "ProcCmdline": f"{exe} --gapplication-service",
            "ProcCwd": "/home/user",
            "ProcEnviron": "LANG=en_US.UTF-8\nPATH=(custom, user)\nSHELL=/bin/bash\nTERM=xterm-256color",
            "ProcStatus": "\n".join(
                f"{k}:\t{rng.randrange(1 << 20)}" for k in ("Pid", "PPid", "VmPeak", "VmRSS", "Threads") * 6
            ),
            "Uname": "Linux 6.8.0-51-generic x86_64",
            "UserGroups": "adm cdrom dip lpadmin plugdev sambashare sudo",
        }

    def signal_crash(self, i: int) -> dict[str, str | bytes]:
        rng = self.rng
        text_kib = 2 ** rng.uniform(1, 6.6)  # a few KiB to ~100 KiB of text in all
        fields = self._common(i)
        fields |= {
            "Signal": "11",
            "SignalName": "SIGSEGV",
            "SourcePackage": f"app{i:04d}",
            "StacktraceAddressSignature": f"{fields['ExecutablePath']}:11:{rng.getrandbits(32):x}",
            "Registers": "\n".join(
                f"r{n:<14} 0x{rng.getrandbits(64):016x}  {rng.getrandbits(63)}" for n in range(24)
            ),
            "Disassembly": "\n".join(
                f"=> 0x{rng.getrandbits(48):x}:\tmov    0x{rng.randrange(256):x}(%rax),%rdx" for _ in range(4)
            ),
            "Dependencies": self._sized("deps", int(text_kib * 0.1 * KiB)),
            "ProcMaps": self._sized("maps", int(text_kib * 0.3 * KiB)),
            "Stacktrace": self._frames(rng.randrange(5, 40)),
            "StacktraceTop": self._frames(5),
            "ThreadStacktrace": self._sized("thread", int(text_kib * 0.5 * KiB)),
        }
        if rng.random() < 0.95:  # most signal crashes keep their core
            fields["CoreDump"] = self._core(int(2 ** rng.uniform(14, 20)))  # 16 KiB .. 1 MiB
        return fields

    def python_crash(self, i: int) -> dict[str, str | bytes]:
        fields = self._common(i)
        fields["InterpreterPath"] = "/usr/bin/python3.12"
        fields["Traceback"] = "Traceback (most recent call last):\n" + self._sized(
            "py", int(2 ** self.rng.uniform(9, 13))
        )
        fields["Dependencies"] = self._sized("deps", 2 * KiB)
        return fields

    def many_keys(self, i: int) -> dict[str, str | bytes]:
        fields = self._common(i)
        fields |= {f"Attachment{n:04d}": f"value {n} {self.rng.getrandbits(32):x}" for n in range(1000)}
        return fields

    def big_text(self, i: int) -> dict[str, str | bytes]:
        fields = self.signal_crash(i)
        fields["JournalErrors"] = self._sized("maps", 1 * MiB)
        return fields


def write_corpus(directory: Path, count: int, seed: int = SEED) -> int:
    """*count* reports: 2% with 1000 keys, 2% with a 1 MiB text field, 14% Python, the rest signal crashes."""
    writer = _CorpusWriter(seed)
    total = 0
    for i in range(count):
        kind = writer.rng.random()
        if kind < 0.02:
            fields = writer.many_keys(i)
        elif kind < 0.04:
            fields = writer.big_text(i)
        elif kind < 0.18:
            fields = writer.python_crash(i)
        else:
            fields = writer.signal_crash(i)
        path = directory / f"_usr_bin_app{i:04d}.0.crash"
        with path.open("wb") as f:
            write_report(f, fields)
        total += path.stat().st_size
    return total


# -- the child: one mode over one directory -------------------------------------------------


def _child(mode: str, directory: str, repeat: int) -> None:
    """Time *mode* over every file in *directory* and print JSON; peak RSS is this process's."""
    import resource

    from crashd.report import ReportError, read_report

    if mode == "apport":
        _apport_child(directory, repeat)
        return
    if mode == "floor":
        _floor_child(directory, repeat)
        return
    if mode == "splitter":
        _splitter_child(directory, repeat)
        return

    if mode == "decode_stdlib":  # crashd without the optional zlib-ng inflater (crashd/_codec.py)
        import zlib

        from crashd import _codec

        _codec._INFLATE, mode = zlib, "decode_plain"

    def work(f: BinaryIO, path: str) -> None:
        report = read_report(f, name=path)
        if mode in ("decode", "decode_plain"):
            for key, entry in report.entries.items():
                if entry.binary:
                    for _chunk in report.chunks(key):
                        pass
                else:
                    report.text_bytes(key)
        elif mode == "digest":
            for key in report:
                report.digest(key)

    baseline = rss_now_kib()  # after imports; ru_maxrss would still hold the launcher's share
    paths = sorted(str(p) for p in Path(directory).iterdir() if p.name.endswith(".crash"))
    times, cpu_times, errors, size = [], [], 0, sum(os.path.getsize(p) for p in paths)
    plain = mode == "decode_plain"  # opened exactly as the apport child opens them: no wrapper of ours
    for _ in range(repeat):
        errors = 0
        started, cpu_started = time.perf_counter(), time.process_time()
        for path in paths:
            try:
                if plain:
                    with open(path, "rb") as f:
                        work(f, path)
                else:
                    with _opened(path) as f:
                        work(f, path)
            except ReportError:
                errors += 1  # the shared fixtures include reports apport itself refuses
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, baseline)  # counters lag a little
    print(
        json.dumps(
            {
                "files": len(paths),
                "bytes": size,
                "times": times,
                "cpu_times": cpu_times,
                "errors": errors,
                "baseline_kib": baseline,
                "peak_kib": peak,
            }
        )
    )


@contextlib.contextmanager
def _opened(path: str) -> Iterator[BinaryIO]:
    """The file as crashd opens a report: no symlink, checked."""
    from crashd.spool import open_file

    with open_file(path) as opened, opened.file() as f:
        yield f


def _floor_child(directory: str, repeat: int) -> None:
    """The C work any loader must do: base64-decode each stored line of every binary value and
    inflate it (zlib; zstd for a zstd frame). The lines are gathered before the clock starts."""
    import binascii
    import zlib

    from crashd._codec import ZSTD_MAGIC, zstd_module
    from crashd.report import read_report

    paths = sorted(str(p) for p in Path(directory).iterdir() if p.name.endswith(".crash"))
    values = []
    for path in paths:
        with open(path, "rb") as f:
            report = read_report(f)
            for key, entry in report.entries.items():
                if entry.binary:
                    values.append(b"".join(report.base64_body(key)).split(b"\n"))
    times, cpu_times = [], []
    for _ in range(repeat):
        started, cpu_started = time.perf_counter(), time.process_time()
        for lines in values:
            blocks = [binascii.a2b_base64(line) for line in lines]
            if blocks and blocks[0].startswith(ZSTD_MAGIC):
                zstd_module().ZstdDecompressor().decompress(b"".join(blocks))
                continue
            inflate = zlib.decompressobj(
                16 + zlib.MAX_WBITS if blocks and blocks[0][:2] == b"\x1f\x8b" else zlib.MAX_WBITS
            )
            for block in blocks:
                while block:
                    inflate.decompress(block, 1 << 20)
                    block = inflate.unconsumed_tail
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
    print(
        json.dumps(
            {"files": len(paths), "values": len(values), "times": times, "cpu_times": cpu_times, "errors": 0}
        )
    )


def _split(f: BinaryIO) -> dict[bytes, bytes]:
    """The least a loader of apport's format can do: split lines, join text values, and base64-decode
    and inflate binary ones (no checks, no bounds, no errors named, every value in memory)."""
    import binascii
    import zlib

    values: dict[bytes, bytes] = {}
    key, lines = b"", []

    def close() -> None:
        first = lines[0].strip()
        if first == b"base64":
            blocks = [binascii.a2b_base64(line) for line in lines[1:]]
            wbits = 16 + zlib.MAX_WBITS if blocks and blocks[0][:2] == b"\x1f\x8b" else zlib.MAX_WBITS
            inflate = zlib.decompressobj(wbits)
            values[key] = b"".join([inflate.decompress(block) for block in blocks])
        else:
            values[key] = b"\n".join([first, *(line[1:-1] for line in lines[1:])])

    for line in f:
        if line[0] == 0x20:
            lines.append(line)
            continue
        if lines:
            close()
        key, _, value = line.partition(b":")
        lines = [value]
    if lines:
        close()
    return values


def _splitter_child(directory: str, repeat: int) -> None:
    """The floor: :func:`_split` over the same files, opened with plain ``open()``."""
    paths = sorted(str(p) for p in Path(directory).iterdir() if p.name.endswith(".crash"))
    times, cpu_times, errors = [], [], 0
    for _ in range(repeat):
        errors = 0
        started, cpu_started = time.perf_counter(), time.process_time()
        for path in paths:
            try:
                with open(path, "rb") as f:
                    _split(f)
            except Exception:  # a zstd core (not handled here) or a malformed fixture: counted
                errors += 1
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
    print(json.dumps({"files": len(paths), "times": times, "cpu_times": cpu_times, "errors": errors}))


def _apport_child(directory: str, repeat: int) -> None:
    """apport's own loader, ``ProblemReport.load(f, binary=True)``, over the same files."""
    sys.path.insert(0, str(APPORT_SRC))
    import problem_report  # type: ignore[import-not-found]  # apport 2.36, from APPORT_SRC

    paths = sorted(str(p) for p in Path(directory).iterdir() if p.name.endswith(".crash"))
    times, cpu_times, errors = [], [], 0
    for _ in range(repeat):
        errors = 0
        started, cpu_started = time.perf_counter(), time.process_time()
        for path in paths:
            try:
                with open(path, "rb") as f:
                    problem_report.ProblemReport().load(f, binary=True)
            except Exception:  # apport refuses some reports; count them
                errors += 1
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
    print(json.dumps({"files": len(paths), "times": times, "cpu_times": cpu_times, "errors": errors}))


def _measure(mode: str, directory: Path, repeat: int) -> dict:
    run = run_child(
        [sys.executable, "-m", "bench.parse", "--child", mode, str(directory), str(repeat)], env=child_env()
    )
    if run.returncode != 0:
        raise RuntimeError(f"bench.parse child {mode} failed:\n{run.stderr}")
    return json.loads(run.stdout)


# -- the parent -----------------------------------------------------------------------------


def run(quick: bool = False) -> dict:
    """Generate the corpus, time the three modes, then check memory against core size."""
    count, repeat, big = (200, 3, 256 * MiB) if quick else (1000, 5, 1024 * MiB)
    results: dict = {"anchor_reports_per_s": APPORT_ANCHOR, "repeat": repeat}
    with tempfile.TemporaryDirectory(prefix="crashd-bench-parse-") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        started = time.perf_counter()
        size = write_corpus(corpus, count)
        print(
            f"parse: generated {count} reports, {size / MiB:.1f} MiB, in {time.perf_counter() - started:.1f} s"
        )
        results["corpus"] = {"reports": count, "bytes": size}
        for mode in MODES:
            m = _measure(mode, corpus, repeat)
            stats = Stats(tuple(m["times"]))
            med, best = stats.rate(count)
            results[mode] = {
                "reports_per_s_median": med,
                "reports_per_s_best": best,
                "spread": stats.spread,
                "mib_per_s_median": size / MiB / stats.median,
                "errors": m["errors"],
                "baseline_rss_kib": m["baseline_kib"],
                "peak_rss_kib": m["peak_kib"],
            }
            print(
                f"parse {mode:<6}: {med:7.0f} reports/s median, {best:7.0f} best ({stats.spread:.0%} spread, "
                f"{size / MiB / stats.median:.0f} MiB/s); x{med / APPORT_ANCHOR:.1f} apport's 440/s; "
                f"peak RSS {mib(m['peak_kib'])} (after imports {mib(m['baseline_kib'])})"
            )

        results["core_size"] = _core_size_memory(Path(tmp), big)
        results["fixtures"] = _fixtures(repeat)
    if APPORT_SRC:  # the same-run ratios against apport and the floor (bench/README.md)
        results["apport"] = compare_with_apport(rounds=3 if quick else 5)
    d = results["decode"]
    print(
        f"parse: SUMMARY decode {d['reports_per_s_median']:.0f} reports/s (x{d['reports_per_s_median'] / APPORT_ANCHOR:.1f} "
        f"the 440/s apport anchor, target x2), index {results['index']['reports_per_s_median']:.0f}/s, "
        f"digest {results['digest']['reports_per_s_median']:.0f}/s; peak RSS decoding "
        f"{mib(d['peak_rss_kib'])}; {results['core_size']['verdict']}"
    )
    return results


def _core_size_memory(tmp: Path, big: int) -> dict:
    """Peak RSS decoding and digesting one report with a 4 MiB core vs. one with a *big* core."""
    out: dict = {}
    for label, size in (("small", 4 * MiB), ("big", big)):
        directory = tmp / f"core-{label}"
        directory.mkdir()
        with (directory / "_usr_bin_big.0.crash").open("wb") as f:
            write_report(f, {"ProblemType": "Crash", "Architecture": "amd64", "Signal": "11"})
            write_core_block(f, "CoreDump", size)
        for mode in ("decode", "digest"):
            m = _measure(mode, directory, 1)
            out[f"{label}_{mode}"] = {
                "core_bytes": size,
                "seconds": m["times"][0],
                "baseline_rss_kib": m["baseline_kib"],
                "peak_rss_kib": m["peak_kib"],
            }
        (directory / "_usr_bin_big.0.crash").unlink()
    growth = max(
        out[f"big_{m}"]["peak_rss_kib"] - out[f"small_{m}"]["peak_rss_kib"] for m in ("decode", "digest")
    )
    out["growth_kib"] = growth
    out["verdict"] = (
        f"{big // MiB} MiB core vs 4 MiB core: peak RSS {growth / 1024:+.1f} MiB "
        f"({'flat' if growth < 8 * 1024 else 'NOT flat'})"
    )
    for mode in ("decode", "digest"):
        s, b = out[f"small_{mode}"], out[f"big_{mode}"]
        print(
            f"parse core-size {mode:<6}: 4 MiB core peak {mib(s['peak_rss_kib'])}; {big // MiB} MiB core peak "
            f"{mib(b['peak_rss_kib'])} in {b['seconds']:.1f} s ({big / MiB / b['seconds']:.0f} MiB/s decoded); "
            f"after imports {mib(b['baseline_rss_kib'])}"
        )
    return out


def _fixtures(repeat: int) -> dict | None:
    if not FIXTURES.is_dir():
        print(f"parse fixtures: skipped, {FIXTURES} is absent")
        return None
    out = {}
    for mode in MODES:
        m = _measure(mode, FIXTURES, repeat * 4)  # 40 small files: more rounds for a stable figure
        stats = Stats(tuple(m["times"]))
        med, best = stats.rate(m["files"])
        out[mode] = {
            "files": m["files"],
            "refused": m["errors"],
            "reports_per_s_median": med,
            "reports_per_s_best": best,
            "spread": stats.spread,
            "peak_rss_kib": m["peak_kib"],
        }
        print(
            f"parse fixtures {mode:<6}: {m['files']} files ({m['errors']} refused), {med:6.0f} reports/s median, "
            f"{best:6.0f} best ({stats.spread:.0%} spread); x{med / APPORT_ANCHOR:.1f} apport's 440/s"
        )
    return out


def compare_with_apport(rounds: int = 5, repeat: int = 3) -> dict:
    """Decode rate of crashd against apport 2.36's loader on three corpora, as ratios.

    Corpora: the apport-written fixtures (the full shared set when present, else the copy in
    tests/corpus), 300 generated reports, and 200 realistic ~3 KB reports (100 "spec", 100
    "deps", bench/reports.py). Each round runs crashd then apport on every corpus, each in a
    fresh child (median of *repeat* passes); the ratio is apport's time over crashd's in the
    same round, so machine load shared by both cancels out. Medians over rounds. The floor is
    a minimal line splitter of the format (:func:`_split`: no checks, no bounds, every value in
    memory), measured in the same round; each loader's rate is also given as a multiple of its.
    The ceiling is apport's time over that of base64 and inflate alone: no loader can beat it. Both open
    the files with plain ``open()``: this compares the parsers, not crashd's checked open.
    Times are CPU times of the child (``process_time``): on a machine shared with other jobs
    they vary far less than wall time, and both sides are single-threaded. When zlib-ng (the
    optional ``fast`` extra) is installed, crashd inflates with it, and crashd with the standard
    library's zlib (as apport and the floor inflate) is measured in the same rounds too.
    """
    from bench.reports import write_reports
    from crashd._codec import inflate_module

    accelerated = inflate_module().__name__ != "zlib"

    if not APPORT_SRC or not (Path(APPORT_SRC) / "problem_report.py").is_file():
        raise SystemExit(
            "set APPORT_SRC to a directory holding apport 2.36's problem_report.py (bench/README.md)"
        )
    with tempfile.TemporaryDirectory(prefix="crashd-bench-apport-") as tmp:
        generated, realistic = Path(tmp) / "generated", Path(tmp) / "realistic"
        generated.mkdir()
        realistic.mkdir()
        write_corpus(generated, 300)
        write_reports(realistic, "spec", 100)
        write_reports(realistic, "deps", 100, offset=100)
        corpora = {
            "fixtures": FIXTURES if FIXTURES.is_dir() else VENDORED_FIXTURES,
            "generated": generated,
            "realistic": realistic,
        }
        ratios: dict[str, list[float]] = {name: [] for name in corpora}
        stdlib_ratios: dict[str, list[float]] = {name: [] for name in corpora}  # crashd on stdlib zlib
        ceilings: dict[str, list[float]] = {name: [] for name in corpora}
        rates: dict[str, dict[str, list[float]]] = {name: {"crashd": [], "apport": []} for name in corpora}
        # each loader's rate as a multiple of the floor's (the minimal line splitter, _split)
        against_floor: dict[str, dict[str, list[float]]] = {
            name: {"crashd": [], "apport": []} for name in corpora
        }
        files: dict[str, int] = {}
        refused: dict[str, tuple[int, int]] = {}
        for _ in range(rounds):
            for name, directory in corpora.items():
                passes = repeat * (10 if name == "realistic" else 1)  # 200 small files: ~30 ms a pass
                ours, theirs = (
                    _measure("decode_plain", directory, passes),
                    _measure("apport", directory, passes),
                )
                if accelerated:
                    plain = _measure("decode_stdlib", directory, passes)
                    stdlib_ratios[name].append(
                        Stats(tuple(theirs["cpu_times"])).median / Stats(tuple(plain["cpu_times"])).median
                    )
                floor = _measure("floor", directory, passes)
                splitter = _measure("splitter", directory, passes)
                t_ours, t_theirs = (
                    Stats(tuple(ours["cpu_times"])).median,
                    Stats(tuple(theirs["cpu_times"])).median,
                )
                t_floor = Stats(tuple(floor["cpu_times"])).median
                t_split = Stats(tuple(splitter["cpu_times"])).median
                ceilings[name].append(t_theirs / t_floor if floor["values"] else float("inf"))
                against_floor[name]["crashd"].append(t_split / t_ours)
                against_floor[name]["apport"].append(t_split / t_theirs)
                files[name] = ours["files"]
                refused[name] = (ours["errors"], theirs["errors"])
                ratios[name].append(t_theirs / t_ours)
                rates[name]["crashd"].append(ours["files"] / t_ours)
                rates[name]["apport"].append(theirs["files"] / t_theirs)
    out = {}
    for name in corpora:
        ordered = sorted(ratios[name])
        median = ordered[len(ordered) // 2]
        crashd_rate = sorted(rates[name]["crashd"])[rounds // 2]
        apport_rate = sorted(rates[name]["apport"])[rounds // 2]
        ceiling = sorted(ceilings[name])[rounds // 2]
        ours_floor = sorted(against_floor[name]["crashd"])[rounds // 2]
        theirs_floor = sorted(against_floor[name]["apport"])[rounds // 2]
        stdlib = sorted(stdlib_ratios[name])
        out[name] = {"files": files[name], "ratio_median": median, "ratio_range": [ordered[0], ordered[-1]],
                     "inflater": "zlib_ng" if accelerated else "zlib",
                     "stdlib_ratio_median": stdlib[rounds // 2] if stdlib else None,
                     "stdlib_ratio_range": [stdlib[0], stdlib[-1]] if stdlib else None,
                     "ceiling_median": ceiling, "crashd_vs_floor": ours_floor, "apport_vs_floor": theirs_floor,
                     "crashd_per_s": crashd_rate, "apport_per_s": apport_rate, "refused": refused[name]}  # fmt: skip
        print(
            f"parse vs apport {name:<9}: {files[name]} files (refused: crashd {refused[name][0]}, "
            f"apport {refused[name][1]}); crashd {crashd_rate:6.0f}/s, apport {apport_rate:6.0f}/s; "
            f"ratio median x{median:.2f} (range {ordered[0]:.2f}-{ordered[-1]:.2f} over {rounds} rounds"
            + (
                f"; inflating with zlib-ng; with stdlib zlib x{stdlib[rounds // 2]:.2f}, {stdlib[0]:.2f}-{stdlib[-1]:.2f}"
                if stdlib
                else ""
            )
            + "); "
            f"against the floor (a minimal line splitter): crashd x{ours_floor:.2f}, apport x{theirs_floor:.2f}; "
            + (
                f"a loader doing only base64 and inflate would be x{ceiling:.2f}"
                if ceiling != float("inf")
                else "no binary values"
            )
        )
    print("parse vs apport: SUMMARY " + ", ".join(f"{n} x{o['ratio_median']:.2f}" for n, o in out.items()))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.parse")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "DIR", "REPEAT"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--apport", action="store_true", help="decode ratios against apport (APPORT_SRC)")
    args = parser.parse_args(argv)
    if args.apport:
        compare_with_apport()
    elif args.child:
        mode, directory, repeat = args.child
        _child(mode, directory, int(repeat))
    else:
        run(args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
