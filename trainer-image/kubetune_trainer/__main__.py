"""Entry point for ``python -m kubetune_trainer``."""

from __future__ import annotations

import sys

from kubetune_trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())
