"""tag-watchdog: notices when a release tag in a container registry moves or disappears."""

from __future__ import annotations

__version__ = "0.1.0"
