"""--stop-after / --stop-at: the run ends at the limit with exit 30, as rsync's, and keeps
nothing half-written under a final name. The limits are in minutes on the command line, so
these tests give the run a limit seconds away through Options.stop_at (what the CLI computes)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from zcsync.api import run_paths
from zcsync.errors import Timeout, UsageError
from zcsync.options import Options
from zcsync.writer import PARTIAL_DIR

from .sshd import ALIAS, remote_zcsync_path


def _tree(root: Path) -> None:
    (root / "src").mkdir()
    (root / "src" / "a").write_text("small\n")
    (root / "src" / "big").write_bytes(os.urandom(8 << 20))


@pytest.mark.parametrize("direction", ["push", "pull"])
@pytest.mark.parametrize("partial", [False, True], ids=["plain", "partial"])
def test_the_run_stops_at_the_limit(tmp_path, sshd, monkeypatch, direction, partial):
    for key, value in sshd.env().items():
        monkeypatch.setenv(key, value)
    _tree(tmp_path)
    (tmp_path / "dst").mkdir()
    src, dst = f"{tmp_path}/src/", f"{tmp_path}/dst/"
    paths = [src, f"{ALIAS}:{dst}"] if direction == "push" else [f"{ALIAS}:{src}", dst]
    opts = Options(recursive=True, times=True, bwlimit=1 << 20, partial=partial,  # 8 MiB take ~8 s
                   zcsync_path=remote_zcsync_path(), stop_at=int(time.time()) + 2)
    started = time.monotonic()
    with pytest.raises(Timeout) as stopped:
        run_paths(paths, opts)
    assert stopped.value.exit_code == 30 and "stopping at requested limit" in stopped.value.message
    assert time.monotonic() - started < 6
    deadline = time.monotonic() + 15  # a pushed-to server notices the closed connection, then cleans up
    while time.monotonic() < deadline:
        names = sorted(p.name for p in (tmp_path / "dst").iterdir())
        if all(not n.startswith(".") or n == PARTIAL_DIR for n in names):
            break
        time.sleep(0.2)
    assert (tmp_path / "dst" / "a").read_text() == "small\n"  # finished before the limit: kept
    if partial:  # the part that arrived is kept, in the partial dir (rsync: under the final name)
        assert 0 < (tmp_path / "dst" / PARTIAL_DIR / "big").stat().st_size < 8 << 20
        assert names == sorted(["a", PARTIAL_DIR])
    else:
        assert names == ["a"], names  # no temp file, nothing under the final name


def test_the_limit_needs_the_main_thread(tmp_path):
    import threading
    _tree(tmp_path)
    caught = []

    def run() -> None:
        try:
            run_paths([f"{tmp_path}/src/", f"{tmp_path}/dst/"], Options(recursive=True, stop_at=int(time.time()) + 60))
        except UsageError as exc:
            caught.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert caught and "main thread" in caught[0].message
    assert not (tmp_path / "dst").exists()


def test_no_limit_left_behind(tmp_path):
    """After a run with a limit, no timer is armed and SIGALRM is back as it was."""
    import signal
    _tree(tmp_path)
    before = signal.getsignal(signal.SIGALRM)
    run_paths([f"{tmp_path}/src/", f"{tmp_path}/dst/"], Options(recursive=True, stop_at=int(time.time()) + 60))
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is before
    assert (tmp_path / "dst" / "big").stat().st_size == 8 << 20
