"""zcsync.meta against rsync 3.5 on the same machine: --chmod, --chown, xattrs/ACLs, --list-only."""
from __future__ import annotations

import errno
import os
import pathlib
import shutil
import stat
import subprocess
import threading
import time

import pytest

from zcsync import meta
from zcsync.errors import UsageError
from zcsync.meta import ACL_ACCESS, ACL_DEFAULT, ChmodRules

RSYNC = shutil.which("rsync") or "/usr/bin/rsync"
IS_ROOT = os.geteuid() == 0
needs_rsync = pytest.mark.skipif(not os.path.exists(RSYNC), reason="rsync not installed")
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (trusted.* xattrs, mknod, mount)")
needs_acl_tools = pytest.mark.skipif(
    not (shutil.which("setfacl") and shutil.which("getfacl") and shutil.which("getfattr")),
    reason="attr/acl tools not installed")

# Starting modes: plain, executable, set-id, sticky, partly executable, none.
MODES = [0o644, 0o755, 0o700, 0o600, 0o000, 0o4755, 0o2755, 0o1777, 0o6644, 0o111,
         0o640, 0o604, 0o4644, 0o010]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


# rsync must read what it copies: without root, only modes the owner can read (and enter).
FILE_MODES = [m for m in MODES if IS_ROOT or m & 0o400]
DIR_MODES = [m for m in MODES if IS_ROOT or m & 0o500 == 0o500]


def _rsync_chmod(tmp: pathlib.Path, specs: list[str], umask: int) -> dict[str, int]:
    """Modes rsync -r --perms --chmod=... leaves on copies of files and dirs of MODES."""
    src = tmp / "src"
    src.mkdir()
    for m in FILE_MODES:
        (src / f"f{m:04o}").touch()
        os.chmod(src / f"f{m:04o}", m)
    for m in DIR_MODES:
        (src / f"d{m:04o}").mkdir()
        os.chmod(src / f"d{m:04o}", m)
    args = " ".join(f"'--chmod={s}'" for s in specs)
    # Name the entries, not src/: a chmod of dst itself would lock a non-root user out.
    res = _run(["sh", "-c", f"umask {umask:03o} && exec {RSYNC} -r --perms {args} src/* dst/"],
               cwd=tmp)
    assert res.returncode == 0, res.stderr
    return {p.name: stat.S_IMODE(os.lstat(p).st_mode) for p in (tmp / "dst").iterdir()}


def _as_rsync_leaves_dir(perms: int) -> int:
    """A non-root rsync receiver adds u+rwx to a directory so that it can fill it, and
    puts the mode back afterwards only when it lacked u+w (a receiver quirk, not --chmod)."""
    if not IS_ROOT and perms & 0o200:
        return perms | 0o700
    return perms


def _check(rules: ChmodRules, got: dict[str, int], what: object) -> None:
    for m in FILE_MODES:
        assert rules.apply(m, False) == got[f"f{m:04o}"], (what, "file", oct(m))
    for m in DIR_MODES:
        assert _as_rsync_leaves_dir(rules.apply(m, True)) == got[f"d{m:04o}"], (what, "dir", oct(m))


# ---------------------------------------------------------------------------- --chmod

CHMOD_SPECS = [
    "u+x", "g-w", "o=r", "a+rX", "+X", "a-x,a+X", "a+X,a-x", "Dg+s,ug+w,Fo-w,+X",
    "D2775,F664", "D755,F644", "644", "0", "07777", "000000644", "1", "F0644", "D0",
    "u=rwx", "u=rw", "a=", "=", "=r", "+w", "-w", "-r", "=rx", "+rwx",
    "u+s", "g+s", "o+s", "+s", "a+s", "ug+s", "a-s", "g-s", "-s", "u-st", "+t", "u=t",
    "o=t", "a=t", "a=s", "u=s", "o=s", "=s", "g=rws", "+ts", "+st", "u=rwxs",
    "a-X", "a=rX", "ug=rwX", "a=X", "+xX", "F+X", "D+t", "Da+x", "aD+x", "uDg+x", "+",
    "g=u", "o=g", "g-o", "g+u", "=u", "+u", "-u", "a=u", "ug=o", "go=u", "u=u",
    "g-g", "u=o", "=g", "-g", "u=g,o=u", "u+rx,g=u", "g=o,o=u", "g=o,o=", "u=X,g=u",
    "Dg=u", "Fo=g", "D=g", "aF-o", "g=u,D+X", "g+w,+X,o-r", "644,g+w",
]


@needs_rsync
@pytest.mark.parametrize("spec", CHMOD_SPECS)
def test_chmod_matches_rsync(tmp_path: pathlib.Path, spec: str) -> None:
    _check(ChmodRules.parse([spec], umask=0o022), _rsync_chmod(tmp_path, [spec], 0o022), spec)


