"""Sender side: find the basis blocks in the source (the C scanner does the bytes)."""
from __future__ import annotations

import errno
import mmap
import queue
import threading
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
    inplace: bool = False,
) -> Ops:
    """Scan `src_buffer` (bytes, memoryview, mmap) for the blocks of `sig`.

    Returns array('q') of flat triples, in source order, covering it once:
    ``(LITERAL, src_offset, length)`` and ``(MATCH, first_block, block_count)``.
    Runs the C scanner with the GIL released; raises SourceChanged if a mapped
    source shrinks under it.  `sig` must already have passed validate() if it
    came from a peer (the C side re-checks lengths regardless).

    inplace: the receiver rebuilds over the basis itself (--inplace), so only
    blocks it has not overwritten yet may be used: those at or after the
    current offset, and those matched earlier at their own offset (which it
    never writes).  The block at the current offset is preferred.
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
        inplace=inplace,
    )
    ops = array("q")
    ops.frombytes(raw)
    return ops


def delta_ops_fd(fd: int, size: int, sig: Signature, **kw: int | bool) -> Ops:
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


FIRST_PIECE = 1 << 20
MAX_PIECE = 16 << 20


class Scanner:
    """The scan of one source in pieces (the same ops as delta_ops, except that a block
    run or a literal may be split where a piece ends), so that a sender can send what
    it found while it scans on: the receiver rebuilds one piece while the next is
    scanned. Pieces start small (the receiver starts early) and grow.

    With digest=True the C side also hashes the source as it scans it (XXH3-128,
    from the mapping, under the same SIGBUS guard): digest() is then the whole
    source's digest once the scan is complete.
    """

    def __init__(self, src_buffer: object, sig: Signature, *, inplace: bool = False,
                 digest: bool = False, max_chain: int = DEFAULT_MAX_CHAIN,
                 first_piece: int = FIRST_PIECE, max_piece: int = MAX_PIECE) -> None:
        self.src = src_buffer
        self.size = memoryview(src_buffer).nbytes  # type: ignore[arg-type]
        self._scanner = rolling().scanner(
            sig.block_len, sig.weak, sig.strong, sig.strong_len, sig.size, self.size,
            seed=sig.seed, max_chain=max_chain, inplace=inplace, digest=digest)
        self.pos = 0
        self.done = False
        self._piece = max(1, first_piece)
        self._max_piece = max(self._piece, max_piece)

    def next(self) -> Ops:
        """The ops of the next piece; raises SourceChanged if the mapped source shrank."""
        stop = self.pos + self._piece
        raw, self.pos = rolling().scan_next(self._scanner, self.src, stop if stop < self.size else -1)
        self.done = self.pos >= self.size
        self._piece = min(2 * self._piece, self._max_piece)
        ops = array("q")
        ops.frombytes(raw)
        return ops

    def __iter__(self) -> Iterator[Ops]:
        while not self.done:
            yield self.next()

    def ahead(self) -> Iterator[Ops]:
        """The pieces, each scanned on a helper thread while the caller handles the one
        before it (the C scan runs without the GIL). Errors of the scan (SourceChanged)
        come out of this iterator; closing it early stops the thread, and the thread is
        done with the source once the iterator is closed or exhausted."""
        pieces: queue.Queue[object] = queue.Queue(maxsize=1)
        stop = threading.Event()
        end = object()

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    pieces.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def scan() -> None:
            try:
                while not self.done and not stop.is_set():
                    if not put(self.next()):
                        return
            except BaseException as exc:  # handed to the consumer
                put(exc)
                return
            put(end)

        thread = threading.Thread(target=scan, name="zcsync-scan-ahead", daemon=True)
        thread.start()
        try:
            while (item := pieces.get()) is not end:
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            stop.set()
            thread.join()

    def digest(self) -> bytes:
        """XXH3-128 of the source as scanned (made with digest=True, after the last piece)."""
        return rolling().scanner_digest(self._scanner)


def coalesce(pieces: Iterable[Iterable[int]]) -> list[tuple[int, int, int]]:
    """Join the ops of consecutive pieces into the op list of a one-piece scan."""
    out: list[tuple[int, int, int]] = []
    for ops in pieces:
        for kind, a, b in iter_ops(ops):
            if out:
                pk, pa, pb = out[-1]
                if kind == pk == LITERAL and pa + pb == a:
                    out[-1] = (LITERAL, pa, pb + b)
                    continue
                if kind == pk == MATCH and pa + pb == a:
                    out[-1] = (MATCH, pa, pb + b)
                    continue
            out.append((kind, a, b))
    return out


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
    "Scanner",
    "coalesce",
    "LITERAL",
    "MATCH",
    "Ops",
    "delta_ops",
    "delta_ops_fd",
    "iter_ops",
    "literal_chunks",
    "op_stats",
]
