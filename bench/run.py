"""Benchmark runner: times zcsync against rsync and cp (and iperf3 over loopback) on tmpfs workloads.

Each case is one table entry (:class:`Case`): a workload, how the destination is
prepared before every timed run (empty, or already synced by the same tool), the extra
options, and which tools apply.  Each tool is one table entry (:class:`Tool`) that turns
an :class:`Invocation` into an argv.  Runs are interleaved round-robin with a rotating
start; each sample's exit code is checked and the destination verified afterwards, so a
wrong result is reported as a failure instead of being counted.

Usage: ``python -m bench [--runs N] [--only NAME ...] [--tools T,...] [--scale F]
[--json OUT] [--zcsync CMD]``; ``python -m bench --list`` shows cases and tools.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fnmatch
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import daemons
from bench.workloads import WORKLOADS, Tree, tree_of, verify

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MD = REPO / "docs" / "benchmarks.md"
FRESH = "fresh"      # destination removed before every run (not timed)
SYNCED = "synced"    # destination made once by the same tool (not timed), then reused


def log(msg: str) -> None:
    """Progress goes to stderr; tables go to stdout."""
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- tools

class Unsupported(Exception):
    """The tool cannot express this case's options."""


@dataclass(frozen=True)
class Invocation:
    """One transfer to run: endpoint specs as the tool will see them, plus options."""

    src: str                       # e.g. "/dev/shm/.../src/" (trailing slash: contents)
    dst: str                       # e.g. "/dev/shm/.../dst/"
    options: tuple[str, ...] = ()  # rsync-style options beyond -a, e.g. ("-c",)
    zcsync: tuple[str, ...] = ()   # how to start zcsync
    nbytes: int = 0                # bytes in the source tree (for iperf3 -n)


@dataclass(frozen=True)
class Tool:
    """A command under test: argv(invocation) -> list of arguments.

    ``runner`` replaces the plain timed ``subprocess.run`` for a tool that needs more
    (iperf3 starts its one-shot server first); ``verify`` is False for a tool that
    writes no destination (a reference, not a copy).
    """

    name: str
    argv: Callable[[Invocation], list[str]]
    description: str
    runner: Callable[[list[str], Settings, int], Sample] | None = None
    verify: bool = True
    show: Callable[[list[str]], str] = shlex.join   # the command as reports show it


def _zcsync(*extra: str) -> Callable[[Invocation], list[str]]:
    def argv(inv: Invocation) -> list[str]:
        return [*inv.zcsync, "-a", *extra, *inv.options, inv.src, inv.dst]
    return argv


def _rsync(inv: Invocation) -> list[str]:
    return ["rsync", "-a", *inv.options, inv.src, inv.dst]


def _cp(inv: Invocation) -> list[str]:
    if inv.options:
        raise Unsupported(f"cp has no equivalent of {' '.join(inv.options)}")
    return ["cp", "-a", inv.src.rstrip("/") + "/.", inv.dst]


class Remote:
    """The sshd the remote cases talk to (started by main() when a remote case is selected)."""

    alias = "zcs-test"
    rsh = ""  # OpenSSH command for -e, with the server's config
    zcsync_path = ""  # --zcsync-path for the server side


def _zcsync_ssh(*extra: str) -> Callable[[Invocation], list[str]]:
    def argv(inv: Invocation) -> list[str]:
        rsh = ["-e", Remote.rsh] if "rsh" in extra else []
        return [*inv.zcsync, "-a", "--no-fsync", *rsh, "--zcsync-path", Remote.zcsync_path, *inv.options,
                inv.src, inv.dst]
    return argv


def _rsync_ssh(inv: Invocation) -> list[str]:
    return ["rsync", "-a", "-e", Remote.rsh, *inv.options, inv.src, inv.dst]


DAEMONS = daemons.Daemons()   # started by main() when a daemon case is selected


class Unavailable(Exception):
    """The tool applies, but what it needs (its daemon) is not there: it fails."""


def _zcsync_daemon(*extra: str, env: tuple[str, ...] = ()) -> Callable[[Invocation], list[str]]:
    def argv(inv: Invocation) -> list[str]:
        pre = ["env", *env] if env else []
        return [*pre, *inv.zcsync, "-a", "--no-fsync", *extra, *inv.options, inv.src, inv.dst]
    return argv


def _rsync_daemon(inv: Invocation) -> list[str]:
    return ["rsync", "-a", *inv.options, inv.src, inv.dst]


def _iperf3(inv: Invocation) -> list[str]:
    real = inv.src.startswith("/")   # not the SRC/DST form of the commands in reports
    if real and DAEMONS.iperf3_error:
        raise Unavailable(DAEMONS.iperf3_error)
    port = DAEMONS.iperf3_port if real else "PORT"
    return ["iperf3", "-c", daemons.HOST, "-p", str(port), "-n", str(inv.nbytes), "-J"]


