"""Self-tests of the differential harness: tree generator, tree comparison, oracle.

The comparison must agree with rsync when rsync copies faithfully, and must fail
when anything that matters differs; otherwise differential tests prove nothing.
"""
from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tests import oracle, treecmp  # noqa: E402
from tests.treecmp import assert_same_tree, diff_trees, snapshot  # noqa: E402
from tests.treegen import copy_tree, make_tree, mutate_tree  # noqa: E402

IS_ROOT = os.geteuid() == 0
SMALL = 256 << 10  # max_size that keeps every test well under a second


def _rsync_tool(args, *, cwd=None, env=None):
    return oracle.run_rsync(args, check=False, cwd=cwd, env=env)


@pytest.fixture
def tree(tmp_path: pathlib.Path) -> pathlib.Path:
    src = tmp_path / "src"
    make_tree(src, 7, max_size=SMALL, devices=True, socket=True)
    return src


# --- treegen -----------------------------------------------------------------


def test_make_tree_is_deterministic(tmp_path: pathlib.Path) -> None:
    make_tree(tmp_path / "a", 42, devices=True, socket=True)
    make_tree(tmp_path / "deeper" / "b", 42, devices=True, socket=True)
    a = snapshot(tmp_path / "a", xattrs=True, blocks=True)
    b = snapshot(tmp_path / "deeper" / "b", xattrs=True, blocks=True)
    assert a == b
    assert all(r.mtime_ns is not None for r in a.values())
    make_tree(tmp_path / "c", 43)
    assert diff_trees(tmp_path / "a", tmp_path / "c")


def test_make_tree_has_the_awkward_cases(tree: pathlib.Path) -> None:
    snap = snapshot(tree, xattrs=True)
    types = {r.type for r in snap.values()}
    assert {"f", "d", "l", "p", "s"} <= types
    if IS_ROOT:
        assert {"c", "b"} <= types
        assert any(r.uid not in (0, None) for r in snap.values())

    names = set(snap)
    assert any(b"\xff" in n for n in names), "a non-UTF-8 name"
    assert any(n.rpartition(b"/")[2].startswith(b"-") for n in names)
    assert any(b" " in n for n in names)
    assert any("\u540d".encode() in n for n in names)

    files = {n: r for n, r in snap.items() if r.type == "f"}
    assert any(r.size == 0 for r in files.values())
    assert max(r.size for r in files.values()) >= SMALL
    dirs = {n for n, r in snap.items() if r.type == "d"}
    assert b"empty/nested-empty" in dirs
    assert max(n.count(b"/") for n in dirs) >= 2
    ro = snap[b"ro-dir"]
    assert ro.mode == 0o555 and any(n.startswith(b"ro-dir/") for n in files)
    assert any(r.mtime_ns % 10**9 for r in snap.values()), "nanosecond mtimes"
    assert any(r.xattrs for r in snap.values())

    targets = {r.target for r in snap.values() if r.type == "l"}
    assert any(t.startswith(b"/") for t in targets)
    top = os.fsencode(tree)
    links = {n: r.target for n, r in snap.items() if r.type == "l"}
    resolves = [not t.startswith(b"/") and os.path.exists(os.path.join(top, n).rpartition(b"/")[0]
                                                          + b"/" + t) for n, t in links.items()]
    assert any(resolves) and not all(resolves), "relative links, live and dangling"
    assert not os.path.exists(os.path.join(os.fsencode(tree), b"dangling-abs"))

    groups = {r.link_group for r in snap.values() if r.link_group}
    assert any(len(g) == 3 for g in groups)
    assert any(len({n.rpartition(b"/")[0] for n in g}) > 1 for g in groups), "across dirs"

    sparse = [n for n in files if n.endswith(b"sparse.img")]
    assert sparse
    st = os.lstat(os.path.join(os.fsencode(tree), sparse[0]))
    assert st.st_blocks * 512 < st.st_size // 2


