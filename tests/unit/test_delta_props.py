"""Property tests: any edit of a basis is rebuilt exactly, and C agrees with the model."""
from __future__ import annotations

import io
import os
import random

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from zcsync.delta import apply_delta, delta_ops, iter_ops, literal_chunks, op_stats, signature_of
from zcsync.delta import reference as ref

pytest.importorskip("zcsync.delta._rolling", reason="C extension not built")

SETTINGS = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def basis_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes, low-entropy bytes, or a sequence of repeated chunks."""
    kind = draw(st.sampled_from(["random", "seeded", "alphabet", "repeats"]))
    if kind == "random":
        return draw(st.binary(max_size=3000))
    if kind == "seeded":
        # larger inputs than hypothesis likes to build byte by byte
        size = draw(st.integers(0, 6000))
        return random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    if kind == "alphabet":
        return bytes(draw(st.lists(st.sampled_from(b"ab\0"), max_size=2000)))
    chunks = draw(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=4))
    return b"".join(draw(st.lists(st.sampled_from(chunks), max_size=80)))


@st.composite
def edited(draw: st.DrawFn, basis: bytes) -> bytes:
    """Apply a few inserts, deletes, overwrites, moves and duplications."""
    data = bytearray(basis)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["insert", "delete", "overwrite", "move", "dup"]))
        n = len(data)
        a = draw(st.integers(0, n))
        b = draw(st.integers(a, min(n, a + 300)))
        if op == "insert":
            data[a:a] = draw(st.binary(min_size=1, max_size=60))
        elif op == "delete":
            del data[a:b]
        elif op == "overwrite":
            data[a:b] = draw(st.binary(min_size=b - a, max_size=b - a))
        elif op == "move":
            piece = data[a:b]
            del data[a:b]
            c = draw(st.integers(0, len(data)))
            data[c:c] = piece
        else:
            c = draw(st.integers(0, n))
            data[c:c] = data[a:b]
    return bytes(data)


def _rebuild(basis: bytes, src: bytes, sig) -> bytes:
    ops = delta_ops(src, sig)
    lits = io.BytesIO(b"".join(bytes(c) for c in literal_chunks(src, ops)))
    bfd = os.memfd_create("basis")
    ofd = os.memfd_create("out")
    try:
        os.write(bfd, basis)
        res = apply_delta(bfd, ops, lits.read, ofd, sig.block_len, sig.size,
                          expected_size=len(src))
        assert res == op_stats(ops, sig.block_len, sig.size)
        os.lseek(ofd, 0, os.SEEK_SET)
        out = b""
        while chunk := os.read(ofd, 1 << 16):
            out += chunk
        return out
    finally:
        os.close(bfd)
        os.close(ofd)


def _check_ops_cover(basis: bytes, src: bytes, ops: list[tuple[int, int, int]], sig) -> None:
    """Literals tile the gaps between matches, in order, with no empty op."""
    pos = 0
    for kind, a, b in ops:
        assert b > 0
        if kind == 0:
            assert a == pos
            pos += b
        else:
            for i in range(a, a + b):
                blen = sig.last_len if i == sig.count - 1 else sig.block_len
                assert src[pos : pos + blen] == basis[i * sig.block_len :][:blen]
                pos += blen
    assert pos == len(src)


@SETTINGS
@given(data=st.data(), basis=basis_bytes(), block_len=st.integers(1, 80),
       strong_len=st.sampled_from([2, 3, 8, 16]), seed=st.integers(0, 2**64 - 1))
def test_rebuild_any_edit(data: st.DataObject, basis: bytes, block_len: int,
                          strong_len: int, seed: int) -> None:
    src = data.draw(edited(basis))
    sig = signature_of(basis, block_len, strong_len, seed)
    ops = list(iter_ops(delta_ops(src, sig)))
    assert ops == ref.delta_ops(src, sig)
    _check_ops_cover(basis, src, ops, sig)
    assert _rebuild(basis, src, sig) == src


@SETTINGS
@given(block_len=st.integers(1, 64), blocks=st.integers(0, 6), delta=st.integers(-2, 2),
       src_delta=st.integers(-3, 3), data=st.data())
def test_sizes_around_block_boundaries(block_len: int, blocks: int, delta: int,
                                       src_delta: int, data: st.DataObject) -> None:
    size = blocks * block_len + delta
    assume(size >= 0)
    basis = data.draw(st.binary(min_size=size, max_size=size))
    cut = max(0, size + src_delta)
    src = (basis + data.draw(st.binary(min_size=3, max_size=3)))[:cut]
    sig = signature_of(basis, block_len, 4)
    ops = list(iter_ops(delta_ops(src, sig)))
    assert ops == ref.delta_ops(src, sig)
    assert _rebuild(basis, src, sig) == src
    if src == basis and size:
        assert ops == [(1, 0, sig.count)]


@SETTINGS
@given(basis=st.binary(max_size=400), src=st.binary(max_size=400),
       block_len=st.integers(1, 16), max_chain=st.integers(1, 4))
def test_unrelated_and_tiny_inputs(basis: bytes, src: bytes, block_len: int,
                                   max_chain: int) -> None:
    sig = signature_of(basis, block_len, 2)
    ops = list(iter_ops(delta_ops(src, sig, max_chain=max_chain)))
    assert ops == ref.delta_ops(src, sig, max_chain=max_chain)
    assert _rebuild(basis, src, sig) == src


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=5000), block_len=st.integers(1, 300))
def test_weak_sums_property(data: bytes, block_len: int) -> None:
    from zcsync.delta import _rolling

    assert _rolling.weak_sums(data, block_len) == ref.weak_sums(data, block_len)
