"""The client end of a remote transfer: start `zcsync --server` on the other host, or reach a
zcsync daemon (host::module/path), and run our role.

The daemon's connection preamble (its format is in daemon.py's docstring) is coded here,
both directions, so that a client never imports the daemon's server code; daemon.py
imports the codec from here.
"""
from __future__ import annotations

import logging
import os
import pwd
import struct
import time
from collections.abc import Callable
from typing import TextIO
from dataclasses import dataclass

from . import auth, compress, errors
from .endpoints import DEFAULT_DAEMON_PORT, Endpoint, parse_endpoint, valid_module_name
from .engine import RunResult, read_files_from, read_source_xattrs, remote_files_from, source_args
from .errors import (
    FileSelectError,
    ProtocolError,
    RemoteNotFound,
    SocketIOError,
    StartupError,
    StreamError,
    UsageError,
    ZcsyncError,
)
from .filters import FilterRules
from .options import MAX_WIRE_OPTIONS, Options, to_wire
from .protocol import Connection, handshake
from .remote import (
    ListingSide,
    ReceivingSide,
    SendingSide,
    receive_files_from,
    send_files_from,
)
from .sender import Sender
from .stats import Event, Report
from .transport import tcp
from .transport.base import Stream

log = logging.getLogger(__name__)


def split_remote(paths: list[str]) -> tuple[list[Endpoint], Endpoint]:
    """Parse SRC... DST; refuse remote-to-remote and mixed remote sources."""
    *srcs, dst = [parse_endpoint(p) for p in paths]
    remote_srcs = [s for s in srcs if s.is_remote]
    if remote_srcs and dst.is_remote:
        raise UsageError("The source and destination cannot both be remote.")
    if remote_srcs:
        _one_remote(srcs)
    return srcs, dst


def _one_remote(srcs: list[Endpoint]) -> None:
    """Remote sources must all be on one host, as one session reads them all."""
    first = srcs[0]
    if any(not s.is_remote or (s.kind, s.host, s.user, s.port, s.module)
           != (first.kind, first.host, first.user, first.port, first.module) for s in srcs):
        raise UsageError("All remote sources must be on the same host")


def files_from_plan(srcs: list[Endpoint], dst: Endpoint | None, opts: Options) -> tuple[Options, list[bytes] | None]:
    """--files-from in a remote transfer (dst None: a remote listing): the options for the
    server and the names this side sends it (a pull with a local list), if any.

    A local list is read here: a push scans it, a pull sends it to the server sender
    (files_from_peer). A list on the remote side (host:FILE, :FILE) is read by the server
    (files_from_remote), which in a push sends the names back. Its host must be the
    transfer's remote host, as rsync requires.
    """
    if opts.files_from is None:
        return opts, None
    if len(srcs) != 1:
        raise UsageError("--files-from needs exactly one source directory")
    push = dst is not None and dst.is_remote
    remote = dst if push else srcs[0]
    assert remote is not None
    spec = remote_files_from(opts.files_from)
    if spec is None:
        if push:  # the sender here reads the list as it scans
            return opts, None
        return opts.replace(files_from_peer=True), read_files_from(opts)
    if spec.host is not None and (spec.user, spec.host) != (remote.user, remote.host):
        raise UsageError("--files-from hostname is not the same as the transfer hostname")
    return opts.replace(files_from_remote=spec.path), None


def check_listed(names: list[bytes]) -> list[bytes]:
    """The server's --files-from names (a push with host:FILE), checked before our sender reads
    anything: relative names below the source directory only."""
    for name in names:
        if name.startswith(b"/") or b".." in name.split(b"/"):
            raise ProtocolError(f"the server sent an unsafe --files-from name {peer_text(name)!r}")
    return names


DEFAULT_PROGRAM = "zcsync"  # the remote program without --zcsync-path (rsync runs "rsync")


def server_argv(role: str, opts: Options, paths: list[str], listen_timeout: int | None = None) -> list[str]:
    """The arguments of the remote `zcsync --server` (role is the server's); --listen with a timeout.
    The -M/--remote-option words follow the options, for the server's own parser to judge."""
    if "--" in opts.remote_options:
        raise UsageError("-M/--remote-option cannot pass '--' (it would end the remote options)")
    listen = ["--listen", f"--listen-timeout={listen_timeout}"] if listen_timeout is not None else []
    return ["--server", f"--{role}", *listen, f"--options={to_wire(opts, role)}", *opts.remote_options,
            "--", *paths]