@needs_rsync
@pytest.mark.parametrize("specs", [["u=rwx", "g=u", "o-rwx"], ["a-x", "a+X"], ["D2775", "F664,o+r"],
                                   ["g=o", "o=u"]])
def test_repeated_chmod_options_accumulate(tmp_path: pathlib.Path, specs: list[str]) -> None:
    _check(ChmodRules.parse(specs, umask=0o022), _rsync_chmod(tmp_path, specs, 0o022), specs)


@needs_rsync
@pytest.mark.parametrize("spec", ["+w", "=u", "-r", "+X", "=rw", "+u", "-u", "a+w", "+rwx", "-g"])
def test_chmod_umask_masks_items_without_who(tmp_path: pathlib.Path, spec: str) -> None:
    _check(ChmodRules.parse([spec], umask=0o027), _rsync_chmod(tmp_path, [spec], 0o027), spec)


BAD_SPECS = ["", "u", "X", "g=ur", "g=uo", "g=u+r", "g=uu", "g=us", "g=su", "g+ur", "g=a",
             "77777", "10000", "017777", "8", "u644", "+644", "644r", "64+", "755D", "a+x,",
             ",a+x", "a+x,,u+w", "DF+x", "FD+x", " a+x", "a+x ", "u+x-w", "u+x=r", "a=u=g",
             "a=ug", "u+q", "z+x"]
GOOD_SPECS = ["+", "g=", "DD+x", "D=g", "Fo=g", "0", "7777", "a+rwxXst"]


@needs_rsync
@pytest.mark.parametrize("spec", BAD_SPECS + GOOD_SPECS)
def test_chmod_syntax_accepted_like_rsync(tmp_path: pathlib.Path, spec: str) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").touch()
    res = _run([RSYNC, "-r", f"--chmod={spec}", "src/f", "dst/"], cwd=tmp_path)
    rsync_ok = res.returncode == 0
    assert rsync_ok == (spec in GOOD_SPECS), res.stderr
    if rsync_ok:
        ChmodRules.parse([spec])
    else:
        assert "Invalid argument passed to --chmod" in res.stderr
        with pytest.raises(UsageError, match="Invalid argument passed to --chmod"):
            ChmodRules.parse([spec])


def test_chmod_x_looks_at_the_original_mode() -> None:
    rules = ChmodRules.parse(["a-x,a+X"], umask=0o022)
    assert rules.apply(0o755, False) == 0o755  # chmod(1) would give 0644
    assert rules.apply(0o644, False) == 0o644
    assert rules.apply(0o600, True) == 0o711


def test_chmod_keeps_type_bits_and_parse_accepts_a_string() -> None:
    rules = ChmodRules.parse("go-rwx", umask=0o022)
    assert rules.apply(stat.S_IFREG | 0o4755, False) == stat.S_IFREG | 0o4700
    assert rules.apply(stat.S_IFDIR | 0o777, True) == stat.S_IFDIR | 0o700
    assert not ChmodRules.parse([])
    assert ChmodRules.parse(["u+x"])


def test_current_umask_reads_without_changing() -> None:
    old = os.umask(0o037)
    try:
        assert meta.current_umask() == 0o037
        assert meta.current_umask() == 0o037
        assert ChmodRules.parse(["+w"]).apply(0, False) == 0o200
    finally:
        os.umask(old)


# ---------------------------------------------------------------------------- --chown / owners

needs_nobody = pytest.mark.skipif(
    meta.uid_by_name("nobody") is None or meta.gid_by_name("nogroup") is None,
    reason="no user nobody / group nogroup here")


@needs_nobody
def test_parse_chown_forms() -> None:
    nobody = meta.uid_by_name("nobody")
    nogroup = meta.gid_by_name("nogroup")
    assert meta.parse_chown("nobody:nogroup") == (nobody, nogroup)
    assert meta.parse_chown("nobody") == (nobody, None)
    assert meta.parse_chown("nobody:") == (nobody, None)
    assert meta.parse_chown(":nogroup") == (None, nogroup)
    assert meta.parse_chown("1234:5678") == (1234, 5678)
    assert meta.parse_chown("0:0") == (0, 0)
    assert meta.parse_chown(":") == (None, None)
    assert meta.parse_chown("") == (None, None)
    assert meta.parse_chown("4294967294") == (4294967294, None)


