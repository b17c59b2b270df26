"""SSH transport: paramiko connects, checks the host key, logs in and execs the remote zcsync.

It follows OpenSSH where users can see the difference: ~/.ssh/config
(HostName, User, Port, IdentityFile, IdentitiesOnly, ProxyCommand, ProxyJump,
ConnectTimeout, ServerAliveInterval, Compression, BatchMode, UserKnownHostsFile,
GlobalKnownHostsFile, HostKeyAlias, StrictHostKeyChecking), known_hosts files
with hashed names, wildcards and ``[host]:port`` entries, agent keys first and
then identity files. Unknown hosts are refused unless --ssh-accept-new; keys we
accept go to a file of our own (~/.config/zcsync/known_hosts) and never into
the user's known_hosts.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import getpass
import hashlib
import hmac
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..endpoints import Endpoint
from ..errors import (
    ConnectTimeout,
    RemoteNotFound,
    SocketIOError,
    StartupError,
    StreamError,
    ZcsyncError,
)
from .base import (
    BaseStream,
    Buffer,
    looks_like_not_found,
    map_stream_errors,
    not_found_message,
    remote_command,
)


class _InvokeOnUse:
    """Stands in for the invoke module in paramiko.config until a ``Match exec`` calls it."""

    def __getattr__(self, name: str) -> Any:
        import invoke
        import paramiko.config

        paramiko.config.invoke = invoke
        return getattr(invoke, name)


def _import_paramiko() -> ModuleType:
    """import paramiko, without the ~35 ms of importing invoke until a ``Match exec`` needs it.

    paramiko.config imports invoke up front only to run ``Match exec`` commands, and copes
    with its absence (the ImportError is raised when such a line is evaluated). So invoke
    is hidden during the import, and paramiko.config then gets a stand-in that imports it
    on first use: every user of paramiko in the process keeps ``Match exec``. Hiding a
    module would fail another thread's first import of it, so this is done only while no
    other thread runs, and not at all once paramiko or invoke is loaded.
    """
    if "paramiko" in sys.modules or "invoke" in sys.modules or threading.active_count() > 1:
        import paramiko
        return paramiko
    sys.modules["invoke"] = None  # type: ignore[assignment]  # makes `import invoke` raise ImportError
    try:
        import paramiko
    finally:
        if "invoke" in sys.modules and sys.modules["invoke"] is None:
            del sys.modules["invoke"]
    if getattr(paramiko.config, "invoke", False) is None:
        paramiko.config.invoke = _InvokeOnUse()
    return paramiko


if TYPE_CHECKING:
    import paramiko
else:
    paramiko = _import_paramiko()

from .packet_pipe import PacketPipe  # noqa: E402  (imports paramiko: after _import_paramiko)

log = logging.getLogger(__name__)
# paramiko logs failed negotiations with tracebacks; without this, Python's
# last-resort handler would print them on every refused connection.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

SSH_PORT = 22
# Measured on loopback (see tests/integration/test_ssh_transport.py::test_throughput):
# AES-GCM needs no separate MAC pass and is the fastest paramiko cipher here.
PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
    "aes192-ctr",
)
PREFERRED_MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256", "hmac-sha2-512")
# The channel window caps throughput at window/RTT. Over loopback 2 MiB (ssh's
# default) was fastest (~850 MiB/s against ~580 for 8 or 16 MiB: a bigger
# backlog only costs cache), but on a 20 ms link it caps at 100 MiB/s. So the
# window follows the TCP connect time: RTT x 1 GiB/s, between 2 and 64 MiB.
MIN_WINDOW_SIZE = 2 * 1024 * 1024
MAX_WINDOW_SIZE = 64 * 1024 * 1024
DEFAULT_WINDOW_SIZE = 8 * 1024 * 1024  # when the RTT is unknown (proxies, jumps)
WINDOW_TARGET_RATE = 1 << 30  # bytes per second
DEFAULT_MAX_PACKET_SIZE = 32768
DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
MAX_JUMPS = 8
REKEY_BYTES = 1 << 36  # 2**32 AES blocks, OpenSSH's default RekeyLimit
REKEY_PACKETS = 1 << 31


def _default_zcsync_known_hosts() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "zcsync", "known_hosts")


@dataclass(frozen=True)
class SshOptions:
    """How to reach an ssh endpoint; None means "ssh_config or OpenSSH's default"."""

    port: int | None = None
    user: str | None = None
    identity_files: tuple[str, ...] = ()
    #: --ssh-accept-new: trust an unknown host's key and remember it in zcsync_known_hosts.
    accept_new: bool = False
    #: Known-hosts files to check; None: ssh_config's UserKnownHostsFile and
    #: GlobalKnownHostsFile, else ~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts.
    known_hosts: tuple[str, ...] | None = None
    #: ssh_config file; None: $ZCSYNC_SSH_CONFIG, else ~/.ssh/config and /etc/ssh/ssh_config.
    ssh_config: str | None = None
    connect_timeout: float | None = None
    #: -4 / -6: connect over this address family only (AF_UNSPEC: any).
    family: int = socket.AF_UNSPEC
    #: Idle I/O timeout of the returned stream (rsync's --timeout).
    timeout: float | None = None
    #: Where --ssh-accept-new stores keys; None: $ZCSYNC_KNOWN_HOSTS, else
    #: ~/.config/zcsync/known_hosts.
    zcsync_known_hosts: str | None = None
    use_agent: bool = True
    #: SSH channel window in bytes; None sizes it from the measured RTT.
    window_size: int | None = None
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    ciphers: tuple[str, ...] = PREFERRED_CIPHERS
    compression: bool | None = None
    #: Seconds close() waits for the remote command to exit after EOF.
    close_wait: float = 5.0

    def config_paths(self) -> tuple[list[str], bool]:
        """The ssh_config files to read and whether the user chose them (like ssh -F)."""
        chosen = self.ssh_config or os.environ.get("ZCSYNC_SSH_CONFIG")
        if chosen:
            return [os.path.expanduser(chosen)], True
        return [os.path.expanduser("~/.ssh/config"), "/etc/ssh/ssh_config"], False

    def tofu_path(self) -> str:
        """The zcsync-owned known_hosts file (read, and written by accept_new)."""
        chosen = self.zcsync_known_hosts or os.environ.get("ZCSYNC_KNOWN_HOSTS")
        return os.path.expanduser(chosen) if chosen else _default_zcsync_known_hosts()


# -- error mapping -------------------------------------------------------


def _timed_out(exc: BaseException) -> bool:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, TimeoutError) or "timed out" in str(e).lower() or "timeout" in str(e).lower():
            return True
        e = e.__cause__ or e.__context__
    return False


def _where(host: str, port: int) -> str:
    return host if port == SSH_PORT else f"{host} port {port}"


@contextlib.contextmanager
def map_ssh_errors(host: str, port: int = SSH_PORT, connect_timeout: float | None = None) -> Iterator[None]:
    """Translate failures while connecting to and logging into host into our errors."""
    where = _where(host, port)
    try:
        yield
    except ZcsyncError:
        raise
    except paramiko.AuthenticationException as exc:
        raise StartupError(f"Authentication to {where} failed: {exc}") from exc
    except paramiko.ProxyCommandFailure as exc:
        raise SocketIOError(f"Proxy command for {where} failed: {exc}") from exc
    except paramiko.ChannelException as exc:
        raise SocketIOError(f"Cannot open a channel to {where}: {exc.text}") from exc
    except socket.gaierror as exc:
        raise SocketIOError(f"Could not resolve hostname {host}: {exc.strerror}") from exc
    except TimeoutError as exc:
        limit = f" within {connect_timeout:g} seconds" if connect_timeout else ""
        raise ConnectTimeout(f"{where} did not answer{limit}") from exc
    except paramiko.SSHException as exc:
        if _timed_out(exc):
            limit = f" within {connect_timeout:g} seconds" if connect_timeout else ""
            raise ConnectTimeout(f"SSH handshake with {where} did not finish{limit}") from exc
        raise SocketIOError(f"SSH negotiation with {where} failed: {exc}") from exc
    except EOFError as exc:
        raise SocketIOError(f"{where} closed the connection during SSH negotiation") from exc
    except OSError as exc:
        raise SocketIOError(f"Cannot connect to {where}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def _map_channel_errors(peer: str, timeout: float | None, doing: str) -> Iterator[None]:
    try:
        with map_stream_errors(peer, timeout, doing):
            yield
    except paramiko.SSHException as exc:
        raise StreamError(f"{doing} {peer}: {exc}") from exc


# -- known_hosts -----------------------------------------------------------


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """The name a known_hosts file lists host under: ``host`` or ``[host]:port``."""
    return host if port == SSH_PORT else f"[{host}]:{port}"


@dataclass(frozen=True)
class KnownHostEntry:
    """One usable line of a known_hosts file."""

    file: str
    line: int
    marker: str | None  # None, "@revoked" or "@cert-authority"
    patterns: str
    keytype: str
    blob: bytes

    def matches(self, name: str) -> bool:
        """True when this entry's host patterns (hashed, wildcard, negated) cover name."""
        name = name.lower()
        if self.patterns.startswith("|1|"):
            try:
                _, _, salt64, hash64 = self.patterns.split("|", 3)
                salt, want = base64.b64decode(salt64), base64.b64decode(hash64)
            except ValueError:
                return False
            got = hmac.new(salt, name.encode(), hashlib.sha1).digest()
            return hmac.compare_digest(got, want)
        hit = False
        for pat in self.patterns.split(","):
            negated = pat.startswith("!")
            pat = pat[1:] if negated else pat
            if _glob(pat.lower()).fullmatch(name):
                if negated:
                    return False
                hit = True
        return hit


