"""--transport=tcp against a real sshd: ssh starts the listener, the data goes over raw TCP.

rsync over ssh on the same trees is the oracle for what ends up on disk.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import zcsync
from tests.oracle import differential, output_lines
from zcsync import bootstrap

from .sshd import ALIAS, remote_zcsync_path


def _extra() -> list[str]:
    return ["--transport=tcp", "--zcsync-path", remote_zcsync_path()]


def _same_items(rs, zc) -> None:
    want, got = output_lines(rs.stdout), output_lines(zc.stdout)
    assert want == got, f"only rsync: {sorted(set(want) - set(got))}\nonly zcsync: {sorted(set(got) - set(want))}"


@pytest.mark.parametrize("seed", [11, 12])
def test_push_matches_rsync(tmp_path, sshd, via, seed):
    rs, zc = differential(tmp_path, ["-aS", "-i", *via], seed=seed, env=sshd.env(),
                          paths=["src/", f"{ALIAS}:{{run}}/dst"], zcsync_extra=_extra())
    _same_items(rs, zc)


@pytest.mark.parametrize("seed", [13, 14])
def test_pull_matches_rsync(tmp_path, sshd, via, seed):
    rs, zc = differential(tmp_path, ["-aS", "-i", *via], seed=seed, env=sshd.env(),
                          paths=[f"{ALIAS}:{{run}}/src/", "dst"], zcsync_extra=_extra())
    _same_items(rs, zc)


def test_resync_with_delete_and_delta(tmp_path, sshd, via):
    differential(tmp_path, ["-aH", "--delete", "--no-whole-file", *via], seed=15, mutate=True,
                 env=sshd.env(), paths=["src/", f"{ALIAS}:{{run}}/dst"], zcsync_extra=_extra())


@pytest.fixture
def ssh_env(sshd, monkeypatch):
    """This process reaches the test sshd (for in-process zcsync.sync calls)."""
    for key, value in sshd.env().items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_data_goes_over_the_socket_not_ssh(tmp_path, ssh_env, direction, monkeypatch):
    """The ssh channel carries the listen line only; the file bytes cross the raw connection."""
    streams: list[bootstrap.BootstrappedStream] = []
    real = bootstrap.open_data_stream

    def spy(*args, **kwargs):
        stream = real(*args, **kwargs)
        streams.append(stream)
        return stream
    monkeypatch.setattr(bootstrap, "open_data_stream", spy)

    src = tmp_path / "src"
    src.mkdir()
    payload = os.urandom(8 << 20)
    (src / "big").write_bytes(payload)
    (src / "small").write_bytes(b"x")
    if direction == "push":
        args = (f"{src}/", f"{ALIAS}:{tmp_path}/dst")
    else:
        args = (f"{ALIAS}:{src}/", f"{tmp_path}/dst")
    result = zcsync.sync(*args, archive=True, transport="tcp", zcsync_path=remote_zcsync_path())
    assert result.exit_code == 0
    assert (tmp_path / "dst" / "big").read_bytes() == payload

    (stream,) = streams
    control = stream.control
    assert control.closed and stream.closed
    assert control.exit_status == 0
    assert control.bytes_read <= bootstrap.MAX_LINE, "more than the listen line came over ssh"
    assert control.bytes_written == 0
    moved = stream.bytes_written if direction == "push" else stream.bytes_read
    assert moved > len(payload)
    assert result.stats.bytes_sent + result.stats.bytes_received > len(payload)


def _run(args, sshd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zcsync", *args], env=sshd.env(), capture_output=True,
                          text=True, timeout=120, **kw)


def test_daemon_endpoint_is_a_usage_error(tmp_path, sshd):
    (tmp_path / "src").mkdir()
    for dst in ("localhost::mod/x", "zcsync://localhost/mod/x"):
        result = _run(["-a", "--transport=tcp", f"{tmp_path}/src/", dst], sshd)
        assert result.returncode == 1, result.stderr
        assert "--transport=tcp is for host:path (ssh) locations" in result.stderr


def test_remote_program_missing(tmp_path, sshd, via):
    (tmp_path / "src").mkdir()
    result = _run(["-a", *via, "--transport=tcp", "--zcsync-path", "/nonexistent/zcsync",
                   f"{tmp_path}/src/", f"{ALIAS}:{tmp_path}/dst"], sshd)
    assert result.returncode == 127, result.stderr
    assert "zcsync not found" in result.stderr


def test_banner_from_remote_program(tmp_path, sshd):
    """A remote side that prints text instead of the listen line is a protocol mismatch (5)."""
    (tmp_path / "src").mkdir()
    result = _run(["-a", "--transport=tcp", "--zcsync-path", "echo Welcome to the machine; true",
                   f"{tmp_path}/src/", f"{ALIAS}:{tmp_path}/dst"], sshd)
    assert result.returncode == 5, result.stderr
    assert "is the remote shell printing text" in result.stderr and "Welcome" in result.stderr


def test_remote_error_reaches_the_client(tmp_path, sshd):
    """After the bootstrap, the server's refusals arrive as protocol messages, as over ssh."""
    (tmp_path / "src").mkdir()
    result = _run(["-a", "--transport=tcp", "--zcsync-path", remote_zcsync_path(),
                   f"{ALIAS}:{tmp_path}/nonexistent/", f"{tmp_path}/dst"], sshd)
    assert result.returncode == 23, result.stderr
    assert "nonexistent" in result.stderr


def test_listener_binds_where_ssh_came_in(tmp_path, sshd):
    """Under sshd the listener takes SSH_CONNECTION's server address (the test sshd is on 127.0.0.1)."""
    out = subprocess.run(["ssh", "-F", str(sshd.ssh_config), ALIAS, "echo $SSH_CONNECTION"],
                         env=sshd.env(), capture_output=True, text=True, timeout=60, check=True).stdout
    assert bootstrap.bind_address({"SSH_CONNECTION": out.strip()}) == sshd.host


def test_stats_count_the_data_connection(tmp_path, sshd):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(1 << 20))
    result = _run(["-a", "--stats", "--transport=tcp", "--zcsync-path", remote_zcsync_path(),
                   f"{src}/", f"{ALIAS}:{tmp_path}/dst"], sshd)
    assert result.returncode == 0, result.stderr
    sent = next(line for line in result.stdout.splitlines() if line.startswith("Total bytes sent"))
    assert int(sent.split(":")[1].split()[0].replace(",", "")) > 1 << 20
    assert Path(tmp_path / "dst" / "f").read_bytes() == (src / "f").read_bytes()
