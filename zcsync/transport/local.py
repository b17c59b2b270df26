"""Local transport: both roles in one process; file data moves as a file-range reference.

The roles are driven by direct calls in one thread rather than through queues: for
trees of small files a thread handoff per message costs more than the copy itself.
The messages are the same values the stream transports frame.
"""
from __future__ import annotations

import os

from .. import fastio
from ..errors import VANISHED, FileProblem
from ..generator import Generator
from ..pathnames import escape
from ..sender import Sender, SourceChanged
from ..stats import Report
from ..writer import Writer


class LocalFile:
    """A DataSource that is an open local file: the writer copies it with the zero-copy ladder."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def write_into(self, fd: int, sparse: bool) -> bytes:
        try:
            fastio.copy_data(self.fd, fd, self.size, sparse=sparse)
        except fastio.SourceChanged:
            raise SourceChanged("file has changed during the transfer", VANISHED) from None
        return fastio.file_digest(fd, self.size)

    def digest(self) -> bytes:
        try:
            return fastio.file_digest(self.fd, self.size)
        except fastio.SourceChanged:
            raise SourceChanged("file has changed during the transfer", VANISHED) from None


def run(sender: Sender, generator: Generator, writer: Writer, report: Report) -> None:
    """Drive sender, generator and writer over the whole file list."""
    opts = generator.opts
    batches = sender.batches()
    if opts.delete and opts.delete_mode == "before":
        batches = list(batches)
        generator.delete_all(batches)
    stats = report.stats
    for batch in batches:
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
        for request in generator.process(batch):
            try:
                fd = sender.open(request.entry)
            except SourceChanged as exc:
                report.problem(FileProblem(escape(request.dest_name), str(exc), exc.code))
                continue
            try:
                if writer.write(request, LocalFile(fd, request.entry.size)):
                    stats.literal_bytes += request.entry.size
            except SourceChanged as exc:
                report.problem(FileProblem(escape(request.dest_name), str(exc), exc.code))
            finally:
                os.close(fd)
    writer.finish_delayed()
    generator.finish()
