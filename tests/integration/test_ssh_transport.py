"""The ssh and rsh transports against a real OpenSSH sshd on 127.0.0.1."""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sshd import Sshd, keygen, remote_zcsync_path

from zcsync.endpoints import parse_endpoint
from zcsync.errors import (
    ConnectTimeout,
    RemoteNotFound,
    SocketIOError,
    StartupError,
    Timeout,
)
from zcsync.transport import Stream
from zcsync.transport.rsh import open_rsh, rsh_argv
from zcsync.transport.packet_pipe import PacketPipe
from zcsync.transport.ssh import DEFAULT_WINDOW_SIZE, SshOptions, auto_window, open_ssh

EP = parse_endpoint("zcs-test:")


@pytest.fixture
def tofu(tmp_path: Path) -> Path:
    return tmp_path / "zcsync_known_hosts"


@pytest.fixture
def opts(sshd: Sshd, tofu: Path) -> SshOptions:
    """Options that reach the test sshd through its generated ssh_config."""
    return SshOptions(ssh_config=str(sshd.ssh_config), zcsync_known_hosts=str(tofu), use_agent=False)


def write_config(sshd: Sshd, path: Path, *blocks: str) -> SshOptions:
    """An ssh_config holding the standard zcs-test block plus extra ones."""
    path.write_text("\n".join([sshd.host_block(sshd.alias), *blocks]))
    path.chmod(0o600)
    return SshOptions(ssh_config=str(path), zcsync_known_hosts=str(path.parent / "tofu"), use_agent=False)


def host_fingerprint(sshd: Sshd) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(sshd.host_key.with_suffix(".pub"))],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()[1]


def read_all(stream: Stream, chunk: int = 1 << 20) -> bytes:
    parts = []
    while True:
        data = stream.read(chunk)
        if not data:
            return b"".join(parts)
        parts.append(data)


def echo(options: SshOptions, alias: str = "zcs-test") -> bytes:
    with open_ssh(parse_endpoint(f"{alias}:"), ["echo", "hi"], options=options) as stream:
        return read_all(stream)


# -- basic exec -------------------------------------------------------------------


def test_exec_echo(opts: SshOptions) -> None:
    stream = open_ssh(EP, ["echo", "hi"], options=opts)
    with stream:
        assert isinstance(stream, Stream)
        assert stream.read(3) == b"hi\n"
        assert stream.read(10) == b""
    assert stream.exit_status == 0


def test_arguments_are_shell_quoted(opts: SshOptions) -> None:
    weird = ["printf", "%s|", "a b", "$HOME", "it's", "*", ";rm -rf /"]
    with open_ssh(EP, weird, options=opts) as stream:
        assert read_all(stream) == b"a b|$HOME|it's|*|;rm -rf /|"


def test_program_prefix_is_verbatim(opts: SshOptions) -> None:
    with open_ssh(EP, ["x y"], options=opts, program="FOO=bar sh -c 'echo $FOO-$0'") as stream:
        assert read_all(stream) == b"bar-x y\n"


def test_cat_round_trip_10mib(opts: SshOptions) -> None:
    payload = os.urandom(10 * 1024 * 1024)
    with open_ssh(EP, ["cat"], options=opts) as stream:

        def feed() -> None:
            view = memoryview(payload)
            for off in range(0, len(payload), 300_000):
                stream.write(view[off : off + 300_000])
            stream.write_eof()

        writer = threading.Thread(target=feed)
        writer.start()
        got = read_all(stream, 65536)
        writer.join()
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert stream.exit_status == 0
    assert stream.bytes_read == stream.bytes_written == len(payload)


