"""Transfer progress on stderr with tqdm: a bar per file (--progress) or one for the run
(--info=progress2: bytes, rate, ETA).

Where the numbers come from (Report.on_progress is None unless a display is on, so a
run without one does no progress work at all):

- total: the sizes of the files whose data is requested (the transfer events), so a
  resumed run goes from 0 to 100 %; the file list streams, so the total grows as
  batches arrive.
- done: the writer wraps each file's data source (Writer.write); a file counts when
  its data is written. While a file is being written, a ticker thread reads the size
  of its temp file about ten times a second, so a big local copy or a pulled file
  moves the bar while it is copied (granularity: whatever the copy loop has written).
- a push has no writer on this side: its bar moves per file, from the bytes the
  sending role has counted, and per chunk once that role calls advance().

All drawing happens on the ticker thread (at most 1/interval times a second) or when
a per-file bar opens and closes; the writer's own cost is a lock and a few additions
per file. tqdm is imported only where something is drawn: it costs a run without a
display ~15 ms of start-up.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Self, TextIO

from .pathnames import escape

if TYPE_CHECKING:
    from .options import Options
    from .stats import Event, Report
    from .writer import DataSource

FILE = "file"  # --progress, -P
TOTAL = "total"  # --info=progress2
NAME_WIDTH = 40
WATCH_SIZE = 4 << 20  # files at least this big are watched while they are written


def wanted(opts: Options, stream: TextIO) -> bool:
    """Is a progress display asked for and allowed: a terminal, or --progress-always?

    Never in a dry run, a listing or with -q; never into a pipe or cron's mail unless
    --progress-always says so.
    """
    if opts.progress is None or opts.dry_run or opts.list_only or opts.quiet:
        return False
    return opts.progress_always or _isatty(stream)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class Progress:
    """A progress display for one run (a ProgressSink: see zcsync.stats)."""

    def __init__(self, mode: str, stream: TextIO | None = None, *, push: bool = False,
                 interval: float = 0.1) -> None:
        if mode not in (FILE, TOTAL):
            raise ValueError(f"progress mode must be {FILE!r} or {TOTAL!r}, not {mode!r}")
        # A push has no per-file writes on this side to draw per-file bars from.
        self.mode = TOTAL if push else mode
        self.stream = stream if stream is not None else sys.stderr
        self.push = push
        self.interval = interval
        self.total = 0  # bytes of the files requested so far
        self.done = 0  # bytes of the files written completely
        self.files = 0  # files written (rsync's xfr#)
        self._lock = threading.Lock()
        self._current: _Tracked | None = None
        self._bar: Any = None  # the run's bar (TOTAL mode), made on the ticker thread
        self._report: Report | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._ncols = _columns(self.stream) or 80

    @classmethod
    def for_options(cls, opts: Options, stream: TextIO | None = None, *, push: bool = False) -> Progress | None:
        """The display opts ask for, or None (see wanted())."""
        stream = stream if stream is not None else sys.stderr
        if not wanted(opts, stream):
            return None
        assert opts.progress is not None
        return cls(opts.progress, stream, push=push)

    # -- ProgressSink ---------------------------------------------------------------
    def attach(self, report: Report) -> None:
        self._report = report
        self._start()

    def requested(self, event: Event) -> None:
        with self._lock:
            self.total += event.size

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.done += nbytes

    def track(self, name: bytes, source: DataSource) -> DataSource:
        self._start()
        return _Tracked(self, name, source)

    # -- output -----------------------------------------------------------------------
    def write_above(self, line: str, out: TextIO) -> None:
        """Write a line to out (stdout) without tearing the bars on the same terminal."""
        from tqdm import tqdm
        with tqdm.external_write_mode(file=out):
            out.write(line + "\n")
            out.flush()

    def close(self) -> None:
        """Stop the ticker and leave the bars in their final state."""
        self._stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join()
        with self._lock:
            if self.mode == TOTAL and (self._bar is not None or self.total or self.done):
                self._draw()
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer's side (through _Tracked) --------------------------------------
    def _begin(self, tracked: _Tracked, fd: int) -> None:
        base = -1
        if tracked.size >= WATCH_SIZE:  # smaller files are done before the next tick
            try:
                base = os.fstat(fd).st_size
            except OSError:
                pass
        with self._lock:
            # A file that already has data (--inplace) cannot show its progress by its size.
            tracked.fd = fd if base == 0 else None
            self._current = tracked
            if self.mode == FILE:
                tracked.started = time.monotonic()
                if tracked.bar is not None:  # written a second time (verification retry)
                    tracked.bar.close()
                    tracked.bar = None
                if tracked.size >= WATCH_SIZE:  # a live bar; a small file gets its final line only
                    tracked.bar = self._new_bar(tracked.size, _short(tracked.name), leave=True)

    def _end(self, tracked: _Tracked, ok: bool) -> None:
        with self._lock:
            if self._current is tracked:
                self._current = None
            tracked.fd = None
            if ok and not tracked.counted:
                tracked.counted = True
                self.done += tracked.size
                self.files += 1
            bar = tracked.bar
            if bar is not None:
                tracked.bar = None
                if ok:
                    bar.set_postfix_str(f"xfr#{self.files}", refresh=False)
                    bar.n = tracked.size
                bar.close()
            elif ok and self.mode == FILE:
                self._final_line(tracked)

    def _final_line(self, tracked: _Tracked) -> None:
        """A small file's line, as its bar would end (no tqdm object per file: 10x cheaper)."""
        from tqdm import tqdm
        line = tqdm.format_meter(tracked.size, tracked.size, time.monotonic() - tracked.started,
                                 ncols=self._ncols, prefix=_short(tracked.name), unit="B", unit_scale=True,
                                 unit_divisor=1024, postfix=f"xfr#{self.files}")
        with tqdm.get_lock():
            self.stream.write(line + "\n")
            self.stream.flush()

    # -- the ticker -------------------------------------------------------------------
    def _start(self) -> None:
        if self._ticker is None:
            with self._lock:
                if self._ticker is None:
                    self._ticker = threading.Thread(target=self._tick, name="zcsync-progress", daemon=True)
                    self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                self._draw()

    def _inflight(self) -> int:
        """Bytes of the file being written so far (from its temp file's size); lock held."""
        current = self._current
        if current is None or current.fd is None:
            return 0
        try:
            size = os.fstat(current.fd).st_size
        except OSError:
            return 0
        return min(max(size, 0), current.size)

    def _draw(self) -> None:
        """Bring the bars up to date; lock held."""
        inflight = self._inflight()
        if self.mode == FILE:
            current = self._current
            if current is not None and current.bar is not None and inflight > current.bar.n:
                current.bar.update(inflight - current.bar.n)
            return
        done = self.done + inflight
        if self.push and self._report is not None:
            # Data bytes per file while sending; at the very end the wire total: cap it.
            done = max(done, min(self._report.stats.bytes_sent, self.total))
        total = max(self.total, done)
        if self._bar is None:
            if not total:
                return
            self._bar = self._new_bar(total, None, leave=True)
        bar = self._bar
        if total != bar.total:
            bar.total = total
        bar.set_postfix_str(f"xfr#{self.files}", refresh=False)
        if done > bar.n:
            bar.update(done - bar.n)
        else:
            bar.refresh()

    def _new_bar(self, total: int, desc: str | None, leave: bool) -> Any:
        from tqdm import tqdm
        # A terminal that reports no size (a fresh pty, some serial consoles) gets 80x24:
        # tqdm draws nothing at all into 0 rows.
        sized = _columns(self.stream) > 0
        return tqdm(total=total, desc=desc, file=self.stream, leave=leave, unit="B", unit_scale=True,
                    unit_divisor=1024, dynamic_ncols=sized, ncols=None if sized else 80,
                    nrows=None if sized else 24, mininterval=0, miniters=1, smoothing=0.1)


class _Tracked:
    """A file's data source as the progress display sees it (what the writer hook wraps)."""

    __slots__ = ("bar", "counted", "fd", "name", "progress", "source", "started")

    def __init__(self, progress: Progress, name: bytes, source: DataSource) -> None:
        self.source = source
        self.progress = progress
        self.name = name
        self.fd: int | None = None
        self.bar: Any = None
        self.counted = False
        self.started = 0.0

    @property
    def size(self) -> int:
        return self.source.size

    def write_into(self, fd: int, sparse: bool) -> bytes:
        self.progress._begin(self, fd)
        ok = False
        try:
            digest = self.source.write_into(fd, sparse)
            ok = True
            return digest
        finally:
            self.progress._end(self, ok)

    def digest(self) -> bytes:
        return self.source.digest()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.source, attr)


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 0


def _short(name: bytes) -> str:
    text = escape(name)
    return text if len(text) <= NAME_WIDTH else "…" + text[-(NAME_WIDTH - 1):]
