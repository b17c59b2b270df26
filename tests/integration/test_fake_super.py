"""--fake-super against rsync: owners, special modes, devices, fifos and symlinks kept in the
user.rsync.%stat xattr of plain files, and restored from it; locally and over ssh (-M).

The trees are made by treegen (owners other than root, a fifo, devices), plus a set-uid
file, a set-gid directory and a symlink owned by someone else; rsync and zcsync run on
identical copies and their destinations are compared with every xattr, %stat included.
"""
from __future__ import annotations

import errno
import os
import stat
import subprocess

import pytest

from tests.oracle import differential, output_lines, run_rsync, run_zcsync

from .sshd import direction_paths, remote_zcsync_path

XSTAT = b"user.rsync.%stat"


@pytest.fixture(autouse=True)
def _user_xattrs(tmp_path):
    """The tests need root (owners, mknod) and user.* xattrs where tmp_path is."""
    if os.geteuid() != 0:
        pytest.skip("needs root: other owners and device nodes in the source")
    probe = tmp_path / "xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, b"user.probe", b"1")
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip(f"no user xattrs on {tmp_path}")
        raise
    finally:
        probe.unlink()


TREE = {"devices": True, "fifo": True, "owners": True}
SAME = {"xattrs": True}


def _privileged(src, dst) -> None:
    """What only root can make: set-id bits under other owners, a symlink of someone else's."""
    (src / "setuid").write_bytes(b"suid\n")
    os.chown(src / "setuid", 4321, 8765)
    os.chmod(src / "setuid", 0o4755)
    (src / "sgid-dir").mkdir()
    (src / "sgid-dir" / "inner").write_bytes(b"x")
    os.chown(src / "sgid-dir", 1111, 2222)
    os.chmod(src / "sgid-dir", 0o2770)
    os.symlink("setuid", src / "their-link")
    os.chown(src / "their-link", 77, 88, follow_symlinks=False)
    os.mknod(src / "tty0", stat.S_IFCHR | 0o620, os.makedev(4, 0))
    os.chown(src / "tty0", 0, 5)
    os.chmod(src / "tty0", 0o620)
    # Past times: rsync leaves a time alone that is already right to the second.
    past = (1_600_000_000_123_456_789, 1_600_000_000_123_456_789)
    for name in ("setuid", "sgid-dir/inner", "their-link", "tty0", "sgid-dir", "."):
        os.utime(src / name, ns=past, follow_symlinks=False)


def _stats(root) -> dict[str, bytes]:
    """Every user.rsync.%stat under root, by relative name."""
    found = {}
    for path, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            full = os.path.join(path, name)
            try:
                found[os.path.relpath(full, root)] = os.getxattr(full, XSTAT, follow_symlinks=False)
            except OSError:
                pass
    return found


def _sides(tmp_path) -> tuple:
    (work,) = tmp_path.glob("differential-*")
    return work / "rsync", work / "zcsync"


@pytest.mark.parametrize("options", [["-a"], ["-aH"], ["-aX"], ["-a", "--numeric-ids", "-i"]])
def test_local_fresh(tmp_path, options):
    """Into a new destination: the same plain files, modes and %stat values as rsync's."""
    rs, zc = differential(tmp_path, [*options, "--fake-super"], seed=41, prepare=_privileged,
                          tree_kwargs=TREE, compare_kwargs=SAME)
    assert output_lines(rs.stdout) == output_lines(zc.stdout)
    rsync_side, zcsync_side = _sides(tmp_path)
    recorded = _stats(rsync_side / "dst")
    assert recorded == _stats(zcsync_side / "dst")
    # what rsync writes, in its format
    assert recorded["setuid"] == b"104755 0,0 4321:8765"
    assert recorded["tty0"] == b"20620 4,0 0:5"
    assert recorded["sgid-dir"] == b"42770 0,0 1111:2222"
    assert recorded["their-link"] == b"120777 0,0 77:88"
    for name in ("setuid", "tty0", "their-link"):
        st = os.lstat(zcsync_side / "dst" / name)
        assert stat.S_ISREG(st.st_mode) and (st.st_uid, st.st_gid) == (0, 0), name
    assert (zcsync_side / "dst" / "their-link").read_bytes() == b"setuid"  # the target, as contents


