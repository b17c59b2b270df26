"""The server's end of a remote-shell transport: our own stdin and stdout as a Stream."""
from __future__ import annotations

import os
import select

from ..errors import Timeout
from .base import BaseStream, Buffer, grow_pipe, map_stream_errors

_READ_CHUNK = 256 * 1024


class FdStream(BaseStream):
    """A Stream over two file descriptors (blocking reads and writes, idle timeout by poll)."""

    def __init__(self, rfd: int = 0, wfd: int = 1, peer: str = "client", timeout: float | None = None) -> None:
        super().__init__(peer, timeout)
        self._rfd = rfd
        self._wfd = wfd
        for fd in {rfd, wfd}:  # sshd's pipes to the server are 64 KiB
            grow_pipe(fd)

    @property
    def exit_status(self) -> int | None:
        return None

    def fileno(self) -> int:
        return self._rfd


    def _wait(self, fd: int, events: int, doing: str) -> None:
        if self._timeout is None:
            return
        poller = select.poll()
        poller.register(fd, events)
        if not poller.poll(int(self._timeout * 1000)):
            raise Timeout(f"no progress {doing} {self.peer} for {self._timeout:g} seconds")

    def _recv(self, n: int) -> bytes:
        with map_stream_errors(self.peer, self._timeout, "reading from"):
            self._wait(self._rfd, select.POLLIN, "reading from")
            return os.read(self._rfd, min(n, _READ_CHUNK))

    def _send(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        with map_stream_errors(self.peer, self._timeout, "writing to"):
            while view:
                self._wait(self._wfd, select.POLLOUT, "writing to")
                view = view[os.write(self._wfd, view):]

    def _shutdown_write(self) -> None:
        os.close(self._wfd)

    def _close(self) -> None:
        for fd in {self._rfd} | ({self._wfd} if not self._eof_sent else set()):
            try:
                os.close(fd)
            except OSError:
                pass
