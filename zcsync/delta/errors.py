"""Exceptions of the delta engine.

The C extension raises :class:`SourceChanged` (it imports this module at load
time), so there is one class whether or not the extension is built.
"""
from __future__ import annotations

from zcsync.errors import ProtocolError


class SourceChanged(OSError):
    """A mapped file shrank or vanished while it was being read.

    Raised instead of dying from SIGBUS when a file that is mapped for the
    scan (source) or for hashing (basis) is truncated under us.  It is an
    OSError (errno EIO) so the transport boundary can treat it like any other
    read error of that file: the file is skipped and reported, the run goes on.
    """


class SignatureError(ProtocolError):
    """Bad block signature from peer: {detail}"""


class DeltaError(ProtocolError):
    """Bad delta from peer: {detail}"""
