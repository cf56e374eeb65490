"""crashd's benchmarks (DESIGN.md §8): ``python -m bench [NAME ...] [--quick]``, or ``make bench``.

Not tests: they measure, print a summary line each and write ``bench/out/results.json``;
pytest never collects them (its testpaths is ``tests``) and ``make check`` never runs them.
"""

NAMES = ("parse", "core_rss", "upload_rate", "upload_client", "fleet", "daemon", "spool_rss", "hooks")