def open_remote(endpoint: Endpoint, role: str, opts: Options, paths: list[str]) -> Stream:
    """A stream to the server end in `role`: a zcsync daemon, or `zcsync --server` over ssh / -e
    (with --transport=tcp: started over ssh, spoken to over raw TCP)."""
    if opts.transport not in (None, "tcp"):
        raise UsageError(f"Unknown --transport {opts.transport!r} (the one choice is tcp)")
    if endpoint.kind == "daemon":
        refuse_remote_options(opts, endpoint)
        if opts.transport == "tcp":
            raise UsageError(f"--transport=tcp is for host:path (ssh) locations; {endpoint} is a zcsync "
                             "daemon, which is reached over raw TCP already")
        return open_daemon_stream(endpoint, opts, role, paths)
    if opts.transport == "tcp":
        return open_bootstrapped(endpoint, role, opts, paths)
    return open_stream(endpoint, server_argv(role, opts, paths), opts)


def refuse_remote_options(opts: Options, endpoint: Endpoint) -> None:
    """-M with a daemon: rsync sends the words to the daemon, which takes what its config
    allows; a zcsync daemon's request has no place for them yet, so they are refused."""
    if opts.remote_options:
        raise UsageError(f"-M/--remote-option is not supported with a zcsync daemon ({endpoint}): "
                         "its modules take no options for the server side")


def open_bootstrapped(endpoint: Endpoint, role: str, opts: Options, paths: list[str]) -> Stream:
    """--transport=tcp: start `zcsync --server --listen` over ssh / -e, then connect to it over raw TCP.

    The ssh session stays open until the returned stream is closed, which collects its
    exit status. --contimeout bounds the TCP connect and the key proofs (else
    bootstrap.DEFAULT_ACCEPT_TIMEOUT), and the server waits for us no longer.
    """
    from . import bootstrap
    wait = opts.contimeout or bootstrap.DEFAULT_ACCEPT_TIMEOUT
    wait = min(wait, bootstrap.MAX_ACCEPT_TIMEOUT)
    control = open_stream(endpoint, server_argv(role, opts, paths, listen_timeout=wait), opts)
    try:
        with _translate(control, endpoint):
            return bootstrap.open_data_stream(control, endpoint, opts, float(wait))
    except BaseException:
        control.close()
        raise


def open_stream(endpoint: Endpoint, argv: list[str], opts: Options) -> Stream:
    """Start the remote end over ssh (paramiko) or the -e command: --zcsync-path, else the
    zcsync on the remote PATH."""
    program = opts.zcsync_path or DEFAULT_PROGRAM
    rsh = opts.rsh or os.environ.get("ZCSYNC_RSH")
    if rsh:
        from .transport.rsh import open_rsh
        return open_rsh(rsh, endpoint, argv, program=program,
                        timeout=float(opts.timeout) if opts.timeout else None, ip_version=opts.ip_version)
    from .transport.ssh import SshOptions, open_ssh
    ssh_opts = SshOptions(accept_new=opts.ssh_accept_new,
                          connect_timeout=float(opts.contimeout) if opts.contimeout else None,
                          timeout=float(opts.timeout) if opts.timeout else None,
                          family=tcp.family_of(opts.ip_version))
    return open_ssh(endpoint, argv, options=ssh_opts, program=program)


def client_caps(opts: Options) -> dict[str, str]:
    """Our HELLO capabilities: the codecs we offer for -z / --compress-choice, best first."""
    return {"compress": ",".join(compress.offer(opts.compress, opts.compress_choice)) or "none"}