def test_one_large_write_costs_no_more_than_many_small_ones(opts: SshOptions) -> None:
    """A write goes out packet by packet without copying what is left of it each time.

    paramiko's sendall re-slices the rest of a bytes object after every 32 KiB packet,
    which makes one write quadratic in its size: a 64 MiB write took about 3 s here, and
    64 writes of 1 MiB about 0.4 s.
    """
    payload = os.urandom(64 << 20)
    view = memoryview(payload)

    def seconds(parts: list) -> float:
        with open_ssh(EP, ["sh", "-c", "cat > /dev/null"], options=opts) as stream:
            started = time.perf_counter()
            for part in parts:
                stream.write(part)
            stream.write_eof()
            assert read_all(stream) == b""
            taken = time.perf_counter() - started
        assert stream.exit_status == 0
        return taken

    small = seconds([view[off : off + (1 << 20)] for off in range(0, len(payload), 1 << 20)])
    large = seconds([payload])
    assert large < 2 * small + 0.25, (large, small)


def test_the_channel_reads_through_our_packet_pipe(opts: SshOptions) -> None:
    # open_ssh swaps paramiko's BufferedPipe for a PacketPipe. Should a paramiko release
    # stop reading Channel.in_buffer, the swap would do nothing, silently: so feed the
    # pipe ourselves and see the stream read it, before the remote sends anything.
    with open_ssh(EP, ["sh", "-c", "sleep 1; echo remote"], options=opts) as stream:
        pipe = stream.channel.in_buffer
        assert isinstance(pipe, PacketPipe)
        pipe.feed(b"ours\n")
        assert stream.read(5) == b"ours\n"
        assert read_all(stream) == b"remote\n"


def test_exit_status_and_stderr_forwarded(opts: SshOptions) -> None:
    lines: list[bytes] = []
    stream = open_ssh(
        EP, ["sh", "-c", "echo one >&2; printf 'two\\nthree' >&2; echo out; exit 3"], options=opts,
        stderr_sink=lines.append,
    )
    with stream:
        assert read_all(stream) == b"out\n"
    assert stream.exit_status == 3
    assert lines == [b"one\n", b"two\n", b"three\n"]


