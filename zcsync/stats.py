"""Run statistics, the per-run report (itemize events, problems, exit code), and how events
become lines: rsync's --out-format escapes and its --log-file."""
from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import IO, TYPE_CHECKING, Protocol

from . import errors
from .errors import FileProblem

if TYPE_CHECKING:
    from .options import Options
    from .writer import DataSource

log = logging.getLogger("zcsync")

# What each exit code means, in rsync's words (its "rsync error: ..." line).
EXIT_TEXT = {
    errors.USAGE: "syntax or usage error",
    errors.PROTOCOL: "protocol incompatibility",
    errors.FILE_SELECT: "errors selecting input/output files, dirs",
    errors.STARTUP: "error starting client-server protocol",
    errors.SOCKET_IO: "error in socket IO",
    errors.FILE_IO: "error in file IO",
    errors.STREAM: "error in rsync protocol data stream",
    errors.SIGNAL: "received SIGINT, SIGTERM, or SIGHUP",
    errors.PARTIAL: "some files/attrs were not transferred (see previous errors)",
    errors.VANISHED: "some files vanished before they could be transferred",
    errors.MAX_DELETE: "the --max-delete limit stopped deletions",
    errors.TIMEOUT: "timeout in data send/receive",
    errors.CONNECT_TIMEOUT: "timeout waiting for daemon connection",
    errors.REMOTE_NOT_FOUND: "remote command not found",
}


def exit_text(code: int) -> str:
    return EXIT_TEXT.get(code, "unexplained error")


@dataclass
class Stats:
    """Counters in rsync's --stats vocabulary."""

    files: int = 0
    regular_files: int = 0
    dirs: int = 0
    links: int = 0
    devices: int = 0  # character and block devices
    specials: int = 0  # fifos and sockets
    files_created: int = 0
    created_kinds: dict[str, int] = field(default_factory=dict)  # "reg", "dir", "link", "dev", "special"
    files_deleted: int = 0
    files_transferred: int = 0
    total_size: int = 0
    transferred_size: int = 0
    literal_bytes: int = 0
    matched_bytes: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    flist_size: int = 0
    elapsed_s: float = 0.0

    def created(self, mode: int) -> None:
        """Count one created name by type (rsync's "Number of created files" line)."""
        kind = ("reg" if stat.S_ISREG(mode) else "dir" if stat.S_ISDIR(mode)
                else "link" if stat.S_ISLNK(mode) else "dev" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "special")
        self.files_created += 1
        self.created_kinds[kind] = self.created_kinds.get(kind, 0) + 1

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


NOTICE = "*notice"  # the itemize field of an Item that carries a Report.notice line


@dataclass(frozen=True)
class Event:
    """One line of -i / -v output: what happened to a name."""

    itemize: str  # rsync's YXcstpoguax string, or "*deleting" and the like
    name: str  # escaped, directories with a trailing "/"
    extra: str = ""  # " -> target" for symlinks, " => target" for hard links
    size: int = 0
    mtime_ns: int | None = None  # the entry's modification time, where the role knows it (%M)

    @property
    def is_deletion(self) -> bool:
        return self.itemize == "*deleting"

    @property
    def is_transfer(self) -> bool:
        """Does file data move for this item (rsync's ITEM_TRANSFER: '<' or '>')?"""
        return self.itemize[:1] in ("<", ">")


class ProgressSink(Protocol):
    """Where the roles report file data as it moves (zcsync.progress.Progress draws it)."""

    def track(self, name: bytes, source: DataSource) -> DataSource:
        """The writer is about to write name from source: return a source that reports progress."""

    def advance(self, nbytes: int) -> None:
        """nbytes more of file data moved (a sending role that has no writer)."""

    def requested(self, event: Event) -> None:
        """A file's data was asked for: the total grows by its size."""

    def attach(self, report: Report) -> None:
        """The run's Report exists (for counters the sink may poll)."""


@dataclass
class Hooks:
    """What a caller wants to hear during one run.

    Passed where the engine takes an on_event callable (run_local, run_remote): the run's
    Report picks up the event callback, a problem observer, the progress sink, and
    records itself in .report, so that a caller still has the counters and problems
    when the run ends in an exception. Nothing here is shared between runs.
    """

    on_event: Callable[[Event], None] | None = None
    on_problem: Callable[[FileProblem], None] | None = None
    progress: ProgressSink | None = None
    on_notice: Callable[[str], None] | None = None  # Report.notice's lines
    report: Report | None = None

    def __call__(self, event: Event) -> None:
        if self.on_event is not None:
            self.on_event(event)