@functools.lru_cache(maxsize=256)
def _glob(pattern: str) -> re.Pattern[str]:
    """ssh's host patterns: only * and ? are special (``[host]:port`` is literal)."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.DOTALL)


def load_known_hosts(paths: Sequence[str]) -> list[KnownHostEntry]:
    """Read known_hosts files, skipping missing files and lines we can't parse."""
    entries: list[KnownHostEntry] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("Cannot read known hosts file '%s': %s", path, exc.strerror)
            continue
        for lineno, text in enumerate(lines, 1):
            fields = text.split()
            if not fields or fields[0].startswith("#"):
                continue
            marker = None
            if fields[0].startswith("@"):
                marker, fields = fields[0], fields[1:]
            if len(fields) < 3:
                continue
            try:
                blob = base64.b64decode(fields[2], validate=True)
            except ValueError:
                continue
            entries.append(KnownHostEntry(path, lineno, marker, fields[0], fields[1], blob))
    return entries


_ALGOS_FOR_KEYTYPE = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256")}


# -- ssh_config -------------------------------------------------------------


@dataclass
class _Hop:
    """Everything about one host to connect to, after ssh_config."""

    alias: str
    hostname: str
    port: int
    user: str
    cfg: dict = field(repr=False)
    rtt: float | None = None  # TCP connect time, when we connected directly

    def get(self, key: str, default: str | None = None) -> str | None:
        value = self.cfg.get(key, default)
        if isinstance(value, list):
            value = value[0] if value else default
        return value

    def yes(self, key: str) -> bool:
        return (self.get(key) or "").lower() in ("yes", "true")