def test_make_tree_options_off(tmp_path: pathlib.Path) -> None:
    make_tree(tmp_path / "t", 3, files=10, max_size=1000, fifo=False, devices=False,
              hardlinks=False, sparse=False)
    snap = snapshot(tmp_path / "t")
    assert not {"p", "c", "b", "s"} & {r.type for r in snap.values()}
    assert not any(r.link_group for r in snap.values())
    assert not any(n.endswith(b"sparse.img") for n in snap)


def test_copy_tree_is_exact(tree: pathlib.Path, tmp_path: pathlib.Path) -> None:
    copy_tree(tree, tmp_path / "copy")
    assert diff_trees(tree, tmp_path / "copy", xattrs=True, blocks=True) == []
    with pytest.raises(FileExistsError):
        copy_tree(tree, tmp_path / "copy")


def test_mutate_tree_changes_things(tree: pathlib.Path, tmp_path: pathlib.Path) -> None:
    copy_tree(tree, tmp_path / "before")
    copy_tree(tree, tmp_path / "twin")
    mutate_tree(tree, 99)
    diffs = diff_trees(tmp_path / "before", tree)
    text = "\n".join(diffs)
    for what in ("only in a (file)", "only in a (dir)", "only in b (file)",
                 "only in b (dir)", "type file != dir", "type dir != file",
                 "type file != symlink", ": content ", ": size ", ": mode ",
                 ": mtime_ns ", ": target ", ": link_group "):
        assert what in text, f"mutate_tree made no {what!r}:\n{text}"
    # One edit keeps size and mtime: only the content tells.
    content_only = [d.split(":")[0] for d in diffs if ": content " in d]
    assert any(not any(d.startswith(p + ": size") or d.startswith(p + ": mtime")
                       for d in diffs) for p in content_only)
    mutate_tree(tmp_path / "twin", 99)
    assert diff_trees(tree, tmp_path / "twin", xattrs=True) == [], "mutate_tree is seeded"


# --- treecmp -------------------------------------------------------------------


@pytest.mark.parametrize("options,xattrs", [(["-aHS"], False), (["-aHSX"], True)])
def test_rsync_copy_equals_source(tree: pathlib.Path, tmp_path: pathlib.Path,
                                  options: list[str], xattrs: bool) -> None:
    dst = tmp_path / "dst"
    oracle.run_rsync([*options, f"{tree}/", f"{dst}/"])
    # st_blocks counts an ext4 external xattr block too: compare it only with -X.
    assert_same_tree(tree, dst, xattrs=xattrs, blocks=xattrs)
    if not xattrs:
        assert any(": xattrs " in d for d in diff_trees(tree, dst, xattrs=True))


def test_rsync_without_h_splits_links_and_the_diff_says_so(
        tree: pathlib.Path, tmp_path: pathlib.Path) -> None:
    dst = tmp_path / "dst"
    oracle.run_rsync(["-a", f"{tree}/", f"{dst}/"])
    diffs = diff_trees(tree, dst)
    assert diffs and all(": link_group " in d for d in diffs)
    assert diff_trees(tree, dst, hardlinks=False) == []


def _edit(root: pathlib.Path, snap: dict, kind: str) -> bytes:
    """Change one thing in a copy of a tree; return the path it changed."""
    top = os.fsencode(root)
    rel = _edit_one(top, snap, kind)
    # Unlinking and creating touch the parent: put its time back, so that the
    # edit is the only difference.
    parent = rel.rpartition(b"/")[0] or b"."
    os.utime(os.path.join(top, parent), ns=(0, snap[parent].mtime_ns))
    return rel