def run_remote(paths: list[str], opts: Options, on_event: Callable[[Event], None] | None = None) -> RunResult:
    """Push (remote DST) or pull (remote SRC) over a stream to `zcsync --server`."""
    started = time.monotonic()
    srcs, dst = split_remote(paths)
    opts, names = files_from_plan(srcs, dst, opts)
    report = Report(on_event=on_event)
    # Only if something here shows them (a display, a log, progress) does the server send one Item per file.
    opts = opts.replace(want_items=report.on_event is not None)
    filters = FilterRules.parse(opts.filter_rules, delete_excluded=opts.delete_excluded)
    if dst.is_remote:
        def push(conn: Connection) -> None:
            listed = None
            if opts.files_from_remote is not None:  # the server reads its list file and sends the names
                listed = receive_files_from(conn, report)
                if listed is None:  # it could not (its message is logged, its code is ours)
                    return
                check_listed(listed)
            sender = Sender(source_args([s.path for s in srcs], opts, listed), opts, filters,
                            read_xattrs=read_source_xattrs(opts), on_problem=report.problem,
                            on_notice=report.notice)
            SendingSide(conn, sender, opts, report).run()
        _session(dst, "receiver", opts, [dst.path or "."], report, push)
    else:
        def pull(conn: Connection) -> None:
            if names is not None:
                send_files_from(conn, names)
            side = ReceivingSide(conn, dst.path, opts, report, filters)
            try:
                side.run()
            finally:
                side.close()
        _session(srcs[0], "sender", opts, [s.path or "." for s in srcs], report, pull)
    report.stats.elapsed_s = time.monotonic() - started
    return RunResult(report.exit_code, report, report.problems)


def list_remote(endpoint: Endpoint, opts: Options, out: TextIO,
                on_event: Callable[[Event], None] | None = None) -> RunResult:
    """`zcsync host:path` (one remote operand): rsync's listing of the remote tree."""
    return _list_remote([endpoint], opts, out, on_event)


def list_remote_sources(sources: list[str], opts: Options, out: TextIO,
                        on_event: Callable[[Event], None] | None = None) -> RunResult:
    """`zcsync --list-only host:src/ DST`: the remote sources listed as one operand lists them;
    DST is ignored (nothing is transferred or created), as rsync does."""
    srcs = [parse_endpoint(p) for p in sources]
    _one_remote(srcs)
    return _list_remote(srcs, opts, out, on_event)


def _list_remote(srcs: list[Endpoint], opts: Options, out: TextIO,
                 on_event: Callable[[Event], None] | None) -> RunResult:
    started = time.monotonic()
    report = Report(on_event=on_event)
    show_links = opts.links
    opts, names = files_from_plan(srcs, None, opts)
    # As the local listing: directories shown (not entered without -r), every type listed.
    opts = opts.replace(dirs=opts.dirs or not opts.recursive, links=True, devices=True, specials=True,
                        want_items=False)

    def listing(conn: Connection) -> None:
        if names is not None:
            send_files_from(conn, names)
        ListingSide(conn, out, report, show_links, opts.human_readable, opts.delete_missing_args).run()
    _session(srcs[0], "sender", opts, [s.path or "." for s in srcs], report, listing)
    report.stats.elapsed_s = time.monotonic() - started
    return RunResult(report.exit_code, report, report.problems)


def _session(endpoint: Endpoint, role: str, opts: Options, paths: list[str], report: Report,
             run: Callable[[Connection], None]) -> None:
    """Start the remote end in `role` on paths, shake hands, and run our end with run(conn)."""
    caps = client_caps(opts)  # a codec missing here is an error before anything starts
    stream = open_remote(endpoint, role, opts, paths)
    conn = Connection(stream, side="sender" if role == "receiver" else "receiver", peer=endpoint.host or "peer")
    conn.set_bwlimit(opts.bwlimit)
    try:
        with _translate(stream, endpoint):
            negotiated = handshake(conn, "client", caps)
            if caps["compress"] != "none" and negotiated.compress == "none":
                log.warning("%s supports none of the compressions offered (%s): sending uncompressed",
                            endpoint.host or "the server", caps["compress"])
            elif opts.compress_level is not None and negotiated.compress != "none":
                conn.set_codec(compress.get_codec(negotiated.compress, opts.compress_level))
            run(conn)
    finally:
        report.stats.bytes_sent = conn.bytes_sent
        report.stats.bytes_received = conn.bytes_received
        stream.close()


class _translate:
    """A stream that ends early: say why (remote program missing, ssh's own exit status)."""

    def __init__(self, stream: Stream, endpoint: Endpoint) -> None:
        self.stream = stream
        self.endpoint = endpoint

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:  # type: ignore[no-untyped-def]
        if exc is None or not isinstance(exc, StreamError) or isinstance(exc, RemoteNotFound):
            return False
        try:
            self.stream.close()
        except ZcsyncError:
            pass
        status = self.stream.exit_status
        if status == errors.REMOTE_NOT_FOUND:
            raise RemoteNotFound(f"zcsync not found on {self.endpoint.host} "
                                 "(install it there or pass --zcsync-path)") from exc
        if status == 255:
            raise _SshFailed(f"ssh to {self.endpoint.host} failed (exit 255)") from exc
        return False


