"""-z / --compress-choice / --skip-compress and --bwlimit over a real sshd, push and pull.

Trees are compared with rsync -z's result on the same trees; wire bytes come from
--stats ("Total bytes sent" in a push, "Total bytes received" in a pull: what the
sending side wrote); --bwlimit is timed.
"""
from __future__ import annotations

import os
import pathlib
import re
import time

import pytest

from tests.oracle import differential, output_lines, run_zcsync

from .sshd import ALIAS, direction_paths, remote_zcsync_path

EXTRA = ["--zcsync-path", remote_zcsync_path()]
TEXT_LINE = b"%08d compressible log line: GET /index.html HTTP/1.1 200 OK bytes=%d\n"


def text(n: int) -> bytes:
    """About n bytes of log-like text (compresses well, but not to nothing)."""
    out = b"".join(TEXT_LINE % (i, i * 7919 % 100_000) for i in range(n // 70 + 1))
    return out[:n]


def _same_items(rs, zc) -> None:
    want, got = output_lines(rs.stdout), output_lines(zc.stdout)
    assert want == got, f"only rsync: {sorted(set(want) - set(got))}\nonly zcsync: {sorted(set(got) - set(want))}"


# -- same trees as rsync -z -------------------------------------------------------

@pytest.mark.parametrize("direction", ["push", "pull"])
@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
def test_compressed_transfer_matches_rsync(tmp_path, sshd, codec, direction):
    def prepare(src: pathlib.Path, dst: pathlib.Path) -> None:
        (src / "log.txt").write_bytes(text(3 << 20))  # several compressed frames
        (src / "noise.bin").write_bytes(os.urandom(1 << 20) + text(100_000))  # raw, then compressed
        (src / "packed.gz").write_bytes(text(200_000))  # on the skip list: sent as it is
        os.utime(src, ns=(1_600_000_000_000_000_000,) * 2)
    rs, zc = differential(tmp_path, ["-a", "-i", "-z", f"--compress-choice={codec}"], seed=11,
                          prepare=prepare, env=sshd.env(), paths=direction_paths(direction), zcsync_extra=EXTRA)
    _same_items(rs, zc)


def test_compressed_resync_via_rsh(tmp_path, sshd):
    rs, zc = differential(tmp_path, ["-a", "-i", "-z", "--delete", "-e", sshd.rsh], seed=12, mutate=True,
                          env=sshd.env(), paths=direction_paths("push"), zcsync_extra=EXTRA)
    _same_items(rs, zc)


def test_receiver_failing_early_ends_with_its_exit_code(tmp_path, sshd):
    """The receiving server stops before any data (no parent for dst): rsync's code 11, not a protocol error."""
    rs, zc = differential(tmp_path, ["-a", "-z"], seed=13, env=sshd.env(),
                          paths=["src/", f"{ALIAS}:{{run}}/missing/parent/dst"], zcsync_extra=EXTRA)
    assert zc.returncode == 11 and "Protocol error" not in zc.stderr, zc.stderr


# -- bytes on the wire ----------------------------------------------------------------

def _wire_bytes(tmp_path: pathlib.Path, sshd, direction: str, *options: str, name: str = "") -> int:
    """Run one zcsync --stats transfer of tmp_path/src; what the sending side wrote; checks the copy."""
    dst = tmp_path / f"dst-{direction}-{name or '-'.join(options) or 'plain'}"
    src = f"{ALIAS}:{tmp_path}/src/" if direction == "pull" else f"{tmp_path}/src/"
    dest = str(dst) if direction == "pull" else f"{ALIAS}:{dst}"
    result = run_zcsync([*EXTRA, "-a", "--stats", *options, src, dest], env=sshd.env())
    assert result.returncode == 0, result.stderr
    for f in (tmp_path / "src").iterdir():
        assert (dst / f.name).read_bytes() == f.read_bytes(), f.name
    key = "sent" if direction == "push" else "received"
    match = re.search(rf"^Total bytes {key}: ([\d,]+)$", result.stdout, re.MULTILINE)
    assert match, result.stdout
    return int(match.group(1).replace(",", ""))


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_compression_saves_bytes_on_text(tmp_path, sshd, direction):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "access.log").write_bytes(text(4 << 20))
    plain = _wire_bytes(tmp_path, sshd, direction)
    zstd = _wire_bytes(tmp_path, sshd, direction, "-z")  # zstd is the default choice
    lz4 = _wire_bytes(tmp_path, sshd, direction, "--compress-choice=lz4")  # implies -z, as in rsync
    none = _wire_bytes(tmp_path, sshd, direction, "-z", "--zc=none")
    assert plain > 4 << 20
    assert zstd < plain / 5 and lz4 < plain / 3, (plain, zstd, lz4)
    assert zstd < lz4
    assert abs(none - plain) < 64  # only the HELLO's offer differs


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_compress_level_reaches_the_sending_side(tmp_path, sshd, direction):
    """--compress-level is zstd's level on whichever side compresses (the server in a pull)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "access.log").write_bytes(text(4 << 20))
    fast = _wire_bytes(tmp_path, sshd, direction, "-z", "--compress-level=-50")
    default = _wire_bytes(tmp_path, sshd, direction, "-z")
    best = _wire_bytes(tmp_path, sshd, direction, "-z", "--zl=19")
    assert best < default < fast, (best, default, fast)
    bad = run_zcsync([*EXTRA, "-z", "--compress-level=23", f"{tmp_path}/src/", f"{ALIAS}:{tmp_path}/bad"],
                     env=sshd.env())
    assert bad.returncode == 1 and "--compress-level=23 is out of range" in bad.stderr


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_compression_costs_nothing_on_random_data(tmp_path, sshd, direction):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "random.bin").write_bytes(os.urandom(3 << 20))
    plain = _wire_bytes(tmp_path, sshd, direction)
    zstd = _wire_bytes(tmp_path, sshd, direction, "-z")
    assert zstd <= plain + 64, (plain, zstd)  # chunks that do not shrink go as they are


def test_skip_compress_list(tmp_path, sshd):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "looks-packed.GZ").write_bytes(text(2 << 20))
    plain = _wire_bytes(tmp_path, sshd, "push")
    default = _wire_bytes(tmp_path, sshd, "push", "-z")  # gz is on rsync's default list
    replaced = _wire_bytes(tmp_path, sshd, "push", "-z", "--skip-compress=txt/mp[34]", name="txt")
    emptied = _wire_bytes(tmp_path, sshd, "pull", "-z", "--skip-compress=", name="empty")  # server-side sender
    plain_pull = _wire_bytes(tmp_path, sshd, "pull", "-z", "--skip-compress=[gx]z", name="gz")
    assert abs(default - plain) < 64
    assert replaced < plain / 5 and emptied < plain / 5
    assert plain_pull > 2 << 20


# -- --bwlimit ----------------------------------------------------------------------

@pytest.mark.parametrize("direction", ["push", "pull"])
def test_bwlimit(tmp_path, sshd, direction):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "six.bin").write_bytes(os.urandom(6 << 20))

    def timed(*options: str, name: str) -> float:
        start = time.monotonic()
        _wire_bytes(tmp_path, sshd, direction, *options, name=name)
        return time.monotonic() - start

    free = timed(name="free")
    limited = timed("--bwlimit=2000", name="limited")  # KiB/s: 6 MiB take 3.07 s at the rate
    assert limited >= 2.5, limited
    assert free < limited - 1.5, (free, limited)
