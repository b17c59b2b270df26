"""SSH-bootstrapped raw TCP (``--transport=tcp``): ssh starts a one-shot listener, the data skips ssh.

The client starts ``zcsync --server --listen ...`` over ssh, host key checked as for any
ssh transfer. The server binds a TCP listener on the address the ssh connection
arrived on, on a port the kernel picks, draws a 256-bit one-time key and writes one
line to its stdout, which only the (encrypted) ssh channel carries::

    ZCSYNC-LISTEN <port> <key: 64 lowercase hex digits>\\n

The client connects to that port on the host its ssh connection reached, and the two
prove to each other that they know the key, with the daemon's HMAC-SHA256 proofs over
both nonces (auth.py; the key stands in for the password)::

    server -> client   "ZCSYNCL\\x01", 32-byte server nonce          (on accept)
    client -> server   "ZCSYNCL\\x01", 32-byte client nonce, 32-byte client proof
    server -> client   32-byte server proof

Then the ordinary protocol (docs/protocol.md) runs on the socket, exactly as over ssh.
The listener accepts exactly one connection and closes; an absolute deadline covers
the accept and the proofs. A wrong proof closes the socket and the server exits (5)
before it has touched the filesystem: a stranger who reaches the port first can spoil
that one transfer, but cannot read or write anything.

Where the listener binds: the server address of ``$SSH_CONNECTION`` (the local address
the client's ssh connection reached), so the port is open only where the client came
in. Without ``$SSH_CONNECTION`` (a remote shell other than OpenSSH's sshd) we cannot
know which address the client can reach, so the listener binds every address (``::``
dual-stack, else ``0.0.0.0``); the key and the one-connection rule keep that safe, at
the cost of showing a port for a few seconds on every interface.

The key only authenticates the start of the connection. The data that follows is
neither encrypted nor authenticated: anyone on the path can read it, and an attacker
who can inject packets can alter it.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import select
import socket
import time
from collections.abc import Mapping

from . import auth
from .endpoints import Endpoint
from .errors import ConnectTimeout, SocketIOError, StartupError, StreamError, ZcsyncError
from .options import Options
from .protocol import MAGIC as PROTOCOL_MAGIC
from .transport import tcp
from .transport.base import Stream

log = logging.getLogger(__name__)

KEY_SIZE = 32
LISTEN_WORD = b"ZCSYNC-LISTEN "
MAX_LINE = len(LISTEN_WORD) + 5 + 1 + 2 * KEY_SIZE + 1  # the longest valid line, newline included
MAGIC = b"ZCSYNCL\x01"
DEFAULT_ACCEPT_TIMEOUT = 10  # seconds for the client to connect and authenticate (--contimeout overrides)
MAX_ACCEPT_TIMEOUT = 3600
LINE_TIMEOUT = 60.0  # for the remote zcsync to start and print its line
_BANNER_SHOW = 60
_LINE = re.compile(rb"ZCSYNC-LISTEN ([1-9][0-9]{0,4}) ([0-9a-f]{64})\n")
# Binds the proofs to this use of the key (the daemon's proofs bind a request digest there).
_CONTEXT = auth.request_digest(b"zcsync ssh-bootstrapped tcp v1")


class ListenLineError(StartupError):
    """{detail}"""


# -- the listen line ---------------------------------------------------------------------

def new_key() -> bytes:
    """A fresh 256-bit one-time key from the OS CSPRNG."""
    return secrets.token_bytes(KEY_SIZE)


def format_listen_line(port: int, key: bytes) -> bytes:
    """The one line the server writes on the ssh channel."""
    if not 0 < port < 65536 or len(key) != KEY_SIZE:
        raise ValueError("bad port or key")
    return LISTEN_WORD + str(port).encode() + b" " + key.hex().encode() + b"\n"


def _show(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace").encode("unicode_escape").decode("ascii")


def parse_listen_line(line: bytes, host: str = "the remote host") -> tuple[int, bytes]:
    """(port, key) from the server's line; anything but the exact format is an error (exit 5)."""
    if not line.startswith(LISTEN_WORD):
        if line.startswith(PROTOCOL_MAGIC[:7]):
            raise ListenLineError(f"zcsync on {host} does not support --transport=tcp "
                                  "(upgrade it there, or leave out --transport)")
        raise ListenLineError("protocol mismatch: is the remote shell printing text? "
                              f"Received: {_show(line[:_BANNER_SHOW])}")
    match = _LINE.fullmatch(line)
    if match is None or int(match.group(1)) > 65535:
        raise ListenLineError(f"zcsync on {host} sent a malformed listen line: {_show(line[:MAX_LINE])}")
    return int(match.group(1)), bytes.fromhex(match.group(2).decode("ascii"))


