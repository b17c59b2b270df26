"""zcsync._commit.commit_bytes: the commit protocol in one call, for files received whole in memory."""
from __future__ import annotations

import errno
import os

import pytest

_commit = pytest.importorskip("zcsync._commit")


@pytest.fixture(autouse=True, params=[True, False], ids=["unnamed", "named"])
def temp_kind(request):
    """Every test runs both ways a temp file can be made: unnamed (O_TMPFILE, linked in) and
    named from the start (the fallback where the kernel or filesystem refuses the first)."""
    was = _commit.unnamed(request.param)
    yield request.param
    _commit.unnamed(was)


@pytest.fixture
def dir_fd(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


@pytest.mark.parametrize("mtime_ns", [1_500_000_000_123_456_789, -1_000_000_001, 0])
def test_writes_sets_metadata_and_renames_into_place(tmp_path, dir_fd, mtime_ns):
    (tmp_path / "f").write_bytes(b"old")
    _commit.commit_bytes(dir_fd, b"f", b"new data", 0o640, os.geteuid(), os.getegid(), True, mtime_ns, True)
    st = (tmp_path / "f").stat()
    assert (tmp_path / "f").read_bytes() == b"new data"
    assert (st.st_mode & 0o7777, st.st_mtime_ns, st.st_atime_ns) == (0o640, mtime_ns, mtime_ns)
    assert os.listdir(tmp_path) == ["f"]  # no temp file left


@pytest.mark.parametrize("perms", [0o644, 0o755, 0o600, 0o666, 0o777, 0o4755, 0o2750, 0o1777, 0])
@pytest.mark.parametrize("umask", [-1, 0o022, 0o077, 0])
def test_permissions_whether_created_with_them_or_chmod_ed(tmp_path, dir_fd, perms, umask):
    """With the umask known, perms it keeps (and no set-id/sticky bits) are given at creation
    and no chmod follows; every other case is chmod-ed: either way the file ends as perms."""
    old = os.umask(umask if umask >= 0 else 0o022)
    try:
        _commit.commit_bytes(dir_fd, b"f", b"x", perms, os.geteuid(), os.getegid(), False, 0, False, umask)
        committer = _commit.Committer()
        committer.submit("t", dir_fd, b"g", b"y", perms, -1, -1, False, 0, False, umask)
        assert committer.close() == [("t", 0)]
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o7777 == perms
    assert (tmp_path / "g").stat().st_mode & 0o7777 == perms


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_owner_changed_only_where_it_differs(tmp_path, dir_fd):
    _commit.commit_bytes(dir_fd, b"mine", b"x", 0o4755, 0, 0, False, 0, False, 0o022)
    _commit.commit_bytes(dir_fd, b"theirs", b"x", 0o4755, 1234, 5678, False, 0, False, 0o022)
    mine, theirs = (tmp_path / "mine").stat(), (tmp_path / "theirs").stat()
    assert (mine.st_uid, mine.st_gid, mine.st_mode & 0o7777) == (0, 0, 0o4755)
    # chown before chmod: the set-uid bit survives the owner change
    assert (theirs.st_uid, theirs.st_gid, theirs.st_mode & 0o7777) == (1234, 5678, 0o4755)
    os.chmod(tmp_path, 0o2775)  # a set-gid directory: new files take its group, which differs
    os.chown(tmp_path, 0, 99)
    _commit.commit_bytes(dir_fd, b"group", b"x", 0o644, 0, 0, False, 0, False, 0o022)
    assert (tmp_path / "group").stat().st_gid == 0


def test_times_and_owner_can_be_left_alone(tmp_path, dir_fd):
    _commit.commit_bytes(dir_fd, b"g", b"", 0o600, -1, -1, False, 0, False)
    st = (tmp_path / "g").stat()
    assert st.st_size == 0 and st.st_mtime_ns > 10**18 and st.st_uid == os.geteuid()


def test_a_failure_leaves_nothing_and_names_the_file(tmp_path, dir_fd):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep").write_text("x")
    with pytest.raises(IsADirectoryError) as info:
        _commit.commit_bytes(dir_fd, b"d", b"data", 0o644, -1, -1, False, 0, False)
    assert info.value.filename == b"d"
    assert sorted(os.listdir(tmp_path)) == ["d"] and os.listdir(tmp_path / "d") == ["keep"]


@pytest.mark.parametrize("base", [b"", b"a/b", b"x" * 256, b"nul\0"])
def test_base_must_be_one_component(dir_fd, base):
    with pytest.raises(ValueError):
        _commit.commit_bytes(dir_fd, base, b"", 0o644, -1, -1, False, 0, False)


def test_a_symlink_in_place_is_replaced_not_followed(tmp_path, dir_fd):
    (tmp_path / "target").write_text("victim")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    _commit.commit_bytes(dir_fd, b"link", b"mine", 0o644, -1, -1, False, 0, False)
    assert not (tmp_path / "link").is_symlink() and (tmp_path / "link").read_bytes() == b"mine"
    assert (tmp_path / "target").read_text() == "victim"


def test_a_new_file_and_a_replacement_leave_only_their_names(tmp_path, dir_fd):
    _commit.commit_bytes(dir_fd, b"new", b"1", 0o644, -1, -1, False, 0, False)
    (tmp_path / "old").write_bytes(b"before")
    inode = (tmp_path / "old").stat().st_ino
    _commit.commit_bytes(dir_fd, b"old", b"after", 0o644, -1, -1, False, 0, False)
    assert sorted(os.listdir(tmp_path)) == ["new", "old"]
    assert (tmp_path / "old").read_bytes() == b"after" and (tmp_path / "old").stat().st_ino != inode
    assert (tmp_path / "new").stat().st_nlink == 1


def test_the_unnamed_path_is_used_where_the_kernel_allows_it(tmp_path, dir_fd, temp_kind):
    """O_TMPFILE and linkat(AT_EMPTY_PATH) work on this machine's tmpfs and ext4 as root, so
    the fast path must not silently switch itself off (it does so only on EPERM, ENOENT or EACCES)."""
    if not temp_kind:
        pytest.skip("the named path is the one under test")
    release = tuple(int(p) for p in os.uname().release.split(".")[:2] if p.isdigit())
    if os.geteuid() != 0 and release < (6, 10):
        pytest.skip("before Linux 6.10 only CAP_DAC_READ_SEARCH may link an unnamed file")
    _commit.commit_bytes(dir_fd, b"f", b"x", 0o644, -1, -1, False, 0, False)
    try:
        probe = os.open(tmp_path, os.O_RDWR | os.O_TMPFILE)
    except OSError as exc:
        pytest.skip(f"no O_TMPFILE on this filesystem: {exc.strerror}")
    os.close(probe)
    assert _commit.unnamed() is True


# -- Committer: the same commit on a thread that never takes the GIL --------------------

def test_committer_commits_every_file_and_hands_back_each_token(tmp_path, dir_fd):
    c = _commit.Committer(max_jobs=4, max_bytes=64)  # small bounds: submit() must wait for room
    want = {}
    for i in range(200):
        data = os.urandom(i % 50)
        want[f"f{i}"] = data
        c.submit(("token", i), dir_fd, b"f%d" % i, data, 0o604, -1, -1, True, 1_000_000_000 * i + 7, False)
    done = c.collect(True)
    assert sorted(done) == sorted((("token", i), 0) for i in range(200))
    assert c.collect() == []  # each result is handed back once
    for name, data in want.items():
        st = (tmp_path / name).stat()
        assert (tmp_path / name).read_bytes() == data
        assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o604, 1_000_000_000 * int(name[1:]) + 7)
    assert len(os.listdir(tmp_path)) == 200  # no temp file left
    assert c.close() == []


