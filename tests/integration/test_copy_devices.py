"""--copy-devices: a device on the sending side is sent as a regular file of its contents,
as rsync sends it (locally and over ssh, both ways); loop devices stand in for disks."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.oracle import run_rsync, run_zcsync

from .sshd import ALIAS, remote_zcsync_path


@pytest.fixture
def devices(tmp_path):
    """src/ with two block devices (loop devices over images of random bytes, 3 MiB and
    100 KiB: the big and the small-file path), a character device without an end
    (/dev/null's numbers) and a regular file, all dated 2020."""
    if os.geteuid() != 0 or not shutil.which("losetup"):
        pytest.skip("needs root and losetup for loop devices")
    src = tmp_path / "src"
    src.mkdir()
    images, loops = {}, []
    try:
        for name, size in (("disk", 3 << 20), ("small", 100 << 10)):
            image = tmp_path / f"{name}.img"
            image.write_bytes(os.urandom(size))
            proc = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
            if proc.returncode:
                pytest.skip(f"cannot set up a loop device: {proc.stderr.strip()}")
            loop = proc.stdout.strip()
            loops.append(loop)
            os.mknod(src / name, 0o640 | 0o060000, os.stat(loop).st_rdev)
            try:
                os.close(os.open(src / name, os.O_RDONLY))
            except OSError as exc:
                pytest.skip(f"device nodes cannot be opened under {tmp_path} (mounted nodev?): {exc}")
            images[name] = image.read_bytes()
        os.mknod(src / "null", 0o666 | 0o020000, os.makedev(1, 3))
        (src / "plain").write_bytes(b"plain file")
        for p in (*src.iterdir(), src):
            os.utime(p, (1_577_836_800, 1_577_836_800), follow_symlinks=False)
        yield src, images
    finally:
        for loop in loops:
            subprocess.run(["losetup", "-d", loop], capture_output=True)


def _items(out: str) -> list[str]:
    return sorted(line for line in out.splitlines() if line and not line.startswith("created directory"))


def _check(dst: Path, images: dict[str, bytes]) -> None:
    for name, data in images.items():
        st = os.lstat(dst / name)
        assert (st.st_mode & 0o170000, st.st_mode & 0o7777) == (0o100000, 0o640)
        assert (dst / name).read_bytes() == data
        # rsync lists a device with the time of the listing: a device's own time says nothing
        # of its contents, so the next run copies it again.
        assert abs(st.st_mtime - time.time()) < 60
    assert (dst / "null").read_bytes() == b"" and (dst / "null").is_file()
    assert (dst / "plain").read_bytes() == b"plain file" and os.lstat(dst / "plain").st_mtime == 1_577_836_800


def test_copy_devices_local_like_rsync(tmp_path, devices):
    src, images = devices
    rs = run_rsync(["-ai", "--copy-devices", "src/", "r/"], cwd=tmp_path)
    zc = run_zcsync(["-ai", "--copy-devices", "src/", "z/"], cwd=tmp_path)
    assert rs.returncode == zc.returncode == 0, zc.stderr
    assert _items(zc.stdout) == _items(rs.stdout)
    _check(tmp_path / "z", images)
    _check(tmp_path / "r", images)
    # Without the option a device stays a device (-a has -D), as in rsync.
    zc = run_zcsync(["-a", "src/", "z2/"], cwd=tmp_path)
    assert zc.returncode == 0 and (tmp_path / "z2" / "disk").is_block_device()
    # -c compares a device's contents too.
    time.sleep(1.1)
    rs = run_rsync(["-aic", "--copy-devices", "src/", "r/"], cwd=tmp_path)
    zc = run_zcsync(["-aic", "--copy-devices", "src/", "z/"], cwd=tmp_path)
    assert _items(zc.stdout) == _items(rs.stdout)


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_copy_devices_over_ssh(tmp_path, sshd, devices, direction):
    src, images = devices
    dst = tmp_path / "dst"
    paths = ["src/", f"{ALIAS}:{dst}/"] if direction == "push" else [f"{ALIAS}:{src}/", "dst/"]
    zc = run_zcsync(["-ai", "--copy-devices", "--zcsync-path", remote_zcsync_path(), *paths], cwd=tmp_path,
                    env=sshd.env())
    assert zc.returncode == 0, zc.stderr
    _check(dst, images)
