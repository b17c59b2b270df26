"""`zcsync daemon`: serve modules over raw TCP to clients that name `host::module/path`.

Connection preamble (version 1; all numbers big-endian; every field is bounded and
checked on receipt; nothing the client sends reaches the filesystem before it has
authenticated):

    server -> client  GREETING  "ZCSYNCD\\x01", u8 status
                                  0: 32-byte server nonce
                                  3: u8 exit code, u16 len, text (refused, e.g. max connections)
    client -> server  REQUEST   "ZCSYNCD\\x01", u32 len (<= 256 KiB), body:
                                  u8 kind (1 list modules, 2 transfer)
                                  u8 len, module (printable ASCII, no '/', <= 255)
                                  u8 len, user (printable ASCII, no ':', <= 255)
                                  u8 role (the server's: 0 none, 1 sender, 2 receiver)
                                  u32 len, options (JSON, options.to_wire, <= 64 KiB)
                                  u16 count (<= 256), count x (u16 len, path <= 4096, no NUL)
                                  32-byte client nonce
    server -> client  REPLY     u8 code
                                  0 OK      [+ 32-byte server proof if the client authenticated]
                                  1 AUTH    the client sends a 32-byte proof, then gets OK or ERROR
                                  2 LIST    u16 count, count x (u8 len, name, u16 len, comment)
                                  3 ERROR   u8 exit code, u16 len (<= 1024), text

After OK both sides run the ordinary zcsync protocol (docs/protocol.md) on the socket,
exactly as over ssh, with the module directory as the only root. Proofs: see auth.py.
The preamble's codec and the client's end are in connect.py, so that a client never
imports this module (the server's code costs a client's start-up ~10 ms).

The daemon is one process that accepts connections and forks one child per
connection. The parent never touches a client's bytes except to refuse one when the
daemon-wide ``max connections`` is reached; it enforces the absolute pre-auth deadline
(a child that has not authenticated by then is killed, whatever it is blocked in),
keeps the per-address failure counts for throttling, and re-reads the config on SIGHUP.
Per-module connection limits are byte-range locks on one shared file (as rsync's
``lock file``), so they free themselves when a child dies.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import errno
import fcntl
import grp
import hmac  # noqa: F401 - auth's proofs need it (and OpenSSL): loaded once here, not in each session's child
import logging
import logging.handlers
import os
import pwd
import selectors
import signal
import socket
import stat
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import auth, errors

# The preamble's codec, and the client's end (format_module_list, list_modules,
# open_daemon_stream, MAX_PATHS, KIND_TRANSFER), importable from here as before they
# moved to connect.py so that a client does not import this module.
from .connect import (  # noqa: F401
    KIND_LIST,
    KIND_TRANSFER,
    MAGIC,
    MAX_COMMENT,
    MAX_LISTED,
    MAX_MESSAGE,
    MAX_PATHS,
    MAX_REQUEST,
    R_AUTH,
    R_ERROR,
    R_LIST,
    R_OK,
    DaemonRequest,
    PreambleClosed,
    format_module_list,
    list_modules,
    open_daemon_stream,
    peer_text,
    read_exact,
)
from .daemon_config import (
    ConfigError,
    DaemonConfig,
    Module,
    host_allowed,
    load_config,
    with_overrides,
)
from .endpoints import DEFAULT_DAEMON_PORT
from .engine import glob_sources, read_list_file, read_source_xattrs
from .errors import (
    FileProblem,
    FileSelectError,
    ProtocolError,
    SocketIOError,
    StartupError,
    UsageError,
    ZcsyncError,
)
from .filters import FilterRules
from .flist import DirBatch
from .options import Options, from_wire
from .pathnames import escape
from .protocol import Connection, FlistBatch
from .remote import MAX_FILES_FROM
from .sender import Sender
from .server import PATH_OPTIONS, Job, serve_job
from .stats import Report
from .transport import tcp
from .transport.base import Stream

log = logging.getLogger("zcsync.daemon")

DEFAULT_CONFIG = "/etc/zcsyncd.conf"

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


# -- the preamble, the daemon's side -------------------------------------------

def _error_record(code: int, text: str) -> bytes:
    data = text.encode("utf-8", "replace")[:MAX_MESSAGE]
    return _U8.pack(code) + _U16.pack(len(data)) + data


# -- path safety inside a module ---------------------------------------------------

_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "armv7l": 437, "ppc64le": 437, "s390x": 437,
                "riscv64": 437}.get(os.uname().machine)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_libc: ctypes.CDLL | None = None


def _openat2_beneath(root_fd: int, path: bytes) -> int:
    """openat2(RESOLVE_BENEATH) as O_PATH; returns 0 if it resolves inside root, else an errno."""
    global _libc
    if _SYS_OPENAT2 is None:
        return errno.ENOSYS
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    how = struct.pack("=QQQ", os.O_PATH | os.O_CLOEXEC, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    buf = ctypes.create_string_buffer(how, len(how))
    fd = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(root_fd), ctypes.c_char_p(path), buf,
                       ctypes.c_size_t(len(how)))
    if fd < 0:
        return ctypes.get_errno()
    os.close(fd)
    return 0


def _walk_nofollow(root_fd: int, path: bytes) -> int:
    """Fallback without openat2: any symlink on the way counts as an escape (strict)."""
    fd = os.dup(root_fd)
    try:
        for part in path.split(b"/"):
            try:
                nfd = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                return exc.errno or errno.EIO
            os.close(fd)
            fd = nfd
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                return errno.EXDEV
        return 0
    finally:
        os.close(fd)


def _resolves_beneath(root_fd: int, path: bytes) -> int:
    result = _openat2_beneath(root_fd, path)
    if result in (errno.ENOSYS, errno.EPERM):  # no openat2 here (old kernel, seccomp)
        result = _walk_nofollow(root_fd, path)
    return result


def _lexical_parts(raw: bytes, what: str) -> list[bytes]:
    """The components of a client path, refusing absolute paths and '..'."""
    if raw.startswith(b"/"):
        raise FileSelectError(f"absolute path {escape(raw)!r} refused: {what} paths are relative to the module")
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise FileSelectError(f"path {escape(raw)!r} refused: '..' is not allowed in a module")
    return parts


def check_in_module(root_fd: int, raw: bytes, module_name: str) -> bytes:
    """Refuse a client path that is absolute, uses '..', or leads out of the module through a symlink.

    Returns the path as the engine should get it (relative to the module root, which
    is the working directory). The deepest existing part is resolved beneath the root
    fd (openat2 RESOLVE_BENEATH): symlinks inside the module may point anywhere inside it.
    """
    parts = _lexical_parts(raw, "module")
    while parts:
        result = _resolves_beneath(root_fd, b"/".join(parts))
        if result in (errno.EXDEV, errno.ELOOP):
            raise FileSelectError(f"path {escape(raw)!r} refused: it leads out of module {module_name!r}")
        if result not in (errno.ENOENT, errno.ENOTDIR):
            break  # resolves inside, or fails for a reason the transfer itself will report
        parts.pop()
    return raw or b"."


def _module_relative(path: bytes) -> bytes:
    norm = os.path.normpath(path)
    return b"" if norm == b"." else norm


def _join(root: bytes, name: bytes) -> bytes:
    if name == b".":
        return root or b"."
    return root + b"/" + name if root else name


def _under(name: bytes, dropped: set[bytes]) -> bool:
    while name:
        if name in dropped:
            return True
        name = name.rpartition(b"/")[0]
    return False


class ModuleFilter:
    """The module's ``exclude`` patterns, matched on module-relative names (as rsync's daemon does)."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = patterns
        self.rules = FilterRules.parse([f"- {p}" for p in patterns]) if patterns else None

    def __bool__(self) -> bool:
        return self.rules is not None

    def excluded(self, rel: bytes, is_dir: bool, parents: bool = True) -> bool:
        """Is the module-relative name rel, or (with parents) any directory above it, excluded?"""
        if self.rules is None or rel in (b"", b"."):
            return False
        if self.rules.excluded(rel, is_dir):
            return True
        if not parents:
            return False
        parent = rel.rpartition(b"/")[0]
        while parent:
            if self.rules.excluded(parent, True):
                return True
            parent = parent.rpartition(b"/")[0]
        return False

    def client_rules(self, dest_rel: bytes | None) -> list[str]:
        """Rules put before the client's: hide (sender) and protect (receiver) what the module excludes.

        They save scanning excluded directories and keep --delete off excluded names;
        the module-relative check (excluded()) stays the authority for what is sent or
        accepted. An anchored pattern is rewritten relative to the destination when it
        lies below it; one that cannot be rewritten protects nothing (see README gaps).
        """
        out = []
        for pattern in self.patterns:
            body = pattern.rstrip("/")
            if pattern.startswith("/"):
                if dest_rel is None:
                    continue
                prefix = os.fsdecode(dest_rel)
                if not prefix:
                    rel = pattern
                elif body.startswith("/" + prefix + "/"):
                    rel = pattern[len(prefix) + 1:]
                else:
                    continue
            elif "/" in body or "**" in body:
                continue
            else:
                rel = pattern
            out += [f"H {rel}", f"P {rel}"]
        return out


