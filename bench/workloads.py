"""Benchmark workloads: seeded file trees built on tmpfs, and checks that a copy matches.

A workload is a small table entry (:class:`Workload`) whose ``build`` function writes
the tree under a given directory.  :func:`scan` records what a tree looks like (names,
types, modes, sizes, owners, mtimes) and :func:`verify` compares a destination against
the source's record plus a content check, so that a wrong copy marks a timing invalid.
"""

from __future__ import annotations

import math
import os
import random
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

POOL_SIZE = 64 * MiB        # random bytes generated once, then sliced and rotated
HEADER_SIZE = 4 * KiB       # per-chunk unique header in big files
WHOLE_LIMIT = 4 * MiB       # files over this size are always compared (sample mode)
SAMPLE_FILES = 1000         # files compared by content per check (sample mode)
BASE_MTIME = 1_600_000_000  # mtimes are set to fixed, seeded past times


# --------------------------------------------------------------------------- records

@dataclass(frozen=True)
class Entry:
    """What a tree entry looks like, as far as ``-a`` promises to preserve it."""

    kind: str          # "f", "d", "l" or "?"
    mode: int
    size: int
    mtime_ns: int
    uid: int
    gid: int
    target: bytes = b""  # symlink target


Manifest = dict[bytes, Entry]   # relative path (bytes, "." for the root) -> Entry


@dataclass(frozen=True)
class Tree:
    """A built workload: where it is and what it holds."""

    name: str
    path: Path
    manifest: Manifest
    files: int
    dirs: int
    bytes: int


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISLNK(mode):
        return "l"
    return "?"


def scan(root: Path) -> Manifest:
    """Record every entry under root (not following symlinks)."""
    out: Manifest = {}
    broot = os.fsencode(root)
    st = os.lstat(broot)
    out[b"."] = Entry("d", stat.S_IMODE(st.st_mode), 0, st.st_mtime_ns, st.st_uid, st.st_gid)
    stack = [b""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(broot, rel) if rel else broot) as it:
            for de in it:
                st = de.stat(follow_symlinks=False)
                name = os.path.join(rel, de.name) if rel else de.name
                kind = _kind(st.st_mode)
                target = os.readlink(de.path) if kind == "l" else b""
                size = st.st_size if kind == "f" else 0
                out[name] = Entry(kind, stat.S_IMODE(st.st_mode), size, st.st_mtime_ns,
                                  st.st_uid, st.st_gid, target)
                if kind == "d":
                    stack.append(name)
    return out


def tree_of(name: str, path: Path) -> Tree:
    """Scan a built tree and summarise it."""
    manifest = scan(path)
    files = sum(1 for e in manifest.values() if e.kind == "f")
    dirs = sum(1 for e in manifest.values() if e.kind == "d")
    size = sum(e.size for e in manifest.values())
    return Tree(name, path, manifest, files, dirs, size)


def _same_bytes(a: bytes, b: bytes) -> str | None:
    """Compare two regular files' contents."""
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        off = 0
        while True:
            x = fa.read(8 * MiB)
            y = fb.read(8 * MiB)
            if x != y:
                return f"content differs in the 8 MiB block at offset {off}"
            if not x:
                return None
            off += len(x)


def verify(src: Tree, dst: Path, *, full: bool = False, seed: int = 0) -> str | None:
    """Check that dst is a faithful ``-a`` copy of src; return a reason if it is not.

    Metadata (names, types, modes, sizes, owners, mtimes to the nanosecond) is compared
    for every entry.  Contents: every file if full; otherwise every file over 4 MiB
    (cheap per byte) and a seeded sample of SAMPLE_FILES smaller ones.
    """
    try:
        got = scan(dst)
    except OSError as exc:
        return f"cannot scan destination: {exc.strerror}"
    want = src.manifest
    if got.keys() != want.keys():
        missing = sorted(want.keys() - got.keys())
        extra = sorted(got.keys() - want.keys())
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[0]!r})")
        return "; ".join(parts)
    bad = [name for name, e in want.items() if got[name] != e]
    if bad:
        name = sorted(bad)[0]
        w, g = want[name], got[name]
        fields = [f for f in ("kind", "mode", "size", "mtime_ns", "uid", "gid", "target")
                  if getattr(w, f) != getattr(g, f)]
        return (f"{len(bad)} entries differ in metadata (e.g. {name!r}: "
                + ", ".join(f"{f} {getattr(g, f)!r} != {getattr(w, f)!r}" for f in fields) + ")")
    files = sorted(n for n, e in want.items() if e.kind == "f")
    if not full and len(files) > SAMPLE_FILES:
        big = [n for n in files if want[n].size > WHOLE_LIMIT]
        files = sorted(set(random.Random(seed).sample(files, SAMPLE_FILES)) | set(big))
    bsrc, bdst = os.fsencode(src.path), os.fsencode(dst)
    for name in files:
        why = _same_bytes(os.path.join(bsrc, name), os.path.join(bdst, name))
        if why:
            return f"{name!r}: {why}"
    return None


# --------------------------------------------------------------------------- builders

