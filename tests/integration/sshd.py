"""A throwaway OpenSSH server on 127.0.0.1 for integration tests.

It has its own host key, one authorised client key, its own known_hosts and
ssh_config, so that paramiko (through ZCSYNC_* variables or SshOptions) and
OpenSSH (``ssh -F config``, ``rsync -e "ssh -F config"``) reach it the same way
without touching ~/.ssh.
"""
from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
REPO_ROOT = Path(__file__).resolve().parents[2]
ALIAS = "zcs-test"


def direction_paths(direction: str) -> list[str]:
    """The operands of a differential push or pull of src's contents into dst, the remote
    side under the run directory ("{run}")."""
    return ["src/", f"{ALIAS}:{{run}}/dst"] if direction == "push" else [f"{ALIAS}:{{run}}/src/", "dst"]


def remote_zcsync_path() -> str:
    """A --zcsync-path that runs this checkout's zcsync with this Python on the ssh side."""
    return f"env PYTHONPATH={shlex.quote(str(REPO_ROOT))} {shlex.quote(sys.executable)} -m zcsync"


def missing_reason() -> str | None:
    """Why an sshd can't be started here, or None if it can."""
    for tool in (SSHD, shutil.which("ssh-keygen")):
        if not tool or not os.access(tool, os.X_OK):
            return f"{tool or 'ssh-keygen'} not available"
    if os.geteuid() != 0:
        return "sshd with privilege separation needs root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, kind: str = "ed25519", passphrase: str = "", comment: str = "zcsync-test") -> Path:
    """Make an OpenSSH key pair at path (and path.pub)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return path


@dataclass
class Sshd:
    """A running sshd and the files a client needs to log into it."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    user: str = "root"
    alias: str = ALIAS
    proc: subprocess.Popen | None = field(default=None, repr=False)

    # paths, all under root
    @property
    def host_key(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.root / "ssh_config"

    @property
    def zcsync_known_hosts(self) -> Path:
        return self.root / "zcsync_known_hosts"

    @property
    def log_path(self) -> Path:
        return self.root / "sshd.log"

    @property
    def host_key_line(self) -> str:
        """The host key as known_hosts lists it for this server."""
        kind, b64 = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[{self.host}]:{self.port} {kind} {b64}"

    @property
    def rsh(self) -> str:
        """An -e / RSYNC_RSH command for OpenSSH that uses this server's config."""
        return f"ssh -F {shlex.quote(str(self.ssh_config))}"

    def host_block(self, alias: str, **extra: str) -> str:
        """An ssh_config ``Host`` block for this server; extra keys override defaults."""
        opts = {
            "HostName": self.host,
            "Port": str(self.port),
            "User": self.user,
            "IdentityFile": str(self.client_key),
            "IdentitiesOnly": "yes",
            "UserKnownHostsFile": str(self.known_hosts),
            "GlobalKnownHostsFile": "/dev/null",
            "StrictHostKeyChecking": "yes",
            "BatchMode": "yes",
            "LogLevel": "ERROR",
        }
        opts.update(extra)
        body = "".join(f"    {k} {v}\n" for k, v in opts.items())
        return f"Host {alias}\n{body}"

    def env(self, **extra: str) -> dict[str, str]:
        """os.environ plus what makes zcsync's paramiko and OpenSSH use this server's files."""
        env = dict(os.environ)
        env.pop("SSH_AUTH_SOCK", None)  # the test key, not whatever an agent holds
        env.update(
            ZCSYNC_SSH_CONFIG=str(self.ssh_config),
            ZCSYNC_KNOWN_HOSTS=str(self.zcsync_known_hosts),
            RSYNC_RSH=self.rsh,
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        )
        env.update(extra)
        return env

    # lifecycle
    def _write_files(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        keygen(self.host_key, comment="zcsync-test-host")
        keygen(self.client_key)
        (self.root / "authorized_keys").write_text(self.client_key.with_suffix(".pub").read_text())

    def _write_config(self) -> None:
        (self.root / "sshd_config").write_text(
            f"""\
Port {self.port}
ListenAddress {self.host}
HostKey {self.host_key}
PidFile {self.root / 'sshd.pid'}
AuthorizedKeysFile {self.root / 'authorized_keys'}
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
PermitTunnel no
X11Forwarding no
PrintMotd no
UseDNS no
MaxStartups 100:30:200
MaxSessions 100
LogLevel VERBOSE
Subsystem sftp internal-sftp
"""
        )
        self.known_hosts.write_text(self.host_key_line + "\n")
        self.ssh_config.write_text(self.host_block(self.alias))
        self.ssh_config.chmod(0o600)

    def start(self, attempts: int = 5) -> Sshd:
        """Generate keys and config, start sshd and wait until it speaks SSH."""
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privilege separation dir
        self._write_files()
        last = ""
        for _ in range(attempts):
            self.port = _free_port()
            self._write_config()
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
            log.close()
            if self._wait_ready():
                return self
            last = self.log_path.read_text(errors="replace")[-2000:]
            self.stop()
        raise RuntimeError(f"sshd did not start; log tail:\n{last}")

    def _wait_ready(self, seconds: float = 10.0) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop this sshd (only the process we started)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self, chars: int = 3000) -> str:
        """The end of sshd's log, for assertion messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
