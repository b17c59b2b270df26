"""Fixtures that start real servers for integration tests."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sshd import Sshd, missing_reason, remote_zcsync_path  # noqa: E402


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A real OpenSSH sshd on 127.0.0.1 with its own keys, known_hosts and ssh_config."""
    reason = missing_reason()
    if reason:
        pytest.skip(f"cannot run sshd: {reason}")
    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["paramiko", "rsh"])
def via(request: pytest.FixtureRequest, sshd: Sshd) -> list[str]:
    """How zcsync reaches the test sshd: its own paramiko client (no option), or OpenSSH
    through -e (as rsync)."""
    return [] if request.param == "paramiko" else ["-e", sshd.rsh]


@pytest.fixture
def zcsync_remote_path() -> str:
    """--zcsync-path that runs this checkout on the ssh side."""
    return remote_zcsync_path()
