"""Unit tests for zcsync.fastio: every ladder step, sparse copies, digests, socket paths."""
from __future__ import annotations

import errno
import os
import random
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import xxhash

from zcsync import fastio
from zcsync.compress import RateLimiter
from zcsync.fastio import (
    CLONE,
    COPY_FILE_RANGE,
    READWRITE,
    SENDFILE,
    SPLICE,
    PeerClosed,
    SourceChanged,
    copy_data,
    file_digest,
    send_file,
    splice_to_file,
)

MiB = 1 << 20
SIZES = [0, 1, 4095, 4096, MiB + 1, 9 * MiB]
RANGE_METHODS = [COPY_FILE_RANGE, SENDFILE, READWRITE]
SHM = Path("/dev/shm")
# A directory on a filesystem with reflinks (XFS reflink=1, btrfs) to test FICLONE for real.
REFLINK_DIR = os.environ.get("ZCSYNC_TEST_REFLINK_DIR")


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    fastio.reset_cache()
    yield
    fastio.reset_cache()


@pytest.fixture
def shm_dir(tmp_path: Path) -> Iterator[Path]:
    """A private directory on tmpfs (/dev/shm)."""
    if not SHM.is_dir():
        pytest.skip("no /dev/shm on this machine")
    d = SHM / f"zcsync-test-{os.getpid()}-{tmp_path.name}"
    d.mkdir()
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


@pytest.fixture
def reflink_dir(tmp_path: Path) -> Iterator[Path]:
    if not REFLINK_DIR:
        pytest.skip("set ZCSYNC_TEST_REFLINK_DIR to a directory on XFS/btrfs to test FICLONE")
    d = Path(REFLINK_DIR) / f"zcsync-test-{os.getpid()}-{tmp_path.name}"
    d.mkdir()
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


@pytest.fixture(params=["disk", "tmpfs"])
def fs_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The same test on the root filesystem (tmp_path) and on tmpfs."""
    if request.param == "disk":
        return tmp_path
    return request.getfixturevalue("shm_dir")


class Files:
    """Open descriptors for one copy, closed at teardown."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def src(self, path: Path, data: bytes) -> int:
        path.write_bytes(data)
        return self._keep(os.open(path, os.O_RDONLY))

    def dst(self, path: Path, flags: int = os.O_WRONLY) -> int:
        return self._keep(os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600))

    def _keep(self, fd: int) -> int:
        self.fds.append(fd)
        return fd


@pytest.fixture
def files() -> Iterator[Files]:
    f = Files()
    yield f
    for fd in f.fds:
        os.close(fd)


