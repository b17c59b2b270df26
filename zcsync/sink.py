"""Receiver write modes: how a received file's bytes get from the socket into its temp file.

``--write-mode`` picks one (the receiving side's option; a push sends it to the server):

- ``buffered``: recv_into one reused buffer, hash it, write it.
- ``splice``: socket -> pipe -> file inside the kernel; the bytes are hashed afterwards
  from the page cache (pread of the range just written).
- ``direct``: recv_into a page-aligned buffer, hash it, write it with O_DIRECT at aligned
  offsets (the page cache is bypassed: a backup does not evict the server's working
  set); the unaligned tail is written after clearing O_DIRECT. Every write is followed
  by the writer's fsync as usual.
- ``auto``: ``buffered`` — the fastest of the three measured on this machine kind
  (tmpfs, 1 GiB through the daemon, docs/benchmarks.md; a disk was not benchmarked):
  the receiver is bound by memory copies there, splice saves one copy but pays it back
  re-reading the range to hash it, and O_DIRECT has no page cache to bypass on tmpfs.

Each mode is probed per filesystem the first time it is used: O_DIRECT that the
filesystem refuses (EINVAL) or splice that it cannot do falls back to buffered writes,
and the fallback is remembered for that st_dev. Only payloads read from a socket take
these paths; data from other streams (ssh, pipes) and compressed frames are written with
``Sink.write``. Whatever the mode, the digest covers exactly the bytes written.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import threading
from typing import Protocol

import xxhash

from .fastio import pwrite_all, pwrite_sparse

log = logging.getLogger(__name__)

AUTO = "auto"
BUFFERED = "buffered"
SPLICE = "splice"
DIRECT = "direct"
WRITE_MODES = (AUTO, DIRECT, SPLICE, BUFFERED)
DEFAULT_MODE = BUFFERED  # what auto means (see the module docstring)

BUFFER_SIZE = 1 << 20  # buffered: one recv_into / write per MiB
DIRECT_BUFFER = 4 << 20  # direct: O_DIRECT writes of 4 MiB
ALIGN = 4096  # O_DIRECT offsets and lengths (the page size covers every logical block size)
PIPE_SIZE = 1 << 20

# errnos that mean "this filesystem cannot do that here": fall back, and remember.
_UNSUPPORTED = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})

_unsupported: dict[tuple[int, str], str] = {}  # (st_dev, mode) -> why it fell back
_local = threading.local()


class RawStream(Protocol):
    """What a raw sink needs from the stream (transport.tcp.SocketStream)."""

    def take_pending(self, n: int) -> bytes: ...
    def recv_into(self, view: memoryview) -> int: ...
    def splice_to_pipe(self, pipe_w: int, n: int) -> int: ...


def unsupported() -> dict[tuple[int, str], str]:
    """The (st_dev, mode) pairs that fell back to buffered writes, and why (for tests and logs)."""
    return dict(_unsupported)


def reset() -> None:
    _unsupported.clear()


def _buffer(size: int) -> mmap.mmap:
    """A page-aligned buffer of this thread's, reused from file to file."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    buf = buffers.get(size)
    if buf is None:
        buf = buffers[size] = mmap.mmap(-1, size)
    return buf


def _pipe() -> tuple[int, int]:
    pipe = getattr(_local, "pipe", None)
    if pipe is None:
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:  # over pipe-max-size or the per-user quota: keep the default
            pass
        pipe = _local.pipe = (r, w)
    return pipe


def _discard(stream: RawStream, n: int) -> None:
    """Read and drop the rest of a payload, so the stream stays at a frame boundary."""
    n -= len(stream.take_pending(n))
    view = memoryview(_buffer(BUFFER_SIZE))
    while n:
        n -= stream.recv_into(view[:min(n, len(view))])


class Sink:
    """Writes one file's data into fd from offset 0 on (pwrite: the fd's position is not
    used or moved), hashing it (xxh3-128).

    ``write(payload)`` takes bytes already read; raw sinks also ``take(stream, n)``: the
    next n bytes of the stream, moved by the mode's own system calls. If the file write
    fails, take() still consumes the n bytes before it raises, so the stream stays at a
    frame boundary and the caller can skip the rest of the file.
    """

    raw = False
    mode = BUFFERED

    def __init__(self, fd: int, sparse: bool = False) -> None:
        self.fd = fd
        self.hasher = xxhash.xxh3_128()
        self.pos = 0
        self.sparse = sparse  # -S: all-zero blocks become holes

    def write(self, payload: bytes | bytearray | memoryview) -> None:
        self.hasher.update(payload)
        view = memoryview(payload).cast("B")
        if self.sparse:
            pwrite_sparse(self.fd, view, self.pos)
        else:
            pwrite_all(self.fd, view, self.pos)
        self.pos += len(view)

    def take(self, stream: RawStream, n: int) -> None:
        raise NotImplementedError

    def finish(self) -> bytes:
        """Complete the writes; the digest of everything written."""
        if self.sparse and os.fstat(self.fd).st_size < self.pos:
            os.ftruncate(self.fd, self.pos)  # a hole at the end still counts in the size
        return self.hasher.digest()


class BufferedSink(Sink):
    raw = True

    def take(self, stream: RawStream, n: int) -> None:
        pending = stream.take_pending(n)
        left = n - len(pending)
        try:
            if pending:
                self.write(pending)
            view = memoryview(_buffer(BUFFER_SIZE))
            while left:
                k = stream.recv_into(view[:min(left, len(view))])
                left -= k
                self.write(view[:k])
        except OSError:
            _discard(stream, left)
            raise


