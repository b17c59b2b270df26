"""`zcsync --server --restrict-to=DIR` as an authorized_keys command= line, behind a real sshd:
the client's own command arrives in SSH_ORIGINAL_COMMAND and is served held to DIR."""
from __future__ import annotations

import pathlib
import subprocess

import pytest

from tests.oracle import run_zcsync

from .sshd import keygen, remote_zcsync_path

ALIAS = "zcs-forced"


@pytest.fixture
def forced(sshd, tmp_path):
    """A key whose authorized_keys line forces `zcsync --server --restrict-to=tmp_path/jail`,
    and the environment (ssh_config for paramiko and for -e ssh) that logs in with it."""
    jail = tmp_path / "jail"
    jail.mkdir()
    key = keygen(tmp_path / "forced_key")
    keys = sshd.root / "authorized_keys"
    line = (f'command="{remote_zcsync_path()} --server --restrict-to={jail}",no-pty,no-port-forwarding '
            + key.with_suffix(".pub").read_text())
    before = keys.read_text()
    keys.write_text(before + line)
    config = tmp_path / "ssh_config"
    config.write_text(sshd.host_block(ALIAS, IdentityFile=str(key)))
    config.chmod(0o600)
    try:
        yield jail, sshd.env(ZCSYNC_SSH_CONFIG=str(config), RSYNC_RSH=f"ssh -F {config}"), f"ssh -F {config}"
    finally:
        keys.write_text(before)


def _src(tmp_path: pathlib.Path) -> pathlib.Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_text("a")
    (src / "sub" / "b").write_text("b")
    return src


@pytest.mark.parametrize("via", ["paramiko", "rsh"])
def test_forced_command_serves_inside_dir(tmp_path, forced, via):
    jail, env, rsh = forced
    rsh_args = ["-e", rsh] if via == "rsh" else []
    src = _src(tmp_path)
    # The client asks for its usual remote program: the forced command runs instead.
    push = run_zcsync(["-a", *rsh_args, f"{src}/", f"{ALIAS}:{jail}/dst/"], env=env, cwd=tmp_path)
    assert push.returncode == 0, push.stderr
    assert (jail / "dst" / "sub" / "b").read_text() == "b"
    pull = run_zcsync(["-a", *rsh_args, f"{ALIAS}:{jail}/dst/", str(tmp_path / "back")], env=env, cwd=tmp_path)
    assert pull.returncode == 0, pull.stderr
    assert (tmp_path / "back" / "a").read_text() == "a"


@pytest.mark.parametrize("via", ["paramiko", "rsh"])
def test_forced_command_refuses_outside_dir(tmp_path, forced, via):
    jail, env, rsh = forced
    rsh_args = ["-e", rsh] if via == "rsh" else []
    src = _src(tmp_path)
    outside = tmp_path / "outside"
    push = run_zcsync(["-a", *rsh_args, f"{src}/", f"{ALIAS}:{outside}/"], env=env, cwd=tmp_path)
    assert push.returncode == 1 and "outside" in push.stderr and "--restrict-to" in push.stderr, push.stderr
    assert not outside.exists()
    pull = run_zcsync(["-a", *rsh_args, f"{ALIAS}:/etc/hostname", str(tmp_path / "got")], env=env, cwd=tmp_path)
    assert pull.returncode == 1 and "outside" in pull.stderr, pull.stderr
    assert not (tmp_path / "got").exists()
    # The client cannot lift the restriction by asking for one of its own.
    wider = run_zcsync(["-a", *rsh_args, "--zcsync-path", f"{remote_zcsync_path()} --server --restrict-to=/ --",
                        f"{src}/", f"{ALIAS}:{outside}/"], env=env, cwd=tmp_path)
    assert wider.returncode != 0 and not outside.exists(), wider.stderr


def test_forced_command_runs_no_other_command(tmp_path, forced):
    """A plain ssh login with the key gets the zcsync server, never its own command."""
    jail, env, rsh = forced
    secret = jail / "secret"
    secret.write_text("token-5f1c7e")
    proc = subprocess.run([*rsh.split(), ALIAS, f"cat {secret}"], env=env, capture_output=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert b"token-5f1c7e" not in proc.stdout
