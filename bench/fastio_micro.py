"""Micro-benchmark of zcsync.fastio: each copy method (and cp) on one big file, plus digests.

    python bench/fastio_micro.py                        # 1 GiB on /dev/shm and on $TMPDIR's fs
    python bench/fastio_micro.py --dir /mnt/xfs --size 256M --repeat 5 --fsync
    python bench/fastio_micro.py --cross /dev/shm /var/tmp   # source and destination on two filesystems

Reports MiB/s (best of --repeat; the median follows in brackets) and the CPU seconds
this process (or cp) used for the best run. Methods are interleaved round by round so
that a noisy machine hurts them alike. Hot page cache unless --cold (which evicts just
the source file with fadvise). Without --fsync the destination's write-back is not
timed, but it is flushed (sync) between runs so one run's write-back does not slow
the next.
"""
from __future__ import annotations

import argparse
import errno
import json
import mmap
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import xxhash  # noqa: E402

from zcsync import fastio  # noqa: E402

MiB = 1 << 20


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B").rstrip("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def make_source(path: Path, size: int) -> None:
    block = os.urandom(16 * MiB)
    with open(path, "wb") as f:
        written, i = 0, 0
        while written < size:
            chunk = block[i % 4096:] + block[: i % 4096]  # no two 16 MiB blocks alike
            n = min(len(chunk), size - written)
            f.write(chunk[:n])
            written += n
            i += 1
    warm(path)


def warm(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        fastio.file_digest(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def timed_copy(src: Path, dst: Path, method: str | None, do_fsync: bool) -> tuple[float, float, str]:
    """One copy with copy_data: (seconds, cpu seconds, method used)."""
    size = src.stat().st_size
    s = os.open(src, os.O_RDONLY)
    d = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        c0, t0 = cpu(resource.RUSAGE_SELF), time.perf_counter()
        used = fastio.copy_data(s, d, size, method=method)
        if do_fsync:
            os.fsync(d)
        t1, c1 = time.perf_counter(), cpu(resource.RUSAGE_SELF)
    finally:
        os.close(s)
        os.close(d)
    return t1 - t0, c1 - c0, used


def timed_cp(src: Path, dst: Path, do_fsync: bool) -> tuple[float, float, str]:
    c0, t0 = cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    if do_fsync:
        fd = os.open(dst, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    t1, c1 = time.perf_counter(), cpu(resource.RUSAGE_CHILDREN)
    return t1 - t0, c1 - c0, "cp"


def evict(path: Path) -> None:
    """Drop one file's pages from the page cache (no global drop_caches on a shared box)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def bench_copies(src: Path, dst_dir: Path, methods: list[str], repeat: int, do_fsync: bool,
                 cold: bool) -> list[dict]:
    """Time every method `repeat` times, interleaved so that drift hits all methods alike."""
    size = src.stat().st_size
    dst = dst_dir / "fastio_micro.dst"
    runs: dict[str, list[tuple[float, float, str]]] = {m: [] for m in methods}
    errors: dict[str, str] = {}
    for _ in range(repeat):
        for method in methods:
            if method in errors:
                continue
            dst.unlink(missing_ok=True)
            os.sync()
            if cold:
                evict(src)
            fastio.reset_cache()
            try:
                if method == "cp":
                    runs[method].append(timed_cp(src, dst, do_fsync))
                else:
                    runs[method].append(timed_copy(src, dst, None if method == "auto" else method, do_fsync))
            except OSError as exc:
                errors[method] = errno.errorcode.get(exc.errno or 0, str(exc))
    dst.unlink(missing_ok=True)
    rows = []
    for method in methods:
        if method in errors:
            rows.append({"method": method, "error": errors[method]})
            continue
        best = min(runs[method])
        used = runs[method][-1][2]
        rows.append({
            "method": method if method != "auto" else f"auto ({used})",
            "mib_s": size / best[0] / MiB,
            "median_mib_s": size / statistics.median(r[0] for r in runs[method]) / MiB,
            "cpu_s": best[1],
        })
    return rows


def bench_digests(src: Path, repeat: int) -> list[dict]:
    size = src.stat().st_size
    fd = os.open(src, os.O_RDONLY)

    def with_mmap() -> bytes:
        m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        m.madvise(mmap.MADV_SEQUENTIAL)
        h = xxhash.xxh3_128()
        with memoryview(m) as view:
            h.update(view)
        m.close()
        return h.digest()

    rows = []
    try:
        for name, fn in [("file_digest (pread)", lambda: fastio.file_digest(fd, size)), ("mmap", with_mmap)]:
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            rows.append({"method": f"digest {name}", "mib_s": size / min(times) / MiB,
                         "median_mib_s": size / statistics.median(times) / MiB})
    finally:
        os.close(fd)
    return rows


def fs_type(path: Path) -> str:
    out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def show(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    for r in rows:
        if "error" in r:
            print(f"  {r['method']:28s} unsupported ({r['error']})")
            continue
        cpu_s = f"  cpu {r['cpu_s']:.2f} s" if "cpu_s" in r else ""
        print(f"  {r['method']:28s} {r['mib_s']:9.0f} MiB/s  [{r['median_mib_s']:6.0f}]{cpu_s}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=1 << 30, help="file size (default 1G)")
    ap.add_argument("--dir", type=Path, action="append",
                    help="directory to test in (repeatable; default /dev/shm and the temp dir)")
    ap.add_argument("--cross", type=Path, nargs=2, metavar=("SRC_DIR", "DST_DIR"),
                    help="also copy from a file in SRC_DIR to DST_DIR")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--fsync", action="store_true", help="include fsync of the copy in the time")
    ap.add_argument("--cold", action="store_true", help="evict the source from the page cache before each copy")
    ap.add_argument("--no-digest", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = ap.parse_args()

    dirs = args.dir or [Path("/dev/shm"), Path(tempfile.gettempdir())]
    methods = ["auto", *fastio.COPY_METHODS, "cp"]
    results: dict[str, list[dict]] = {}
    print(f"fastio micro-benchmark: {args.size / MiB:.0f} MiB, best of {args.repeat}"
          f"{', with fsync' if args.fsync else ''}{', cold source' if args.cold else ''}; Linux {os.uname().release}, {os.cpu_count()} CPUs",
          file=sys.stderr if args.json else sys.stdout)
    pairs = [(d, d) for d in dirs]
    if args.cross:
        pairs.append((args.cross[0], args.cross[1]))
    for src_dir, dst_dir in pairs:
        with tempfile.TemporaryDirectory(dir=src_dir, prefix="fastio-micro-") as sd, \
                tempfile.TemporaryDirectory(dir=dst_dir, prefix="fastio-micro-") as dd:
            src = Path(sd) / "src"
            make_source(src, args.size)
            title = f"{src_dir} ({fs_type(src_dir)})"
            if src_dir != dst_dir:
                title += f" -> {dst_dir} ({fs_type(dst_dir)})"
            rows = bench_copies(src, Path(dd), methods, args.repeat, args.fsync, args.cold)
            if not args.no_digest and src_dir == dst_dir:
                rows += bench_digests(src, max(args.repeat, 3))
            results[title] = rows
            if not args.json:
                show(title, rows)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
