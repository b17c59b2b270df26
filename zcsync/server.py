"""`zcsync --server`: the remote end, started by the client over ssh (or -e) on stdin/stdout.

The client builds the arguments: ``--server --sender|--receiver [--listen
[--listen-timeout=SECONDS]] --options=JSON [--restrict-to=DIR] [OPTION...] -- PATH...``,
where the OPTIONs are the client's -M/--remote-option words, which change the JSON
options for this side alone (options.side_options says which it takes). Nothing else is
accepted; the server only does what the protocol messages name. For an
authorized_keys ``command=`` line, run ``zcsync --server --restrict-to=DIR`` there (the
client's own arguments then come from SSH_ORIGINAL_COMMAND; see client_command): the
requested paths must then lie in DIR, and so must a --files-from file the client names
on this host (``--files-from=host:FILE``), which is then read through real directories only.

With ``--listen`` (the client's ``--transport=tcp``) stdin/stdout carry only the
bootstrap: one ``ZCSYNC-LISTEN`` line out, then the protocol runs on a raw TCP
connection that proved it holds the one-time key (see bootstrap.py). The exit status
is the transfer's either way, so the ssh channel's status means something.

`serve_job` is the part every server end shares (this one and the daemon's): the
handshake, then one role on the paths a Job names.
"""
from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from . import bootstrap, compress, errors
from .engine import glob_sources, read_list_file, read_source_xattrs, source_args
from .errors import FileProblem, StreamError, UsageError, ZcsyncError
from .filters import FilterRules
from .options import Options, from_wire, side_options
from .pathnames import escape
from .protocol import ACCEPTS, Connection, Goodbye, Log, handshake
from .remote import (
    MAX_FILES_FROM,
    ReceivingSide,
    SendingSide,
    forward_report,
    receive_files_from,
    send_files_from,
)
from .sender import Sender
from .stats import Report
from .transport.stdio import FdStream
from .transport.tcp import SocketStream

log = logging.getLogger("zcsync")

PATH_OPTIONS = ("backup_dir", "partial_dir", "temp_dir", "link_dest", "compare_dest", "copy_dest")


@dataclass(frozen=True)
class ServerArgs:
    """The client's --server command line, parsed."""

    role: str
    options: Options
    restrict_to: str | None
    paths: tuple[str, ...]
    listen: bool = False
    listen_timeout: int = bootstrap.DEFAULT_ACCEPT_TIMEOUT


def parse_server_command(argv: list[str]) -> ServerArgs:
    """The client's --server arguments, strictly: anything unknown is an error."""
    role = None
    wire = None
    restrict = None
    listen = False
    listen_timeout = None
    side: list[str] = []  # the client's -M words: options for this side alone
    args = list(argv)
    if not args or args[0] != "--server":
        raise UsageError("not a --server command line")
    args.pop(0)
    while args and args[0] != "--":
        arg = args.pop(0)
        if arg in ("--sender", "--receiver"):
            role = arg[2:]
        elif arg.startswith("--options="):
            wire = arg[len("--options="):]
        elif arg.startswith("--restrict-to="):
            restrict = arg[len("--restrict-to="):]
        elif arg == "--listen":
            listen = True
        elif arg.startswith("--listen-timeout="):
            value = arg[len("--listen-timeout="):]
            if not (value.isascii() and value.isdigit() and len(value) <= 4
                    and 1 <= int(value) <= bootstrap.MAX_ACCEPT_TIMEOUT):
                raise UsageError(f"bad --listen-timeout {value!r} (1..{bootstrap.MAX_ACCEPT_TIMEOUT} seconds)")
            listen_timeout = int(value)
        else:
            side.append(arg)
    _side_options(Options(), side)  # an unknown word is named before what else is missing
    if not args:
        raise UsageError("server arguments end without '--' and paths")
    paths = args[1:]
    if role is None or wire is None or not paths:
        raise UsageError("server needs --sender or --receiver, --options and at least one path")
    if listen_timeout is not None and not listen:
        raise UsageError("--listen-timeout needs --listen")
    return ServerArgs(role, _side_options(from_wire(wire), side), restrict, tuple(paths), listen,
                      listen_timeout or bootstrap.DEFAULT_ACCEPT_TIMEOUT)


def _side_options(opts: Options, words: list[str]) -> Options:
    """The client's -M words applied; a refusal worded as rsync's, for the client to show."""
    try:
        return side_options(opts, words)
    except UsageError as exc:
        raise UsageError(f"on remote machine: {exc.message}") from None


def parse_server_args(argv: list[str]) -> tuple[str, Options, str | None, list[str]]:
    """(role, options, restrict_to, paths) from the client's --server arguments."""
    args = parse_server_command(argv)
    return args.role, args.options, args.restrict_to, list(args.paths)


