"""The sending side over a socketpair: Request and Requests answered from a real tree, and
files that change between the scan and the request skipped with rsync's codes (never sent
wrong, never a hang)."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import xxhash

from tests.unit.test_protocol import SockStream, in_thread
from zcsync import fsscan
from zcsync import protocol as p
from zcsync.engine import source_args
from zcsync.errors import PARTIAL, VANISHED
from zcsync.filters import FilterRules
from zcsync.options import Options
from zcsync.remote import SendingSide
from zcsync.sender import Sender
from zcsync.stats import Report


def _serve(src: Path):
    """Start a SendingSide for src/ on one end of a socketpair; the other end (a receiver's
    Connection), the listed regular files by name, and a join for the sending thread."""
    a, b = socket.socketpair()
    b.settimeout(20)  # a sender that hangs fails the test instead
    opts = Options(recursive=True)
    sender = Sender(source_args([str(src) + "/"], opts), opts, FilterRules.parse([]))
    report = Report()
    side = SendingSide(p.Connection(SockStream(a), side="sender", peer="receiver"), sender, opts, report)
    join = in_thread(side.run)
    conn = p.Connection(SockStream(b), side="receiver", peer="sender")
    files: dict[bytes, int] = {}
    while not isinstance(msg := conn.recv(), p.FlistEnd):
        assert isinstance(msg, p.FlistBatch)
        files.update((e.name, e.index) for e in msg.entries if e.is_reg)
    return conn, files, join, report


def _answers(conn: p.Connection, count: int) -> dict[int, p.Message]:
    out = {}
    while len(out) < count:
        msg = conn.recv()
        if isinstance(msg, (p.WholeFile, p.FileSkip, p.FileBegin)):
            out[msg.index] = msg
        if isinstance(msg, p.FileBegin):
            while not isinstance(conn.recv(), p.FileEnd):
                pass
    return out


def _finish(conn: p.Connection, join) -> None:
    conn.send(p.Done())
    conn.flush()
    while not isinstance(conn.recv(), p.Goodbye):
        pass
    conn.send(p.Goodbye(0))
    conn.flush()
    join()


def test_requests_answered_in_order_whole(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    contents = {b"a": b"alpha" * 100, b"d/b": b"", b"d/c": os.urandom(70_000)}
    for name, data in contents.items():
        (src / name.decode()).write_bytes(data)
    conn, files, join, _ = _serve(src)
    assert set(files) == set(contents)
    order = [files[b"d/c"], files[b"a"], files[b"d/b"]]
    conn.send(p.Requests(tuple(order)))
    conn.flush()
    got = [conn.recv() for _ in order]
    assert [m.index for m in got] == order
    by_index = {i: n for n, i in files.items()}
    for msg in got:
        data = contents[by_index[msg.index]]
        assert msg == p.WholeFile(msg.index, xxhash.xxh3_128(data).digest(), data)
    _finish(conn, join)


def test_files_changed_after_the_scan_are_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("gone", "grown", "linked", "fifo", "kept"):
        (src / name).write_bytes(b"x" * 10)
    conn, files, join, report = _serve(src)
    (src / "gone").unlink()
    (src / "grown").write_bytes(b"x" * 11)
    (src / "linked").unlink()
    (src / "linked").symlink_to("kept")  # never followed: not the file the scan saw
    (src / "fifo").unlink()
    os.mkfifo(src / "fifo")  # opening it must not wait for a writer
    names = ["gone", "grown", "linked", "fifo", "kept"]
    conn.send(p.Requests(tuple(files[n.encode()] for n in names)))
    conn.flush()
    got = _answers(conn, len(names))
    codes = {n: (got[files[n.encode()]].code if isinstance(got[files[n.encode()]], p.FileSkip) else None)
             for n in names}
    assert codes == {"gone": VANISHED, "grown": VANISHED, "linked": PARTIAL, "fifo": VANISHED, "kept": None}
    assert "file has vanished" in got[files[b"gone"]].message
    assert "changed during the transfer" in got[files[b"grown"]].message
    assert "failed to open" in got[files[b"linked"]].message
    assert got[files[b"kept"]].data == b"x" * 10
    _finish(conn, join)
    assert {pr.path for pr in report.problems} >= {"gone", "grown", "linked", "fifo"}


def test_a_failing_file_list_ends_the_run_instead_of_hanging(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The list thread fails after two batches (the top one, then the root's): the receiver
    still gets FlistEnd (with an I/O error, so no deletions), and the sending side raises the
    failure once it hears back."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "a").write_bytes(b"a")
    (src / "d" / "b").write_bytes(b"b")
    scan = Sender.batches

    def failing(self):
        it = scan(self)
        yield next(it)
        yield next(it)
        raise OSError(5, "Input/output error", "d")
    monkeypatch.setattr(Sender, "batches", failing)
    conn, files, join, _ = _serve(src)  # returns only once FlistEnd arrived
    assert set(files) == {b"a"}
    assert conn.decoder.flist_done
    conn.send(p.Done())
    conn.flush()
    with pytest.raises(OSError, match="Input/output error"):
        join()


def test_requests_for_an_index_out_of_the_list_are_refused() -> None:
    decoder = p.Decoder(side="sender")
    decoder.sent_next_index = 5  # we listed indices 0..4
    for payload, why in ((b"", "of 0 bytes"), (b"\0\0\0", "of 3 bytes"), (b"\0\0\0\5", "index 5")):
        with pytest.raises(p.ProtocolError, match=why):
            decoder.decode_payload(p.Requests, payload)
    assert decoder.decode_payload(p.Requests, b"\0\0\0\4\0\0\0\1") == p.Requests((4, 1))
    decoder.requests_done = True
    with pytest.raises(p.ProtocolError, match="after Done"):
        decoder.decode_payload(p.Requests, b"\0\0\0\1")
    with pytest.raises(ValueError):
        p.encode_payload(p.Requests(()))


@pytest.mark.parametrize("read_file", [fsscan.read_file, fsscan.py_read_file], ids=["native", "python"])
def test_read_file(tmp_path: Path, read_file) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"data" * 1000)
    (tmp_path / "l").symlink_to("f")
    os.mkfifo(tmp_path / "p")
    path = bytes(f)
    assert read_file(path, 4000, False) == (b"data" * 1000, xxhash.xxh3_128(b"data" * 1000).digest())
    assert read_file(path, 3999, False) is None  # not the size the scan saw
    assert read_file(bytes(tmp_path / "l"), 4000, False) == -40  # ELOOP: links are not followed
    assert read_file(bytes(tmp_path / "l"), 4000, True) == read_file(path, 4000, False)
    assert read_file(bytes(tmp_path / "nope"), 1, False) == -2
    assert read_file(bytes(tmp_path), 0, False) is None  # a directory
    assert read_file(bytes(tmp_path / "p"), 0, False) is None  # a FIFO, opened without waiting
    empty = tmp_path / "e"
    empty.write_bytes(b"")
    assert read_file(bytes(empty), 0, False) == (b"", xxhash.xxh3_128(b"").digest())


def test_a_list_that_ends_before_its_first_batch_gets_done_not_a_hang(tmp_path):
    """A sender whose scan fails at once sends only FlistEnd(io_error); the receiver must
    answer Done (so the sender can report its error), not wait for a batch forever."""
    from zcsync.remote import ReceivingSide

    a, b = socket.socketpair()
    a.settimeout(20)
    b.settimeout(20)
    side = ReceivingSide(p.Connection(SockStream(a), side="receiver", peer="sender"), str(tmp_path / "dst"),
                         Options(recursive=True), Report(), FilterRules.parse([]))
    join = in_thread(side.run)
    conn = p.Connection(SockStream(b), side="sender", peer="receiver")
    conn.send(p.FlistEnd(True))
    conn.flush()
    assert isinstance(conn.recv(), p.Done)
    conn.send(p.Goodbye(23))
    conn.flush()
    while not isinstance(conn.recv(), p.Goodbye):
        pass
    join()
    assert not (tmp_path / "dst").exists()
