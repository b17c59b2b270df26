"""Unit tests for zcsync.fsscan: the C extension against the pure-Python fallback and os.lstat."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zcsync import fsscan

try:
    from zcsync import _fsscan
except ImportError:
    _fsscan = None

REPO = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0
native = pytest.mark.skipif(_fsscan is None, reason="zcsync._fsscan not built")
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root to drop to another uid")

# Both implementations where the extension is built, so semantic tests check each.
LIST_IMPLS = [pytest.param(fsscan.py_list_dir, id="py")]
STAT_IMPLS = [pytest.param(fsscan.py_stat_names, id="py")]
if _fsscan is not None:
    LIST_IMPLS.append(pytest.param(_fsscan.list_dir, id="c"))
    STAT_IMPLS.append(pytest.param(_fsscan.stat_names, id="c"))

ZERO = (0, 0, 0, 0, 0, 0, 0, 0)
S = 1_000_000_000
# Before 1970 with nanoseconds, 1870 (ext4 clamps it to 1901), before int64 ns (1653),
# the epoch, one ns, now-ish, past int64 ns (2381).
MTIMES = [-1_500_000_001, -3_155_760_000 * S + 7, -10_000_000_000 * S - 3, 0, 1,
          1_700_000_000_123_456_789, 13_000_000_000 * S + 999_999_999]
FILES = {b"empty": 0, b"small": 1, b"big": 70000, b"\xff\xfe-not-utf8": 3, b"caf\xc3\xa9": 4,
         b"new\nline": 5, b" lead space": 6, b"-dash": 7, b"x" * 255: 8}
LINKS = {b"link-file": b"small", b"link-dir": b"subdir", b"dangling": b"no-such",
         b"loop": b"loop", b"notdir": b"small/x", b"link-\x80": b"\xff\xfe-not-utf8"}
CHR_DEV = os.makedev(1, 3)


def build_varied(root: Path) -> dict[bytes, int]:
    """Fill root with one of every kind of entry; return each name's mtime_ns as set."""
    dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name, size in FILES.items():
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640, dir_fd=dfd)
            os.write(fd, b"z" * size)
            os.close(fd)
        os.mkdir(b"subdir", dir_fd=dfd)
        os.mkdir(b"subdir/inner", dir_fd=dfd)
        os.link(b"small", b"hard", src_dir_fd=dfd, dst_dir_fd=dfd)
        for name, target in LINKS.items():
            os.symlink(target, name, dir_fd=dfd)
        os.mkfifo(b"fifo", dir_fd=dfd)
        os.mknod(b"sock", 0o600 | stat.S_IFSOCK, dir_fd=dfd)
        try:
            os.mknod(b"chr-dev", 0o600 | stat.S_IFCHR, CHR_DEV, dir_fd=dfd)
        except PermissionError:
            pass
        mtimes = {}
        for i, name in enumerate(sorted(os.fsencode(n) for n in os.listdir(dfd))):
            mtimes[name] = MTIMES[i % len(MTIMES)]
            os.utime(name, ns=(5, mtimes[name]), dir_fd=dfd, follow_symlinks=False)
        mtimes[b"hard"] = mtimes[b"small"]  # one inode, and "small" sorts (so is set) last
        return mtimes
    finally:
        os.close(dfd)


def lstat_fields(dfd: int, name: bytes, follow: bool = False) -> tuple[int, ...]:
    st = os.stat(name, dir_fd=dfd, follow_symlinks=follow)
    return (st.st_mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid, st.st_ino,
            st.st_dev, st.st_nlink, st.st_rdev)