class SpliceSink(BufferedSink):
    mode = SPLICE

    def __init__(self, fd: int, dev: int) -> None:
        super().__init__(fd)
        self.dev = dev
        self.splicing = True  # until the filesystem refuses a splice

    def take(self, stream: RawStream, n: int) -> None:
        if not self.splicing:
            super().take(stream, n)
            return
        pending = stream.take_pending(n)
        left = n - len(pending)
        try:
            if pending:
                self.write(pending)
            pipe_r, pipe_w = _pipe()
            while left:
                k = stream.splice_to_pipe(pipe_w, min(left, PIPE_SIZE))
                left -= k
                self._pipe_to_file(pipe_r, k)
        except OSError:
            _discard(stream, left)
            raise

    def _pipe_to_file(self, pipe_r: int, k: int) -> None:
        """k bytes waiting in the pipe go to the file at pos, then into the digest."""
        start = self.pos
        moved = 0
        try:
            while moved < k:
                moved += os.splice(pipe_r, self.fd, k - moved, offset_dst=start + moved)
        except OSError as exc:
            # Empty the pipe first: its bytes are the file's, written another way or dropped.
            rest = bytearray(k - moved)
            view = memoryview(rest)
            got = 0
            while got < len(rest):
                got += os.readv(pipe_r, [view[got:]])
            self._hash_written(start, start + moved)
            self.pos = start + moved
            if exc.errno not in _UNSUPPORTED:
                raise
            _unsupported[(self.dev, SPLICE)] = os.strerror(exc.errno or 0)
            log.debug("splice to this filesystem failed (%s): buffered writes from now on",
                      os.strerror(exc.errno or 0))
            self.splicing = False
            self.write(rest)
            return
        self._hash_written(start, start + k)
        self.pos = start + k

    def _hash_written(self, pos: int, end: int) -> None:
        view = memoryview(_buffer(BUFFER_SIZE))
        while pos < end:
            n = os.preadv(self.fd, [view[:min(len(view), end - pos)]], pos)
            if n == 0:
                raise OSError(errno.EIO, "temp file shorter than written")
            self.hasher.update(view[:n])
            pos += n


class DirectSink(Sink):
    """O_DIRECT writes from a page-aligned buffer, filled straight from the socket."""

    raw = True
    mode = DIRECT

    def __init__(self, fd: int, dev: int) -> None:
        super().__init__(fd)
        self.dev = dev
        self.buf = _buffer(DIRECT_BUFFER)
        self.view = memoryview(self.buf)
        self.fill = 0
        self.direct = True
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)  # EINVAL here: make_sink falls back

    def write(self, payload: bytes | bytearray | memoryview) -> None:
        data = memoryview(payload).cast("B")
        while data:
            k = min(len(data), len(self.buf) - self.fill)
            self.view[self.fill:self.fill + k] = data[:k]
            self.hasher.update(data[:k])
            self._filled(k)
            data = data[k:]

    def take(self, stream: RawStream, n: int) -> None:
        pending = stream.take_pending(n)
        left = n - len(pending)
        try:
            if pending:
                self.write(pending)
            while left:
                room = self.view[self.fill:self.fill + min(left, len(self.buf) - self.fill)]
                k = stream.recv_into(room)
                self.hasher.update(room[:k])
                left -= k
                self._filled(k)
        except OSError:
            _discard(stream, left)
            raise

    def _filled(self, k: int) -> None:
        self.fill += k
        if self.fill == len(self.buf):
            self._flush(self.fill)

    def _flush(self, length: int) -> None:
        """Write buf[:length] at pos (length aligned while O_DIRECT is on)."""
        try:
            pwrite_all(self.fd, self.view[:length], self.pos)
        except OSError as exc:
            if not self.direct or exc.errno not in _UNSUPPORTED:
                raise
            _unsupported[(self.dev, DIRECT)] = os.strerror(exc.errno or 0)
            self._clear_direct()
            pwrite_all(self.fd, self.view[:length], self.pos)
        self.pos += length
        self.view[:self.fill - length] = self.view[length:self.fill]
        self.fill -= length

    def _clear_direct(self) -> None:
        if self.direct:
            self.direct = False
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)

    def finish(self) -> bytes:
        aligned = self.fill - self.fill % ALIGN
        if aligned:
            self._flush(aligned)
        self._clear_direct()
        if self.fill:
            self._flush(self.fill)
        return super().finish()


def make_sink(fd: int, mode: str, raw: bool, sparse: bool = False) -> Sink:
    """The sink for one file in this write mode; raw: payloads come straight off a socket.

    Without raw (ssh, pipes) every mode is a plain buffered write of each payload; so is
    every mode with sparse (-S), which must see the bytes to leave holes.
    """
    if mode not in WRITE_MODES:
        raise ValueError(f"unknown write mode {mode!r}")
    if sparse:
        return BufferedSink(fd, sparse=True) if raw else Sink(fd, sparse=True)
    if not raw:
        return Sink(fd)
    if mode == AUTO:
        mode = DEFAULT_MODE
    if mode == BUFFERED:
        return BufferedSink(fd)
    dev = os.fstat(fd).st_dev
    if (dev, mode) in _unsupported:
        return BufferedSink(fd)
    if mode == SPLICE:
        return SpliceSink(fd, dev)
    try:
        return DirectSink(fd, dev)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
        _unsupported[(dev, DIRECT)] = os.strerror(exc.errno or 0)
        log.debug("O_DIRECT refused on this filesystem (%s): buffered writes", os.strerror(exc.errno or 0))
        return BufferedSink(fd)
