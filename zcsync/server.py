"""`zcsync --server`: the remote end, started by the client over ssh (or -e) on stdin/stdout.

The client builds the arguments: ``--server --sender|--receiver --options=JSON
[--restrict-to=DIR] -- PATH...``. Nothing else is accepted; the server only does what
the protocol messages name. For an authorized_keys ``command=`` line, run
``zcsync --server --restrict-to=DIR`` there: the requested paths must then lie in DIR.
"""
from __future__ import annotations

import logging
import os
import signal
import sys

from . import compress, errors
from .engine import source_args
from .errors import UsageError, ZcsyncError
from .filters import FilterRules
from .options import Options, from_wire
from .protocol import ACCEPTS, Connection, Goodbye, Log, handshake
from .remote import ReceivingSide, SendingSide, forward_report
from .sender import Sender
from .stats import Report
from .transport.stdio import FdStream

log = logging.getLogger("zcsync")

PATH_OPTIONS = ("backup_dir", "partial_dir", "link_dest", "compare_dest", "copy_dest")


def parse_server_args(argv: list[str]) -> tuple[str, Options, str | None, list[str]]:
    """(role, options, restrict_to, paths) from the client's --server arguments."""
    role = None
    wire = None
    restrict = None
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
        else:
            raise UsageError(f"unknown server argument {arg!r}")
    if not args:
        raise UsageError("server arguments end without '--' and paths")
    paths = args[1:]
    if role is None or wire is None or not paths:
        raise UsageError("server needs --sender or --receiver, --options and at least one path")
    return role, from_wire(wire), restrict, paths


def check_restricted(paths: list[str], opts: Options, restrict: str) -> None:
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


def serve(argv: list[str], rfd: int = 0, wfd: int = 1) -> int:
    """Run the server end on the given descriptors; return the exit code."""
    conn = Connection(FdStream(rfd, wfd, peer="client"))
    # Refuse bad arguments only after the handshake, so the client gets the message.
    # Compression is the handshake's business alone: we list what we can decompress.
    try:
        handshake(conn, "server", {"compress": ",".join(compress.supported())})
    except ZcsyncError as exc:
        log.error("%s", exc.message)
        return exc.exit_code
    report = Report()
    try:
        role, opts, restrict, paths = parse_server_args(argv)
        if restrict is None and os.environ.get("ZCSYNC_RESTRICT_TO"):
            restrict = os.environ["ZCSYNC_RESTRICT_TO"]
        if restrict is not None:
            check_restricted(paths, opts, restrict)
        conn.decoder.accepts = ACCEPTS[role]  # from now on the peer may send only what our role takes
        conn.set_bwlimit(opts.bwlimit)  # in a pull we are the sender: --bwlimit is ours to keep
        forward_report(conn, report, items=opts.want_items)
        filters = FilterRules.parse(opts.filter_rules, delete_excluded=opts.delete_excluded, trusted=False)
        if role == "sender":
            sender = Sender(source_args(paths, opts), opts, filters, on_problem=report.problem)
            SendingSide(conn, sender, opts, report).run()
        else:
            if len(paths) != 1:
                raise UsageError("a receiving server takes one destination path")
            side = ReceivingSide(conn, paths[0] or ".", opts, report, filters)
            try:
                side.run()
            finally:
                side.close()
        return report.exit_code
    except ZcsyncError as exc:
        _fatal(conn, exc.message, exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        return errors.SIGNAL
    finally:
        conn.close()


def _fatal(conn: Connection, message: str, code: int) -> None:
    """Tell the client what went wrong, if the connection still works."""
    try:
        conn.send(Log(logging.ERROR, message))
        conn.send(Goodbye(code))
        conn.drain()
    except ZcsyncError:
        log.error("%s", message)


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
