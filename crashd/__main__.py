"""``python -m crashd`` and the ``crashd`` console script."""

import sys

try:
    from crashd.cli import main
except ImportError as error:  # a dependency the command line itself imports is missing or too old
    from crashd.dependencies import explain

    if (problem := explain(error)) is None:
        raise
    print(f"crashd: {problem}", file=sys.stderr)
    sys.exit(2)  # crashd.cli.EXIT_USAGE: a configuration problem that restarting cannot fix

if __name__ == "__main__":
    raise SystemExit(main())
