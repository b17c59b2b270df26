"""Raw TCP: the client's connection to a ``zcsync daemon``, and the daemon's end of an accepted socket.

The stream is plain bytes on a socket (no encryption: the daemon's challenge/response
protects the password and the request, not the data). Connection failures become our
errors here, in one place: a refused or unreachable host is ``SocketIOError`` (exit 10),
an expired ``--contimeout`` is ``ConnectTimeout`` (exit 35).
"""
from __future__ import annotations

import os
import select
import socket

from .. import fastio
from ..errors import ConnectTimeout, SocketIOError, StreamError, UsageError
from .base import BaseStream, Buffer, map_stream_errors

_READ_CHUNK = 256 * 1024
_SEND_METHODS = (fastio.SENDFILE, fastio.READWRITE)


def send_method() -> str | None:
    """ZCSYNC_SEND_METHOD=sendfile|readwrite forces how file data is sent (benchmarks); unset: sendfile with fallback."""
    value = os.environ.get("ZCSYNC_SEND_METHOD") or None
    if value is not None and value not in _SEND_METHODS:
        raise UsageError(f"ZCSYNC_SEND_METHOD={value}: expected one of {', '.join(_SEND_METHODS)}")
    return value


class SocketStream(BaseStream):
    """A Stream over a connected TCP socket; ``timeout`` is the idle timeout of each read or write.

    File data can bypass user space here: ``sendfile`` sends a file range, and
    ``recv_into`` / ``splice_to_pipe`` receive a payload (after ``take_pending``).
    """

    zero_copy = True

    def __init__(self, sock: socket.socket, peer: str, timeout: float | None = None) -> None:
        super().__init__(peer, timeout)
        self.sock = sock
        self.send_method = send_method()
        sock.settimeout(timeout)

    @property
    def exit_status(self) -> int | None:
        return None  # there is no remote command, only a peer

    def fileno(self) -> int:
        return self.sock.fileno()

    def _timeout_changed(self) -> None:
        self.sock.settimeout(self._timeout)

    def _recv(self, n: int) -> bytes:
        with map_stream_errors(self.peer, self._timeout, "reading from"):
            return self.sock.recv(min(n, _READ_CHUNK))

    def _send(self, data: Buffer) -> None:
        # send() in a loop rather than sendall(): the timeout is per step of progress
        # (rsync's --timeout), not a limit on the whole buffer.
        view = memoryview(data).cast("B")
        with map_stream_errors(self.peer, self._timeout, "writing to"):
            while view:
                view = view[self.sock.send(view):]

    def write_more(self, data: Buffer) -> None:
        """Send all of data, telling the kernel more follows at once (MSG_MORE: a frame
        header leaves in the same segment as the file bytes sent after it)."""
        view = memoryview(data).cast("B")
        with map_stream_errors(self.peer, self._timeout, "writing to"):
            while view:
                view = view[self.sock.send(view, socket.MSG_MORE):]
        self.bytes_written += len(data)

    def sendfile(self, fd: int, offset: int, length: int) -> None:
        """Send bytes [offset, offset+length) of fd (sendfile, or pread + send).

        fastio.SourceChanged (not mapped to a stream error) if the file ends early;
        its ``got`` bytes were sent.
        """
        short: fastio.SourceChanged | None = None
        with map_stream_errors(self.peer, self._timeout, "writing to"):
            try:
                fastio.send_file(self.sock.fileno(), fd, offset, length, timeout=self._timeout,
                                 method=self.send_method)
            except fastio.SourceChanged as exc:
                short = exc
        if short is not None:
            self.bytes_written += short.got
            raise short
        self.bytes_written += length

    def recv_into(self, view: memoryview) -> int:
        """Receive at most len(view) bytes into view; StreamError at EOF."""
        with map_stream_errors(self.peer, self._timeout, "reading from"):
            n = self.sock.recv_into(view)
        if not n:
            raise StreamError(f"{self.peer} closed the connection in the middle of a message")
        self.bytes_read += n
        return n

    def splice_to_pipe(self, pipe_w: int, n: int) -> int:
        """Move up to n bytes (at least one) from the socket into a pipe; StreamError at EOF."""
        fd = self.sock.fileno()
        with map_stream_errors(self.peer, self._timeout, "reading from"):
            while True:
                try:
                    k = os.splice(fd, pipe_w, n, flags=os.SPLICE_F_MOVE | os.SPLICE_F_MORE)
                except BlockingIOError:  # a socket with a timeout is non-blocking underneath
                    fastio.wait_ready(fd, select.POLLIN, self._timeout)
                    continue
                break
        if not k:
            raise StreamError(f"{self.peer} closed the connection in the middle of a message")
        self.bytes_read += k
        return k

    def _shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer is gone already: the next read says so

    def _close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def family_of(ip_version: int | None) -> socket.AddressFamily:
    """The address family -4 / -6 ask for (none: whichever getaddrinfo offers)."""
    return {4: socket.AF_INET, 6: socket.AF_INET6}.get(ip_version or 0, socket.AF_UNSPEC)


def connect(host: str, port: int, *, connect_timeout: float | None = None,
            timeout: float | None = None, family: socket.AddressFamily = socket.AF_UNSPEC,
            bind: str | None = None) -> SocketStream:
    """Open a TCP connection to host:port (of one address family, or any getaddrinfo offers),
    from the local address ``bind`` if given (rsync's --address)."""
    try:
        infos = socket.getaddrinfo(host, port, family, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SocketIOError(f"getaddrinfo: {host} {port}: {exc.strerror}") from exc
    last: OSError | None = None
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(connect_timeout)
            if bind is not None:
                try:
                    local = socket.getaddrinfo(bind, 0, family, kind, proto, socket.AI_PASSIVE)[0][4]
                except socket.gaierror as exc:
                    raise SocketIOError(f"getaddrinfo: bind address {bind}: {exc.strerror}") from exc
                sock.bind(local)
            sock.connect(addr)
        except TimeoutError as exc:
            sock.close()
            raise ConnectTimeout(f"connecting to {host} port {port} took longer than "
                                 f"{connect_timeout:g} seconds") from exc
        except OSError as exc:
            sock.close()
            last = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return SocketStream(sock, peer=host, timeout=timeout)
    assert last is not None
    raise SocketIOError(f"failed to connect to {host} port {port}: {last.strerror or last} "
                        f"({last.errno})") from last
