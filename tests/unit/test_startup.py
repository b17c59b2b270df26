"""Start-up cost: what a run imports, and that the shortcuts taken for it keep behaviour.

Every module a command imports costs every run its import time; these tests keep
the expensive ones (tqdm, the daemon's server code, OpenSSL, email/importlib.metadata)
off the paths that do not need them. Each check runs in a fresh interpreter.
"""
from __future__ import annotations

import gc
import hashlib
import hmac
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zcsync import auth, cli, connect, daemon
from zcsync.transport.rsh import wait_child

REPO_ROOT = Path(__file__).resolve().parents[2]


def _modules_after(code: str, tmp_path) -> set[str]:
    """The names in sys.modules after running code in a fresh interpreter."""
    script = code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))\n"
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.splitlines()[-1].split())


def _loaded(modules: set[str], *names: str) -> set[str]:
    return {m for m in modules for n in names if m == n or m.startswith(n + ".")}


def test_local_transfer_imports_no_display_daemon_or_metadata(tmp_path):
    (tmp_path / "src").mkdir()
    modules = _modules_after(
        "from zcsync import cli\n"
        "try:\n"
        "    cli.main(['-a', '--no-fsync', 'src/', 'dst/'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n", tmp_path)
    assert (tmp_path / "dst").is_dir()
    assert not _loaded(modules, "tqdm", "zcsync.daemon", "zcsync.daemon_config", "zcsync.server", "email",
                       "importlib.metadata", "hashlib", "argparse", "json")


def test_daemon_client_does_not_import_the_server(tmp_path):
    modules = _modules_after("import zcsync.cli, zcsync.connect, zcsync.progress", tmp_path)
    assert not _loaded(modules, "zcsync.daemon", "zcsync.daemon_config", "zcsync.server", "zcsync.bootstrap",
                       "tqdm", "hashlib", "hmac", "argparse", "ctypes", "getpass", "logging.handlers")


def test_daemon_module_keeps_the_client_names():
    assert daemon.open_daemon_stream is connect.open_daemon_stream
    assert daemon.list_modules is connect.list_modules
    assert daemon.format_module_list is connect.format_module_list
    assert daemon.DaemonRequest is connect.DaemonRequest


def test_progress_draws_with_tqdm_imported_on_use(tmp_path):
    from zcsync.progress import Progress

    out = tmp_path / "bar"
    with open(out, "w") as stream:
        progress = Progress("total", stream, interval=0.01)
        progress.total = 10
        progress.advance(10)
        progress.close()
    text = out.read_text()
    assert "100%" in text and "10.0/10.0" in text


def test_proofs_are_plain_hmac_sha256():
    sn, cn, digest = b"s" * 32, b"c" * 32, auth.request_digest(b"request")
    assert digest == hashlib.sha256(b"request").digest()
    proof = auth.client_proof(b"pw", sn, cn, b"mod", b"alice", digest)
    msg = auth._transcript(auth._CLIENT_LABEL, sn, cn, b"mod", b"alice", digest)
    assert proof == hmac.new(b"pw", msg, hashlib.sha256).digest()
    assert auth.proofs_equal(proof, proof) and not auth.proofs_equal(proof, bytes(32))
    assert len(auth.new_nonce()) == auth.NONCE_SIZE and auth.new_nonce() != auth.new_nonce()


@pytest.mark.parametrize("argv", [["--version"], ["-h"]])
def test_main_called_with_argv_leaves_the_collector_alone(argv, capsys):
    # Freezing the collector is for the process's own end (argv None), not for callers in-process.
    frozen = gc.get_freeze_count()
    try:
        cli.main(argv)
    except SystemExit as exc:
        assert exc.code == 0
    assert gc.get_freeze_count() == frozen
    assert "zcsync" in capsys.readouterr().out


