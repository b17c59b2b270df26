"""Slow pure-Python model of the C extension, for tests.

Same sums, same candidate order, same chain cap, same false-alarm budget and
same op coalescing as _rolling.c, so tests can compare op lists exactly.
About 1-4 MB/s: never use it on real data.
"""
from __future__ import annotations

import struct

import xxhash

from .match import LITERAL, MATCH
from .signature import Signature, block_count


def weak_sum(block: bytes) -> int:
    """rsync weak sum: (s1 & 0xffff) | (s2 << 16) over unsigned bytes."""
    s1 = s2 = 0
    n = len(block)
    for i, b in enumerate(block):
        s1 += b
        s2 += (n - i) * b
    return ((s1 & 0xFFFF) | (s2 << 16)) & 0xFFFFFFFF


def weak_sums(data: bytes, block_len: int) -> bytes:
    """Weak sum of each block as little-endian uint32."""
    out = [weak_sum(data[o : o + block_len]) for o in range(0, len(data), block_len)]
    return struct.pack(f"<{len(out)}I", *out)


def strong_sum(block: bytes, strong_len: int, seed: int = 0) -> bytes:
    """Canonical XXH3-128 digest of the block, truncated."""
    return xxhash.xxh3_128_digest(block, seed=seed)[:strong_len]


def signature(data: bytes, block_len: int, strong_len: int, seed: int = 0) -> Signature:
    """Signature of `data`, computed in Python."""
    strong = b"".join(
        strong_sum(data[o : o + block_len], strong_len, seed)
        for o in range(0, len(data), block_len)
    )
    return Signature(
        block_len=block_len,
        strong_len=strong_len,
        count=block_count(len(data), block_len),
        size=len(data),
        weak=weak_sums(data, block_len),
        strong=strong,
        seed=seed,
    )


def delta_ops(
    src: bytes, sig: Signature, *, max_chain: int = 64, false_budget: int = -1,
    inplace: bool = False,
) -> list[tuple[int, int, int]]:
    """The ops the C scanner must return for `src` against `sig`, as triples."""
    src = bytes(src)
    n = len(src)
    L = sig.block_len
    count = sig.count
    weak = list(struct.unpack(f"<{count}I", sig.weak))
    strong = [sig.strong[i * sig.strong_len : (i + 1) * sig.strong_len] for i in range(count)]
    last_len = sig.last_len
    budget = false_budget if false_budget >= 0 else (64 << 20) + 4 * n
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(weak):
        groups.setdefault(w, []).append(i)

    def blen(i: int) -> int:
        return last_len if i == count - 1 else L

    ops: list[tuple[int, int, int]] = []
    state = {"lit": 0, "run": None, "run_end": 0}

    def emit(i: int, k: int) -> None:
        run = state["run"]
        if run is not None and run[0] + run[1] == i and state["run_end"] == k:
            state["run"] = (run[0], run[1] + 1)
        else:
            if run is not None:
                ops.append((MATCH, run[0], run[1]))
            if k > state["lit"]:
                ops.append((LITERAL, state["lit"], k - state["lit"]))
            state["run"] = (i, 1)
        state["run_end"] = k + blen(i)
        state["lit"] = k + blen(i)

    false_bytes = 0
    same: set[int] = set()  # inplace: blocks matched at their own offset (never overwritten)

    def usable(i: int, k: int) -> bool:
        return not inplace or i * L >= k or i in same

    def try_match(k: int, wlen: int, w: int, want: int) -> int:
        nonlocal false_bytes
        window = src[k : k + wlen]
        digest = None
        if inplace and k % L == 0:
            a = k // L
            if a < count and weak[a] == w and blen(a) == wlen:
                digest = strong_sum(window, sig.strong_len, sig.seed)
                if strong[a] == digest:
                    return a
        if want < count and weak[want] == w and blen(want) == wlen and usable(want, k):
            if digest is None:
                digest = strong_sum(window, sig.strong_len, sig.seed)
            if strong[want] == digest:
                return want
        for i in groups[w][:max_chain]:
            if i == want or blen(i) != wlen or not usable(i, k):
                continue
            if digest is None:
                digest = strong_sum(window, sig.strong_len, sig.seed)
            if strong[i] == digest:
                return i
        if digest is not None:
            false_bytes += wlen
        return -1

    # window sums from prefix sums: independent of the C code's rolling update
    pre = [0] * (n + 1)
    ipre = [0] * (n + 1)
    for i, b in enumerate(src):
        pre[i + 1] = pre[i] + b
        ipre[i + 1] = ipre[i] + i * b

    def window_weak(k: int) -> int:
        e = k + L
        s1 = pre[e] - pre[k]
        s2 = e * s1 - (ipre[e] - ipre[k])
        return ((s1 & 0xFFFF) | (s2 << 16)) & 0xFFFFFFFF

    k = 0
    want = -1
    exhausted = False
    if count and n:
        if n >= L:
            last = n - L
            w = window_weak(0)
            while True:
                if w in groups:
                    m = try_match(k, L, w, want if want >= 0 else 1 << 32)
                    if m >= 0:
                        emit(m, k)
                        if inplace and m * L == k:
                            same.add(m)
                        want = m + 1
                        k += L
                        if k > last:
                            break
                        w = window_weak(k)
                        continue
                    if false_bytes > budget:
                        exhausted = True
                        break
                if k == last:
                    k += 1
                    break
                k += 1
                w = window_weak(k)
        if not exhausted and last_len < L and n >= last_len:
            t = n - last_len
            if t >= k:
                window = src[t:]
                if weak_sum(window) == weak[count - 1] and usable(count - 1, t) and strong_sum(
                    window, sig.strong_len, sig.seed
                ) == strong[count - 1]:
                    emit(count - 1, t)
    if state["run"] is not None:
        ops.append((MATCH, *state["run"]))
    if n > state["lit"]:
        ops.append((LITERAL, state["lit"], n - state["lit"]))
    return ops


def apply_ops(basis: bytes, ops: list[tuple[int, int, int]], src: bytes, block_len: int) -> bytes:
    """Rebuild the source in memory from basis blocks and source literals."""
    out = bytearray()
    for kind, a, b in ops:
        if kind == MATCH:
            out += basis[a * block_len : (a + b) * block_len]
        else:
            out += src[a : a + b]
    return bytes(out)


def apply_ops_inplace(basis: bytes, ops: list[tuple[int, int, int]], src: bytes, block_len: int) -> bytes:
    """Rebuild over a copy of the basis itself, in op order, as an --inplace receiver does:
    a block run whose bytes were already overwritten comes out wrong, so a correct
    result shows the ops respected the in-place rule."""
    buf = bytearray(basis)
    pos = 0
    for kind, a, b in ops:
        if kind == MATCH:
            data = bytes(buf[a * block_len : min((a + b) * block_len, len(basis))])
        else:
            data = src[a : a + b]
        buf[pos : pos + len(data)] = data
        pos += len(data)
    del buf[pos:]
    return bytes(buf)
