"""``python -m theory``: the same command line as the ``gentransfer`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