class _ModuleSender(Sender):
    """A Sender that leaves out what the module excludes (by module-relative name)."""

    def __init__(self, sources, opts: Options, filters: FilterRules, module_filter: ModuleFilter,
                 read_xattrs: Callable[[bytes], dict[bytes, bytes]] | None,
                 on_problem: Callable[[FileProblem], None], on_notice: Callable[[str], None]) -> None:
        super().__init__(sources, opts, filters, read_xattrs=read_xattrs, on_problem=on_problem,
                         on_notice=on_notice)
        self.module_filter = module_filter
        self.scanner.hidden = lambda path: module_filter.excluded(_module_relative(path), True) or \
            module_filter.excluded(_module_relative(path), False)

    def scan(self) -> Iterator[DirBatch]:
        dropped: set[bytes] = set()
        for batch in super().scan():
            if batch.dir_name is not None and _under(batch.dir_name, dropped):
                continue
            keep = []
            top = batch.dir_name is None  # inside a listed directory the parents were checked already
            for entry in batch.entries:
                # (A missing operand names only what the client asked for and found missing.)
                if not entry.is_missing and \
                        self.module_filter.excluded(_module_relative(self.path(entry)), entry.is_dir, parents=top):
                    if entry.is_dir:
                        dropped.add(entry.name)
                    continue
                keep.append(entry)
            yield DirBatch(batch.dir_name, tuple(keep), batch.expanded - dropped)


