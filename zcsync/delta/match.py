"""Sender side: find the basis blocks in the source (the C scanner does the bytes)."""
from __future__ import annotations

import errno
import mmap
from array import array
from collections.abc import Iterable, Iterator

from ._ext import rolling
from .errors import SourceChanged
from .signature import Signature

LITERAL = 0
MATCH = 1
DEFAULT_MAX_CHAIN = 64

Ops = array  # array('q') of flat (kind, a, b) triples


def delta_ops(
    src_buffer: object,
    sig: Signature,
    *,
    max_chain: int = DEFAULT_MAX_CHAIN,
    false_budget: int = -1,
) -> Ops:
    """Scan `src_buffer` (bytes, memoryview, mmap) for the blocks of `sig`.

    Returns array('q') of flat triples, in source order, covering it once:
    ``(LITERAL, src_offset, length)`` and ``(MATCH, first_block, block_count)``.
    Runs the C scanner with the GIL released; raises SourceChanged if a mapped
    source shrinks under it.  `sig` must already have passed validate() if it
    came from a peer (the C side re-checks lengths regardless).
    """
    raw = rolling().scan(
        src_buffer,
        sig.block_len,
        sig.weak,
        sig.strong,
        sig.strong_len,
        sig.size,
        seed=sig.seed,
        max_chain=max_chain,
        false_budget=false_budget,
    )
    ops = array("q")
    ops.frombytes(raw)
    return ops


def delta_ops_fd(fd: int, size: int, sig: Signature, **kw: int) -> Ops:
    """delta_ops over the first `size` bytes of the file open on `fd`, via mmap."""
    if size == 0:
        return array("q")
    try:
        m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    except ValueError:  # the file is already shorter than `size`
        raise SourceChanged(errno.EIO, "Source is shorter than expected") from None
    with m:
        if hasattr(m, "madvise"):
            m.madvise(mmap.MADV_SEQUENTIAL)
        return delta_ops(m, sig, **kw)


def iter_ops(ops: Iterable[int] | Iterable[tuple[int, int, int]]) -> Iterator[tuple[int, int, int]]:
    """Yield (kind, a, b) triples from a flat op array or an iterable of triples."""
    it = iter(ops)
    for first in it:
        if isinstance(first, tuple):
            yield first  # type: ignore[misc]
            for t in it:
                yield t  # type: ignore[misc]
            return
        try:
            yield first, next(it), next(it)  # type: ignore[misc]
        except StopIteration:
            raise ValueError("op array length is not a multiple of 3") from None


def op_stats(ops: Iterable[int], block_len: int, basis_size: int) -> tuple[int, int]:
    """(matched_bytes, literal_bytes) that `ops` describe."""
    matched = literal = 0
    for kind, a, b in iter_ops(ops):
        if kind == MATCH:
            matched += min((a + b) * block_len, basis_size) - a * block_len
        else:
            literal += b
    return matched, literal


def literal_chunks(src_buffer: object, ops: Iterable[int]) -> Iterator[memoryview]:
    """The literal runs of `ops` as views into the source, in op order."""
    view = memoryview(src_buffer).cast("B")  # type: ignore[arg-type]
    for kind, a, b in iter_ops(ops):
        if kind == LITERAL:
            yield view[a : a + b]


__all__ = [
    "DEFAULT_MAX_CHAIN",
    "LITERAL",
    "MATCH",
    "Ops",
    "delta_ops",
    "delta_ops_fd",
    "iter_ops",
    "literal_chunks",
    "op_stats",
]