@dataclass
class Report:
    """Collects events and problems from every role; thread-safe; decides the exit code."""

    on_event: Callable[[Event], None] | None = None
    forward: Callable[[FileProblem], None] | None = None  # server side: send problems to the client
    stats: Stats = field(default_factory=Stats)
    problems: list[FileProblem] = field(default_factory=list)
    exit_code: int = 0
    on_problem: Callable[[FileProblem], None] | None = None  # an observer besides the log
    on_progress: ProgressSink | None = None  # None unless a progress display is on
    on_notice: Callable[[str], None] | None = None  # see notice(); a server forwards them
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        hooks = self.on_event
        if isinstance(hooks, Hooks):
            hooks.report = self
            self.on_event = hooks.on_event
            if hooks.on_problem is not None:
                self.on_problem = hooks.on_problem
            if hooks.on_notice is not None:
                self.on_notice = hooks.on_notice
            if hooks.progress is not None:
                self.on_progress = hooks.progress
                # Its total comes from the transfer events, so they must be made.
                self.on_event = hooks.on_event or _ignore
                hooks.progress.attach(self)

    def event(self, event: Event) -> None:
        if self.on_event is not None:
            with self._lock:
                if self.on_progress is not None and event.is_transfer:
                    self.on_progress.requested(event)
                try:
                    self.on_event(event)
                except OSError as exc:
                    # Where the items go (a closed stdout, say) is not the file's problem:
                    # stop showing them and let the transfer finish.
                    log.warning("cannot show the list of changes any more: %s", exc.strerror or exc)
                    self.on_event = None

    def note(self, text: str) -> None:
        """An informational line for the user (rsync prints these with -v or -i)."""
        self.event(Event("", text))

    def notice(self, text: str) -> None:
        """A line rsync prints even without -v (a skipped name, a directory that deletion left
        in place): to on_notice (the command line's stdout, unless -q), else the log."""
        if self.on_notice is not None:
            self.on_notice(text)
        else:
            log.info("%s", text)

    def problem(self, problem: FileProblem) -> None:
        """Record (and log, or forward to the client) a per-file problem; the run goes on.

        The log is the "zcsync" logger: the command line shows it on stderr; the library
        stays quiet unless the calling program configured logging.
        """
        if self.forward is not None:
            self.forward(problem)
        else:
            log.error("%s", problem.message)
            if self.on_problem is not None:
                self.on_problem(problem)
        with self._lock:
            self.problems.append(problem)
            self.exit_code = errors.worst(self.exit_code, problem.code)

    def outcome(self, code: int) -> None:
        with self._lock:
            self.exit_code = errors.worst(self.exit_code, code)


def _ignore(event: Event) -> None:
    return None


# -- which items get a line --------------------------------------------------------

def significant(event: Event) -> bool:
    """Would rsync name this item without %i in the format (-v, --out-format=%n)?

    Transfers, local changes (new directories, symlinks, devices; changed symlinks),
    hard links, and directories with any change; not attribute-only changes of files.
    """
    kind = event.itemize[:1]
    if kind in ("<", ">", "c", "h"):
        return True
    return event.itemize[1:2] == "d" and event.itemize[2:].strip(". ") != ""


# -- rsync's --out-format / --log-file-format escapes -------------------------------

_ESCAPE = re.compile(r"%('*)(-?)(\d*)('*)(.?)", re.DOTALL)
_KNOWN = frozenset("nifltoLMbp%")


def big_num(num: int, humanize: int) -> str:
    """rsync's do_big_num: ' adds thousands separators, '' units of 1000, ''' units of 1024."""
    if humanize > 1:
        mult = 1000 if humanize == 2 else 1024
        if abs(num) >= mult:
            value = num / mult
            units = "KMGTPEZY"
            i = 0
            while abs(value) >= mult and i < len(units) - 1:
                value /= mult
                i += 1
            return f"{value:.2f}{units[i]}"
    return f"{num:,}" if humanize else str(num)


def _timestring(seconds: float) -> str:
    return time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(seconds))


def itemize_text(event: Event) -> str:
    """%i: the 11-character change string; unchanged items show spaces (rsync -ii)."""
    if event.is_deletion:
        return "*deleting  "
    text = event.itemize
    if text[:1] in (".", "h", "c") and text[2:] and set(text[2:]) == {"."}:
        return text[:2] + " " * len(text[2:])
    return text


class LineFormat:
    """An rsync log format (--out-format, --log-file-format): which items it names and how.

    Supported escapes: %n name, %i itemize, %f name without a trailing slash (rsync's
    sender path; zcsync prints the transfer name), %l length, %b bytes of file data
    moved, %t now, %o send/recv/del., %L " -> target" / " => target", %M mtime, %p pid,
    %%; widths (%-10n, %9l) and ' digit grouping (%'l, %''b) as rsync. Others are left
    as written, as rsync does with escapes that do not apply.
    """

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.has_i = self.has("i")
        self.has_o_or_i = self.has_i or self.has("o")

    def has(self, letter: str) -> bool:
        return any(m.group(5) == letter for m in _ESCAPE.finditer(self.fmt))

    def wants(self, event: Event) -> bool:
        """Does an item get a line at all? (with %i: every itemized item; else the significant)."""
        return self.has_i or significant(event)

    def deletion_format(self) -> LineFormat:
        """rsync names a deletion with this format only if it has %o or %i, else "deleting %n"."""
        return self if self.has_o_or_i else DELETING

    def render(self, event: Event, op: str) -> str:
        """The line for event; op is "send" or "recv" (what this side did with file data)."""
        def one(m: re.Match[str]) -> str:
            humanize = len(m.group(1)) + len(m.group(4))
            left, width, letter = m.group(2), m.group(3), m.group(5)
            if letter not in _KNOWN:
                return m.group(0)
            if letter == "%":
                return "%"
            if letter == "L":
                if not event.extra:
                    return "    " + _pad("", left, width) if width else ""
                return event.extra[:4] + _pad(event.extra[4:], left, width)
            value = self._value(letter, event, op, humanize)
            return _pad(value, left, width)
        return _ESCAPE.sub(one, self.fmt)

    @staticmethod
    def _value(letter: str, event: Event, op: str, humanize: int) -> str:
        if letter == "n":
            return event.name
        if letter == "i":
            return itemize_text(event)
        if letter == "f":
            return event.name.rstrip("/") or "/" if event.name != "./" else "."
        if letter == "l":
            return big_num(0 if event.is_deletion else event.size, humanize)
        if letter == "b":
            return big_num(event.size if event.is_transfer else 0, humanize)
        if letter == "o":
            return "del." if event.is_deletion else op
        if letter == "t":
            return _timestring(time.time())
        if letter == "M":
            seconds = 0 if event.mtime_ns is None else event.mtime_ns // 1_000_000_000
            return _timestring(seconds).replace(" ", "-")
        assert letter == "p"
        return str(os.getpid())