def _edit_one(top: bytes, snap: dict, kind: str) -> bytes:
    files = sorted(n for n, r in snap.items() if r.type == "f" and r.size and not r.link_group)
    if kind == "byte":
        rel = files[0]
        st = os.lstat(os.path.join(top, rel))
        fd = os.open(os.path.join(top, rel), os.O_RDWR)
        old = os.pread(fd, 1, st.st_size - 1)
        os.pwrite(fd, bytes([old[0] ^ 1]), st.st_size - 1)
        os.close(fd)
        os.utime(os.path.join(top, rel), ns=(st.st_atime_ns, st.st_mtime_ns))
        return rel
    if kind == "mode":
        rel = files[1]
        os.chmod(os.path.join(top, rel), snap[rel].mode ^ 0o010)
        return rel
    if kind == "mtime":
        rel = files[2]
        os.utime(os.path.join(top, rel), ns=(0, snap[rel].mtime_ns + 1))
        return rel
    if kind == "link-mtime":
        rel = sorted(n for n, r in snap.items() if r.type == "l")[0]
        os.utime(os.path.join(top, rel), ns=(0, snap[rel].mtime_ns + 1000),
                 follow_symlinks=False)
        return rel
    if kind == "split":
        group = sorted(r.link_group for r in snap.values() if r.link_group)[0]
        rel = group[-1]
        path = os.path.join(top, rel)
        st = os.lstat(path)
        with open(path, "rb") as f:
            data = f.read()
        os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, data)
        os.close(fd)
        os.chmod(path, stat.S_IMODE(st.st_mode))
        os.chown(path, st.st_uid, st.st_gid)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        return rel
    if kind == "owner":
        rel = files[3]
        os.chown(os.path.join(top, rel), snap[rel].uid + 1, -1)
        return rel
    if kind == "target":
        rel = sorted(n for n, r in snap.items() if r.type == "l")[0]
        path = os.path.join(top, rel)
        st = os.lstat(path)
        os.unlink(path)
        os.symlink(snap[rel].target + b"x", path)
        if IS_ROOT:
            os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        return rel
    if kind == "missing":
        rel = files[4]
        os.unlink(os.path.join(top, rel))
        return rel
    raise ValueError(kind)


@pytest.mark.parametrize("kind,label", [
    ("byte", "content"), ("mode", "mode"), ("mtime", "mtime_ns"),
    ("link-mtime", "mtime_ns"), ("split", "link_group"), ("owner", "uid"),
    ("target", "target"), ("missing", "only in a"),
])
def test_diff_detects(tmp_path: pathlib.Path, kind: str, label: str) -> None:
    if kind == "owner" and not IS_ROOT:
        pytest.skip("chown needs root")
    a = tmp_path / "a"
    make_tree(a, 5, files=30, max_size=20_000)
    copy_tree(a, tmp_path / "b")
    rel = _edit(tmp_path / "b", snapshot(a), kind)
    diffs = diff_trees(a, tmp_path / "b")
    assert diffs, f"{kind} went unnoticed"
    assert any(d.startswith(treecmp.show_path(rel) + ":") and label in d for d in diffs), diffs
    if kind == "split":
        # Both names of the old pair report it; the partitions differ.
        assert sum(": link_group " in d for d in diffs) >= 2
    else:
        assert len(diffs) == 1, diffs


def test_diff_switches(tmp_path: pathlib.Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a, 11, files=12, max_size=5000)
    copy_tree(a, b)
    snap = snapshot(b)
    some_dir = next(n for n, r in sorted(snap.items()) if r.type == "d" and n != b".")
    os.utime(os.path.join(os.fsencode(b), some_dir), ns=(0, 1))
    os.utime(b, ns=(0, 2))
    assert len(diff_trees(a, b)) == 2
    assert len(diff_trees(a, b, root_times=False)) == 1
    assert diff_trees(a, b, dir_times=False) == []
    assert diff_trees(a, b, times=False) == []
    assert diff_trees(a, b, exclude=lambda rel: rel == some_dir) == [
        ".: mtime_ns " + treecmp._fmt("mtime_ns", snap[b"."].mtime_ns) + " != 0.000000002"]
    # Snapshots are accepted in place of roots.
    assert diff_trees(snapshot(a), snapshot(b, dir_times=False)) != []