class _SshFailed(ZcsyncError):
    """{detail}"""

    exit_code = 255


# -- a zcsync daemon (host::module/path) ---------------------------------------------
#
# The connection preamble described in daemon.py's docstring. The daemon's side of it
# is in daemon.py; the codec is here, with the client's side, for both of them.

MAGIC = b"ZCSYNCD\x01"
KIND_LIST, KIND_TRANSFER = 1, 2
_ROLE_CODES = {"sender": 1, "receiver": 2}
_ROLE_NAMES = {v: k for k, v in _ROLE_CODES.items()}
R_OK, R_AUTH, R_LIST, R_ERROR = 0, 1, 2, 3

MAX_REQUEST = 256 * 1024
MAX_PATHS = 256
MAX_PATH = 4096
MAX_MESSAGE = 1024
MAX_LISTED = 4096
MAX_COMMENT = 1024
PREAMBLE_TIMEOUT = 60.0  # client side, while the daemon greets, throttles and answers

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")

_ERROR_CLASSES: dict[int, type[ZcsyncError]] = {
    errors.USAGE: UsageError, errors.PROTOCOL: ProtocolError, errors.FILE_SELECT: FileSelectError,
    errors.STARTUP: StartupError, errors.SOCKET_IO: SocketIOError, errors.STREAM: StreamError,
}


# -- the preamble codec (both sides) ---------------------------------------------

