"""zcsync: fast, safe file tree replication with rsync's command line."""
from __future__ import annotations

import logging

__version__ = "0.1.0"

from .api import SyncOptions, SyncResult, sync  # noqa: E402
from .errors import (  # noqa: E402
    ConnectTimeout,
    FileIOError,
    FileProblem,
    FileSelectError,
    Interrupted,
    MaxDeleteReached,
    ProtocolError,
    RemoteNotFound,
    SocketIOError,
    StartupError,
    StreamError,
    Timeout,
    UsageError,
    ZcsyncError,
)
from .options import Options  # noqa: E402
from .stats import Event, Stats  # noqa: E402

# A library logs, it does not print: without logging configured by the program, the
# "zcsync" logger's messages (per-file problems, warnings) go nowhere, not to stderr.
logging.getLogger("zcsync").addHandler(logging.NullHandler())

__all__ = [
    "sync",
    "SyncResult",
    "SyncOptions",
    "Stats",
    "Event",
    "Options",
    "FileProblem",
    "ZcsyncError",
    "UsageError",
    "ProtocolError",
    "FileSelectError",
    "StartupError",
    "SocketIOError",
    "FileIOError",
    "StreamError",
    "Interrupted",
    "MaxDeleteReached",
    "Timeout",
    "ConnectTimeout",
    "RemoteNotFound",
    "__version__",
]
