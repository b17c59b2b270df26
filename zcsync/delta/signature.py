"""Block signatures of a basis file: sizes, hashing, and checks of peer input."""
from __future__ import annotations

import errno
import math
import mmap
import os
from dataclasses import dataclass

from ._ext import rolling
from .errors import SignatureError, SourceChanged

# rsync's constants (rsync.h): BLOCK_SIZE, MAX_BLOCK_SIZE (protocol >= 30),
# SHORT_SUM_LENGTH, SUM_LENGTH, BLOCKSUM_BIAS.
MIN_AUTO_BLOCK_LEN = 700
MAX_BLOCK_LEN = 1 << 17
MIN_STRONG_LEN = 2
MAX_STRONG_LEN = 16
_BLOCKSUM_BIAS = 10

# Smallest block length accepted from a peer.  The scan's output can hold one
# op per block length of source, so a tiny peer-chosen block length would let
# the peer blow up our memory; 64 B keeps the op list below the source's size.
MIN_PEER_BLOCK_LEN = 64


def block_length(size: int) -> int:
    """Block length for a basis of `size` bytes: rsync's rounded square root.

    The largest multiple of 8 whose square does not exceed `size`, but at
    least 700 B and at most 128 KiB (rsync's sum_sizes_sqroot).
    """
    if size < 0:
        raise ValueError("size must be >= 0")
    if size <= MIN_AUTO_BLOCK_LEN * MIN_AUTO_BLOCK_LEN:
        return MIN_AUTO_BLOCK_LEN
    if size >= MAX_BLOCK_LEN * MAX_BLOCK_LEN:
        return MAX_BLOCK_LEN
    root = (math.isqrt(size) // 8) * 8
    return min(max(root, MIN_AUTO_BLOCK_LEN), MAX_BLOCK_LEN)


def strong_length(size: int, block_len: int) -> int:
    """Bytes of strong sum per block, growing with file size like rsync's.

    Donovan Baarda's rule from rsync: about 10 + 2*log2(size) - log2(block_len)
    bits for the whole sum, minus the 32 bits of the weak sum, rounded up to
    bytes and clamped to [2, 16].
    """
    if size < 0 or block_len < 1:
        raise ValueError("size must be >= 0 and block_len >= 1")
    bits = _BLOCKSUM_BIAS + 2 * max(size.bit_length() - 1, 0)
    bits = max(bits - (block_len.bit_length() - 1), 0)
    # C's truncating division, as in rsync; the clamp makes the sign moot
    s2 = int((bits + 1 - 32 + 7) / 8)
    return min(max(s2, MIN_STRONG_LEN), MAX_STRONG_LEN)


@dataclass(frozen=True, slots=True)
class Signature:
    """Block sums of a basis file, as the generator sends them to the sender.

    `weak` holds `count` little-endian uint32 rolling sums; `strong` holds
    `count` digests of `strong_len` bytes each (XXH3-128 with `seed`, canonical
    byte order, truncated).  The last block is `size - (count-1)*block_len`
    bytes long.
    """

    block_len: int
    strong_len: int
    count: int
    size: int
    weak: bytes
    strong: bytes
    seed: int = 0

    @property
    def last_len(self) -> int:
        """Length of the last block (0 for an empty basis)."""
        return self.size - (self.count - 1) * self.block_len if self.count else 0


def block_count(size: int, block_len: int) -> int:
    """Number of blocks of `block_len` covering `size` bytes."""
    return -(-size // block_len)


def signature_of(
    buffer: object, block_len: int, strong_len: int, seed: int = 0
) -> Signature:
    """Signature of an in-memory or mapped buffer (anything with the buffer protocol)."""
    size = memoryview(buffer).nbytes  # type: ignore[arg-type]
    weak, strong = rolling().block_sums(buffer, block_len, strong_len, seed)
    return Signature(
        block_len=block_len,
        strong_len=strong_len,
        count=block_count(size, block_len),
        size=size,
        weak=weak,
        strong=strong,
        seed=seed,
    )


def make_signature(
    fd: int,
    size: int,
    block_len: int | None = None,
    *,
    strong_len: int | None = None,
    seed: int = 0,
) -> Signature:
    """Hash the first `size` bytes of the basis open on `fd` through mmap.

    Raises SourceChanged if the file shrinks while it is being hashed.
    """
    if size < 0:
        raise ValueError("size must be >= 0")
    if block_len is None:
        block_len = block_length(size)
    if not 1 <= block_len <= MAX_BLOCK_LEN:
        raise ValueError(f"block_len {block_len} out of range [1, {MAX_BLOCK_LEN}]")
    if strong_len is None:
        strong_len = strong_length(size, block_len)
    if not MIN_STRONG_LEN <= strong_len <= MAX_STRONG_LEN:
        raise ValueError(f"strong_len {strong_len} out of range")
    if size == 0:
        return Signature(block_len, strong_len, 0, 0, b"", b"", seed)
    if os.fstat(fd).st_size < size:
        raise SourceChanged(errno.EIO, "Basis is shorter than expected")
    with mmap.mmap(fd, size, prot=mmap.PROT_READ) as m:
        if hasattr(m, "madvise"):
            m.madvise(mmap.MADV_SEQUENTIAL)
        return signature_of(m, block_len, strong_len, seed)


def validate(
    sig: Signature, max_blocks: int, *, min_block_len: int = MIN_PEER_BLOCK_LEN
) -> Signature:
    """Check every count and length of a peer-supplied signature; return it.

    Raises SignatureError (a ProtocolError) on the first inconsistency.  The C
    scanner checks the table lengths again, so this is the policy layer
    (bounds a peer may ask for) on top of the memory-safety layer.
    """
    def bad(detail: str) -> SignatureError:
        return SignatureError(detail)

    for name in ("block_len", "strong_len", "count", "size", "seed"):
        v = getattr(sig, name)
        if type(v) is not int:
            raise bad(f"{name} is not an integer")
    if not isinstance(sig.weak, bytes) or not isinstance(sig.strong, bytes):
        raise bad("sum tables are not bytes")
    if not min_block_len <= sig.block_len <= MAX_BLOCK_LEN:
        raise bad(f"block length {sig.block_len} out of range [{min_block_len}, {MAX_BLOCK_LEN}]")
    if not MIN_STRONG_LEN <= sig.strong_len <= MAX_STRONG_LEN:
        raise bad(f"strong sum length {sig.strong_len} out of range [{MIN_STRONG_LEN}, {MAX_STRONG_LEN}]")
    if not 0 <= sig.seed < 1 << 64:
        raise bad("checksum seed out of range")
    if not 0 <= sig.count <= max_blocks:
        raise bad(f"block count {sig.count} out of range [0, {max_blocks}]")
    if sig.size < 0:
        raise bad("negative file size")
    if sig.count != block_count(sig.size, sig.block_len):
        raise bad(f"block count {sig.count} does not fit size {sig.size} and block length {sig.block_len}")
    if len(sig.weak) != 4 * sig.count:
        raise bad(f"weak table has {len(sig.weak)} bytes for {sig.count} blocks")
    if len(sig.strong) != sig.strong_len * sig.count:
        raise bad(f"strong table has {len(sig.strong)} bytes for {sig.count} blocks")
    return sig
