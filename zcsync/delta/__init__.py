"""Delta transfer: the rsync algorithm (signatures, block matching, patching).

The per-byte work runs in the C extension zcsync.delta._rolling; importing
this package works without it, and the first call that needs it raises an
ImportError that says how to build it.
"""
from __future__ import annotations

from .errors import DeltaError, SignatureError, SourceChanged
from .match import (
    DEFAULT_MAX_CHAIN,
    LITERAL,
    MATCH,
    Scanner,
    coalesce,
    delta_ops,
    delta_ops_fd,
    iter_ops,
    literal_chunks,
    op_stats,
)
from .patch import PatchResult, Rebuild, apply_delta
from .signature import (
    MAX_BLOCK_LEN,
    MAX_STRONG_LEN,
    MIN_PEER_BLOCK_LEN,
    MIN_STRONG_LEN,
    Signature,
    block_count,
    block_length,
    make_signature,
    signature_of,
    strong_length,
    validate,
)

__all__ = [
    "DEFAULT_MAX_CHAIN",
    "LITERAL",
    "MATCH",
    "MAX_BLOCK_LEN",
    "MAX_STRONG_LEN",
    "MIN_PEER_BLOCK_LEN",
    "MIN_STRONG_LEN",
    "DeltaError",
    "PatchResult",
    "Rebuild",
    "Scanner",
    "Signature",
    "SignatureError",
    "SourceChanged",
    "apply_delta",
    "block_count",
    "block_length",
    "coalesce",
    "delta_ops",
    "delta_ops_fd",
    "iter_ops",
    "literal_chunks",
    "make_signature",
    "op_stats",
    "signature_of",
    "strong_length",
    "validate",
]