@contextlib.contextmanager
def shm_dir() -> Iterator[Path]:
    """An empty directory on tmpfs (fast to fill, keeps any timestamp)."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    root = Path(tempfile.mkdtemp(prefix="zcsync-test-", dir="/dev/shm"))
    try:
        yield root
    finally:
        shutil.rmtree(root)


@pytest.fixture
def shm() -> Iterator[Path]:
    with shm_dir() as root:
        yield root


@pytest.fixture(params=["tmp", "shm"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """An empty directory on the test filesystem (ext4 here) or on tmpfs."""
    if request.param == "tmp":
        yield tmp_path
    else:
        with shm_dir() as root:
            yield root


@pytest.fixture
def varied(where: Path) -> Iterator[tuple[int, dict[bytes, int], Path]]:
    mtimes = build_varied(where)
    dfd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield dfd, mtimes, where
    finally:
        os.close(dfd)


def advance_offset(dfd: int) -> None:
    """Move dfd's directory offset past the first entries, as a half-done readdir would."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fdopendir.restype = ctypes.c_void_p
    libc.fdopendir.argtypes = [ctypes.c_int]
    libc.readdir.restype = ctypes.c_void_p
    libc.readdir.argtypes = [ctypes.c_void_p]
    libc.closedir.argtypes = [ctypes.c_void_p]
    d = libc.fdopendir(os.dup(dfd))
    assert d, os.strerror(ctypes.get_errno())
    assert libc.readdir(d)
    libc.closedir(d)  # closes the dup only; the shared offset stays where getdents left it


# ---- list_dir ----------------------------------------------------------------------


def test_module_picks_native_when_built() -> None:
    assert fsscan.NATIVE is (_fsscan is not None)
    if _fsscan is not None:
        assert fsscan.list_dir is _fsscan.list_dir
        assert fsscan.stat_names is _fsscan.stat_names


