"""Ways to reach the peer: each returns a Stream (see base.py) to a remote ``zcsync --server``."""
from __future__ import annotations

from .base import BaseStream, Stream, map_stream_errors, remote_command

__all__ = ["BaseStream", "Stream", "map_stream_errors", "remote_command"]
