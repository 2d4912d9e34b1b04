"""``python -m theory``: the same command line as the ``gentransfer`` console script."""

import sys

from theory.cli import main

if __name__ == "__main__":
    sys.exit(main())