def _show_iperf3(argv: list[str]) -> str:
    port = argv[argv.index("-p") + 1]
    return (shlex.join(["iperf3", "-s", "-1", "-B", daemons.HOST, "-p", port]) + " & "
            + shlex.join(argv))


def _time_iperf3(argv: list[str], settings: Settings, run: int) -> Sample:
    """One iperf3 transfer over loopback: the client's wall time, and iperf3's own rate."""
    r = daemons.iperf3_once(argv, settings.env, settings.timeout)
    return Sample(run, r.seconds, r.error is None, r.returncode, r.error, r.cpu_seconds, r.rate)


TOOLS: dict[str, Tool] = {t.name: t for t in (
    Tool("zcsync", _zcsync(), "zcsync -a (fsyncs every file and directory)"),
    Tool("zcsync-nofsync", _zcsync("--no-fsync"), "zcsync -a --no-fsync (like rsync and cp)"),
    Tool("rsync", _rsync, "rsync -a"),
    Tool("cp", _cp, "cp -a SRC/. DST/ (GNU coreutils)"),
    Tool("zcsync-paramiko", _zcsync_ssh(), "zcsync -a --no-fsync over ssh with its own paramiko client"),
    Tool("zcsync-e-ssh", _zcsync_ssh("rsh"), "zcsync -a --no-fsync -e ssh (OpenSSH)"),
    Tool("rsync-e-ssh", _rsync_ssh, "rsync -a -e ssh (OpenSSH)"),
    Tool("zcsync-daemon", _zcsync_daemon(),
         "zcsync -a --no-fsync to/from zcsync:// (zcsync daemon on 127.0.0.1)"),
    Tool("zcsync-daemon-direct", _zcsync_daemon("--write-mode=direct"),
         "as zcsync-daemon, receiver writes with O_DIRECT (--write-mode=direct)"),
    Tool("zcsync-daemon-splice", _zcsync_daemon("--write-mode=splice"),
         "as zcsync-daemon, receiver splices socket -> pipe -> file (--write-mode=splice)"),
    Tool("zcsync-daemon-buffered", _zcsync_daemon("--write-mode=buffered"),
         "as zcsync-daemon, receiver does recv + write (--write-mode=buffered)"),
    Tool("zcsync-daemon-readv", _zcsync_daemon(env=(f"{daemons.SEND_METHOD_VAR}=readwrite",)),
         f"as zcsync-daemon, sender reads + writes instead of sendfile "
         f"({daemons.SEND_METHOD_VAR}=readwrite on the client and on a second daemon)"),
    Tool("rsync-daemon", _rsync_daemon, "rsync -a to/from rsync:// (rsync --daemon on 127.0.0.1)"),
    Tool("iperf3", _iperf3, "iperf3 -c 127.0.0.1 -n SIZE against iperf3 -s -1: the loopback "
         "TCP ceiling (reference, writes no file)", runner=_time_iperf3, verify=False,
         show=_show_iperf3),
)}


# --------------------------------------------------------------------------- cases

def local_spec(tool: str, path: Path) -> str:
    """A local directory endpoint, trailing slash meaning 'the contents of'."""
    return f"{path}/"


@dataclass(frozen=True)
class Case:
    """One benchmark: a workload, a destination state, options, and the tools that apply.

    Remote cases will add endpoint builders (``src_spec``/``dst_spec`` get the tool name,
    so rsync:// and zcsync:// can differ) and, if needed, a setup that starts a server.
    """

    name: str
    workload: str
    dest: str                                   # FRESH or SYNCED
    description: str
    options: tuple[str, ...] = ()
    tools: tuple[str, ...] = ("zcsync", "zcsync-nofsync", "rsync", "cp")
    rate: bool = True                           # report MB/s and files/s
    src_spec: Callable[[str, Path], str] = local_spec
    dst_spec: Callable[[str, Path], str] = local_spec


SYNCING = ("zcsync", "zcsync-nofsync", "rsync")
SSH_TOOLS = ("zcsync-paramiko", "zcsync-e-ssh", "rsync-e-ssh")


def ssh_spec(tool: str, path: Path) -> str:
    """The same local directory, reached through the test sshd on 127.0.0.1."""
    return f"{Remote.alias}:{path}/"


DAEMON_TOOLS = ("zcsync-daemon", "zcsync-daemon-direct", "zcsync-daemon-splice",
                "zcsync-daemon-buffered", "zcsync-daemon-readv", "rsync-daemon")


def daemon_of(tool: str) -> str | None:
    """Which daemon (bench.daemons name) a tool talks to; None for iperf3."""
    if tool == "rsync-daemon":
        return daemons.RSYNC
    if tool == "zcsync-daemon-readv":
        return daemons.ZCSYNC_READV
    if tool.startswith("zcsync-daemon"):
        return daemons.ZCSYNC
    return None