def layout(path: Path) -> list[tuple[int, int]]:
    """Data extents of a file as SEEK_DATA/SEEK_HOLE report them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return list(fastio._data_extents(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def make_sparse(path: Path, size: int, extents: list[tuple[int, bytes]]) -> bytes:
    """Create a file of `size` bytes with data only at the given offsets; return its content."""
    content = bytearray(size)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        for off, data in extents:
            os.pwrite(fd, data, off)
            content[off: off + len(data)] = data
        os.fsync(fd)  # so st_blocks and SEEK_DATA describe allocated blocks on every fs
    finally:
        os.close(fd)
    return bytes(content)


# ------------------------------------------------------------------ copy_data


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("method", RANGE_METHODS)
def test_copy_each_method(fs_dir: Path, files: Files, method: str, size: int) -> None:
    data = payload(size, seed=size)
    src = files.src(fs_dir / "src", data)
    dst = files.dst(fs_dir / "dst")
    assert copy_data(src, dst, size, method=method) == method
    assert (fs_dir / "dst").read_bytes() == data


@pytest.mark.parametrize("size", SIZES)
def test_copy_auto(fs_dir: Path, files: Files, size: int) -> None:
    data = payload(size, seed=size)
    src = files.src(fs_dir / "src", data)
    dst = files.dst(fs_dir / "dst", os.O_RDWR)
    assert copy_data(src, dst, size) in fastio.COPY_METHODS
    assert (fs_dir / "dst").read_bytes() == data


def test_clone_forced_fails_without_reflink(fs_dir: Path, files: Files) -> None:
    src = files.src(fs_dir / "src", b"x" * 10000)
    dst = files.dst(fs_dir / "dst")
    try:
        copy_data(src, dst, 10000, method=CLONE)
    except OSError as exc:
        assert exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EXDEV)
    else:
        pytest.skip("this filesystem supports reflinks")


def test_ladder_skips_clone_after_first_failure(shm_dir: Path, files: Files,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_ioctl = fastio.fcntl.ioctl

    def counting_ioctl(fd: int, request: int, arg: int = 0) -> object:
        calls.append(request)
        return real_ioctl(fd, request, arg)

    monkeypatch.setattr(fastio.fcntl, "ioctl", counting_ioctl)
    data = payload(5000)
    for i in range(3):
        src = files.src(shm_dir / f"src{i}", data)
        dst = files.dst(shm_dir / f"dst{i}")
        assert copy_data(src, dst, len(data)) == COPY_FILE_RANGE
        assert (shm_dir / f"dst{i}").read_bytes() == data
    assert calls == [fastio.FICLONE]  # tmpfs answered EOPNOTSUPP once; never asked again
    dev = shm_dir.stat().st_dev
    assert fastio.method_cache() == {(dev, dev): frozenset({CLONE})}


def test_cross_filesystem(shm_dir: Path, tmp_path: Path, files: Files) -> None:
    if shm_dir.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("tmp_path is on /dev/shm")
    data = payload(3 * MiB + 7)
    src = files.src(shm_dir / "src", data)
    dst = files.dst(tmp_path / "dst")
    used = copy_data(src, dst, len(data))
    # Linux 5.3-5.11 and 5.19+ may do cross-fs copy_file_range; 5.12+ answers EXDEV on most.
    assert used in (COPY_FILE_RANGE, SENDFILE)
    assert (tmp_path / "dst").read_bytes() == data
    # The second file goes straight to the step that worked.
    src2 = files.src(shm_dir / "src2", data[:1000])
    dst2 = files.dst(tmp_path / "dst2")
    assert copy_data(src2, dst2, 1000) == used
    assert CLONE in fastio.method_cache()[(shm_dir.stat().st_dev, tmp_path.stat().st_dev)]


def test_unsupported_errno_is_cached_per_device_pair(shm_dir: Path, files: Files,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def no_cfr(*args: object) -> int:
        calls.append(args)
        raise OSError(errno.ENOSYS, "no copy_file_range")

    monkeypatch.setattr(fastio.os, "copy_file_range", no_cfr)
    data = payload(MiB)
    for i in range(2):
        src = files.src(shm_dir / f"s{i}", data)
        dst = files.dst(shm_dir / f"d{i}")
        assert copy_data(src, dst, len(data)) == SENDFILE
        assert (shm_dir / f"d{i}").read_bytes() == data
    assert len(calls) == 1


def test_per_file_errno_falls_through_but_is_not_cached(shm_dir: Path, files: Files,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def einval(*args: object) -> int:
        calls.append(args)
        raise OSError(errno.EINVAL, "not for this file")

    monkeypatch.setattr(fastio.os, "copy_file_range", einval)
    monkeypatch.setattr(fastio.os, "sendfile", einval)
    data = payload(MiB + 1)
    for i in range(2):
        src = files.src(shm_dir / f"s{i}", data)
        dst = files.dst(shm_dir / f"d{i}")
        assert copy_data(src, dst, len(data)) == READWRITE
        assert (shm_dir / f"d{i}").read_bytes() == data
    assert len(calls) == 4
    dev = shm_dir.stat().st_dev
    assert fastio.method_cache() == {(dev, dev): frozenset({CLONE})}


def test_fallback_resumes_mid_file(shm_dir: Path, files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step that stops after some chunks hands over at the offset it reached."""
    real = os.copy_file_range
    state = {"n": 0}

    def flaky(src: int, dst: int, count: int, off_src: int, off_dst: int) -> int:
        state["n"] += 1
        if state["n"] > 1:
            raise OSError(errno.EOPNOTSUPP, "gave up")
        return real(src, dst, min(count, 12345), off_src, off_dst)

    monkeypatch.setattr(fastio.os, "copy_file_range", flaky)
    data = payload(2 * MiB + 3)
    src = files.src(shm_dir / "src", data)
    dst = files.dst(shm_dir / "dst")
    assert copy_data(src, dst, len(data)) == SENDFILE
    assert (shm_dir / "dst").read_bytes() == data


