"""An interrupted big transfer resumes: the partial file kept by --partial (in
.zcsync-partial/) or --partial-dir is the delta basis of the next run, as in rsync."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.oracle import REPO_ROOT, run_zcsync

from .sshd import ALIAS, remote_zcsync_path
from .test_delta_options import stat_of

SIZE = 200 << 20
NAME = "big.bin"


def _temps(d: Path) -> list[Path]:
    return [p for p in d.iterdir() if p.name.endswith(".zcs")] if d.exists() else []


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize(("how", "sig", "direction"), [
    ("partial", signal.SIGKILL, "push"),
    ("partial-dir", signal.SIGTERM, "push"),
    ("partial", signal.SIGTERM, "pull"),  # the client is the receiver: it must keep the partial itself
])
def test_interrupted_transfer_resumes_from_the_partial_file(tmp_path, sshd, how, sig, direction):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    data = os.urandom(SIZE)
    (src / NAME).write_bytes(data)
    opts = ["--partial"] if how == "partial" else ["--partial-dir=.part"]
    pdir = dst / (".zcsync-partial" if how == "partial" else ".part")
    env = sshd.env()
    env["PYTHONPATH"] = str(REPO_ROOT)
    paths = [f"{src}/", f"{ALIAS}:{dst}/"] if direction == "push" else [f"{ALIAS}:{src}/", f"{dst}/"]
    argv = [sys.executable, "-m", "zcsync", "--zcsync-path", remote_zcsync_path(), "-a", *opts,
            "--bwlimit=40m", *paths]
    client = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        # Midway: the receiver's temp file has a good part of the data.
        _wait(lambda: any(t.stat().st_size > SIZE // 4 for t in _temps(dst)), 60, "the transfer to start")
        client.send_signal(sig)
        client.wait(30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode != 0
    # The server notices the closed connection and keeps what it had as a partial file.
    _wait(lambda: (pdir / NAME).exists() and not _temps(dst), 30, "the partial file")
    kept = (pdir / NAME).stat().st_size
    assert SIZE // 4 <= kept < SIZE
    assert not (dst / NAME).exists()  # no partial file under the final name
    assert (pdir / NAME).read_bytes() == data[:kept]

    res = run_zcsync(["--zcsync-path", remote_zcsync_path(), "-a", *opts, "--stats", *paths], env=env)
    assert res.returncode == 0, res.stderr
    matched = stat_of(res.stdout, "Matched data")
    literal = stat_of(res.stdout, "Literal data")
    # Everything but the last partial block of what was kept is matched.
    assert kept - (128 << 10) <= matched <= kept, (matched, kept)
    assert matched + literal == SIZE
    data_dir = "sent" if direction == "push" else "received"
    assert stat_of(res.stdout, f"Total bytes {data_dir}") < SIZE - kept + (4 << 20)
    assert (dst / NAME).read_bytes() == data
    assert not (pdir / NAME).exists() and not pdir.exists()  # spent, and the empty dir removed


@pytest.mark.parametrize("whole", [False, True])
def test_local_partial_file_is_the_basis(tmp_path, whole):
    """A local --no-whole-file run rebuilds from a kept partial file rather than the old
    destination; with whole files (the local default) the partial is just dropped."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (dst / ".zcsync-partial").mkdir(parents=True)
    src.mkdir()
    data = os.urandom(8 << 20)
    (src / NAME).write_bytes(data)
    (dst / NAME).write_bytes(os.urandom(4 << 20))  # the old version: useless as a basis
    os.utime(dst / NAME, (1_500_000_000,) * 2)
    (dst / ".zcsync-partial" / NAME).write_bytes(data[: 5 << 20])
    res = run_zcsync(["-a", "--partial", "--stats", "-W" if whole else "--no-W", f"{src}/", f"{dst}/"])
    assert res.returncode == 0, res.stderr
    matched = stat_of(res.stdout, "Matched data")
    if whole:
        assert matched == 0
    else:
        assert (5 << 20) - (128 << 10) <= matched <= 5 << 20
    assert (dst / NAME).read_bytes() == data
    assert not (dst / ".zcsync-partial").exists()
