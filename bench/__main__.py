"""``python -m bench [NAME ...] [--quick] [--profile]``: run the benchmarks, print, save JSON.

Each benchmark prints its own lines and one ``SUMMARY`` line; the figures of this run
go to ``bench/out/results.json`` (git-ignored) with the machine they were taken on, so
bench/README.md can be refreshed from them. One failing benchmark does not stop the
others; the exit code says whether any failed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback

from bench import NAMES
from bench._common import REPO, machine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(NAMES)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer rounds: a smoke run")
    parser.add_argument("--profile", action="store_true", help="upload_rate: print cProfile's top entries")
    args = parser.parse_args(argv)
    if unknown := [name for name in args.names if name not in NAMES]:
        parser.error(f"unknown benchmark {', '.join(unknown)} (choose from {', '.join(NAMES)})")
    info = machine()
    print(
        f"bench: {info['cpu']}, {info['nproc']} CPUs, Python {info['python']}, load {info['loadavg']}, {info['date']}"
    )
    results: dict[str, object] = {"machine": info, "quick": args.quick}
    failed = []
    for name in args.names or NAMES:
        module = importlib.import_module(f"bench.{name}")
        started = time.perf_counter()
        try:
            kwargs = {"profile": True} if args.profile and name == "upload_rate" else {}
            results[name] = module.run(args.quick, **kwargs)
        except Exception:
            failed.append(name)
            print(f"{name}: FAILED\n{traceback.format_exc()}", file=sys.stderr)
        print(f"bench: {name} took {time.perf_counter() - started:.0f} s\n")
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if failed:
        print(f"bench: FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