def test_real_io_error_propagates(shm_dir: Path, files: Files) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    src = files.src(shm_dir / "src", payload(100_000))
    full = files._keep(os.open("/dev/full", os.O_WRONLY))
    with pytest.raises(OSError) as info:
        copy_data(src, full, 100_000)
    assert info.value.errno == errno.ENOSPC
    assert not isinstance(info.value, SourceChanged)


def test_real_io_error_is_not_a_fallback(shm_dir: Path, files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    def enospc(*args: object) -> int:
        raise OSError(errno.ENOSPC, "full")

    monkeypatch.setattr(fastio.os, "copy_file_range", enospc)
    src = files.src(shm_dir / "src", b"abc")
    dst = files.dst(shm_dir / "dst")
    with pytest.raises(OSError) as info:
        copy_data(src, dst, 3)
    assert info.value.errno == errno.ENOSPC


@pytest.mark.parametrize("method", [None, *RANGE_METHODS])
@pytest.mark.parametrize("sparse", [False, True])
def test_source_grew_copies_only_size(fs_dir: Path, files: Files, method: str | None, sparse: bool) -> None:
    data = payload(2 * MiB + 100)
    size = MiB + 1
    src = files.src(fs_dir / "src", data)
    dst = files.dst(fs_dir / "dst")
    copy_data(src, dst, size, method=method, sparse=sparse)
    assert (fs_dir / "dst").read_bytes() == data[:size]


@pytest.mark.parametrize("method", [None, *RANGE_METHODS])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("actual", [0, 1, MiB])
def test_short_source_raises(fs_dir: Path, files: Files, method: str | None, sparse: bool, actual: int) -> None:
    src = files.src(fs_dir / "src", payload(actual))
    dst = files.dst(fs_dir / "dst")
    with pytest.raises(SourceChanged) as info:
        copy_data(src, dst, 3 * MiB, method=method, sparse=sparse)
    assert isinstance(info.value, OSError)
    assert info.value.expected == 3 * MiB


def test_source_truncated_during_copy(shm_dir: Path, files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    data = payload(5 * MiB)
    src = files.src(shm_dir / "src", data)
    dst = files.dst(shm_dir / "dst")
    real_preadv = os.preadv
    truncator = os.open(shm_dir / "src", os.O_WRONLY)

    def preadv_then_truncate(fd: int, buffers: list, offset: int) -> int:
        n = real_preadv(fd, buffers, offset)
        os.ftruncate(truncator, 2 * MiB)
        return n

    monkeypatch.setattr(fastio.os, "preadv", preadv_then_truncate)
    try:
        with pytest.raises(SourceChanged) as info:
            copy_data(src, dst, len(data), method=READWRITE)
    finally:
        os.close(truncator)
    assert info.value.got == 2 * MiB


def test_bad_arguments(shm_dir: Path, files: Files) -> None:
    src = files.src(shm_dir / "src", b"x")
    dst = files.dst(shm_dir / "dst")
    with pytest.raises(ValueError):
        copy_data(src, dst, 1, method="mmap")
    with pytest.raises(ValueError):
        copy_data(src, dst, -1)
    with pytest.raises(ValueError):
        file_digest(src, -1)


def test_threads_share_the_cache(shm_dir: Path, tmp_path: Path) -> None:
    datas = [payload(MiB + i, seed=i) for i in range(16)]
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            target = (tmp_path if i % 2 else shm_dir) / f"d{i}"
            (shm_dir / f"s{i}").write_bytes(datas[i])
            s = os.open(shm_dir / f"s{i}", os.O_RDONLY)
            d = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                copy_data(s, d, len(datas[i]), sparse=bool(i % 3))
            finally:
                os.close(s)
                os.close(d)
            assert target.read_bytes() == datas[i]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ---------------------------------------------------------------------- FICLONE


@pytest.mark.parametrize("sparse", [False, True])
def test_clone_on_reflink_fs(reflink_dir: Path, files: Files, sparse: bool) -> None:
    data = payload(9 * MiB + 5)
    src = files.src(reflink_dir / "src", data)
    dst = files.dst(reflink_dir / "dst")
    assert copy_data(src, dst, len(data), sparse=sparse) == CLONE
    assert (reflink_dir / "dst").read_bytes() == data


def test_clone_forced_and_source_grew(reflink_dir: Path, files: Files) -> None:
    data = payload(MiB + 17)
    src = files.src(reflink_dir / "src", data)
    dst = files.dst(reflink_dir / "dst")
    assert copy_data(src, dst, 4097, method=CLONE) == CLONE
    assert (reflink_dir / "dst").read_bytes() == data[:4097]


def test_clone_short_source(reflink_dir: Path, files: Files) -> None:
    src = files.src(reflink_dir / "src", payload(4096))
    dst = files.dst(reflink_dir / "dst")
    with pytest.raises(SourceChanged):
        copy_data(src, dst, 8192)


def test_clone_keeps_holes(reflink_dir: Path, files: Files) -> None:
    content = make_sparse(reflink_dir / "src", 16 * MiB, [(4 * MiB, payload(65536))])
    src = files._keep(os.open(reflink_dir / "src", os.O_RDONLY))
    dst = files.dst(reflink_dir / "dst")
    assert copy_data(src, dst, len(content), sparse=True) == CLONE
    assert (reflink_dir / "dst").read_bytes() == content
    assert layout(reflink_dir / "dst") == layout(reflink_dir / "src")


# ----------------------------------------------------------------------- sparse


SPARSE_CASES: dict[str, tuple[int, list[tuple[int, bytes]]]] = {
    # size, [(offset, data)]
    "holes-around": (10 * MiB, [(MiB, payload(8192, 1)), (5 * MiB + 100, payload(10, 2))]),
    "data-at-both-ends": (6 * MiB + 123, [(0, payload(4096, 3)), (6 * MiB, payload(123, 4))]),
    "all-hole": (8 * MiB, []),
    "dense": (MiB + 1, [(0, payload(MiB + 1, 5))]),
}


def assert_same_sparse(src_path: Path, dst_path: Path, content: bytes) -> None:
    assert dst_path.read_bytes() == content
    assert dst_path.stat().st_size == len(content)
    assert layout(dst_path) == layout(src_path)
    assert dst_path.stat().st_blocks == src_path.stat().st_blocks


@pytest.mark.parametrize("case", SPARSE_CASES)
@pytest.mark.parametrize("method", [None, *RANGE_METHODS])
def test_sparse_copy_keeps_holes(fs_dir: Path, files: Files, case: str, method: str | None) -> None:
    size, extents = SPARSE_CASES[case]
    content = make_sparse(fs_dir / "src", size, extents)
    src = files._keep(os.open(fs_dir / "src", os.O_RDONLY))
    dst = files.dst(fs_dir / "dst")
    used = copy_data(src, dst, size, sparse=True, method=method)
    assert used == method if method else used in (CLONE, COPY_FILE_RANGE)
    os.fsync(dst)
    assert_same_sparse(fs_dir / "src", fs_dir / "dst", content)


def test_sparse_cross_filesystem(shm_dir: Path, tmp_path: Path, files: Files) -> None:
    size, extents = SPARSE_CASES["holes-around"]
    content = make_sparse(shm_dir / "src", size, extents)
    src = files._keep(os.open(shm_dir / "src", os.O_RDONLY))
    dst = files.dst(tmp_path / "dst")
    copy_data(src, dst, size, sparse=True)
    os.fsync(dst)
    assert (tmp_path / "dst").read_bytes() == content
    assert layout(tmp_path / "dst") == layout(shm_dir / "src")


def test_non_sparse_copy_of_sparse_source(fs_dir: Path, files: Files) -> None:
    size, extents = SPARSE_CASES["holes-around"]
    content = make_sparse(fs_dir / "src", size, extents)
    src = files._keep(os.open(fs_dir / "src", os.O_RDONLY))
    dst = files.dst(fs_dir / "dst")
    copy_data(src, dst, size)
    assert (fs_dir / "dst").read_bytes() == content


@pytest.fixture
def no_seek_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the filesystem look like one that cannot report holes (nor clone)."""
    real_lseek = os.lseek
    real_ioctl = fastio.fcntl.ioctl

    def ioctl(fd: int, request: int, arg: int = 0) -> object:
        if request == fastio.FICLONE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_ioctl(fd, request, arg)

    monkeypatch.setattr(fastio.fcntl, "ioctl", ioctl)

    def lseek(fd: int, pos: int, how: int) -> int:
        if how in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_lseek(fd, pos, how)

    monkeypatch.setattr(fastio.os, "lseek", lseek)


@pytest.mark.usefixtures("no_seek_data")
@pytest.mark.parametrize("size", [1, 4095, 4096, 3 * MiB + 5])
def test_sparse_without_seek_data_skips_zero_blocks(fs_dir: Path, files: Files, size: int) -> None:
    # A dense file (every block written) whose zero blocks should become holes, like rsync -S.
    content = bytearray(size)
    for off in range(0, size, 3 * 4096):  # one data block in three; the tail too
        content[off: off + 100] = payload(min(100, size - off), off)
    content[-1:] = b"\x01"
    (fs_dir / "src").write_bytes(content)
    src = files._keep(os.open(fs_dir / "src", os.O_RDONLY))
    dst = files.dst(fs_dir / "dst")
    assert copy_data(src, dst, size, sparse=True) == READWRITE
    os.fsync(dst)
    assert (fs_dir / "dst").read_bytes() == content
    data_blocks = sum(1 for off in range(0, size, 4096) if any(content[off: off + 4096]))
    assert (fs_dir / "dst").stat().st_blocks * 512 <= data_blocks * 4096 + 4096 * 2


@pytest.mark.usefixtures("no_seek_data")
def test_sparse_without_seek_data_all_zero(fs_dir: Path, files: Files) -> None:
    (fs_dir / "src").write_bytes(bytes(5 * MiB + 1))
    src = files._keep(os.open(fs_dir / "src", os.O_RDONLY))
    dst = files.dst(fs_dir / "dst")
    copy_data(src, dst, 5 * MiB + 1, sparse=True)
    os.fsync(dst)
    assert (fs_dir / "dst").stat().st_size == 5 * MiB + 1
    assert (fs_dir / "dst").stat().st_blocks == 0
    assert (fs_dir / "dst").read_bytes() == bytes(5 * MiB + 1)


@pytest.mark.usefixtures("no_seek_data")
def test_sparse_without_seek_data_short_source(fs_dir: Path, files: Files) -> None:
    src = files.src(fs_dir / "src", bytes(10))
    dst = files.dst(fs_dir / "dst")
    with pytest.raises(SourceChanged):
        copy_data(src, dst, MiB, sparse=True)


def test_sparse_source_with_shrunken_tail(fs_dir: Path, files: Files) -> None:
    """A tail that vanished must not come back as a hole full of zeros."""
    make_sparse(fs_dir / "src", 4 * MiB, [(0, payload(4096))])
    src = files._keep(os.open(fs_dir / "src", os.O_RDONLY))
    dst = files.dst(fs_dir / "dst")
    with pytest.raises(SourceChanged):
        copy_data(src, dst, 8 * MiB, sparse=True)


# ------------------------------------------------------------------ file_digest


@pytest.mark.parametrize("size", [0, 1, 4095, 65536, 65537, MiB + 1, 9 * MiB + 3])
def test_digest(fs_dir: Path, files: Files, size: int) -> None:
    data = payload(size, size)
    fd = files.src(fs_dir / "f", data + b"tail that is not hashed")
    assert file_digest(fd, size) == xxhash.xxh3_128(data).digest()


def test_digest_empty(fs_dir: Path, files: Files) -> None:
    fd = files.src(fs_dir / "f", b"")
    assert file_digest(fd, 0) == xxhash.xxh3_128(b"").digest()


@pytest.mark.parametrize("actual, size", [(0, 1), (100, 101), (65536, 65537), (5 * MiB, 9 * MiB)])
def test_digest_short_file(fs_dir: Path, files: Files, actual: int, size: int) -> None:
    fd = files.src(fs_dir / "f", payload(actual))
    with pytest.raises(SourceChanged) as info:
        file_digest(fd, size)
    assert (info.value.expected, info.value.got) == (size, actual)


def test_digest_of_sparse_file(shm_dir: Path, files: Files) -> None:
    size, extents = SPARSE_CASES["holes-around"]
    content = make_sparse(shm_dir / "f", size, extents)
    fd = files._keep(os.open(shm_dir / "f", os.O_RDONLY))
    assert file_digest(fd, size) == xxhash.xxh3_128(content).digest()


# ------------------------------------------------------------- paced (--bwlimit)


class PaceClock:
    """Time that passes only while the limiter sleeps (the copies themselves take none)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def make_pace(rate: int) -> tuple[RateLimiter, PaceClock]:
    clock = PaceClock()
    return RateLimiter(rate, clock=clock, sleep=clock.sleep), clock


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """What the copy asks of the kernel: each copy_file_range's and sendfile's length, each ioctl."""
    calls: dict[str, list[int]] = {"copy": [], "ioctl": []}
    real_cfr, real_sendfile, real_ioctl = os.copy_file_range, os.sendfile, fastio.fcntl.ioctl

    def copy_file_range(src: int, dst: int, count: int, *args: object) -> int:
        calls["copy"].append(count)
        return real_cfr(src, dst, count, *args)

    def sendfile(out: int, in_: int, offset: int, count: int) -> int:
        calls["copy"].append(count)
        return real_sendfile(out, in_, offset, count)

    def ioctl(fd: int, request: int, arg: int = 0) -> object:
        calls["ioctl"].append(request)
        return real_ioctl(fd, request, arg)

    monkeypatch.setattr(fastio.os, "copy_file_range", copy_file_range)
    monkeypatch.setattr(fastio.os, "sendfile", sendfile)
    monkeypatch.setattr(fastio.fcntl, "ioctl", ioctl)
    return calls


@pytest.mark.parametrize("method", [None, *RANGE_METHODS])
def test_paced_copy_moves_pieces_at_the_rate(fs_dir: Path, files: Files, method: str | None,
                                             kernel_calls: dict[str, list[int]]) -> None:
    data = payload(3 * MiB + 5, seed=7)
    src = files.src(fs_dir / "src", data)
    dst = files.dst(fs_dir / "dst")
    pace, clock = make_pace(MiB)
    used = copy_data(src, dst, len(data), method=method, pace=pace)
    assert (fs_dir / "dst").read_bytes() == data
    assert used == (method or COPY_FILE_RANGE)
    assert fastio.FICLONE not in kernel_calls["ioctl"]  # a reflink cannot be paced
    assert max(kernel_calls["copy"], default=0) <= pace.piece
    assert 2.85 <= clock.now <= 3.01  # 3 MiB at 1 MiB/s, less at most the 0.1 s burst


@pytest.mark.parametrize("case", ["holes-around", "dense"])
def test_paced_sparse_copy_pays_for_its_data_extents(fs_dir: Path, files: Files, case: str) -> None:
    size, extents = SPARSE_CASES[case]
    content = make_sparse(fs_dir / "src", size, extents)
    src = files._keep(os.open(fs_dir / "src", os.O_RDONLY))
    dst = files.dst(fs_dir / "dst")
    pace, clock = make_pace(MiB)
    copy_data(src, dst, size, sparse=True, pace=pace)
    os.fsync(dst)
    assert_same_sparse(fs_dir / "src", fs_dir / "dst", content)
    data = sum(len(d) for _, d in extents)
    assert data / MiB - 0.13 <= clock.now <= data / MiB + 0.01


@pytest.mark.usefixtures("no_seek_data")
def test_paced_sparse_copy_without_seek_data(fs_dir: Path, files: Files) -> None:
    content = bytearray(2 * MiB)
    content[MiB: MiB + 100] = payload(100)
    src = files.src(fs_dir / "src", bytes(content))
    dst = files.dst(fs_dir / "dst")
    pace, clock = make_pace(MiB)
    assert copy_data(src, dst, len(content), sparse=True, pace=pace) == READWRITE
    assert (fs_dir / "dst").read_bytes() == content
    assert 1.85 <= clock.now <= 2.01  # every byte is read and looked at


def test_paced_verified_copy(shm_dir: Path, files: Files) -> None:
    data = payload(fastio.VERIFY_CHUNK + MiB + 3, seed=8)  # more than one verified chunk
    src = files.src(shm_dir / "src", data)
    dst = files.dst(shm_dir / "dst", os.O_RDWR)
    pace, clock = make_pace(16 * MiB)
    want = xxhash.xxh3_128(data).digest()
    assert fastio.copy_verified(src, dst, len(data), pace) == (want, want)
    assert (shm_dir / "dst").read_bytes() == data
    assert len(data) / (16 * MiB) - 0.11 <= clock.now <= len(data) / (16 * MiB) + 0.01


# -------------------------------------------------------------- socket transfers


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
    return client, conn


SOCKET_KINDS: dict[str, Callable[[], tuple[socket.socket, socket.socket]]] = {
    "socketpair": socket.socketpair,
    "tcp": tcp_pair,
}


@pytest.fixture(params=list(SOCKET_KINDS))
def sockets(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = SOCKET_KINDS[request.param]()
    yield a, b
    a.close()
    b.close()


def recv_exactly(sock: socket.socket, n: int, out: list[bytes]) -> None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(1 << 16, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    out.append(bytes(buf))


@pytest.mark.parametrize("method", [None, SENDFILE, READWRITE])
@pytest.mark.parametrize("offset, length", [(0, 0), (0, 1), (3, 4096), (0, 9 * MiB), (12345, 3 * MiB)])
@pytest.mark.parametrize("nonblocking", [False, True])
def test_send_file(shm_dir: Path, files: Files, sockets: tuple[socket.socket, socket.socket],
                   method: str | None, offset: int, length: int, nonblocking: bool) -> None:
    data = payload(offset + length + 10)
    fd = files.src(shm_dir / "f", data)
    sender, receiver = sockets
    if nonblocking:
        sender.settimeout(10)  # a Python socket with a timeout is O_NONBLOCK: EAGAIN on a full buffer
    got: list[bytes] = []
    reader = threading.Thread(target=recv_exactly, args=(receiver, length, got))
    reader.start()
    used = send_file(sender.fileno(), fd, offset, length, method=method, timeout=10)
    reader.join(10)
    assert used == (method or SENDFILE)
    assert got == [data[offset: offset + length]]


@pytest.mark.parametrize("method", [None, SENDFILE, READWRITE])
def test_send_file_short_file(shm_dir: Path, files: Files, sockets: tuple[socket.socket, socket.socket],
                              method: str | None) -> None:
    fd = files.src(shm_dir / "f", payload(1000))
    sender, receiver = sockets
    got: list[bytes] = []
    reader = threading.Thread(target=recv_exactly, args=(receiver, 1000, got))
    reader.start()
    with pytest.raises(SourceChanged) as info:
        send_file(sender.fileno(), fd, 0, 5000, method=method)
    sender.shutdown(socket.SHUT_WR)
    reader.join(10)
    assert info.value.got == 1000


def test_send_file_falls_back(shm_dir: Path, files: Files, sockets: tuple[socket.socket, socket.socket],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sendfile(*args: object) -> int:
        raise OSError(errno.EINVAL, "no sendfile here")

    monkeypatch.setattr(fastio.os, "sendfile", no_sendfile)
    data = payload(2 * MiB)
    fd = files.src(shm_dir / "f", data)
    sender, receiver = sockets
    got: list[bytes] = []
    reader = threading.Thread(target=recv_exactly, args=(receiver, len(data), got))
    reader.start()
    assert send_file(sender.fileno(), fd, 0, len(data)) == READWRITE
    reader.join(10)
    assert got == [data]


def test_send_file_timeout(shm_dir: Path, files: Files, sockets: tuple[socket.socket, socket.socket]) -> None:
    fd = files.src(shm_dir / "f", payload(64 * MiB))
    sender, _receiver = sockets  # nobody reads: the socket buffer fills up
    sender.setblocking(False)
    with pytest.raises(TimeoutError):
        send_file(sender.fileno(), fd, 0, 64 * MiB, timeout=0.2)


def send_in_thread(sock: socket.socket, data: bytes, close: bool = True) -> threading.Thread:
    def run() -> None:
        try:
            sock.sendall(data)
        finally:
            if close:
                sock.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=run)
    t.start()
    return t


@pytest.mark.parametrize("method", [None, SPLICE, READWRITE])
@pytest.mark.parametrize("length", [0, 100, fastio.SPLICE_MIN, 9 * MiB + 7])
@pytest.mark.parametrize("nonblocking", [False, True])
def test_splice_to_file(fs_dir: Path, files: Files, sockets: tuple[socket.socket, socket.socket],
                        method: str | None, length: int, nonblocking: bool) -> None:
    data = payload(length)
    sender, receiver = sockets
    if nonblocking:
        receiver.settimeout(10)
    dst = files.dst(fs_dir / "dst")
    os.write(dst, b"HEADER")  # writes go at the file position
    writer = send_in_thread(sender, data + b"NEXT MESSAGE", close=False)
    used = splice_to_file(receiver.fileno(), dst, length, method=method, timeout=10)
    writer.join(10)
    expected = method or (SPLICE if length >= fastio.SPLICE_MIN else READWRITE)
    assert used == expected
    assert (fs_dir / "dst").read_bytes() == b"HEADER" + data
    assert os.lseek(dst, 0, os.SEEK_CUR) == 6 + length
    # Not a byte more than asked for was taken from the socket.
    rest: list[bytes] = []
    recv_exactly(receiver, 12, rest)
    assert rest == [b"NEXT MESSAGE"]


@pytest.mark.parametrize("method", [None, SPLICE, READWRITE])
def test_splice_peer_closes_early(shm_dir: Path, files: Files, sockets: tuple[socket.socket, socket.socket],
                                  method: str | None) -> None:
    sender, receiver = sockets
    dst = files.dst(shm_dir / "dst")
    writer = send_in_thread(sender, payload(MiB))
    with pytest.raises(PeerClosed) as info:
        splice_to_file(receiver.fileno(), dst, 2 * MiB, method=method)
    writer.join(10)
    assert (info.value.expected, info.value.got) == (2 * MiB, MiB)
    assert isinstance(info.value, ConnectionError)


def test_splice_timeout(shm_dir: Path, files: Files, sockets: tuple[socket.socket, socket.socket]) -> None:
    _sender, receiver = sockets
    receiver.setblocking(False)
    dst = files.dst(shm_dir / "dst")
    with pytest.raises(TimeoutError):
        splice_to_file(receiver.fileno(), dst, MiB, timeout=0.2)


def test_splice_falls_back_for_append_only_file(shm_dir: Path, files: Files,
                                                sockets: tuple[socket.socket, socket.socket]) -> None:
    # splice(2) refuses O_APPEND files with EINVAL after the socket side already filled the pipe.
    data = payload(3 * MiB + 1)
    sender, receiver = sockets
    dst = files.dst(shm_dir / "dst", os.O_WRONLY | os.O_APPEND)
    writer = send_in_thread(sender, data)
    assert splice_to_file(receiver.fileno(), dst, len(data)) == READWRITE
    writer.join(10)
    assert (shm_dir / "dst").read_bytes() == data
