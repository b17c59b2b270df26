"""A real ext4 filesystem for tests: an image file mounted on a loop device (root only)."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def ext4_mount(workdir: Path, size: int = 64 << 20) -> Iterator[Path]:
    """Mount a fresh ext4 image of `size` bytes below workdir; skips where that is impossible."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("needs root and mkfs.ext4 to mount an ext4 loop image")
    image, mnt = workdir / "ext4.img", workdir / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    if subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a loop device here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
