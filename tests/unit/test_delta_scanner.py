"""delta.Scanner: the scan in pieces gives the ops of the one-piece scan, and its digest."""
from __future__ import annotations

import mmap
import os
import random

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zcsync.delta import Scanner, SourceChanged, coalesce, delta_ops, iter_ops, signature_of
from zcsync.delta import reference as ref

pytest.importorskip("zcsync.delta._rolling", reason="C extension not built")


@st.composite
def basis_and_source(draw: st.DrawFn) -> tuple[bytes, bytes]:
    rnd = random.Random(draw(st.integers(0, 2**32)))
    alphabet = draw(st.sampled_from([256, 2]))
    basis = bytes(rnd.randrange(alphabet) for _ in range(draw(st.integers(0, 5000))))
    pieces = []
    for _ in range(draw(st.integers(0, 6))):
        if basis and draw(st.booleans()):
            a = draw(st.integers(0, len(basis)))
            pieces.append(basis[a:a + draw(st.integers(0, 2000))])
        else:
            pieces.append(bytes(rnd.randrange(alphabet) for _ in range(draw(st.integers(0, 300)))))
    return basis, b"".join(pieces)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=basis_and_source(), block_len=st.integers(1, 700), inplace=st.booleans(),
       first=st.integers(1, 3000), most=st.integers(1, 5000), max_chain=st.sampled_from([1, 64]))
def test_pieces_make_the_one_piece_scan(pair, block_len, inplace, first, most, max_chain):
    basis, src = pair
    sig = signature_of(basis, block_len, 2, seed=11)
    scanner = Scanner(src, sig, inplace=inplace, digest=True, max_chain=max_chain,
                      first_piece=first, max_piece=most)
    pieces = list(scanner)
    assert scanner.done and scanner.pos == len(src)
    whole = list(iter_ops(delta_ops(src, sig, inplace=inplace, max_chain=max_chain)))
    assert coalesce(pieces) == whole == ref.delta_ops(src, sig, inplace=inplace, max_chain=max_chain)
    assert scanner.digest() == xxhash.xxh3_128_digest(src)
    # every piece covers the source in order, from where the last one ended
    pos = 0
    for ops in pieces:
        for kind, a, b in iter_ops(ops):
            if kind == 0:
                assert a == pos
                pos += b
            else:
                pos += min((a + b) * block_len, len(basis)) - a * block_len
    assert pos == len(src)


def test_pieces_grow_and_the_receiver_can_start_early():
    data = random.Random(1).randbytes(40 << 20)
    sig = signature_of(data, 8192, 4)
    scanner = Scanner(data, sig)
    ends = []
    for ops in scanner:
        ends.append(scanner.pos)
    assert ends[0] <= (1 << 20) + 8192  # a first piece of about 1 MiB
    assert len(ends) < 10 and ends[-1] == len(data)


def test_source_truncated_between_pieces(tmp_path):
    path = tmp_path / "src"
    data = random.Random(2).randbytes(8 << 20)
    path.write_bytes(data)
    sig = signature_of(data, 4096, 4)
    fd = os.open(path, os.O_RDONLY)
    try:
        with mmap.mmap(fd, len(data), prot=mmap.PROT_READ) as m:
            scanner = Scanner(m, sig, digest=True)
            scanner.next()
            os.truncate(path, 4096)  # the rest of the mapping is gone: SIGBUS, caught
            with pytest.raises(SourceChanged):
                scanner.next()
            with pytest.raises(ValueError, match="unusable"):
                scanner.next()
            del scanner
    finally:
        os.close(fd)


def test_scanner_checks_its_arguments():
    sig = signature_of(b"x" * 1000, 100, 4)
    with pytest.raises(ValueError):
        Scanner(b"abc", sig._replace(weak=b"123") if hasattr(sig, "_replace") else
                type(sig)(sig.block_len, sig.strong_len, sig.count, sig.size, b"123", sig.strong))
    scanner = Scanner(b"abc", sig)
    from zcsync.delta import _rolling
    with pytest.raises(ValueError, match="size"):
        _rolling.scan_next(scanner._scanner, b"abcd")
    with pytest.raises(ValueError, match="digest"):
        scanner.digest()


def test_weak_sums_agree_on_every_code_path():
    """AVX2, SSE2 (ZCSYNC_NO_AVX2=1 at import) and the scalar tail give the model's sums:
    two peers on different CPUs must agree on every weak sum."""
    import subprocess
    import sys
    code = ("import random, sys; from zcsync.delta import _rolling; r = random.Random(5); "
            "data = r.randbytes(300_000) + bytes([255]) * 140_000; "
            "sys.stdout.write(''.join(_rolling.weak_sums(data, L).hex() for L in "
            "(1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 700, 4096, 131072)))")
    outs = set()
    for env in ({}, {"ZCSYNC_NO_AVX2": "1"}):
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, **env}, check=True)
        outs.add(res.stdout)
    assert len(outs) == 1
    r = random.Random(5)
    data = r.randbytes(300_000) + bytes([255]) * 140_000
    want = "".join(ref.weak_sums(data, L).hex() for L in (1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 700, 4096, 131072))
    assert outs == {want}