def read_listen_line(stream: Stream, host: str = "the remote host") -> bytes:
    """Read the server's line from the ssh stream, byte by byte and bounded.

    A banner from a login script is reported as soon as it differs from the line's
    first word, without waiting for more than its own first line.
    """
    got = bytearray()
    while len(got) < MAX_LINE and not got.endswith(b"\n"):
        b = stream.read(1)
        if not b:
            if not got:
                stream.close()  # collect the exit status: our caller says what it means
                raise StreamError(f"zcsync on {host} exited before it started listening"
                                  + _status_note(stream))
            break
        got += b
        if not LISTEN_WORD.startswith(bytes(got[:len(LISTEN_WORD)])):
            while len(got) < _BANNER_SHOW and not got.endswith(b"\n"):
                b = stream.read(1)
                if not b:
                    break
                got += b
            break
    return bytes(got)


def _status_note(stream: Stream) -> str:
    status = stream.exit_status
    return f" (exit status {status}; its messages, if any, are above)" if status is not None else ""


# -- the proofs ----------------------------------------------------------------------------

def client_proof(key: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return auth.client_proof(key, server_nonce, client_nonce, b"", b"", _CONTEXT)


def server_proof(key: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return auth.server_proof(key, server_nonce, client_nonce, b"", b"", _CONTEXT)


class _Closed(Exception):
    """The peer closed the connection before the proofs were done."""


class _Late(Exception):
    """The deadline passed."""


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    parts, got = [], 0
    while got < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Late()
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(n - got)
        except TimeoutError:
            raise _Late() from None
        except OSError as exc:
            if exc.errno in (errno.ECONNRESET, errno.EPIPE):
                raise _Closed() from None
            raise
        if not chunk:
            raise _Closed()
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _Late()
    sock.settimeout(remaining)
    try:
        sock.sendall(data)
    except TimeoutError:
        raise _Late() from None
    except OSError as exc:
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            raise _Closed() from None
        raise


def authenticate_client(sock: socket.socket, key: bytes, deadline: float, where: str) -> None:
    """Client side: prove we hold the key, and check that the server holds it too."""
    try:
        head = _recv_exact(sock, len(MAGIC) + auth.NONCE_SIZE, deadline)
        if head[:len(MAGIC)] != MAGIC:
            raise StartupError(f"{where} is not the zcsync listener we started (it sent "
                               f"{_show(head[:len(MAGIC)])})")
        server_nonce, client_nonce = head[len(MAGIC):], auth.new_nonce()
        _send_all(sock, MAGIC + client_nonce + client_proof(key, server_nonce, client_nonce), deadline)
        proof = _recv_exact(sock, auth.PROOF_SIZE, deadline)
    except _Closed:
        raise StartupError(f"{where} closed the data connection before the key was proven "
                           "(did another connection reach the one-shot listener first?)") from None
    except _Late:
        raise ConnectTimeout(f"authenticating the data connection to {where} did not finish in time") from None
    except OSError as exc:
        raise SocketIOError(f"authenticating the data connection to {where}: {exc.strerror or exc}") from exc
    if not auth.proofs_equal(server_proof(key, server_nonce, client_nonce), proof):
        raise StartupError(f"{where} could not prove that it holds the one-time key: "
                           "something other than the zcsync we started answered on that port")


def authenticate_server(sock: socket.socket, key: bytes, deadline: float, where: str) -> None:
    """Server side: the client must prove it holds the key before anything else happens."""
    try:
        server_nonce = auth.new_nonce()
        _send_all(sock, MAGIC + server_nonce, deadline)
        got = _recv_exact(sock, len(MAGIC) + auth.NONCE_SIZE + auth.PROOF_SIZE, deadline)
        magic, client_nonce, proof = got[:8], got[8:8 + auth.NONCE_SIZE], got[8 + auth.NONCE_SIZE:]
        if magic != MAGIC or not auth.proofs_equal(client_proof(key, server_nonce, client_nonce), proof):
            raise StartupError(f"the data connection from {where} did not prove the one-time key: refused")
        _send_all(sock, server_proof(key, server_nonce, client_nonce), deadline)
    except _Closed:
        raise StartupError(f"the data connection from {where} closed before proving the key") from None
    except _Late:
        raise ConnectTimeout(f"the data connection from {where} did not prove the key in time") from None
    except OSError as exc:
        raise SocketIOError(f"authenticating the data connection from {where}: {exc.strerror or exc}") from exc


# -- the server's listener -------------------------------------------------------------------

def bind_address(environ: Mapping[str, str] | None = None) -> str | None:
    """The address to listen on: $SSH_CONNECTION's server address; None (every address) if unset."""
    value = (os.environ if environ is None else environ).get("SSH_CONNECTION")
    if value is None:
        return None
    fields = value.split()
    if len(fields) != 4:
        raise StartupError(f"cannot tell where the client came in: SSH_CONNECTION is {value!r}")
    try:
        socket.getaddrinfo(fields[2], None, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        raise StartupError(f"cannot tell where the client came in: SSH_CONNECTION is {value!r}") from None
    return fields[2]


def open_listener(address: str | None) -> socket.socket:
    """A listening TCP socket on address (None: every address), on a port the kernel picks."""
    if address is None:
        candidates: list[tuple[int, tuple]] = []
        if socket.has_ipv6:
            candidates.append((socket.AF_INET6, ("::", 0)))
        candidates.append((socket.AF_INET, ("0.0.0.0", 0)))
    else:
        infos = socket.getaddrinfo(address, 0, type=socket.SOCK_STREAM,
                                   flags=socket.AI_NUMERICHOST | socket.AI_PASSIVE)
        candidates = [(family, addr) for family, _, _, _, addr in infos]
    last: OSError | None = None
    for family, addr in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_INET6 and address is None:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(addr)
            sock.listen(1)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    assert last is not None
    raise SocketIOError(f"cannot listen on {address or 'any address'}: {last.strerror or last}") from last


def accept_one(listener: socket.socket, key: bytes, timeout: float,
               control_fd: int | None = None) -> tuple[socket.socket, str]:
    """Accept exactly one connection within timeout seconds and authenticate it.

    The listener is closed as soon as a connection arrives, whatever its proof. With
    control_fd (the ssh channel), end at once when the client goes away.
    Returns (socket, "address port") of an authenticated client.
    """
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    if control_fd is not None:
        poller.register(control_fd, select.POLLIN)
    port = listener.getsockname()[1]
    accepted = None
    try:
        while accepted is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectTimeout(f"no data connection arrived within {timeout:g} seconds "
                                     f"(is port {port} reachable from the client?)")
            for fd, events in poller.poll(max(1, int(remaining * 1000))):
                if fd == control_fd:
                    if events & select.POLLNVAL or not _read_control(control_fd):
                        raise StartupError("the client closed the ssh channel before connecting")
                elif fd == listener.fileno():
                    with contextlib.suppress(BlockingIOError, InterruptedError, ConnectionAbortedError):
                        accepted = listener.accept()
                    break
    finally:
        listener.close()  # one connection, whatever it proves
    sock, addr = accepted
    where = f"{addr[0]} port {addr[1]}"
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        authenticate_server(sock, key, deadline, where)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock, where


def _read_control(fd: int) -> bool:
    """Drain what the client wrote on the ssh channel (nothing, normally); False at EOF."""
    try:
        return bool(os.read(fd, 4096))
    except BlockingIOError:
        return True
    except OSError:
        return False


# -- the client ---------------------------------------------------------------------------------

def data_host(control: Stream, endpoint: Endpoint) -> str:
    """The host to open the data connection to: the one the ssh connection reached.

    With the built-in client, the peer address of its TCP connection (so DNS cannot
    send us elsewhere); through a ProxyCommand or ProxyJump, and with -e, ssh_config's
    HostName for the location's host (as our client and OpenSSH read it), else the host
    as written.
    """
    sock = getattr(getattr(control, "transport", None), "sock", None)
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            addr = sock.getpeername()
            if sock.family == socket.AF_INET6 and addr[3]:
                return f"{addr[0]}%{addr[3]}"  # a link-local address needs its interface
            return addr[0]
    assert endpoint.host is not None
    return _config_hostname(endpoint.host)


def _config_hostname(alias: str) -> str:
    from .transport.ssh import SshOptions, _load_config  # the very file our ssh client reads
    try:
        found = _load_config(*SshOptions().config_paths()).lookup(alias).get("hostname")
    except ZcsyncError:
        return alias
    return found if isinstance(found, str) and found else alias


class BootstrappedStream(tcp.SocketStream):
    """The data connection of --transport=tcp; closing it also ends the ssh session that started it.

    ``exit_status`` is the remote zcsync's, from the ssh session, so that a missing
    program or a failed ssh still reads as such.
    """

    def __init__(self, sock: socket.socket, peer: str, control: Stream, timeout: float | None = None) -> None:
        super().__init__(sock, peer, timeout)
        self.control = control

    @property
    def exit_status(self) -> int | None:
        return self.control.exit_status

    def _close(self) -> None:
        super()._close()
        # The server exits once its socket is done; EOF on the channel lets the
        # control stream wait for that exit status rather than cut the session short.
        with contextlib.suppress(ZcsyncError):
            self.control.write_eof()
        self.control.close()
        log.debug("--transport=tcp: the ssh channel carried %d bytes in, %d out; the data connection "
                  "%d in, %d out", self.control.bytes_read, self.control.bytes_written,
                  self.bytes_read, self.bytes_written)


def open_data_stream(control: Stream, endpoint: Endpoint, opts: Options, wait: float) -> BootstrappedStream:
    """Read the listen line from the ssh stream, connect, prove the key; the stream to run the protocol on.

    wait bounds the connect and the proofs together (the server waits as long, no longer).
    """
    host_label = endpoint.host or "the remote host"
    saved = control.timeout
    control.timeout = LINE_TIMEOUT if saved is None else min(saved, LINE_TIMEOUT)
    try:
        port, key = parse_listen_line(read_listen_line(control, host_label), host_label)
    finally:
        if not getattr(control, "closed", False):
            control.timeout = saved
    host = data_host(control, endpoint)
    where = f"{host} port {port}"
    try:
        # tcp.connect maps the failures once for every TCP client; we keep only its socket.
        sock = tcp.connect(host, port, connect_timeout=wait).sock
    except (SocketIOError, ConnectTimeout) as exc:
        raise type(exc)(f"{exc.detail} (--transport=tcp opens a direct TCP connection to the host "
                        "the ssh session reached: is that port reachable from here?)") from exc
    try:
        authenticate_client(sock, key, time.monotonic() + wait, where)
        sock.settimeout(None)
        stream = BootstrappedStream(sock, host_label, control,
                                    timeout=float(opts.timeout) if opts.timeout else None)
    except BaseException:
        sock.close()
        raise
    log.debug("--transport=tcp: data connection to %s authenticated", where)
    return stream