class _ModuleConnection(Connection):
    """A Connection that drops incoming file-list entries the module excludes (push into a module)."""

    incoming: Callable[[FlistBatch], FlistBatch | None] | None = None

    def recv(self, raw_data: bool = False):  # type: ignore[no-untyped-def]
        while True:
            msg = super().recv(raw_data)
            if self.incoming is not None and isinstance(msg, FlistBatch):
                msg = self.incoming(msg)
                if msg is None:
                    continue
            return msg


def _incoming_filter(dest_rel: bytes, module_filter: ModuleFilter,
                     report: Report) -> Callable[[FlistBatch], FlistBatch | None]:
    dropped: set[bytes] = set()

    def check(msg: FlistBatch) -> FlistBatch | None:
        if msg.dir_name is not None and _under(msg.dir_name, dropped):
            return None
        keep, extras = [], []
        top = msg.dir_name is None
        for i, entry in enumerate(msg.entries):
            if module_filter.excluded(_module_relative(_join(dest_rel, entry.name)), entry.is_dir, parents=top):
                kind = "directory" if entry.is_dir else "file"
                if entry.is_dir:
                    dropped.add(entry.name)
                report.problem(FileProblem(escape(entry.name),
                                           f'ERROR: daemon refused to receive {kind} "{escape(entry.name)}"'))
                continue
            keep.append(entry)
            extras.append(msg.extras_of(i))
        if len(keep) == len(msg.entries):
            return msg
        return dataclasses.replace(msg, entries=tuple(keep), extras=tuple(extras) if msg.extras else (),
                                   expanded=msg.expanded - dropped)
    return check


# -- the daemon's side of one connection ----------------------------------------------

class _Refuse(Exception):
    """Answer the client with an ERROR record and end the session."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _PreAuthTimeout(BaseException):
    """The absolute pre-auth deadline passed (raised from SIGALRM)."""


class ModuleSlots:
    """Per-module connection limits as byte-range locks on one file shared by every child."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def take(self, module: Module) -> bool:
        """Lock one of the module's slots for the life of this process; False if all are taken."""
        if not module.max_connections:
            return True
        base = zlib.crc32(module.name.encode()) << 20
        for slot in range(module.max_connections):
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, base + slot, os.SEEK_SET)
                return True
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
        return False


@dataclass
class ConnectionContext:
    """What the parent hands a child for one connection."""

    config: DaemonConfig
    slots: ModuleSlots
    throttle_delay: float = 0.0
    notify: Callable[[bytes], None] = lambda _: None


def _names(spec: str | None, default: str, lookup: Callable[[str], int]) -> int:
    value = spec if spec is not None else default
    if value.isdigit():
        return int(value)
    return lookup(value)


def _drop_privileges(module: Module) -> None:
    """As root: become the module's uid/gid (rsync's default: nobody)."""
    if os.geteuid() != 0:
        return
    try:
        uid = _names(module.uid, "nobody", lambda n: pwd.getpwnam(n).pw_uid)
        default_group = "nogroup"
        try:
            grp.getgrnam(default_group)
        except KeyError:
            default_group = "nobody"
        gid = _names(module.gid, default_group, lambda n: grp.getgrnam(n).gr_gid)
    except KeyError as exc:
        log.error("module %s: unknown user or group %s", module.name, exc)
        raise _Refuse(errors.STARTUP, "invalid uid/gid setting for this module") from None
    if uid == 0 and gid == 0:
        return
    os.setgroups([gid])
    os.setgid(gid)
    if uid != 0:
        os.setuid(uid)