def test_fallback_without_extension() -> None:
    code = ("import sys; sys.modules['zcsync._fsscan'] = None\n"
            "from zcsync import fsscan\n"
            "assert fsscan.NATIVE is False\n"
            "assert fsscan.list_dir is fsscan.py_list_dir\n"
            "assert fsscan.stat_names is fsscan.py_stat_names\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


@native
@pytest.mark.parametrize("follow", [False, True], ids=["lstat", "follow"])
def test_list_dir_native_equals_python(varied, follow: bool) -> None:
    dfd, _, _ = varied
    got = _fsscan.list_dir(dfd, follow)
    assert got == fsscan.py_list_dir(dfd, follow)  # same tuples, same (directory) order
    assert _fsscan.list_dir(dfd, follow_symlinks=follow) == got


@pytest.mark.parametrize("list_dir", LIST_IMPLS)
def test_list_dir_lstat_semantics(varied, list_dir: Callable) -> None:
    dfd, mtimes, root = varied
    entries = list_dir(dfd)
    by_name = {e[0]: e for e in entries}
    assert len(by_name) == len(entries)
    assert set(by_name) == {os.fsencode(n) for n in os.listdir(root)}
    assert b"." not in by_name and b".." not in by_name
    for name, e in by_name.items():
        assert type(name) is bytes
        assert e[1:] == lstat_fields(dfd, name), name
        assert e[3] == os.lstat(os.path.join(os.fsencode(root), name)).st_mtime_ns
    for name, size in FILES.items():
        assert stat.S_ISREG(by_name[name][1]) and by_name[name][2] == size
    for name in LINKS:
        assert stat.S_ISLNK(by_name[name][1]), name
        assert by_name[name][2] == len(LINKS[name])
    assert stat.S_ISDIR(by_name[b"subdir"][1])
    assert stat.S_ISFIFO(by_name[b"fifo"][1])
    assert stat.S_ISSOCK(by_name[b"sock"][1])
    assert by_name[b"hard"][6] == by_name[b"small"][6] and by_name[b"hard"][8] == 2
    if b"chr-dev" in by_name:
        assert stat.S_ISCHR(by_name[b"chr-dev"][1]) and by_name[b"chr-dev"][9] == CHR_DEV
    assert all(e[7] == os.fstat(dfd).st_dev for e in entries)
    assert all(e[4] == os.getuid() and e[5] == os.getgid() for e in entries)


@pytest.mark.parametrize("list_dir", LIST_IMPLS)
def test_list_dir_follow_semantics(varied, list_dir: Callable) -> None:
    dfd, _, _ = varied
    plain = {e[0]: e for e in list_dir(dfd)}
    follow = {e[0]: e for e in list_dir(dfd, True)}
    assert set(plain) == set(follow)
    assert follow[b"link-file"][1:] == plain[b"small"][1:]
    assert follow[b"link-\x80"][1:] == plain[b"\xff\xfe-not-utf8"][1:]
    assert follow[b"link-dir"][1:] == plain[b"subdir"][1:]
    # Errors are in the mode field; a dangling link is not "vanished" (0) but -ENOENT.
    assert follow[b"dangling"][1:] == (-errno.ENOENT, *ZERO)
    assert follow[b"loop"][1:] == (-errno.ELOOP, *ZERO)
    assert follow[b"notdir"][1:] == (-errno.ENOTDIR, *ZERO)
    for name, e in plain.items():
        if name not in LINKS:
            assert follow[name] == e


@pytest.mark.parametrize("list_dir", LIST_IMPLS)
def test_mtime_ns_exact(varied, list_dir: Callable) -> None:
    dfd, mtimes, root = varied
    kept = {n: m for n, m in mtimes.items()
            if os.lstat(os.path.join(os.fsencode(root), n)).st_mtime_ns == m}
    if str(root).startswith("/dev/shm/"):
        assert kept == mtimes  # tmpfs keeps any time_t with nanoseconds
    got = {e[0]: e[3] for e in list_dir(dfd)}
    assert {n: got[n] for n in kept} == kept
    assert max(kept.values()) > 2 ** 63 and -1_500_000_001 in kept.values()


@pytest.mark.parametrize("list_dir", LIST_IMPLS)
def test_list_dir_leaves_the_offset_alone(varied, list_dir: Callable) -> None:
    dfd, _, root = varied
    want = sorted(os.fsencode(n) for n in os.listdir(root))
    advance_offset(dfd)
    pos = os.lseek(dfd, 0, os.SEEK_CUR)
    assert pos != 0
    assert sorted(e[0] for e in list_dir(dfd)) == want
    assert os.lseek(dfd, 0, os.SEEK_CUR) == pos
    os.lseek(dfd, 0, os.SEEK_SET)
    assert sorted(e[0] for e in list_dir(dfd)) == want
    assert os.lseek(dfd, 0, os.SEEK_CUR) == 0


@pytest.mark.parametrize("list_dir", LIST_IMPLS)
def test_list_dir_takes_o_path_fd(varied, list_dir: Callable) -> None:
    dfd, _, root = varied
    pfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        assert list_dir(pfd) == list_dir(dfd)
    finally:
        os.close(pfd)


@native
def test_list_dir_threads_share_one_fd(shm: Path) -> None:
    for i in range(3000):
        (shm / f"f{i}").touch()
    dfd = os.open(shm, os.O_RDONLY | os.O_DIRECTORY)
    try:
        want = _fsscan.list_dir(dfd)
        bad: list[int] = []

        def worker() -> None:
            for _ in range(10):
                if _fsscan.list_dir(dfd) != want:
                    bad.append(1)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not bad
        assert len(want) == 3000
    finally:
        os.close(dfd)


@pytest.mark.parametrize("list_dir", LIST_IMPLS)
def test_list_dir_errors(tmp_path: Path, list_dir: Callable) -> None:
    (tmp_path / "file").write_bytes(b"x")
    fd = os.open(tmp_path / "file", os.O_RDONLY)
    try:
        with pytest.raises(NotADirectoryError):
            list_dir(fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as exc:
        list_dir(fd)  # closed now
    assert exc.value.errno == errno.EBADF
    with pytest.raises(TypeError):
        list_dir("not an fd")


@pytest.mark.parametrize("list_dir", LIST_IMPLS)
def test_list_dir_of_removed_directory(tmp_path: Path, list_dir: Callable) -> None:
    (tmp_path / "gone").mkdir()
    dfd = os.open(tmp_path / "gone", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(tmp_path / "gone")
        assert list_dir(dfd) == []
    finally:
        os.close(dfd)


def test_vanished_name_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "stays").write_bytes(b"1")
    (tmp_path / "victim").write_bytes(b"22")
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    real_listdir = os.listdir

    def listdir_then_unlink(path):
        names = real_listdir(path)
        os.unlink(b"victim", dir_fd=dfd)  # between readdir and stat
        return names

    monkeypatch.setattr(os, "listdir", listdir_then_unlink)
    try:
        got = {e[0]: e for e in fsscan.py_list_dir(dfd)}
    finally:
        monkeypatch.undo()
        os.close(dfd)
    assert got[b"victim"] == (b"victim", 0, *ZERO)
    assert stat.S_ISREG(got[b"stays"][1]) and got[b"stays"][2] == 1


@native
def test_vanished_names_native() -> None:
    """Another process unlinks files, in random order, while we list: vanished names read as 0."""
    deleter = ("import os, random, sys\n"
               "names = os.listdir('.'); random.Random(1).shuffle(names)\n"
               "sys.stdin.read(1)\n"
               "for n in names: os.unlink(n)\n")
    vanished = 0
    for _ in range(5):
        with shm_dir() as root:
            for i in range(20000):
                (root / f"f{i:05d}").touch()
            dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
            proc = subprocess.Popen([sys.executable, "-c", deleter], cwd=root, stdin=subprocess.PIPE)
            try:
                proc.stdin.write(b"go")
                proc.stdin.close()
                while proc.poll() is None:
                    for e in _fsscan.list_dir(dfd):
                        if e[1] == 0:
                            assert e[1:] == (0, *ZERO)
                            vanished += 1
                        else:
                            assert stat.S_ISREG(e[1]) and e[2] == 0 and e[8] in (0, 1)  # 0: unlinked mid-stat
                assert proc.wait() == 0
                assert _fsscan.list_dir(dfd) == []
            finally:
                proc.kill()
                proc.wait()
                os.close(dfd)
        if vanished:
            break
    assert vanished > 0


@needs_root
@pytest.mark.parametrize("list_dir", LIST_IMPLS)
def test_list_dir_without_search_permission(list_dir: Callable) -> None:
    """A directory we may read but not search: names are listed, every stat is -EACCES."""
    with shm_dir() as root:
        os.chmod(root, 0o711)
        (root / "d").mkdir()
        for name in ("a", "b"):
            (root / "d" / name).touch()
        os.chmod(root / "d", 0o744)
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: become nobody, list, report
            report = b"child failed"
            try:
                os.close(rfd)
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                dfd = os.open(root / "d", os.O_RDONLY | os.O_DIRECTORY)
                advance_offset(dfd)
                pos = os.lseek(dfd, 0, os.SEEK_CUR)
                got = sorted(list_dir(dfd))
                moved = os.lseek(dfd, 0, os.SEEK_CUR) != pos
                report = repr((got, pos, moved)).encode()
                if got == [(b"a", -errno.EACCES, *ZERO), (b"b", -errno.EACCES, *ZERO)] and pos and not moved:
                    report = b"ok"
            except BaseException as exc:
                report = repr(exc).encode()
            finally:
                os.write(wfd, report)
                os._exit(0)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            out = r.read()
        os.waitpid(pid, 0)
        assert out == b"ok"


def test_large_directory(where: Path) -> None:
    names = {f"n{i:05d}-{'é' if i % 7 == 0 else 'x'}".encode() for i in range(20000)}
    names |= {bytes([0x80 + i % 64]) + b"%05d" % i for i in range(0, 20000, 97)}
    dfd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=dfd))
        got = fsscan.list_dir(dfd)
        assert {e[0] for e in got} == names and len(got) == len(names)
        assert all(stat.S_ISREG(e[1]) and e[2] == 0 for e in got)
        if _fsscan is not None:
            assert got == fsscan.py_list_dir(dfd)
            some = random.Random(0).sample(sorted(names), 500)
            assert _fsscan.stat_names(dfd, some) == fsscan.py_stat_names(dfd, some)
    finally:
        os.close(dfd)