@pytest.mark.parametrize("spec, fragment", [
    ("nosuchuser_zc", "Unknown user name: nosuchuser_zc"),
    (":nosuchgrp_zc", "Unknown group name: nosuchgrp_zc"),
    ("root:b:c", "Unknown group name: b:c"),  # only the first colon splits, as rsync
    ("12x", "Unknown user name: 12x"),
    ("-1", "Unknown user name: -1"),
    ("4294967296", "Invalid ID number: 4294967296"),
    ("4294967295", "Invalid ID number: 4294967295"),  # (uid_t)-1 means "no change"
])
def test_parse_chown_errors(spec: str, fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        meta.parse_chown(spec)
    assert fragment in str(info.value)
    assert info.value.exit_code == 1


@needs_rsync
@needs_root
@needs_nobody
def test_parse_chown_matches_rsync(tmp_path: pathlib.Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").touch()
    for spec in ["nobody:nogroup", "1234:5678", "nobody:", ":nogroup", "1234"]:
        shutil.rmtree(tmp_path / "dst", ignore_errors=True)
        res = _run([RSYNC, "-r", f"--chown={spec}", "src/", "dst/"], cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        st = os.lstat(tmp_path / "dst" / "f")
        uid, gid = meta.parse_chown(spec)
        assert (st.st_uid, st.st_gid) == (0 if uid is None else uid, 0 if gid is None else gid)


def test_owner_lookups() -> None:
    assert meta.uid_name(0) == "root"
    assert meta.gid_name(0) == "root"
    assert meta.uid_by_name("root") == 0
    assert meta.gid_by_name("root") == 0
    assert meta.uid_name(3_999_999_999) is None
    assert meta.gid_name(3_999_999_999) is None
    assert meta.uid_by_name("no_such_user_zc") is None
    assert meta.gid_by_name("no_such_group_zc") is None
    assert meta.uid_by_name("bad\0name") is None
    before = meta.uid_name.cache_info().hits
    meta.uid_name(0)
    assert meta.uid_name.cache_info().hits == before + 1


def test_owner_lookups_from_threads() -> None:
    results: list[tuple] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(200):
            got = (meta.uid_name(0), meta.gid_name(0), meta.uid_by_name("root"),
                   meta.gid_by_name("nogroup"), meta.uid_name(65534))
            with lock:
                results.append(got)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 1600


# ---------------------------------------------------------------------------- xattrs / ACLs

def _xattrs_supported(path: pathlib.Path) -> bool:
    probe = path / ".xattr-probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


@pytest.fixture
def xdir(tmp_path: pathlib.Path) -> pathlib.Path:
    if not _xattrs_supported(tmp_path):
        pytest.skip("tmp_path's filesystem has no user xattrs")
    return tmp_path


def _sh(*cmd: str) -> str:
    res = _run(list(cmd))
    assert res.returncode == 0, (cmd, res.stderr)
    return res.stdout


def _dfd(path: pathlib.Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def _getfattr(path: pathlib.Path) -> list[str]:
    out = _sh("getfattr", "--absolute-names", "-h", "-d", "-m", "-", "-e", "hex", str(path))
    return sorted(line for line in out.splitlines() if line and not line.startswith("# file:"))


def _getfacl(path: pathlib.Path) -> list[str]:
    out = _sh("getfacl", "--absolute-names", "-p", str(path))
    return [line for line in out.splitlines() if line and not line.startswith("# file:")]


@needs_acl_tools
@needs_nobody
def test_user_xattrs_and_acls_round_trip(xdir: pathlib.Path) -> None:
    src, dst = xdir / "src", xdir / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "f").write_bytes(b"data")
    (dst / "f").write_bytes(b"data")
    os.setxattr(src / "f", "user.plain", b"value")
    os.setxattr(src / "f", "user.binary", b"\0\xff\n")
    os.setxattr(src / "f", "user.empty", b"")
    _sh("setfacl", "-m", "u:nobody:rwx,g:nogroup:r", str(src / "f"))
    (src / "d").mkdir()
    (dst / "d").mkdir()
    _sh("setfacl", "-d", "-m", "u:nobody:rx", str(src / "d"))
    _sh("setfacl", "-m", "g:nogroup:rwx", str(src / "d"))
    os.setxattr(src / "d", "user.dir", b"1")
    # Leftovers the copy has to remove.
    os.setxattr(dst / "f", "user.extra", b"x")
    _sh("setfacl", "-m", "u:daemon:r", str(dst / "f"))
    _sh("setfacl", "-d", "-m", "u:daemon:r", str(dst / "d"))

    sfd, dfd = _dfd(src), _dfd(dst)
    try:
        for name in (b"f", b"d"):
            got = meta.read_xattrs((sfd, name), xattrs=True, acls=True)
            assert ACL_ACCESS in got
            assert (ACL_DEFAULT in got) == (name == b"d")
            os.chmod(dst / os.fsdecode(name), os.lstat(src / os.fsdecode(name)).st_mode & 0o7777)
            assert meta.apply_xattrs((dfd, name), got, xattrs=True, acls=True) is True
            assert meta.apply_xattrs((dfd, name), got, xattrs=True, acls=True) is False
            assert meta.read_xattrs((dfd, name), xattrs=True, acls=True) == got
    finally:
        os.close(sfd)
        os.close(dfd)
    for name in ("f", "d"):
        assert _getfattr(dst / name) == _getfattr(src / name)
        assert _getfacl(dst / name) == _getfacl(src / name)
    assert "user:nobody:rwx" in _getfacl(dst / "f")
    assert "default:user:nobody:r-x" in _getfacl(dst / "d")


def test_fd_and_dirfd_forms_agree(xdir: pathlib.Path) -> None:
    f = xdir / "f"
    f.write_bytes(b"")
    os.setxattr(f, "user.a", b"1")
    fd = os.open(f, os.O_RDONLY | os.O_NOFOLLOW)
    pfd = os.open(f, os.O_PATH | os.O_NOFOLLOW)
    dfd = _dfd(xdir)
    try:
        by_name = meta.read_xattrs((dfd, b"f"), xattrs=True, acls=False)
        assert by_name[b"user.a"] == b"1"
        assert meta.read_xattrs(fd, xattrs=True, acls=False) == by_name
        assert meta.read_xattrs(pfd, xattrs=True, acls=False) == by_name
        assert meta.apply_xattrs(fd, {b"user.b": b"2"}, xattrs=True, acls=False) is True
        assert meta.read_xattrs(pfd, xattrs=True, acls=False) == {b"user.b": b"2"}
        assert meta.apply_xattrs(pfd, {b"user.c": b"3"}, xattrs=True, acls=False) is True
        assert meta.read_xattrs(fd, xattrs=True, acls=False) == {b"user.c": b"3"}
    finally:
        for x in (fd, pfd, dfd):
            os.close(x)


def test_names_with_odd_bytes(xdir: pathlib.Path) -> None:
    name = b"odd \xff\n name"
    path = os.path.join(os.fsencode(xdir), name)
    with open(path, "wb"):
        pass
    dfd = _dfd(xdir)
    try:
        assert meta.apply_xattrs((dfd, name), {b"user.k": b"v"}, xattrs=True, acls=False)
        assert os.getxattr(path, b"user.k") == b"v"
        assert meta.read_xattrs((dfd, name), xattrs=True, acls=False) == {b"user.k": b"v"}
        for bad in (b"a/b", b"", b"a\0b"):
            with pytest.raises(ValueError):
                meta.read_xattrs((dfd, bad), xattrs=True, acls=False)
    finally:
        os.close(dfd)


def test_does_not_follow_symlinks(xdir: pathlib.Path) -> None:
    (xdir / "target").write_bytes(b"")
    os.setxattr(xdir / "target", "user.t", b"1")
    os.symlink("target", xdir / "link")
    dfd = _dfd(xdir)
    try:
        assert meta.read_xattrs((dfd, b"link"), xattrs=True, acls=True, user_only=True) == {}
        # user.* cannot live on a symlink: skipped, not an error, target untouched.
        assert meta.apply_xattrs((dfd, b"link"), {b"user.x": b"1"}, xattrs=True, acls=True,
                                 user_only=True) is False
        assert os.listxattr(xdir / "target") == ["user.t"]
    finally:
        os.close(dfd)


@needs_root
def test_symlink_trusted_xattrs(xdir: pathlib.Path) -> None:
    os.symlink("nowhere", xdir / "link")
    dfd = _dfd(xdir)
    lfd = os.open(xdir / "link", os.O_PATH | os.O_NOFOLLOW)
    try:
        wanted = {b"user.skip": b"u", b"trusted.keep": b"t", ACL_ACCESS: b"\2\0\0\0"}
        assert meta.apply_xattrs((dfd, b"link"), wanted, xattrs=True, acls=True) is True
        assert meta.read_xattrs((dfd, b"link"), xattrs=True, acls=True) == {b"trusted.keep": b"t"}
        assert meta.read_xattrs(lfd, xattrs=True, acls=True) == {b"trusted.keep": b"t"}
        assert meta.apply_xattrs(lfd, {}, xattrs=True, acls=True) is True
        assert meta.read_xattrs((dfd, b"link"), xattrs=True, acls=True) == {}
    finally:
        os.close(dfd)
        os.close(lfd)


@needs_root
@needs_acl_tools
def test_namespaces_managed(xdir: pathlib.Path) -> None:
    f = xdir / "f"
    f.write_bytes(b"")
    os.setxattr(f, "user.u", b"1")
    os.setxattr(f, "trusted.t", b"2")
    os.setxattr(f, "user.rsync.%stat", b"100644 0,0 0:0")
    os.setxattr(f, "user.rsync.plain", b"3")
    _sh("setfacl", "-m", "u:nobody:r", str(f))
    dfd = _dfd(xdir)
    try:
        everything = meta.read_xattrs((dfd, b"f"), xattrs=True, acls=True)
        assert set(everything) == {b"user.u", b"trusted.t", b"user.rsync.plain", ACL_ACCESS}
        assert set(meta.read_xattrs((dfd, b"f"), xattrs=True, acls=False)) == {
            b"user.u", b"trusted.t", b"user.rsync.plain"}
        assert set(meta.read_xattrs((dfd, b"f"), xattrs=False, acls=True)) == {ACL_ACCESS}
        assert set(meta.read_xattrs((dfd, b"f"), xattrs=True, acls=False, user_only=True)) == {
            b"user.u", b"user.rsync.plain"}
        assert meta.read_xattrs((dfd, b"f"), xattrs=False, acls=False) == {}

        # acls only: user/trusted are left alone; the ACL goes.
        assert meta.apply_xattrs((dfd, b"f"), {}, xattrs=False, acls=True) is True
        assert sorted(os.listxattr(f)) == sorted(
            ["user.u", "trusted.t", "user.rsync.%stat", "user.rsync.plain"])
        # user_only: trusted.* is not ours to remove (nor to set).
        assert meta.apply_xattrs((dfd, b"f"), {b"trusted.new": b"n"}, xattrs=True, acls=False,
                                 user_only=True) is True
        assert sorted(os.listxattr(f)) == ["trusted.t"]
        # A default ACL on a file is dropped, not an error.
        assert meta.apply_xattrs((dfd, b"f"), {ACL_DEFAULT: b"\2\0\0\0"}, xattrs=False,
                                 acls=True) is False
    finally:
        os.close(dfd)


def test_apply_continues_and_raises_first_error(xdir: pathlib.Path) -> None:
    f = xdir / "f"
    f.write_bytes(b"")
    fd = os.open(f, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as info:
            meta.apply_xattrs(fd, {b"user.ok": b"1", ACL_ACCESS: b"not an acl"},
                              xattrs=True, acls=True)
        assert info.value.errno in (errno.EINVAL, errno.EOPNOTSUPP)  # the kernel says EOPNOTSUPP
        assert "system.posix_acl_access" in str(info.value)
        assert os.getxattr(f, "user.ok") == b"1"
    finally:
        os.close(fd)


def test_enotsup_reads_empty_and_write_raises(tmp_path: pathlib.Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f").write_bytes(b"")
    fd = os.open(tmp_path / "f", os.O_RDONLY)

    def nope(*args, **kwargs):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "listxattr", nope)
    try:
        assert meta.read_xattrs(fd, xattrs=True, acls=True) == {}
        assert meta.apply_xattrs(fd, {}, xattrs=True, acls=True) is False
        with pytest.raises(OSError) as info:
            meta.apply_xattrs(fd, {b"user.a": b"1"}, xattrs=True, acls=True)
        assert info.value.errno == errno.EOPNOTSUPP
    finally:
        os.close(fd)


@needs_root
def test_filesystem_without_xattrs(tmp_path: pathlib.Path) -> None:
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    if _run(["mount", "-t", "ramfs", "none", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount ramfs here")
    try:
        (mnt / "f").write_bytes(b"")
        dfd = _dfd(mnt)
        try:
            assert meta.read_xattrs((dfd, b"f"), xattrs=True, acls=True) == {}
            assert meta.apply_xattrs((dfd, b"f"), {}, xattrs=True, acls=True) is False
            with pytest.raises(OSError) as info:
                meta.apply_xattrs((dfd, b"f"), {b"user.a": b"1"}, xattrs=True, acls=True)
            assert info.value.errno in (errno.ENOTSUP, errno.EOPNOTSUPP)
        finally:
            os.close(dfd)
    finally:
        _run(["umount", str(mnt)])


def _walk(root: pathlib.Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(dirnames + filenames):
            out.append(os.path.relpath(os.path.join(dirpath, n), root))
    return out


def _copy_xattrs_like_zcsync(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Apply read_xattrs(src entry) to each dst entry, then the mode, as the writer will."""
    for rel in ["."] + _walk(src):
        parent, name = os.path.split(os.path.normpath(os.path.join(src, rel)))
        dparent, dname = os.path.split(os.path.normpath(os.path.join(dst, rel)))
        sfd, dfd = _dfd(pathlib.Path(parent)), _dfd(pathlib.Path(dparent))
        try:
            wanted = meta.read_xattrs((sfd, os.fsencode(name)), xattrs=True, acls=True)
            meta.apply_xattrs((dfd, os.fsencode(dname)), wanted, xattrs=True, acls=True)
            # The writer sets the mode after the ACL (removing an ACL leaves its mask in
            # the group bits until then).
            st = os.lstat(os.path.join(parent, name))
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(dname, stat.S_IMODE(st.st_mode), dir_fd=dfd)
        finally:
            os.close(sfd)
            os.close(dfd)


@needs_rsync
@needs_root
@needs_acl_tools
@needs_nobody
def test_xattrs_and_acls_match_rsync_aAX(xdir: pathlib.Path) -> None:
    src = xdir / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a").write_bytes(b"aaa")
    (src / "sub" / "b").write_bytes(b"bbb")
    (src / "sub" / "deeper" / "c").write_bytes(b"")
    (src / "plain").write_bytes(b"p")
    os.symlink("a", src / "lnk")
    os.setxattr(src / "a", "user.one", b"1")
    os.setxattr(src / "a", "user.rsync.%stat", b"100644 0,0 0:0")
    os.setxattr(src / "a", "trusted.two", b"\0\1\2")
    os.setxattr(src / "sub" / "b", "user.long", b"x" * 2000)
    os.setxattr(src / "sub", "user.dir", b"d")
    os.setxattr(src, "user.root", b"r")
    os.setxattr(src / "lnk", "trusted.link", b"l", follow_symlinks=False)
    _sh("setfacl", "-m", "u:nobody:rwx,g:nogroup:r-x", str(src / "a"))
    _sh("setfacl", "-m", "u:daemon:r", str(src / "sub" / "b"))
    _sh("setfacl", "-d", "-m", "u:nobody:rwx,o::-", str(src / "sub"))
    _sh("setfacl", "-d", "-m", "g:nogroup:rx", str(src / "sub" / "deeper"))

    # Same starting destinations for both, with leftovers to remove.
    for d in ("r", "z"):
        _sh(RSYNC, "-a", f"{src}/", f"{xdir / d}/")
        os.setxattr(xdir / d / "plain", "user.stale", b"s")
        os.setxattr(xdir / d / "plain", "trusted.stale", b"s")
        os.setxattr(xdir / d / "lnk", "trusted.stale", b"s", follow_symlinks=False)
        _sh("setfacl", "-m", "u:daemon:rwx", str(xdir / d / "sub" / "deeper" / "c"))
        os.setxattr(xdir / d, "user.stale_root", b"s")
    res = _run([RSYNC, "-aAX", f"{src}/", f"{xdir / 'r'}/"])
    assert res.returncode == 0, res.stderr
    _copy_xattrs_like_zcsync(src, xdir / "z")

    entries = _walk(xdir / "r")
    assert entries == _walk(xdir / "z") == _walk(src)
    for rel in ["."] + entries:
        r, z = xdir / "r" / rel, xdir / "z" / rel
        assert _getfattr(z) == _getfattr(r), rel
        if not os.path.islink(r):
            assert _getfacl(z) == _getfacl(r), rel
    assert "trusted.link" in " ".join(_getfattr(xdir / "z" / "lnk"))
    assert not any("stale" in line for line in _getfattr(xdir / "z" / "plain"))
    assert any("user.root" in line for line in _getfattr(xdir / "z"))


def test_dev_shm_supports_xattrs_and_acls() -> None:
    """Records what /dev/shm (tmpfs) does here: user.* and ACLs work (kernels before 6.6
    refuse user.* on tmpfs)."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    path = f"/dev/shm/zcsync-meta-{os.getpid()}"
    with open(path, "wb"):
        pass
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                meta.apply_xattrs(fd, {b"user.a": b"1"}, xattrs=True, acls=False)
            except OSError as exc:
                assert exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP)
                pytest.skip("tmpfs here has no user xattrs")
            assert meta.read_xattrs(fd, xattrs=True, acls=False) == {b"user.a": b"1"}
            if shutil.which("setfacl") and _run(["setfacl", "-m", "u:0:r", path]).returncode == 0:
                assert ACL_ACCESS in meta.read_xattrs(fd, xattrs=False, acls=True)
        finally:
            os.close(fd)
    finally:
        os.unlink(path)


# ---------------------------------------------------------------------------- --list-only

@pytest.mark.parametrize("mode, text", [
    (stat.S_IFREG | 0o644, "-rw-r--r--"),
    (stat.S_IFDIR | 0o755, "drwxr-xr-x"),
    (stat.S_IFLNK | 0o777, "lrwxrwxrwx"),
    (stat.S_IFREG | 0o4755, "-rwsr-xr-x"),
    (stat.S_IFREG | 0o4644, "-rwSr--r--"),
    (stat.S_IFREG | 0o2755, "-rwxr-sr-x"),
    (stat.S_IFREG | 0o2644, "-rw-r-Sr--"),
    (stat.S_IFDIR | 0o1777, "drwxrwxrwt"),
    (stat.S_IFDIR | 0o1770, "drwxrwx--T"),
    (stat.S_IFREG | 0o7000, "---S--S--T"),
    (stat.S_IFCHR | 0o620, "crw--w----"),
    (stat.S_IFBLK | 0o660, "brw-rw----"),
    (stat.S_IFIFO | 0o644, "prw-r--r--"),
    (stat.S_IFSOCK | 0o755, "srwxr-xr-x"),
    (0o644, "-rw-r--r--"),
])
def test_mode_to_str(mode: int, text: str) -> None:
    assert meta.mode_to_str(mode) == text


@pytest.mark.parametrize("num, human, text", [
    (0, 1, "0"), (999, 1, "999"), (1234, 1, "1,234"), (123456789012, 1, "123,456,789,012"),
    (1234, 0, "1234"), (999, 2, "999"), (1000, 2, "1.00K"), (4096, 2, "4.10K"),
    (999999, 2, "1000.00K"), (1000, 3, "1,000"), (1024, 3, "1.00K"), (123456789012, 3, "114.98G"),
])
def test_human_num(num: int, human: int, text: str) -> None:
    assert meta.human_num(num, human) == text


def _listing_tree(root: pathlib.Path) -> None:
    root.mkdir()
    sizes = [0, 1, 999, 1000, 1023, 1024, 1536, 9999, 99999, 999999, 1000000, 1048576,
             1073741824, 123456789012]
    for i, size in enumerate(sizes):
        p = root / f"s{size}"
        with open(p, "wb") as f:
            f.truncate(size)
        os.utime(p, (0, 1_700_000_000 + i * 86_399))
    (root / "sub").mkdir()
    os.chmod(root / "sub", 0o1777)
    os.chmod(root / "s1", 0o4755)
    os.chmod(root / "s999", 0o2644)
    os.chmod(root / "s0", 0o4644)
    (root / "old").write_bytes(b"x")
    os.utime(root / "old", (0, 0))
    (root / "neg").write_bytes(b"x")
    os.utime(root / "neg", (0, -1))
    (root / "past").write_bytes(b"x")
    os.utime(root / "past", (0, 1_704_164_645))  # 2024-01-02 03:04:05 UTC
    os.symlink("s1", root / "lnk")
    os.symlink("a target with spaces -> x", root / "lnk2")
    os.mkfifo(root / "fifo")
    os.utime(root / "sub", (0, 1_600_000_000))
    if IS_ROOT:
        os.mknod(root / "cdev", stat.S_IFCHR | 0o640, os.makedev(1, 3))
        os.mknod(root / "bdev", stat.S_IFBLK | 0o600, os.makedev(7, 0))
        for n in ("cdev", "bdev"):
            os.utime(root / n, (0, 1_650_000_000), follow_symlinks=False)
    os.utime(root, (0, 1_690_000_000))


def _our_listing(root: pathlib.Path, human: int, links: bool) -> list[str]:
    lines = []
    for name in ["."] + sorted(os.listdir(root), key=os.fsencode):
        st = os.lstat(root / name)
        kind = stat.S_IFMT(st.st_mode)
        size = st.st_size if kind in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK) else 0
        target = os.readlink(root / name) if links and kind == stat.S_IFLNK else None
        lines.append(meta.list_line(st.st_mode, size, int(st.st_mtime), name,
                                    link_target_escaped=target, human=human))
    return lines


def _rsync_listing(root: pathlib.Path, *args: str) -> list[str]:
    res = _run([RSYNC, "--list-only", *args, f"{root}/"])
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()


@needs_rsync
@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kolkata"])
@pytest.mark.parametrize("args, human, links", [
    ((), 1, False), (("-a",), 1, True), (("--no-h",), 0, False), (("-h",), 2, False),
    (("-hh", "-l"), 3, True),
])
def test_list_line_matches_rsync(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                 tz: str, args: tuple[str, ...], human: int, links: bool) -> None:
    root = tmp_path / "tree"
    _listing_tree(root)
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        theirs = _rsync_listing(root, *args)
        ours = _our_listing(root, human, links)
    finally:
        monkeypatch.undo()
        time.tzset()
    # rsync sorts by its own name order; compare as sets of lines, then check a few exactly.
    assert sorted(theirs) == sorted(ours)
    assert len(theirs) == len(ours)


def test_list_line_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        assert (meta.list_line(stat.S_IFREG | 0o644, 1234, 1_704_164_645, "name")
                == "-rw-r--r--          1,234 2024/01/02 03:04:05 name")
        assert (meta.list_line(stat.S_IFLNK | 0o777, 2, 0, "l", link_target_escaped="f1")
                == "lrwxrwxrwx              2 1970/01/01 00:00:00 l -> f1")
        assert (meta.list_line(stat.S_IFDIR | 0o755, 4096, 0, "d", human=0)
                == "drwxr-xr-x        4096 1970/01/01 00:00:00 d")
        assert meta.list_line(0o644, 123456789012, 0, "big").startswith(
            "-rw-r--r-- 123,456,789,012 ")
    finally:
        monkeypatch.undo()
        time.tzset()


# --------------------------------------------------------------------------- --fake-super

@pytest.mark.parametrize(("value", "want"), [
    (b"100644 0,0 1234:5678", meta.FakeStat(0o100644, 0, 1234, 5678)),
    (b"20620 4,0 0:5", meta.FakeStat(0o20620, os.makedev(4, 0), 0, 5)),
    (b"60640 259,65536 7:8", meta.FakeStat(0o60640, os.makedev(259, 65536), 7, 8)),
    (b"  42770 0,0 1:2 and more", meta.FakeStat(0o42770, 0, 1, 2)),  # sscanf's leniency
])
def test_fake_stat_values_as_rsync_writes_them(value, want):
    assert meta.FakeStat.decode(value) == want
    assert meta.FakeStat.decode(want.encode()) == want
    assert want.encode() == b" ".join(value.split()[:3])


@pytest.mark.parametrize("value", [b"", b"rubbish", b"644 0,0 0:0", b"100644 0 0:0", b"100644 0,0 0",
                                   b"9100644 0,0 0:0", b"100644 0,0 4294967295:0"])
def test_corrupt_fake_stat_values(value):
    with pytest.raises(ValueError):
        meta.FakeStat.decode(value)


def test_write_fake_stat_records_only_what_differs(xdir: pathlib.Path) -> None:
    """rsync's set_stat_xattr: a record where the file is not what it stands for, none where it is."""
    path = xdir / "f"
    path.write_bytes(b"")
    os.chmod(path, 0o644)
    st = os.stat(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        same = meta.FakeStat(stat.S_IFREG | 0o644, 0, st.st_uid, st.st_gid)
        meta.write_fake_stat(fd, same)
        assert meta.read_fake_stat(fd) is None
        device = meta.FakeStat(stat.S_IFCHR | 0o600, os.makedev(1, 3), 0, 0)
        meta.write_fake_stat(fd, device)
        assert os.getxattr(path, meta.FAKE_STAT) == b"20600 1,3 0:0"
        dfd = _dfd(xdir)
        try:
            assert meta.read_fake_stat((dfd, b"f")) == device
        finally:
            os.close(dfd)
        meta.write_fake_stat(fd, same)  # matches again: the record goes
        assert meta.read_fake_stat(fd) is None
        os.setxattr(path, meta.FAKE_STAT, b"rubbish")
        with pytest.raises(ValueError):
            meta.read_fake_stat(fd)
        meta.write_fake_stat(fd, device)  # a corrupt record is replaced
        assert meta.read_fake_stat(fd) == device
    finally:
        os.close(fd)


@needs_root
def test_fake_super_xattrs_keep_other_namespaces_under_user_rsync(xdir: pathlib.Path) -> None:
    """As rsync's --fake-super receiver: trusted.* goes under user.rsync.trusted.*, the %stat
    record stays, and a fake-super reader gives the names back as they were sent."""
    path = xdir / "f"
    path.write_bytes(b"")
    os.setxattr(path, meta.FAKE_STAT, b"100600 0,0 5:5")
    fd = os.open(path, os.O_RDONLY)
    try:
        wanted = {b"user.a": b"1", b"trusted.t": b"2"}
        assert meta.apply_xattrs(fd, wanted, xattrs=True, acls=False, fake_super=True)
        names = sorted(os.fsencode(n) for n in os.listxattr(path))
        assert names == [b"user.a", b"user.rsync.%stat", b"user.rsync.trusted.t"]
        assert meta.read_xattrs(fd, xattrs=True, acls=False, user_only=True, fake_super=True) == wanted
        assert meta.read_xattrs(fd, xattrs=True, acls=False, user_only=True) == {
            b"user.a": b"1", b"user.rsync.trusted.t": b"2"}
        assert not meta.apply_xattrs(fd, wanted, xattrs=True, acls=False, fake_super=True)
    finally:
        os.close(fd)
