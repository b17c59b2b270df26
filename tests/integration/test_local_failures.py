"""Bad input and interruptions: the documented exit code, a clear message, and nothing lost."""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.oracle import REPO_ROOT, differential, run_rsync, run_zcsync

ROOT = os.geteuid() == 0


def _temps(root: pathlib.Path) -> list[pathlib.Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".zcs")]


def test_missing_source_exit_23_and_message(tmp_path):
    (tmp_path / "dst").mkdir()
    zc = run_zcsync([str(tmp_path / "nope"), str(tmp_path / "dst")])
    rs = run_rsync([str(tmp_path / "nope"), str(tmp_path / "dst")], check=False)
    assert zc.returncode == rs.returncode == 23
    assert f'link_stat "{tmp_path}/nope" failed: No such file or directory (2)' in zc.stderr
    assert "(code 23)" in zc.stderr


def test_usage_error_exits_1():
    assert run_zcsync(["--no-such-option", "a", "b"]).returncode == 1
    assert run_zcsync(["--max-delete", "x", "a", "b"]).returncode == 1


def test_file_where_directory_stands_without_delete(tmp_path):
    def prepare(src: pathlib.Path, dst: pathlib.Path) -> None:
        subprocess.run(["rsync", "-a", f"{src}/", f"{dst}/"], check=True)
        victim = next(p for p in sorted(src.rglob("*")) if p.is_file() and not p.is_symlink()
                      and p.parent != src)
        rel = victim.relative_to(src)
        (dst / rel).unlink()
        (dst / rel).mkdir()
        (dst / rel / "keep").write_bytes(b"do not lose me")
        (src / "new").write_bytes(b"new")
    rs, zc = differential(tmp_path, ["-a"], seed=40, prepare=prepare, compare_kwargs={"dir_times": False})
    assert zc.returncode == 23
    assert "cannot delete non-empty directory" in zc.stderr


def test_file_where_directory_stands_with_delete(tmp_path):
    def prepare(src: pathlib.Path, dst: pathlib.Path) -> None:
        subprocess.run(["rsync", "-a", f"{src}/", f"{dst}/"], check=True)
        victim = next(p for p in sorted(src.rglob("*")) if p.is_file() and not p.is_symlink())
        rel = victim.relative_to(src)
        (dst / rel).unlink()
        (dst / rel).mkdir()
        (dst / rel / "gone").write_bytes(b"x")
    differential(tmp_path, ["-a", "--delete"], seed=41, prepare=prepare)


@pytest.mark.skipif(not ROOT, reason="needs root to enter a user namespace with unshare")
def test_unreadable_file_skipped_and_deletions_suppressed(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("unshare not installed")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "ok").write_bytes(b"fine")
    (src / "secret").write_bytes(b"cannot read me")
    (src / "secret").chmod(0)
    (dst / "extraneous").write_bytes(b"must survive: the sender had an I/O error")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    # Inside a user namespace root is an ordinary owner, so mode 000 really denies reads.
    cmd = ["unshare", "--user", "--map-user=1000", "--map-group=1000",
           sys.executable, "-m", "zcsync", "-r", "--delete", f"{src}/", f"{dst}/"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 23, result.stderr
    assert "secret" in result.stderr and "Permission denied" in result.stderr
    assert (dst / "ok").read_bytes() == b"fine"
    assert not (dst / "secret").exists()
    assert (dst / "extraneous").exists()
    assert "IO error encountered -- skipping file deletion" in result.stderr
    assert not _temps(dst)


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs, so that writes hit ENOSPC."""
    if not ROOT:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "full"
    mnt.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {result.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_filesystem_exit_11_old_file_intact(tmp_path, small_fs):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a-small").write_bytes(b"small")
    (src / "big").write_bytes(os.urandom(3 << 20))
    dst = small_fs / "dst"
    dst.mkdir()
    (dst / "big").write_bytes(b"old version")
    result = run_zcsync(["-a", f"{src}/", f"{dst}/"])
    assert result.returncode == 11, result.stderr
    assert "No space left on device" in result.stderr
    assert "big" in result.stderr
    assert (dst / "big").read_bytes() == b"old version"
    assert not _temps(dst)


def test_full_filesystem_with_small_files(tmp_path, small_fs):
    """Small files go to the commit thread: ENOSPC there still ends the run with exit 11,
    names the file, keeps the old file and leaves no temp file."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(400):  # 3.2 MB into 1 MiB
        (src / f"f{i:03d}").write_bytes(os.urandom(8192))
    (src / "z-old").write_bytes(b"new version")
    dst = small_fs / "dst"
    dst.mkdir()
    (dst / "z-old").write_bytes(b"old version")
    result = run_zcsync(["-a", f"{src}/", f"{dst}/"])
    assert result.returncode == 11, result.stderr
    assert re.search(r"Cannot write 'f\d{3}': No space left on device", result.stderr), result.stderr
    assert (dst / "z-old").read_bytes() == b"old version"
    assert not _temps(dst)
    written = [p for p in dst.iterdir() if p.name.startswith("f")]
    assert written and all(p.read_bytes() == (src / p.name).read_bytes() for p in written)


def test_sigterm_leaves_no_partial_file(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    chunk = os.urandom(1 << 20)
    for i in range(6):
        with open(src / f"big{i}", "wb") as f:
            for _ in range(256):
                f.write(chunk)
        (dst / f"big{i}").write_bytes(b"old")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "zcsync", "-a", f"{src}/", f"{dst}/"],
                            env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _temps(dst):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 20, err
    assert "(code 20)" in err
    assert not _temps(dst)
    for i in range(6):
        data = (dst / f"big{i}").read_bytes()
        assert data == b"old" or data == (src / f"big{i}").read_bytes()


def test_partial_keeps_data_out_of_the_final_name(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    with open(src / "big", "wb") as f:
        f.write(os.urandom(1 << 20) * 1024)
    (dst / "big").write_bytes(b"old")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "zcsync", "-a", "--partial", f"{src}/", f"{dst}/"],
                            env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _temps(dst):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 20, err
    assert (dst / "big").read_bytes() in (b"old", (src / "big").read_bytes())
    assert not _temps(dst)
    kept = dst / ".zcsync-partial" / "big"
    if (dst / "big").read_bytes() == b"old":
        assert kept.exists()


def test_closed_stdout_does_not_stop_the_transfer(tmp_path):
    """`zcsync -i ... | head -1`: output stops, the copy does not."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i in range(2000):
        (src / f"f{i:04d}").write_bytes(b"x")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "zcsync", "-ai", f"{src}/", f"{dst}/"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len(list(dst.iterdir())) == 2000
