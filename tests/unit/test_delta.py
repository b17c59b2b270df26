"""Delta engine: sums, signatures, scan vs the Python model, patching, hostile input."""
from __future__ import annotations

import errno
import io
import os
import random
import struct
import subprocess
import sys
import textwrap
import time
from array import array
from pathlib import Path

import pytest
import xxhash

from zcsync.delta import (
    LITERAL,
    MATCH,
    DeltaError,
    Signature,
    SignatureError,
    SourceChanged,
    apply_delta,
    block_length,
    delta_ops,
    delta_ops_fd,
    iter_ops,
    literal_chunks,
    make_signature,
    op_stats,
    signature_of,
    strong_length,
    validate,
)
from zcsync.delta import patch as patch_mod
from zcsync.delta import reference as ref
from zcsync.errors import ProtocolError

_rolling = pytest.importorskip("zcsync.delta._rolling", reason="C extension not built")

REPO = Path(__file__).resolve().parents[2]


def rebuild(tmp_path: Path, basis: bytes, src: bytes, sig: Signature) -> bytes:
    """Scan src against sig, then rebuild it from the basis file and literals."""
    ops = delta_ops(src, sig)
    lits = io.BytesIO(b"".join(bytes(c) for c in literal_chunks(src, ops)))
    bpath, opath = tmp_path / "basis", tmp_path / "out"
    bpath.write_bytes(basis)
    bfd = os.open(bpath, os.O_RDONLY)
    ofd = os.open(opath, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        res = apply_delta(bfd, ops, lits.read, ofd, sig.block_len, sig.size,
                          expected_size=len(src))
    finally:
        os.close(bfd)
        os.close(ofd)
    assert res == op_stats(ops, sig.block_len, sig.size)
    assert res.matched_bytes + res.literal_bytes == len(src)
    return opath.read_bytes()


# --------------------------------------------------------------- sums


@pytest.mark.parametrize("block_len", [1, 2, 3, 7, 8, 64, 700, 4096])
def test_weak_sums_match_reference(block_len: int) -> None:
    rnd = random.Random(block_len)
    for n in [0, 1, block_len - 1, block_len, block_len + 1, 3 * block_len + 5, 5000]:
        if n < 0:
            continue
        data = rnd.randbytes(n)
        assert _rolling.weak_sums(data, block_len) == ref.weak_sums(data, block_len)


def test_weak_sum_known_values() -> None:
    # s1 = 1+2+3 = 6, s2 = 3*1 + 2*2 + 1*3 = 10
    assert ref.weak_sum(b"\x01\x02\x03") == 6 | (10 << 16)
    assert _rolling.weak_sums(b"\x01\x02\x03", 3) == struct.pack("<I", 6 | (10 << 16))
    # all 0xff bytes: only the low 16 bits of each sum survive
    block = b"\xff" * 1000
    assert _rolling.weak_sums(block, 1000) == struct.pack("<I", ref.weak_sum(block))


def test_weak_sums_accept_buffer_objects(tmp_path: Path) -> None:
    import mmap

    data = random.Random(3).randbytes(10_000)
    expect = ref.weak_sums(data, 700)
    assert _rolling.weak_sums(bytearray(data), 700) == expect
    assert _rolling.weak_sums(memoryview(data), 700) == expect
    p = tmp_path / "f"
    p.write_bytes(data)
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert _rolling.weak_sums(m, 700) == expect


@pytest.mark.parametrize("strong_len", [1, 2, 5, 8, 16])
@pytest.mark.parametrize("seed", [0, 1, 2**64 - 1])
def test_strong_sums_equal_python_xxh3(strong_len: int, seed: int) -> None:
    data = random.Random(strong_len).randbytes(3000)
    weak, strong = _rolling.block_sums(data, 256, strong_len, seed)
    assert weak == ref.weak_sums(data, 256)
    expect = b"".join(
        xxhash.xxh3_128_digest(data[o : o + 256], seed=seed)[:strong_len]
        for o in range(0, len(data), 256)
    )
    assert strong == expect


def test_sums_reject_bad_arguments() -> None:
    with pytest.raises(ValueError):
        _rolling.weak_sums(b"abc", 0)
    with pytest.raises(ValueError):
        _rolling.weak_sums(b"abc", (1 << 17) + 1)
    with pytest.raises(ValueError):
        _rolling.block_sums(b"abc", 4, 17)
    with pytest.raises(ValueError):
        _rolling.block_sums(b"abc", 4, 0)
    with pytest.raises(ValueError):
        _rolling.block_sums(b"abc", 4, 4, -1)
    with pytest.raises(ValueError):
        _rolling.block_sums(b"abc", 4, 4, 2**64)
    with pytest.raises(TypeError):
        _rolling.weak_sums("text", 4)


# ------------------------------------------------------ sizes (rsync's rules)


def test_block_length_follows_rsync() -> None:
    assert block_length(0) == 700
    assert block_length(700 * 700) == 700
    assert block_length(700 * 700 + 1) == 700
    assert block_length(1_000_000) == 1000
    assert block_length(1_000_000 - 1) == 992
    assert block_length(1 << 30) == 32768
    assert block_length((1 << 34) - 1) == (1 << 17) - 8
    assert block_length(1 << 34) == 1 << 17
    assert block_length(1 << 50) == 1 << 17
    for size in random.Random(5).sample(range(490_001, 1 << 34), 200):
        b = block_length(size)
        assert b % 8 == 0 and 700 <= b <= 1 << 17
        assert b * b <= size < (b + 8) ** 2 or b == 700


def test_strong_length_follows_rsync() -> None:
    assert strong_length(0, 700) == 2
    assert strong_length(1_000_000, 1000) == 2
    assert strong_length(1 << 30, 32768) == 3
    assert strong_length(1 << 40, 1 << 17) == 6
    assert strong_length(1 << 62, 1 << 17) == 11
    # tiny blocks of a huge file need long sums
    assert strong_length(1 << 62, 1) == 13
    prev = 0
    for e in range(0, 63):
        s = strong_length(1 << e, block_length(1 << e))
        assert 2 <= s <= 16 and s >= prev
        prev = s


# ---------------------------------------------------------- signatures


def test_make_signature_matches_reference(tmp_path: Path) -> None:
    data = random.Random(7).randbytes(1_234_567)
    p = tmp_path / "basis"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        sig = make_signature(fd, len(data))
        sig_seeded = make_signature(fd, len(data), 4096, strong_len=8, seed=99)
    finally:
        os.close(fd)
    assert sig.block_len == block_length(len(data)) == 1104
    assert sig.strong_len == strong_length(len(data), 1104)
    assert sig.count == -(-len(data) // 1104)
    assert sig == ref.signature(data, sig.block_len, sig.strong_len)
    assert sig_seeded == ref.signature(data, 4096, 8, 99)
    assert sig.last_len == len(data) - (sig.count - 1) * 1104
    validate(sig, max_blocks=sig.count)


def test_make_signature_empty_and_short_file(tmp_path: Path) -> None:
    p = tmp_path / "basis"
    p.write_bytes(b"abc")
    fd = os.open(p, os.O_RDONLY)
    try:
        empty = make_signature(fd, 0)
        assert (empty.count, empty.weak, empty.strong) == (0, b"", b"")
        assert make_signature(fd, 3) == ref.signature(b"abc", 700, 2)
        with pytest.raises(SourceChanged):
            make_signature(fd, 4)
    finally:
        os.close(fd)


def _good_sig() -> Signature:
    return signature_of(random.Random(1).randbytes(10_000), 1024, 4)


@pytest.mark.parametrize(
    "change",
    [
        {"block_len": 0},
        {"block_len": 63},
        {"block_len": (1 << 17) + 8},
        {"strong_len": 1},
        {"strong_len": 17},
        {"count": 11},
        {"count": 9},
        {"count": -1},
        {"size": 10_240 + 1},
        {"size": 9_216},
        {"size": -5},
        {"weak": b"\0" * 39},
        {"weak": b"\0" * 44},
        {"strong": b"\0" * 39},
        {"strong": b"\0" * 41},
        {"seed": -1},
        {"seed": 1 << 64},
        {"block_len": 1024.0},
        {"weak": bytearray(40)},
        {"count": True},
    ],
)
def test_validate_rejects_malformed(change: dict) -> None:
    good = _good_sig()
    validate(good, max_blocks=10)
    fields = {f: getattr(good, f) for f in ("block_len", "strong_len", "count", "size", "weak", "strong", "seed")}
    fields.update(change)
    bad = Signature(**fields)
    with pytest.raises(SignatureError) as ei:
        validate(bad, max_blocks=1000)
    assert isinstance(ei.value, ProtocolError) and ei.value.exit_code == 2


def test_validate_enforces_max_blocks() -> None:
    good = _good_sig()
    with pytest.raises(SignatureError, match="block count"):
        validate(good, max_blocks=9)


@pytest.mark.parametrize(
    "args",
    [
        # (block_len, weak, strong, strong_len, basis_size)
        (1024, b"\0" * 39, b"\0" * 40, 4, 10_000),     # weak not a multiple of 4
        (1024, b"\0" * 40, b"\0" * 36, 4, 10_000),     # strong too short
        (1024, b"\0" * 40, b"\0" * 44, 4, 10_000),     # strong too long
        (1024, b"\0" * 40, b"\0" * 40, 4, 100_000),    # count does not fit size
        (1024, b"\0" * 40, b"\0" * 40, 4, 9_216),      # count does not fit size
        (1024, b"\0" * 40, b"\0" * 40, 4, -1),
        (0, b"\0" * 40, b"\0" * 40, 4, 10_000),
        (1 << 20, b"\0" * 4, b"\0" * 4, 4, 10_000),
        (1024, b"\0" * 40, b"\0" * 0, 0, 10_000),
        (1024, b"\0" * 40, b"\0" * 170, 17, 10_000),
        (1024, b"", b"", 4, 1),
    ],
)
def test_c_scan_checks_lengths_itself(args: tuple) -> None:
    block_len, weak, strong, strong_len, size = args
    with pytest.raises(ValueError):
        _rolling.scan(b"x" * 5000, block_len, weak, strong, strong_len, size)


def test_c_scan_checks_other_arguments() -> None:
    sig = _good_sig()
    with pytest.raises(ValueError):
        _rolling.scan(b"x", sig.block_len, sig.weak, sig.strong, sig.strong_len, sig.size, max_chain=0)
    with pytest.raises(ValueError):
        _rolling.scan(b"x", sig.block_len, sig.weak, sig.strong, sig.strong_len, sig.size, seed=-3)


def test_scan_of_truncated_tables_never_reads_past_them() -> None:
    # A peer claims a huge basis with tiny tables: rejected before any read.
    for size in (10_000_000_000, 2**62):
        with pytest.raises(ValueError):
            _rolling.scan(b"a" * 100, 1 << 17, b"\0" * 4, b"\0" * 2, 2, size)


# -------------------------------------------------------------- scanning


def _edits(basis: bytes, rnd: random.Random) -> bytes:
    parts = []
    pos = 0
    while pos < len(basis):
        step = rnd.randint(1, 3000)
        chunk = basis[pos : pos + step]
        r = rnd.random()
        if r < 0.15:
            chunk = rnd.randbytes(rnd.randint(1, 200)) + chunk     # insert
        elif r < 0.3:
            chunk = chunk[rnd.randint(0, len(chunk)) :]            # delete
        elif r < 0.4:
            chunk = rnd.randbytes(len(chunk))                       # overwrite
        elif r < 0.5:
            chunk = chunk + basis[: rnd.randint(0, 2000)]           # repeat
        parts.append(chunk)
        pos += step
    return b"".join(parts)


@pytest.mark.parametrize("seed", range(12))
def test_scan_equals_reference(seed: int, tmp_path: Path) -> None:
    rnd = random.Random(seed)
    basis = rnd.randbytes(rnd.randint(0, 40_000))
    src = _edits(basis, rnd)
    L = rnd.choice([8, 64, 128, 700, 1000])
    sig = signature_of(basis, L, rnd.choice([2, 4, 16]), seed=rnd.getrandbits(64))
    assert list(iter_ops(delta_ops(src, sig))) == ref.delta_ops(src, sig)
    assert rebuild(tmp_path, basis, src, sig) == src


def test_identical_file_is_one_run() -> None:
    data = random.Random(2).randbytes(100_000)
    sig = signature_of(data, 1000, 4)
    assert list(delta_ops(data, sig)) == [MATCH, 0, 100]
    assert list(delta_ops(b"", sig)) == []


def test_unrelated_file_is_one_literal() -> None:
    rnd = random.Random(4)
    sig = signature_of(rnd.randbytes(50_000), 700, 4)
    src = rnd.randbytes(80_000)
    assert list(delta_ops(src, sig)) == [LITERAL, 0, 80_000]


def test_empty_basis_gives_literal() -> None:
    sig = signature_of(b"", 700, 2)
    assert sig.count == 0
    assert list(delta_ops(b"hello", sig)) == [LITERAL, 0, 5]


def test_shifted_blocks_found_at_any_offset() -> None:
    rnd = random.Random(6)
    basis = rnd.randbytes(64 * 100)
    src = b"xyz" + basis[640:1280] + b"q" + basis[:640]
    sig = signature_of(basis, 64, 4)
    assert list(iter_ops(delta_ops(src, sig))) == [
        (LITERAL, 0, 3), (MATCH, 10, 10), (LITERAL, 643, 1), (MATCH, 0, 10),
    ]


def test_short_last_block_matches_only_at_end() -> None:
    rnd = random.Random(8)
    basis = rnd.randbytes(1000)          # blocks of 700 and 300
    sig = signature_of(basis, 700, 4)
    tail = basis[700:]
    assert list(iter_ops(delta_ops(b"ab" + tail, sig))) == [(LITERAL, 0, 2), (MATCH, 1, 1)]
    assert list(iter_ops(delta_ops(tail + b"ab", sig))) == [(LITERAL, 0, 302)]
    assert list(iter_ops(delta_ops(basis, sig))) == [(MATCH, 0, 2)]
    # source shorter than one block
    small = signature_of(b"hello", 700, 4)
    assert list(iter_ops(delta_ops(b"say hello", small))) == [(LITERAL, 0, 4), (MATCH, 0, 1)]


def test_repeated_block_prefers_the_following_one() -> None:
    # Every block is identical: the run must follow the basis order so it
    # coalesces into one op instead of matching block 0 every time.
    basis = b"A" * 64 * 50
    sig = signature_of(basis, 64, 4)
    assert list(delta_ops(basis, sig)) == [MATCH, 0, 50]
    assert list(iter_ops(delta_ops(basis * 2, sig))) == [(MATCH, 0, 50), (MATCH, 0, 50)]


def test_scan_through_mmap_fd(tmp_path: Path) -> None:
    rnd = random.Random(9)
    basis = rnd.randbytes(300_000)
    src = basis[:100_000] + b"new" + basis[100_000:]
    p = tmp_path / "src"
    p.write_bytes(src)
    sig = signature_of(basis, block_length(len(basis)), 4)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert delta_ops_fd(fd, len(src), sig) == delta_ops(src, sig)
        assert delta_ops_fd(fd, 0, sig) == array("q")
    finally:
        os.close(fd)


def test_scan_releases_the_gil() -> None:
    import threading

    rnd = random.Random(10)
    sig = signature_of(rnd.randbytes(1 << 20), 1024, 4)
    src = rnd.randbytes(64 << 20)
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    t0 = time.perf_counter()
    delta_ops(src, sig)
    took = time.perf_counter() - t0
    done.set()
    t.join()
    # a thread that held the GIL for the whole scan would let count() run ~once
    assert ticks >= min(5, int(took / 0.005))


# ----------------------------------------------------------- adversarial


def _collision_blocks(n: int, L: int, rnd: random.Random) -> list[bytes]:
    """n distinct blocks with one weak sum: +1,-1 at i,i+1 and -1,+1 at j,j+1
    keep both s1 and s2."""
    base = bytearray(rnd.randbytes(L))
    for i in range(L):
        base[i] = 64 + base[i] % 128
    out, seen = [], set()
    while len(out) < n:
        b = bytearray(base)
        for _ in range(3):
            i, j = rnd.sample(range(L - 1), 2)
            b[i] += 1
            b[i + 1] -= 1
            b[j] -= 1
            b[j + 1] += 1
        if bytes(b) not in seen:
            seen.add(bytes(b))
            out.append(bytes(b))
    return out


def test_crafted_weak_collisions_are_real() -> None:
    blocks = _collision_blocks(50, 64, random.Random(1))
    assert len({ref.weak_sum(b) for b in blocks}) == 1
    assert len(set(blocks)) == 50


def test_equal_weak_sum_chains_stay_linear() -> None:
    rnd = random.Random(11)
    L = 64
    blocks = _collision_blocks(10_000, L, rnd)
    basis = b"".join(blocks)
    sig = signature_of(basis, L, 8)
    w = struct.unpack("<I", sig.weak[:4])[0]
    assert sig.weak == struct.pack("<I", w) * 10_000

    # 1) the basis itself, shuffled: each block sits deep in one 10k chain
    order = list(range(10_000))
    rnd.shuffle(order)
    src = b"".join(blocks[i] for i in order)
    t0 = time.perf_counter()
    ops = delta_ops(src, sig)
    assert time.perf_counter() - t0 < 5
    # the chain cap means most are not found, but what is found is right
    assert ref.apply_ops(basis, list(iter_ops(ops)), src, L) == src
    # 2) the basis in order: the "next block" preference finds all of it
    t0 = time.perf_counter()
    assert list(delta_ops(basis * 3, sig)) == [MATCH, 0, 10_000] * 3
    assert time.perf_counter() - t0 < 5


def test_identical_blocks_basis_is_fast() -> None:
    basis = bytes(range(256)) * 4 * 10_000     # 10k identical 1 KiB blocks
    sig = signature_of(basis, 1024, 4)
    src = basis[:5_000_000] + b"!" + basis[:3_000_000]
    t0 = time.perf_counter()
    ops = delta_ops(src, sig)
    assert time.perf_counter() - t0 < 5
    assert ref.apply_ops(basis, list(iter_ops(ops)), src, 1024) == src


def test_false_alarm_flood_is_bounded() -> None:
    # A hostile signature whose weak sum matches every window of an all-zero
    # source, with a wrong strong sum: every position would hash 128 KiB.
    L = 1 << 17
    size = 8 << 20
    sig = Signature(L, 16, 1, L, struct.pack("<I", 0), b"\x01" * 16)
    src = bytes(size)
    t0 = time.perf_counter()
    ops = delta_ops(src, sig)
    assert time.perf_counter() - t0 < 5
    assert list(ops) == [LITERAL, 0, size]
    # a tiny budget gives up at once; the reference model agrees
    small = Signature(64, 4, 1, 64, struct.pack("<I", 0), b"\x01" * 4)
    src2 = bytes(5000) + b"\x01" * 64
    basis2 = b"\x01" * 64
    sig2 = signature_of(basis2, 64, 4)
    assert list(iter_ops(delta_ops(src2, small, false_budget=640))) == ref.delta_ops(
        src2, small, false_budget=640
    )
    assert list(iter_ops(delta_ops(src2, sig2))) == [(LITERAL, 0, 5000), (MATCH, 0, 1)]


@pytest.mark.parametrize("max_chain", [1, 2, 5, 64])
def test_chain_cap_matches_reference(max_chain: int) -> None:
    rnd = random.Random(max_chain)
    L = 32
    blocks = _collision_blocks(40, L, rnd)
    basis = b"".join(blocks)
    sig = signature_of(basis, L, 4)
    src = b"".join(rnd.choice(blocks) for _ in range(60)) + rnd.randbytes(50)
    got = list(iter_ops(delta_ops(src, sig, max_chain=max_chain)))
    assert got == ref.delta_ops(src, sig, max_chain=max_chain)


# --------------------------------------------------------------- patching


def _fds(tmp_path: Path, basis: bytes) -> tuple[int, int]:
    (tmp_path / "b").write_bytes(basis)
    return (os.open(tmp_path / "b", os.O_RDONLY),
            os.open(tmp_path / "o", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600))


@pytest.mark.parametrize("broken", [None, errno.EXDEV, errno.ENOSYS, errno.EINVAL])
def test_apply_delta_falls_back_without_copy_file_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: int | None
) -> None:
    rnd = random.Random(12)
    basis = rnd.randbytes(50_000)
    src = basis[10_000:30_000] + b"middle" + basis[:5_000] + basis[-7:]
    if broken is not None:
        def refuse(*a: object, **k: object) -> int:
            raise OSError(broken, os.strerror(broken))

        monkeypatch.setattr(os, "copy_file_range", refuse)
        monkeypatch.setattr(patch_mod, "_cfr_unavailable", False)
    sig = signature_of(basis, 1000, 4)
    assert rebuild(tmp_path, basis, src, sig) == src


def test_apply_delta_reader_may_return_short_chunks(tmp_path: Path) -> None:
    basis = b"B" * 3000
    ops = array("q", [LITERAL, 0, 10, MATCH, 1, 2, LITERAL, 10, 5])
    data = io.BytesIO(b"0123456789abcde")
    bfd, ofd = _fds(tmp_path, basis)
    try:
        res = apply_delta(bfd, ops, lambda n: data.read(min(n, 3)), ofd, 1000, 3000)
    finally:
        os.close(bfd)
        os.close(ofd)
    assert res == (2000, 15)
    assert (tmp_path / "o").read_bytes() == b"0123456789" + b"B" * 2000 + b"abcde"


@pytest.mark.parametrize(
    "ops, error",
    [
        ([(MATCH, 3, 1)], "outside"),
        ([(MATCH, 2, 2)], "outside"),
        ([(MATCH, -1, 1)], "outside"),
        ([(MATCH, 0, 0)], "outside"),
        ([(MATCH, 0, -1)], "outside"),
        ([(LITERAL, 0, -1)], "literal"),
        ([(7, 0, 1)], "unknown"),
        ([(LITERAL, 0, 100)], "ended early"),
        ([(MATCH, 0, 3), (LITERAL, 0, 1)], "longer"),
        ([(MATCH, 0, 1)], "expected"),
    ],
)
def test_apply_delta_rejects_bad_ops(tmp_path: Path, ops: list, error: str) -> None:
    basis = b"x" * 2500                   # 3 blocks of 1000
    bfd, ofd = _fds(tmp_path, basis)
    try:
        with pytest.raises(DeltaError, match=error):
            apply_delta(bfd, ops, io.BytesIO(b"y" * 10).read, ofd, 1000, 2500,
                        expected_size=2500)
    finally:
        os.close(bfd)
        os.close(ofd)
    with pytest.raises(ValueError):
        list(iter_ops([MATCH, 0]))


def test_apply_delta_basis_shrank(tmp_path: Path) -> None:
    bfd, ofd = _fds(tmp_path, b"z" * 1500)
    try:
        with pytest.raises(SourceChanged):
            apply_delta(bfd, [(MATCH, 0, 2)], io.BytesIO().read, ofd, 1000, 2500)
    finally:
        os.close(bfd)
        os.close(ofd)


# ------------------------------------------------------------ SIGBUS safety

_SIGBUS_SCRIPT = r"""
import mmap, os, sys, threading, time, random
from zcsync.delta import SourceChanged, signature_of, delta_ops, make_signature
from zcsync.delta import _rolling

path = sys.argv[1]
mode = sys.argv[2]
size = 1 << 30 if mode == "midscan" else 8 << 20
sig = signature_of(random.Random(0).randbytes(1 << 20), 4096, 4)

with open(path, "wb") as f:
    f.truncate(size)                     # sparse: no disk, reads as zeros
fd = os.open(path, os.O_RDWR)
m = mmap.mmap(fd, size, prot=mmap.PROT_READ)

if mode == "before":
    os.ftruncate(fd, 4096)
    try:
        delta_ops(m, sig)
    except SourceChanged as e:
        assert isinstance(e, OSError)
        print("RAISED", e.errno)
    try:
        _rolling.weak_sums(m, 4096)
    except SourceChanged:
        print("RAISED-weak")
    try:
        make_signature(fd, 4096 * 3)
    except SourceChanged:
        print("RAISED-sig")
    # the guard must not swallow a SIGBUS outside a scan: this one is fatal
    print("ALIVE", flush=True)
    m[size - 1]
    print("NOT-REACHED")
elif mode == "midscan":
    result = {}
    def scan():
        try:
            delta_ops(m, sig)
            result["r"] = "finished"
        except SourceChanged:
            result["r"] = "RAISED"
    # another thread scans good data at the same time and must be unaffected
    good = random.Random(1).randbytes(32 << 20)
    other = {}
    def scan_good():
        for _ in range(3):
            other.setdefault("ops", []).append(list(delta_ops(good, sig)))
    t = threading.Thread(target=scan)
    t2 = threading.Thread(target=scan_good)
    t.start(); t2.start()
    time.sleep(0.05)
    os.ftruncate(fd, 4096)
    t.join(); t2.join()
    assert all(o == [0, 0, 32 << 20] for o in other["ops"]), other
    print(result["r"])
"""


def _run_sigbus(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    script = tmp_path / "bus.py"
    script.write_text(textwrap.dedent(_SIGBUS_SCRIPT))
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONFAULTHANDLER="1")
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / "data"), mode],
        capture_output=True, text=True, timeout=60, env=env,
    )


def test_truncated_source_raises_instead_of_sigbus(tmp_path: Path) -> None:
    import signal

    r = _run_sigbus(tmp_path, "before")
    lines = r.stdout.split()
    assert lines[:5] == ["RAISED", str(errno.EIO), "RAISED-weak", "RAISED-sig", "ALIVE"], r.stderr
    # outside a scan SIGBUS still kills (after faulthandler has had its say)
    assert r.returncode == -signal.SIGBUS, (r.returncode, r.stderr)
    assert "NOT-REACHED" not in r.stdout


def test_source_truncated_mid_scan_raises(tmp_path: Path) -> None:
    r = _run_sigbus(tmp_path, "midscan")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "RAISED", (r.stdout, r.stderr)
