"""Through plain pipes (an -e command that runs the server locally), many small files must not
deadlock: the receiver reads and sends at once (items, problems), so it must never block on a
write while its peer is blocked writing to it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.oracle import REPO_ROOT
from tests.treecmp import assert_same_tree

FAKE_RSH = """#!/bin/sh
# drop "-l user" and the host, run the remote command here
while [ "$1" = "-l" ]; do shift 2; done
shift
exec sh -c "$1"
"""


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_many_small_files_itemized_through_pipes(tmp_path, direction):
    rsh = tmp_path / "rsh"
    rsh.write_text(FAKE_RSH)
    rsh.chmod(0o755)
    src = tmp_path / "src"
    for d in range(40):
        sub = src / f"d{d:02d}"
        sub.mkdir(parents=True)
        for f in range(250):
            (sub / f"f{f:03d}").write_bytes(b"x" * (f % 7))
    dst = tmp_path / "dst"
    remote = f"env PYTHONPATH={REPO_ROOT} {sys.executable} -m zcsync"
    paths = [f"{src}/", f"localhost:{dst}/"] if direction == "push" else [f"localhost:{src}/", f"{dst}/"]
    result = subprocess.run([sys.executable, "-m", "zcsync", "-ai", "-e", str(rsh), "--zcsync-path", remote,
                             *paths], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("f+++++++++") == 10_000
    assert_same_tree(src, dst)


def _low_fd_limit() -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


@pytest.mark.parametrize("direction", ["local", "push", "pull"])
def test_many_directories_under_a_low_fd_limit(tmp_path, direction):
    """Directory fds are cached, not kept: 1200 directories fit in 256 descriptors."""
    rsh = tmp_path / "rsh"
    rsh.write_text(FAKE_RSH)
    rsh.chmod(0o755)
    src = tmp_path / "src"
    for d in range(1200):
        sub = src / f"d{d:04d}"
        sub.mkdir(parents=True)
        (sub / "f").write_bytes(b"x")
    dst = tmp_path / "dst"
    remote = f"env PYTHONPATH={REPO_ROOT} {sys.executable} -m zcsync"
    paths = {"local": [f"{src}/", f"{dst}/"], "push": [f"{src}/", f"localhost:{dst}/"],
             "pull": [f"localhost:{src}/", f"{dst}/"]}[direction]
    result = subprocess.run([sys.executable, "-m", "zcsync", "-a", "-e", str(rsh), "--zcsync-path", remote,
                             *paths], capture_output=True, text=True, timeout=120, preexec_fn=_low_fd_limit,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_tree(src, dst)