def test_local_resync_into_a_fake_tree(tmp_path):
    """A destination rsync --fake-super made, resynced after changes: both tools read the
    %stat records as what the files are, change the same ones, drop those that match."""
    def prepare(src, dst):
        _privileged(src, dst)
        run_rsync(["-a", "--fake-super", f"{src}/", f"{dst}/"])
        os.chown(src / "setuid", 0, 0)  # now nothing to record: rsync removes the xattr
        os.chmod(src / "setuid", 0o644)
        os.chown(src / "sgid-dir" / "inner", 999, 999)
        os.chmod(src / "tty0", 0o600)
    rs, zc = differential(tmp_path, ["-ai", "--fake-super", "--delete"], seed=42, prepare=prepare,
                          tree_kwargs=TREE, compare_kwargs=SAME)
    assert output_lines(rs.stdout) == output_lines(zc.stdout)
    rsync_side, zcsync_side = _sides(tmp_path)
    assert _stats(rsync_side / "dst") == _stats(zcsync_side / "dst")
    assert "setuid" not in _stats(zcsync_side / "dst")


def test_local_up_to_date_fake_tree_is_left_alone(tmp_path):
    def prepare(src, dst):
        _privileged(src, dst)
        run_rsync(["-a", "--fake-super", f"{src}/", f"{dst}/"])
    rs, zc = differential(tmp_path, ["-ai", "--fake-super"], seed=43, prepare=prepare, tree_kwargs=TREE,
                          compare_kwargs=SAME)
    assert rs.stdout == zc.stdout == ""


@pytest.mark.parametrize("options", [["-a"], ["-aX"]])
def test_local_round_trip_restores_what_was_recorded(tmp_path, options):
    """A tree rsync --fake-super made, sent with --fake-super to a receiver that is root
    again (-M--super): the owners, set-id bits, devices, fifos and links come back."""
    def prepare(src, dst):
        _privileged(src, dst)
        fake = src.parent / "fake"
        run_rsync([*options, "--fake-super", f"{src}/", f"{fake}/"])
        subprocess.run(["rm", "-rf", str(src)], check=True)
        os.rename(fake, src)
    rs, zc = differential(tmp_path, [*options, "-i", "--fake-super", "-M--super"], seed=44, prepare=prepare,
                          tree_kwargs=TREE, compare_kwargs=SAME)
    assert output_lines(rs.stdout) == output_lines(zc.stdout)
    _, zcsync_side = _sides(tmp_path)
    dst = zcsync_side / "dst"
    st = os.lstat(dst / "setuid")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o4755, 4321, 8765)
    assert stat.S_ISCHR(os.lstat(dst / "tty0").st_mode) and os.lstat(dst / "tty0").st_rdev == os.makedev(4, 0)
    assert os.readlink(dst / "their-link") == "setuid"
    assert not _stats(dst)


def test_zcsync_round_trip_of_its_own_fake_tree(tmp_path):
    """zcsync's fake tree restores to the source itself."""
    src = tmp_path / "src"
    from tests.treegen import make_tree
    make_tree(src, 45, **TREE)
    _privileged(src, None)
    for args in (["-aHX", "--fake-super", f"{src}/", f"{tmp_path}/fake/"],
                 ["-aHX", "--fake-super", "-M--super", f"{tmp_path}/fake/", f"{tmp_path}/back/"]):
        zc = run_zcsync(args)
        assert zc.returncode == 0, zc.stderr
    from tests.treecmp import assert_same_tree
    assert_same_tree(src, tmp_path / "back", xattrs=True)