def check_restricted(paths: Sequence[str], opts: Options, restrict: str) -> None:
    """--restrict-to: every path the client names must resolve inside restrict."""
    root = os.path.realpath(restrict)
    for path in paths:
        real = os.path.realpath(path or ".")
        if real != root and not real.startswith(root.rstrip("/") + "/"):
            raise UsageError(f"access to {path!r} is outside {restrict!r} (--restrict-to)")
    for name in PATH_OPTIONS:
        value = getattr(opts, name)
        for item in (value if isinstance(value, tuple) else (value,)):
            if item and (os.path.isabs(item) or ".." in item.split("/")):
                raise UsageError(f"--{name.replace('_', '-')}={item} is not allowed with --restrict-to")


# -- what every server end shares ----------------------------------------------------------

def _plain_sender(sources: list, opts: Options, filters: FilterRules, report: Report) -> Sender:
    return Sender(sources, opts, filters, read_xattrs=read_source_xattrs(opts), on_problem=report.problem,
                  on_notice=report.notice)


@dataclass(frozen=True)
class Job:
    """One server role on given paths, as a server end decided after the handshake."""

    role: str  # "sender" | "receiver"
    opts: Options
    paths: tuple[str, ...]
    #: Filter rules put before the client's (a daemon module's excludes).
    filter_prefix: tuple[str, ...] = ()
    #: Problems found while choosing the paths, reported to the client first.
    problems: tuple[FileProblem, ...] = ()
    make_sender: Callable[[list, Options, FilterRules, Report], Sender] = field(
        default=_plain_sender)
    #: Checks each --files-from path a client sent (joined to its source directory) before
    #: anything reads it; raises a ZcsyncError for one that must not be read.
    check_path: Callable[[bytes], None] | None = None
    #: Reads a --files-from file on this host (the client gave host:FILE or :FILE): its
    #: names from (path, from0). None: this server end reads no list files (the daemon).
    read_list: Callable[[str, bool], list[bytes]] | None = None
    #: A receiver's names (relative to the destination) never to read as a -y basis, whose
    #: signature would reach the client (a daemon module's excludes).
    basis_hidden: Callable[[bytes], bool] | None = None


def check_files_from(names: list[bytes], paths: Sequence[str], check: Callable[[bytes], None] | None) -> None:
    """--files-from names a client sent, or that the server read from its own list file: no
    '..' (they stay below the source directory), and each joined path passes the server's
    own check (--restrict-to, a daemon module)."""
    for name in names:
        if b".." in name.split(b"/"):
            raise UsageError(f"--files-from name {escape(name)!r} refused: '..' is not allowed in a remote transfer")
        if check is not None:
            for path in paths:
                check(os.fsencode(path).rstrip(b"/") + b"/" + name)


def _own_list(job: Job, opts: Options) -> list[bytes]:
    """The names of the --files-from file on this host (host:FILE), read as the job allows."""
    assert opts.files_from_remote is not None
    if job.read_list is None:
        raise UsageError(f"--files-from file {opts.files_from_remote!r} refused: a zcsync daemon reads no "
                         "list files in its modules (give --files-from a file on the client)")
    return job.read_list(opts.files_from_remote, opts.from0)