def _load_config(paths: Sequence[str], chosen: bool) -> paramiko.SSHConfig:
    texts = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as fh:
                texts.append(fh.read())
        except FileNotFoundError:
            if chosen:
                raise StartupError(f"Cannot read ssh config '{path}': No such file or directory") from None
        except OSError as exc:
            raise StartupError(f"Cannot read ssh config '{path}': {exc.strerror}") from exc
    # "First value wins" across files, as in ssh: the user's file comes first.
    try:
        return paramiko.SSHConfig.from_text("\n".join(texts))
    except Exception as exc:  # paramiko raises ConfigParseError and plain exceptions
        raise StartupError(f"Cannot parse ssh config {', '.join(paths)}: {exc}") from exc


def _expand_path(path: str, hop: _Hop) -> str:
    tokens = {
        "%%": "%",
        "%d": os.path.expanduser("~"),
        "%u": getpass.getuser(),
        "%h": hop.hostname,
        "%p": str(hop.port),
        "%r": hop.user,
        "%n": hop.alias,
    }
    out = []
    i = 0
    while i < len(path):
        tok = path[i : i + 2]
        if tok in tokens:
            out.append(tokens[tok])
            i += 2
        else:
            out.append(path[i])
            i += 1
    return os.path.expanduser("".join(out))


def _parse_jump(spec: str) -> tuple[str | None, str, int | None]:
    """Split one ProxyJump element, ``[ssh://][user@]host[:port]``, into its parts."""
    s = spec[6:] if spec.startswith("ssh://") else spec
    user = None
    if "@" in s:
        user, _, s = s.rpartition("@")
    port: int | None = None
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif s.count(":") == 1:
        host, _, p = s.partition(":")
        port = int(p)
    else:
        host = s
    if not host:
        raise ValueError(spec)
    return user, host, port