def test_program_exit_still_flushes_and_runs_atexit(tmp_path):
    script = ("import atexit, sys\n"
              "atexit.register(lambda: print('atexit ran'))\n"
              "sys.argv = ['zcsync', '--version']\n"
              "from zcsync.cli import main\n"
              "main()\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    first, last = proc.stdout.splitlines()
    assert first.startswith("zcsync version") and last == "atexit ran"


# -- the remote end: `zcsync --server` ------------------------------------------------------

# What the console script does, plus a record of the modules loaded by the end.
_SERVER_SCRIPT = """\
import atexit, sys
atexit.register(lambda: open({out!r}, "w").write("\\n".join(sorted(sys.modules))))
from zcsync.cli import main
sys.exit(main())
"""

# An -e command that drops the host and runs the remote command here.
_FAKE_RSH = '#!/bin/sh\nshift\nexec sh -c "$1"\n'


def _server_setup(tmp_path) -> tuple[str, dict[str, str]]:
    """(--zcsync-path running the recording server script, env) for a transfer through _FAKE_RSH."""
    (tmp_path / "server.py").write_text(_SERVER_SCRIPT.format(out=str(tmp_path / "server-modules")))
    rsh = tmp_path / "rsh"
    rsh.write_text(_FAKE_RSH)
    rsh.chmod(0o755)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), ZCSYNC_RSH=str(rsh))
    return f"{sys.executable} {tmp_path / 'server.py'}", env


@pytest.mark.parametrize("direction", ["push", "pull", "tcp"])
def test_server_end_does_not_import_click(tmp_path, direction):
    """The remote end of every ssh transfer (and --server --listen, for --transport=tcp)
    parses its own arguments: it must not pay for click."""
    remote, env = _server_setup(tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"data")
    paths = ["localhost:src/", "dst/"] if direction == "pull" else ["src/", "localhost:dst/"]
    extra = ["--transport=tcp"] if direction == "tcp" else []
    proc = subprocess.run([sys.executable, "-m", "zcsync", "-a", "--no-fsync", "--zcsync-path", remote, *extra,
                           *paths], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "dst" / "f").read_bytes() == b"data"
    modules = set((tmp_path / "server-modules").read_text().split())
    assert "zcsync.server" in modules
    assert not _loaded(modules, "click", "tqdm", "argparse", "paramiko")


