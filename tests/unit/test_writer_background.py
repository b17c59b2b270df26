"""Writer.commit_in_background: small files received whole are committed by the C commit
thread; failures come back by name, fatal ones end the run, nothing is left half-done."""
from __future__ import annotations

import errno
import os

import pytest
import xxhash

from zcsync.attrs import AttrPolicy
from zcsync.commit import DestTree
from zcsync.errors import FileIOError
from zcsync.flist import FileEntry
from zcsync.options import Options
from zcsync.stats import Report
from zcsync.writer import Request, Writer

pytest.importorskip("zcsync._commit")


class Whole:
    """A DataSource already in memory, as remote.InFrameFile."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size = data, len(data)

    def digest(self) -> bytes:
        return xxhash.xxh3_128(self.data).digest()


def _writer(tmp_path, **opts):
    tree = DestTree.open(os.fsencode(tmp_path), fsync=False)
    options = Options(times=True, perms=True, **opts)
    report = Report()
    writer = Writer(options, tree, AttrPolicy(options, None, os.geteuid() == 0, 0o022), report)
    writer.commit_in_background()
    return writer, report, tree


def _request(name: bytes, data: bytes, index: int = 1) -> Request:
    entry = FileEntry(index, name, 0o100640, len(data), 1_600_000_000_123_456_789)
    return Request(entry, name, None, ">f+++++++++")


def test_every_file_lands_with_its_attributes_after_flush(tmp_path):
    writer, report, tree = _writer(tmp_path)
    (tmp_path / "sub").mkdir()
    files = {b"sub/f%d" % i: os.urandom(i * 37) for i in range(300)}
    for i, (name, data) in enumerate(files.items()):
        assert writer.write(_request(name, data, i + 1), Whole(data)) is True
    writer.flush_commits()
    for name, data in files.items():
        path = tmp_path / os.fsdecode(name)
        st = path.stat()
        assert path.read_bytes() == data
        assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o640, 1_600_000_000_123_456_789)
    assert len(os.listdir(tmp_path / "sub")) == 300  # no temp file
    assert not report.problems and not tree._pins  # every pin handed back
    tree.close()


def test_a_failed_commit_is_reported_by_name_and_the_run_goes_on(tmp_path):
    writer, report, tree = _writer(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep").write_text("x")  # rename over a non-empty directory fails
    writer.write(_request(b"d", b"data", 1), Whole(b"data"))
    writer.write(_request(b"ok", b"fine", 2), Whole(b"fine"))
    writer.flush_commits()
    assert [p.message for p in report.problems] == [f"Cannot write 'd': {os.strerror(errno.EISDIR)}"]
    assert (tmp_path / "ok").read_bytes() == b"fine"
    assert sorted(os.listdir(tmp_path)) == ["d", "ok"] and os.listdir(tmp_path / "d") == ["keep"]
    assert not tree._pins
    tree.close()


def test_a_full_filesystem_ends_the_run_and_leaves_no_temp(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    import subprocess
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs")
    try:
        (mnt / "old").write_bytes(b"old version")
        writer, report, tree = _writer(mnt)
        with pytest.raises(FileIOError) as info:
            for i in range(200):
                data = os.urandom(8192)
                writer.write(_request(b"f%03d" % i, data, i + 1), Whole(data))
            writer.write(_request(b"old", b"new" * 10000, 999), Whole(b"new" * 10000))
            writer.flush_commits()
        assert "No space left on device" in info.value.message
        writer.cleanup()
        assert (mnt / "old").read_bytes() == b"old version"
        assert not [n for n in os.listdir(mnt) if n.endswith(".zcs")]
        tree.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