def serve_job(conn: Connection, plan: Callable[[Report], Job], *, logger: logging.Logger = log,
              peer: str | None = None) -> int:
    """Handshake, then run the Job that plan() returns; the exit code. Closes conn.

    plan runs after the handshake, so that a refusal reaches the client as a message.
    Without peer (``--server``, whose stderr reaches the user through ssh) a fatal error
    goes to the client, and to logger only when it cannot; with peer (the daemon)
    errors and a summary are logged as well, prefixed with it.
    """
    def note(message: str) -> None:
        if peer:
            logger.error("%s: %s", peer, message)
        else:
            logger.error("%s", message)

    report = Report()
    try:
        # Compression is the handshake's business alone: we list what we can decompress.
        try:
            handshake(conn, "server", {"compress": ",".join(compress.supported())})
        except ZcsyncError as exc:
            note(exc.message)
            return exc.exit_code
        try:
            job = plan(report)
            opts = job.opts
            conn.decoder.accepts = ACCEPTS[job.role]  # from now on the peer may send only what our role takes
            conn.set_bwlimit(opts.bwlimit)  # in a pull we are the sender: --bwlimit is ours to keep
            if opts.compress_level is not None and conn.codec is not None:  # so is the level
                conn.set_codec(compress.get_codec(conn.codec.name, opts.compress_level))
            forward_report(conn, report, items=opts.want_items)
            for problem in job.problems:
                report.problem(problem)
            filters = FilterRules.parse([*job.filter_prefix, *opts.filter_rules],
                                        delete_excluded=opts.delete_excluded, trusted=False)
            if opts.files_from_peer and opts.files_from_remote is not None:
                raise UsageError("--files-from names one list: the client's or the server's, not both")
            if job.role == "sender":
                names = None
                if opts.files_from_remote is not None:
                    names = _own_list(job, opts)
                elif opts.files_from_peer:
                    names = receive_files_from(conn, report)
                    if names is None:  # the client gave up before its list
                        return report.exit_code
                if names is not None:
                    check_files_from(names, job.paths, job.check_path)
                sender = job.make_sender(source_args(list(job.paths), opts, names), opts, filters, report)
                SendingSide(conn, sender, opts, report).run()
            else:
                if len(job.paths) != 1:
                    raise UsageError("a receiving server takes one destination path")
                if opts.files_from_peer:
                    raise UsageError("a receiving server takes no --files-from names from the client")
                if opts.files_from_remote is not None:
                    # The client's sender reads these below its source directory: '..' is refused
                    # here (the client refuses it as well); our own paths are not involved.
                    names = _own_list(job, opts)
                    check_files_from(names, (), None)
                    send_files_from(conn, names)
                side = ReceivingSide(conn, job.paths[0] or ".", opts, report, filters,
                                     basis_hidden=job.basis_hidden)
                try:
                    side.run()
                finally:
                    side.close()
            if peer:
                logger.info("%s: sent %d bytes, received %d bytes, exit %d", peer, conn.bytes_sent,
                            conn.bytes_received, report.exit_code)
            return report.exit_code
        except ZcsyncError as exc:
            if peer:
                note(exc.message)
            if not _fatal(conn, exc.message, exc.exit_code) and not peer:
                note(exc.message)
            return exc.exit_code
    except KeyboardInterrupt:
        return errors.SIGNAL
    finally:
        conn.close()


def _fatal(conn: Connection, message: str, code: int) -> bool:
    """Tell the client what went wrong, if the connection still works; False if it does not."""
    try:
        conn.send(Log(logging.ERROR, message))
        conn.send(Goodbye(code))
        conn.drain()
    except ZcsyncError:
        return False
    _linger(conn)
    return True


LINGER = 10.0  # seconds a server waits for the client's last frames after its fatal Goodbye


def _linger(conn: Connection) -> None:
    """After our fatal Goodbye, read what the client still sends, until its Goodbye or the end of
    the stream (LINGER seconds at most): a pulling client answers our Goodbye with its own, which
    must not meet a closed connection (the client would report a lost stream, exit 12, instead
    of our message and code)."""
    deadline = time.monotonic() + LINGER
    try:
        while (left := deadline - time.monotonic()) > 0:
            conn.stream.timeout = left
            if isinstance(conn.recv(), Goodbye):
                return
    except (ZcsyncError, OSError):
        return


# -- `zcsync --server` -------------------------------------------------------------------

