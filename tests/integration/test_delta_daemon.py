"""Delta transfer through `zcsync daemon` against `rsync --no-W` through `rsync --daemon`.

Both daemons serve a module on 127.0.0.1; each tool pushes to (or pulls from) its own
daemon from identical trees, and the results, the literal/matched split of --stats and
the bytes on the wire are compared.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.oracle import compare_kwargs_for, run_rsync, run_zcsync
from tests.treecmp import assert_same_tree
from tests.treegen import copy_tree

from .daemon_fixture import RsyncDaemon, ZcsyncDaemon, rsync_available
from .test_delta_options import CASES, NAME, OLD, stat_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the daemons switch uid/gid: need root")

SIZE = 8 << 20


@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    if not rsync_available():
        pytest.skip("rsync not installed")
    root = tmp_path_factory.mktemp("delta-daemons")
    zmod, rmod = root / "zmod", root / "rmod"
    zmod.mkdir()
    rmod.mkdir()
    common = "    read only = no\n    uid = root\n    gid = root\n"
    zd = ZcsyncDaemon(root / "zdaemon")
    zd.write_config(f"[m]\n    path = {zmod}\n{common}")
    rd = RsyncDaemon(root / "rdaemon")
    rd.write_config(f"use chroot = yes\n[m]\n    path = {rmod}\n{common}")
    zd.start()
    try:
        rd.start()
        try:
            yield zd, rd, zmod, rmod
        finally:
            rd.stop()
    finally:
        zd.stop()


def _trees(base: Path, case: str) -> None:
    """base/src (the new version) and base/dst (the old one, the basis)."""
    (base / "src").mkdir(parents=True)
    (base / "dst").mkdir()
    rnd = random.Random(case)
    basis = rnd.randbytes(SIZE)
    (base / "dst" / NAME).write_bytes(basis)
    os.utime(base / "dst" / NAME, (OLD, OLD))
    (base / "src" / NAME).write_bytes(CASES[case](basis, rnd))
    (base / "src" / "small.txt").write_bytes(b"hello\n")
    # Times in the past: rsync's daemon leaves a directory time alone within the same second.
    os.utime(base / "src", (OLD + 7, OLD + 7))


def _compare(rs, zc, direction: str) -> None:
    assert rs.returncode == 0, rs.stderr
    assert zc.returncode == 0, zc.stderr
    for what in ("Literal data", "Matched data"):
        theirs, ours = stat_of(rs.stdout, what), stat_of(zc.stdout, what)
        assert abs(ours - theirs) <= 0.01 * theirs + 4096, f"{what}: zcsync {ours}, rsync {theirs}"
    data = "sent" if direction == "push" else "received"
    ours, theirs = stat_of(zc.stdout, f"Total bytes {data}"), stat_of(rs.stdout, f"Total bytes {data}")
    assert ours <= 1.1 * theirs + 4096, f"bytes {data}: zcsync {ours}, rsync {theirs}"


@pytest.mark.parametrize("extra", [[], ["--inplace"], ["-B", "4096"]], ids=["plain", "inplace", "block-size"])
@pytest.mark.parametrize("case", ["edits", "insert-front", "mix"])
def test_push_delta_like_rsync_daemon(tmp_path, daemons, case, extra):
    zd, rd, zmod, rmod = daemons
    _trees(tmp_path / "base", case)
    where = f"{tmp_path.name}/"
    copy_tree(tmp_path / "base" / "dst", zmod / tmp_path.name)
    copy_tree(tmp_path / "base" / "dst", rmod / tmp_path.name)
    src = f"{tmp_path / 'base' / 'src'}/"
    args = ["-a", "--no-W", "--stats", *extra, src]
    rs = run_rsync([*args, rd.url("m", where)], check=False)
    zc = run_zcsync([*args, zd.url("m", where)])
    _compare(rs, zc, "push")
    if not (extra == ["--inplace"] and case == "insert-front"):  # in place, nothing can move forward
        assert stat_of(zc.stdout, "Matched data") > SIZE // 2
    assert (zmod / tmp_path.name / NAME).read_bytes() == (tmp_path / "base" / "src" / NAME).read_bytes()
    assert_same_tree(rmod / tmp_path.name, zmod / tmp_path.name, **compare_kwargs_for(["-a"]))


@pytest.mark.parametrize("extra", [[], ["--inplace"]], ids=["plain", "inplace"])
@pytest.mark.parametrize("case", ["edits", "insert-front", "mix"])
def test_pull_delta_like_rsync_daemon(tmp_path, daemons, case, extra):
    zd, rd, zmod, rmod = daemons
    _trees(tmp_path / "base", case)
    copy_tree(tmp_path / "base" / "src", zmod / tmp_path.name)
    copy_tree(tmp_path / "base" / "src", rmod / tmp_path.name)
    copy_tree(tmp_path / "base" / "dst", tmp_path / "rdst")
    copy_tree(tmp_path / "base" / "dst", tmp_path / "zdst")
    args = ["-a", "--no-W", "--stats", *extra]
    rs = run_rsync([*args, rd.url("m", f"{tmp_path.name}/"), f"{tmp_path / 'rdst'}/"], check=False)
    zc = run_zcsync([*args, zd.url("m", f"{tmp_path.name}/"), f"{tmp_path / 'zdst'}/"])
    _compare(rs, zc, "pull")
    if not (extra == ["--inplace"] and case == "insert-front"):  # in place, nothing can move forward
        assert stat_of(zc.stdout, "Matched data") > SIZE // 2
    assert (tmp_path / "zdst" / NAME).read_bytes() == (tmp_path / "base" / "src" / NAME).read_bytes()
    assert_same_tree(tmp_path / "rdst", tmp_path / "zdst", **compare_kwargs_for(["-a"]))


@pytest.mark.parametrize("mode", ["--append", "--append-verify"])
@pytest.mark.parametrize("direction", ["push", "pull"])
def test_append_through_daemon_like_rsync(tmp_path, daemons, mode, direction):
    zd, rd, zmod, rmod = daemons
    rnd = random.Random(mode)
    data = rnd.randbytes(3 << 20)
    base = tmp_path / "base"
    (base / "src").mkdir(parents=True)
    (base / "dst").mkdir()
    (base / "src" / "grow").write_bytes(data)
    (base / "dst" / "grow").write_bytes(data[: 1 << 20])
    (base / "src" / "head").write_bytes(data)
    (base / "dst" / "head").write_bytes(rnd.randbytes(1 << 20))  # a different head
    for name in ("grow", "head"):
        os.utime(base / "dst" / name, (OLD, OLD))
    os.utime(base / "src", (OLD + 7, OLD + 7))
    args = ["-a", mode, "--stats"]
    if direction == "push":
        for mod in (zmod, rmod):
            copy_tree(base / "dst", mod / tmp_path.name)
        rs = run_rsync([*args, f"{base / 'src'}/", rd.url("m", f"{tmp_path.name}/")], check=False)
        zc = run_zcsync([*args, f"{base / 'src'}/", zd.url("m", f"{tmp_path.name}/")])
        rout, zout = rmod / tmp_path.name, zmod / tmp_path.name
    else:
        for mod in (zmod, rmod):
            copy_tree(base / "src", mod / tmp_path.name)
        rout, zout = tmp_path / "rdst", tmp_path / "zdst"
        copy_tree(base / "dst", rout)
        copy_tree(base / "dst", zout)
        rs = run_rsync([*args, rd.url("m", f"{tmp_path.name}/"), f"{rout}/"], check=False)
        zc = run_zcsync([*args, zd.url("m", f"{tmp_path.name}/"), f"{zout}/"])
    assert rs.returncode == zc.returncode == 0, (rs.stderr, zc.stderr)
    assert_same_tree(rout, zout, **compare_kwargs_for(["-a"]))
    assert (zout / "grow").read_bytes() == data
    if mode == "--append":
        assert (zout / "head").read_bytes() != data  # --append trusts what is there, as rsync
        assert stat_of(zc.stdout, "Literal data") == stat_of(rs.stdout, "Literal data") == 2 * (2 << 20)
    else:
        assert (zout / "head").read_bytes() == data  # verified, found wrong, sent again
