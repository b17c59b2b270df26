"""The in-place scan (--inplace), delta.Rebuild, and the Request flags for --inplace/--append."""
from __future__ import annotations

import os
import random
import struct

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zcsync import protocol as p
from zcsync.delta import DeltaError, Rebuild, delta_ops, iter_ops, signature_of
from zcsync.delta import reference as ref
from zcsync.errors import ProtocolError

pytest.importorskip("zcsync.delta._rolling", reason="C extension not built")

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def basis_and_source(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A basis and a source made of its pieces moved around, repeated, cut and new bytes."""
    rnd = random.Random(draw(st.integers(0, 2**32)))
    alphabet = draw(st.sampled_from([256, 3]))  # 3: many equal blocks and weak-sum chains
    size = draw(st.integers(0, 4000))
    basis = bytes(rnd.randrange(alphabet) for _ in range(size))
    pieces = []
    for _ in range(draw(st.integers(0, 8))):
        if basis and draw(st.booleans()):
            a = draw(st.integers(0, len(basis)))
            b = draw(st.integers(a, min(len(basis), a + 1500)))
            pieces.append(basis[a:b])
        else:
            pieces.append(bytes(rnd.randrange(alphabet) for _ in range(draw(st.integers(0, 200)))))
    return basis, b"".join(pieces)


def _rebuild_in_place(basis: bytes, src: bytes, sig, ops) -> tuple[bytes, int]:
    """Run delta.Rebuild over a copy of the basis, in place; (result, bytes written)."""
    fd = os.memfd_create("inplace")
    try:
        os.write(fd, basis)
        out = Rebuild(fd, None, sig.block_len, sig.size, len(src), inplace=True)
        written = 0
        real = os.pwrite

        def counting(f, data, off):
            nonlocal written
            n = real(f, data, off)
            written += n
            return n
        os.pwrite = counting
        try:
            for kind, a, b in iter_ops(ops):
                if kind == 1:
                    out.blocks(a, b)
                else:
                    out.write(src[a:a + b])
        finally:
            os.pwrite = real
        os.ftruncate(fd, len(src))
        assert out.digest() == xxhash.xxh3_128_digest(src)
        assert out.matched + out.literal == len(src)
        return os.pread(fd, len(src) + 1, 0), written
    finally:
        os.close(fd)


@SETTINGS
@given(pair=basis_and_source(), block_len=st.integers(1, 64), max_chain=st.sampled_from([1, 3, 64]))
def test_inplace_scan_equals_reference_and_rebuilds(pair, block_len, max_chain):
    basis, src = pair
    sig = signature_of(basis, block_len, 3, seed=5)
    ops = list(iter_ops(delta_ops(src, sig, max_chain=max_chain, inplace=True)))
    assert ops == ref.delta_ops(src, sig, max_chain=max_chain, inplace=True)
    # Rebuilt over the basis itself in op order, the result is the source: no op used a
    # block after it was overwritten.
    assert ref.apply_ops_inplace(basis, ops, src, block_len) == src
    got, _ = _rebuild_in_place(basis, src, sig, ops)
    assert got == src


def test_blocks_that_moved_back_become_literals():
    rnd = random.Random(1)
    L = 1000
    a, b, c, d = (rnd.randbytes(L) for _ in range(4))
    basis, src = a + b + c + d, c + d + a + b
    sig = signature_of(basis, L, 8)
    assert list(iter_ops(delta_ops(src, sig))) == [(1, 2, 2), (1, 0, 2)]
    # In place, c and d come from further on (not yet overwritten); a and b would have to
    # come from where c and d were just written: literal.
    assert list(iter_ops(delta_ops(src, sig, inplace=True))) == [(1, 2, 2), (0, 2 * L, 2 * L)]


def test_block_at_its_own_offset_is_preferred_and_never_written():
    rnd = random.Random(2)
    L = 512
    block = rnd.randbytes(L)
    basis = block * 4 + rnd.randbytes(L)  # equal blocks: any of them would do
    src = basis[:3 * L] + rnd.randbytes(10) + basis[3 * L:]
    sig = signature_of(basis, L, 8)
    ops = list(iter_ops(delta_ops(src, sig, inplace=True)))
    assert ops[0] == (1, 0, 3)  # blocks 0..2 where they are, not block 0 three times
    got, written = _rebuild_in_place(basis, src, sig, ops)
    assert got == src
    assert written == len(src) - 3 * L  # the unchanged head is not written at all


def test_identical_file_in_place_writes_nothing():
    data = random.Random(3).randbytes(100_000)
    sig = signature_of(data, 700, 4)
    ops = list(iter_ops(delta_ops(data, sig, inplace=True)))
    assert ops == [(1, 0, sig.count)]
    got, written = _rebuild_in_place(data, data, sig, ops)
    assert got == data and written == 0


def test_same_offset_blocks_stay_usable_later():
    """A block matched at its own offset is never written: rsync reuses it further on."""
    rnd = random.Random(4)
    L = 256
    a, b, c = (rnd.randbytes(L) for _ in range(3))
    basis = a + b + c
    src = a + rnd.randbytes(L) + c + a
    sig = signature_of(basis, L, 8)
    ops = list(iter_ops(delta_ops(src, sig, inplace=True)))
    assert ops == ref.delta_ops(src, sig, inplace=True)
    assert ops[0] == (1, 0, 1) and ops[-1] == (1, 0, 1)
    assert _rebuild_in_place(basis, src, sig, ops)[0] == src


@pytest.mark.parametrize("share", [False, True])
def test_rebuild_checks_every_op(tmp_path, monkeypatch, share):
    from zcsync.delta import patch
    monkeypatch.setattr(patch, "copy_shares", lambda fd: share)  # both ways of copying a run
    fd = os.memfd_create("out")
    bfd = os.memfd_create("basis")
    try:
        os.write(bfd, b"x" * 2500)
        out = Rebuild(fd, bfd, 1000, 2500, 3000)
        with pytest.raises(DeltaError, match="outside the basis"):
            out.blocks(2, 2)
        with pytest.raises(DeltaError, match="outside the basis"):
            out.blocks(0, 0)
        out.blocks(0, 3)  # 2500 bytes: the last block is short
        with pytest.raises(DeltaError, match="longer than the file"):
            out.write(b"y" * 501)
        out.write(b"y" * 500)
        assert (out.matched, out.literal, out.pos) == (2500, 500, 3000)
        assert out.digest() == xxhash.xxh3_128_digest(b"x" * 2500 + b"y" * 500)
        with pytest.raises(DeltaError):
            Rebuild(fd, bfd, 1000, 2500, 10, start=11)
    finally:
        os.close(fd)
        os.close(bfd)


@pytest.mark.parametrize("verify", [False, True])
def test_rebuild_append_hashes_the_tail_or_the_whole_file(verify):
    fd = os.memfd_create("out")
    try:
        os.write(fd, b"head")
        out = Rebuild(fd, None, 1, 0, 10, start=4, hash_head=verify)
        out.write(b"tail!!")
        assert os.pread(fd, 20, 0) == b"headtail!!"
        assert out.digest() == xxhash.xxh3_128_digest(b"headtail!!" if verify else b"tail!!")
        assert (out.matched, out.literal) == (0, 6)
    finally:
        os.close(fd)


# -- Request on the wire -------------------------------------------------------------

@pytest.mark.parametrize("msg", [
    p.Request(3, b"sig", inplace=True),
    p.Request(3, append_from=0),
    p.Request(3, append_from=12345, append_verify=True),
    p.Request(3, append_from=(1 << 63) - 1),
])
def test_request_round_trip(msg):
    d = p.Decoder(side="sender")
    d.sent_next_index = 10
    assert d.decode(p.Request.TYPE, p.encode_payload(msg)) == msg


@pytest.mark.parametrize("msg", [
    p.Request(3, b"sig", append_from=5),
    p.Request(3, inplace=True),
    p.Request(3, append_verify=True),
    p.Request(3, append_from=-1),
    p.Request(3, append_from=1 << 63),
])
def test_request_encoder_refuses_conflicts(msg):
    with pytest.raises(ValueError):
        p.encode_payload(msg)


@pytest.mark.parametrize(("payload", "error"), [
    (struct.pack(">IBI", 1, 0x20, 0), "truncated"),  # append without its offset
    (struct.pack(">IBIQ", 1, 0x20, 0, 1 << 63), "impossible append offset"),
    (struct.pack(">IBI", 1, 0x21, 0) + struct.pack(">Q", 5), "conflicting flags"),  # append + signature
    (struct.pack(">IBI", 1, 0x40, 0), "conflicting flags"),  # verify without append
    (struct.pack(">IBI", 1, 0x10, 0), "conflicting flags"),  # in place without a signature
    (struct.pack(">IBIQB", 1, 0x20, 0, 5, 0), "trailing"),
    (struct.pack(">IBI", 1, 0x80, 0), "unknown Request flags"),
])
def test_request_decoder_refuses(payload, error):
    d = p.Decoder(side="sender")
    d.sent_next_index = 10
    with pytest.raises(ProtocolError, match=error):
        d.decode(p.Request.TYPE, payload)
