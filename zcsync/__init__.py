"""zcsync: fast, safe file tree replication with rsync's command line."""
from __future__ import annotations

import logging

__version__ = "0.1.0"

from .api import SyncOptions, SyncResult, sync
from .errors import (
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
from .options import Options
from .stats import Event, Stats

# A library logs, it does not print: without logging configured by the program, the
# "zcsync" logger's messages (per-file problems, warnings) go nowhere, not to stderr.
logging.getLogger("zcsync").addHandler(logging.NullHandler())

__all__ = [
    "ConnectTimeout",
    "Event",
    "FileIOError",
    "FileProblem",
    "FileSelectError",
    "Interrupted",
    "MaxDeleteReached",
    "Options",
    "ProtocolError",
    "RemoteNotFound",
    "SocketIOError",
    "StartupError",
    "Stats",
    "StreamError",
    "SyncOptions",
    "SyncResult",
    "Timeout",
    "UsageError",
    "ZcsyncError",
    "__version__",
    "sync",
]
