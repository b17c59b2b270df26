"""The client end of a remote transfer: start `zcsync --server` on the other host and run our role."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from . import compress, errors
from .endpoints import Endpoint, parse_endpoint
from .engine import RunResult, read_files_from, source_args
from .errors import RemoteNotFound, StreamError, UsageError, ZcsyncError
from .filters import FilterRules
from .options import Options, to_wire
from .protocol import Connection, handshake
from .remote import ReceivingSide, SendingSide, send_files_from
from .sender import Sender
from .stats import Event, Report
from .transport.base import Stream

log = logging.getLogger(__name__)


def split_remote(paths: list[str]) -> tuple[list[Endpoint], Endpoint]:
    """Parse SRC... DST; refuse remote-to-remote and mixed remote sources."""
    *srcs, dst = [parse_endpoint(p) for p in paths]
    remote_srcs = [s for s in srcs if s.is_remote]
    if remote_srcs and dst.is_remote:
        raise UsageError("The source and destination cannot both be remote.")
    if remote_srcs:
        first = remote_srcs[0]
        if len(remote_srcs) != len(srcs) or any(
                (s.kind, s.host, s.user, s.port, s.module) != (first.kind, first.host, first.user, first.port,
                                                              first.module) for s in srcs):
            raise UsageError("All remote sources must be on the same host")
    return srcs, dst


def server_argv(role: str, opts: Options, paths: list[str], listen_timeout: int | None = None) -> list[str]:
    """The arguments of the remote `zcsync --server` (role is the server's); --listen with a timeout."""
    listen = ["--listen", f"--listen-timeout={listen_timeout}"] if listen_timeout is not None else []
    return ["--server", f"--{role}", *listen, f"--options={to_wire(opts)}", "--", *paths]


def open_remote(endpoint: Endpoint, role: str, opts: Options, paths: list[str]) -> Stream:
    """A stream to the server end in `role`: a zcsync daemon, or `zcsync --server` over ssh / -e
    (with --transport=tcp: started over ssh, spoken to over raw TCP)."""
    if opts.transport not in (None, "tcp"):
        raise UsageError(f"Unknown --transport {opts.transport!r} (the one choice is tcp)")
    if endpoint.kind == "daemon":
        if opts.transport == "tcp":
            raise UsageError(f"--transport=tcp is for host:path (ssh) locations; {endpoint} is a zcsync "
                             "daemon, which is reached over raw TCP already")
        from .daemon import open_daemon_stream
        return open_daemon_stream(endpoint, opts, role, paths)
    if opts.transport == "tcp":
        return open_bootstrapped(endpoint, role, opts, paths)
    return open_stream(endpoint, server_argv(role, opts, paths), opts)


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
    """Start the remote end over ssh (paramiko) or the -e command."""
    rsh = opts.rsh or os.environ.get("ZCSYNC_RSH")
    if rsh:
        from .transport.rsh import open_rsh
        return open_rsh(rsh, endpoint, argv, program=opts.zcsync_path,
                        timeout=float(opts.timeout) if opts.timeout else None)
    from .transport.ssh import SshOptions, open_ssh
    ssh_opts = SshOptions(accept_new=opts.ssh_accept_new,
                          connect_timeout=float(opts.contimeout) if opts.contimeout else None,
                          timeout=float(opts.timeout) if opts.timeout else None)
    return open_ssh(endpoint, argv, options=ssh_opts, program=opts.zcsync_path)


def client_caps(opts: Options) -> dict[str, str]:
    """Our HELLO capabilities: the codecs we offer for -z / --compress-choice, best first."""
    return {"compress": ",".join(compress.offer(opts.compress, opts.compress_choice)) or "none"}


def run_remote(paths: list[str], opts: Options, on_event: Callable[[Event], None] | None = None) -> RunResult:
    """Push (remote DST) or pull (remote SRC) over a stream to `zcsync --server`."""
    started = time.monotonic()
    srcs, dst = split_remote(paths)
    names = None
    if opts.files_from is not None:
        if len(srcs) != 1:
            raise UsageError("--files-from needs exactly one source directory")
        if not dst.is_remote:  # a pull: the list is read here and sent to the remote sender
            names = read_files_from(opts)
            opts = opts.replace(files_from_peer=True)
    caps = client_caps(opts)  # a codec missing here is an error before anything starts
    opts = opts.replace(want_items=on_event is not None)  # else the server sends no Item per file
    report = Report(on_event=on_event)
    filters = FilterRules.parse(opts.filter_rules, delete_excluded=opts.delete_excluded)
    if dst.is_remote:
        endpoint = dst
        stream = open_remote(endpoint, "receiver", opts, [dst.path or "."])
    else:
        endpoint = srcs[0]
        stream = open_remote(endpoint, "sender", opts, [s.path or "." for s in srcs])
    conn = Connection(stream, side="sender" if dst.is_remote else "receiver", peer=endpoint.host or "peer")
    conn.set_bwlimit(opts.bwlimit)
    try:
        with _translate(stream, endpoint):
            negotiated = handshake(conn, "client", caps)
            if caps["compress"] != "none" and negotiated.compress == "none":
                log.warning("%s supports none of the compressions offered (%s): sending uncompressed",
                            endpoint.host or "the server", caps["compress"])
            if dst.is_remote:
                sender = Sender(source_args([s.path for s in srcs], opts), opts, filters,
                                on_problem=report.problem)
                SendingSide(conn, sender, opts, report).run()
            else:
                if names is not None:
                    send_files_from(conn, names)
                side = ReceivingSide(conn, dst.path, opts, report, filters)
                try:
                    side.run()
                finally:
                    side.close()
    finally:
        report.stats.bytes_sent = conn.bytes_sent
        report.stats.bytes_received = conn.bytes_received
        stream.close()
    report.stats.elapsed_s = time.monotonic() - started
    return RunResult(report.exit_code, report, report.problems)


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