def test_committer_reports_a_failure_by_token_and_leaves_nothing(tmp_path, dir_fd):
    (tmp_path / "d").mkdir()
    c = _commit.Committer()
    c.submit("dir", dir_fd, b"d", b"data", 0o644, -1, -1, False, 0, False)
    c.submit("ok", dir_fd, b"e", b"data", 0o644, -1, -1, False, 0, False)
    assert sorted(c.collect(True)) == [("dir", errno.EISDIR), ("ok", 0)]
    assert sorted(os.listdir(tmp_path)) == ["d", "e"]
    c.close()


def test_committer_close_finishes_the_queue_and_refuses_more(tmp_path, dir_fd):
    c = _commit.Committer()
    for i in range(50):
        c.submit(i, dir_fd, b"f%d" % i, b"x" * 1000, 0o644, -1, -1, False, 0, False)
    done = c.close()
    assert sorted(t for t, _ in done) == list(range(50)) and all(e == 0 for _, e in done)
    assert len(os.listdir(tmp_path)) == 50
    with pytest.raises(RuntimeError):
        c.submit(99, dir_fd, b"late", b"", 0o644, -1, -1, False, 0, False)


@pytest.mark.parametrize("base", [b"", b"a/b", b"x" * 256, b"nul\0"])
def test_committer_checks_the_name_before_queueing(dir_fd, base):
    c = _commit.Committer()
    with pytest.raises(ValueError):
        c.submit(1, dir_fd, base, b"", 0o644, -1, -1, False, 0, False)
    assert c.close() == []
