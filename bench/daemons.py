"""Servers for the daemon cases: `zcsync daemon`, `rsync --daemon`, and iperf3 as the yardstick.

The daemons are started once per benchmark (by ``bench.run.main``) on free ports of
127.0.0.1, each with one writable module ``mod`` whose root is the benchmark's work
directory, so that a case reaches its source tree as ``mod/src/WORKLOAD/`` and its
destination as ``mod/dst/CASE/TOOL/``.  Both run as root with ``uid = root`` and
``gid = root`` in the module (when the benchmark runs as root), so that ``-a`` keeps
owners as a local copy does.

A second zcsync daemon runs with ``ZCSYNC_SEND_METHOD=readwrite`` in its environment:
the variable is read on the sending side, which is the daemon for a pull, so the
``zcsync-daemon-readv`` tool reaches that one (and sets the variable on its client too,
the sender of a push).

iperf3 moves the same number of bytes over loopback TCP with nothing else to do; its
own measured rate is the ceiling the daemon transfers are compared with.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

MODULE = "mod"
HOST = "127.0.0.1"
READY_TIMEOUT = 20.0
SEND_METHOD_VAR = "ZCSYNC_SEND_METHOD"

ZCSYNC = "zcsync"              # daemon names, as in Daemons.servers
ZCSYNC_READV = "zcsync-readv"
RSYNC = "rsync"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Whether some socket listens on this TCP port, from /proc/net/tcp{,6}.

    Read from /proc rather than probed with a connection: a probe would be a session
    of its own for the daemon (and would end an ``iperf3 -s -1`` before its test).
    """
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[1].endswith(want) and parts[3] == "0A":
                return True
    return False


def _tail(path: Path, limit: int = 400) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    text = " | ".join(lines[-3:])
    return text if len(text) <= limit else "..." + text[-limit:]


@dataclass
class Server:
    """One daemon process in the foreground, its config and its log."""

    name: str
    port: int
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None
    error: str | None = None

    def start(self) -> Server:
        """Start it and wait until it listens; on failure, keep the reason in ``error``."""
        try:
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                             stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        except OSError as exc:
            self.error = f"cannot start {self.argv[0]}: {exc.strerror}"
            return self
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.error = (f"{self.name} daemon exited with {self.proc.returncode}: "
                              f"{_tail(self.log) or 'no message'}")
                return self
            if listening(self.port):
                return self
            time.sleep(0.05)
        self.error = f"{self.name} daemon did not listen on port {self.port} in {READY_TIMEOUT:g} s"
        self.stop()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        elif self.error is None and self.proc.returncode not in (0, -signal.SIGTERM):
            log(f"warning: {self.name} daemon had exited during the benchmark with "
                f"{self.proc.returncode}: {_tail(self.log)}")


def _module(root: Path, *, rsync: bool) -> str:
    owner = "    uid = root\n    gid = root\n" if os.geteuid() == 0 else ""
    head = "use chroot = no\n" if rsync else ""
    extra = "    munge symlinks = no\n" if rsync else ""
    return (f"# written by bench/daemons.py\n{head}[{MODULE}]\n    path = {root}\n"
            f"    read only = no\n{owner}{extra}")


