"""Raw TCP: the client's connection to a ``zcsync daemon``, and the daemon's end of an accepted socket.

The stream is plain bytes on a socket (no encryption: the daemon's challenge/response
protects the password and the request, not the data). Connection failures become our
errors here, in one place: a refused or unreachable host is ``SocketIOError`` (exit 10),
an expired ``--contimeout`` is ``ConnectTimeout`` (exit 35).
"""
from __future__ import annotations

import socket

from ..errors import ConnectTimeout, SocketIOError
from .base import BaseStream, Buffer, map_stream_errors

_READ_CHUNK = 256 * 1024


class SocketStream(BaseStream):
    """A Stream over a connected TCP socket; ``timeout`` is the idle timeout of each read or write."""

    def __init__(self, sock: socket.socket, peer: str, timeout: float | None = None) -> None:
        super().__init__(peer, timeout)
        self.sock = sock
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


def connect(host: str, port: int, *, connect_timeout: float | None = None,
            timeout: float | None = None) -> SocketStream:
    """Open a TCP connection to host:port (any address family getaddrinfo offers)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SocketIOError(f"getaddrinfo: {host} {port}: {exc.strerror}") from exc
    last: OSError | None = None
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(connect_timeout)
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
