"""``python -m crashd`` and the ``crashd`` console script."""

from crashd.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