def daemon_spec(tool: str, path: Path) -> str:
    """The same local directory, reached through the tool's daemon (module root: the work dir)."""
    name = daemon_of(tool)
    if name is None:
        return local_spec(tool, path)
    if path.is_absolute():
        why = DAEMONS.unavailable(name)
        if why:
            raise Unavailable(why)
    return DAEMONS.url(name, path)


CASES: dict[str, Case] = {c.name: c for c in (
    Case("big1g-fresh", "big1g", FRESH, "copy one 1 GiB file into an empty destination"),
    Case("small100k-fresh", "small100k", FRESH,
         "copy 100,000 small files into an empty destination"),
    Case("small100k-nochange", "small100k", SYNCED,
         "resync onto an identical destination made by the same tool (quick check)",
         tools=SYNCING, rate=False),
    Case("small100k-checksum-nochange", "small100k", SYNCED,
         "as nochange, with -c: every file is read and checksummed on both sides",
         options=("-c",), tools=SYNCING),
    Case("daemon-push-small100k", "small100k", FRESH,
         "push 100,000 small files to a daemon on 127.0.0.1 (zcsync://, rsync://)",
         tools=DAEMON_TOOLS, dst_spec=daemon_spec),
    Case("ssh-push-512m", "big512m", FRESH, "push one 512 MiB file over ssh (127.0.0.1)",
         tools=SSH_TOOLS, dst_spec=ssh_spec),
    Case("ssh-pull-512m", "big512m", FRESH, "pull one 512 MiB file over ssh (127.0.0.1)",
         tools=SSH_TOOLS, src_spec=ssh_spec),
    Case("daemon-push-512m", "big512m", FRESH,
         "push one 512 MiB file to a daemon on 127.0.0.1 (zcsync://, rsync://)",
         tools=DAEMON_TOOLS, dst_spec=daemon_spec),
    Case("ssh-push-1g", "big1g", FRESH, "push one 1 GiB file over ssh (127.0.0.1)",
         tools=SSH_TOOLS, dst_spec=ssh_spec),
    Case("ssh-pull-1g", "big1g", FRESH, "pull one 1 GiB file over ssh (127.0.0.1)",
         tools=SSH_TOOLS, src_spec=ssh_spec),
    Case("daemon-push-1g", "big1g", FRESH,
         "push one 1 GiB file to a daemon on 127.0.0.1 (zcsync://, rsync://), iperf3 for "
         "reference", tools=(*DAEMON_TOOLS, "iperf3"), dst_spec=daemon_spec),
    Case("daemon-pull-1g", "big1g", FRESH,
         "pull one 1 GiB file from a daemon on 127.0.0.1 (zcsync://, rsync://)",
         tools=DAEMON_TOOLS, src_spec=daemon_spec),
    Case("ssh-push-small20k", "small20k", FRESH, "push 20,000 small files over ssh (127.0.0.1)",
         tools=SSH_TOOLS, dst_spec=ssh_spec),
    Case("ssh-push-small100k", "small100k", FRESH,
         "push 100,000 small files over ssh (127.0.0.1), the size #3 names",
         tools=SSH_TOOLS, dst_spec=ssh_spec),
    Case("ssh-pull-small100k", "small100k", FRESH,
         "pull 100,000 small files over ssh (127.0.0.1)", tools=SSH_TOOLS, src_spec=ssh_spec),
)}

RATIOS = (("rsync", "zcsync"), ("rsync", "zcsync-nofsync"),
          ("zcsync", "cp"), ("zcsync-nofsync", "cp"), ("rsync", "cp"),
          ("rsync-e-ssh", "zcsync-paramiko"), ("rsync-e-ssh", "zcsync-e-ssh"),
          ("rsync-daemon", "zcsync-daemon"), ("rsync-daemon", "zcsync-daemon-direct"),
          ("rsync-daemon", "zcsync-daemon-splice"), ("rsync-daemon", "zcsync-daemon-buffered"),
          ("rsync-daemon", "zcsync-daemon-readv"), ("zcsync-daemon-readv", "zcsync-daemon"))
REFERENCE = "iperf3"   # a tool whose rate the others are given as a fraction of


# --------------------------------------------------------------------------- results

@dataclass
class Sample:
    run: int
    seconds: float | None
    ok: bool
    returncode: int | None = None
    error: str | None = None
    cpu_seconds: float | None = None   # user + system time of the command and its children
    rate: float | None = None          # bytes/s as the tool itself measured it (iperf3)


@dataclass
class ToolResult:
    tool: str
    argv: list[str] = field(default_factory=list)
    shown: str = ""               # argv with SRC and DST for the paths, for reports
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None      # failure outside the samples (e.g. preparation)
    applicable: bool = True       # False: the tool cannot express this case

    @property
    def good(self) -> list[float]:
        return [s.seconds for s in self.samples if s.ok and s.seconds is not None]

    @property
    def median(self) -> float | None:
        g = self.good
        return statistics.median(g) if g else None

    @property
    def first_error(self) -> str | None:
        if self.error:
            return self.error
        return next((s.error for s in self.samples if not s.ok), None)


