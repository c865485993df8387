"""``python -m pytest_modelrollout`` runs the ``modelrollout`` command."""

from __future__ import annotations

import sys

from pytest_modelrollout.cli import main

if __name__ == "__main__":
    sys.exit(main())
