"""Real daemons on 127.0.0.1 for integration tests: `zcsync daemon` and, as the oracle, `rsync --daemon`.

Each daemon gets a free port, its own config (and secrets) in a temp directory, and runs
in the foreground (--no-detach) as a subprocess of the test.

`daemon_client()` lets the normal client (api.run_paths -> connect.run_remote) reach a
zcsync daemon by routing daemon endpoints to daemon.open_daemon_stream. It is needed
only until connect.open_stream does that itself; then it is a no-op.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RSYNC = "/usr/bin/rsync"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, marker: bytes | None,
                    timeout: float = 15.0) -> None:
    """Wait until the daemon listens: its log says so (marker), or a connection gets through.

    The zcsync daemon is watched through its log, not probed: a probe would be a session
    of its own, counted against max connections until its process is reaped.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}: {log.read_text(errors='replace')}")
        if marker is not None:
            if marker in log.read_bytes():
                return
        else:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"daemon did not listen on port {port}: {log.read_text(errors='replace')}")


class _Daemon:
    name = "daemon"
    ready_marker: bytes | None = None

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = self.dir / "daemon.conf"
        self.pid_file = self.dir / "daemon.pid"
        self.log = self.dir / "daemon.log"
        self.proc: subprocess.Popen | None = None

    def write_config(self, text: str) -> None:
        self.config.write_text(text)

    def secrets(self, text: str, mode: int = 0o600) -> Path:
        path = self.dir / "secrets"
        path.write_text(text)
        os.chmod(path, mode)
        return path

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> _Daemon:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(self.log, "ab") as out:  # the daemon keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.argv(), cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)
        _wait_listening(self.port, self.proc, self.log, self.ready_marker)
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class ZcsyncDaemon(_Daemon):
    """`python -m zcsync.daemon` from this checkout."""

    name = "zcsync"
    ready_marker = b"listening on"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "zcsync.daemon", "--config", str(self.config), "--port", str(self.port),
                "--address", "127.0.0.1", "--no-detach"]

    def url(self, module: str, path: str = "", user: str | None = None) -> str:
        who = f"{user}@" if user else ""
        return f"zcsync://{who}127.0.0.1:{self.port}/{module}/{path}"


class RsyncDaemon(_Daemon):
    """`rsync --daemon`, the oracle."""

    name = "rsync"

    def argv(self) -> list[str]:
        return [RSYNC, "--daemon", "--no-detach", f"--config={self.config}", f"--port={self.port}",
                "--address=127.0.0.1", f"--log-file={self.log}"]

    def url(self, module: str, path: str = "", user: str | None = None) -> str:
        who = f"{user}@" if user else ""
        return f"rsync://{who}127.0.0.1:{self.port}/{module}/{path}"


def rsync_available() -> bool:
    return shutil.which(RSYNC) is not None


@contextlib.contextmanager
def daemon_client() -> Iterator[None]:
    """Route daemon endpoints of connect.open_stream to daemon.open_daemon_stream (until wired)."""
    from zcsync import connect, daemon

    original = connect.open_stream

    def open_stream(endpoint, argv, opts):  # type: ignore[no-untyped-def]
        if endpoint.kind != "daemon":
            return original(endpoint, argv, opts)
        role = argv[1][2:]
        paths = argv[argv.index("--") + 1:]
        return daemon.open_daemon_stream(endpoint, opts, role, paths)

    try:
        probe = original.__code__.co_names
    except AttributeError:
        probe = ()
    if "open_daemon_stream" in probe:  # connect.py already knows the daemon
        yield
        return
    connect.open_stream = open_stream
    try:
        yield
    finally:
        connect.open_stream = original


def run_client(paths: list[str], **options: object) -> tuple[int, str, list]:
    """Run one transfer with the real client in-process: (exit code, fatal message or "", events)."""
    from zcsync.api import run_paths
    from zcsync.errors import ZcsyncError
    from zcsync.options import from_mapping

    events: list = []
    opts = from_mapping(dict(options))
    with daemon_client():
        try:
            result = run_paths(paths, opts, on_event=events.append)
        except ZcsyncError as exc:
            return exc.exit_code, exc.message, events
    text = "; ".join(p.message for p in result.problems)
    return result.exit_code, text, events
