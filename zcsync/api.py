"""The library API (`zcsync.sync`) and the dispatch shared with the command line.

Keyword options are the command line's long options with "_" for "-" (`dry_run=True`
is `--dry-run`, `link_dest=["../a", "../b"]` is `--link-dest=../a --link-dest=../b`):
sync() turns them into the same arguments the command line parses, so both have the
same implications, checks and defaults. Nothing is printed: per-file problems go to
the "zcsync" logger (silent unless the program configured logging) and into the result.
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, TextIO, TypedDict, Unpack

from .endpoints import parse_endpoint
from .engine import RunResult, run_local, source_args
from .errors import FileProblem, Timeout, UsageError, ZcsyncError
from .filters import FilterRules
from .flist import Scanner, ScanState, prune_empty_dirs
from .listing import Listing
from .options import Options
from .stats import Event, Hooks, Report, RunLog, Stats, exit_text

PathArg = str | os.PathLike[str]


@dataclass(frozen=True)
class SyncResult:
    """The outcome of one sync: rsync's exit code, the counters, and per-file problems.

    stats has files_transferred, files_deleted, bytes_sent, bytes_received, literal_bytes,
    matched_bytes, total_size, elapsed_s and the rest of rsync's --stats counters; errors
    are FileProblem(path, message, code); events are the items -i would print.
    """

    exit_code: int
    stats: Stats
    errors: tuple[FileProblem, ...] = field(default_factory=tuple)
    events: tuple[Event, ...] = field(default_factory=tuple)
    listing: tuple[str, ...] = field(default_factory=tuple)  # list_only=True: rsync's listing lines

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def as_dict(self, items: bool = True) -> dict[str, object]:
        """The result as plain data (what `zcsync --json` prints)."""
        doc: dict[str, object] = {
            "exit_code": self.exit_code,
            "ok": self.ok,
            "exit_text": None if self.ok else exit_text(self.exit_code),
            "stats": self.stats.as_dict(),
            "errors": [{"path": p.path, "message": p.message, "code": p.code} for p in self.errors],
        }
        if items:
            doc["items"] = [{"itemize": e.itemize, "name": e.name, "extra": e.extra, "size": e.size}
                            for e in self.events if e.itemize]
        if self.listing:
            doc["listing"] = list(self.listing)
        return doc


# -- keyword options ----------------------------------------------------------------

Paths = PathArg | Sequence[PathArg]


class SyncOptions(TypedDict, total=False):
    """sync()'s keyword options: the long options of `zcsync --help`, "-" spelt "_"."""

    verbose: int
    quiet: bool
    archive: bool
    recursive: bool
    dirs: bool
    links: bool
    copy_links: bool
    copy_dirlinks: bool
    copy_unsafe_links: bool
    keep_dirlinks: bool
    crtimes: bool  # (refused, as -N is by rsync on Linux)
    copy_devices: bool
    safe_links: bool
    perms: bool
    times: bool
    group: bool
    owner: bool
    devices: bool
    specials: bool
    hard_links: bool
    acls: bool
    xattrs: bool
    sparse: bool
    executability: bool
    prune_empty_dirs: bool
    one_file_system: bool
    relative: bool
    dry_run: bool
    checksum: bool
    whole_file: bool
    update: bool
    existing: bool
    ignore_existing: bool
    ignore_missing_args: bool
    delete_missing_args: bool
    ignore_errors: bool
    cvs_exclude: bool
    inc_recursive: bool
    size_only: bool
    ignore_times: bool
    modify_window: int
    delete: bool
    delete_before: bool
    delete_during: bool
    delete_after: bool
    delete_delay: bool
    delete_excluded: bool
    force: bool
    max_delete: int
    exclude: Paths
    include: Paths
    exclude_from: Paths
    include_from: Paths
    filter: str | Sequence[str]
    files_from: PathArg
    from0: bool
    min_size: str | int
    max_size: str | int
    partial: bool
    partial_dir: PathArg
    temp_dir: PathArg
    preallocate: bool
    open_noatime: bool
    inplace: bool
    append: bool
    append_verify: bool
    block_size: str | int
    backup: bool
    backup_dir: PathArg
    suffix: str
    link_dest: Paths
    compare_dest: Paths
    copy_dest: Paths
    fuzzy: int
    no_fuzzy: bool
    numeric_ids: bool
    super: bool
    fake_super: bool
    chmod: str | Sequence[str]
    chown: str
    usermap: str
    groupmap: str
    mkpath: bool
    omit_dir_times: bool
    human_readable: int  # a count of -h, as on the command line
    no_human_readable: bool
    omit_link_times: bool
    delay_updates: bool
    remove_source_files: bool
    list_only: bool
    itemize_changes: int
    stats: bool
    log_file: PathArg
    log_file_format: str
    fsync: bool
    write_mode: Literal["auto", "direct", "splice", "buffered"]
    rsh: str
    zcsync_path: str
    remote_option: str | Sequence[str]
    rsync_path: str
    ssh_accept_new: bool
    compress: bool
    compress_choice: str
    compress_level: int
    skip_compress: str
    bwlimit: str | int
    progress: bool
    info: str
    stderr: str  # (checked; sync() prints nothing on stdout for it to move)
    msgs2stderr: bool
    progress_always: bool
    out_format: str
    json: bool
    port: int
    password_file: PathArg
    transport: str
    timeout: int
    contimeout: int
    stop_after: str | int
    stop_at: str
    address: str
    ipv4: bool
    ipv6: bool
    no_motd: bool
    max_alloc: str  # (checked as rsync checks it; zcsync's buffers stay far below)
    trust_sender: bool  # (accepted: every name a sender sends is checked anyway)
    blocking_io: bool  # (accepted: zcsync polls its pipes)
    secluded_args: bool
    checksum_choice: str


