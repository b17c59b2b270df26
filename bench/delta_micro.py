"""Micro-benchmark of the delta engine's C paths, in MB/s (1 MB = 10**6 bytes).

    python bench/delta_micro.py [--mib 256] [--repeat 3] [--json]

Cases (in memory, so disk speed stays out of it):
  weak_sums      rolling sums of every block of the basis
  block_sums     weak + truncated XXH3-128 of every block (make_signature's work)
  scan_unrelated scan of a random source against an unrelated basis's signature
  scan_identical scan of the basis against its own signature
  scan_shifted   the basis with one byte inserted at the front (every block
                 is found at a non-block-aligned offset)
  scan_mapped    scan_unrelated through mmap of a file on /tmp (page cache)
  scan_pieces    scan_shifted in pieces (delta.Scanner, as the sender runs it),
                 hashing the source as it goes
  signature_fd   make_signature of a file on /tmp (mmap; page cache)

ZCSYNC_NO_AVX2=1 measures the SSE2 weak sums instead of the AVX2 ones.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zcsync.delta import (  # noqa: E402
    Scanner,
    _rolling,
    block_length,
    delta_ops,
    make_signature,
    signature_of,
    strong_length,
)


def best_of(repeat: int, fn) -> tuple[float, float]:
    """Fastest (wall, CPU) time of `repeat` calls, in seconds.

    CPU time (this thread's) is the steadier figure on a shared machine:
    the C code runs in the calling thread with the GIL released.
    """
    wall = cpu = float("inf")
    for _ in range(repeat):
        t, c = time.perf_counter(), time.thread_time()
        fn()
        cpu = min(cpu, time.thread_time() - c)
        wall = min(wall, time.perf_counter() - t)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    size = args.mib << 20
    basis = os.urandom(size)
    other = os.urandom(size)
    shifted = b"x" + basis[:-1]
    L = block_length(size)
    slen = strong_length(size, L)
    sig = signature_of(basis, L, slen)

    results: dict[str, dict[str, float]] = {}
    mb = size / 1e6

    def measure(name: str, fn) -> None:
        wall, cpu = best_of(args.repeat, fn)
        results[name] = {"wall": mb / wall, "cpu": mb / cpu}

    measure("weak_sums", lambda: _rolling.weak_sums(basis, L))
    measure("block_sums", lambda: _rolling.block_sums(basis, L, slen))
    measure("scan_unrelated", lambda: delta_ops(other, sig))
    measure("scan_identical", lambda: delta_ops(basis, sig))
    measure("scan_shifted", lambda: delta_ops(shifted, sig))

    def pieces() -> None:
        scanner = Scanner(shifted, sig, digest=True)
        for _ in scanner:
            pass
        scanner.digest()
    measure("scan_pieces", pieces)
    with tempfile.TemporaryFile(dir="/tmp") as f:
        f.write(other)
        f.flush()
        with mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as m:
            measure("scan_mapped", lambda: delta_ops(m, sig))
        measure("signature_fd", lambda: make_signature(f.fileno(), size))

    # sanity: the identical scan is one block run, the unrelated one literal
    assert list(delta_ops(basis, sig)) == [1, 0, sig.count]
    assert list(delta_ops(other, sig)) == [0, 0, size]

    if args.json:
        print(json.dumps({"mib": args.mib, "block_len": L, "strong_len": slen,
                          "mb_per_s": results}))
    else:
        print(f"{args.mib} MiB, block_len {L}, strong_len {slen}, best of {args.repeat}")
        print(f"  {'case':15s} {'wall MB/s':>10s} {'CPU MB/s':>10s}")
        for name, v in results.items():
            print(f"  {name:15s} {v['wall']:10.0f} {v['cpu']:10.0f}")


if __name__ == "__main__":
    main()