# ---- stat_names ----------------------------------------------------------------------

EXTRA_NAMES = [b"missing", b"small/x", b"", b"subdir/inner", b"loop/x", b"link-dir/inner",
               b"link-dir", b"dangling", b"dangling/x", b"subdir/../small"]


@native
def test_stat_names_native_equals_python(varied) -> None:
    dfd, _, root = varied
    names = sorted(os.fsencode(n) for n in os.listdir(root)) + EXTRA_NAMES
    got = _fsscan.stat_names(dfd, names)
    assert got == fsscan.py_stat_names(dfd, names)
    assert len(got) == len(names)


@pytest.mark.parametrize("stat_names", STAT_IMPLS)
def test_stat_names_semantics(varied, stat_names: Callable) -> None:
    dfd, _, root = varied
    names = sorted(os.fsencode(n) for n in os.listdir(root))
    assert stat_names(dfd, names) == [lstat_fields(dfd, n) for n in names]
    got = dict(zip(EXTRA_NAMES, stat_names(dfd, EXTRA_NAMES)))
    assert got[b"missing"] is None and got[b""] is None and got[b"dangling/x"] is None
    assert got[b"small/x"] == (-errno.ENOTDIR, *ZERO)
    assert got[b"loop/x"] == (-errno.ELOOP, *ZERO)
    assert got[b"subdir/inner"] == got[b"link-dir/inner"] == lstat_fields(dfd, b"subdir/inner")
    assert stat.S_ISLNK(got[b"link-dir"][0]) and stat.S_ISLNK(got[b"dangling"][0])
    assert got[b"subdir/../small"] == lstat_fields(dfd, b"small")


