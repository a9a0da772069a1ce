"""``python -m watchdog`` runs the ``tag-watchdog`` command line."""

from __future__ import annotations

import sys

from watchdog import cli

sys.exit(cli.main())
