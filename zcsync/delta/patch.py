"""Receiver side: rebuild a file from basis blocks and literal runs."""
from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from typing import NamedTuple

import xxhash

from ..fastio import pwrite_all
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


def _source_shrank() -> SourceChanged:
    return SourceChanged(errno.EIO, "Source shrank while the delta was applied")


def _write_all(fd: int, data: object) -> None:
    view = memoryview(data).cast("B")  # type: ignore[arg-type]
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _copy_range(basis_fd: int, out_fd: int, offset: int, length: int) -> None:
    """Append basis[offset:offset+length] to out_fd at its file position."""
    pos = os.lseek(out_fd, 0, os.SEEK_CUR)
    _copy_at(basis_fd, out_fd, offset, pos, length)
    os.lseek(out_fd, pos + length, os.SEEK_SET)


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


HASH_CHUNK = 1 << 20

# Filesystems where copy_file_range shares data instead of copying it (reflinks: XFS,
# btrfs, OCFS2, bcachefs, ZFS block cloning) or copies on the server (NFS, SMB). There
# a block run is copied with it and hashed as read back. Elsewhere (tmpfs, ext4, ...)
# it is a plain copy in the kernel, and pread + hash + pwrite of the same bytes is
# cheaper than that copy plus reading it back (256 MiB on tmpfs: 165 ms against 205).
_SHARING_FS = frozenset({0x58465342, 0x9123683E, 0x7461636F, 0xCA451A4E, 0x2FC12FC1,
                         0x6969, 0xFE534D42, 0xFF534D42})
_sharing: dict[int, bool] = {}


def copy_shares(fd: int) -> bool:
    """Does copy_file_range into this file's filesystem share or offload the data?"""
    dev = os.fstat(fd).st_dev
    known = _sharing.get(dev)
    if known is None:
        try:
            from ._ext import rolling
            known = rolling().fs_type(fd) in _SHARING_FS
        except (OSError, ImportError, AttributeError):
            known = True  # as before: copy_file_range, which falls back by itself
        _sharing[dev] = known
    return known


