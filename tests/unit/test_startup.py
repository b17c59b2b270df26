"""Start-up cost: what a run imports, and that the shortcuts taken for it keep behaviour.

Every module a command imports costs every run its import time; these tests keep
the expensive ones (tqdm, the daemon's server code, OpenSSL, email/importlib.metadata)
off the paths that do not need them. Each check runs in a fresh interpreter.
"""
from __future__ import annotations

import gc
import hashlib
import hmac
import subprocess
import sys

import pytest

from zcsync import auth, cli, connect, daemon


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