@dataclass
class Daemons:
    """The daemons of one benchmark run, by name (``zcsync``, ``zcsync-readv``, ``rsync``)."""

    root: Path | None = None
    servers: dict[str, Server] = field(default_factory=dict)
    iperf3_port: int = 0
    iperf3_error: str | None = None    # why iperf3 cannot run (not installed)

    def start(self, names: set[str], root: Path, zcsync: tuple[str, ...],
              env: dict[str, str]) -> None:
        """Start the named daemons serving root as module ``mod``; failures are recorded."""
        self.root = root
        conf = root / "daemons"
        conf.mkdir(parents=True, exist_ok=True)
        for name in (ZCSYNC, ZCSYNC_READV, RSYNC):
            if name not in names:
                continue
            port = free_port()
            config = conf / f"{name}.conf"
            config.write_text(_module(root, rsync=name == RSYNC))
            logfile = conf / f"{name}.log"
            if name == RSYNC:
                argv = ["rsync", "--daemon", "--no-detach", f"--config={config}",
                        f"--port={port}", f"--address={HOST}", f"--log-file={logfile}"]
                denv = dict(env)
            else:
                argv = [*zcsync, "daemon", "--no-detach", "--config", str(config),
                        "--port", str(port), "--address", HOST]
                denv = dict(env)
                if name == ZCSYNC_READV:
                    denv[SEND_METHOD_VAR] = "readwrite"
            server = Server(name, port, argv, denv, logfile).start()
            self.servers[name] = server
            if server.error:
                log(f"warning: {server.error}")
            else:
                log(f"started {name} daemon on {HOST}:{port} (pid {server.proc.pid})")

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def url(self, name: str, path: Path) -> str:
        """The daemon URL of a local directory under the module root (trailing slash).

        A relative path (SRC, DST in the commands shown in reports) gets the port
        written as PORT, since ports change from run to run.
        """
        scheme = "rsync" if name == RSYNC else "zcsync"
        server = self.servers.get(name)
        if not path.is_absolute() or server is None or self.root is None:
            return f"{scheme}://{HOST}:PORT/{MODULE}/{path}/"
        rel = path.relative_to(self.root)
        return f"{scheme}://{HOST}:{server.port}/{MODULE}/{rel}/"

    def unavailable(self, name: str) -> str | None:
        """Why the named daemon cannot serve (None when it runs)."""
        server = self.servers.get(name)
        if server is None:
            return f"the {name} daemon was not started"
        if server.error:
            return server.error
        if not server.alive():
            return f"the {name} daemon has exited ({server.proc.returncode}): {_tail(server.log)}"
        return None


# --------------------------------------------------------------------------- iperf3

IPERF3 = "iperf3"


def ensure_iperf3() -> str | None:
    """Install iperf3 with apt-get if it is missing (root only); return why it is missing."""
    if shutil.which(IPERF3):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "iperf3 is not installed (apt-get install iperf3)"
    log("installing iperf3 with apt-get ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "iperf3"]):
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            text = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            return f"installing iperf3 failed: {text[-1] if text else proc.returncode}"
    return None if shutil.which(IPERF3) else "iperf3 is not installed"


@dataclass
class IperfRun:
    """One iperf3 measurement: wall seconds of the client, its cpu, iperf3's own rate."""

    seconds: float | None
    cpu_seconds: float | None = None
    rate: float | None = None          # bytes per second received, as iperf3 measured it
    returncode: int | None = None
    error: str | None = None


def server_argv(port: int) -> list[str]:
    return [IPERF3, "-s", "-1", "-B", HOST, "-p", str(port)]


def iperf3_once(client: list[str], env: dict[str, str], timeout: float) -> IperfRun:
    """Start ``iperf3 -s -1`` on the client argv's port, time the client, read its JSON."""
    port = int(client[client.index("-p") + 1])
    try:
        server = subprocess.Popen(server_argv(port), env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as exc:
        return IperfRun(None, error=f"cannot run {IPERF3}: {exc.strerror}")
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not listening(port):
            if server.poll() is not None or time.monotonic() > deadline:
                return IperfRun(None, error=f"iperf3 server did not listen on port {port}")
            time.sleep(0.02)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        try:
            proc = subprocess.run(client, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return IperfRun(None, error=f"timed out after {timeout:g} s")
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            data = {}
        if proc.returncode != 0 or "error" in data:
            why = data.get("error") or proc.stderr.decode("utf-8", "replace").strip()
            return IperfRun(seconds, cpu, None, proc.returncode, f"iperf3 failed: {why}")
        try:
            received = data["end"]["sum_received"]
            rate = received["bits_per_second"] / 8
        except (KeyError, TypeError):
            return IperfRun(seconds, cpu, None, proc.returncode, "iperf3 gave no end result")
        return IperfRun(seconds, cpu, rate, 0)
    finally:
        if server.poll() is None:
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