def test_server_argument_errors_come_from_the_server(tmp_path):
    remote, env = _server_setup(tmp_path)
    proc = subprocess.run([*remote.split(), "--server", "--listen", "--listen-timeout=0", "--receiver",
                           "--options={}", "--", "dst"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stderr) == (1, "zcsync: bad --listen-timeout '0' (1..3600 seconds)\n")
    assert not _loaded(set((tmp_path / "server-modules").read_text().split()), "click")


def test_the_command_is_still_there_when_asked_for(tmp_path):
    modules = _modules_after(
        "from zcsync import cli\n"
        "import sys\n"
        "assert 'click' not in sys.modules\n"
        "from zcsync.cli import command\n"
        "assert command is cli.command and isinstance(command, cli.RsyncCommand)\n", tmp_path)
    assert "click" in modules
    with pytest.raises(AttributeError):
        cli.no_such_name  # noqa: B018


# -- the ssh transport ------------------------------------------------------------------------

_MATCH_EXEC = """\
import sys
from zcsync.transport import ssh
assert "invoke" not in sys.modules
hop = ssh._Connector(ssh.SshOptions(ssh_config="ssh_config")).hop("h", "u", None)
assert (hop.hostname, hop.port) == ("yes.example", 22), hop
assert "invoke" in sys.modules
"""


def test_paramiko_loads_invoke_only_for_match_exec(tmp_path):
    """paramiko imports invoke (~35 ms) only to run ``Match exec``: it comes when one is evaluated."""
    (tmp_path / "ssh_config").write_text('Match exec "true"\n  HostName yes.example\n'
                                         'Match exec "false"\n  Port 2222\n')
    _modules_after(_MATCH_EXEC, tmp_path)
    modules = _modules_after("from zcsync.transport import ssh", tmp_path)
    assert "paramiko" in modules and "invoke" not in modules


def test_invoke_is_not_hidden_while_other_threads_run(tmp_path):
    modules = _modules_after(
        "import threading\n"
        "stop = threading.Event()\n"
        "threading.Thread(target=stop.wait).start()\n"
        "from zcsync.transport import ssh\n"
        "stop.set()\n"
        "import invoke\n"
        "assert ssh.paramiko.config.invoke is invoke\n", tmp_path)
    assert "invoke" in modules


class _FakeTransport:
    """The authentication calls of a paramiko Transport, against a server that allows
    `allowed`, accepts the key named `good`, and lets anyone in by "none" if none_ok."""

    def __init__(self, allowed: tuple[str, ...] = ("publickey",), good: str | None = None,
                 none_ok: bool = False) -> None:
        self.allowed, self.good, self.none_ok = list(allowed), good, none_ok
        self.calls: list[str] = []
        self.authenticated = False

    def auth_none(self, user: str) -> list[str]:
        from zcsync.transport.ssh import paramiko
        self.calls.append("none")
        if self.none_ok:
            self.authenticated = True
            return []
        raise paramiko.BadAuthenticationType("Bad authentication type", self.allowed)

    def auth_publickey(self, user: str, key: str) -> list[str]:
        from zcsync.transport.ssh import paramiko
        self.calls.append(key)
        if "publickey" not in self.allowed:
            raise paramiko.BadAuthenticationType("Bad authentication type", self.allowed)
        if key != self.good:
            raise paramiko.AuthenticationException("Authentication failed.")
        self.authenticated = True
        return []

    def is_authenticated(self) -> bool:
        return self.authenticated

    def is_active(self) -> bool:
        return True


def _log_in(tmp_path, transport: _FakeTransport, *, interactive: bool = False) -> list[str]:
    """The calls _Connector._authenticate makes, offering keys k1 and k2; StartupError propagates."""
    from zcsync.transport import ssh
    (tmp_path / "ssh_config").write_text("Host h\n  HostName 127.0.0.1\n")
    connector = ssh._Connector(ssh.SshOptions(ssh_config=str(tmp_path / "ssh_config")))
    connector.interactive = interactive
    connector._candidate_keys = lambda hop, notes, batch: iter(["k1", "k2"])  # type: ignore[method-assign]
    connector._authenticate(transport, connector.hop("h", "u", None))  # type: ignore[arg-type]
    return transport.calls


def test_without_prompts_keys_go_before_none(tmp_path):
    """A cron job (no terminal, or BatchMode) offers its keys at once: asking "none" first
    would cost a round trip (~10 ms against OpenSSH); it is asked only if no key got in."""
    from zcsync.errors import StartupError
    assert _log_in(tmp_path, _FakeTransport(good="k2")) == ["k1", "k2"]
    assert _log_in(tmp_path, _FakeTransport(none_ok=True)) == ["k1", "k2", "none"]
    with pytest.raises(StartupError, match=r"Permission denied for u@127\.0\.0\.1 \(publickey\)"):
        _log_in(tmp_path, _FakeTransport())
    transport = _FakeTransport(allowed=("password",))
    with pytest.raises(StartupError, match=r"\(password\)"):
        _log_in(tmp_path, transport)
    assert transport.calls == ["k1"]  # told keys are not wanted: no more offered, no "none" needed


def test_with_prompts_none_goes_first(tmp_path):
    """Where a passphrase may be asked for, "none" first tells whether keys are wanted at all."""
    assert _log_in(tmp_path, _FakeTransport(good="k1"), interactive=True) == ["none", "k1"]
    assert _log_in(tmp_path, _FakeTransport(none_ok=True), interactive=True) == ["none"]


# -- the -e transport ---------------------------------------------------------------------------

def test_wait_child_wakes_when_the_child_exits():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    assert wait_child(proc, 0.01) is None
    started = time.monotonic()
    assert wait_child(proc, 30) == 0
    assert time.monotonic() - started < 5
    assert wait_child(proc, 0) == 0  # reaped already
    proc = subprocess.Popen(["sh", "-c", "exit 3"])
    assert wait_child(proc, None) == 3
    proc = subprocess.Popen(["sleep", "30"])
    proc.kill()
    assert wait_child(proc, 30) == -9
