"""The input buffer of a paramiko channel, keeping each packet's bytes as they came.

paramiko's BufferedPipe (a Channel's ``in_buffer``) appends every packet to an array
and copies the array out on every read, with a slice and then ``tobytes()``. That is
three copies of every byte under the GIL, into freshly allocated (and so freshly
faulted) memory. On a pull over paramiko it was the largest single cost of the
client: more than the decryption. PacketPipe keeps the packets in a queue and joins
only what one read returns.

It is a drop-in for what Channel uses of BufferedPipe: feed, read (with PipeTimeout),
read_ready, set_event, empty, close and len().
"""
from __future__ import annotations

import collections
import threading
import time

from paramiko.buffered_pipe import PipeTimeout


class PacketPipe:
    """A thread-safe byte queue that a paramiko transport thread feeds and a reader drains."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._event: threading.Event | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._closed = False

    def set_event(self, event: threading.Event) -> None:
        """Keep event set while there is something to read (or the pipe is closed)."""
        with self._lock:
            self._event = event
            if self._closed or self._size:
                event.set()
            else:
                event.clear()

    def feed(self, data: bytes) -> None:
        """Add a packet's data (called by the transport thread)."""
        with self._lock:
            if self._event is not None:
                self._event.set()
            if data:
                self._chunks.append(bytes(data))
                self._size += len(data)
            self._cv.notify_all()

    def read_ready(self) -> bool:
        with self._lock:
            return self._size > 0

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        """Up to nbytes, waiting for the first; b"" once closed and drained.

        Raises PipeTimeout if nothing came within timeout seconds (0: do not wait).
        """
        with self._lock:
            if not self._size and not self._closed:
                if timeout == 0.0:
                    raise PipeTimeout()
                deadline = None if timeout is None else time.monotonic() + timeout
                while not self._size and not self._closed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise PipeTimeout()
                    self._cv.wait(left)
            out = self._take(nbytes)
            if not self._size and self._event is not None and not self._closed:
                self._event.clear()
            return out

    def empty(self) -> bytes:
        """Everything buffered, now."""
        with self._lock:
            out = self._take(self._size)
            if self._event is not None and not self._closed:
                self._event.clear()
            return out

    def close(self) -> None:
        """No more data will come: readers get what is left, then b""."""
        with self._lock:
            self._closed = True
            self._cv.notify_all()
            if self._event is not None:
                self._event.set()

    def __len__(self) -> int:
        with self._lock:
            return self._size

    def _take(self, nbytes: int) -> bytes:
        """Up to nbytes off the front (the lock held): a whole packet as it is, more joined once."""
        chunks = self._chunks
        parts: list[bytes] = []
        got = 0
        while chunks and got < nbytes:
            chunk = chunks.popleft()
            need = nbytes - got
            if len(chunk) > need:
                chunks.appendleft(chunk[need:])
                chunk = chunk[:need]
            parts.append(chunk)
            got += len(chunk)
        self._size -= got
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)