def _pool(seed: int) -> memoryview:
    """Seeded random bytes to slice file contents from (fast: one C call)."""
    return memoryview(random.Random(seed).randbytes(POOL_SIZE))


def build_big(root: Path, scale: float, seed: int, size: int = GiB) -> None:
    """One big file of random data: a 64 MiB pool, rotated per chunk, with a unique header.

    Each 64 MiB chunk starts with its own 4 KiB header and a different rotation of the
    pool, so that no two chunks are byte-identical (nothing can dedup whole chunks).
    """
    total = max(1, int(size * scale))
    pool = _pool(seed)
    rng = random.Random(seed + 1)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "big.bin"
    with open(path, "wb", buffering=0) as f:
        written = 0
        chunk = 0
        while written < total:
            n = min(POOL_SIZE, total - written)
            header = (b"zcsync-bench chunk %08d " % chunk).ljust(64, b".")
            header += random.Random((seed << 20) + chunk).randbytes(HEADER_SIZE - len(header))
            rot = rng.randrange(HEADER_SIZE, POOL_SIZE)
            body = [header, pool[rot:], pool[HEADER_SIZE:rot]]
            left = n
            for part in body:
                part = part[:left]
                if part:
                    f.write(part)
                    left -= len(part)
            written += n
            chunk += 1
    os.utime(path, ns=(BASE_MTIME * 10**9 + 123456789,) * 2)
    # A past time: a directory touched in the same second as the copy can keep the
    # copy's own mtime with rsync (it compares whole seconds there).
    os.utime(root, ns=(BASE_MTIME * 10**9 + 987654321,) * 2)


def small_sizes(count: int, mean: int, seed: int) -> list[int]:
    """A fixed, seeded size distribution: lognormal (median ~2.9 KB), 1% empty files,
    capped at 512 KiB, rescaled so that the total is count * mean."""
    rng = random.Random(seed)
    sigma = 1.2
    mu = math.log(mean) - sigma * sigma / 2
    sizes = []
    for _ in range(count):
        if rng.random() < 0.01:
            sizes.append(0)
        else:
            sizes.append(min(512 * KiB, int(rng.lognormvariate(mu, sigma))))
    total = sum(sizes) or 1
    factor = count * mean / total
    return [int(s * factor) for s in sizes]


def build_small(root: Path, scale: float, seed: int, count: int = 100_000,
                ndirs: int = 1000, mean: int = 5900) -> None:
    """Many small files (default 100,000, ~590 MB) spread over ~1000 directories.

    Directories are two levels deep (dNN/sNN); files get seeded sizes, contents sliced
    from a random pool at seeded offsets, seeded past mtimes and a few different modes.
    """
    count = max(1, int(count * scale))
    ndirs = max(1, int(ndirs * scale))
    rng = random.Random(seed)
    pool = _pool(seed)
    top = max(1, min(ndirs, round(ndirs / 25)))  # 1 top-level dir per 24 leaves
    dirs: list[Path] = []
    for t in range(top):
        dirs.append(root / f"d{t:03d}")
    leaf = ndirs - len(dirs)
    for i in range(leaf):
        dirs.append(dirs[i % top] / f"s{i // top:03d}")
    root.mkdir(parents=True, exist_ok=True)
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    exts = (".c", ".h", ".py", ".txt", ".json", ".md", ".o", ".png", "")
    modes = (0o644,) * 17 + (0o755, 0o600, 0o444)
    sizes = small_sizes(count, mean, seed)
    bdirs = [os.fsencode(d) for d in dirs]
    for i, size in enumerate(sizes):
        d = bdirs[rng.randrange(len(bdirs))]
        name = os.path.join(d, b"f%06d%s" % (i, exts[i % len(exts)].encode()))
        off = rng.randrange(0, POOL_SIZE - size) if size < POOL_SIZE else 0
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if size:
                os.write(fd, pool[off:off + size])
            os.fchmod(fd, modes[rng.randrange(len(modes))])
            t = (BASE_MTIME - rng.randrange(0, 365 * 86400)) * 10**9 + rng.randrange(10**9)
            os.utime(fd, ns=(t, t))
        finally:
            os.close(fd)
    # Directory mtimes last (creating files changed them); deepest first.
    for d in sorted(dirs, key=lambda p: -len(p.parts)) + [root]:
        t = (BASE_MTIME - rng.randrange(0, 365 * 86400)) * 10**9 + rng.randrange(10**9)
        os.utime(d, ns=(t, t))


@dataclass(frozen=True)
class Workload:
    """A named source tree: ``build(root, scale, seed)`` writes it under root."""

    name: str
    description: str
    build: Callable[[Path, float, int], None]


def build_big512(root: Path, scale: float, seed: int) -> None:
    build_big(root, scale, seed, size=GiB // 2)


def build_small20k(root: Path, scale: float, seed: int) -> None:
    build_small(root, scale * 0.2, seed)


WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("big1g", "one 1 GiB file of random data", build_big),
    Workload("big512m", "one 512 MiB file of random data", build_big512),
    Workload("small20k", "20,000 files, ~118 MB (small100k at 1/5)", build_small20k),
    Workload("small100k", "100,000 files, ~590 MB, avg 5.9 KB, in ~1000 directories",
             build_small),
)}
