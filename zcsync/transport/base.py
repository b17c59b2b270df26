"""The whole transport contract: a byte stream to the peer, and the error mapping around it.

The engine frames its messages on a :class:`Stream` and never imports paramiko,
socket or subprocess. Each transport translates its foreign exceptions in one
place, raising ours ``from`` the original.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import select
import shlex
import stat
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Protocol, runtime_checkable

from ..errors import StreamError, Timeout, ZcsyncError

Buffer = bytes | bytearray | memoryview
READ_AHEAD = 256 * 1024
PIPE_SIZE = 1024 * 1024  # fewer wakeups than the 64 KiB default on bulk data
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def grow_pipe(fd: int) -> None:
    """Give a pipe PIPE_SIZE bytes of buffer (both ends share it); anything else, or a size
    over /proc/sys/fs/pipe-max-size or the user's pipe quota, is left as it is."""
    with contextlib.suppress(OSError):
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)


@runtime_checkable
class Stream(Protocol):
    """A reliable, ordered byte stream to the remote ``zcsync --server``."""

    #: Idle timeout in seconds (rsync's --timeout): a read or write that makes no
    #: progress for this long raises errors.Timeout. None waits forever.
    timeout: float | None

    def read(self, n: int) -> bytes:
        """Return exactly n bytes; fewer only when the peer closed the stream (EOF).

        Implementations read ahead and keep the rest, so that a stream of small frames
        costs one system call per many frames, not two per frame.
        """
        ...

    def write(self, data: Buffer) -> None:
        """Send all of data."""
        ...

    def write_eof(self) -> None:
        """Tell the peer we will send nothing more (half close)."""
        ...

    def close(self) -> None:
        """Tear the stream down and collect the peer's exit status; idempotent."""
        ...

    @property
    def exit_status(self) -> int | None:
        """The remote command's exit status once known (255 is ssh's own failure)."""
        ...

    def __enter__(self) -> Stream: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class BaseStream:
    """Shared plumbing: exact reads over a partial-read primitive, context manager.

    Subclasses implement ``_recv(n)`` (at least one byte, or b"" at EOF),
    ``_send(data)`` (all of it), ``_shutdown_write()`` and ``_close()``, and
    raise our errors (use :func:`map_stream_errors`).
    """

    def __init__(self, peer: str, timeout: float | None = None) -> None:
        self.peer = peer
        self._timeout = timeout
        self._closed = False
        self._eof_sent = False
        self.bytes_read = 0
        self.bytes_written = 0
        self._pending = b""  # read ahead: bytes from _pos on are not yet returned
        self._pos = 0

    @property
    def timeout(self) -> float | None:
        return self._timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        if value is not None and value <= 0:
            raise ValueError("timeout must be positive or None")
        self._timeout = value
        self._timeout_changed()

    def _timeout_changed(self) -> None:
        """Hook for subclasses that push the timeout down to a socket."""

    def read(self, n: int, ahead: bool = True) -> bytes:
        """Return exactly n bytes; fewer only when the peer closed the stream (EOF).

        Reads ahead (at least READ_AHEAD bytes per system call) and keeps the rest, so a
        stream of small frames costs one read per many frames, not two per frame. With
        ahead=False it reads no more than asked: the caller moves what follows itself.
        """
        if self._closed:
            raise StreamError(f"stream to {self.peer} is closed")
        if n <= 0:
            return b""
        pending, pos = self._pending, self._pos
        if len(pending) - pos >= n:  # the common case: copy out n bytes, nothing else
            self._pos = pos + n
            self.bytes_read += n
            return pending[pos:pos + n]
        parts = [pending[pos:]] if pos < len(pending) else []
        got = len(pending) - pos
        self._pending, self._pos = b"", 0
        # Small reads fetch READ_AHEAD bytes at once; a big one (a file's data frame) fetches
        # just what it needs, so its bytes are joined once and not sliced off a bigger buffer.
        ahead = ahead and n < READ_AHEAD
        while got < n:
            chunk = self._recv(max(n - got, READ_AHEAD) if ahead else n - got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        data = b"".join(parts) if len(parts) != 1 else parts[0]
        if got > n:
            data, self._pending = data[:n], data  # the rest stays where it is, from _pos on
            self._pos = n
        self.bytes_read += len(data)
        return data

    def take_pending(self, n: int) -> bytes:
        """Up to n bytes already read ahead (and counted as read), without a system call.

        A caller that moves the rest of a payload with its own system calls (splice,
        recv_into) takes these first: they come before anything still in the kernel.
        """
        pending, pos = self._pending, self._pos
        if pos >= len(pending) or n <= 0:
            return b""
        taken = pending[pos:pos + n]
        self._pos = pos + len(taken)
        self.bytes_read += len(taken)
        return taken

    def write(self, data: Buffer) -> None:
        """Send all of data."""
        if self._closed:
            raise StreamError(f"stream to {self.peer} is closed")
        if self._eof_sent:
            raise StreamError(f"write to {self.peer} after write_eof()")
        if len(data):
            self._send(data)
            self.bytes_written += len(data)

    def write_eof(self) -> None:
        """Tell the peer we will send nothing more (half close)."""
        if not self._eof_sent and not self._closed:
            self._eof_sent = True
            self._shutdown_write()

    def close(self) -> None:
        """Tear the stream down and collect the peer's exit status; idempotent."""
        if not self._closed:
            self._closed = True
            self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    def has_input(self) -> bool:
        """Can read() return something without waiting? (False when unsure.)"""
        return self._pos < len(self._pending) or self._input_waiting()

    def _input_waiting(self) -> bool:
        """Is the peer's next byte already here? Polls fileno() where the stream has one;
        False when unsure (subclasses without a descriptor may override)."""
        fileno = getattr(self, "fileno", None)
        if fileno is None:
            return False
        poller = select.poll()
        poller.register(fileno(), select.POLLIN)
        return bool(poller.poll(0))

    def __enter__(self) -> BaseStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- for subclasses -------------------------------------------------
    def _recv(self, n: int) -> bytes:
        raise NotImplementedError

    def _send(self, data: Buffer) -> None:
        raise NotImplementedError

    def _shutdown_write(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


@contextlib.contextmanager
def map_stream_errors(peer: str, timeout: float | None, doing: str = "reading from") -> Iterator[None]:
    """Translate OS-level failures of an established stream into our errors."""
    try:
        yield
    except ZcsyncError:
        raise
    except TimeoutError as exc:  # socket.timeout is TimeoutError since 3.10
        raise Timeout(f"no progress {doing} {peer} for {timeout:g} seconds") from exc
    except EOFError as exc:
        raise StreamError(f"{peer} closed the connection") from exc
    except OSError as exc:
        raise StreamError(f"{doing} {peer}: {exc.strerror or exc}") from exc


def remote_command(argv: Sequence[str], program: str | None = None) -> str:
    """Build the command line the remote shell runs.

    Every element of argv is shell-quoted. ``program`` (``--zcsync-path``) goes
    in verbatim, like rsync's --rsync-path, so it may be a command prefix such
    as ``env PYTHONPATH=/opt/z python3 -m zcsync`` or ``cd /x && zcsync``.
    """
    joined = shlex.join(argv)
    if program:
        return f"{program} {joined}" if joined else program
    return joined


# Remote stderr that means our program never started, seen before the first
# protocol byte. Shells and env(1) also exit 127, which is the main signal; the
# text catches shells that don't, and ``python -m zcsync`` without the package.
NOT_FOUND_MARKERS = (b"command not found", b"No module named zcsync")


def looks_like_not_found(exit_status: int | None, stderr_head: bytes) -> bool:
    """True when the remote side evidently never started our program."""
    if exit_status == 127:
        return True
    return any(m in stderr_head for m in NOT_FOUND_MARKERS)


def not_found_message(host: str | None) -> str:
    """The one line the user sees when the remote zcsync is missing."""
    return f"zcsync not found on {host or 'the remote host'} (install it there or pass --zcsync-path)"
