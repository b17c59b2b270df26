"""After a push over ssh, inspect the remote host's files with testinfra (paramiko backend)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from .sshd import ALIAS, remote_zcsync_path

testinfra = pytest.importorskip("testinfra")


def test_pushed_files_as_seen_on_the_remote_host(tmp_path, sshd):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    payload = os.urandom(300_000)
    (src / "data.bin").write_bytes(payload)
    (src / "data.bin").chmod(0o640)
    os.chown(src / "data.bin", 1234, 4321)
    (src / "sub" / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "sub" / "script.sh").chmod(0o755)
    os.symlink("../data.bin", src / "sub" / "link")
    dst = tmp_path / "remote-dst"
    result = subprocess.run([sys.executable, "-m", "zcsync", "-a", "--numeric-ids",
                             "--zcsync-path", remote_zcsync_path(), f"{src}/", f"{ALIAS}:{dst}/"],
                            env=sshd.env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

    host = testinfra.get_host(f"paramiko://{sshd.user}@{ALIAS}", ssh_config=str(sshd.ssh_config))
    data = host.file(str(dst / "data.bin"))
    assert data.is_file
    assert data.mode == 0o640
    assert (data.uid, data.gid) == (1234, 4321)
    assert data.size == len(payload)
    assert data.sha256sum == hashlib.sha256(payload).hexdigest()
    script = host.file(str(dst / "sub" / "script.sh"))
    assert script.mode == 0o755 and script.content_string.startswith("#!/bin/sh")
    link = host.file(str(dst / "sub" / "link"))
    assert link.is_symlink and link.linked_to == str(dst / "data.bin")
    assert host.run(f"readlink {dst}/sub/link").stdout.strip() == "../data.bin"
    assert not host.run(f"find {dst} -name '*.zcs'").stdout.strip()