def test_environment_variables_choose_config(sshd: Sshd, tofu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in sshd.env(ZCSYNC_KNOWN_HOSTS=str(tofu)).items():
        monkeypatch.setenv(key, value)
    assert echo(SshOptions(use_agent=False)) == b"hi\n"


def test_openssh_uses_the_same_files(sshd: Sshd) -> None:
    out = subprocess.run([*sshd.rsh.split(), sshd.alias, "echo", "hi"], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hi\n"


@pytest.mark.skipif(not shutil.which("rsync"), reason="rsync not installed")
def test_rsync_uses_the_same_files(sshd: Sshd, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("data")
    out = subprocess.run(
        ["rsync", "-a", "-e", sshd.rsh, f"{tmp_path}/src/", f"{sshd.alias}:{tmp_path}/dst/"],
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "dst" / "f").read_text() == "data"


# -- host keys --------------------------------------------------------------------


def test_unknown_host_refused_with_fingerprint(sshd: Sshd, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.touch()
    options = write_config(sshd, tmp_path / "cfg", sshd.host_block("zcs-unknown", UserKnownHostsFile=str(empty)))
    with pytest.raises(StartupError) as info:
        echo(options, "zcs-unknown")
    message = str(info.value)
    assert info.value.exit_code == 5
    assert "\n" not in message
    assert "unknown" in message
    assert "ssh-ed25519" in message and host_fingerprint(sshd) in message
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1" in message
    assert "--ssh-accept-new" in message
    assert not (tmp_path / "tofu").exists()


def test_changed_host_key_refused(sshd: Sshd, tmp_path: Path) -> None:
    other = keygen(tmp_path / "other_host_key")
    kind, b64 = other.with_suffix(".pub").read_text().split()[:2]
    lying = tmp_path / "lying_known_hosts"
    lying.write_text(f"[127.0.0.1]:{sshd.port} {kind} {b64}\n")
    options = write_config(sshd, tmp_path / "cfg", sshd.host_block("zcs-changed", UserKnownHostsFile=str(lying)))
    for accept_new in (False, True):
        with pytest.raises(StartupError) as info:
            echo(SshOptions(**{**vars(options), "accept_new": accept_new}), "zcs-changed")
        assert info.value.exit_code == 5
        assert "man-in-the-middle" in str(info.value)
        assert f"{lying}:1" in str(info.value)
    assert lying.read_text() == f"[127.0.0.1]:{sshd.port} {kind} {b64}\n"


def test_hashed_and_wildcard_known_hosts(sshd: Sshd, tmp_path: Path) -> None:
    hashed = tmp_path / "hashed_known_hosts"
    hashed.write_text(sshd.host_key_line + "\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(hashed)], check=True, capture_output=True)
    assert "|1|" in hashed.read_text()
    wildcard = tmp_path / "wild_known_hosts"
    wildcard.write_text("[127.0.0.?]:* " + " ".join(sshd.host_key_line.split()[1:]) + "\n")
    options = write_config(
        sshd,
        tmp_path / "cfg",
        sshd.host_block("zcs-hashed", UserKnownHostsFile=str(hashed)),
        sshd.host_block("zcs-wild", UserKnownHostsFile=str(wildcard)),
    )
    assert echo(options, "zcs-hashed") == b"hi\n"
    assert echo(options, "zcs-wild") == b"hi\n"


def test_accept_new_writes_only_the_zcsync_file(sshd: Sshd, tmp_path: Path) -> None:
    user_file = tmp_path / "user_known_hosts"
    user_file.write_text("# mine\n")
    options = write_config(sshd, tmp_path / "cfg", sshd.host_block("zcs-new", UserKnownHostsFile=str(user_file)))
    tofu = Path(options.zcsync_known_hosts or "")
    accepting = SshOptions(**{**vars(options), "accept_new": True})
    assert echo(accepting, "zcs-new") == b"hi\n"
    assert user_file.read_text() == "# mine\n"
    assert tofu.read_text() == sshd.host_key_line + "\n"
    assert tofu.stat().st_mode & 0o777 == 0o600
    # Remembered: a later run needs no --ssh-accept-new, and adds nothing.
    assert echo(options, "zcs-new") == b"hi\n"
    assert tofu.read_text() == sshd.host_key_line + "\n"


# -- authentication ---------------------------------------------------------------


def test_wrong_key_refused(sshd: Sshd, tmp_path: Path) -> None:
    stranger = keygen(tmp_path / "stranger")
    options = write_config(sshd, tmp_path / "cfg", sshd.host_block("zcs-stranger", IdentityFile=str(stranger)))
    with pytest.raises(StartupError) as info:
        echo(options, "zcs-stranger")
    assert info.value.exit_code == 5
    assert "Permission denied for root@127.0.0.1" in str(info.value)


def test_encrypted_key_without_terminal_is_a_clear_error(sshd: Sshd, tmp_path: Path) -> None:
    locked = keygen(tmp_path / "locked", passphrase="secret phrase")
    options = write_config(sshd, tmp_path / "cfg", sshd.host_block("zcs-locked", IdentityFile=str(locked)))
    with pytest.raises(StartupError) as info:
        echo(options, "zcs-locked")
    assert "encrypted" in str(info.value) and "ssh-agent" in str(info.value)


def test_identity_file_option(sshd: Sshd, tmp_path: Path) -> None:
    options = write_config(sshd, tmp_path / "cfg", sshd.host_block("zcs-noid", IdentityFile="none"))
    options = SshOptions(**{**vars(options), "identity_files": (str(sshd.client_key),)})
    assert echo(options, "zcs-noid") == b"hi\n"


# -- remote program -----------------------------------------------------------------


@pytest.mark.parametrize(
    "program",
    [
        "zcsync-not-installed-here",
        "/nonexistent/bin/zcsync",
        f"{sys.executable} -I -S -m zcsync",  # no PYTHONPATH, no site-packages: ModuleNotFoundError, exit 1
    ],
)
def test_remote_command_missing(opts: SshOptions, program: str) -> None:
    with open_ssh(EP, ["--server"], options=opts, program=program, stderr_sink=lambda line: None) as stream:
        with pytest.raises(RemoteNotFound) as info:
            stream.read(4)
    assert info.value.exit_code == 127
    assert str(info.value) == "zcsync not found on zcs-test (install it there or pass --zcsync-path)"


def test_remote_zcsync_path_finds_this_checkout(opts: SshOptions) -> None:
    # find_spec locates the package without running its __init__.
    probe = "import importlib.util as u; print(u.find_spec('zcsync').origin)"
    program = remote_zcsync_path().replace(" -m zcsync", "")
    with open_ssh(EP, ["-c", probe], options=opts, program=program) as stream:
        out = read_all(stream).decode().strip()
    assert out == str(Path(__file__).resolve().parents[2] / "zcsync" / "__init__.py")


# -- proxies ------------------------------------------------------------------------


def test_proxy_command(sshd: Sshd, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    proxy = f"ssh -F {cfg} -W %h:%p zcs-test"
    options = write_config(sshd, cfg, sshd.host_block("zcs-proxied", ProxyCommand=proxy))
    assert echo(options, "zcs-proxied") == b"hi\n"


def test_proxy_command_failure(sshd: Sshd, tmp_path: Path) -> None:
    options = write_config(sshd, tmp_path / "cfg", sshd.host_block("zcs-badproxy", ProxyCommand="sh -c 'exit 7'"))
    with pytest.raises(SocketIOError) as info:
        echo(options, "zcs-badproxy")
    assert "status 7" in str(info.value)


def logins(sshd: Sshd) -> int:
    """How many logins sshd has accepted so far (it logs each one)."""
    deadline = time.monotonic() + 2
    count = sshd.log_tail(10**8).count("Accepted publickey")
    while time.monotonic() < deadline:  # sshd's log line may trail our connection
        time.sleep(0.1)
        now = sshd.log_tail(10**8).count("Accepted publickey")
        if now == count:
            return count
        count = now
    return count


def test_proxy_jump(sshd: Sshd, tmp_path: Path) -> None:
    options = write_config(sshd, tmp_path / "cfg", sshd.host_block("zcs-jumped", ProxyJump="zcs-test"))
    before = logins(sshd)
    assert echo(options, "zcs-jumped") == b"hi\n"
    assert logins(sshd) == before + 2  # the jump host, then the target through it


def test_proxy_jump_chain(sshd: Sshd, tmp_path: Path) -> None:
    options = write_config(sshd, tmp_path / "cfg", sshd.host_block("zcs-jumped2", ProxyJump="zcs-test,zcs-test"))
    before = logins(sshd)
    assert echo(options, "zcs-jumped2") == b"hi\n"
    assert logins(sshd) == before + 3


def test_proxy_jump_host_key_is_checked(sshd: Sshd, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.touch()
    options = write_config(
        sshd,
        tmp_path / "cfg",
        sshd.host_block("zcs-badjump", UserKnownHostsFile=str(empty)),
        sshd.host_block("zcs-via-badjump", ProxyJump="zcs-badjump"),
    )
    with pytest.raises(StartupError, match="unknown"):
        echo(options, "zcs-via-badjump")


# -- connection failures ------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused(sshd: Sshd, tmp_path: Path) -> None:
    options = write_config(sshd, tmp_path / "cfg", sshd.host_block("zcs-closed", Port=str(_closed_port())))
    with pytest.raises(SocketIOError, match="Connection refused") as info:
        echo(options, "zcs-closed")
    assert info.value.exit_code == 10


def test_unresolvable_host(sshd: Sshd, tmp_path: Path) -> None:
    options = write_config(sshd, tmp_path / "cfg", sshd.host_block("zcs-nxdomain", HostName="no-such-host.invalid"))
    with pytest.raises(SocketIOError, match="Could not resolve hostname no-such-host.invalid") as info:
        echo(options, "zcs-nxdomain")
    assert info.value.exit_code == 10


def test_silent_server_is_a_connect_timeout(sshd: Sshd, tmp_path: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        options = write_config(
            sshd, tmp_path / "cfg", sshd.host_block("zcs-silent", Port=str(port), ConnectTimeout="1")
        )
        started = time.monotonic()
        with pytest.raises(ConnectTimeout) as info:
            echo(options, "zcs-silent")
    assert info.value.exit_code == 35
    assert time.monotonic() - started < 10


def test_stalled_peer_times_out(opts: SshOptions) -> None:
    with open_ssh(EP, ["sleep", "30"], options=opts) as stream:
        stream.timeout = 0.5
        started = time.monotonic()
        with pytest.raises(Timeout) as info:
            stream.read(1)
        assert info.value.exit_code == 30
        assert 0.4 < time.monotonic() - started < 5
        stream.timeout = None


def test_timeout_option_applies_to_the_stream(opts: SshOptions) -> None:
    options = SshOptions(**{**vars(opts), "timeout": 0.5})
    with open_ssh(EP, ["sleep", "30"], options=options) as stream:
        assert stream.timeout == 0.5
        with pytest.raises(Timeout):
            stream.read(1)


def test_server_alive_and_compression(sshd: Sshd, tmp_path: Path) -> None:
    options = write_config(
        sshd, tmp_path / "cfg", sshd.host_block("zcs-alive", ServerAliveInterval="1", Compression="yes")
    )
    command = ["sh", "-c", "sleep 1.5; head -c 100000 /dev/zero"]
    with open_ssh(parse_endpoint("zcs-alive:"), command, options=options) as stream:
        assert stream.transport.remote_compression.startswith("zlib")
        assert read_all(stream) == bytes(100000)


# -- rsh (-e) -------------------------------------------------------------------------


def test_rsh_argv_follows_rsync() -> None:
    ep = parse_endpoint("alice@box:dir")
    assert rsh_argv("ssh -p 2222 -o 'Foo bar'", ep, "zcsync --server .") == [
        "ssh", "-p", "2222", "-o", "Foo bar", "-l", "alice", "box", "zcsync --server .",
    ]
    assert rsh_argv("ssh", parse_endpoint("[::1]:x"), "cmd") == ["ssh", "::1", "cmd"]


def test_rsh_argv_passes_ip_version_only_to_ssh() -> None:
    ep = parse_endpoint("box:dir")
    assert rsh_argv("/usr/bin/ssh -p 2", ep, "c", ip_version=6) == ["/usr/bin/ssh", "-6", "-p", "2", "box", "c"]
    assert rsh_argv("ssh", ep, "c", ip_version=4) == ["ssh", "-4", "box", "c"]
    assert rsh_argv("rsh", ep, "c", ip_version=4) == ["rsh", "box", "c"]


def test_paramiko_with_ipv6_only_cannot_reach_an_ipv4_sshd(tmp_path, sshd: Sshd) -> None:
    """-6: the built-in client resolves the host for IPv6 only (the test sshd listens on 127.0.0.1)."""
    env = {**os.environ, **sshd.env()}
    proc = subprocess.run([sys.executable, "-m", "zcsync", "-6", "-r", "--zcsync-path", remote_zcsync_path(),
                           "zcs-test:/etc/hostname", str(tmp_path / "h")], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and not (tmp_path / "h").exists()
    proc = subprocess.run([sys.executable, "-m", "zcsync", "-4", "-r", "--rsync-path", remote_zcsync_path(),
                           "zcs-test:/etc/hostname", str(tmp_path / "h")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "h").read_bytes() == Path("/etc/hostname").read_bytes()


def test_rsh_stream(sshd: Sshd) -> None:
    stream = open_rsh(sshd.rsh, EP, ["sh", "-c", "cat; echo done; exit 4"])
    with stream:
        stream.write(b"hello ")
        stream.write(memoryview(b"world\n"))
        stream.write_eof()
        assert read_all(stream) == b"hello world\ndone\n"
    assert stream.exit_status == 4


def test_rsh_with_user(sshd: Sshd) -> None:
    with open_rsh(sshd.rsh, parse_endpoint("root@zcs-test:"), ["id", "-un"]) as stream:
        assert read_all(stream) == b"root\n"
    assert stream.exit_status == 0


def test_rsh_ssh_failure_passes_255(sshd: Sshd, tmp_path: Path) -> None:
    write_config(sshd, tmp_path / "cfg", sshd.host_block("zcs-closed", Port=str(_closed_port())))
    stream = open_rsh(f"ssh -F {tmp_path / 'cfg'}", parse_endpoint("zcs-closed:"), ["true"])
    with stream:
        assert stream.read(1) == b""
    assert stream.exit_status == 255


def test_rsh_remote_command_missing(sshd: Sshd) -> None:
    with open_rsh(sshd.rsh, EP, ["--server"], program="zcsync-not-installed-here") as stream:
        with pytest.raises(RemoteNotFound):
            stream.read(4)
    assert stream.exit_status == 127


def test_rsh_missing_local_command() -> None:
    with pytest.raises(StartupError, match="Cannot run remote shell"):
        open_rsh("no-such-remote-shell-binary", EP, ["true"])


def test_rsh_stalled_peer_times_out(sshd: Sshd) -> None:
    with open_rsh(sshd.rsh, EP, ["sleep", "30"], timeout=0.5, close_wait=0.5) as stream:
        with pytest.raises(Timeout):
            stream.read(1)


def test_rsh_large_round_trip(sshd: Sshd) -> None:
    payload = os.urandom(8 * 1024 * 1024)
    with open_rsh(sshd.rsh, EP, ["cat"], timeout=30) as stream:
        writer = threading.Thread(target=lambda: (stream.write(payload), stream.write_eof()))
        writer.start()
        got = read_all(stream)
        writer.join()
    assert got == payload


def test_window_follows_round_trip_time(opts: SshOptions, sshd: Sshd, tmp_path: Path) -> None:
    mib = 1 << 20
    assert auto_window(0.0001) == 2 * mib  # LAN: ssh's default
    assert auto_window(0.020) == 21 * mib  # 20 ms: 1 GiB/s needs ~20 MiB in flight
    assert auto_window(1.0) == 64 * mib
    assert auto_window(None) == DEFAULT_WINDOW_SIZE
    with open_ssh(EP, ["true"], options=opts) as stream:
        assert stream.channel.in_window_size == 2 * mib  # loopback
    options = write_config(sshd, tmp_path / "cfg", sshd.host_block("zcs-jumpwin", ProxyJump="zcs-test"))
    with open_ssh(parse_endpoint("zcs-jumpwin:"), ["true"], options=options) as stream:
        assert stream.channel.in_window_size == DEFAULT_WINDOW_SIZE  # RTT unknown behind a jump
    fixed = SshOptions(**{**vars(opts), "window_size": 5 * mib})
    with open_ssh(EP, ["true"], options=fixed) as stream:
        assert stream.channel.in_window_size == 5 * mib


# -- speed ----------------------------------------------------------------------------


@pytest.mark.slow
def test_throughput(opts: SshOptions) -> None:
    """Raw paramiko channel read speed over loopback (prints MiB/s; -s to see it)."""
    size = 256 * 1024 * 1024
    with open_ssh(EP, ["head", "-c", str(size), "/dev/zero"], options=opts) as stream:
        started = time.perf_counter()
        total = 0
        while chunk := stream.read(1 << 20):
            total += len(chunk)
        elapsed = time.perf_counter() - started
        cipher = stream.transport.remote_cipher
    assert total == size
    rate = size / elapsed / 2**20
    print(f"\nparamiko {cipher}: {rate:.0f} MiB/s", file=sys.stderr)
    assert rate > 10
