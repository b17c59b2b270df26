"""The library API (`zcsync.sync`) and the dispatch shared with the command line."""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from . import meta
from .endpoints import parse_endpoint
from .engine import RunResult, run_local, source_args
from .errors import FileProblem, UsageError
from .filters import FilterRules
from .flist import Scanner, ScanState
from .options import Options, from_mapping
from .pathnames import escape
from .stats import Event, Stats


@dataclass(frozen=True)
class SyncResult:
    """The outcome of one sync: rsync's exit code, the counters, and per-file problems."""

    exit_code: int
    stats: Stats
    errors: tuple[FileProblem, ...] = field(default_factory=tuple)
    events: tuple[Event, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def sync(src: str | list[str], dst: str, **options: Any) -> SyncResult:
    """Replicate src into dst like `zcsync [options] src dst`; keyword names follow the long options.

    Fatal problems raise zcsync.ZcsyncError subclasses (each has .exit_code); per-file
    problems are in SyncResult.errors and decide SyncResult.exit_code.
    """
    sources = [src] if isinstance(src, str) else list(src)
    for key in ("exclude", "include"):
        if key in options:
            value = options.pop(key)
            patterns = [value] if isinstance(value, str) else list(value)
            sign = "-" if key == "exclude" else "+"
            options["filter_rules"] = tuple(options.get("filter_rules", ())) + \
                tuple(FilterRules.old_style(p, sign) for p in patterns)
    if "filter" in options:
        value = options.pop("filter")
        options["filter_rules"] = tuple(options.get("filter_rules", ())) + \
            ((value,) if isinstance(value, str) else tuple(value))
    if "itemize_changes" in options:
        options["itemize"] = options.pop("itemize_changes")
    opts = from_mapping(options)
    events: list[Event] = []
    result = run_paths(sources + [dst], opts, on_event=events.append)
    return SyncResult(result.exit_code, result.report.stats, tuple(result.problems), tuple(events))


def run_paths(paths: list[str], opts: Options, on_event: Callable[[Event], None] | None = None,
              out: TextIO | None = None) -> RunResult:
    """Run a transfer (or a listing) for operands SRC... [DST] as the command line gives them."""
    if len(paths) == 1 or opts.list_only:
        sources = paths if len(paths) == 1 else paths[:-1] if not opts.list_only else paths
        return list_only(sources, opts, out or sys.stdout)
    *sources, dest = paths
    if not sources:
        raise UsageError("No source given")
    if any(parse_endpoint(p).is_remote for p in paths):
        from .connect import run_remote
        return run_remote(paths, opts, on_event=on_event)
    return run_local(sources, dest, opts, on_event=on_event)


def list_only(sources_text: list[str], opts: Options, out: TextIO) -> RunResult:
    """rsync's listing mode: print the file list in `ls -l` style instead of copying."""
    from .stats import Report

    if not opts.recursive:
        opts = opts.replace(dirs=True)
    filters = FilterRules.parse(opts.filter_rules, delete_excluded=opts.delete_excluded)
    report = Report()
    scanner = Scanner(source_args(sources_text, opts), opts.replace(links=True, devices=True, specials=True),
                      filters, ScanState(on_problem=report.problem), keep_paths=False)
    for batch in scanner.batches():
        for e in batch.entries:
            link = escape(e.link) if e.link is not None else None
            out.write(meta.list_line(e.mode, e.size, e.mtime_ns // 1_000_000_000, escape(e.name),
                                     link_target_escaped=link) + "\n")
    return RunResult(report.exit_code, report, report.problems)
