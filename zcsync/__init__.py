"""zcsync: fast, safe file tree replication with rsync's command line."""
from __future__ import annotations

__version__ = "0.1.0"

from .api import SyncResult, sync  # noqa: E402
from .errors import FileProblem, ZcsyncError  # noqa: E402
from .options import Options  # noqa: E402
from .stats import Stats  # noqa: E402

__all__ = ["sync", "SyncResult", "Stats", "Options", "ZcsyncError", "FileProblem", "__version__"]
