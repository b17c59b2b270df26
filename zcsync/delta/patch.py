"""Receiver side: rebuild a file from basis blocks and literal runs."""
from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from typing import NamedTuple

from .errors import DeltaError, SourceChanged
from .match import LITERAL, MATCH, iter_ops
from .signature import MAX_BLOCK_LEN, block_count

LITERAL_CHUNK = 1 << 20

# copy_file_range refusing these means "not here" (other filesystem, O_APPEND,
# old kernel, seccomp), not "broken": fall back to pread/write.
_CFR_FALLBACK = frozenset(
    {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF,
     errno.EPERM, errno.ETXTBSY}
)
_cfr_unavailable = not hasattr(os, "copy_file_range")


class PatchResult(NamedTuple):
    """What apply_delta wrote."""

    matched_bytes: int
    literal_bytes: int


def _basis_shrank() -> SourceChanged:
    return SourceChanged(errno.EIO, "Basis file shrank while the delta was applied")


def _write_all(fd: int, data: object) -> None:
    view = memoryview(data).cast("B")  # type: ignore[arg-type]
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _copy_range(basis_fd: int, out_fd: int, offset: int, length: int) -> None:
    """Append basis[offset:offset+length] to out_fd at its file position."""
    global _cfr_unavailable
    if not _cfr_unavailable:
        try:
            while length:
                n = os.copy_file_range(basis_fd, out_fd, length, offset)
                if n == 0:
                    raise _basis_shrank()
                offset += n
                length -= n
            return
        except SourceChanged:
            raise
        except OSError as exc:
            if exc.errno not in _CFR_FALLBACK:
                raise
            if exc.errno == errno.ENOSYS:
                _cfr_unavailable = True
    while length:
        buf = os.pread(basis_fd, min(length, LITERAL_CHUNK), offset)
        if not buf:
            raise _basis_shrank()
        _write_all(out_fd, buf)
        offset += len(buf)
        length -= len(buf)


def apply_delta(
    basis_fd: int,
    ops: Iterable[int] | Iterable[tuple[int, int, int]],
    literal_reader: Callable[[int], object],
    out_fd: int,
    block_len: int,
    basis_size: int,
    *,
    expected_size: int | None = None,
) -> PatchResult:
    """Write the file that `ops` describe to `out_fd`, at its current position.

    Block runs are copied from the basis (copy_file_range, else pread/write);
    literal runs come from ``literal_reader(n)``, which returns up to n bytes
    (bytes-like) and may return fewer.  `ops` are untrusted: every block
    index, count and length is checked against the basis (and against
    `expected_size`, if given) before use; a bad op raises DeltaError before
    anything of it is written.  A basis that shrinks raises SourceChanged.
    """
    if not 1 <= block_len <= MAX_BLOCK_LEN or basis_size < 0:
        raise DeltaError(f"block length {block_len} or basis size {basis_size} out of range")
    nblocks = block_count(basis_size, block_len)
    limit = expected_size
    matched = literal = 0
    for kind, a, b in iter_ops(ops):
        if kind == MATCH:
            if not (0 <= a and 1 <= b and a + b <= nblocks):
                raise DeltaError(f"block run {a}+{b} outside the basis's {nblocks} blocks")
            start = a * block_len
            length = min((a + b) * block_len, basis_size) - start
            if limit is not None and matched + literal + length > limit:
                raise DeltaError("delta is longer than the file")
            _copy_range(basis_fd, out_fd, start, length)
            matched += length
        elif kind == LITERAL:
            if a < 0 or b < 0:
                raise DeltaError(f"bad literal run {a}+{b}")
            if limit is not None and matched + literal + b > limit:
                raise DeltaError("delta is longer than the file")
            left = b
            while left:
                data = literal_reader(min(left, LITERAL_CHUNK))
                n = memoryview(data).nbytes  # type: ignore[arg-type]
                if n == 0:
                    raise DeltaError("literal data ended early")
                if n > left:
                    raise DeltaError("literal reader returned too much")
                _write_all(out_fd, data)
                left -= n
            literal += b
        else:
            raise DeltaError(f"unknown op kind {kind}")
    if limit is not None and matched + literal != limit:
        raise DeltaError(f"delta rebuilt {matched + literal} bytes, expected {limit}")
    return PatchResult(matched, literal)