class Session:
    """One client connection, in its own process: greeting, request, auth, then the transfer."""

    def __init__(self, stream: tcp.SocketStream, addr: str, ctx: ConnectionContext) -> None:
        self.stream = stream
        self.addr = addr
        self.ctx = ctx
        self.config = ctx.config

    def run(self) -> int:
        try:
            return self._run()
        except _Refuse as exc:
            self._refuse(exc.code, exc.message)
            return exc.code
        except ProtocolError as exc:
            log.warning("protocol error from %s: %s", self.addr, exc.detail)
            self._refuse(errors.PROTOCOL, exc.detail)
            return errors.PROTOCOL
        except PreambleClosed:
            log.info("%s closed the connection during the preamble", self.addr)
            return errors.STREAM
        except _PreAuthTimeout:
            log.warning("%s did not authenticate within %g seconds: connection dropped",
                        self.addr, self.config.auth_timeout)
            return errors.TIMEOUT
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.stream.close()

    def _refuse(self, code: int, message: str) -> None:
        """Send an ERROR record and close gently: bytes the client sent meanwhile (a proof, a
        HELLO) are read and dropped, so that our close is not a reset that loses the message."""
        signal.setitimer(signal.ITIMER_REAL, 0)
        self._send(bytes([R_ERROR]) + _error_record(code, message))
        sock = self.stream.sock
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(1.0)
            until, drained = time.monotonic() + 1.0, 0
            while time.monotonic() < until and drained < (1 << 20):
                data = sock.recv(65536)
                if not data:
                    break
                drained += len(data)
        except OSError:
            pass

    def _send(self, data: bytes) -> None:
        try:
            self.stream.write(data)
        except ZcsyncError:
            pass

    def _read_request(self) -> tuple[DaemonRequest, bytes]:
        head = read_exact(self.stream, len(MAGIC), "the request")
        if head != MAGIC:
            log.warning("%s sent something that is not a zcsync request: %s", self.addr, peer_text(head))
            raise PreambleClosed("bad magic")
        (n,) = _U32.unpack(read_exact(self.stream, 4, "the request"))
        if n > MAX_REQUEST:
            raise ProtocolError(f"request of {n} bytes is over the limit of {MAX_REQUEST}")
        body = read_exact(self.stream, n, "the request")
        return DaemonRequest.decode(body), body

    def _listing(self) -> bytes:
        rows = []
        for module in self.config.modules.values():
            if module.list and host_allowed(module, self.addr):
                name = module.name.encode("ascii")
                comment = module.comment.encode("utf-8", "replace")[:MAX_COMMENT]
                rows.append(_U8.pack(len(name)) + name + _U16.pack(len(comment)) + comment)
        rows = rows[:MAX_LISTED]
        return bytes([R_LIST]) + _U16.pack(len(rows)) + b"".join(rows)

    def _run(self) -> int:
        server_nonce = auth.new_nonce()
        self.stream.write(MAGIC + bytes([R_OK]) + server_nonce)
        request, body = self._read_request()
        if request.kind == KIND_LIST:
            self._send(self._listing())
            return 0
        module = self.config.modules.get(request.module)
        if module is None:
            log.warning("%s asked for unknown module %r", self.addr, request.module)
            raise _Refuse(errors.STARTUP, f"Unknown module '{request.module}'")
        if not host_allowed(module, self.addr):
            log.warning("access to module %s denied to %s", module.name, self.addr)
            raise _Refuse(errors.STARTUP, f"access denied to {module.name} from {self.addr}")
        if not self.ctx.slots.take(module):
            log.warning("max connections (%d) reached for module %s: refused %s",
                        module.max_connections, module.name, self.addr)
            raise _Refuse(errors.STARTUP, f"max connections ({module.max_connections}) reached -- "
                          "try again later")
        read_only = module.read_only
        proof_reply = b""
        if module.auth_users:
            self.stream.write(bytes([R_AUTH]))
            proof = read_exact(self.stream, auth.PROOF_SIZE, "the client's proof")
            if self.ctx.throttle_delay:
                time.sleep(self.ctx.throttle_delay)
            secret, access = self._secret_for(module, request.user)
            digest = auth.request_digest(body)
            args = (server_nonce, request.client_nonce, module.name.encode(), request.user.encode(), digest)
            # Compare even for an unknown user (against a random key), so timing says nothing.
            expected = auth.client_proof(secret if secret is not None else auth.new_nonce(), *args)
            if secret is None or access == "deny" or not auth.proofs_equal(expected, proof):
                self.ctx.notify(b"F")
                log.warning("auth failed on module %s from %s for user %r", module.name, self.addr, request.user)
                raise _Refuse(errors.STARTUP, f"auth failed on module {module.name}")
            self.ctx.notify(b"A")
            proof_reply = auth.server_proof(secret, *args)
            if access in ("ro", "rw"):
                read_only = access == "ro"
        else:
            self.ctx.notify(b"O")
        signal.setitimer(signal.ITIMER_REAL, 0)  # authenticated: the pre-auth deadline is over
        return self._transfer(module, request, read_only, proof_reply)

    def _secret_for(self, module: Module, user: str) -> tuple[bytes | None, str | None]:
        """(password, access) of user, or (None, None); the same work whether user exists or not."""
        try:
            table = auth.load_secrets(module.secrets_file or "", strict=module.strict_modes)
        except auth.SecretsError as exc:
            log.error("module %s: %s", module.name, exc.message)
            return None, None
        entry = module.user(user)
        secret = table.get(user)
        if entry is None or secret is None:
            return None, None
        return secret, entry.access

    @staticmethod
    def _globbed(root_fd: int, paths: tuple[bytes, ...], module: Module, module_filter: ModuleFilter) -> list[bytes]:
        """A pull's paths with wildcards expanded inside the module (as rsync's daemon does).

        A pattern is checked as any path first (no '..', nothing absolute, its existing
        part inside the module); matches that lead out of the module or that it excludes
        are dropped without a word, so a pattern reveals no name the module hides.
        """
        def inside(match: str) -> bool:
            raw = os.fsencode(match)
            try:
                path = check_in_module(root_fd, raw, module.name)
            except FileSelectError:
                return False
            rel = _module_relative(path)
            return not (module_filter.excluded(rel, True) or module_filter.excluded(rel, False))

        out = []
        for raw in paths:
            try:
                check_in_module(root_fd, raw, module.name)
            except FileSelectError as exc:
                raise _Refuse(errors.FILE_SELECT, exc.message) from None
            out.extend(os.fsencode(p) for p in glob_sources([os.fsdecode(raw)], keep=inside))
        return out

    def _transfer(self, module: Module, request: DaemonRequest, read_only: bool, proof_reply: bytes) -> int:
        role = request.role
        assert role is not None
        try:
            opts = _max_verbosity(from_wire(request.options))
        except UsageError as exc:
            raise _Refuse(errors.USAGE, exc.message) from None
        if role == "receiver" and read_only:
            raise _Refuse(errors.USAGE, "module is read only")
        if role == "sender" and module.write_only:
            raise _Refuse(errors.USAGE, "module is write only")
        if opts.files_from_remote is not None and module.write_only:
            raise _Refuse(errors.USAGE, "module is write only (--files-from reads a file of the module)")
        if role == "sender" and opts.remove_source_files and read_only:
            raise _Refuse(errors.USAGE, "module is read only (--remove-source-files)")
        if role == "sender" and opts.copy_links:
            raise _Refuse(errors.USAGE, "--copy-links (-L) is refused by the daemon: links could lead "
                          "out of the module")
        if role == "sender" and opts.copy_devices:  # (rsync's daemon refuses it by default too)
            raise _Refuse(errors.USAGE, "--copy-devices is refused by the daemon: a device node would "
                          "hand out whatever disk it names")
        module_filter = ModuleFilter(module.exclude)
        if module_filter and any(_is_clear_rule(rule) for rule in opts.filter_rules):
            raise _Refuse(errors.USAGE, "a '!' (clear) filter rule is refused on a module with excludes")
        if module_filter and role == "receiver":
            # Files there are read (a basis, a copy, a link) or written (a backup) by names the
            # module's excludes are not checked against: an excluded file could be copied or
            # linked to a visible name, or replaced by a backup.
            for name in ("compare_dest", "copy_dest", "link_dest", "backup_dir"):
                if getattr(opts, name):
                    raise _Refuse(errors.USAGE, f"--{name.replace('_', '-')} is refused on a module with "
                                  "excludes (an excluded file could be read or replaced through it)")
        if role == "receiver" and len(request.paths) != 1:
            raise _Refuse(errors.USAGE, "a push names one destination path")
        try:
            root_fd = os.open(module.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            os.fchdir(root_fd)
        except OSError as exc:
            log.error("module %s: cannot enter %s: %s", module.name, module.path, exc.strerror)
            raise _Refuse(errors.STARTUP, f"chdir failed for module {module.name}") from None
        _drop_privileges(module)
        paths, problems = [], []
        globbing = role == "sender" and not (opts.files_from or opts.files_from_peer or opts.files_from_remote)
        for raw in self._globbed(root_fd, request.paths, module, module_filter) if globbing else request.paths:
            try:
                path = check_in_module(root_fd, raw, module.name)
            except FileSelectError as exc:
                raise _Refuse(errors.FILE_SELECT, exc.message) from None
            if module_filter.excluded(_module_relative(path), True) or \
                    module_filter.excluded(_module_relative(path), False):
                # As rsync: an excluded name looks like one that does not exist (so with
                # --ignore-missing-args the sender takes it for a missing one: Scanner.hidden).
                if role == "sender" and opts.ignore_missing_args:
                    paths.append(os.fsdecode(path))
                    continue
                problems.append(FileProblem(escape(path), f'[sender] change_dir "{escape(path)}" (in '
                                            f"{module.name}) failed: No such file or directory (2)"))
                if role == "receiver":
                    raise _Refuse(errors.FILE_SELECT, f'daemon refused to receive "{escape(path)}"')
                continue
            paths.append(os.fsdecode(path))
        if role == "receiver":
            _check_path_options(root_fd, opts, request.paths[0], module.name)
        os.close(root_fd)
        log.info("%s %s/%s from %s@%s", "send" if role == "sender" else "receive", module.name,
                 " ".join(paths) or ".", request.user or "-", self.addr)
        self._send(bytes([R_OK]) + proof_reply)
        self.stream.timeout = float(module.timeout) if module.timeout else None
        return run_role(self.stream, role, opts, paths, module_filter, problems, peer=self.addr,
                        module_name=module.name)


def _max_verbosity(opts: Options) -> Options:
    """A daemon's session is told no more than level 1 of names (rsync's "max verbosity",
    1 by default): no "X is uptodate" lines from a push, no unchanged names itemized."""
    info = tuple(w for w in opts.info if not (w.startswith("NAME") and int(w[len("NAME"):]) > 1))
    if opts.verbose <= 1 and info == opts.info:
        return opts
    return opts.replace(verbose=min(opts.verbose, 1), info=info)


def _is_clear_rule(rule: str) -> bool:
    words = rule.strip().split(None, 1)
    return bool(words) and (words[0] in ("!", "clear") or words[0].startswith("!"))


def _check_path_options(root_fd: int, opts: Options, dest: bytes, module_name: str) -> None:
    """--backup-dir, --partial-dir and the *-dest dirs must stay inside the module as well."""
    for name in PATH_OPTIONS:
        value = getattr(opts, name)
        for item in (value if isinstance(value, tuple) else (value,)):
            if not item:
                continue
            raw = os.fsencode(item)
            flag = f"--{name.replace('_', '-')}"
            if raw.startswith(b"/") or b".." in raw.split(b"/"):
                raise _Refuse(errors.FILE_SELECT, f"{flag}={item} refused: it must stay inside the module")
            if name != "partial_dir":  # relative to the destination (partial-dir: to each file's dir)
                try:
                    check_in_module(root_fd, dest.rstrip(b"/") + b"/" + raw, module_name)
                except FileSelectError as exc:
                    raise _Refuse(errors.FILE_SELECT, f"{flag}: {exc.message}") from None


def run_role(stream: Stream, role: str, opts: Options, paths: list[str], module_filter: ModuleFilter,
             problems: list[FileProblem], peer: str = "client", module_name: str = "module") -> int:
    """The server end of a transfer inside a module: server.serve_job, plus the module's excludes."""
    conn = _ModuleConnection(stream, peer=peer)

    def plan(report: Report) -> Job:
        dest_rel = _module_relative(os.fsencode(paths[0])) if role == "receiver" and paths else None
        prefix = module_filter.client_rules(dest_rel) if module_filter else []
        if role == "receiver" and module_filter:
            assert dest_rel is not None
            conn.incoming = _incoming_filter(dest_rel, module_filter, report)

        def make_sender(sources, options, filters, report):  # type: ignore[no-untyped-def]
            return _ModuleSender(sources, options, filters, module_filter, read_xattrs=read_source_xattrs(options),
                                 on_problem=report.problem, on_notice=report.notice)

        def in_module(path: bytes) -> bytes:
            root_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the module root
            try:
                return check_in_module(root_fd, path, module_name)
            finally:
                os.close(root_fd)

        def check_path(path: bytes) -> None:  # a --files-from name: inside the module, as the paths
            in_module(path)

        def read_list(path: str, from0: bool) -> list[bytes]:
            """--files-from=:FILE: a list file inside the module, read as the module's files are
            (after the uid/gid switch), relative to its root, through no symlink at all."""
            try:
                raw = in_module(os.fsencode(path))
            except FileSelectError as exc:
                raise FileSelectError(f"--files-from {exc.message}") from None
            if module_filter.excluded(_module_relative(raw), False):
                raise UsageError(f"--files-from file {path!r} refused: the module excludes it")
            return read_list_file(os.fsdecode(raw), from0, MAX_FILES_FROM, nofollow=True)
        hidden = None
        if role == "receiver" and module_filter:
            def hidden(name: bytes) -> bool:
                return module_filter.excluded(_module_relative(_join(dest_rel, name)), False)
        return Job(role, opts, tuple(paths), tuple(prefix), tuple(problems), make_sender, check_path,
                   read_list, hidden)

    return serve_job(conn, plan, logger=log, peer=peer)


# -- the daemon process -----------------------------------------------------------

@dataclass
class _Child:
    addr: str
    started: float
    status_fd: int
    past_auth: bool = False


class Daemon:
    """The listening parent: accept, fork a Session per connection, reap, reload, stop."""

    def __init__(self, config_path: str, *, port: int | None = None, address: str | None = None,
                 detach: bool = True) -> None:
        self.config_path = config_path
        self.overrides = {"port": port, "address": address}
        self.detach = detach
        self.config = with_overrides(load_config(config_path), **self.overrides)
        self.throttle = auth.FailureThrottle()
        self.children: dict[int, _Child] = {}
        self.listeners: list[socket.socket] = []
        self.selector = selectors.DefaultSelector()
        self._stop = False
        self._reload = False
        self._pid_fd: int | None = None
        self._pid_path: str | None = None
        self._lock_file = tempfile.TemporaryFile(prefix="zcsyncd-slots-")  # noqa: SIM115 - lives as long as we do
        self._log_handler: logging.Handler | None = None
        self._wake_r, self._wake_w = os.pipe()

    # -- start-up --
    def bind(self) -> None:
        """Open the listening sockets (before detaching, so that errors reach the terminal)."""
        cfg = self.config
        host = cfg.address
        try:
            infos = socket.getaddrinfo(host, cfg.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE) \
                if host else [(socket.AF_INET6, socket.SOCK_STREAM, 0, "", ("::", cfg.port, 0, 0))]
        except socket.gaierror as exc:
            raise SocketIOError(f"cannot resolve listen address {host!r}: {exc.strerror}") from exc
        last: OSError | None = None
        for family, kind, proto, _, addr in infos:
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as exc:
                if host is None:  # no IPv6 here: all IPv4 addresses instead
                    infos.append((socket.AF_INET, socket.SOCK_STREAM, 0, "", ("0.0.0.0", cfg.port)))
                last = exc
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and host is None:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(addr)
                sock.listen(128)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            self.listeners.append(sock)
        if not self.listeners:
            assert last is not None
            raise SocketIOError(f"cannot listen on {host or '*'} port {cfg.port}: {last.strerror}") from last

    def _daemonize(self) -> None:
        if os.fork():
            os._exit(0)
        os.setsid()
        if os.fork():
            os._exit(0)
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)

    def _write_pid_file(self) -> None:
        path = self.config.pid_file
        if not path:
            return
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StartupError(f"Cannot create pid file {path!r}: {exc.strerror}") from exc
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StartupError(f"pid file {path!r} is locked: another daemon is running") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._pid_fd, self._pid_path = fd, path

    def _remove_pid_file(self) -> None:
        if self._pid_path is not None:
            try:
                os.unlink(self._pid_path)
            except OSError:
                pass
        if self._pid_fd is not None:
            os.close(self._pid_fd)
        self._pid_fd = self._pid_path = None

    def _setup_logging(self) -> None:
        root = logging.getLogger("zcsync")
        if self._log_handler is not None:
            root.removeHandler(self._log_handler)
            self._log_handler.close()
        handler: logging.Handler
        if self.config.log_file:
            handler = logging.FileHandler(self.config.log_file)
            handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(message)s", "%Y/%m/%d %H:%M:%S"))
        elif not self.detach:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("zcsync daemon [%(process)d]: %(message)s"))
        else:
            try:
                handler = logging.handlers.SysLogHandler(address="/dev/log")
            except OSError:
                handler = logging.NullHandler()
            handler.setFormatter(logging.Formatter("zcsyncd[%(process)d]: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
        self._log_handler = handler

    # -- signals --
    def _on_signal(self, signum: int, frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stop = True
        elif signum == signal.SIGHUP:
            self._reload = True

    def _install_signals(self) -> None:
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)

    # -- the loop --
    def serve_forever(self) -> int:
        """Run until SIGTERM; returns the exit code (0 on a clean stop)."""
        if self.detach:
            self._write_pid_file()  # fail here, where the error still reaches the terminal
            self._remove_pid_file()
            self._daemonize()
        self._write_pid_file()
        self._setup_logging()
        self._install_signals()
        # Every session parses its client's options. Doing it once here hands the forked
        # children a loaded parser and table of option types, instead of ~2 ms each to build them.
        from_wire("{}")
        for sock in self.listeners:
            self.selector.register(sock, selectors.EVENT_READ, "listen")
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        where = ", ".join(f"{s.getsockname()[0]} port {s.getsockname()[1]}" for s in self.listeners)
        log.info("zcsync daemon listening on %s (config %s)", where, self.config_path)
        try:
            while not self._stop:
                for key, _ in self.selector.select(self._next_timeout()):
                    if key.data == "listen":
                        self._accept(key.fileobj)  # type: ignore[arg-type]
                    elif key.data == "wake":
                        try:
                            while os.read(self._wake_r, 512):
                                pass
                        except BlockingIOError:
                            pass
                    else:
                        self._child_status(key.data)
                self._reap()
                if self._reload:
                    self._reload = False
                    self.reload()
                self._enforce_deadlines()
        finally:
            self._shutdown()
        return 0

    def _next_timeout(self) -> float | None:
        waiting = [c.started + self.config.auth_timeout + 1.0 for c in self.children.values() if not c.past_auth]
        if not waiting:
            return None
        return max(0.0, min(waiting) - time.monotonic())

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, addr = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EMFILE and friends: keep serving the others
            log.error("accept failed: %s", exc.strerror)
            return
        ip = str(addr[0])
        ip = ip.removeprefix("::ffff:")
        sock.setblocking(True)
        limit = self.config.max_connections
        if limit and len(self.children) >= limit:
            log.warning("max connections (%d) reached: refused %s", limit, ip)
            try:
                sock.settimeout(2.0)
                sock.sendall(MAGIC + bytes([R_ERROR]) + _error_record(
                    errors.STARTUP, f"max connections ({limit}) reached -- try again later"))
            except OSError:
                pass
            sock.close()
            return
        log.info("connect from %s", ip)
        status_r, status_w = os.pipe()
        delay = self.throttle.delay(ip)
        try:
            pid = os.fork()
        except OSError as exc:  # out of processes or memory: refuse this one, keep serving
            log.error("cannot start a session for %s: %s", ip, exc.strerror)
            for fd in (status_r, status_w):
                os.close(fd)
            sock.close()
            return
        if pid == 0:  # the child never returns from here
            code = errors.STREAM
            try:
                os.close(status_r)
                code = self._child_main(sock, ip, status_w, delay)
            except BaseException:
                log.exception("session with %s failed", ip)
            finally:
                os._exit(code)
        os.close(status_w)
        sock.close()
        os.set_blocking(status_r, False)
        self.children[pid] = _Child(ip, time.monotonic(), status_r)
        self.selector.register(status_r, selectors.EVENT_READ, pid)

    def _child_main(self, sock: socket.socket, ip: str, status_w: int, delay: float) -> int:
        signal.set_wakeup_fd(-1)
        for s in self.listeners:
            s.close()
        for child in self.children.values():
            if child.status_fd >= 0:
                os.close(child.status_fd)
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._pid_fd is not None:
            os.close(self._pid_fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, _interrupted)

        def on_alarm(signum: int, frame: object) -> None:
            raise _PreAuthTimeout()
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, self.config.auth_timeout)

        def notify(what: bytes) -> None:
            try:
                os.write(status_w, what)
            except OSError:
                pass
        stream = tcp.SocketStream(sock, peer=ip, timeout=self.config.auth_timeout)
        ctx = ConnectionContext(self.config, ModuleSlots(self._lock_file.fileno()), delay, notify)
        try:
            return Session(stream, ip, ctx).run()
        except errors.Interrupted:
            return errors.SIGNAL

    def _child_status(self, pid: int) -> None:
        child = self.children.get(pid)
        if child is not None:
            self._drain_status(child)

    def _drain_status(self, child: _Child) -> None:
        """Act on what the child reported: F (auth failed), A (authenticated), O (open module)."""
        while child.status_fd >= 0:
            try:
                data = os.read(child.status_fd, 64)
            except BlockingIOError:
                return
            if not data:  # the child is ending
                self.selector.unregister(child.status_fd)
                os.close(child.status_fd)
                child.status_fd = -1
                return
            for byte in data:
                if byte == ord("F"):
                    self.throttle.failed(child.addr)
                elif byte == ord("A"):
                    self.throttle.succeeded(child.addr)
                child.past_auth = child.past_auth or byte in (ord("A"), ord("O"))

    def _reap(self) -> None:
        while self.children:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is not None:
                self._drain_status(child)  # to EOF: the child is gone

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for pid, child in self.children.items():
            if not child.past_auth and now > child.started + self.config.auth_timeout + 1.0:
                log.warning("%s did not authenticate within %g seconds: killing its session",
                            child.addr, self.config.auth_timeout)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.past_auth = True  # killed once; the reaper frees the slot

    def reload(self) -> None:
        """SIGHUP: read the config again; keep the old one if the new one is bad."""
        try:
            new = with_overrides(load_config(self.config_path), **self.overrides)
        except ZcsyncError as exc:
            log.error("config not reloaded: %s", exc.message)
            return
        if (new.port, new.address) != (self.config.port, self.config.address):
            log.warning("port and address changes take effect only when the daemon restarts")
            new = dataclasses.replace(new, port=self.config.port, address=self.config.address)
        if new.pid_file != self.config.pid_file:
            log.warning("a new pid file takes effect only when the daemon restarts")
            new = dataclasses.replace(new, pid_file=self.config.pid_file)
        self.config = new
        self._setup_logging()  # also reopens the log file (log rotation)
        log.info("config reloaded: %d module(s)", len(new.modules))

    def _shutdown(self) -> None:
        for sock in self.listeners:
            try:
                self.selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
        self.listeners = []
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5.0
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self._remove_pid_file()
        log.info("zcsync daemon stopped")


def _interrupted(signum: int, frame: object) -> None:
    raise errors.Interrupted(signal.Signals(signum).name)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"zcsync daemon: {message}\n")
        sys.exit(errors.USAGE)


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``zcsync daemon [--config FILE] [--port N] [--address ADDR] [--no-detach]``."""
    parser = _Parser(prog="zcsync daemon", description="Serve modules to zcsync clients over TCP.")
    parser.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"configuration file (rsyncd.conf syntax; default {DEFAULT_CONFIG})")
    parser.add_argument("--port", type=int, default=None, metavar="N",
                        help=f"listen on port N (default: the config's, else {DEFAULT_DAEMON_PORT})")
    parser.add_argument("--address", default=None, metavar="ADDR", help="listen on this address only")
    parser.add_argument("--no-detach", action="store_true", help="stay in the foreground")
    args = parser.parse_args(argv)
    if args.port is not None and not 0 < args.port < 65536:
        parser.error(f"bad port {args.port}")
    try:
        daemon = Daemon(args.config, port=args.port, address=args.address, detach=not args.no_detach)
        daemon.bind()
        return daemon.serve_forever()
    except ConfigError as exc:
        sys.stderr.write(f"zcsync daemon: {exc.message}\n")
        return exc.exit_code
    except ZcsyncError as exc:
        sys.stderr.write(f"zcsync daemon: {exc.message}\n")
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