# -- the stream --------------------------------------------------------------


def _write_stderr(line: bytes) -> None:
    err = sys.stderr
    try:
        err.buffer.write(line)
    except AttributeError:
        err.write(line.decode("utf-8", "replace"))
    err.flush()


class SshStream(BaseStream):
    """A Stream over an SSH exec channel; remote stderr is copied to ours line by line."""

    def __init__(
        self,
        channel: paramiko.Channel,
        resources: list,
        host: str,
        timeout: float | None = None,
        close_wait: float = 5.0,
        stderr_sink: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__(host, timeout)
        self.channel = channel
        self._resources = resources  # transports and proxy processes, outermost first
        self._close_wait = close_wait
        self._sink = stderr_sink or _write_stderr
        self._got_data = False
        self.stderr_head = b""
        channel.settimeout(timeout)
        self._stderr_thread = threading.Thread(target=self._pump_stderr, name=f"ssh-stderr-{host}", daemon=True)
        self._stderr_thread.start()

    @property
    def transport(self) -> paramiko.Transport:
        return self.channel.get_transport()

    def _timeout_changed(self) -> None:
        self.channel.settimeout(self._timeout)

    def _input_waiting(self) -> bool:
        """Is there something to read right now (in the channel's buffer)?"""
        return self.channel.recv_ready()

    def _pump_stderr(self) -> None:
        pending = b""
        while True:
            try:
                data = self.channel.recv_stderr(65536)
            except TimeoutError:
                if self._closed:
                    break
                continue
            except Exception:  # channel torn down under us
                break
            if not data:
                break
            if len(self.stderr_head) < 4096:
                self.stderr_head += data[: 4096 - len(self.stderr_head)]
            pending += data
            *lines, pending = pending.split(b"\n")
            if len(pending) > 65536:  # a flood without newlines: pass it on anyway
                lines.append(pending)
                pending = b""
            for line in lines:
                self._emit(line + b"\n")
        if pending:
            self._emit(pending + b"\n")

    def _emit(self, line: bytes) -> None:
        try:
            self._sink(line)
        except Exception:  # our stderr is gone; the transfer matters more
            log.debug("dropped remote stderr line %r", line[:200])

    def _recv(self, n: int) -> bytes:
        with _map_channel_errors(self.peer, self._timeout, "reading from"):
            # The channel's buffer is a PacketPipe (open_ssh): up to n bytes of whole
            # packets, joined once, and a partial read costs only the packet it splits.
            data = self.channel.recv(n)
        if not data:
            self._check_eof()
            return data
        self._got_data = True
        return data

    def _check_eof(self) -> None:
        """Turn an EOF that means "never started" or "connection lost" into an error."""
        t = self.transport
        if not self._got_data:
            self.channel.status_event.wait(self._close_wait)
            self._stderr_thread.join(1.0)
            if looks_like_not_found(self.exit_status, self.stderr_head):
                raise RemoteNotFound(not_found_message(self.peer))
        if not self.channel.exit_status_ready() and (t is None or not t.is_active()):
            cause = t.get_exception() if t is not None else None
            raise StreamError(f"connection to {self.peer} lost" + (f": {cause}" if cause else ""))

    def _send(self, data: Buffer) -> None:
        # Not channel.sendall: it re-slices the rest of a bytes object after every
        # packet (32 KiB), which copies a 1 MiB frame 16 times over. A memoryview
        # slices for free, and channel.send copies each packet's part once.
        view = memoryview(data).cast("B")
        with _map_channel_errors(self.peer, self._timeout, "writing to"):
            while view:
                sent = self.channel.send(view)
                if not sent:
                    raise StreamError(f"writing to {self.peer}: the channel is closed")
                view = view[sent:]

    def _shutdown_write(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.shutdown_write()

    @property
    def exit_status(self) -> int | None:
        """The remote command's exit status, once the remote reported it."""
        if self.channel.exit_status_ready():
            return self.channel.recv_exit_status()
        return None

    def _close(self) -> None:
        # After an orderly end (we sent EOF or saw theirs) the exit status is
        # on its way; otherwise (an error, a timeout) don't linger for it.
        orderly = self._eof_sent or self.channel.eof_received
        with contextlib.suppress(Exception):
            if not self._eof_sent:
                self.channel.shutdown_write()
            self.channel.status_event.wait(self._close_wait if orderly else min(self._close_wait, 0.2))
        with contextlib.suppress(Exception):
            self.channel.close()
        self._stderr_thread.join(1.0)
        _release(self._resources)


def _release(resources: list) -> None:
    """Close transports and stop proxy commands, innermost hop first."""
    for res in reversed(resources):
        with contextlib.suppress(Exception):
            if isinstance(res, subprocess.Popen):
                res.terminate()
                try:
                    res.wait(2)
                except subprocess.TimeoutExpired:
                    res.kill()
                    res.wait()
            else:
                res.close()
    resources.clear()


# -- connecting ----------------------------------------------------------------


class _Connector:
    """Builds an authenticated paramiko Transport to a host, through proxies and jumps."""

    def __init__(self, options: SshOptions) -> None:
        self.options = options
        paths, chosen = options.config_paths()
        self.config = _load_config(paths, chosen)
        self.tofu = options.tofu_path()
        self.resources: list = []
        self.interactive = sys.stdin is not None and sys.stdin.isatty()

    def hop(self, alias: str, user: str | None, port: int | None) -> _Hop:
        cfg = self.config.lookup(alias)
        hostname = cfg.get("hostname", alias)
        try:
            port = port or int(cfg.get("port", SSH_PORT))
        except ValueError:
            raise StartupError(f"Bad Port in ssh config for {alias}: {cfg.get('port')}") from None
        user = user or cfg.get("user") or getpass.getuser()
        return _Hop(alias, hostname, port, user, cfg)

    def connect_timeout(self, hop: _Hop) -> float | None:
        if self.options.connect_timeout:
            return self.options.connect_timeout
        value = hop.get("connecttimeout")
        try:
            return float(value) if value and value != "none" else None
        except ValueError:
            return None

    def open(self, hop: _Hop, jumps: list[str] | None = None, depth: int = 0) -> paramiko.Transport:
        """Connect to hop, verify its key and log in; jumps overrides its ProxyJump."""
        if depth > MAX_JUMPS:
            raise StartupError(f"Too many ProxyJump hops reaching {hop.hostname} (a loop in ssh config?)")
        timeout = self.connect_timeout(hop)
        with map_ssh_errors(hop.hostname, hop.port, timeout):
            sock = self._socket(hop, jumps, depth, timeout)
            t = paramiko.Transport(
                sock,
                default_window_size=self.options.window_size or DEFAULT_WINDOW_SIZE,
                default_max_packet_size=self.options.max_packet_size,
            )
            self.resources.append(t)
            # paramiko rekeys every 512 MiB, and a channel close that arrives
            # while its own rekey is pending deadlocks the transport thread for
            # 30 s (paramiko issue #822). OpenSSH's limit for 128-bit block
            # ciphers is 2**32 blocks; use that, making the race practically
            # unreachable. (An attribute, not API: paramiko reads it off self.)
            t.packetizer.REKEY_BYTES = REKEY_BYTES
            t.packetizer.REKEY_PACKETS = REKEY_PACKETS
            t.banner_timeout = timeout or 30
            if timeout:
                t.handshake_timeout = t.auth_timeout = timeout
            self._set_preferences(t, hop)
            try:
                t.start_client(timeout=timeout)
            except (paramiko.SSHException, EOFError, OSError):
                self._raise_if_proxy_died(hop)
                raise
            if not t.initial_kex_done:
                # start_client() returns quietly when its timeout expires.
                raise ConnectTimeout(
                    f"SSH handshake with {_where(hop.hostname, hop.port)} did not finish within {timeout:g} seconds"
                )
            self._verify_host_key(t, hop)
            self._authenticate(t, hop)
            alive = hop.get("serveraliveinterval")
            if alive and alive.isdigit() and int(alive) > 0:
                t.set_keepalive(int(alive))
            return t

    def _socket(self, hop: _Hop, jumps: list[str] | None, depth: int, timeout: float | None):
        proxy_cmd = hop.get("proxycommand")
        proxy_jump = hop.get("proxyjump")
        if jumps is None:
            # ssh uses whichever of the two comes first; paramiko can't tell us,
            # so ProxyCommand wins.
            if proxy_cmd and proxy_cmd.lower() != "none":
                return self._proxy_command(proxy_cmd)
            jumps = [j.strip() for j in proxy_jump.split(",")] if proxy_jump and proxy_jump.lower() != "none" else []
        if jumps:
            *before, last = jumps
            try:
                juser, jhost, jport = _parse_jump(last)
            except ValueError:
                raise StartupError(f"Bad ProxyJump '{last}' for {hop.alias}") from None
            jump_hop = self.hop(jhost, juser, jport)
            jt = self.open(jump_hop, before or None, depth + 1)
            chan = jt.open_channel(
                "direct-tcpip", (hop.hostname, hop.port), ("127.0.0.1", 0), timeout=timeout
            )
            return chan
        return self._tcp(hop, timeout)

    def _tcp(self, hop: _Hop, timeout: float | None) -> socket.socket:
        infos = socket.getaddrinfo(hop.hostname, hop.port, self.options.family, type=socket.SOCK_STREAM)
        last: OSError | None = None
        for family, socktype, proto, _, addr in infos:
            sock = socket.socket(family, socktype, proto)
            sock.settimeout(timeout)
            started = time.perf_counter()
            try:
                sock.connect(addr)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            hop.rtt = time.perf_counter() - started  # SYN, SYN-ACK: one round trip
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        assert last is not None
        raise last

    def _proxy_command(self, command: str) -> socket.socket:
        # Like ssh: run it through the user's shell with our stderr, so that its
        # complaints are visible; paramiko.ProxyCommand would swallow them.
        ours, theirs = socket.socketpair()
        shell = os.environ.get("SHELL") or "/bin/sh"
        try:
            proc = subprocess.Popen([shell, "-c", "exec " + command], stdin=theirs, stdout=theirs, close_fds=True)
        except OSError as exc:
            ours.close()
            raise SocketIOError(f"Cannot run ProxyCommand '{command}': {exc.strerror}") from exc
        finally:
            theirs.close()
        self.resources.append(proc)
        return ours

    def _raise_if_proxy_died(self, hop: _Hop) -> None:
        for res in self.resources:
            if isinstance(res, subprocess.Popen):
                try:
                    status = res.wait(0.5)
                except subprocess.TimeoutExpired:
                    continue
                command = res.args[-1].removeprefix("exec ")
                raise SocketIOError(f"ProxyCommand '{command}' for {hop.hostname} exited with status {status}")

    def _known_hosts_files(self, hop: _Hop) -> list[str]:
        if self.options.known_hosts is not None:
            files = list(self.options.known_hosts)
        else:
            user = self.config_list(hop, "userknownhostsfile") or ["~/.ssh/known_hosts", "~/.ssh/known_hosts2"]
            glob = self.config_list(hop, "globalknownhostsfile") or [
                "/etc/ssh/ssh_known_hosts",
                "/etc/ssh/ssh_known_hosts2",
            ]
            files = user + glob
        files.append(self.tofu)
        return [_expand_path(f, hop) for f in files if f.lower() != "none"]

    @staticmethod
    def config_list(hop: _Hop, key: str) -> list[str]:
        value = hop.cfg.get(key)
        if not value:
            return []
        if isinstance(value, list):
            value = " ".join(value)
        return shlex.split(value)

    def _host_key_name(self, hop: _Hop) -> str:
        alias = hop.get("hostkeyalias")
        return alias if alias else known_hosts_name(hop.hostname, hop.port)

    def _set_preferences(self, t: paramiko.Transport, hop: _Hop) -> None:
        sec = t.get_security_options()
        supported = sec.ciphers
        sec.ciphers = tuple(c for c in self.options.ciphers if c in supported) + tuple(
            c for c in supported if c not in self.options.ciphers
        )
        macs = sec.digests
        sec.digests = tuple(m for m in PREFERRED_MACS if m in macs) + tuple(m for m in macs if m not in PREFERRED_MACS)
        # Ask for a host key type we already know, as ssh does; otherwise a host
        # known by its RSA key would look unknown because ed25519 came first.
        name = self._host_key_name(hop)
        entries = load_known_hosts(self._known_hosts_files(hop))
        known = [e.keytype for e in entries if e.marker is None and e.matches(name)]
        first: list[str] = []
        for keytype in known:
            for algo in _ALGOS_FOR_KEYTYPE.get(keytype, (keytype,)):
                if algo in sec.key_types and algo not in first:
                    first.append(algo)
        if first:
            sec.key_types = tuple(first) + tuple(k for k in sec.key_types if k not in first)
        compression = self.options.compression
        if compression is None:
            compression = hop.yes("compression")
        if compression:
            t.use_compression(True)

    def _accept_new(self, hop: _Hop) -> bool:
        if self.options.accept_new:
            return True
        # ssh_config's accept-new (and "no") become our accept-new: new keys are
        # stored in zcsync's file and changed keys are still refused.
        return (hop.get("stricthostkeychecking") or "").lower() in ("accept-new", "no", "off")

    def _verify_host_key(self, t: paramiko.Transport, hop: _Hop) -> None:
        key = t.get_remote_server_key()
        blob = key.asbytes()
        keytype = key.get_name()
        fp = fingerprint(blob)
        name = self._host_key_name(hop)
        entries = [e for e in load_known_hosts(self._known_hosts_files(hop)) if e.matches(name)]
        for e in entries:
            if e.marker == "@revoked" and e.blob == blob:
                raise StartupError(f"Host key for {name} ({keytype} {fp}) is marked @revoked in {e.file}:{e.line}")
        plain = [e for e in entries if e.marker is None]
        if any(e.blob == blob for e in plain):
            return
        if plain:
            same = [e for e in plain if e.keytype == keytype] or plain
            e = same[0]
            raise StartupError(
                f"HOST KEY FOR {name} HAS CHANGED: possible man-in-the-middle attack (or the host was reinstalled). "
                f"The server sent {keytype} {fp}; {e.file}:{e.line} has a different {e.keytype} key. "
                f"If the change is expected, remove the old key (ssh-keygen -R '{name}' -f {e.file}) and connect again"
            )
        if not self._accept_new(hop):
            port = "" if hop.port == SSH_PORT else f"-p {hop.port} "
            raise StartupError(
                f"Host key for {name} is unknown ({keytype} {fp}); check that fingerprint with the host's owner, "
                f"then trust it with `ssh-keyscan {port}{hop.hostname} >> ~/.ssh/known_hosts` "
                f"or run again with --ssh-accept-new"
            )
        self._remember(name, keytype, blob, fp)

    def _remember(self, name: str, keytype: str, blob: bytes, fp: str) -> None:
        path = self.tofu
        line = f"{name} {keytype} {base64.b64encode(blob).decode()}\n"
        try:
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StartupError(f"Cannot write '{path}': {exc.strerror}") from exc
        log.warning("Permanently added %s (%s %s) to %s", name, keytype, fp, path)

    # -- authentication -------------------------------------------------

    def _identity_files(self, hop: _Hop) -> list[tuple[str, bool]]:
        """Identity files to try, each with whether the user named it."""
        named = list(self.options.identity_files) + list(hop.cfg.get("identityfile", []))
        if named:
            return [(_expand_path(p, hop), True) for p in named if p.lower() != "none"]
        return [(os.path.expanduser(p), False) for p in DEFAULT_IDENTITIES]

    def _load_key(self, path: str, named: bool, notes: list[str], batch: bool) -> paramiko.PKey | None:
        if not os.path.exists(path):
            if named:
                notes.append(f"'{path}' does not exist")
            return None
        try:
            return paramiko.PKey.from_path(path)
        except (paramiko.PasswordRequiredException, TypeError):
            # paramiko 3 raises the former; from 4 on, cryptography's TypeError
            # ("password-protected, but password was not provided") comes through.
            pass
        except (paramiko.SSHException, ValueError, OSError) as exc:
            notes.append(f"cannot load '{path}': {exc}")
            return None
        if not self.interactive or batch:
            notes.append(
                f"key '{path}' is encrypted and there is no terminal to ask for its passphrase (add it to ssh-agent)"
            )
            return None
        for _ in range(3):
            passphrase = getpass.getpass(f"Enter passphrase for key '{path}': ")
            if not passphrase:
                break
            try:
                return paramiko.PKey.from_path(path, passphrase)
            except (paramiko.SSHException, ValueError, TypeError):
                continue
        notes.append(f"no valid passphrase for '{path}'")
        return None

    @staticmethod
    def _auth_none(t: paramiko.Transport, user: str) -> list[str]:
        """Ask for "none": the methods the server allows ([] if it let us in)."""
        try:
            t.auth_none(user)
            return []
        except paramiko.BadAuthenticationType as exc:
            return list(exc.allowed_types)
        except paramiko.AuthenticationException:
            return ["publickey"]

    def _authenticate(self, t: paramiko.Transport, hop: _Hop) -> None:
        user = hop.user
        notes: list[str] = []
        batch = hop.yes("batchmode")
        prompts = self.interactive and not batch
        allowed: list[str] | None = None
        # Where we may prompt, "none" first learns whether keys are wanted before we ask
        # for a passphrase. Where we may not (cron, scripts), keys go first: the "none"
        # round trip costs ~10 ms against OpenSSH, and is asked only if no key got in.
        if prompts:
            allowed = self._auth_none(t, user)
            if t.is_authenticated():
                return
        if allowed is None or "publickey" in allowed:
            for key in self._candidate_keys(hop, notes, batch):
                try:
                    t.auth_publickey(user, key)
                except paramiko.BadAuthenticationType as exc:  # keys are not accepted at all
                    allowed = list(exc.allowed_types)
                    break
                except paramiko.AuthenticationException:
                    continue
                except paramiko.SSHException:
                    if t.is_active():
                        raise
                    notes.append("the server hung up (too many authentication failures?)")
                    break
                if t.is_authenticated():
                    return
        if allowed is None:
            allowed = self._auth_none(t, user) if t.is_active() else ["publickey"]
            if t.is_authenticated():
                return
        if prompts and ("password" in allowed or "keyboard-interactive" in allowed):
            for _ in range(3):
                password = getpass.getpass(f"{user}@{hop.hostname}'s password: ")
                try:
                    t.auth_password(user, password)
                except paramiko.AuthenticationException:
                    continue
                if t.is_authenticated():
                    return
        where = _where(hop.hostname, hop.port)
        extra = f"; {'; '.join(notes)}" if notes else ""
        raise StartupError(f"Permission denied for {user}@{where} ({','.join(allowed)}){extra}")

    def _candidate_keys(self, hop: _Hop, notes: list[str], batch: bool) -> Iterator[paramiko.PKey]:
        if self.options.use_agent and not hop.yes("identitiesonly") and os.environ.get("SSH_AUTH_SOCK"):
            try:
                agent = paramiko.Agent()
            except (paramiko.SSHException, OSError) as exc:
                notes.append(f"ssh-agent unreachable: {exc}")
            else:
                try:
                    yield from agent.get_keys()
                finally:
                    agent.close()
        for path, named in self._identity_files(hop):
            key = self._load_key(path, named, notes, batch)
            if key is not None:
                yield key


def auto_window(rtt: float | None) -> int:
    """Channel window for a link with this round-trip time (seconds), in whole MiB."""
    if rtt is None:
        return DEFAULT_WINDOW_SIZE
    mib = 1 << 20
    want = -(-int(rtt * WINDOW_TARGET_RATE) // mib) * mib
    return max(MIN_WINDOW_SIZE, min(MAX_WINDOW_SIZE, want))


def open_ssh(
    endpoint: Endpoint,
    remote_argv: Sequence[str],
    *,
    options: SshOptions = SshOptions(),
    program: str | None = None,
    stderr_sink: Callable[[bytes], None] | None = None,
) -> SshStream:
    """Connect to endpoint's host and run ``program remote_argv...`` there; return the stream.

    remote_argv is shell-quoted (shlex.join); program (--zcsync-path) is put in
    front verbatim. Raises StartupError (5) for host key and login problems,
    SocketIOError (10) for unreachable hosts, ConnectTimeout (35). A remote
    command that is missing shows up as RemoteNotFound (127) from the first read.
    """
    if endpoint.host is None:
        raise ValueError("open_ssh needs a remote endpoint")
    connector = _Connector(options)
    hop = connector.hop(endpoint.host, endpoint.user or options.user, endpoint.port or options.port)
    command = remote_command(remote_argv, program)
    try:
        t = connector.open(hop)
        timeout = connector.connect_timeout(hop)
        with map_ssh_errors(hop.hostname, hop.port, timeout):
            chan = t.open_session(
                window_size=options.window_size or auto_window(hop.rtt),
                max_packet_size=options.max_packet_size,
                timeout=timeout,
            )
            chan.in_buffer = PacketPipe()  # before anything can arrive
            chan.exec_command(command)
    except BaseException:
        _release(connector.resources)
        raise
    log.debug("ssh %s@%s:%d exec %s", hop.user, hop.hostname, hop.port, command)
    return SshStream(
        chan,
        connector.resources,
        endpoint.host,
        timeout=options.timeout,
        close_wait=options.close_wait,
        stderr_sink=stderr_sink,
    )