class Rebuild:
    """Writes one file from basis block runs and literal bytes, in order, at explicit offsets.

    The receiving end of a delta, local or remote.  Every op is checked against the
    basis (block bounds) and the announced size before anything of it is written;
    a bad op raises DeltaError.  What lands in the output is hashed (xxh3-128) as
    written -- the very buffer each pwrite writes, or, where copy_file_range
    shares the data (reflinks, NFS), the range read back after the copy -- so
    digest() vouches for what was written, not for what was meant to be.

    inplace: out_fd is the basis itself (--inplace).  A run at its own offset is
    not written at all (only hashed); one from further on is moved forward chunk
    by chunk (the chunks never overlap a later read, as long as the sender kept
    the in-place rule; if it did not, the digest says so).  start: the first
    `start` bytes are already in place (--append); they are hashed too when
    `hash_head` (--append-verify), so the digest covers the whole file.
    """

    def __init__(self, out_fd: int, basis_fd: int | None, block_len: int, basis_size: int,
                 size: int, *, inplace: bool = False, start: int = 0, hash_head: bool = False) -> None:
        if not 1 <= block_len <= MAX_BLOCK_LEN or basis_size < 0 or not 0 <= start <= size:
            raise DeltaError(f"block length {block_len}, basis size {basis_size} or start {start} out of range")
        self.out_fd = out_fd
        self.basis_fd = basis_fd if basis_fd is not None else out_fd
        self.block_len = block_len
        self.basis_size = basis_size
        self.nblocks = block_count(basis_size, block_len)
        self.size = size
        self.inplace = inplace
        self.pos = start
        self.matched = 0
        self.literal = 0
        self.hasher = xxhash.xxh3_128()
        self._buf = bytearray(HASH_CHUNK)
        self._share = not inplace and basis_fd is not None and copy_shares(out_fd)
        if hash_head and start:
            self._hash_out(0, start)

    def _room(self, n: int) -> None:
        if self.pos + n > self.size:
            raise DeltaError(f"delta is longer than the file's {self.size} bytes")

    def _hash_out(self, pos: int, length: int) -> None:
        """Hash output bytes [pos, pos+length) as they are in the file (one reused buffer)."""
        view = memoryview(self._buf)
        end = pos + length
        while pos < end:
            n = os.preadv(self.out_fd, [view[: min(HASH_CHUNK, end - pos)]], pos)
            if n == 0:
                raise OSError(errno.EIO, "output file shorter than written")
            self.hasher.update(view[:n])
            pos += n

    def blocks(self, first: int, count: int) -> int:
        """Basis blocks first .. first+count-1 come next; returns their byte length."""
        if not (0 <= first and 1 <= count and first + count <= self.nblocks):
            raise DeltaError(f"block run {first}+{count} outside the basis's {self.nblocks} blocks")
        start = first * self.block_len
        length = min((first + count) * self.block_len, self.basis_size) - start
        self._room(length)
        if self._share:
            _copy_at(self.basis_fd, self.out_fd, start, self.pos, length)
            self._hash_out(self.pos, length)
        elif not self.inplace:
            self._copy_hashed(self.basis_fd, start, length, _basis_shrank)
        elif start == self.pos:
            self._hash_out(self.pos, length)  # already there: nothing to write
        else:
            self._move(start, length)
        self.pos += length
        self.matched += length
        return length

    def _move(self, src: int, length: int) -> None:
        """In place: copy [src, src+length) to the write position, forward, hashing what moves."""
        self._copy_hashed(self.out_fd, src, length, _basis_shrank)

    def write(self, data: object) -> None:
        """Literal bytes come next."""
        view = memoryview(data).cast("B")  # type: ignore[arg-type]
        self._room(view.nbytes)
        pwrite_all(self.out_fd, view, self.pos)
        self.hasher.update(view)
        self.pos += view.nbytes
        self.literal += view.nbytes

    def write_from(self, fd: int, offset: int, length: int) -> None:
        """Literal bytes [offset, offset+length) of the open file fd come next (a local source)."""
        self._room(length)
        self._copy_hashed(fd, offset, length, _source_shrank)
        self.pos += length
        self.literal += length

    def _copy_hashed(self, fd: int, offset: int, length: int, shrank: Callable[[], SourceChanged]) -> None:
        """Write bytes [offset, offset+length) of fd at the write position, hashing them on the way."""
        view = memoryview(self._buf)
        done = 0
        while done < length:
            n = os.preadv(fd, [view[: min(HASH_CHUNK, length - done)]], offset + done)
            if n == 0:
                raise shrank()
            chunk = view[:n]
            self.hasher.update(chunk)
            pwrite_all(self.out_fd, chunk, self.pos + done)
            done += n

    def digest(self) -> bytes:
        """xxh3-128 of what was written (from `start`, or the whole file with hash_head)."""
        return self.hasher.digest()


def _copy_at(src_fd: int, dst_fd: int, src_off: int, dst_off: int, length: int) -> None:
    """dst[dst_off:+length] = src[src_off:+length]: copy_file_range, else pread/pwrite."""
    global _cfr_unavailable
    if not _cfr_unavailable:
        try:
            while length:
                n = os.copy_file_range(src_fd, dst_fd, length, src_off, dst_off)
                if n == 0:
                    raise _basis_shrank()
                src_off += n
                dst_off += n
                length -= n
            return
        except SourceChanged:
            raise
        except OSError as exc:
            if exc.errno not in _CFR_FALLBACK:
                raise
            if exc.errno == errno.ENOSYS:
                _cfr_unavailable = True
    buf = bytearray(min(length, LITERAL_CHUNK))
    view = memoryview(buf)
    while length:
        n = os.preadv(src_fd, [view[: min(length, LITERAL_CHUNK)]], src_off)
        if n == 0:
            raise _basis_shrank()
        pwrite_all(dst_fd, view[:n], dst_off)
        src_off += n
        dst_off += n
        length -= n
