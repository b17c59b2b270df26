"""--transport=tcp's pieces without ssh: the listen line, the listener, the key proofs, --listen arguments."""
from __future__ import annotations

import io
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from zcsync import auth, bootstrap
from zcsync.errors import ConnectTimeout, StartupError, StreamError, UsageError
from zcsync.options import Options, to_wire
from zcsync.server import parse_server_args, parse_server_command, serve

KEY = bytes(range(32))


# -- the listen line ---------------------------------------------------------------------


def test_line_round_trip():
    line = bootstrap.format_listen_line(40123, KEY)
    assert line == b"ZCSYNC-LISTEN 40123 " + KEY.hex().encode() + b"\n"
    assert len(line) <= bootstrap.MAX_LINE
    assert bootstrap.parse_listen_line(line) == (40123, KEY)
    assert bootstrap.parse_listen_line(bootstrap.format_listen_line(65535, KEY)) == (65535, KEY)
    assert bootstrap.parse_listen_line(bootstrap.format_listen_line(1, KEY)) == (1, KEY)


@pytest.mark.parametrize("port", [b"0", b"65536", b"99999", b"012", b"-1", b"1e3", b"", b"123456", b"\xd9\xa1"])
def test_bad_port_refused(port):
    with pytest.raises(StartupError, match="malformed listen line") as info:
        bootstrap.parse_listen_line(b"ZCSYNC-LISTEN " + port + b" " + KEY.hex().encode() + b"\n")
    assert info.value.exit_code == 5


@pytest.mark.parametrize("key", [
    KEY.hex()[:-2],  # 31 bytes
    KEY.hex() + "00",  # 33 bytes
    KEY.hex().upper(),
    KEY.hex()[:-1] + "g",
    "",
])
def test_bad_key_refused(key):
    with pytest.raises(StartupError, match="malformed listen line"):
        bootstrap.parse_listen_line(b"ZCSYNC-LISTEN 4000 " + key.encode() + b"\n")


@pytest.mark.parametrize("line", [
    b"ZCSYNC-LISTEN 4000 " + KEY.hex().encode(),  # no newline
    b"ZCSYNC-LISTEN 4000 " + KEY.hex().encode() + b"\r\n",
    b"ZCSYNC-LISTEN  4000 " + KEY.hex().encode() + b"\n",
    b"ZCSYNC-LISTEN 4000 " + KEY.hex().encode() + b" extra\n",
])
def test_strict_format(line):
    with pytest.raises(StartupError):
        bootstrap.parse_listen_line(line)


def test_banner_is_reported_as_such():
    with pytest.raises(StartupError, match="is the remote shell printing text.*Welcome") as info:
        bootstrap.parse_listen_line(b"Welcome to host!\n")
    assert info.value.exit_code == 5


def test_old_server_is_named():
    with pytest.raises(StartupError, match="does not support --transport=tcp"):
        bootstrap.parse_listen_line(b"ZCSYNC\x00")


class _Fake:
    """Just enough of a Stream for read_listen_line."""

    def __init__(self, data: bytes, exit_status: int | None = 0) -> None:
        self.buf = io.BytesIO(data)
        self.exit_status = exit_status
        self.reads = 0
        self.closed = False

    def read(self, n: int) -> bytes:
        self.reads += 1
        return self.buf.read(n)

    def close(self) -> None:
        self.closed = True


def test_read_line_stops_at_newline():
    line = bootstrap.format_listen_line(5000, KEY)
    stream = _Fake(line + b"more")
    assert bootstrap.read_listen_line(stream) == line
    assert stream.buf.read() == b"more"


def test_read_line_is_bounded():
    stream = _Fake(b"ZCSYNC-LISTEN " + b"1" * 10_000)
    got = bootstrap.read_listen_line(stream)
    assert len(got) == bootstrap.MAX_LINE
    with pytest.raises(StartupError, match="malformed"):
        bootstrap.parse_listen_line(got)


def test_read_line_banner_stops_early():
    stream = _Fake(b"Last login: yesterday\nZCSYNC-LISTEN ...")
    got = bootstrap.read_listen_line(stream)
    assert got == b"Last login: yesterday\n"


def test_read_line_eof_says_the_server_exited():
    stream = _Fake(b"", exit_status=1)
    with pytest.raises(StreamError, match="exited before it started listening.*exit status 1"):
        bootstrap.read_listen_line(stream, "h")
    assert stream.closed


