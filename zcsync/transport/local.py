"""Local transport: both roles in one process; file data moves as a file-range reference.

The roles are driven by direct calls in one thread rather than through queues: for
trees of small files a thread handoff per message costs more than the copy itself.
The messages are the same values the stream transports frame.
"""
from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator

import xxhash

from .. import fastio
from ..errors import VANISHED, FileProblem
from ..generator import Generator
from ..pathnames import escape
from ..sender import Sender, SourceChanged
from ..flist import DirBatch
from ..stats import Report, Stats
from ..writer import Request, Writer


# Below this size one pread + one write (hashing the buffer in between) costs less
# than copy_file_range plus reading both files back for the digests.
SMALL_FILE = 128 * 1024


class LocalFile:
    """A DataSource that is an open local file: the writer copies it with the zero-copy ladder."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._digest: bytes | None = None

    def write_into(self, fd: int, sparse: bool) -> bytes:
        if self.size <= SMALL_FILE and not sparse:
            return self._write_small(fd)
        if not sparse:
            try:
                self._digest, written = fastio.copy_verified(self.fd, fd, self.size)
            except fastio.SourceChanged:
                raise SourceChanged("file has changed during the transfer", VANISHED) from None
            return written
        try:
            fastio.copy_data(self.fd, fd, self.size, sparse=sparse)
        except fastio.SourceChanged:
            raise SourceChanged("file has changed during the transfer", VANISHED) from None
        return fastio.file_digest(fd, self.size)

    def _write_small(self, fd: int) -> bytes:
        """Read the whole file once; the digest is of exactly the bytes written."""
        data = os.pread(self.fd, self.size + 1, 0)
        if len(data) != self.size:
            raise SourceChanged("file has changed during the transfer", VANISHED)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        self._digest = xxhash.xxh3_128_digest(data)
        return self._digest

    def digest(self) -> bytes:
        if self._digest is not None:
            return self._digest
        try:
            return fastio.file_digest(self.fd, self.size)
        except fastio.SourceChanged:
            raise SourceChanged("file has changed during the transfer", VANISHED) from None


class Ahead:
    """Runs an iterator on a background thread, a bounded number of items ahead.

    The scan's directory reads and stats run in C without the GIL, so reading the next
    directories overlaps with comparing this one; a handoff per directory is cheap.
    """

    _END = object()

    def __init__(self, items: Iterable[DirBatch], depth: int = 32) -> None:
        self._queue: queue.Queue[object] = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(iter(items),), daemon=True,
                                        name="zcsync-scan")
        self._thread.start()

    def _fill(self, items: Iterator[DirBatch]) -> None:
        try:
            for item in items:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(self._END)
        except BaseException as exc:  # handed to the consuming thread
            self._queue.put(exc)

    def __iter__(self) -> Iterator[DirBatch]:
        try:
            while (item := self._queue.get()) is not self._END:
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            self._stop.set()


def run(sender: Sender, generator: Generator, writer: Writer, report: Report,
        batches: Iterable[DirBatch]) -> None:
    """Drive sender, generator and writer over the whole file list, in this thread.

    (Copying on a thread pool was measured slower: per file the work is a dozen short
    syscalls, and handing the GIL back and forth costs more than it overlaps.)
    """
    opts = generator.opts
    if opts.delete and opts.delete_mode == "before":
        batches = list(batches)
        generator.delete_all(batches)
    else:
        # (Reading the destination's stats ahead on that thread too was measured slower:
        # the scan thread became the bottleneck.)
        batches = Ahead(batches)
    stats = report.stats
    for batch in batches:
        count_entries(stats, batch)
        for request in generator.process(batch):
            copy_one(sender, writer, report, request)
    writer.finish_delayed()
    generator.finish()


def count_entries(stats: Stats, batch: DirBatch) -> None:
    """--stats: count a batch's entries by type."""
    for entry in batch.entries:
        stats.files += 1
        if entry.is_reg:
            stats.regular_files += 1
            stats.total_size += entry.size
        elif entry.is_dir:
            stats.dirs += 1
        elif entry.is_link:
            stats.links += 1
            stats.total_size += entry.size
        else:
            stats.specials += 1


def copy_one(sender: Sender, writer: Writer, report: Report, request: Request) -> None:
    """Open the source the request names and let the writer commit it."""
    try:
        fd = sender.open(request.entry)
    except SourceChanged as exc:
        report.problem(FileProblem(escape(request.dest_name), str(exc), exc.code))
        return
    try:
        if writer.write(request, LocalFile(fd, request.entry.size)):
            report.stats.literal_bytes += request.entry.size
    except SourceChanged as exc:
        report.problem(FileProblem(escape(request.dest_name), str(exc), exc.code))
    finally:
        os.close(fd)
