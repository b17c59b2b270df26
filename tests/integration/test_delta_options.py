"""Delta transfer options against rsync: local --no-whole-file, --inplace with delta,
--block-size, --append and --append-verify, locally and over a real sshd.

Each case runs rsync and zcsync on identical trees (tests/oracle.differential) and
compares the results and the "Literal data" / "Matched data" lines of --stats: with the
same block length both tools find the same blocks, so the numbers are equal.
"""
from __future__ import annotations

import os
import pathlib
import random
import re
import shutil

import pytest

from tests.oracle import differential, run_zcsync

from .sshd import ALIAS, remote_zcsync_path
from .test_delta_transfer import NAME, OLD, _edits, prepare_pair

SIZE = 8 << 20


def _mix(data: bytes, rnd: random.Random) -> bytes:
    """A piece cut out, new data further on, edits: blocks move back, forward and stay."""
    d = _edits(data, rnd)
    n = len(d)
    return d[: n // 4] + d[n // 4 + n // 8: n // 2] + rnd.randbytes(n // 30) + d[n // 2:] + d[: n // 20]


CASES = {
    "edits": _edits,
    "insert-front": lambda d, r: r.randbytes(1 << 20) + d,
    "cut-front": lambda d, r: _edits(d, r)[len(d) // 9:],
    "mix": _mix,
    "append": lambda d, r: d + r.randbytes(len(d) // 10),
}


def _prepare(case: str, size: int = SIZE):  # type: ignore[no-untyped-def]
    return prepare_pair(case, size, CASES)


def stat_of(out: str, what: str) -> int:
    m = re.search(rf"^{what}: ([\d,]+)", out, re.M)
    assert m, f"no {what!r} in:\n{out}"
    return int(m.group(1).replace(",", ""))


def _same_stats(rs, zc, *, exact: bool = True) -> None:
    for what in ("Literal data", "Matched data"):
        theirs, ours = stat_of(rs.stdout, what), stat_of(zc.stdout, what)
        if exact:
            assert ours == theirs, f"{what}: zcsync {ours}, rsync {theirs}\n{zc.stdout}"
        else:
            assert abs(ours - theirs) <= 0.01 * max(theirs, 1) + 4096, f"{what}: zcsync {ours}, rsync {theirs}"


def _ssh(sshd, direction: str) -> dict:
    paths = ["src/", f"{ALIAS}:{{run}}/dst"] if direction == "push" else [f"{ALIAS}:{{run}}/src/", "dst"]
    return {"env": sshd.env(), "paths": paths, "zcsync_extra": ["--zcsync-path", remote_zcsync_path()]}


# -- local --no-whole-file ---------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_local_no_whole_file_like_rsync(tmp_path, case):
    rs, zc = differential(tmp_path, ["-a", "--no-W", "--stats"], seed=1, prepare=_prepare(case))
    _same_stats(rs, zc)
    assert stat_of(zc.stdout, "Matched data") > SIZE // 2


def test_local_default_stays_whole_file(tmp_path):
    rs, zc = differential(tmp_path, ["-a", "--stats"], seed=1, prepare=_prepare("edits"))
    _same_stats(rs, zc)
    assert stat_of(zc.stdout, "Matched data") == 0


# -- --inplace with delta --------------------------------------------------------------

@pytest.mark.parametrize("case", ["edits", "insert-front", "cut-front", "mix"])
def test_local_inplace_delta_like_rsync(tmp_path, case):
    rs, zc = differential(tmp_path, ["-a", "--no-W", "--inplace", "--stats"], seed=1, prepare=_prepare(case))
    _same_stats(rs, zc)


@pytest.mark.parametrize("direction", ["push", "pull"])
@pytest.mark.parametrize("case", ["edits", "cut-front", "mix"])
def test_ssh_inplace_delta_like_rsync(tmp_path, sshd, case, direction):
    rs, zc = differential(tmp_path, ["-a", "--inplace", "--stats"], seed=1, prepare=_prepare(case),
                          **_ssh(sshd, direction))
    _same_stats(rs, zc)


def test_inplace_delta_keeps_hard_links_and_inode(tmp_path):
    """--inplace writes into the file itself: other names of it see the new data."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    _prepare("mix", 2 << 20)(src, dst)
    os.link(dst / NAME, tmp_path / "other-name")
    ino = (dst / NAME).stat().st_ino
    res = run_zcsync(["-a", "--no-W", "--inplace", "--stats", f"{src}/", f"{dst}/"])
    assert res.returncode == 0, res.stderr
    assert (dst / NAME).stat().st_ino == ino
    assert (tmp_path / "other-name").read_bytes() == (src / NAME).read_bytes()
    assert stat_of(res.stdout, "Matched data") > 1 << 20


# -- --block-size --------------------------------------------------------------------

@pytest.mark.parametrize("block", ["2048", "64k", "1000"])
def test_local_block_size_like_rsync(tmp_path, block):
    rs, zc = differential(tmp_path, ["-a", "--no-W", "--stats", f"--block-size={block}"], seed=1,
                          prepare=_prepare("edits"))
    _same_stats(rs, zc)


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_ssh_block_size_like_rsync(tmp_path, sshd, direction):
    rs, zc = differential(tmp_path, ["-a", "--stats", "-B", "8192"], seed=1, prepare=_prepare("mix"),
                          **_ssh(sshd, direction))
    _same_stats(rs, zc)


@pytest.mark.parametrize("direction", ["push", "pull"])
@pytest.mark.parametrize("block", ["64", "100"])
def test_ssh_signature_bigger_than_a_frame_like_rsync(tmp_path, sshd, direction, block):
    """16 MiB in blocks of 64 or 100 bytes: a signature of 1.2 to 1.8 MB, more than one frame
    (1 MiB + 64 KiB) holds. It goes in parts, and the delta finds what rsync's finds. (Before,
    64 fell back to sending the file whole, and 100 ended the session with a traceback.)"""
    rs, zc = differential(tmp_path, ["-a", "--stats", "-B", block], seed=1, prepare=_prepare("mix", 16 << 20),
                          **_ssh(sshd, direction))
    _same_stats(rs, zc)
    assert stat_of(zc.stdout, "Matched data") > 8 << 20


@pytest.mark.parametrize(("value", "message"), [
    ("131073", "--block-size=131073 is too large (max: 128.00K)"),
    ("129k", "--block-size=129k is too large (max: 128.00K)"),
    ("abc", "--block-size=abc is invalid"),
])
def test_block_size_bounds_like_rsync(tmp_path, value, message):
    from tests.oracle import run_rsync
    (tmp_path / "a").write_text("a")
    rs = run_rsync([f"--block-size={value}", str(tmp_path / "a"), str(tmp_path / "b")], check=False)
    zc = run_zcsync([f"--block-size={value}", str(tmp_path / "a"), str(tmp_path / "b")])
    assert rs.returncode == zc.returncode == 1
    assert message in rs.stderr and message in zc.stderr
    for ok in ("0", "131072", "128k", "1.5k"):
        zc = run_zcsync([f"--block-size={ok}", str(tmp_path / "a"), str(tmp_path / "b")])
        assert zc.returncode == 0, zc.stderr


def test_block_size_reaches_the_signature(tmp_path, monkeypatch):
    from zcsync import delta
    from zcsync.transport import local
    seen = []
    real = delta.make_signature

    def spy(fd, size, block_len=None, **kw):
        seen.append(block_len)
        return real(fd, size, block_len, **kw)
    monkeypatch.setattr(local.delta, "make_signature", spy)
    src, dst = tmp_path / "src", tmp_path / "dst"
    _prepare("edits", 1 << 20)(src, dst)
    import zcsync
    result = zcsync.sync(f"{src}/", f"{dst}/", archive=True, whole_file=False, block_size=3000)
    assert result.exit_code == 0
    assert seen == [3000]
    assert (dst / NAME).read_bytes() == (src / NAME).read_bytes()


# -- --append, --append-verify -------------------------------------------------------

def _append_tree(src: pathlib.Path, dst: pathlib.Path) -> None:
    """grow: dst is a prefix; longer: dst is longer; same: same size, other time;
    wrong-head: dst is shorter with other bytes; new: missing in dst; empty: empty in dst."""
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(dst, ignore_errors=True)
    src.mkdir()
    dst.mkdir()
    rnd = random.Random(5)
    grow = rnd.randbytes(3 << 20)
    files = {
        "grow": (grow, grow[: 1 << 20]),
        "longer": (rnd.randbytes(1000), rnd.randbytes(3000)),
        "same": (b"a" * 500, b"b" * 500),
        "wrong-head": (grow, rnd.randbytes(1 << 20)),
        "new": (rnd.randbytes(70000), None),
        "empty": (rnd.randbytes(5000), b""),
    }
    for name, (data, old) in files.items():
        (src / name).write_bytes(data)
        if old is not None:
            (dst / name).write_bytes(old)
            os.utime(dst / name, (OLD, OLD))
    os.utime(src, (OLD + 7, OLD + 7))


@pytest.mark.parametrize("mode", ["--append", "--append-verify"])
def test_local_append_like_rsync(tmp_path, mode):
    rs, zc = differential(tmp_path, ["-a", mode, "--stats", "-i"], seed=1, prepare=_append_tree)
    if mode == "--append":
        _same_stats(rs, zc)  # only the tails: no verification of what was there
    else:
        # rsync redoes the mismatched file as a delta against what it appended; zcsync
        # sends it whole. Same files either way.
        assert stat_of(zc.stdout, "Matched data") == 0


@pytest.mark.parametrize("mode", ["--append", "--append-verify"])
@pytest.mark.parametrize("direction", ["push", "pull"])
def test_ssh_append_like_rsync(tmp_path, sshd, mode, direction):
    rs, zc = differential(tmp_path, ["-a", mode, "--stats"], seed=1, prepare=_append_tree,
                          **_ssh(sshd, direction))
    if mode == "--append":
        _same_stats(rs, zc)
        data = "sent" if direction == "push" else "received"
        ours, theirs = stat_of(zc.stdout, f"Total bytes {data}"), stat_of(rs.stdout, f"Total bytes {data}")
        assert ours <= 1.02 * theirs + 2048
        assert ours < (4 << 20) + 100_000  # the two 2 MiB tails and the new files, not whole files


@pytest.mark.parametrize("bad", ["--whole-file", "--partial-dir=p", "--delay-updates"])
def test_append_conflicts_like_rsync(tmp_path, bad):
    from tests.oracle import run_rsync
    (tmp_path / "a").write_text("a")
    args = ["--append", bad, str(tmp_path / "a"), str(tmp_path / "b")]
    rs, zc = run_rsync(args, check=False), run_zcsync(args)
    assert rs.returncode == zc.returncode == 1
    name = bad.split("=")[0]
    assert f"--append cannot be used with {name}" in rs.stderr
    assert f"--append cannot be used with {name}" in zc.stderr