def client_command(argv: list[str], environ: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """The client's --server arguments, and the directories this host holds it to.

    In an authorized_keys command= line, `zcsync --server --restrict-to=DIR` gets only
    that from sshd; the client's command is in SSH_ORIGINAL_COMMAND, and its words from
    its own '--server' on are the arguments, held to DIR. ZCSYNC_RESTRICT_TO, set on
    this host, holds the client to its directory the same way. A --restrict-to in the
    client's own arguments can only narrow these (_restriction)."""
    imposed = [environ["ZCSYNC_RESTRICT_TO"]] if environ.get("ZCSYNC_RESTRICT_TO") else []
    if len(argv) != 2 or argv[0] != "--server" or not argv[1].startswith("--restrict-to="):
        return argv, imposed
    imposed.append(argv[1][len("--restrict-to="):])
    original = environ.get("SSH_ORIGINAL_COMMAND")
    if original is None:
        raise UsageError("--server --restrict-to=DIR on its own is an authorized_keys command= line: "
                         "there is no SSH_ORIGINAL_COMMAND to serve")
    try:
        words = shlex.split(original)
    except ValueError as exc:
        raise UsageError(f"cannot parse the client's command ({exc})") from None
    if "--server" not in words:
        raise UsageError("the client's command is not a zcsync --server command")
    return words[words.index("--server"):], imposed


def _restriction(asked: str | None, imposed: Sequence[str], opts: Options) -> str | None:
    """The one directory the client is held to: the narrowest of those imposed and the one
    it asked for, each inside the ones before (else the client's request is refused)."""
    restrict = None
    for path in [*imposed, *([asked] if asked is not None else [])]:
        if restrict is not None:
            check_restricted([path], opts, restrict)  # a wider or unrelated one is refused
        restrict = path
    return restrict


def _job(args: ServerArgs, imposed: Sequence[str] = ()) -> Job:
    opts = args.options
    restrict = _restriction(args.restrict_to, imposed, opts)
    if args.role == "sender" and not (opts.files_from or opts.files_from_peer or opts.files_from_remote):
        args = replace(args, paths=tuple(_globbed(args.paths, opts, restrict)))
    if restrict is None:
        # As rsync: the user's own file, relative to the directory ssh started us in (home).
        return Job(args.role, args.options, args.paths,
                   read_list=lambda path, from0: read_list_file(path, from0, MAX_FILES_FROM))
    check_restricted(args.paths, args.options, restrict)

    def check_path(path: bytes) -> None:
        check_restricted([os.fsdecode(path)], args.options, restrict)

    def read_list(path: str, from0: bool) -> list[bytes]:
        # Resolved once and checked; then opened through real directories only, so a symlink
        # swapped in meanwhile cannot lead out of DIR.
        real = os.path.realpath(path)
        check_restricted([real], args.options, restrict)
        return read_list_file(real, from0, MAX_FILES_FROM, nofollow=True)
    return Job(args.role, args.options, args.paths, check_path=check_path, read_list=read_list)


def _globbed(patterns: Sequence[str], opts: Options, restrict: str | None) -> list[str]:
    """A pull's wildcards expanded; with --restrict-to each pattern must lie inside DIR and
    matches outside it are dropped without a word (no name from outside reaches the client)."""
    if restrict is None:
        return glob_sources(patterns)
    check_restricted(patterns, opts, restrict)

    def inside(match: str) -> bool:
        try:
            check_restricted([match], opts, restrict)
        except UsageError:
            return False
        return True
    return glob_sources(patterns, keep=inside)


def serve(argv: list[str], rfd: int = 0, wfd: int = 1) -> int:
    """Run the server end on the given descriptors; return the exit code."""
    refused: UsageError | None = None
    try:
        argv, imposed = client_command(argv, os.environ)
    except UsageError as exc:
        refused, imposed = exc, []
    if refused is None and _wants_listen(argv):
        return serve_listen(argv, rfd, wfd, imposed)
    conn = Connection(FdStream(rfd, wfd, peer="client"))

    def plan(report: Report) -> Job:
        # Bad arguments are refused only after the handshake, so the client gets the message.
        if refused is not None:
            raise refused
        return _job(parse_server_command(argv), imposed)
    return serve_job(conn, plan)


def _wants_listen(argv: list[str]) -> bool:
    head = argv[:argv.index("--")] if "--" in argv else argv
    return "--listen" in head


def serve_listen(argv: list[str], rfd: int = 0, wfd: int = 1, imposed: Sequence[str] = ()) -> int:
    """--listen: hand the client a one-shot port and key on wfd, then serve one authenticated TCP connection.

    Nothing touches the filesystem before the connection has proven the key; until then
    errors can only go to stderr (the client is waiting for the line, not for messages).
    """
    try:
        try:
            args = parse_server_command(argv)
            listener = bootstrap.open_listener(bootstrap.bind_address())
            try:
                key = bootstrap.new_key()
                try:
                    _write_line(wfd, bootstrap.format_listen_line(listener.getsockname()[1], key))
                finally:
                    wfd = _close(wfd)  # the ssh channel carries nothing else
                sock, where = bootstrap.accept_one(listener, key, args.listen_timeout, control_fd=rfd)
            finally:
                listener.close()
        except ZcsyncError as exc:
            log.error("%s", exc.message)
            return exc.exit_code
        finally:
            _close(wfd)
            _close(rfd)
        log.debug("data connection from %s authenticated", where)
        conn = Connection(SocketStream(sock, peer=where))
        return serve_job(conn, lambda report: _job(args, imposed))
    except KeyboardInterrupt:
        return errors.SIGNAL


def _write_line(wfd: int, line: bytes) -> None:
    view = memoryview(line)
    try:
        while view:
            view = view[os.write(wfd, view):]
    except OSError as exc:
        raise StreamError(f"cannot write the listen line to the client: {exc.strerror}") from exc


def _close(fd: int) -> int:
    """Close fd (-1: already closed); returns -1 for the caller to keep."""
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass
    return -1


def _interrupted(signum: int, frame: object) -> None:
    raise errors.Interrupted(signal.Signals(signum).name)


def main(argv: list[str]) -> int:
    """Entry point for `zcsync --server ...` (stdin/stdout carry the protocol)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("zcsync: %(message)s"))
    logging.getLogger("zcsync").addHandler(handler)
    logging.getLogger("zcsync").propagate = False
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupted)
    # Keep the protocol on private descriptors: a stray print must not corrupt it.
    rfd, wfd = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    return serve(argv, rfd, wfd)