@pytest.mark.parametrize("stat_names", STAT_IMPLS)
def test_stat_names_arguments(tmp_path: Path, stat_names: Callable) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert stat_names(dfd, []) == []
        want = [lstat_fields(dfd, b"f"), None]
        assert stat_names(dfd, [b"f", b"g"]) == want
        assert stat_names(dfd, (b"f", b"g")) == want
        assert stat_names(dfd, iter([b"f", b"g"])) == want
        with pytest.raises(ValueError, match="embedded null character"):
            stat_names(dfd, [b"f", b"a\0b"])
        with pytest.raises(TypeError, match="names must be bytes, not str"):
            stat_names(dfd, [b"f", "f"])
        with pytest.raises(TypeError):
            stat_names(dfd, None)
    finally:
        os.close(dfd)
    # A bad dir_fd is a per-name error, like any other stat error.
    assert stat_names(dfd, [b"f"]) == [(-errno.EBADF, *ZERO)]
    assert stat_names(-1, [b"f"]) == [(-errno.EBADF, *ZERO)]


@native
def test_stat_names_list_mutated_by_another_thread(tmp_path: Path) -> None:
    """The names are copied first: a list changed while the GIL is released is harmless."""
    for i in range(200):
        (tmp_path / f"f{i}").touch()
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    names = [b"f%d" % i for i in range(200)] * 50
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            names[random.randrange(len(names))] = b"f%d" % random.randrange(200)

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(20):
            got = _fsscan.stat_names(dfd, names)
            assert len(got) == len(names) and all(g is not None for g in got)
    finally:
        stop.set()
        t.join()
        os.close(dfd)


def test_noatime_reads_fall_back_where_the_kernel_refuses_o_noatime(tmp_path):
    """O_NOATIME is EPERM for a file we do not own (without CAP_FOWNER): --open-noatime then
    reads it as usual, in C and in Python, instead of failing as unreadable."""
    if os.geteuid() != 0:
        pytest.skip("needs root to read as another user")
    top = Path(tempfile.mkdtemp(dir="/dev/shm"))  # a directory every user can search (tmp_path's parents are root's)
    top.chmod(0o755)
    path = top / "f"
    path.write_bytes(b"not ours\n")
    path.chmod(0o644)
    impls = [(fsscan.py_read_file, fsscan.py_digest_names)]
    if fsscan.NATIVE:
        impls.append((fsscan.read_file, fsscan.digest_names))
    dfd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    os.seteuid(65534)  # the file is root's: O_NOATIME is refused
    try:
        with pytest.raises(PermissionError) as refused:
            os.open(path, os.O_RDONLY | os.O_NOATIME)
        assert refused.value.errno == errno.EPERM
        for read_file, digest_names in impls:
            data, digest = read_file(os.fsencode(path), 9, False, True)
            assert data == b"not ours\n"
            assert digest_names(dfd, [b"f"], [9], True) == [digest]
        os.close(fsscan.open_read(os.fsencode(path), os.O_RDONLY, True))
    finally:
        os.seteuid(0)
        os.close(dfd)
        shutil.rmtree(top)
