"""Receiver write modes and the sender's sendfile frames, over a real loopback TCP connection.

The sending end is a Connection over a SocketStream that sends FileBegin, Data frames
from a file by sendfile (send_file_range) and FileEnd; the receiving end is the
remote.StreamFile the receiver uses, with each --write-mode.
"""
from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path

import pytest
import xxhash

from tests.fsimage import ext4_mount
from zcsync import sink
from zcsync.protocol import Connection, FileBegin, FileEnd, Heartbeat
from zcsync.remote import StreamFile
from zcsync.transport.tcp import SocketStream

SIZES = [1, 4095, 4096, 300_000, 1 << 20, (1 << 20) + 1, (4 << 20) + 123, (9 << 20) + 4096]
MODES = ["auto", "buffered", "splice", "direct"]


def _pair() -> tuple[Connection, Connection]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    send, recv = Connection(SocketStream(a, "receiver")), Connection(SocketStream(b, "sender"))
    recv.decoder.next_index = send.decoder.next_index = 100  # indexes the tests use are "listed"
    return send, recv


def _send_file(conn: Connection, path: Path, size: int, index: int = 1, trailer: bool = True) -> threading.Thread:
    """Send path as file `index` on a thread: FileBegin, sendfile frames, FileEnd(digest), Heartbeat."""
    data = path.read_bytes()

    def run() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            conn.send(FileBegin(index, size))
            sent = conn.send_file_range(fd, 0, size)
            digest = xxhash.xxh3_128(data[:sent] + bytes(size - sent)).digest()
            conn.send(FileEnd(index, digest))
            if trailer:
                conn.send(Heartbeat())
            conn.flush()
        finally:
            os.close(fd)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _receive(conn: Connection, fd: int, mode: str, sparse: bool = False) -> tuple[StreamFile, bytes]:
    begin = conn.recv()
    assert isinstance(begin, FileBegin)
    source = StreamFile(conn, begin.index, begin.size, lambda msg: False, mode)
    return source, source.write_into(fd, sparse)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", SIZES)
def test_every_mode_writes_and_hashes_exactly_the_bytes_sent(tmp_path, mode, size):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(size))
    send, recv = _pair()
    t = _send_file(send, src, size)
    fd = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        source, got = _receive(recv, fd, mode)
    finally:
        os.close(fd)
    t.join()
    assert got == source.digest() == xxhash.xxh3_128(src.read_bytes()).digest()
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()
    assert isinstance(recv.recv(), Heartbeat)  # the stream is still at a frame boundary
    assert recv.bytes_received == send.bytes_sent


def test_a_file_that_ends_early_is_padded_so_the_framing_holds(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(100_000))
    send, recv = _pair()
    size = 3 << 20  # more than the file has: as if it shrank after the scan
    t = _send_file(send, src, size)
    fd = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        source, got = _receive(recv, fd, "auto")
    finally:
        os.close(fd)
    t.join()
    assert (tmp_path / "dst").stat().st_size == size  # framing intact: every announced byte arrived
    assert (tmp_path / "dst").read_bytes()[100_000:] == bytes(size - 100_000)
    assert isinstance(recv.recv(), Heartbeat)


