"""Remote-shell transport (rsync's -e): spawn ``CMD [-l user] host 'zcsync --server ...'``.

Like rsync we split the command with shell rules, add ``-l user`` when the
endpoint names a user, and add no port option (put ``-p`` in the command).
The child's stderr is ours, so ssh's prompts and messages reach the user.
"""
from __future__ import annotations

import contextlib
import os
import select
import shlex
import signal
import subprocess
from collections.abc import Sequence

from ..endpoints import Endpoint
from ..errors import RemoteNotFound, StartupError, Timeout, UsageError
from .base import BaseStream, Buffer, grow_pipe, looks_like_not_found, map_stream_errors, not_found_message, remote_command

_READ_CHUNK = 256 * 1024


def rsh_argv(command: str, endpoint: Endpoint, remote_cmdline: str, ip_version: int | None = None) -> list[str]:
    """The argv rsync would run for -e command: ``CMD [-4|-6] [-l user] host remote-command``
    (-4 / -6 go to the command only when it is ssh, as rsync does)."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise UsageError(f"Cannot parse remote shell command {command!r}: {exc}") from exc
    if not argv:
        raise UsageError("Empty remote shell command")
    if endpoint.host is None:
        raise ValueError("rsh needs a remote endpoint")
    if ip_version and os.path.basename(argv[0]) == "ssh":
        argv.insert(1, f"-{ip_version}")
    if endpoint.user:
        argv += ["-l", endpoint.user]
    return argv + [endpoint.host, remote_cmdline]


def wait_child(proc: subprocess.Popen, timeout: float | None) -> int | None:
    """proc's return code once it exits within timeout seconds (None: no limit), else None.

    Popen.wait(timeout) sleeps in a loop of doubling naps and so notices an exit up to
    twice as late as it happened; a pidfd wakes us when it does (Linux 5.3+).
    """
    if timeout is None or proc.returncode is not None:
        return proc.wait()  # a blocking waitpid(), no naps
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd here, or the child is reaped already
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            return None
    finally:
        os.close(pidfd)
    return proc.wait()  # it has exited: this reaps it at once


class PipeStream(BaseStream):
    """A Stream over a child's stdin/stdout pipes; close() reaps the child."""

    def __init__(
        self, proc: subprocess.Popen, peer: str, timeout: float | None = None, close_wait: float = 5.0
    ) -> None:
        super().__init__(peer, timeout)
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self._rfd = proc.stdout.fileno()
        self._wfd = proc.stdin.fileno()
        self._close_wait = close_wait
        self._got_data = False
        self._eof_seen = False
        self._exit_status: int | None = None
        for fd in (self._rfd, self._wfd):
            os.set_blocking(fd, False)
            grow_pipe(fd)

    def fileno(self) -> int:
        """The read end, for callers that poll."""
        return self._rfd


    def _wait_fd(self, fd: int, for_write: bool, doing: str) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLOUT if for_write else select.POLLIN)
        timeout_ms = None if self._timeout is None else int(self._timeout * 1000)
        if not poller.poll(timeout_ms):
            raise Timeout(f"no progress {doing} {self.peer} for {self._timeout:g} seconds")

    def _recv(self, n: int) -> bytes:
        with map_stream_errors(self.peer, self._timeout, "reading from"):
            while True:
                try:
                    data = os.read(self._rfd, min(n, _READ_CHUNK))
                    break
                except BlockingIOError:
                    self._wait_fd(self._rfd, False, "reading from")
        if data:
            self._got_data = True
            return data
        self._eof_seen = True
        if not self._got_data:
            # EOF before the first byte: did the remote program even start?
            status = self._reap(self._close_wait)
            if looks_like_not_found(status, b""):
                raise RemoteNotFound(not_found_message(self.peer))
        return data

    def _send(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        with map_stream_errors(self.peer, self._timeout, "writing to"):
            while view:
                try:
                    sent = os.write(self._wfd, view)
                except BlockingIOError:
                    self._wait_fd(self._wfd, True, "writing to")
                    continue
                view = view[sent:]

    def _shutdown_write(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]

    def _reap(self, wait: float | None) -> int | None:
        if self._exit_status is None:
            code = wait_child(self.proc, wait)
            if code is None:
                return None
            # Shell convention for a child killed by a signal.
            self._exit_status = 128 - code if code < 0 else code
        return self._exit_status

    @property
    def exit_status(self) -> int | None:
        """The child's exit status (128+N if killed by signal N); None while it runs."""
        if self._exit_status is None and self.proc.poll() is not None:
            self._reap(0)
        return self._exit_status

    def _close(self) -> None:
        self._shutdown_write()
        # Closing our read end makes a child still writing get EPIPE and quit.
        with contextlib.suppress(OSError):
            self.proc.stdout.close()  # type: ignore[union-attr]
        # After an orderly end the child exits by itself; after an error or a
        # timeout it may never, so it gets only a moment before SIGTERM.
        orderly = self._eof_sent or self._eof_seen
        if self._reap(self._close_wait if orderly else min(self._close_wait, 0.5)) is None:
            for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, None)):
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(sig)
                if self._reap(wait) is not None:
                    break


def open_rsh(
    command: str,
    endpoint: Endpoint,
    remote_argv: Sequence[str],
    *,
    program: str | None = None,
    timeout: float | None = None,
    close_wait: float = 5.0,
    ip_version: int | None = None,
) -> PipeStream:
    """Spawn the remote shell command for endpoint and return a stream over its pipes.

    remote_argv is shell-quoted; program (--zcsync-path) goes in front verbatim.
    The exit status (255 when ssh itself failed) is ``stream.exit_status`` after
    close(); a missing remote zcsync is RemoteNotFound from the first read.
    """
    argv = rsh_argv(command, endpoint, remote_command(remote_argv, program), ip_version)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, close_fds=True)
    except OSError as exc:
        raise StartupError(f"Cannot run remote shell '{argv[0]}': {exc.strerror}") from exc
    return PipeStream(proc, endpoint.host or argv[0], timeout=timeout, close_wait=close_wait)