@dataclass(frozen=True)
class _Keyword:
    option: str  # "--dry-run"
    negative: str | None  # "--no-perms" for flags that have one
    kind: str  # "flag" | "count" | "multiple" | "value"


@functools.cache
def keywords() -> Mapping[str, _Keyword]:
    """sync()'s keyword names, derived from the command line's long options."""
    import click

    from .cli import command
    table: dict[str, _Keyword] = {}
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in ("version", "outbuf"):
            continue
        longs = [o for o in param.opts if o.startswith("--")]
        if not longs:
            continue  # -D, -F, -P: their long forms cover them
        kind = ("count" if param.count else "flag" if param.is_flag
                else "multiple" if param.multiple else "value")
        negative = param.secondary_opts[0] if param.secondary_opts else None
        table[longs[0][2:].replace("-", "_")] = _Keyword(longs[0], negative, kind)
    return MappingProxyType(table)


def _text(key: str, value: object) -> str:
    if isinstance(value, (str, os.PathLike)):
        return os.fsdecode(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise UsageError(f"Option {key}= takes a string, not {type(value).__name__}")


def option_args(options: Mapping[str, object]) -> list[str]:
    """Command-line arguments for sync()'s keyword options, in the order they were given
    (filter rules from exclude=, include= and filter= apply in that order, as on the command line)."""
    table = keywords()
    args: list[str] = []
    for key, value in options.items():
        spec = table.get(key)
        if spec is None:
            import difflib
            close = difflib.get_close_matches(key, table, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"Unknown option {key!r}{hint}")
        if value is None:
            continue
        if spec.kind == "flag":
            if not isinstance(value, bool):
                raise UsageError(f"Option {key}= takes True or False, not {value!r}")
            if value:
                args.append(spec.option)
            elif spec.negative is not None:
                args.append(spec.negative)
        elif spec.kind == "count":
            if not isinstance(value, int) or value < 0:
                raise UsageError(f"Option {key}= takes True, False or a count, not {value!r}")
            args.extend([spec.option] * int(value))
        elif spec.kind == "multiple":
            values = [value] if isinstance(value, (str, os.PathLike)) else value
            if not isinstance(values, Iterable):
                raise UsageError(f"Option {key}= takes a string or a list of strings, not {value!r}")
            args.extend(f"{spec.option}={_text(key, v)}" for v in values)
        else:
            args.append(f"{spec.option}={_text(key, value)}")
    return args


def parse_options(options: Mapping[str, object]) -> Options:
    """Options for sync()'s keywords, built exactly as the command line builds them."""
    import click

    from .cli import build_options, command
    args = option_args(options)
    try:
        ctx = command.make_context("zcsync", args)
        kw = dict(ctx.params)
        kw.pop("paths", None)
        kw.pop("version", None)
        return build_options(ctx, kw)
    except click.ClickException as exc:
        raise UsageError(exc.format_message()) from None


def _operands(src: Paths, dst: PathArg | None) -> list[str]:
    sources = [src] if isinstance(src, (str, os.PathLike)) else list(src)
    if not sources:
        raise UsageError("No source given")
    paths = [_text("src", s) for s in sources]
    if dst is not None:
        paths.append(_text("dst", dst))
    return paths


def sync(src: Paths, dst: PathArg | None, **options: Unpack[SyncOptions]) -> SyncResult:
    """Replicate src into dst like `zcsync [options] src dst`; keyword names follow the long options.

    src is one source or a list of them, with rsync's trailing-slash rule; either side may
    be remote (`host:path`). Fatal problems raise zcsync.ZcsyncError subclasses (each has
    .exit_code; UsageError for an unknown or invalid option); per-file problems are in
    SyncResult.errors and decide SyncResult.exit_code. Safe to call from several threads
    at once: each call has its own report, counters and (optional) log file.
    """
    from .progress import Progress

    opts = parse_options(options)
    paths = _operands(src, dst)
    events: list[Event] = []
    runlog = RunLog.open(opts, transfer_op(paths)) if opts.log_file and len(paths) > 1 and not opts.list_only \
        else None

    def on_event(event: Event) -> None:
        events.append(event)
        if runlog is not None:
            runlog.event(event)
    progress = Progress.for_options(opts, sys.stderr, push=is_push(paths))
    hooks = Hooks(on_event=on_event, progress=progress,
                  on_problem=runlog.problem if runlog is not None else None)
    listing = io.StringIO() if opts.list_only or len(paths) == 1 else None
    try:
        try:
            result = run_paths(paths, opts, on_event=hooks, out=listing)
        finally:
            if progress is not None:
                progress.close()
    except ZcsyncError as exc:
        if runlog is not None:
            runlog.error(exc.message)
            runlog.finish(hooks.report.stats if hooks.report else Stats(), exc.exit_code)
            runlog.close()
        raise
    except BaseException:
        if runlog is not None:
            runlog.close()
        raise
    if runlog is not None:
        runlog.finish(result.report.stats, result.exit_code)
        runlog.close()
    lines = tuple(listing.getvalue().splitlines()) if listing is not None else ()
    return SyncResult(result.exit_code, result.report.stats, tuple(result.problems), tuple(events), lines)


def _is_pull(paths: list[str]) -> bool:
    return len(paths) > 1 and any(parse_endpoint(p).is_remote for p in paths[:-1])


def is_push(paths: list[str]) -> bool:
    return len(paths) > 1 and parse_endpoint(paths[-1]).is_remote


def transfer_op(paths: list[str]) -> str:
    """rsync's %o for this side: "recv" when pulling from a remote source, else "send"."""
    return "recv" if _is_pull(paths) else "send"


def run_paths(paths: list[str], opts: Options, on_event: Callable[[Event], None] | None = None,
              out: TextIO | None = None) -> RunResult:
    """Run a transfer (or a listing) for operands SRC... [DST] as the command line gives them.

    on_event may be a zcsync.stats.Hooks (events, problems, progress) for the run's Report.
    """
    with _time_limit(opts.stop_at):
        return _run_paths(paths, opts, on_event, out)


@contextlib.contextmanager
def _time_limit(stop_at: int | None) -> Iterator[None]:
    """--stop-after/--stop-at: at stop_at the run ends with exit 30, as rsync's does. The limit
    is the client's alone (rsync does not tell the remote side either); it arrives as SIGALRM,
    so the run ends as on SIGTERM: the file in flight is dropped (or kept with --partial)."""
    if stop_at is None:
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise Timeout("stopping at requested limit (--stop-after/--stop-at)")

    try:
        previous = signal.signal(signal.SIGALRM, expire)
    except ValueError:  # not the main thread
        raise UsageError("--stop-after and --stop-at work only in the main thread (they use SIGALRM)") from None
    try:
        signal.setitimer(signal.ITIMER_REAL, max(stop_at - time.time(), 0.001))
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _run_paths(paths: list[str], opts: Options, on_event: Callable[[Event], None] | None,
               out: TextIO | None) -> RunResult:
    started = time.monotonic()
    if len(paths) == 1:
        endpoint = parse_endpoint(paths[0])
        if endpoint.kind == "daemon" and not endpoint.module:  # `zcsync host::`: the module list
            if opts.transport:
                raise UsageError(f"--transport={opts.transport} cannot be used with a zcsync daemon")
            from .connect import format_module_list, list_modules
            (out or sys.stdout).write(format_module_list(list_modules(endpoint, opts)))
            return RunResult(0, Report(), [])
        if endpoint.is_remote:  # `zcsync host:path`: list the remote tree, as rsync does
            from .connect import list_remote
            return list_remote(endpoint, opts, out or sys.stdout, on_event)
    if len(paths) == 1 or opts.list_only:
        sources = paths if len(paths) == 1 else paths[:-1]  # rsync lists the sources and ignores DST
        if any(parse_endpoint(p).is_remote for p in sources):
            from .connect import list_remote_sources
            return list_remote_sources(sources, opts, out or sys.stdout, on_event)
        return list_only(sources, opts, out or sys.stdout, on_event)
    *sources, dest = paths
    if not sources:
        raise UsageError("No source given")
    remote = any(parse_endpoint(p).is_remote for p in paths)
    if opts.transport and not remote:
        raise UsageError(f"--transport={opts.transport} needs a remote host:path location")
    if remote:
        from .connect import run_remote
        result = run_remote(paths, opts, on_event=on_event)
    else:
        result = run_local(sources, dest, opts, on_event=on_event)
    s = result.report.stats
    if not s.elapsed_s:
        s.elapsed_s = time.monotonic() - started
    if not remote and not s.bytes_sent:
        # Local: what the sending role handed the receiving one (file data and file list),
        # so that --stats, --json and the library report the same figure.
        s.bytes_sent = s.literal_bytes + s.flist_size
    return result


def list_only(sources_text: list[str], opts: Options, out: TextIO,
              on_event: Callable[[Event], None] | None = None) -> RunResult:
    """rsync's listing mode: print the file list in `ls -l` style instead of copying."""
    if not opts.recursive:
        opts = opts.replace(dirs=True)
    filters = FilterRules.parse(opts.filter_rules, delete_excluded=opts.delete_excluded)
    report = Report(on_event=on_event)
    scanner = Scanner(source_args(sources_text, opts), opts.replace(links=True, devices=True, specials=True),
                      filters, ScanState(on_problem=report.problem, on_notice=report.notice))
    listing = Listing(out, show_links=opts.links, human=opts.human_readable)
    batches = scanner.batches()
    if opts.prune_empty_dirs:
        batches = prune_empty_dirs(batches, filters)
    for batch in batches:
        listing.batch(batch.dir_name, batch.entries, batch.expanded)
    listing.finish()
    return RunResult(report.exit_code, report, report.problems)