def test_assert_same_tree_lists_at_most_30(tmp_path: pathlib.Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for i in range(40):
        (a / f"f{i:02d}").write_bytes(b"x")
    st = os.stat(a)
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(AssertionError) as info:
        assert_same_tree(a, b)
    message = str(info.value)
    assert "40 differences" in message and "... and 10 more" in message
    assert message.count("only in a") == 30
    assert_same_tree(a, a)


# --- oracle --------------------------------------------------------------------


def test_differential_with_rsync_on_both_sides(tmp_path: pathlib.Path) -> None:
    rs, other = oracle.differential(tmp_path, ["-aHSi"], seed=1, tool=_rsync_tool,
                                    tree_kwargs={"max_size": SMALL})
    assert rs.returncode == other.returncode == 0
    assert rs.stdout == other.stdout and ">f+++++++++" in rs.stdout


def test_differential_resync(tmp_path: pathlib.Path) -> None:
    seen = []

    def prepare(src: pathlib.Path, dst: pathlib.Path) -> None:
        seen.append((src.name, dst.is_dir()))
        (dst / "extraneous").write_bytes(b"to be deleted")

    rs, other = oracle.differential(tmp_path, ["-aHS", "--delete", "-i"], seed=2,
                                    mutate=True, prepare=prepare, tool=_rsync_tool,
                                    tree_kwargs={"max_size": SMALL})
    assert seen == [("src", True)]
    assert "*deleting   extraneous" in rs.stdout
    assert rs.stdout == other.stdout


def test_differential_catches_a_different_result(tmp_path: pathlib.Path) -> None:
    def sloppy(args, *, cwd=None, env=None):
        # Forgets hard links and nanoseconds: what a buggy tool might do.
        result = oracle.run_rsync([a for a in args if a != "-H"] + ["--modify-window=1"],
                                  check=False, cwd=cwd, env=env)
        return result

    with pytest.raises(AssertionError, match="link_group"):
        oracle.differential(tmp_path, ["-a", "-H"], seed=3, tool=sloppy,
                            tree_kwargs={"max_size": 10_000})


def test_differential_catches_a_different_exit_code(tmp_path: pathlib.Path) -> None:
    def failing(args, *, cwd=None, env=None):
        return subprocess.CompletedProcess(args, 23, "", "some files vanished\n")

    with pytest.raises(AssertionError, match="Exit codes differ: rsync 0, zcsync 23"):
        oracle.differential(tmp_path, ["-a"], seed=4, tool=failing,
                            tree_kwargs={"files": 5, "max_size": 1000})


def test_differential_without_times_and_into_subdir(tmp_path: pathlib.Path) -> None:
    # Without -t both sides get "now" mtimes, so the harness must not compare them.
    oracle.differential(tmp_path, ["-rlpgoDH"], seed=5, tool=_rsync_tool, src_suffix="",
                        tree_kwargs={"files": 10, "max_size": 1000})


@pytest.mark.parametrize("options,expected", [
    (["-a"], dict(times=True, dir_times=True, link_times=True)),
    (["-avHS"], dict(times=True, dir_times=True, link_times=True)),
    (["-rlpgoD"], dict(times=False)),
    (["-aO"], dict(times=True, dir_times=False)),
    (["-a", "--no-times"], dict(times=False)),
    (["--archive", "--omit-link-times"], dict(times=True, link_times=False)),
    (["-e", "-t", "-r"], dict(times=False)),  # "-t" is -e's argument here
    (["-rBt"], dict(times=False)),  # ...and the rest of the bundle here
    (["-rt", "-O", "--no-omit-dir-times"], dict(times=True, dir_times=True)),
])
def test_compare_kwargs_for(options: list[str], expected: dict) -> None:
    got = oracle.compare_kwargs_for(options)
    assert {k: got[k] for k in expected} == expected
    assert got["root_times"] is True
    assert oracle.compare_kwargs_for(options, "")["root_times"] is False


def test_run_zcsync_uses_this_checkout(monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: pathlib.Path) -> None:
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append((cmd, kwargs))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(oracle.subprocess, "run", fake_run)
    oracle.run_zcsync(["-a", "x/", "y/"], cwd=tmp_path, env={"PYTHONPATH": "/elsewhere"})
    cmd, kwargs = calls[0]
    assert cmd == [sys.executable, "-m", "zcsync", "-a", "x/", "y/"]
    assert kwargs["env"]["PYTHONPATH"] == f"{_ROOT}{os.pathsep}/elsewhere"
    assert kwargs["cwd"] == tmp_path


def test_run_rsync_check_reports_stderr() -> None:
    with pytest.raises(oracle.CommandFailed, match="(?s)exit status.*stderr:.*"):
        oracle.run_rsync(["--no-such-option"])
    assert oracle.run_rsync(["--no-such-option"], check=False).returncode == 1


def test_differential_runs_both_tools_at_the_same_path(tmp_path: pathlib.Path) -> None:
    # -L on dangling links: rsync names the absolute source path in its errors.
    rs, other = oracle.differential(tmp_path, ["-aL"], seed=6, tool=_rsync_tool,
                                    tree_kwargs={"files": 15, "max_size": 5000})
    assert rs.returncode == 23 and "symlink has no referent" in rs.stderr
    assert rs.stderr == other.stderr


def test_output_lines_drops_timings() -> None:
    out = ("sending incremental file list\n>f+++++++++ b\n>f+++++++++ a\n\n"
           "sent 1,234 bytes  received 35 bytes  2,538.00 bytes/sec\n"
           "total size is 1,000  speedup is 0.79\n")
    assert oracle.strip_stats(out) == ("sending incremental file list\n>f+++++++++ b\n"
                                       ">f+++++++++ a\n\n")
    assert oracle.output_lines(out) == ["", ">f+++++++++ a", ">f+++++++++ b",
                                        "sending incremental file list"]
    assert oracle.output_lines(out, sort=False)[1] == ">f+++++++++ b"


@pytest.mark.parametrize("options,dir_times", [
    (["-ab"], False), (["-a", "--backup"], False),
    (["-a", "--backup", "--backup-dir=../bak"], True),
    (["-a", "--backup", "--backup-dir", "../bak"], True), (["-a", "-b", "--no-backup"], True),
])
def test_backup_without_backup_dir_omits_dir_times(options: list[str], dir_times: bool) -> None:
    assert oracle.compare_kwargs_for(options)["dir_times"] is dir_times


def test_differential_sees_prepared_files_and_compares_extras(tmp_path: pathlib.Path) -> None:
    def prepare(src: pathlib.Path, dst: pathlib.Path) -> None:
        # Next to src/ in base/, so in the tool's cwd at run time.
        (src.parent / "rules").write_bytes(b"*.log\n")

    options = ["-ai", "--exclude-from=rules", "--delete", "--backup", "--backup-dir=../bak"]
    rs, _ = oracle.differential(tmp_path, options, seed=9, mutate=True, prepare=prepare,
                                tool=_rsync_tool, tree_kwargs={"files": 20, "max_size": 5000})
    assert rs.returncode == 0, rs.stderr
    work = next(tmp_path.glob("differential-*"))
    assert any((work / "rsync" / "bak").rglob("*"))
    assert (work / "rsync" / "rules").exists() and (work / "zcsync" / "rules").exists()
    assert ">f" in rs.stdout and not any(
        line.startswith(">f") and line.endswith(".log") for line in rs.stdout.splitlines())

    def no_backup(args, *, cwd=None, env=None):
        kept = [a for a in args if not a.startswith("--backup")]
        return oracle.run_rsync(kept, check=False, cwd=cwd, env=env)

    with pytest.raises(AssertionError, match=r"bak.*: only in a"):
        oracle.differential(tmp_path, options, seed=9, mutate=True, prepare=prepare,
                            tool=no_backup, tree_kwargs={"files": 20, "max_size": 5000})