# -- --listen arguments ----------------------------------------------------------------------


def _argv(*extra: str, role: str = "--receiver", path: str = "dst") -> list[str]:
    return ["--server", role, *extra, f"--options={to_wire(Options(recursive=True))}", "--", path]


def test_listen_arguments():
    args = parse_server_command(_argv("--listen", "--listen-timeout=25"))
    assert (args.listen, args.listen_timeout, args.role, args.paths) == (True, 25, "receiver", ("dst",))
    args = parse_server_command(_argv("--listen"))
    assert args.listen_timeout == bootstrap.DEFAULT_ACCEPT_TIMEOUT
    assert parse_server_command(_argv()).listen is False
    # the old 4-tuple still reads the same
    assert parse_server_args(_argv("--listen"))[0] == "receiver"
    # -M words (--transport=tcp puts them after the options too) apply here as without --listen
    assert parse_server_command(_argv("--listen", "--no-fsync")).options.fsync is False


@pytest.mark.parametrize("extra", [
    ["--listen", "--listen-timeout=0"],
    ["--listen", "--listen-timeout=3601"],
    ["--listen", "--listen-timeout=1.5"],
    ["--listen", "--listen-timeout=-1"],
    ["--listen", "--listen-timeout="],
    ["--listen-timeout=5"],  # without --listen
    ["--listen=yes"],
])
def test_bad_listen_arguments(extra):
    with pytest.raises(UsageError):
        parse_server_command(_argv(*extra))


# -- where the listener binds --------------------------------------------------------------


def test_bind_address_from_ssh_connection():
    assert bootstrap.bind_address({"SSH_CONNECTION": "10.0.0.9 51234 127.0.0.1 22"}) == "127.0.0.1"
    assert bootstrap.bind_address({"SSH_CONNECTION": "::1 51234 ::1 22"}) == "::1"
    assert bootstrap.bind_address({}) is None


@pytest.mark.parametrize("value", ["", "1.2.3.4 5 6", "1.2.3.4 5 example.com 22", "a b c d e"])
def test_bind_address_malformed(value):
    with pytest.raises(StartupError, match="SSH_CONNECTION"):
        bootstrap.bind_address({"SSH_CONNECTION": value})


def test_listener_on_loopback_and_wildcard():
    with bootstrap.open_listener("127.0.0.1") as s:
        host, port = s.getsockname()[:2]
        assert host == "127.0.0.1" and port > 0
    with bootstrap.open_listener(None) as s:
        assert s.getsockname()[0] in ("::", "0.0.0.0")


# -- the proofs over a real socket ------------------------------------------------------------


def _pair_with_server(key: bytes, timeout: float = 5.0):
    """A listener and a thread in accept_one; returns (port, thread, result dict)."""
    listener = bootstrap.open_listener("127.0.0.1")
    port = listener.getsockname()[1]
    result: dict = {}

    def run() -> None:
        try:
            result["sock"] = bootstrap.accept_one(listener, key, timeout)[0]
        except Exception as exc:  # handed to the test
            result["error"] = exc
    thread = threading.Thread(target=run)
    thread.start()
    return port, thread, result


def test_mutual_proofs():
    port, thread, result = _pair_with_server(KEY)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        bootstrap.authenticate_client(sock, KEY, time.monotonic() + 5, "test")
        thread.join(5)
        assert "error" not in result
        server = result["sock"]
        server.sendall(b"after")
        assert sock.recv(5) == b"after"
        server.close()
    # one connection only: a second one, even after a success, finds no listener
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_wrong_key_refused_by_server():
    port, thread, result = _pair_with_server(KEY)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        with pytest.raises(StartupError, match="closed the data connection before the key was proven"):
            bootstrap.authenticate_client(sock, bytes(32), time.monotonic() + 5, "test")
    thread.join(5)
    assert isinstance(result["error"], StartupError)
    assert "did not prove the one-time key" in result["error"].message
    # one connection only: the listener is gone, even for the right key
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_server_without_the_key_is_detected():
    """Something else answers on the port: it cannot produce the server proof."""
    listener = bootstrap.open_listener("127.0.0.1")

    def impostor() -> None:
        conn, _ = listener.accept()
        conn.sendall(bootstrap.MAGIC + bytes(32))
        conn.recv(200)
        conn.sendall(bytes(32))
        conn.close()
    thread = threading.Thread(target=impostor)
    thread.start()
    with socket.create_connection(listener.getsockname()[:2]) as sock:
        with pytest.raises(StartupError, match="could not prove that it holds the one-time key"):
            bootstrap.authenticate_client(sock, KEY, time.monotonic() + 5, "test")
    thread.join(5)
    listener.close()


