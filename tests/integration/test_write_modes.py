"""Every --write-mode, and both send methods, through a real `zcsync daemon`: push and pull.

Files big enough for the zero-copy path (sendfile out, splice / O_DIRECT / buffered in)
sit beside small ones; each result is compared with the source tree. The same runs go
to an ext4 loop image, where O_DIRECT really bypasses a page cache (root only).
"""
from __future__ import annotations

import os

import pytest

from tests.fsimage import ext4_mount
from tests.oracle import compare_kwargs_for
from tests.treecmp import assert_same_tree
from tests.treegen import copy_tree, make_tree

from .daemon_fixture import ZcsyncDaemon, run_client

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the daemon module runs as uid root: need root")

MODES = ["auto", "buffered", "splice", "direct"]
BIG = {"big/aligned": 8 << 20, "big/odd": (5 << 20) + 4097, "big/just-over": (256 << 10) + 1,
       "big/tail": (1 << 20) - 1}


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("wm") / "src"
    make_tree(root, 31, max_size=600 << 10)
    (root / "big").mkdir()
    for name, size in BIG.items():
        (root / name).write_bytes(os.urandom(size))
    return root


@pytest.fixture(scope="module")
def zd(tmp_path_factory):
    root = tmp_path_factory.mktemp("wmd")
    (root / "data").mkdir()
    d = ZcsyncDaemon(root / "d")
    d.write_config(f"[m]\n    path = {root / 'data'}\n    read only = no\n    uid = root\n    gid = root\n")
    d.start()
    d.data = root / "data"
    yield d
    d.stop()


@pytest.mark.parametrize("mode", MODES)
def test_push_and_pull_in_each_write_mode(zd, src, tmp_path, mode):
    code, msg, _ = run_client([f"{src}/", zd.url("m", f"push-{mode}/")], archive=True, hard_links=True, write_mode=mode)
    assert code == 0, msg
    assert_same_tree(src, zd.data / f"push-{mode}", **compare_kwargs_for(["-aH"]))
    code, msg, _ = run_client([zd.url("m", f"push-{mode}/"), str(tmp_path / "pulled")], archive=True, hard_links=True,
                              write_mode=mode)
    assert code == 0, msg
    assert_same_tree(src, tmp_path / "pulled", **compare_kwargs_for(["-aH"]))


def test_readwrite_send_method(zd, src, tmp_path, monkeypatch):
    """The sender's fallback (pread + send instead of sendfile), forced: same result."""
    monkeypatch.setenv("ZCSYNC_SEND_METHOD", "readwrite")
    code, msg, _ = run_client([f"{src}/", zd.url("m", "push-readwrite/")], archive=True, hard_links=True)
    assert code == 0, msg
    assert_same_tree(src, zd.data / "push-readwrite", **compare_kwargs_for(["-aH"]))


def test_resync_replaces_a_changed_big_file(zd, src, tmp_path):
    dst = tmp_path / "copy"
    copy_tree(src, dst)
    code, msg, _ = run_client([f"{dst}/", zd.url("m", "resync/")], archive=True, hard_links=True)
    assert code == 0, msg
    with open(dst / "big/odd", "r+b") as f:  # same size, new bytes in the middle and a new mtime
        f.seek(3 << 20)
        f.write(os.urandom(10_000))
    code, msg, _ = run_client([f"{dst}/", zd.url("m", "resync/")], archive=True, hard_links=True, whole_file=True)
    assert code == 0, msg
    assert_same_tree(dst, zd.data / "resync", **compare_kwargs_for(["-aH"]))


@pytest.fixture(scope="module")
def ext4_daemon(tmp_path_factory):
    root = tmp_path_factory.mktemp("ext4")
    with ext4_mount(root, 256 << 20) as mnt:
        d = ZcsyncDaemon(root / "d")
        d.write_config(f"[m]\n    path = {mnt}\n    read only = no\n    uid = root\n    gid = root\n")
        try:
            d.start()
            d.data = mnt
            yield d
        finally:
            d.stop()


@pytest.mark.parametrize("mode", ["direct", "splice"])
def test_push_onto_ext4(ext4_daemon, src, mode):
    code, msg, _ = run_client([f"{src}/", ext4_daemon.url("m", f"{mode}/")], archive=True, hard_links=True, write_mode=mode)
    assert code == 0, msg
    assert_same_tree(src, ext4_daemon.data / mode, **compare_kwargs_for(["-aH"]))
