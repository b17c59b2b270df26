"""Micro-benchmark of zcsync.fsscan: listing + lstat of one directory of small files.

    python bench/fsscan_micro.py                      # 20k files on /dev/shm
    python bench/fsscan_micro.py --dir /var/tmp --files 100000 --repeat 15

Reports microseconds per file (best of --repeat; the median follows in brackets) for:

    scandir+lstat      os.scandir(fd) and DirEntry.stat(follow_symlinks=False) per entry
    py_list_dir        the pure-Python fallback: the same plus the result tuples
    list_dir           the C extension
    os.stat(dir_fd=)   os.stat(name, dir_fd=fd, follow_symlinks=False) per name
    py_stat_names      the pure-Python fallback of stat_names
    stat_names         the C extension

Methods are interleaved round by round so that a noisy machine hurts them alike. The
directory is built once (names sorted as a caller would, then passed to the
stat_names methods); the page and dentry caches are hot, as for a no-change resync.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zcsync import fsscan  # noqa: E402


def make_tree(root: Path, files: int) -> None:
    payload = b"x" * 100
    for i in range(files):
        fd = os.open(root / f"f{i:06d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, payload)
        finally:
            os.close(fd)


def scandir_lstat(fd: int, names: list[bytes]) -> object:
    with os.scandir(fd) as it:
        return [(e.name, e.stat(follow_symlinks=False)) for e in it]


def stat_loop(fd: int, names: list[bytes]) -> object:
    return [os.stat(n, dir_fd=fd, follow_symlinks=False) for n in names]


def methods() -> dict[str, Callable[[int, list[bytes]], object]]:
    found: dict[str, Callable[[int, list[bytes]], object]] = {
        "scandir+lstat": scandir_lstat,
        "py_list_dir": lambda fd, names: fsscan.py_list_dir(fd),
    }
    if fsscan.NATIVE:
        found["list_dir"] = lambda fd, names: fsscan.list_dir(fd)
    found["os.stat(dir_fd=)"] = stat_loop
    found["py_stat_names"] = fsscan.py_stat_names
    if fsscan.NATIVE:
        found["stat_names"] = fsscan.stat_names
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/dev/shm", help="where to make the test directory")
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--json", metavar="OUT", help="also write the raw samples here")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="zcsync-fsscan-", dir=args.dir))
    try:
        make_tree(root, args.files)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            names = sorted(os.fsencode(n) for n in os.listdir(root))
            todo = methods()
            for run in todo.values():  # warm the dentry cache and the code paths
                run(fd, names)
            samples: dict[str, list[float]] = {name: [] for name in todo}
            for _ in range(args.repeat):
                for name, run in todo.items():
                    t0 = time.perf_counter()
                    run(fd, names)
                    samples[name].append((time.perf_counter() - t0) * 1e6 / args.files)
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(root)

    print(f"{args.files} files in {args.dir}, native={fsscan.NATIVE}, "
          f"us per file, best of {args.repeat} [median]")
    for name, us in samples.items():
        print(f"  {name:18s} {min(us):6.2f}  [{statistics.median(us):6.2f}]")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"dir": args.dir, "files": args.files, "native": fsscan.NATIVE, "us_per_file": samples},
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