def test_without_owner_the_owner_recorded_is_the_files(tmp_path):
    """-rlptD without -o/-g: rsync records an owner it never read (garbage below the top
    directory); zcsync records the file's own (so only modes and types make a record)."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x")
    os.chown(src / "d" / "f", 1234, 1234)
    os.chmod(src / "d" / "f", 0o4644)
    os.mkfifo(src / "d" / "p")
    zc = run_zcsync(["-rlptD", "--fake-super", f"{src}/", f"{tmp_path}/dst/"])
    assert zc.returncode == 0, zc.stderr
    recorded = _stats(tmp_path / "dst")
    assert recorded == {"d/f": b"104644 0,0 0:0", "d/p": b"10644 0,0 0:0"}


def test_corrupt_record_is_reported(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    os.setxattr(src / "f", XSTAT, b"rubbish")
    rs = run_rsync(["-a", "--fake-super", f"{src}/", f"{tmp_path}/rs/"], check=False)
    assert "Corrupt user.rsync.%stat xattr attached to" in rs.stderr
    zc = run_zcsync(["-a", "--fake-super", f"{src}/", f"{tmp_path}/zc/"])
    assert 'Corrupt user.rsync.%stat xattr attached to "' in zc.stderr and '"rubbish"' in zc.stderr
    assert zc.returncode == 23  # rsync stops the run there (11); zcsync sends the file as it is
    assert (tmp_path / "zc" / "f").read_bytes() == b"x"


def test_acls_refused_with_fake_super(tmp_path):
    zc = run_zcsync(["-aA", "--fake-super", "src/", "dst/"], cwd=tmp_path)
    assert zc.returncode == 1 and "--fake-super with -A/--acls is not supported" in zc.stderr


# -- over ssh ----------------------------------------------------------------------


def _extra() -> list[str]:
    return ["--zcsync-path", remote_zcsync_path()]


def test_ssh_push_with_remote_fake_super(tmp_path, sshd, via):
    """rsync -a -M--fake-super src/ host:dst/: the remote receiver keeps what it cannot set."""
    rs, zc = differential(tmp_path, ["-a", "-i", "-M--fake-super", *via], seed=46, prepare=_privileged,
                          tree_kwargs=TREE, compare_kwargs=SAME, env=sshd.env(),
                          paths=direction_paths("push"), zcsync_extra=_extra())
    assert output_lines(rs.stdout) == output_lines(zc.stdout)
    rsync_side, zcsync_side = _sides(tmp_path)
    assert _stats(rsync_side / "dst") == _stats(zcsync_side / "dst") != {}


def test_ssh_pull_restores_from_a_remote_fake_tree(tmp_path, sshd, via):
    """rsync -a -M--fake-super host:fake/ dst/: the remote sender reads the records back."""
    rs, zc = differential(tmp_path, ["-a", "-i", "-M--fake-super", *via], seed=47, prepare=_fake_source,
                          tree_kwargs=TREE, compare_kwargs=SAME, env=sshd.env(),
                          paths=direction_paths("pull"), zcsync_extra=_extra())
    assert output_lines(rs.stdout) == output_lines(zc.stdout)
    _, zcsync_side = _sides(tmp_path)
    assert stat.S_ISCHR(os.lstat(zcsync_side / "dst" / "tty0").st_mode)
    assert not _stats(zcsync_side / "dst")


def _fake_source(src, dst) -> None:
    """The source is a tree rsync --fake-super made of a privileged one."""
    _privileged(src, dst)
    fake = src.parent / "fake"
    run_rsync(["-a", "--fake-super", f"{src}/", f"{fake}/"])
    subprocess.run(["rm", "-rf", str(src)], check=True)
    os.rename(fake, src)


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_ssh_fake_super_is_the_clients_alone(tmp_path, sshd, direction):
    """--fake-super without -M acts on the client's side only, as rsync's: a push of a fake
    tree restores it on the (root) server; a pull into a fake destination records there."""
    prepare = _fake_source if direction == "push" else _privileged
    rs, zc = differential(tmp_path, ["-a", "-i", "--fake-super"], seed=48, prepare=prepare, tree_kwargs=TREE,
                          compare_kwargs=SAME, env=sshd.env(), paths=direction_paths(direction),
                          zcsync_extra=_extra())
    assert output_lines(rs.stdout) == output_lines(zc.stdout)
    _, zcsync_side = _sides(tmp_path)
    dst = zcsync_side / "dst"
    assert stat.S_ISCHR(os.lstat(dst / "tty0").st_mode) == (direction == "push")
    assert bool(_stats(dst)) == (direction == "pull")