@dataclass
class CaseResult:
    case: Case
    tree: Tree
    runs: int
    results: dict[str, ToolResult]


# --------------------------------------------------------------------------- running

@dataclass
class Settings:
    runs: int
    timeout: float
    verify: str                    # "auto", "sample" or "full"
    seed: int
    zcsync: tuple[str, ...]
    env: dict[str, str]
    max_failures: int = 2          # give up on a tool after this many failures in a row


def rm_rf(path: Path) -> None:
    """Remove a tree quickly (rm -rf is ~3x faster than shutil.rmtree on 100k files)."""
    if not os.path.lexists(path):
        return
    try:
        subprocess.run(["rm", "-rf", "--", str(path)], check=True,
                       stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except (OSError, subprocess.CalledProcessError):
        shutil.rmtree(path, ignore_errors=True)


def _tail(data: bytes, limit: int = 300) -> str:
    text = data.decode("utf-8", "replace").strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    text = " | ".join(lines[-3:])
    return text if len(text) <= limit else "..." + text[-limit:]


def time_one(argv: list[str], settings: Settings, run: int) -> Sample:
    """Run one command and time it (wall clock around subprocess.run)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=settings.env,
                              timeout=settings.timeout)
    except FileNotFoundError:
        return Sample(run, None, False, None, f"command not found: {argv[0]}")
    except PermissionError as exc:
        return Sample(run, None, False, None, f"cannot run {argv[0]}: {exc.strerror}")
    except subprocess.TimeoutExpired:
        return Sample(run, None, False, None, f"timed out after {settings.timeout:g} s")
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        return Sample(run, seconds, False, proc.returncode,
                      f"exit code {proc.returncode}: {_tail(proc.stderr) or 'no message'}", cpu)
    return Sample(run, seconds, True, 0, None, cpu)


def check(sample: Sample, tree: Tree, dst: Path, settings: Settings, copied: bool) -> Sample:
    """Verify the destination after a successful run; a wrong copy invalidates the time.

    "auto" compares every byte of what a run copied, and metadata plus a sample of
    contents where the run was meant to leave an already verified destination alone.
    """
    if not sample.ok:
        return sample
    full = settings.verify == "full" or (settings.verify == "auto" and copied)
    why = verify(tree, dst, full=full, seed=settings.seed)
    if why:
        sample.ok = False
        sample.error = f"wrong result: {why}"
    return sample


class Bench:
    """Owns the work directory, the built workloads and the synced destinations."""

    def __init__(self, work: Path, settings: Settings, scale: float = 1.0) -> None:
        self.work = work
        self.settings = settings
        self.scale = scale
        self.trees: dict[str, Tree] = {}
        self.synced: dict[tuple[str, str], Path] = {}   # (workload, tool) -> dst
        self.unsynced: dict[tuple[str, str], str] = {}  # (workload, tool) -> why not

    def tree(self, name: str) -> Tree:
        if name not in self.trees:
            path = self.work / "src" / name
            log(f"building workload {name} ({WORKLOADS[name].description}) ...")
            start = time.perf_counter()
            WORKLOADS[name].build(path, self.scale, self.settings.seed)
            tree = tree_of(name, path)
            log(f"  {tree.files:,} files, {tree.dirs:,} dirs, {tree.bytes / 1e6:,.1f} MB "
                f"in {time.perf_counter() - start:.1f} s")
            self.trees[name] = tree
        return self.trees[name]

    def release(self, name: str) -> None:
        """Delete a workload and every destination made from it."""
        for key in [k for k in self.synced if k[0] == name]:
            rm_rf(self.synced.pop(key))
        for key in [k for k in self.unsynced if k[0] == name]:
            del self.unsynced[key]
        if name in self.trees:
            rm_rf(self.trees.pop(name).path)

    def invocation(self, case: Case, tool: Tool, tree: Tree, dst: Path,
                   options: tuple[str, ...]) -> list[str]:
        inv = Invocation(case.src_spec(tool.name, tree.path), case.dst_spec(tool.name, dst),
                         options, self.settings.zcsync, tree.bytes)
        return tool.argv(inv)

    def prepare_synced(self, case: Case, tool: Tool, tree: Tree) -> str | None:
        """Make (or reuse) a destination synced by this same tool; return an error."""
        key = (tree.name, tool.name)
        if key in self.synced:
            return None
        if key in self.unsynced:
            return self.unsynced[key]
        dst = self.work / "synced" / tree.name / tool.name
        rm_rf(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        argv = self.invocation(case, tool, tree, dst, ())
        log(f"  preparing {tool.name} destination: {shlex.join(argv)}")
        sample = check(time_one(argv, self.settings, 0), tree, dst, self.settings, True)
        if not sample.ok:
            rm_rf(dst)
            self.unsynced[key] = f"preparing the destination failed: {sample.error}"
            return self.unsynced[key]
        self.synced[key] = dst
        return None

    def run_case(self, case: Case, tools: Sequence[Tool]) -> CaseResult:
        s = self.settings
        tree = self.tree(case.workload)
        results = {t.name: ToolResult(t.name) for t in tools}
        active: list[Tool] = []
        dsts: dict[str, Path] = {}
        for tool in tools:
            res = results[tool.name]
            try:
                dst = self.work / "dst" / case.name / tool.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                zc = ["python" if a == sys.executable else a for a in s.zcsync]
                res.shown = tool.show(tool.argv(Invocation(
                    case.src_spec(tool.name, Path("SRC")), case.dst_spec(tool.name, Path("DST")),
                    case.options, tuple(zc), tree.bytes)))
                res.argv = self.invocation(case, tool, tree, dst, case.options)
            except Unsupported as exc:
                res.error = str(exc)
                res.applicable = False
                continue
            except Unavailable as exc:
                res.error = str(exc)
                log(f"  {tool.name}: {exc}")
                continue
            if case.dest == SYNCED:
                err = self.prepare_synced(case, tool, tree)
                if err:
                    res.error = err
                    log(f"  {tool.name}: {err}")
                    continue
                dst = self.synced[(tree.name, tool.name)]
                res.argv = self.invocation(case, tool, tree, dst, case.options)
            dsts[tool.name] = dst
            active.append(tool)
        failures = {t.name: 0 for t in active}
        for run in range(s.runs):
            k = run % len(active) if active else 0
            for tool in active[k:] + active[:k]:
                res = results[tool.name]
                if failures[tool.name] >= s.max_failures:
                    continue
                dst = dsts[tool.name]
                if case.dest == FRESH:
                    rm_rf(dst)
                if tool.runner is not None:
                    sample = tool.runner(res.argv, s, run + 1)
                else:
                    sample = time_one(res.argv, s, run + 1)
                if tool.verify:
                    sample = check(sample, tree, dst, s, case.dest == FRESH)
                res.samples.append(sample)
                if sample.ok:
                    failures[tool.name] = 0
                    log(f"  [{case.name}] run {run + 1}/{s.runs} {tool.name:<15} "
                        f"{sample.seconds:8.3f} s")
                else:
                    failures[tool.name] += 1
                    log(f"  [{case.name}] run {run + 1}/{s.runs} {tool.name:<15} FAILED: "
                        f"{sample.error}")
                    if case.dest == SYNCED:
                        # The shared synced copy may be damaged: rebuild it next time.
                        self.synced.pop((tree.name, tool.name), None)
                        rm_rf(dst)
                        err = self.prepare_synced(case, tool, tree)
                        if err:
                            res.error = err
                            failures[tool.name] = s.max_failures
                        else:
                            dsts[tool.name] = self.synced[(tree.name, tool.name)]
                    if failures[tool.name] >= s.max_failures:
                        log(f"  [{case.name}] giving up on {tool.name} after "
                            f"{failures[tool.name]} failures in a row")
        rm_rf(self.work / "dst" / case.name)
        return CaseResult(case, tree, s.runs, results)


# --------------------------------------------------------------------------- reporting

def ratio(cr: CaseResult, num: str, den: str) -> float | None:
    a = cr.results.get(num)
    b = cr.results.get(den)
    if not a or not b or a.median is None or not b.median:
        return None
    return a.median / b.median


def _status(res: ToolResult, runs: int) -> str:
    good = len(res.good)
    if not good:
        return "failed"
    if good < len(res.samples) or good < runs:
        return f"{good}/{runs} ok"
    return "ok"


def rows(cr: CaseResult) -> list[list[str]]:
    """Table rows: tool, median, min, max, cpu, MB/s, files/s, status."""
    out = []
    for name, res in cr.results.items():
        g = res.good
        if not res.applicable:
            out.append([name, "n/a", "", "", "", "", "", res.error or ""])
            continue
        if not g:
            why = res.first_error or "no sample"
            out.append([name, "failed", "", "", "", "", "", why])
            continue
        med = statistics.median(g)
        rate = cr.case.rate and med > 0
        cpu = [x.cpu_seconds for x in res.samples if x.ok and x.cpu_seconds is not None]
        out.append([
            name, f"{med:.3f}", f"{min(g):.3f}", f"{max(g):.3f}",
            f"{statistics.median(cpu):.3f}" if cpu else "-",
            f"{cr.tree.bytes / med / 1e6:,.0f}" if rate else "-",
            f"{cr.tree.files / med:,.0f}" if rate and cr.tree.files > 1 else "-",
            _status(res, cr.runs) + ("" if _status(res, cr.runs) == "ok"
                                     else f": {res.first_error}"),
        ])
    return out


HEAD = ["tool", "median s", "min s", "max s", "cpu s", "MB/s", "files/s", "status"]
NUM = len(HEAD) - 1   # columns before the free-text status


def ratio_texts(cr: CaseResult) -> list[str]:
    out = []
    for num, den in RATIOS:
        if num in cr.results and den in cr.results:
            r = ratio(cr, num, den)
            out.append(f"{num}/{den} = " + (f"{r:.2f}" if r is not None else "n/a"))
    return out


def reference_rate(cr: CaseResult) -> float | None:
    """The median rate (bytes/s) that the reference tool (iperf3) measured itself."""
    res = cr.results.get(REFERENCE)
    rates = [x.rate for x in res.samples if x.ok and x.rate] if res else []
    return statistics.median(rates) if rates else None


def fractions(cr: CaseResult) -> dict[str, float]:
    """Each tool's rate (source bytes over its median) as a fraction of the reference's."""
    rate = reference_rate(cr)
    if rate is None:
        return {}
    return {name: cr.tree.bytes / res.median / rate for name, res in cr.results.items()
            if name != REFERENCE and res.median}


def reference_text(cr: CaseResult) -> str | None:
    if REFERENCE not in cr.results:
        return None
    rate = reference_rate(cr)
    if rate is None:
        return f"{REFERENCE} reference: no result ({cr.results[REFERENCE].first_error or 'not run'})"
    parts = [f"{name} {f:.2f}" for name, f in fractions(cr).items()]
    return (f"{REFERENCE} loopback rate (its own measurement, median): {rate / 1e6:,.0f} MB/s; "
            "each tool's MB/s as a fraction of it: " + (", ".join(parts) or "none"))


def _case_title(cr: CaseResult, named: bool = True) -> str:
    t = cr.tree
    opts = f" (options: {' '.join(cr.case.options)})" if cr.case.options else ""
    text = (f"{cr.case.description}{opts}. "
            f"Source {t.files:,} files, {t.dirs:,} dirs, {t.bytes / 1e6:,.1f} MB; "
            f"{cr.runs} runs, interleaved")
    return f"{cr.case.name}: {text}" if named else text[0].upper() + text[1:]


def print_table(cr: CaseResult, out=sys.stdout) -> None:
    body = rows(cr)
    width = [max(len(HEAD[i]), *(len(r[i]) for r in body)) for i in range(NUM)]
    print(f"\n== {_case_title(cr)}", file=out)
    print("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in
                    enumerate(zip(HEAD[:NUM], width))) + "  status", file=out)
    for r in body:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                        enumerate(zip(r[:NUM], width))) + "  " + r[NUM], file=out)
    texts = ratio_texts(cr)
    if texts:
        print("ratios of medians (>1: the left one is slower): " + ", ".join(texts), file=out)
    ref = reference_text(cr)
    if ref:
        print(f"reference: {ref}", file=out)
    out.flush()


def machine_info(zcsync: Sequence[str] | None, env: dict[str, str],
                 work: Path) -> dict[str, str]:
    """What the numbers were measured on."""
    def first_line(argv: Sequence[str]) -> str:
        try:
            p = subprocess.run(list(argv), capture_output=True, timeout=20, env=env,
                               stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return "unavailable"
        text = (p.stdout or p.stderr).decode("utf-8", "replace").strip().splitlines()
        return text[0].strip() if p.returncode == 0 and text else "unavailable"

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    fstype = "unknown"
    try:
        best = ""
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1]
            if str(work).startswith(mnt.rstrip("/") + "/") and len(mnt) >= len(best):
                best, fstype = mnt, f"{parts[2]} ({mnt})"
    except (OSError, IndexError):
        pass
    commit = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    if commit != "unavailable":
        try:
            dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"],
                                   capture_output=True, timeout=20,
                                   env={**env, "GIT_OPTIONAL_LOCKS": "0"}).stdout.strip()
            commit += " (with uncommitted changes)" if dirty else ""
        except (OSError, subprocess.TimeoutExpired):
            pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": first_line(["nproc"]),
        "cpu": cpu,
        "memory": mem,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "rsync": first_line(["rsync", "--version"]),
        "cp": first_line(["cp", "--version"]),
        **({"zcsync": first_line([*zcsync, "--version"])} if zcsync else {}),
        "repository commit": commit,
        "filesystem": fstype,
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def markdown(results: list[CaseResult], info: dict[str, str], title: str,
             config: dict) -> str:
    """A self-contained markdown section for docs/benchmarks.md."""
    lines = [f"## {title}", ""]
    lines += ["| machine | |", "|---|---|"]
    lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in info.items()]
    lines += ["", f"Runs per tool and case: {config['runs']}, interleaved round-robin with "
              f"a rotating start; scale {config['scale']:g}; seed {config['seed']}; "
              f"verify {config['verify']}; whole benchmark took {config['wall_seconds']:.0f} s."
              " Times are wall-clock seconds of the whole command; cpu s is the median user+system "
              "time of the command and its children; MB/s is source bytes (10^6) over the "
              "median.", "",
              f"Reproduce from the repository root: `{config['command']}`", ""]
    for cr in results:
        lines += [f"### {cr.case.name}", "", _case_title(cr, named=False) + ".", ""]
        lines += ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
        for r in rows(cr):
            lines.append("| " + " | ".join(c.replace("|", "/") for c in r) + " |")
        texts = ratio_texts(cr)
        if texts:
            lines += ["", "Ratios of medians (>1: the left one is slower): "
                      + ", ".join(texts) + "."]
        ref = reference_text(cr)
        if ref:
            lines += ["", f"Reference: {ref}."]
        cmds = [f"`{res.shown}`" for res in cr.results.values() if res.shown]
        if cmds:
            lines += ["", "Commands: " + ", ".join(cmds) + "."]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def update_markdown(path: Path, section: str, text: str) -> None:
    """Replace the section between its markers, or append it."""
    begin, end = f"<!-- bench:begin {section} -->", f"<!-- bench:end {section} -->"
    block = f"{begin}\n{text}{end}\n"
    try:
        old = path.read_text()
    except FileNotFoundError:
        old = "# Benchmarks\n\nSee bench/README.md for how these numbers are made.\n"
    i, j = old.find(begin), old.find(end)
    if i >= 0 and j > i:
        new = old[:i] + block + old[j + len(end):].lstrip("\n")
        if not new.endswith("\n"):
            new += "\n"
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def to_json(results: list[CaseResult], info: dict[str, str], config: dict) -> dict:
    return {
        "machine": info,
        "config": config,
        "cases": {
            cr.case.name: {
                "workload": {"name": cr.tree.name, "files": cr.tree.files,
                             "dirs": cr.tree.dirs, "bytes": cr.tree.bytes},
                "dest": cr.case.dest,
                "options": list(cr.case.options),
                "tools": {
                    name: {"argv": res.argv, "error": res.error, "median": res.median,
                           "samples": [asdict(s) for s in res.samples]}
                    for name, res in cr.results.items()
                },
                "ratios": {f"{a}/{b}": ratio(cr, a, b) for a, b in RATIOS
                           if a in cr.results and b in cr.results},
                **({"reference": {"tool": REFERENCE, "rate": reference_rate(cr),
                                  "fractions": fractions(cr)}}
                   if REFERENCE in cr.results else {}),
            }
            for cr in results
        },
    }


# --------------------------------------------------------------------------- main

def _names(values: list[str] | None) -> list[str]:
    return [n for v in values or [] for n in v.split(",") if n]


def select_cases(patterns: list[str]) -> list[Case]:
    """Case names, workload names (all their cases) or glob patterns."""
    if not patterns:
        return list(CASES.values())
    chosen: list[Case] = []
    for pat in patterns:
        hits = [c for c in CASES.values()
                if fnmatch.fnmatchcase(c.name, pat) or c.workload == pat]
        if not hits:
            raise SystemExit(f"Unknown case {pat!r}; known: {', '.join(CASES)}")
        chosen += [c for c in hits if c not in chosen]
    return [c for c in CASES.values() if c in chosen]   # keep table order


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Time zcsync against rsync and cp on workloads built on tmpfs.")
    p.add_argument("--runs", type=int, default=5, help="timed runs per tool and case (5)")
    p.add_argument("--only", nargs="+", action="extend", metavar="NAME",
                   help="cases to run: names, workload names or globs (default: all)")
    p.add_argument("--tools", action="append", metavar="T,...",
                   help=f"tools to run (default: all of {','.join(TOOLS)})")
    p.add_argument("--scale", type=float, default=1.0,
                   help="scale workload sizes and file counts (1.0)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write raw samples as JSON")
    p.add_argument("--zcsync", metavar="CMD",
                   help="how to start zcsync (default: PYTHON -m zcsync from this repo)")
    p.add_argument("--workdir", type=Path, default=Path("/dev/shm"),
                   help="where to build zcsync-bench-PID/ (/dev/shm)")
    p.add_argument("--seed", type=int, default=1, help="workload seed (1)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per command (600)")
    p.add_argument("--verify", choices=("auto", "sample", "full"), default="auto",
                   help="content check after each run: every byte (full), files over "
                        "4 MiB plus a seeded sample of 1000 smaller ones (sample), or "
                        "full for fresh copies and sample otherwise (auto)")
    p.add_argument("--md", type=Path, default=DEFAULT_MD,
                   help="markdown file to update (docs/benchmarks.md)")
    p.add_argument("--no-md", action="store_true", help="do not update the markdown file")
    p.add_argument("--md-section", default="latest",
                   help="id of the section to replace in the markdown file (latest)")
    p.add_argument("--md-title", default=None, help="heading of that section")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--list", action="store_true", help="list cases and tools, then exit")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if args.scale <= 0:
        p.error("--scale must be positive")
    return args


def _start_sshd(env: dict[str, str]):
    """Start the tests' sshd fixture on 127.0.0.1 and point zcsync and rsync at it."""
    import tempfile
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    from sshd import Sshd, missing_reason, remote_zcsync_path
    reason = missing_reason()
    if reason:
        raise SystemExit(f"remote cases need sshd: {reason}")
    server = Sshd(Path(tempfile.mkdtemp(prefix="zcsync-bench-sshd-"))).start()
    env.update({k: v for k, v in server.env().items() if k.startswith(("ZCSYNC_", "RSYNC_"))})
    Remote.alias = server.alias
    Remote.rsh = server.rsh
    Remote.zcsync_path = remote_zcsync_path()
    return server


def _on_signal(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for c in CASES.values():
            print(f"{c.name:<30} {c.description} [tools: {', '.join(c.tools)}]")
        for t in TOOLS.values():
            print(f"tool {t.name:<25} {t.description}")
        return 0
    cases = select_cases(_names(args.only))
    tool_names = _names(args.tools) or list(TOOLS)
    unknown = [t for t in tool_names if t not in TOOLS]
    if unknown:
        raise SystemExit(f"Unknown tool {unknown[0]!r}; known: {', '.join(TOOLS)}")
    if args.runs < 3:
        log(f"warning: --runs {args.runs}: fewer than 3 runs make medians unreliable")

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    zcsync = tuple(shlex.split(args.zcsync)) if args.zcsync else (sys.executable, "-m",
                                                                  "zcsync")
    sshd = None
    if any(c.tools == SSH_TOOLS for c in cases) and any(t in SSH_TOOLS for t in tool_names):
        sshd = _start_sshd(env)
    settings = Settings(runs=args.runs, timeout=args.timeout,
                        verify=args.verify, seed=args.seed,
                        zcsync=zcsync, env=env)
    base = args.workdir if args.workdir.is_dir() else Path("/tmp")
    work = base.resolve() / f"zcsync-bench-{os.getpid()}"
    uses_zcsync = any(t.startswith("zcsync") for t in tool_names)
    used = {t for c in cases for t in c.tools if t in tool_names}
    need_daemons = {d for d in map(daemon_of, used) if d}
    if REFERENCE in used:
        DAEMONS.iperf3_error = daemons.ensure_iperf3()
        if DAEMONS.iperf3_error:
            log(f"warning: {DAEMONS.iperf3_error}")
        DAEMONS.iperf3_port = daemons.free_port()
    info = machine_info(zcsync if uses_zcsync else None, env, work)
    if REFERENCE in used and not DAEMONS.iperf3_error:
        info["iperf3"] = subprocess.run(["iperf3", "--version"], capture_output=True, text=True,
                                        stdin=subprocess.DEVNULL).stdout.split("\n")[0].strip()
    bench = Bench(work, settings, args.scale)
    results: list[CaseResult] = []
    # SIGINT too: a shell's background job starts with it ignored, and we still want
    # Ctrl-C (or kill -INT) to clean up the work directory.
    old = {s: signal.signal(s, _on_signal)
           for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    started = time.perf_counter()
    interrupted = False
    try:
        work.mkdir(parents=True)
        if need_daemons:
            DAEMONS.start(need_daemons, work, zcsync, env)
        for i, case in enumerate(cases):
            tools = [TOOLS[t] for t in tool_names if t in case.tools]
            if not tools:
                log(f"skipping {case.name}: none of the selected tools applies")
                continue
            log(f"case {case.name} ({', '.join(t.name for t in tools)}) ...")
            cr = bench.run_case(case, tools)
            results.append(cr)
            print_table(cr)
            if all(c.workload != case.workload for c in cases[i + 1:]):
                bench.release(case.workload)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; cleaning up")
    finally:
        DAEMONS.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            rm_rf(work)
        for s, h in old.items():
            signal.signal(s, h)
        if sshd is not None:
            sshd.stop()
    elapsed = time.perf_counter() - started
    info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    log(f"total wall time {elapsed:.0f} s")
    if interrupted:
        return 130
    command = "python -m bench" + (" " + shlex.join(argv if argv is not None else sys.argv[1:])
                                   if (argv if argv is not None else sys.argv[1:]) else "")
    config = {"runs": args.runs, "scale": args.scale, "seed": args.seed,
              "tools": tool_names, "cases": [c.name for c in cases],
              "verify": args.verify, "zcsync": list(zcsync), "command": command,
              "wall_seconds": round(elapsed, 1)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_json(results, info, config), indent=2) + "\n")
        log(f"wrote {args.json}")
    if not args.no_md and results:
        title = args.md_title or f"Results ({info['date']})"
        update_markdown(args.md, args.md_section, markdown(results, info, title, config))
        log(f"updated section {args.md_section!r} of {args.md}")
    return 0
