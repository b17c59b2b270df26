"""The wire codec: round trips, handshake, and every bound a peer can break."""
from __future__ import annotations

import io
import os
import socket
import stat
import struct
import threading
import time

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zcsync import compress as zc
from zcsync import protocol as p
from zcsync.errors import ProtocolError, StartupError, StreamError, ZcsyncError
from zcsync.flist import DirBatch, FileEntry

REG = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755
LNK = stat.S_IFLNK | 0o777
DIGEST = bytes(range(16))


# -- streams -----------------------------------------------------------------

class SockStream:
    """A Stream over one end of a socketpair."""

    timeout = None
    exit_status = None

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                break
            buf += chunk
        return bytes(buf)

    def write(self, data) -> None:
        self.sock.sendall(data)

    def write_eof(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BytesStream:
    """A Stream that reads canned bytes and records what was asked for and written."""

    timeout = None
    exit_status = None

    def __init__(self, data: bytes = b"") -> None:
        self.src = io.BytesIO(data)
        self.reads: list[int] = []
        self.out = bytearray()
        self.writes = 0

    def read(self, n: int) -> bytes:
        self.reads.append(n)
        return self.src.read(n)

    def write(self, data) -> None:
        self.out += data
        self.writes += 1

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    left = p.Connection(SockStream(a), peer="left")
    right = p.Connection(SockStream(b), peer="right")
    yield left, right
    a.close()
    b.close()


def in_thread(fn, *args):
    """Run fn in a thread; return a callable that joins and returns its result (or raises)."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join():
        t.join(20)
        assert not t.is_alive(), "thread hung"
        if "error" in out:
            raise out["error"]
        return out.get("value")
    return join


def entry(index, name, mode=REG, **kw):
    kw.setdefault("size", 0)
    kw.setdefault("mtime_ns", 1_700_000_000_123_456_789)
    return FileEntry(index, name, mode, **kw)


def top_batch(n=10):
    """A top batch with one expanded directory (index 0) and n-1 files."""
    entries = (entry(0, b"d", DIR),) + tuple(entry(i, b"f%d" % i, size=i) for i in range(1, n))
    return p.FlistBatch(None, frozenset({b"d"}), entries)


def frame(mtype: int, payload: bytes) -> bytes:
    return struct.pack(">BI", mtype, len(payload)) + payload


def raw_entry(index, base, mode=REG, flags=0, tail=b"", size=0, mtime=0, uid=0, gid=0, rdev=0,
              name_len=None):
    """One entry in the documented wire layout (independent of the encoder)."""
    n = len(base) if name_len is None else name_len
    return struct.pack(">IBIQqIIQH", index, flags, mode, size, mtime, uid, gid, rdev, n) + base + tail


def raw_batch(entries: list[bytes], dir_name: bytes | None = None, more=False, count=None) -> bytes:
    flags = (1 if dir_name is not None else 0) | (2 if more else 0)
    head = bytes([flags])
    if dir_name is not None:
        head += struct.pack(">H", len(dir_name)) + dir_name
    return head + struct.pack(">I", len(entries) if count is None else count) + b"".join(entries)


def decode_frames(*frames: bytes, side=None, prelude=True):
    """Feed raw frames to a fresh receiving Connection; return the messages (raises on violation)."""
    data = b"".join(frames)
    if prelude:
        conn0 = p.Connection(BytesStream())
        conn0.send(top_batch())
        conn0.flush()
        data = bytes(conn0.stream.out) + data
    conn = p.Connection(BytesStream(data), side=side)
    out = []
    while True:
        try:
            out.append(conn.recv())
        except p.ConnectionClosed:
            return out[1:] if prelude else out


# -- round trips -------------------------------------------------------------

ALL_MESSAGES = [
    p.FlistEnd(False),
    p.FlistEnd(True),
    p.Request(3),
    p.Request(4, b"\x00sig" * 100),
    p.Request(5, b""),
    p.Done(),
    p.FileSkip(2, 24, "file has vanished: \"f2\""),
    p.Committed(9),
    p.Problem("dir/f\\#012", "Cannot write 'dir/f': No space left on device", 23),
    p.Log(20, "sent 12 bytes  received 4 bytes — ünïcode ok"),
    p.Stats.of({"files": 10, "total_size": 2**64 - 1, "bytes_sent": 0}),
    p.Stats(),
    p.Heartbeat(),
    p.Goodbye(23),
    p.WholeFile(1, DIGEST, b"small file\n"),
    p.FilesFrom((b"a", b"dir/b\xff"), True),
    p.FilesFrom((), False),
    p.WholeFile(2, DIGEST, b""),
]


@pytest.mark.parametrize("msg", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_simple(pair, msg):
    left, right = pair
    left.send(top_batch())
    left.send(msg)
    left.flush()
    assert isinstance(right.recv(), p.FlistBatch)
    assert right.recv() == msg


def test_round_trip_file_transfer(pair):
    left, right = pair
    payload = bytes(range(256)) * 9000  # 2.3 MB: several frames, the big-frame path
    msgs = [top_batch(), p.FileBegin(1, len(payload)), p.Data(payload[:100]), p.Data(payload[100:]),
            p.FileEnd(1, DIGEST), p.FileBegin(2, 0), p.FileSkip(2, 24, "vanished")]

    def send():
        for m in msgs:
            left.send(m)
        left.flush()
    join = in_thread(send)
    got = [right.recv(), right.recv()]
    assert got[1] == p.FileBegin(1, len(payload))
    data = bytearray()
    while True:
        m = right.recv()
        if isinstance(m, p.FileEnd):
            break
        assert isinstance(m, p.Data)
        assert len(m.payload) <= right.frame_max
        data += m.payload
    join()
    assert data == payload and m == p.FileEnd(1, DIGEST)
    assert right.recv() == p.FileBegin(2, 0)
    assert right.recv() == p.FileSkip(2, 24, "vanished")
    assert left.bytes_sent == right.bytes_received > len(payload)


def test_round_trip_full_entries(pair):
    left, right = pair
    xattrs = {b"user.a": b"1" * 1000, b"user.empty": b"", b"security.selinux": b"ctx\x00"}
    entries = (
        entry(0, b".", DIR),
        entry(1, b"top/deep/name", REG, size=2**62, mtime_ns=-5, uid=2**32 - 1, gid=7),
        entry(2, b"link", LNK, size=5, link=b"../../abs/\xff"),
        entry(4, b"hard", REG, hlink=1),
        entry(7, b"dev", stat.S_IFCHR | 0o600, rdev=2**64 - 1),
        entry(8, b"fifo", stat.S_IFIFO | 0o600, xattrs={}),
        entry(9, b"sock", stat.S_IFSOCK | 0o600, xattrs=xattrs),
        entry(10, b"bin\xff\xfe name\t", REG),
    )
    extras = (None, p.EntryExtras(DIGEST, b"alice", b"staff"), None, p.EntryExtras(gname=b"g"),
              None, None, p.EntryExtras(), p.EntryExtras(digest=DIGEST))
    top = p.FlistBatch(None, frozenset({b"."}), entries, extras)
    sub = p.FlistBatch(b".", frozenset({b"sub"}), (entry(11, b"a", REG), entry(12, b"sub", DIR)), io_error=True)
    subsub = p.FlistBatch(b"sub", frozenset(), (entry(13, b"sub/x", REG),))
    for b in (top, sub):
        left.send(b)
    left.flush()
    assert right.recv() == top
    got = right.recv()
    assert got == sub and got.io_error
    left.send(subsub)
    left.flush()
    got = right.recv()
    assert got == subsub and got.to_dir_batch() == DirBatch(b"sub", subsub.entries, frozenset())
    assert top.extras_of(1).uname == b"alice" and top.extras[6] is None  # empty extras normalise
    assert sub.extras_of(0) is None
    assert right.decoder.pending_dirs == set()
    assert p.FlistBatch.from_dir_batch(DirBatch(b"sub", subsub.entries)) == subsub


def test_big_batch_splits_into_parts(pair):
    left, right = pair
    n = p.MAX_ENTRIES + 5000
    entries = tuple(entry(i + 1, b"d/f%07d" % i, size=i) for i in range(n))
    left.send(top_batch(1))
    join = in_thread(lambda: (left.send(p.FlistBatch(b"d", frozenset(), entries)), left.flush()))
    right.recv()
    parts = []
    while not parts or parts[-1].more:
        parts.append(right.recv())
    join()
    assert len(parts) >= 2 and all(len(x.entries) <= p.MAX_ENTRIES for x in parts)
    assert {x.dir_name for x in parts} == {b"d"}
    assert sum((x.entries for x in parts), ()) == entries


def test_buffering_and_autoflush():
    s = BytesStream(frame(p.Heartbeat.TYPE, b""))
    conn = p.Connection(s)
    conn.send(p.Log(20, "hello"))
    conn.send(p.Heartbeat())
    assert s.writes == 0  # small frames wait in the buffer
    assert conn.recv() == p.Heartbeat()  # recv flushes what we owe the peer first
    assert s.writes == 1 and conn.bytes_sent == len(s.out) == 5 + 8 + 5
    conn.send_data(b"x" * (p.DEFAULT_FRAME_MAX + 1))
    assert bytes(s.out[-1:]) == b"x" and conn.bytes_sent == len(s.out)


def test_text_is_sanitised_on_receipt():
    text = "evil\x1b[2Jline\nforged\x85\ttab"
    got = decode_frames(frame(p.Log.TYPE, struct.pack(">BH", 30, len(text.encode())) + text.encode()))
    assert got == [p.Log(30, "evil\\#033[2Jline\\#012forged\\#205\ttab")]


def test_long_text_is_truncated_by_the_sender(pair):
    left, right = pair
    left.send(p.Log(40, "é" * 10000))
    left.flush()
    got = right.recv()
    assert got.text == "é" * (p.MAX_TEXT // 2)


# -- handshake ---------------------------------------------------------------

def test_handshake_both_sides(pair):
    left, right = pair
    join = in_thread(p.handshake, right, "server",
                     {"compress": "lz4,zstd", "frame-max": str(256 * 1024), "x-future": "yes"})
    client = p.handshake(left, "client", {"compress": "zstd,lz4,none"})
    server = join()
    assert client.version == server.version == 1
    assert client.compress == server.compress == "zstd"
    assert client.checksum == server.checksum == "xxh3-128"
    assert client.frame_max == server.frame_max == left.frame_max == right.frame_max == 256 * 1024
    assert client.peer_caps["x-future"] == "yes" and client.role == "client"
    left.send(p.Heartbeat())
    left.flush()
    assert right.recv() == p.Heartbeat()


def test_handshake_compress_falls_back_to_none(pair):
    left, right = pair
    join = in_thread(p.handshake, right, "server", {"compress": "lz4"})
    assert p.handshake(left, "client", {"compress": "zstd"}).compress == "none"
    assert join().compress == "none"


def hello(vmin=1, vmax=1, caps: dict | None = None, raw_caps: bytes | None = None) -> bytes:
    caps = {"role": "server", **(caps or {})}
    blob = raw_caps if raw_caps is not None else b"".join(
        bytes([len(k)]) + k.encode() + struct.pack(">H", len(v)) + v.encode() for k, v in caps.items())
    return p.MAGIC + struct.pack(">HHH", vmin, vmax, len(blob)) + blob


def client_against(data: bytes):
    return p.handshake(p.Connection(BytesStream(data)), "client")


def test_handshake_version_rules():
    assert client_against(hello(1, 7)).version == 1
    with pytest.raises(ProtocolError, match="no common protocol version"):
        client_against(hello(2, 3))
    with pytest.raises(ProtocolError, match="role"):
        client_against(hello(caps={"role": "client"}))
    with pytest.raises(ProtocolError, match="no common checksums"):
        client_against(hello(caps={"checksums": "md5"}))
    with pytest.raises(ProtocolError, match="frame-max"):
        client_against(hello(caps={"frame-max": "12"}))
    with pytest.raises(ProtocolError, match="frame-max"):
        client_against(hello(caps={"frame-max": "1e9"}))
    with pytest.raises(ProtocolError, match="capabilities"):
        client_against(p.MAGIC + struct.pack(">HHH", 1, 1, 60000))
    with pytest.raises(ProtocolError, match="bad capability"):
        client_against(hello(raw_caps=b"\x01A\x00\x00"))
    with pytest.raises(ProtocolError, match="incompatible handshake"):
        client_against(b"ZCSYNC\x00\x02" + b"\x00" * 6)


def test_banner_before_magic_is_a_startup_error():
    banner = b"Welcome to host!\r\nLast login: yesterday\n"
    with pytest.raises(StartupError) as info:
        client_against(banner + hello())
    assert info.value.exit_code == 5
    assert str(info.value) == ("protocol mismatch: is the remote shell printing text? "
                               "Received: Welcome to host!\\r\\n")


def test_banner_is_quoted_at_most_60_bytes():
    with pytest.raises(StartupError) as info:
        client_against(b"\x1b[1m" + b"x" * 200)
    shown = str(info.value).split("Received: ", 1)[1]
    assert shown == "\\x1b[1m" + "x" * 56


def test_short_banner_then_eof():
    with pytest.raises(StartupError, match="Received: ZC-nope"):
        client_against(b"ZC-nope")


def test_eof_before_handshake():
    with pytest.raises(StreamError, match="connection closed before the handshake"):
        client_against(b"")
    with pytest.raises(StreamError, match="during the handshake"):
        client_against(p.MAGIC[:5])
    with pytest.raises(StreamError, match="during the handshake"):
        client_against(hello()[:-3])


# -- bounds and rules --------------------------------------------------------

def test_oversized_length_raises_before_reading():
    s = BytesStream(struct.pack(">BI", p.Data.TYPE, 0xFFFFFFFF))
    conn = p.Connection(s)
    with pytest.raises(ProtocolError, match="frame of 4294967295 bytes"):
        conn.recv()
    assert s.reads == [5]  # the payload was never asked for


def test_negotiated_frame_max_is_enforced():
    conn = p.Connection(BytesStream(frame(p.Log.TYPE, b"x" * (p.MIN_FRAME_MAX + 1))))
    conn.frame_max = p.MIN_FRAME_MAX
    with pytest.raises(ProtocolError, match="limit 131072"):
        conn.recv()


def test_fixed_size_checked_from_header():
    s = BytesStream(struct.pack(">BI", p.FileEnd.TYPE, 21))
    with pytest.raises(ProtocolError, match="expected 20"):
        p.Connection(s).recv()
    assert s.reads == [5]


D = raw_entry(0, b"d", DIR, flags=0x40)  # a directory whose contents come next
D_CLOSED = raw_entry(0, b"d", DIR)  # a directory that is not expanded


@pytest.mark.parametrize(("frames", "match"), [
    # frame-level
    ([frame(0x99, b"")], "unknown message type 0x99"),
    ([frame(p.Committed.TYPE, b"\x00\x00\x00\x01") + frame(p.Goodbye.TYPE, b"\x00") + frame(p.Heartbeat.TYPE, b"")],
     "Heartbeat after Goodbye"),
    ([frame(p.FlistEnd.TYPE, b"\x07")], "bad FlistEnd flag"),
    ([frame(p.Done.TYPE, b"") * 2], "Done twice"),
    ([frame(p.Stats.TYPE, b"\x00\x00\x00")], "1 trailing bytes in a Stats"),
    ([frame(p.Log.TYPE, struct.pack(">BH", 20, 3) + b"abcd")], "trailing bytes"),
    ([frame(p.Log.TYPE, struct.pack(">BH", 20, 9) + b"abcd")], "truncated Log"),
    ([frame(p.Log.TYPE, struct.pack(">BH", 20, p.MAX_TEXT + 1) + b"a" * (p.MAX_TEXT + 1))], "limit 8192"),
    ([frame(p.Log.TYPE, struct.pack(">BH", 7, 1) + b"a")], "unknown log level 7"),
    ([frame(p.Log.TYPE, struct.pack(">BH", 20, 2) + b"\xff\xfe")], "not UTF-8"),
    ([frame(p.Problem.TYPE, struct.pack(">BH", 23, p.MAX_PATH_TEXT + 1) + b"a" * (p.MAX_PATH_TEXT + 1)
            + b"\x00\x00")], "path of 20481 bytes"),
    ([frame(p.FileSkip.TYPE, struct.pack(">IBH", 1, 23, 9000) + b"a" * 9000)], "limit 8192"),
    ([frame(p.Stats.TYPE, struct.pack(">H", p.MAX_STATS + 1))], "65 counters"),
    ([frame(p.Stats.TYPE, b"\x00\x01\x03Bad" + b"\x00" * 8)], "bad counter name"),
    ([frame(p.Stats.TYPE, b"\x00\x02" + (b"\x01a" + b"\x00" * 8) * 2)], "twice"),
    # requests and files
    ([frame(p.Request.TYPE, struct.pack(">IBI", 10, 0, 0))], "Request for index 10"),
    ([frame(p.Request.TYPE, struct.pack(">IBI", 1, 4, 0))], "unknown Request flags"),
    ([frame(p.Request.TYPE, struct.pack(">IBI", 1, 2, 0))], "conflicting flags 0x02"),
    ([frame(p.Request.TYPE, struct.pack(">IBI", 1, 0, 5))], "length without a signature"),
    ([frame(p.Request.TYPE, struct.pack(">IBI", 1, 1, p.DEFAULT_FRAME_MAX))], "signature of"),
    ([frame(p.Done.TYPE, b"") + frame(p.Request.TYPE, struct.pack(">IBI", 1, 0, 0))], "Request after Done"),
    ([frame(p.FileBegin.TYPE, struct.pack(">IQ", 10, 0))], "FileBegin for index 10"),
    ([frame(p.FileBegin.TYPE, struct.pack(">IQ", 1, 2**63))], "impossible file size"),
    ([frame(p.FileBegin.TYPE, struct.pack(">IQ", 1, 0)) * 2], "while index 1 is open"),
    ([frame(p.Data.TYPE, b"abc")], "Data outside a file"),
    ([frame(p.FileBegin.TYPE, struct.pack(">IQ", 1, 0)) + frame(p.FileEnd.TYPE, struct.pack(">I", 2) + DIGEST)],
     "FileEnd for index 2"),
    ([frame(p.FileBegin.TYPE, struct.pack(">IQ", 1, 0)) + frame(p.FileSkip.TYPE, struct.pack(">IBH", 2, 23, 0))],
     "FileSkip for index 2 while"),
    ([frame(p.WholeFile.TYPE, struct.pack(">I", 10) + DIGEST + b"data")], "WholeFile for index 10"),
    ([frame(p.FilesFrom.TYPE, b"\x02a")], "unknown FilesFrom flags"),
    ([frame(p.FilesFrom.TYPE, b"\x01a\0\0b")], "bad --files-from name of 0 bytes"),
    ([frame(p.FilesFrom.TYPE, b"\x01" + b"x" * 4097)], "bad --files-from name of 4097 bytes"),
    ([frame(p.WholeFile.TYPE, struct.pack(">I", 1) + DIGEST[:7])], "WholeFile"),
    ([frame(p.FileBegin.TYPE, struct.pack(">IQ", 1, 9)) + frame(p.WholeFile.TYPE, struct.pack(">I", 2) + DIGEST)],
     "WholeFile for index 2 while index 1 is open"),
    ([frame(p.Committed.TYPE, struct.pack(">I", 99))], "Committed for index 99"),
    ([frame(p.Match.TYPE, struct.pack(">II", 0, 1))], "Match outside a file"),
    ([frame(p.FileBegin.TYPE, struct.pack(">IQ", 1, 9)) + frame(p.Match.TYPE, struct.pack(">II", 0, 0))],
     "bad block run 0\\+0"),
    ([frame(p.FileBegin.TYPE, struct.pack(">IQ", 1, 9)) + frame(p.Match.TYPE, struct.pack(">II", 2**32 - 1, 2))],
     "bad block run"),
    ([frame(p.FileBegin.TYPE, struct.pack(">IQ", 1, 9)) + frame(p.Match.TYPE, struct.pack(">III", 0, 1, 0))],
     "expected 8"),
])
def test_violations(frames, match):
    with pytest.raises(ProtocolError, match=match) as info:
        decode_frames(*frames)
    assert info.value.exit_code == 2


def test_whole_file_payload_must_fit_a_frame():
    with pytest.raises(ValueError, match="does not fit"):
        p.encode_payload(p.WholeFile(1, DIGEST, bytes(p.DEFAULT_FRAME_MAX)))


def fl(*entries: bytes, dir_name=None, **kw) -> bytes:
    return frame(p.FlistBatch.TYPE, raw_batch(list(entries), dir_name, **kw))


XATTR = lambda k, v: bytes([len(k)]) + k + struct.pack(">I", len(v)) + v  # noqa: E731


@pytest.mark.parametrize(("frames", "match"), [
    # names
    ([fl(raw_entry(0, b".."))], r"unsafe name: '\.\.'"),
    ([fl(raw_entry(0, b"/abs"))], "unsafe name: '/abs'"),
    ([fl(raw_entry(0, b"a//b"))], "unsafe name: 'a//b'"),
    ([fl(raw_entry(0, b"a/./b"))], "unsafe name"),
    ([fl(raw_entry(0, b"a/"))], "unsafe name"),
    ([fl(raw_entry(0, b""), raw_entry(1, b"bb"))], "unsafe name: ''"),
    ([fl(raw_entry(0, b"a\0b"))], r"unsafe name: 'a\\#000b'"),
    ([fl(raw_entry(0, b"x" * 4097))], "name of 4097 bytes"),
    ([fl(raw_entry(0, b"f"), raw_entry(1, b"f"))], "'f' twice"),
    ([fl(raw_entry(0, b".", REG))], "non-directory named '.'"),
    ([fl(D), fl(raw_entry(1, b".."), dir_name=b"d")], r"unsafe name: 'd/\.\.'"),
    ([fl(D), fl(raw_entry(1, b"."), dir_name=b"d")], "unsafe name"),
    ([fl(D), fl(raw_entry(1, b"x/y"), dir_name=b"d")], "'d/x/y', which is not directly inside 'd'"),
    ([fl(D), fl(raw_entry(1, b"x\0"), dir_name=b"d")], "unsafe name"),
    ([fl(D), fl(raw_entry(1, b"x"), raw_entry(2, b"x"), dir_name=b"d")], "'d/x' twice"),
    ([fl(D), fl(raw_entry(1, b"x"), dir_name=b"../d")], "unsafe name"),
    ([fl(raw_entry(0, b"d", DIR, flags=0x40)), fl(raw_entry(1, b"x" * 4095), dir_name=b"d")], "name of 4097"),
    # tree shape
    ([fl(D_CLOSED), fl(raw_entry(1, b"x"), dir_name=b"d")], "contents of 'd', which it did not announce"),
    ([fl(raw_entry(0, b"d", DIR, flags=0x40)), fl(dir_name=b"d"), fl(dir_name=b"d")], "did not announce"),
    ([fl(raw_entry(0, b"f", REG, flags=0x40))], "non-directory 'f' as expanded"),
    ([fl(raw_entry(0, b"d", DIR, flags=0x40)), fl(raw_entry(1, b"a"), dir_name=b"d", more=True), fl(raw_entry(5, b"e"))],
     "interrupted the file list of 'd'"),
    ([fl(raw_entry(0, b"d", DIR, flags=0x40)), fl(raw_entry(1, b"a"), dir_name=b"d", more=True),
      fl(raw_entry(2, b"a"), dir_name=b"d")], "'d/a' twice"),
    ([fl(raw_entry(0, b"d", DIR, flags=0x40)), fl(dir_name=b"d", more=True), frame(p.FlistEnd.TYPE, b"\x00")],
     "FlistEnd in the middle"),
    ([frame(p.FlistEnd.TYPE, b"\x00"), fl(raw_entry(0, b"f"))], "FlistBatch after FlistEnd"),
    # indexes
    ([fl(raw_entry(3, b"a"), raw_entry(3, b"b"))], "entry index 3 for 'b' after index 3"),
    ([fl(raw_entry(3, b"a")), fl(raw_entry(1, b"b"))], "entry index 1"),
    ([fl(raw_entry(0, b"a", flags=0x02, tail=struct.pack(">I", 0)))], "not an earlier entry"),
    ([fl(raw_entry(0, b"a"), raw_entry(1, b"b", flags=0x02, tail=struct.pack(">I", 5)))], "not an earlier"),
    # counts and lengths
    ([fl(count=p.MAX_ENTRIES + 1)], "65537 entries"),
    ([fl(count=1000)], "truncated FlistBatch"),
    ([fl(raw_entry(0, b"l", LNK, flags=0x01, tail=struct.pack(">H", 4097) + b"x" * 4097))], "symlink target of 4097"),
    ([fl(raw_entry(0, b"l", LNK))], "bad symlink target"),
    ([fl(raw_entry(0, b"l", LNK, flags=0x01, tail=b"\x00\x00"))], "bad symlink target"),
    ([fl(raw_entry(0, b"l", REG, flags=0x01, tail=b"\x00\x01x"))], "symlink target on non-symlink"),
    ([fl(raw_entry(0, b"a", flags=0x04, tail=struct.pack(">H", 257)))], "257 xattrs"),
    ([fl(raw_entry(0, b"a", flags=0x04, tail=b"\x00\x01" + XATTR(b"user.x", b"v" * 65537)))], "xattr value of 65537"),
    ([fl(raw_entry(0, b"a", flags=0x04, tail=b"\x00\x01" + XATTR(b"", b"v")))], "bad xattr name"),
    ([fl(raw_entry(0, b"a", flags=0x04, tail=b"\x00\x02" + XATTR(b"k", b"") * 2))], "xattr 'k' twice"),
    ([fl(raw_entry(0, b"a", flags=0x10, tail=b"\x00"))], "bad owner name"),
    ([fl(raw_entry(0, b"a", flags=0x08, tail=b"short"))], "truncated"),
    ([fl(raw_entry(0, b"a", flags=0x80))], "unknown entry flags"),
    ([frame(p.FlistBatch.TYPE, b"\x08\x00\x00\x00\x00")], "unknown FlistBatch flags"),
    ([fl(raw_entry(0, b"a") + b"!")], "trailing bytes"),
    ([fl(raw_entry(0, b"a", name_len=50))], "truncated"),
    # values
    ([fl(raw_entry(0, b"a", mode=0o644))], "unknown file type"),
    ([fl(raw_entry(0, b"a", mode=0o170644))], "unknown file type"),
    ([fl(raw_entry(0, b"a", mode=0x1_0000 | REG))], "unknown file type"),
    ([fl(raw_entry(0, b"a", size=2**63))], "impossible size"),
])
def test_flist_violations(frames, match):
    with pytest.raises(ProtocolError, match=match):
        decode_frames(*frames, prelude=False)


def test_valid_raw_flist_is_accepted():
    msgs = decode_frames(
        fl(raw_entry(0, b"d", DIR, flags=0x40), raw_entry(1, b"a/b/c", REG)),
        fl(raw_entry(2, b"x"), dir_name=b"d", more=True),
        fl(raw_entry(5, b"y", DIR, flags=0x40), dir_name=b"d"),
        fl(dir_name=b"d/y"),
        frame(p.FlistEnd.TYPE, b"\x01"), prelude=False)
    assert [m.dir_name for m in msgs[:4]] == [None, b"d", b"d", b"d/y"]
    assert msgs[2].entries[0].name == b"d/y" and msgs[2].expanded == {b"d/y"}
    assert msgs[4] == p.FlistEnd(True)


@pytest.mark.parametrize(("side", "mtype", "payload"), [
    ("sender", p.FlistEnd.TYPE, b"\x00"),
    ("sender", p.Data.TYPE, b"x"),
    ("receiver", p.Request.TYPE, struct.pack(">IBI", 0, 0, 0)),
    ("receiver", p.Committed.TYPE, b"\x00\x00\x00\x00"),
])
def test_side_limits_what_the_peer_may_send(side, mtype, payload):
    with pytest.raises(ProtocolError, match="never accepts"):
        decode_frames(frame(mtype, payload), side=side, prelude=False)


def test_sender_checks_requests_against_entries_it_sent():
    a, b = socket.socketpair()
    with a, b:
        sender = p.Connection(SockStream(a), side="sender")
        receiver = p.Connection(SockStream(b), side="receiver")
        sender.send(top_batch(3))
        sender.flush()
        receiver.recv()
        receiver.send(p.Request(2))
        receiver.send(p.Committed(2))
        receiver.send(p.Request(3))
        receiver.flush()
        assert sender.recv() == p.Request(2)
        assert sender.recv() == p.Committed(2)
        with pytest.raises(ProtocolError, match="Request for index 3"):
            sender.recv()


def test_clean_eof_and_truncated_frame():
    with pytest.raises(p.ConnectionClosed):
        p.Connection(BytesStream(b"")).recv()
    with pytest.raises(StreamError, match="middle of a frame header") as info:
        p.Connection(BytesStream(b"\x70\x00")).recv()
    assert not isinstance(info.value, p.ConnectionClosed)
    with pytest.raises(StreamError, match="middle of a message"):
        p.Connection(BytesStream(struct.pack(">BI", p.Log.TYPE, 10) + b"abc")).recv()


# -- missing-operand entries (--delete-missing-args) -----------------------------

def decode_missing(*frames: bytes, allowed=True):
    conn = p.Connection(BytesStream(b"".join(frames)), side="receiver")
    conn.decoder.missing_entries = allowed
    out = []
    while True:
        try:
            out.append(conn.recv())
        except p.ConnectionClosed:
            return out


def test_missing_entries_round_trip_in_a_top_batch():
    sent = p.Connection(BytesStream())
    batch = p.FlistBatch(None, frozenset(), (entry(0, b"d", DIR), FileEntry(1, b"d/gone", 0, 0, 0),
                                             FileEntry(2, b"gone", 0, 0, 0), entry(3, b"f")))
    sent.send(batch)
    sent.flush()
    (got,) = decode_missing(bytes(sent.stream.out))
    assert got.entries == batch.entries and [e.is_missing for e in got.entries] == [False, True, True, False]


@pytest.mark.parametrize(("frames", "allowed", "match"), [
    ([fl(raw_entry(0, b"gone", mode=0))], False, r"unknown file type \(mode 0o0\)"),  # not asked for
    ([fl(D), fl(raw_entry(1, b"gone", mode=0), dir_name=b"d")], True, "unknown file type"),  # only at the top
    ([fl(raw_entry(0, b".", mode=0))], True, "missing-operand entry named '.'"),
    ([fl(raw_entry(0, b"gone", mode=0, size=1))], True, "missing-operand entry with attributes"),
    ([fl(raw_entry(0, b"gone", mode=0, mtime=5))], True, "missing-operand entry with attributes"),
    ([fl(raw_entry(0, b"gone", mode=0, uid=1))], True, "missing-operand entry with attributes"),
    ([fl(raw_entry(0, b"gone", mode=0, rdev=1))], True, "missing-operand entry with attributes"),
    ([fl(raw_entry(0, b"gone", mode=0, flags=0x01, tail=b"\x00\x01x"))], True, "with attributes"),
    ([fl(raw_entry(0, b"gone", mode=0, flags=0x10, tail=b"\x01u"))], True, "with attributes"),
    ([fl(raw_entry(0, b"gone", mode=0, flags=0x40))], True, "non-directory 'gone' as expanded"),
    ([fl(raw_entry(0, b"../gone", mode=0))], True, "unsafe name"),
    ([fl(raw_entry(0, b"gone", mode=0), raw_entry(1, b"gone"))], True, "'gone' twice"),
])
def test_missing_entry_violations(frames, allowed, match):
    with pytest.raises(ProtocolError, match=match):
        decode_missing(*frames, allowed=allowed)


def test_encoder_sends_missing_entries_only_at_the_top():
    with pytest.raises(ValueError, match="unknown file type"):
        p.Connection(BytesStream()).send(p.FlistBatch(b"d", frozenset(), (FileEntry(0, b"d/x", 0, 0, 0),)))
    with pytest.raises(ValueError, match="with attributes"):
        p.Connection(BytesStream()).send(p.FlistBatch(None, frozenset(), (FileEntry(0, b"x", 0, 0, 1),)))


# -- the sending side refuses what the peer would reject ------------------------

@pytest.mark.parametrize(("batch", "match"), [
    (p.FlistBatch(None, frozenset(), (entry(0, b"../x"),)), "unsafe name"),
    (p.FlistBatch(None, frozenset(), (entry(0, b"a"), entry(0, b"b"))), "not above"),
    (p.FlistBatch(None, frozenset(), (entry(0, b"a"), entry(1, b"a"))), "duplicate"),
    (p.FlistBatch(None, frozenset({b"a"}), (entry(0, b"a"),)), "not directories"),
    (p.FlistBatch(b"d", frozenset(), (entry(0, b"e/x"),)), "not directly inside"),
    (p.FlistBatch(b"d", frozenset(), (entry(0, b"d/x/y"),)), "not directly inside"),
    (p.FlistBatch(None, frozenset(), (entry(0, b"a", xattrs={b"k": b"v" * 70000}),)), "xattr value too large"),
    (p.FlistBatch(None, frozenset(), (entry(0, b"a", mode=0o644),)), "unknown file type"),
    (p.FlistBatch(None, frozenset(), (entry(0, b"a", uid=-1),)), "cannot encode"),
])
def test_encoder_rejects(batch, match):
    with pytest.raises(ValueError, match=match):
        p.Connection(BytesStream()).send(batch)


def test_entry_problem_for_the_sender():
    assert p.entry_problem(entry(0, b"ok")) is None
    big = {b"user.%d" % i: b"v" * 65536 for i in range(20)}  # 1.3 MB: more than a default frame
    assert "xattrs too large" in p.entry_problem(entry(0, b"a", xattrs=big))
    assert p.entry_problem(entry(0, b"a", xattrs=big), frame_max=2 * 1024 * 1024) is None
    one = {b"user.big": b"v" * p.MAX_XATTR_VALUE}
    assert p.entry_problem(entry(0, b"n" * 4096, LNK, link=b"t" * 4096, xattrs=one),
                           frame_max=p.MIN_FRAME_MAX) is None
    assert "name too long" in p.entry_problem(entry(0, b"a" * 5000))
    assert "owner name too long" in p.entry_problem(entry(0, b"a"), p.EntryExtras(uname=b"u" * 300))


# -- fuzzing -----------------------------------------------------------------

def drain(data: bytes, side=None, frame_max=None) -> None:
    conn = p.Connection(BytesStream(data), side=side)
    if frame_max:
        conn.frame_max = frame_max
    try:
        for _ in range(10_000):
            conn.recv()
    except (ProtocolError, StreamError, StartupError):
        pass


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from([None, "sender", "receiver"]))
def test_fuzz_random_bytes(data, side):
    drain(data, side)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(sorted(p._TYPES) + [0, 0x12, 0xFF]), st.binary(max_size=300)),
                max_size=12))
def test_fuzz_well_framed_random_payloads(frames):
    drain(b"".join(frame(t, body) for t, body in frames))


def _valid_session() -> bytes:
    conn = p.Connection(BytesStream())
    conn.send(p.FlistBatch(None, frozenset({b"d"}), (
        entry(0, b"d", DIR), entry(1, b"l", LNK, link=b"t", size=1),
        entry(2, b"f", REG, size=3, xattrs={b"user.k": b"v"}, hlink=None),
        entry(3, b"h", REG, hlink=2)), (None, None, p.EntryExtras(DIGEST, b"u", b"g"), None)))
    conn.send(p.FlistBatch(b"d", frozenset(), (entry(4, b"d/x", REG),)))
    for m in (p.FlistEnd(False), p.FileBegin(2, 3), p.Data(b"abc"), p.FileEnd(2, DIGEST),
              p.FileSkip(4, 24, "gone"), p.Problem("f", "bad", 23), p.Log(20, "hi"),
              p.Stats.of({"files": 5}), p.Goodbye(0)):
        conn.send(m)
    conn.flush()
    return bytes(conn.stream.out)


VALID = _valid_session()


def test_valid_session_decodes():
    drain(VALID)
    msgs = decode_frames(VALID, prelude=False)
    assert msgs[-1] == p.Goodbye(0) and len(msgs) == 11


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, len(VALID)))
def test_fuzz_mutated_session(flips, cut):
    data = bytearray(VALID)
    for pos, value in flips:
        data[pos] = value
    drain(bytes(data[:cut] if cut < len(data) // 2 else data))


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_handshake(data):
    for blob in (data, p.MAGIC + data, hello()[:14] + data):
        try:
            client_against(blob)
        except ZcsyncError as exc:
            assert isinstance(exc, (ProtocolError, StreamError, StartupError))


def test_largest_allowed_entry_fits_the_smallest_frame():
    one = {b"user.big": b"v" * p.MAX_XATTR_VALUE}
    e = entry(1, b"d/" + b"n" * 4094, LNK, link=b"t" * 4096, xattrs=one)
    extras = (p.EntryExtras(DIGEST, b"u" * 255, b"g" * 255),)
    assert p.entry_problem(e, extras[0], frame_max=p.MIN_FRAME_MAX) is None
    sender = p.Connection(BytesStream())
    sender.frame_max = p.MIN_FRAME_MAX
    sender.send(p.FlistBatch(None, frozenset({b"d"}), (entry(0, b"d", DIR),)))
    sender.send(p.FlistBatch(b"d", frozenset(), (e,), extras))
    sender.flush()
    receiver = p.Connection(BytesStream(bytes(sender.stream.out)))
    receiver.frame_max = p.MIN_FRAME_MAX
    receiver.recv()
    assert receiver.recv().entries == (e,)


# -- compressed data (DataZ) ---------------------------------------------------

COMPRESSIBLE = b"".join(b"line %06d of a rather repetitive text file\n" % i for i in range(60000))  # 2.6 MB


def dataz_frame(size: int, block: bytes) -> bytes:
    return frame(p.DataZ.TYPE, struct.pack(">I", size) + block)


def open_file_frames() -> bytes:
    return frame(p.FileBegin.TYPE, struct.pack(">IQ", 1, 10 << 20))


def decode_z(*frames: bytes, codec="zstd"):
    """Decode frames on a receiving connection that negotiated codec; inflate every DataZ."""
    data = b"".join(frames)
    conn0 = p.Connection(BytesStream())
    conn0.send(top_batch())
    conn0.flush()
    conn = p.Connection(BytesStream(bytes(conn0.stream.out) + data), side="receiver")
    conn.set_codec(zc.get_codec(codec) if codec else None)
    out = []
    while True:
        try:
            msg = conn.recv()
        except p.ConnectionClosed:
            return out[1:]
        out.append(conn.inflate(msg) if isinstance(msg, p.DataZ) else msg)


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_compressed_file_transfer(pair, codec):
    left, right = pair
    join = in_thread(p.handshake, right, "server", {"compress": "zstd,lz4,none"})
    assert p.handshake(left, "client", {"compress": codec}).compress == codec
    join()
    assert left.codec.name == right.codec.name == codec
    payload = COMPRESSIBLE + os.urandom(3 << 20)

    def send():
        left.send(top_batch())
        left.send_file(1, len(payload), [payload[:10], payload[10:]], DIGEST, compress=True)
        left.send_file(2, len(payload), [payload], DIGEST)  # compress=False: all Data
        left.flush()
    join = in_thread(send)
    right.recv()
    kinds: dict[int, list[str]] = {1: [], 2: []}
    for index in (1, 2):
        assert right.recv() == p.FileBegin(index, len(payload))
        data = bytearray()
        while not isinstance(m := right.recv(), p.FileEnd):
            kinds[index].append(type(m).__name__)
            data += right.inflate(m) if isinstance(m, p.DataZ) else m.payload
        assert data == payload and m == p.FileEnd(index, DIGEST)
    join()
    # 10 bytes are too few to compress; the text shrinks; random data goes as it is.
    assert kinds[1][0] == "Data" and "DataZ" in kinds[1] and kinds[1][-2:] == ["Data", "Data"]
    assert set(kinds[2]) == {"Data"}
    assert left.bytes_sent < 2 * len(payload) - len(COMPRESSIBLE) // 2


def test_dataz_round_trip_and_encoder_bounds():
    block = zc.get_codec("zstd").compress(COMPRESSIBLE[:100_000])
    msg = p.DataZ(100_000, block)
    assert p.encode_payload(msg) == struct.pack(">I", 100_000) + block
    assert decode_z(open_file_frames(), frame(p.DataZ.TYPE, p.encode_payload(msg))) == [
        p.FileBegin(1, 10 << 20), COMPRESSIBLE[:100_000]]
    with pytest.raises(ValueError, match="shorter"):
        p.encode_payload(p.DataZ(10, b"x" * 10))
    with pytest.raises(ValueError, match="not in"):
        p.encode_payload(p.DataZ(p.DEFAULT_FRAME_MAX + 1, b"x"))


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_decompression_bomb_is_a_protocol_error(codec):
    """A block that would inflate beyond its declared size stops at the bound, however small it is."""
    block = zc.get_codec(codec).compress(bytes(64 << 20))  # 64 MiB of zeros: a few KiB (lz4: 250 KiB)
    assert len(block) < 300_000
    with pytest.raises(ProtocolError, match="DataZ block that is not 1000000 bytes"):
        decode_z(open_file_frames(), dataz_frame(1_000_000, block), codec=codec)


def test_zstd_frame_must_declare_the_size():
    nocs = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(1 << 20))
    with pytest.raises(ProtocolError, match="no content size"):
        decode_z(open_file_frames(), dataz_frame(1 << 20, nocs))
    small = zc.get_codec("zstd").compress(bytes(1000))
    with pytest.raises(ProtocolError, match="content size of 1000"):
        decode_z(open_file_frames(), dataz_frame(5000, small))
    with pytest.raises(ProtocolError, match="unused data"):  # a second frame or junk after the block
        decode_z(open_file_frames(), dataz_frame(1000, small + small))


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_corrupt_or_short_blocks(codec):
    c = zc.get_codec(codec)
    block = c.compress(COMPRESSIBLE[:50_000])
    with pytest.raises(ProtocolError, match="DataZ block"):
        decode_z(open_file_frames(), dataz_frame(60_000, block), codec=codec)  # inflates short
    with pytest.raises(ProtocolError, match="DataZ block"):
        decode_z(open_file_frames(), dataz_frame(50_000, b"\xff" * 100), codec=codec)


@pytest.mark.parametrize("payload,match", [
    (struct.pack(">I", p.DEFAULT_FRAME_MAX + 1) + b"x" * 10, "uncompressed"),  # beyond the bound
    (struct.pack(">I", 0), "uncompressed"),
    (struct.pack(">I", 10) + b"x" * 10, "must be shorter"),  # not smaller: should have been Data
    (struct.pack(">I", 10), "must be shorter"),  # empty block
    (b"\x00\x01", "truncated"),
])
def test_dataz_header_bounds(payload, match):
    with pytest.raises(ProtocolError, match=match):
        decode_z(open_file_frames(), frame(p.DataZ.TYPE, payload))


def test_dataz_needs_negotiated_compression_and_an_open_file():
    block = zc.get_codec("zstd").compress(bytes(1000))
    with pytest.raises(ProtocolError, match="no compression was negotiated"):
        decode_z(open_file_frames(), dataz_frame(1000, block), codec=None)
    with pytest.raises(ProtocolError, match="outside a file"):
        decode_z(dataz_frame(1000, block))
    with pytest.raises(ProtocolError, match="never accepts"):
        conn = p.Connection(BytesStream(dataz_frame(1000, block)), side="sender")
        conn.set_codec(zc.get_codec("zstd"))
        conn.recv()


def test_handshake_sets_the_codec_on_both_sides(pair):
    left, right = pair
    join = in_thread(p.handshake, right, "server", {"compress": "lz4,none"})
    assert p.handshake(left, "client", {"compress": "zstd,lz4"}).compress == "lz4"
    join()
    assert left.codec.name == right.codec.name == "lz4"
    assert left.decoder.codec is left.codec


def test_no_compression_leaves_no_codec(pair):
    left, right = pair
    join = in_thread(p.handshake, right, "server", {"compress": "zstd,lz4,none"})
    assert p.handshake(left, "client").compress == "none"
    join()
    assert left.codec is None and right.decoder.codec is None


def test_bwlimit_paces_writes():
    s = BytesStream()
    conn = p.Connection(s)
    conn.set_bwlimit(4 << 20)
    start = time.monotonic()
    conn.send_data(b"x" * (2 << 20))
    elapsed = time.monotonic() - start
    assert len(s.out) == (2 << 20) + 10 and s.writes >= 4 + 2  # pieces of rate/8, and the headers
    assert 0.3 <= elapsed < 1.5  # 0.5 s of data, less the burst allowance
    conn.set_bwlimit(None)
    assert conn.limiter is None


# -- delta signatures ---------------------------------------------------------

def _sig(size=100_000, seed=5):
    import tempfile

    from zcsync.delta import make_signature
    with tempfile.TemporaryFile() as f:
        f.write(os.urandom(size))
        f.flush()
        return make_signature(f.fileno(), size, seed=seed)


def test_signature_round_trip_and_size():
    sig = _sig()
    blob = p.encode_signature(sig)
    assert p.decode_signature(blob) == sig
    # a header and 4 + strong_len bytes per block: as compact as rsync's sum_struct
    assert len(blob) == 26 + sig.count * (4 + sig.strong_len)


def test_round_trip_delta_file(pair):
    left, right = pair
    msgs = [top_batch(), p.FileBegin(1, 5000), p.Match(0, 1), p.Data(b"x" * 10), p.Match(2**32 - 2, 2),
            p.FileEnd(1, DIGEST)]
    for m in msgs:
        left.send(m)
    left.flush()
    assert [right.recv() for _ in msgs][1:] == msgs[1:]


def test_receiver_accepts_match_only_from_the_sender():
    with pytest.raises(ProtocolError, match="never accepts"):
        decode_frames(frame(p.Match.TYPE, struct.pack(">II", 0, 1)), side="sender")


def _tamper(blob: bytes, offset: int, fmt: str, value: int) -> bytes:
    b = bytearray(blob)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda b: _tamper(b, 0, ">B", 2), "unknown layout"),
    (lambda b: _tamper(b, 1, ">I", 8), "block length 8 out of range"),
    (lambda b: _tamper(b, 1, ">I", 1 << 20), "block length"),
    (lambda b: _tamper(b, 5, ">B", 17), "strong"),
    (lambda b: _tamper(b, 5, ">B", 1), "strong"),
    (lambda b: _tamper(b, 6, ">I", 2**32 - 1), "blocks \\(limit"),
    (lambda b: _tamper(b, 6, ">I", 3), "truncated|trailing"),
    (lambda b: _tamper(b, 10, ">Q", 2**63), "impossible basis size"),
    (lambda b: _tamper(b, 10, ">Q", 10**9), "does not fit size"),
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"x", "trailing"),
    (lambda b: b[:20], "truncated"),
])
def test_bad_signatures_are_protocol_errors(mutate, match):
    blob = p.encode_signature(_sig())
    with pytest.raises(ProtocolError, match=match) as info:
        p.decode_signature(mutate(blob))
    assert info.value.exit_code == 2


def test_what_signature_fits_one_frame_or_parts():
    room = p.DEFAULT_FRAME_MAX - 9  # a Request's own fields
    fits = (room - 26) // 8  # blocks with 4-byte strong sums in one frame
    assert p.signature_fits(fits, 4, p.DEFAULT_FRAME_MAX, parts=False)
    assert not p.signature_fits(fits + 1, 4, p.DEFAULT_FRAME_MAX, parts=False)
    assert p.signature_fits(p.MAX_SIGNATURE_BLOCKS, 16, p.DEFAULT_FRAME_MAX, parts=True)
    assert not p.signature_fits(p.MAX_SIGNATURE_BLOCKS + 1, 2, p.DEFAULT_FRAME_MAX, parts=True)


def _small_block_sig(size: int, inplace_seed: int = 9):
    import tempfile

    from zcsync.delta import make_signature
    with tempfile.TemporaryFile() as f:
        f.write(os.urandom(size))
        f.flush()
        return make_signature(f.fileno(), size, 64, seed=inplace_seed)


@pytest.mark.parametrize("inplace", [False, True])
def test_a_signature_bigger_than_a_frame_goes_in_parts_and_arrives_whole(inplace):
    sig = _small_block_sig(3_000_000)  # 46,875 blocks: ~330 KB, three frames of 128 KiB
    blob = p.encode_signature(sig)
    assert len(blob) > 2 * p.MIN_FRAME_MAX
    out = p.Connection(BytesStream(), frame_max=p.MIN_FRAME_MAX)
    out.send(p.Request(1, blob, inplace=inplace))
    out.send(p.Heartbeat())
    out.flush()
    wire = bytes(out.stream.out)
    inn = p.Connection(BytesStream(wire), side="sender", frame_max=p.MIN_FRAME_MAX)
    inn.decoder.sent_next_index = 10  # as if it had sent a file list of 10 entries
    frames, pos = [], 0
    while pos < len(wire):
        mtype, length = struct.unpack_from(">BI", wire, pos)
        frames.append((mtype, length))
        assert length <= p.MIN_FRAME_MAX
        pos += 5 + length
    assert [t for t, _ in frames] == [p.Request.TYPE] * 3 + [p.Heartbeat.TYPE]
    got = inn.recv()
    assert got == p.Request(1, blob, inplace=inplace)
    assert p.decode_signature(got.signature) == sig
    assert inn.recv() == p.Heartbeat()


def _head(count: int, strong: int = 2) -> bytes:
    return struct.pack(">BIBIQQ", 1, 64, strong, count, count * 64, 0)  # 26 + count * (4 + strong) in all


def _part(index: int, flags: int, chunk: bytes) -> bytes:
    return frame(p.Request.TYPE, struct.pack(">IBI", index, flags, len(chunk)) + chunk)


SIG, MORE, INPLACE = 0x01, 0x02, 0x10


@pytest.mark.parametrize(("frames", "match"), [
    ([_part(1, MORE, b"")], "conflicting flags 0x02"),
    ([_part(1, SIG | MORE, b"abc")], "first part of a signature in 3 bytes, without its head"),
    ([_part(1, SIG | MORE, _head(p.MAX_SIGNATURE_BLOCKS + 1))], "limit 16777216 blocks"),
    ([_part(1, SIG | MORE, _head(10, strong=1))], "strong sums of 1 bytes"),
    ([_part(1, SIG | MORE, _head(1000)), frame(p.Heartbeat.TYPE, b"")],
     "Heartbeat in the middle of the signature for index 1"),
    ([_part(1, SIG | MORE, _head(1000)), frame(p.Requests.TYPE, struct.pack(">I", 2))],
     "Requests in the middle of the signature for index 1"),
    ([_part(1, SIG | MORE, _head(1000)), _part(2, SIG, b"x")],
     "interrupted the signature for index 1 with a Request for index 2"),
    ([_part(1, SIG | MORE, _head(1000)), _part(1, SIG | INPLACE, b"x")], "interrupted the signature for index 1"),
    ([_part(1, SIG | MORE, _head(1000)), _part(1, 0, b"")], "interrupted the signature for index 1"),
    ([_part(1, SIG | MORE, _head(10) + b"x" * 10), _part(1, SIG, b"x" * 100)],
     "sent 136 bytes of a signature of 86 for index 1"),
    ([_part(1, SIG | MORE, _head(10)), _part(1, SIG, b"x" * 10)], "sent 36 bytes of a signature of 86"),
    ([_part(1, SIG | MORE, _head(10) + b"x" * 60)], "sent 86 bytes of a signature of 86 for index 1 and more"),
    ([_part(1, SIG | MORE, _head(10)), _part(1, SIG | MORE, b"")], "sent 26 bytes of a signature of 86"),
])
def test_bad_signature_parts_end_the_session(frames, match):
    with pytest.raises(ProtocolError, match=match) as info:
        decode_frames(*frames)
    assert info.value.exit_code == 2
