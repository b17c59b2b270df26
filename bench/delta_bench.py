"""Delta transfer over a real sshd or through daemons: zcsync against rsync --no-W, time and bytes.

    python bench/delta_bench.py [--mib 256] [--runs 1] [--direction push,pull] [--json]
                                [--baseline DIR] [--extra=--inplace] [--via ssh|daemon]

Starts the test suite's sshd on 127.0.0.1 (needs root, like the integration tests), or
with --via daemon a `zcsync daemon` and an `rsync --daemon` serving the work directory
(bench/daemons.py), then for each case builds a basis (in dst/) and a source (in src/) of --mib MiB:

  edits         20 scattered 100-byte edits
  insert-front  1 MiB inserted at the front
  append        10% appended
  unrelated     a source that shares nothing with the basis

and times `rsync -a --no-W --stats -e ssh` and `zcsync -a --no-W --stats` on fresh
copies of the same trees, reporting wall time, "Total bytes sent/received" and the
zcsync/rsync ratios. --baseline DIR also times the zcsync of another checkout (say, an
older commit unpacked with `git archive`), so that before and after are measured in the
same run against the same rsync. Runs of the tools alternate, and the best of --runs
is kept (the median is in --json). Not part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from sshd import ALIAS, Sshd, missing_reason, remote_zcsync_path  # noqa: E402

from bench.daemons import Daemons  # noqa: E402

NAME = "big.bin"
OLD = 1_500_000_000


def _edits(data: bytes, rnd: random.Random) -> bytes:
    out = bytearray(data)
    for i in range(20):
        pos = (i * len(data)) // 20 + rnd.randrange(len(data) // 40)
        out[pos:pos + 100] = rnd.randbytes(100)
    return bytes(out)


def randbytes(rnd: random.Random, n: int) -> bytes:
    """n pseudo-random bytes (Random.randbytes stops at 256 MiB)."""
    return b"".join(rnd.randbytes(min(1 << 24, n - i)) for i in range(0, n, 1 << 24))


CASES = {
    "edits": _edits,
    "insert-front": lambda d, r: r.randbytes(1 << 20) + d,
    "append": lambda d, r: d + randbytes(r, len(d) // 10),
    "unrelated": lambda d, r: randbytes(r, len(d)),
}


def build(base: Path, case: str, size: int) -> None:
    """base/src/big.bin and base/dst/big.bin (the basis, older)."""
    for d in ("src", "dst"):
        (base / d).mkdir(parents=True)
    rnd = random.Random(case)
    basis = randbytes(rnd, size)
    (base / "dst" / NAME).write_bytes(basis)
    os.utime(base / "dst" / NAME, (OLD, OLD))
    (base / "src" / NAME).write_bytes(CASES[case](basis, rnd))


def stat_line(out: str, what: str) -> int:
    m = re.search(rf"Total bytes {what}: ([\d,]+)", out)
    if not m:
        raise RuntimeError(f"no 'Total bytes {what}' in the output:\n{out}")
    return int(m.group(1).replace(",", ""))


def run_tool(tool: str, base: Path, run: Path, direction: str, env: dict[str, str],
             repo: Path = ROOT, extra: tuple[str, ...] = (), daemons: Daemons | None = None) -> dict[str, float]:
    if run.exists():
        shutil.rmtree(run)
    subprocess.run(["cp", "-a", str(base), str(run)], check=True)
    if daemons is not None:  # the daemon serves the work directory: run/ is inside its module
        url = daemons.url("rsync" if tool == "rsync" else "zcsync", run)
        paths = ["src/", url + "dst"] if direction == "push" else [url + "src/", "dst"]
    else:
        paths = (["src/", f"{ALIAS}:{run}/dst"] if direction == "push" else [f"{ALIAS}:{run}/src/", "dst"])
    if tool == "rsync":
        rsh = ["-e", env["RSYNC_RSH"]] if daemons is None else []
        argv = ["rsync", "-a", "--no-W", "--stats", *extra, *rsh, *paths]
    else:
        env = {**env, "PYTHONPATH": str(repo)}
        remote = ["--zcsync-path", remote_zcsync_path().replace(str(ROOT), str(repo))] if daemons is None else []
        argv = [sys.executable, "-m", "zcsync", *remote, "-a", "--no-W", "--stats", *extra, *paths]
    subprocess.run(["sync"], check=False)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=run, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} exited {proc.returncode}:\n{proc.stderr}")
    if (run / "dst" / NAME).read_bytes() != (run / "src" / NAME).read_bytes():
        raise RuntimeError(f"{tool}: dst differs from src after {direction}")
    return {"wall_s": wall, "sent": stat_line(proc.stdout, "sent"), "received": stat_line(proc.stdout, "received")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=1, help="runs per tool and case (best wall time is kept)")
    ap.add_argument("--direction", default="push,pull")
    ap.add_argument("--only", default=",".join(CASES))
    ap.add_argument("--json", action="store_true", help="print raw results as JSON too")
    ap.add_argument("--baseline", type=Path, help="also time the zcsync of this checkout (before/after)")
    ap.add_argument("--extra", default="", help="more options for both tools, e.g. --extra=--inplace")
    ap.add_argument("--via", choices=("ssh", "daemon"), default="ssh",
                    help="ssh (both tools over the test sshd) or daemon (zcsync daemon vs rsync --daemon)")
    args = ap.parse_args()
    extra = tuple(args.extra.split())
    tools = {"rsync": ROOT, "zcsync": ROOT}
    if args.baseline:
        tools = {"rsync": ROOT, "baseline": args.baseline.resolve(), "zcsync": ROOT}
    reason = missing_reason() if args.via == "ssh" else None
    if reason:
        print(f"cannot run sshd: {reason}", file=sys.stderr)
        return 1
    if args.baseline and args.via == "daemon":
        print("--baseline works over ssh only", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="zcsync-delta-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    daemons = None
    if args.via == "daemon":
        daemons = Daemons()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        daemons.start({"zcsync", "rsync"}, work, (sys.executable, "-m", "zcsync"), env)
        for name in ("zcsync", "rsync"):
            if daemons.unavailable(name):
                print(f"cannot run the {name} daemon: {daemons.unavailable(name)}", file=sys.stderr)
                daemons.stop()
                return 1
        server = None
    else:
        server = Sshd(work / "sshd").start()
        env = server.env()
    results = []
    try:
        for case in args.only.split(","):
            base = work / case / "base"
            build(base, case, args.mib << 20)
            for direction in args.direction.split(","):
                row: dict[str, object] = {"case": case, "direction": direction}
                samples: dict[str, list[dict[str, float]]] = {t: [] for t in tools}
                for _ in range(args.runs):  # alternate the tools: load changes hit all of them
                    for tool, repo in tools.items():
                        samples[tool].append(run_tool("rsync" if tool == "rsync" else "zcsync", base,
                                                      work / case / "run", direction, env, repo, extra,
                                                      daemons))
                for tool, got in samples.items():
                    best = dict(min(got, key=lambda s: s["wall_s"]))
                    best["median_s"] = sorted(s["wall_s"] for s in got)[len(got) // 2]
                    row[tool] = best
                results.append(row)
                rs, zc = row["rsync"], row["zcsync"]  # type: ignore[index]
                data = "sent" if direction == "push" else "received"
                line = (f"{case:13} {direction:4}  rsync {rs['wall_s']:6.2f}s {rs[data]:>12,} B   "
                        f"zcsync {zc['wall_s']:6.2f}s {zc[data]:>12,} B   "
                        f"time x{zc['wall_s'] / rs['wall_s']:.2f}  bytes x{zc[data] / rs[data]:.3f}")
                if "baseline" in row:
                    bl = row["baseline"]  # type: ignore[index]
                    line += f"   (baseline {bl['wall_s']:6.2f}s x{bl['wall_s'] / rs['wall_s']:.2f})"
                print(line, flush=True)
            shutil.rmtree(work / case)
    finally:
        if server is not None:
            server.stop()
        if daemons is not None:
            daemons.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