@pytest.mark.parametrize("mode", MODES)
def test_a_failing_write_consumes_the_frame_and_the_stream_goes_on(tmp_path, mode):
    """A write error (here EBADF: a read-only fd) is the file's problem: the rest of its
    data is skipped at frame boundaries and the next message reads normally."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom((3 << 20) + 5))
    (tmp_path / "dst").write_bytes(b"")
    send, recv = _pair()
    t = _send_file(send, src, (3 << 20) + 5)
    fd = os.open(tmp_path / "dst", os.O_RDONLY)
    try:
        begin = recv.recv()
        source = StreamFile(recv, begin.index, begin.size, lambda msg: False, mode)
        with pytest.raises(OSError):
            source.write_into(fd, False)
        source.drain()
    finally:
        os.close(fd)
    t.join()
    assert isinstance(recv.recv(), Heartbeat)


def test_sender_fallback_readwrite_sends_the_same_frames(tmp_path, monkeypatch):
    monkeypatch.setenv("ZCSYNC_SEND_METHOD", "readwrite")
    test_every_mode_writes_and_hashes_exactly_the_bytes_sent(tmp_path, "auto", (2 << 20) + 17)


def test_bad_send_method_is_a_usage_error(monkeypatch):
    from zcsync.errors import UsageError
    from zcsync.transport.tcp import send_method
    monkeypatch.setenv("ZCSYNC_SEND_METHOD", "carrier-pigeon")
    with pytest.raises(UsageError, match="ZCSYNC_SEND_METHOD"):
        send_method()


def _fd_flags(fd: int) -> int:
    text = Path(f"/proc/self/fdinfo/{fd}").read_text()
    return int(re.search(r"flags:\s+([0-7]+)", text).group(1), 8)


@pytest.fixture
def ext4(tmp_path):
    """An ext4 filesystem on a loop device: the disk-backed case O_DIRECT is for."""
    with ext4_mount(tmp_path) as mnt:
        yield mnt


def test_direct_mode_really_writes_with_o_direct_on_ext4(ext4, tmp_path):
    sink.reset()
    size = (6 << 20) + 1234  # a full 4 MiB buffer, then an unaligned tail
    src = tmp_path / "src"
    src.write_bytes(os.urandom(size))
    send, recv = _pair()
    t = _send_file(send, src, size)
    fd = os.open(ext4 / "dst", os.O_RDWR | os.O_CREAT, 0o600)
    seen: list[int] = []
    original = sink.DirectSink._flush

    def spy(self, length):  # the flags at each write: O_DIRECT while aligned
        seen.append(_fd_flags(self.fd) & os.O_DIRECT)
        original(self, length)

    sink.DirectSink._flush = spy
    try:
        source, got = _receive(recv, fd, "direct")
        assert not _fd_flags(fd) & os.O_DIRECT  # cleared for the writer's fsync and metadata calls
    finally:
        sink.DirectSink._flush = original
        os.close(fd)
    t.join()
    assert got == source.digest()
    assert (ext4 / "dst").read_bytes() == src.read_bytes()
    assert seen[:2] == [os.O_DIRECT, os.O_DIRECT] and seen[-1] == 0  # 4 MiB, aligned rest, then the tail
    assert not sink.unsupported()


def test_splice_mode_on_ext4(ext4, tmp_path):
    sink.reset()
    size = (3 << 20) + 77
    src = tmp_path / "src"
    src.write_bytes(os.urandom(size))
    send, recv = _pair()
    t = _send_file(send, src, size)
    fd = os.open(ext4 / "dst", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        source, got = _receive(recv, fd, "splice")
    finally:
        os.close(fd)
    t.join()
    assert got == source.digest()
    assert (ext4 / "dst").read_bytes() == src.read_bytes()
    assert not sink.unsupported()


def test_non_socket_streams_write_plainly(tmp_path):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        s = sink.make_sink(fd, "direct", raw=False)
        assert type(s) is sink.Sink
        s.write(b"abc")
        assert s.finish() == xxhash.xxh3_128(b"abc").digest()
    finally:
        os.close(fd)
    with pytest.raises(ValueError):
        sink.make_sink(0, "sideways", raw=True)


def _holey(size_zero_head: int = 0) -> bytes:
    return (bytes(size_zero_head) + os.urandom(1 << 20) + bytes(8 << 20) + os.urandom(5000)
            + bytes((3 << 20) + 123))


@pytest.mark.parametrize("mode", MODES)
def test_sparse_leaves_holes_for_zero_blocks(tmp_path, mode):
    """-S: all-zero blocks are not written (holes), a zero tail still counts in the size,
    and the digest covers every byte."""
    data = _holey(4096 * 3 + 17)
    src = tmp_path / "src"
    src.write_bytes(data)
    send, recv = _pair()
    t = _send_file(send, src, len(data))
    fd = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        source, got = _receive(recv, fd, mode, sparse=True)
    finally:
        os.close(fd)
    t.join()
    st = (tmp_path / "dst").stat()
    assert got == source.digest() and (tmp_path / "dst").read_bytes() == data
    allocated = st.st_blocks * 512
    assert allocated < len(data) - (10 << 20), f"{allocated} bytes allocated for a mostly empty file"