@dataclass(frozen=True)
class DaemonRequest:
    """What the client asks for, sent once after the greeting."""

    kind: int
    module: str = ""
    user: str = ""
    role: str | None = None  # the server's role: "sender" (pull) or "receiver" (push)
    options: str = ""
    paths: tuple[bytes, ...] = ()
    client_nonce: bytes = b"\0" * auth.NONCE_SIZE

    def encode(self) -> bytes:
        """The body (after MAGIC and its length), exactly as the proofs digest it."""
        module, user, options = self.module.encode("ascii"), self.user.encode("ascii"), self.options.encode()
        parts = [_U8.pack(self.kind), _U8.pack(len(module)), module, _U8.pack(len(user)), user,
                 _U8.pack(_ROLE_CODES.get(self.role or "", 0)), _U32.pack(len(options)), options,
                 _U16.pack(len(self.paths))]
        for path in self.paths:
            parts += [_U16.pack(len(path)), path]
        parts.append(self.client_nonce)
        body = b"".join(parts)
        if len(body) > MAX_REQUEST:
            raise UsageError("too many or too long paths for one daemon request")
        return body

    @classmethod
    def decode(cls, body: bytes) -> DaemonRequest:
        """Parse and check an untrusted request body; raises ProtocolError."""
        r = _Reader(body)
        kind = r.u8()
        if kind not in (KIND_LIST, KIND_TRANSFER):
            raise ProtocolError(f"unknown request kind {kind}")
        module = r.text(r.u8(), "module name")
        user = r.text(r.u8(), "user name")
        role_code = r.u8()
        options_len = r.u32()
        if options_len > MAX_WIRE_OPTIONS:
            raise ProtocolError("options are too long")
        try:
            options = r.take(options_len).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("options are not UTF-8") from None
        count = r.u16()
        if count > MAX_PATHS:
            raise ProtocolError(f"too many paths ({count}, limit {MAX_PATHS})")
        paths = []
        for _ in range(count):
            n = r.u16()
            if n > MAX_PATH:
                raise ProtocolError("a path is too long")
            path = r.take(n)
            if b"\0" in path:
                raise ProtocolError("a path contains NUL")
            paths.append(path)
        nonce = r.take(auth.NONCE_SIZE)
        r.finish()
        if kind == KIND_TRANSFER:
            if not valid_module_name(module):
                raise ProtocolError(f"bad module name {module!r}")
            if role_code not in _ROLE_NAMES or not paths:
                raise ProtocolError("a transfer request needs a role and at least one path")
        if ":" in user:
            raise ProtocolError("bad user name")
        return cls(kind, module, user, _ROLE_NAMES.get(role_code), options, tuple(paths), nonce)


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise ProtocolError("truncated daemon request")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(_U16.unpack(self.take(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def text(self, n: int, what: str) -> str:
        raw = self.take(n)
        if any(not 0x20 <= b < 0x7f for b in raw):
            raise ProtocolError(f"bad {what}: only printable ASCII is allowed")
        return raw.decode("ascii")

    def finish(self) -> None:
        if self.pos != len(self.buf):
            raise ProtocolError("trailing bytes in daemon request")


def peer_text(raw: bytes) -> str:
    """Peer text for display: printable ASCII kept, everything else escaped as rsync does."""
    return "".join(chr(b) if 0x20 <= b < 0x7f else f"\\#{b:03o}" for b in raw)


def read_exact(stream: Stream, n: int, what: str) -> bytes:
    """n bytes of the preamble; PreambleClosed if the peer closes first."""
    data = stream.read(n)
    if len(data) != n:
        raise PreambleClosed(what)
    return data


class PreambleClosed(Exception):
    """The other side closed the connection during the preamble."""


# -- the client ---------------------------------------------------------------

def _port(endpoint: Endpoint, opts: Options) -> int:
    # --port only changes the default port (rsync: "specify double-colon alternate port").
    if opts.port and (endpoint.port in (None, DEFAULT_DAEMON_PORT)):
        return opts.port
    return endpoint.port or DEFAULT_DAEMON_PORT


def _default_user() -> str:
    # What getpass.getuser() does, without importing getpass (and termios) for it.
    for var in ("USER", "LOGNAME", "LNAME", "USERNAME"):
        value = os.environ.get(var)
        if value:
            return value
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return "nobody"


def _raise_daemon_error(stream: Stream, where: str) -> None:
    code = read_exact(stream, 1, "an error")[0]
    (n,) = _U16.unpack(read_exact(stream, 2, "an error"))
    if n > MAX_MESSAGE:
        raise ProtocolError(f"{where} sent an over-long error message")
    text = peer_text(read_exact(stream, n, "an error"))
    cls = _ERROR_CLASSES.get(code)
    if cls is not None:
        raise cls(f"@ERROR: {text}")
    exc = StartupError(f"@ERROR: {text}")
    exc.exit_code = code if 0 < code < 256 else errors.STARTUP  # keep the daemon's code
    raise exc


def _connect(endpoint: Endpoint, opts: Options) -> tuple[tcp.SocketStream, str]:
    """Connect to the daemon; returns (stream, "host:port"). Its greeting is read by _read_greeting."""
    if not endpoint.host:
        raise UsageError("a daemon location needs a host name")
    port = _port(endpoint, opts)
    stream = tcp.connect(endpoint.host, port,
                         connect_timeout=float(opts.contimeout) if opts.contimeout else None,
                         timeout=float(opts.timeout) if opts.timeout else PREAMBLE_TIMEOUT,
                         family=tcp.family_of(opts.ip_version), bind=opts.address)
    return stream, f"{endpoint.host}:{port}"


def _read_greeting(stream: Stream, where: str) -> bytes:
    """Read the daemon's greeting; returns the server nonce. The caller closes the stream on error."""
    try:
        head = stream.read(len(MAGIC))
        if head != MAGIC:
            if not head:
                raise StartupError(f"{where} closed the connection before greeting us")
            if head.startswith(b"@RSYNCD"):
                raise StartupError(f"{where} is an rsync daemon, not a zcsync daemon (use rsync for it)")
            raise StartupError(f"{where} is not a zcsync daemon (it sent {peer_text(head)!r})")
        status = read_exact(stream, 1, "the greeting")[0]
        if status == R_ERROR:
            _raise_daemon_error(stream, where)
        if status != R_OK:
            raise ProtocolError(f"{where} sent an unknown greeting status {status}")
        return read_exact(stream, auth.NONCE_SIZE, "the greeting")
    except PreambleClosed:
        raise StartupError(f"{where} closed the connection during its greeting") from None


def _send_request(stream: Stream, request: DaemonRequest) -> bytes:
    body = request.encode()
    stream.write(MAGIC + _U32.pack(len(body)) + body)
    return body


def open_daemon_stream(endpoint: Endpoint, opts: Options, role: str, paths: list[str],
                       password: bytes | str | None = None) -> Stream:
    """Connect to ``zcsync daemon``, select the module and authenticate; return the Stream.

    ``role`` is what the server will be ("sender" for a pull, "receiver" for a push);
    ``paths`` are relative to the module. The password is ``password``, else
    ``--password-file``, else ``$ZCSYNC_PASSWORD``, read only if the module asks for one.
    The protocol handshake (protocol.handshake) then runs on the stream as over ssh.
    """
    if role not in _ROLE_CODES:
        raise ValueError("role must be 'sender' or 'receiver'")
    if not endpoint.module:
        raise UsageError(f"{endpoint}: no module named (use 'zcsync {endpoint.host}::' to list them)")
    if not valid_module_name(endpoint.module):
        raise UsageError(f"Bad module name {endpoint.module!r} (printable ASCII, no '/' or ']')")
    user = endpoint.user or _default_user()
    if not (len(user) <= 255 and all(0x20 < ord(c) < 0x7f for c in user) and ":" not in user):
        raise UsageError(f"Bad daemon user name {user!r} (printable ASCII without ':' or blanks)")
    stream, where = _connect(endpoint, opts)
    try:
        # Made while the daemon starts our session (it forks one before it greets us).
        request = DaemonRequest(KIND_TRANSFER, endpoint.module, user, role, to_wire(opts, role),
                                tuple(os.fsencode(p or ".") for p in paths), auth.new_nonce())
        server_nonce = _read_greeting(stream, where)
        body = _send_request(stream, request)
        reply = read_exact(stream, 1, "the reply")[0]
        proof_expected = None
        if reply == R_AUTH:
            secret = password if password is not None else auth.client_password(opts.password_file)
            if secret is None:
                raise StartupError(f"@ERROR: module {endpoint.module!r} on {where} needs a password: "
                                   "give --password-file=FILE or set ZCSYNC_PASSWORD")
            secret_b = secret.encode() if isinstance(secret, str) else secret
            digest = auth.request_digest(body)
            args = (server_nonce, request.client_nonce, request.module.encode(), user.encode(), digest)
            stream.write(auth.client_proof(secret_b, *args))
            proof_expected = auth.server_proof(secret_b, *args)
            reply = read_exact(stream, 1, "the reply")[0]
        if reply == R_ERROR:
            _raise_daemon_error(stream, where)
        if reply != R_OK:
            raise ProtocolError(f"{where} sent an unexpected reply {reply}")
        if proof_expected is not None:
            proof = read_exact(stream, auth.PROOF_SIZE, "the daemon's proof")
            if not auth.proofs_equal(proof_expected, proof):
                raise StartupError(f"{where} could not prove that it knows the password of {user!r} "
                                   f"for module {endpoint.module!r}: is it the daemon you meant?")
        stream.timeout = float(opts.timeout) if opts.timeout else None
        return stream
    except PreambleClosed:
        stream.close()
        raise StartupError(f"{where} closed the connection before the transfer started") from None
    except BaseException:
        stream.close()
        raise


def list_modules(endpoint: Endpoint, opts: Options) -> list[tuple[str, str]]:
    """The daemon's listable modules as (name, comment), for ``zcsync host::``."""
    refuse_remote_options(opts, endpoint)
    stream, where = _connect(endpoint, opts)
    try:
        _read_greeting(stream, where)
        _send_request(stream, DaemonRequest(KIND_LIST, client_nonce=auth.new_nonce()))
        reply = read_exact(stream, 1, "the module list")[0]
        if reply == R_ERROR:
            _raise_daemon_error(stream, where)
        if reply != R_LIST:
            raise ProtocolError(f"{where} sent an unexpected reply {reply} to a module listing")
        (count,) = _U16.unpack(read_exact(stream, 2, "the module list"))
        if count > MAX_LISTED:
            raise ProtocolError(f"{where} listed too many modules ({count})")
        out = []
        for _ in range(count):
            name = peer_text(read_exact(stream, read_exact(stream, 1, "the module list")[0], "a module name"))
            (n,) = _U16.unpack(read_exact(stream, 2, "the module list"))
            if n > MAX_COMMENT:
                raise ProtocolError(f"{where} sent an over-long module comment")
            out.append((name, peer_text(read_exact(stream, n, "a comment"))))
        return out
    except PreambleClosed:
        raise StartupError(f"{where} closed the connection while listing modules") from None
    finally:
        stream.close()


def format_module_list(modules: list[tuple[str, str]]) -> str:
    """The listing as rsync prints it: name padded to 15, a tab, the comment."""
    return "".join(f"{name:<15}\t{comment}\n" for name, comment in modules)