def _pad(value: str, left: str, width: str) -> str:
    """printf's %-Ns / %Ns: the width counts bytes, as rsync's does, not characters."""
    if not width:
        return value
    fill = " " * max(0, int(width) - len(value.encode("utf-8", "surrogateescape")))
    return value + fill if left else fill + value


DELETING = LineFormat("deleting %n")
ITEMIZE_FORMAT = "%i %n%L"  # -i, and rsync's default --log-file-format
VERBOSE_FORMAT = "%n%L"


def stdout_format(opts: Options) -> LineFormat | None:
    """The format of the lines rsync would print on stdout: --out-format, else -i's, else the
    names' (-v, --info=name)."""
    from .info import level
    fmt = opts.out_format or (ITEMIZE_FORMAT if opts.itemize else VERBOSE_FORMAT if level(opts, "NAME") else None)
    return LineFormat(fmt) if fmt else None


# -- --log-file ---------------------------------------------------------------------

class LogFile:
    """rsync's --log-file: `YYYY/MM/DD hh:mm:ss [pid] text` lines; one per run, thread-safe."""

    def __init__(self, path: str) -> None:
        self.path = path
        # Open for the whole run (closed by close()), not per line.
        self._file: IO[str] = open(path, "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def write(self, text: str) -> None:
        stamp = _timestring(time.time())
        with self._lock:
            if not self._file.closed:
                # One flush per line, as rsync: a log tailed during a long run is current.
                self._file.write(f"{stamp} [{self._pid}] {text}\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class RunLog:
    """What one run writes into its --log-file, with rsync's rules: items in
    --log-file-format (default `%i %n%L`; an empty one logs deletions only), deletions
    as "deleting %n" unless it has %o or %i; attribute-only changes of files only when
    stdout itemizes too (-i, or %i in --out-format); in a dry run no transfers
    and no deletions; problems; the end."""

    def __init__(self, logfile: LogFile, op: str, dry_run: bool, fmt: LineFormat, all_items: bool) -> None:
        self.logfile = logfile
        self.op = op
        self.dry_run = dry_run
        self.format = fmt
        self.all_items = all_items

    @classmethod
    def open(cls, opts: Options, op: str) -> RunLog | None:
        """Open opts.log_file; like rsync, a log that cannot be opened is a warning, not an error."""
        assert opts.log_file is not None
        try:
            logfile = LogFile(opts.log_file)
        except OSError as exc:
            log.warning("failed to open log-file %s: %s (%d)", opts.log_file, exc.strerror, exc.errno or 0)
            log.warning("Ignoring --log-file option.")
            return None
        shown = stdout_format(opts)
        items = ITEMIZE_FORMAT if opts.log_file_format is None else opts.log_file_format
        run = cls(logfile, op, opts.dry_run, LineFormat(items), all_items=shown is not None and shown.has_i)
        run.logfile.write("receiving file list" if op == "recv" else "building file list")
        return run

    def event(self, event: Event) -> None:
        if not event.itemize or not (self.format.fmt or event.is_deletion):
            return
        if event.is_deletion or event.is_transfer:
            if self.dry_run:
                return
        elif not (self.all_items or significant(event)):
            return
        fmt = self.format.deletion_format() if event.is_deletion else self.format
        self.logfile.write(fmt.render(event, self.op))

    def error(self, message: str) -> None:
        self.logfile.write(f"zcsync: {message}")

    def problem(self, problem: FileProblem) -> None:
        self.error(problem.message)

    def finish(self, stats: Stats, exit_code: int) -> None:
        """rsync's closing lines: the byte counts, and the error line if the run failed."""
        self.logfile.write(f"sent {stats.bytes_sent} bytes  received {stats.bytes_received} bytes  "
                           f"total size {stats.total_size}")
        if exit_code:
            self.logfile.write(f"zcsync error: {exit_text(exit_code)} (code {exit_code})")

    def close(self) -> None:
        self.logfile.close()
