"""Delta transfer over a real sshd against `rsync --no-W`: same trees, comparable bytes on the wire."""
from __future__ import annotations

import logging
import os
import pathlib
import random
import re
import shutil

import pytest

import zcsync
from tests.oracle import differential
from zcsync import remote

from .sshd import ALIAS, remote_zcsync_path

SIZE = 20 << 20
NAME = "big.bin"
OLD = 1_500_000_000  # mtime of the basis: older than the source, so the quick check sends it


def _edits(data: bytes, rnd: random.Random) -> bytes:
    out = bytearray(data)
    for i in range(20):
        pos = (i * len(data)) // 20 + rnd.randrange(len(data) // 40)
        out[pos:pos + 100] = rnd.randbytes(100)
    return bytes(out)


CASES = {
    "edits": lambda d, r: _edits(d, r),
    "insert-front": lambda d, r: r.randbytes(1 << 20) + d,
    "append": lambda d, r: d + r.randbytes(len(d) // 10),
    "unrelated": lambda d, r: r.randbytes(len(d)),
}
EDIT_CASES = ("edits", "insert-front", "append")


def prepare_pair(case: str, size: int = SIZE, cases=CASES):  # type: ignore[no-untyped-def]
    """A differential prepare(): dst/big.bin an old basis of `size` random bytes, src/big.bin
    what cases[case] makes of it (seeded by the case's name), and a small file beside it."""
    def prepare(src: pathlib.Path, dst: pathlib.Path) -> None:
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(dst, ignore_errors=True)
        src.mkdir()
        dst.mkdir()
        rnd = random.Random(case)
        basis = rnd.randbytes(size)
        (dst / NAME).write_bytes(basis)
        os.utime(dst / NAME, (OLD, OLD))
        (src / NAME).write_bytes(cases[case](basis, rnd))
        (src / "small.txt").write_bytes(b"hello\n")
        # Directory times a whole second apart: zcsync skips a directory time that differs
        # from the source's by less than a second, rsync does not (not what this tests).
        os.utime(src, (OLD + 7, OLD + 7))
    return prepare


def _total(out: str, what: str) -> int:
    m = re.search(rf"Total bytes {what}: ([\d,]+)", out)
    assert m, f"no 'Total bytes {what}' in:\n{out}"
    return int(m.group(1).replace(",", ""))


def _literal(out: str) -> int:
    m = re.search(r"Literal data: ([\d,]+)", out)
    assert m, out
    return int(m.group(1).replace(",", ""))


@pytest.mark.parametrize("direction", ["push", "pull"])
@pytest.mark.parametrize("case", list(CASES))
def test_delta_like_rsync(tmp_path, sshd, case, direction):
    paths = ["src/", f"{ALIAS}:{{run}}/dst"] if direction == "push" else [f"{ALIAS}:{{run}}/src/", "dst"]
    rs, zc = differential(tmp_path, ["-a", "--no-W", "--stats"], seed=1, prepare=prepare_pair(case),
                          env=sshd.env(), paths=paths, zcsync_extra=["--zcsync-path", remote_zcsync_path()])
    if case == "unrelated":
        assert _literal(zc.stdout) >= SIZE
        return
    # The data goes one way: what the client sends in a push, what it receives in a pull.
    data = "sent" if direction == "push" else "received"
    ours, theirs = _total(zc.stdout, data), _total(rs.stdout, data)
    assert ours <= 1.1 * theirs, f"{case} {direction}: zcsync {data} {ours} bytes, rsync {theirs}"
    assert _literal(zc.stdout) < SIZE // 10 + (1 << 20) + 200_000
    # The signature goes the other way; it must not cost more than rsync's either.
    other = "received" if direction == "push" else "sent"
    assert _total(zc.stdout, other) <= 1.1 * _total(rs.stdout, other) + 2048


@pytest.fixture
def ssh_env(sshd, monkeypatch):
    for key, value in sshd.env().items():
        if key.startswith("ZCSYNC_"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return sshd


def test_basis_changed_between_signature_and_rebuild_is_redone(tmp_path, ssh_env, monkeypatch, caplog):
    """The basis is overwritten (same size) after its signature went out: the rebuilt file
    fails verification and is fetched again, whole."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    rnd = random.Random(7)
    basis = rnd.randbytes(4 << 20)
    (dst / NAME).write_bytes(basis)
    os.utime(dst / NAME, (OLD, OLD))
    want = _edits(basis, rnd)
    (src / NAME).write_bytes(want)

    signature = remote.ReceivingSide._signature
    requests: list[bytes | None] = []

    def corrupting(self, request):
        blob = signature(self, request)
        requests.append(blob)
        if blob is not None:
            (dst / NAME).write_bytes(rnd.randbytes(len(basis)))  # same size, other bytes
        return blob
    monkeypatch.setattr(remote.ReceivingSide, "_signature", corrupting)
    sent = []
    orig_receive = remote.ReceivingSide._receive_file

    def receive(self, begin):
        with self._lock:
            sent.append(begin.index in self.bases)
        return orig_receive(self, begin)
    monkeypatch.setattr(remote.ReceivingSide, "_receive_file", receive)

    result = zcsync.sync(f"{ALIAS}:{src}/", str(dst), archive=True, whole_file=False,
                         zcsync_path=remote_zcsync_path())
    assert result.exit_code == 0, result.errors
    assert (dst / NAME).read_bytes() == want
    assert len(requests) == 1 and requests[0] is not None  # the first request carried a signature
    assert sent == [True, False]  # the delta, then the redo: a whole-file request
    assert "checksum mismatch" in caplog.text


def test_whole_file_option_sends_no_signature(tmp_path, ssh_env, monkeypatch):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (dst / NAME).write_bytes(b"x" * 100_000)
    os.utime(dst / NAME, (OLD, OLD))
    (src / NAME).write_bytes(b"y" + b"x" * 100_000)
    result = zcsync.sync(f"{ALIAS}:{src}/", str(dst), archive=True, whole_file=True,
                         zcsync_path=remote_zcsync_path())
    assert result.exit_code == 0
    assert result.stats.matched_bytes == 0
    assert (dst / NAME).read_bytes() == b"y" + b"x" * 100_000
    result = None
    (src / NAME).write_bytes(b"z" + b"x" * 100_000)
    result = zcsync.sync(f"{ALIAS}:{src}/", str(dst), archive=True, zcsync_path=remote_zcsync_path())
    assert result.exit_code == 0
    assert result.stats.matched_bytes > 90_000  # the default for a remote transfer: delta
    assert (dst / NAME).read_bytes() == b"z" + b"x" * 100_000


def test_a_peer_that_cannot_join_signature_parts_gets_the_file_whole(tmp_path, ssh_env, monkeypatch, caplog):
    """A signature bigger than a frame goes in parts only to a peer that listed
    signature-parts; to any other the file goes whole (and the session goes on)."""
    init = remote.ReceivingSide.__init__

    def older_peer(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._signature_parts = False
    monkeypatch.setattr(remote.ReceivingSide, "__init__", older_peer)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    rnd = random.Random(3)
    basis = rnd.randbytes(16 << 20)  # in blocks of 100 bytes: a signature of 1.17 MB
    (dst / NAME).write_bytes(basis)
    os.utime(dst / NAME, (OLD, OLD))
    want = _edits(basis, rnd)
    (src / NAME).write_bytes(want)
    with caplog.at_level(logging.INFO, logger="zcsync"):
        result = zcsync.sync(f"{ALIAS}:{src}/", str(dst), archive=True, block_size=100,
                             zcsync_path=remote_zcsync_path())
    assert result.exit_code == 0, result.errors
    assert result.stats.matched_bytes == 0
    assert (dst / NAME).read_bytes() == want
    assert "too many blocks for a signature the peer takes" in caplog.text


# -- the sending side on its own (no ssh): a source that shrinks -------------------

class _Conn:
    codec = None
    frame_max = zcsync.protocol.DEFAULT_FRAME_MAX
    can_sendfile = False  # a pipe-like stream: data goes as Data frames

    def __init__(self) -> None:
        self.sent: list[object] = []

    def send(self, msg) -> None:
        self.sent.append(msg)

    def flush(self) -> None:
        self.sent.append("flush")

    def send_data(self, data, compress=False) -> None:
        self.sent.append(zcsync.protocol.Data(bytes(data)))


class _Sender:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def open(self, entry) -> int:
        return os.open(self.path, os.O_RDONLY)


def _sending_side(path: pathlib.Path, size: int):
    from zcsync.flist import FileEntry
    from zcsync.stats import Report
    conn, report = _Conn(), Report()
    side = remote.SendingSide(conn, _Sender(path), zcsync.Options(),
                              report)
    side.entries[0] = FileEntry(0, NAME.encode(), 0o100644, size, 0)
    return side, conn, report


@pytest.mark.parametrize("when", ["before", "during"])
def test_source_shrinking_is_a_changed_file_not_a_crash(tmp_path, monkeypatch, when):
    from zcsync import delta
    from zcsync.protocol import FileSkip, encode_signature
    size = 8 << 20
    data = random.Random(3).randbytes(size)
    basis = tmp_path / "basis"
    basis.write_bytes(data)
    with open(basis, "rb") as f:
        sig = delta.make_signature(f.fileno(), size, seed=9)
    src = tmp_path / "src"
    src.write_bytes(data[: size // 2] if when == "before" else data)
    if when == "during":
        from zcsync.delta import match
        real = match.Scanner.next

        def shrink_then_scan(self):
            os.truncate(src, 4096)  # the mapping now runs past EOF: the kernel's guard must catch SIGBUS
            return real(self)
        monkeypatch.setattr(match.Scanner, "next", shrink_then_scan)
    side, conn, report = _sending_side(src, size)
    side.send_file(0, encode_signature(sig))
    assert len(conn.sent) == 1 and isinstance(conn.sent[0], FileSkip), conn.sent
    assert conn.sent[0].code == 23 and "changed during transfer" in conn.sent[0].message
    assert report.exit_code == 23


# -- the sending side on its own: --append and --inplace requests --------------------

def test_append_request_sends_only_the_rest(tmp_path):
    from zcsync.protocol import Data, FileBegin, FileEnd, Request
    import xxhash
    data = random.Random(4).randbytes(3 << 20)
    src = tmp_path / "src"
    src.write_bytes(data)
    for verify in (False, True):
        side, conn, report = _sending_side(src, len(data))
        side._answer(Request(0, append_from=1 << 20, append_verify=verify))
        assert conn.sent[0] == FileBegin(0, len(data))
        assert b"".join(m.payload for m in conn.sent if isinstance(m, Data)) == data[1 << 20:]
        end = conn.sent[-1]
        assert isinstance(end, FileEnd)
        assert end.digest == xxhash.xxh3_128_digest(data if verify else data[1 << 20:])
        assert report.stats.bytes_sent == len(data) - (1 << 20)


def test_append_offset_beyond_the_file_is_a_protocol_error(tmp_path):
    from zcsync.errors import ProtocolError
    from zcsync.protocol import Request
    src = tmp_path / "src"
    src.write_bytes(b"x" * 1000)
    side, conn, _ = _sending_side(src, 1000)
    side._answer(Request(0, append_from=1000))  # nothing left to send: fine
    with pytest.raises(ProtocolError, match="beyond its size 1000"):
        side._answer(Request(0, append_from=1001))


def test_inplace_request_scans_in_place(tmp_path):
    from zcsync import delta
    from zcsync.protocol import Match, Request, encode_signature
    rnd = random.Random(6)
    L = 1024
    blocks = [rnd.randbytes(L) for _ in range(8)]
    basis = b"".join(blocks)
    swapped = b"".join(blocks[4:] + blocks[:4])
    src = tmp_path / "src"
    src.write_bytes(swapped)
    sig = encode_signature(delta.signature_of(basis, L, 8, seed=3))
    for inplace, want in ((False, [Match(4, 4), Match(0, 4)]), (True, [Match(4, 4)])):
        side, conn, _ = _sending_side(src, len(swapped))
        side._answer(Request(0, sig, inplace=inplace))
        assert [m for m in conn.sent if isinstance(m, Match)] == want
        assert side._inplace is False  # only for the request it came with


def test_source_shrinking_between_pieces_ends_the_file_short(tmp_path, monkeypatch):
    """Shrunk after the first piece went out: no crash, the ops stop, the file ends short
    (the receiver sees fewer bytes than FileBegin said and asks again)."""
    from zcsync import delta
    from zcsync.delta import match
    from zcsync.protocol import Data, FileBegin, FileEnd, Match, encode_signature
    size = 8 << 20
    data = random.Random(8).randbytes(size)
    src = tmp_path / "src"
    src.write_bytes(data)
    sig = encode_signature(delta.signature_of(data, 8192, 4, seed=1))
    real = match.Scanner.next
    calls = []

    def shrink_on_second(self):
        calls.append(1)
        if len(calls) == 2:
            os.truncate(src, 4096)
        return real(self)
    monkeypatch.setattr(match.Scanner, "next", shrink_on_second)
    side, conn, report = _sending_side(src, size)
    side.send_file(0, sig)
    assert isinstance(conn.sent[0], FileBegin) and isinstance(conn.sent[-1], FileEnd)
    assert "flush" in conn.sent  # the first piece went out before the second was scanned
    covered = sum(m.count * 8192 for m in conn.sent if isinstance(m, Match))
    covered += sum(len(m.payload) for m in conn.sent if isinstance(m, Data))
    assert 0 < covered < size