def test_silent_client_hits_the_deadline():
    port, thread, result = _pair_with_server(KEY, timeout=0.5)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        assert sock.recv(100).startswith(bootstrap.MAGIC)
        thread.join(5)
    assert isinstance(result["error"], ConnectTimeout)


def test_proofs_are_the_daemons_hmac_bound_to_this_use():
    sn, cn = bytes(32), bytes([1]) * 32
    assert bootstrap.client_proof(KEY, sn, cn) != bootstrap.server_proof(KEY, sn, cn)
    assert bootstrap.client_proof(KEY, sn, cn) != auth.client_proof(KEY, sn, cn, b"", b"", bytes(32))
    assert bootstrap.client_proof(KEY, sn, cn) == auth.client_proof(
        KEY, sn, cn, b"", b"", auth.request_digest(b"zcsync ssh-bootstrapped tcp v1"))


# -- `zcsync --server --listen` end to end, without ssh ----------------------------------------


class _ListenServer:
    """serve() in a thread, as sshd would run it: the ssh channel is two pipes."""

    def __init__(self, argv: list[str]) -> None:
        self.control_r, self.client_w = os.pipe()  # what the client would write (nothing)
        self.client_r, self.line_w = os.pipe()  # the listen line
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, args=(argv,))
        self.thread.start()

    def _run(self, argv: list[str]) -> None:
        self.code = serve(argv, self.control_r, self.line_w)

    def line(self) -> tuple[int, bytes]:
        data = b""
        while not data.endswith(b"\n"):
            chunk = os.read(self.client_r, 200)
            assert chunk, "server closed the channel without a line"
            data += chunk
        return bootstrap.parse_listen_line(data)

    def finish(self, timeout: float = 10) -> int | None:
        self.thread.join(timeout)
        for fd in (self.client_w, self.client_r):
            try:
                os.close(fd)
            except OSError:
                pass
        return self.code


@pytest.fixture
def loopback_ssh(monkeypatch):
    monkeypatch.setenv("SSH_CONNECTION", "127.0.0.1 40000 127.0.0.1 22")


def test_wrong_key_writes_nothing(tmp_path: Path, loopback_ssh, caplog):
    dst = tmp_path / "dst"
    server = _ListenServer(_argv("--listen", path=str(dst)))
    port, key = server.line()
    wrong = bytes(b ^ 1 for b in key)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        with pytest.raises(StartupError):
            bootstrap.authenticate_client(sock, wrong, time.monotonic() + 5, "test")
    assert server.finish() == 5
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == []
    assert "did not prove the one-time key" in caplog.text


def test_accept_deadline(tmp_path: Path, loopback_ssh, caplog):
    server = _ListenServer(_argv("--listen", "--listen-timeout=1", path=str(tmp_path / "dst")))
    port, _ = server.line()
    started = time.monotonic()
    assert server.finish() == 35
    assert time.monotonic() - started < 5
    assert "no data connection arrived within 1 seconds" in caplog.text
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    assert not (tmp_path / "dst").exists()


def test_client_gone_ends_the_wait(tmp_path: Path, loopback_ssh, caplog):
    server = _ListenServer(_argv("--listen", "--listen-timeout=60", path=str(tmp_path / "dst")))
    server.line()
    started = time.monotonic()
    os.close(server.client_w)  # the ssh channel closes: the client is gone
    assert server.finish() == 5
    assert time.monotonic() - started < 5
    assert "closed the ssh channel before connecting" in caplog.text


def test_bad_arguments_in_listen_mode(tmp_path: Path, loopback_ssh, caplog):
    server = _ListenServer(["--server", "--listen", "--bogus", "--", "x"])
    server.thread.join(10)
    assert server.code == 1
    assert os.read(server.client_r, 100) == b""  # no line: the channel just closes
    server.finish()
    assert "on remote machine: --bogus: unknown option" in caplog.text
