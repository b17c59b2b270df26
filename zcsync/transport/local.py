"""Local transport: both roles in one process; file data moves as a file-range reference.

The roles are driven by direct calls in one thread rather than through queues: for
trees of small files a thread handoff per message costs more than the copy itself.
The messages are the same values the stream transports frame.

--bwlimit limits the file data of a local copy too, as rsync's does (its sender
writes to the receiver through the same pipe as to a remote one): one RateLimiter,
the one the streams use, paces every source's data. A copy then moves in the
limiter's pieces (an eighth of a second's worth, one copy_file_range each) and never
as a reflink; a delta pays for its literal bytes only (blocks from the basis are
rsync's tokens), a file read whole into memory for its length, before its commit.
Without --bwlimit nothing of this runs.
"""
from __future__ import annotations

import mmap
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterable, Iterator

import xxhash

from .. import delta, fastio, fsscan
from ..compress import RateLimiter
from ..errors import VANISHED, FileProblem
from ..generator import Generator
from ..pathnames import escape, split
from ..sender import Sender, SourceChanged
from ..sink import AUTO, make_sink
from ..flist import DirBatch
from ..stats import Report, Stats
from ..writer import Request, Writer


# Below this size one pread + one write (hashing the buffer in between) costs less
# than copy_file_range plus reading both files back for the digests.
SMALL_FILE = 128 * 1024


class LocalFile:
    """A DataSource that is an open local file: the writer copies it with the zero-copy ladder
    (at pace's rate with --bwlimit)."""

    matched = 0  # --stats: bytes taken from a basis, and bytes copied from the source

    def __init__(self, fd: int, size: int, pace: RateLimiter | None = None) -> None:
        self.fd = fd
        self.size = size
        self.literal = size
        self.pace = pace
        self._digest: bytes | None = None

    def write_into(self, fd: int, sparse: bool) -> bytes:
        if self.size <= SMALL_FILE and not sparse:
            return self._write_small(fd)
        if not sparse:
            try:
                self._digest, written = fastio.copy_verified(self.fd, fd, self.size, self.pace)
            except fastio.SourceChanged:
                raise SourceChanged("file has changed during the transfer", VANISHED) from None
            return written
        try:
            fastio.copy_data(self.fd, fd, self.size, sparse=sparse, pace=self.pace)
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
        if self.pace is not None:
            self.pace.account(len(data))
        self._digest = xxhash.xxh3_128_digest(data)
        return self._digest

    def digest(self) -> bytes:
        if self._digest is not None:
            return self._digest
        try:
            return fastio.file_digest(self.fd, self.size)
        except fastio.SourceChanged:
            raise SourceChanged("file has changed during the transfer", VANISHED) from None


def _changed() -> SourceChanged:
    return SourceChanged("file has changed during the transfer", VANISHED)


class LocalBytes:
    """A DataSource for a small source file read whole in one call (Sender.read): its bytes
    are in memory, so the writer may queue it for the commit thread as it is."""

    matched = 0

    def __init__(self, data: bytes, digest: bytes) -> None:
        self.data = data
        self.size = self.literal = len(data)
        self._digest = digest

    def write_into(self, fd: int, sparse: bool) -> bytes:
        sink = make_sink(fd, AUTO, raw=False, sparse=sparse)
        sink.write(self.data)
        return sink.finish()

    def digest(self) -> bytes:
        return self._digest


class LocalDelta:
    """A DataSource rebuilt from a basis -- the old destination, a partial file an
    interrupted run kept, or (-y) a similar file -- and the source's differing bytes
    (local --no-whole-file).

    The same code as a remote delta: a signature of the basis, the C scan of the source
    against it (in place: keeping to blocks not yet overwritten), and delta.Rebuild,
    which copies block runs with copy_file_range and hashes what it wrote. If the basis
    cannot be used (it changed, or the rebuild does not verify), the file is copied
    whole; a source that shrinks is a vanished file, as for a whole copy.
    """

    def __init__(self, fd: int, size: int, open_basis: Callable[[], int] | None,
                 block_size: int | None = None, pace: RateLimiter | None = None) -> None:
        self.fd = fd
        self.size = size
        self.open_basis = open_basis  # None: in place, the file written is the basis
        self.block_size = block_size
        self.pace = pace
        self.matched = 0
        self.literal = 0
        self._whole = LocalFile(fd, size, pace)
        self._tried = False
        self._scanned: bytes | None = None  # the source's digest, from the scan

    def write_into(self, fd: int, sparse: bool) -> bytes:
        if not self._tried:
            self._tried = True
            digest = self._rebuild(fd)
            if digest is not None:
                return digest
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        # Second call (the rebuild did not verify) or an unusable basis: the whole file.
        self.matched, self.literal = 0, self.size
        self._scanned = None
        return self._whole.write_into(fd, sparse)

    def _rebuild(self, fd: int) -> bytes | None:
        """The delta; None if the basis is unusable."""
        inplace = self.open_basis is None
        try:
            bfd = fd if inplace else self.open_basis()
        except OSError:
            return None
        try:
            try:
                bsize = os.fstat(bfd).st_size
                if bsize == 0:
                    return None
                sig = delta.make_signature(bfd, bsize, self.block_size or delta.block_length(bsize))
            except OSError:
                return None
            try:
                src = mmap.mmap(self.fd, self.size, prot=mmap.PROT_READ)
            except ValueError:  # shorter than the scan saw it
                raise _changed() from None
            with src:
                src.madvise(mmap.MADV_SEQUENTIAL)
                return self._apply(fd, bfd, sig, src, inplace)
        finally:
            if not inplace:
                os.close(bfd)

    def _apply(self, fd: int, bfd: int, sig: delta.Signature, src: mmap.mmap, inplace: bool) -> bytes | None:
        """Scan the source in pieces on a helper thread, rebuilding each piece meanwhile; the
        scan hashes the source as it goes (digest())."""
        scanner = delta.Scanner(src, sig, inplace=inplace, digest=True)
        out = delta.Rebuild(fd, bfd, sig.block_len, sig.size, self.size, inplace=inplace)
        pieces = scanner.ahead()
        try:
            while True:
                try:
                    ops = next(pieces)
                except StopIteration:
                    break
                except delta.SourceChanged:  # the source shrank while mapped
                    raise _changed() from None
                for kind, a, b in delta.iter_ops(ops):
                    if kind == delta.MATCH:
                        try:
                            out.blocks(a, b)
                        except delta.SourceChanged:
                            return None  # the basis shrank under us
                    else:
                        try:
                            _literal(out, self.fd, a, b, self.pace)
                        except delta.SourceChanged:
                            raise _changed() from None
        finally:
            pieces.close()
        self._scanned = scanner.digest()
        self.matched, self.literal = out.matched, out.literal
        return out.digest()

    def digest(self) -> bytes:
        return self._scanned if self._scanned is not None else self._whole.digest()


def _literal(out: delta.Rebuild, fd: int, offset: int, length: int, pace: RateLimiter | None) -> None:
    """Bytes [offset, offset+length) of the source fd come next in out, in pace's pieces."""
    if pace is None:
        out.write_from(fd, offset, length)
        return
    for off, n in pace.pieces(offset, length):
        out.write_from(fd, off, n)


class LocalAppend:
    """A DataSource for --append: only the source's bytes past the destination's length are
    written, after the ones already there (the writer has the destination open in place).
    With --append-verify the digest covers the whole file; a mismatch copies it whole."""

    matched = 0

    def __init__(self, fd: int, size: int, offset: int, verify: bool, pace: RateLimiter | None = None) -> None:
        self.fd = fd
        self.size = size
        self.offset = offset
        self.verify = verify
        self.pace = pace
        self.literal = size - offset
        self._whole = LocalFile(fd, size, pace)
        self._tried = False
        self._digest: bytes | None = None

    def write_into(self, fd: int, sparse: bool) -> bytes:
        if self._tried:
            self.literal += self.size
            self._digest = None
            return self._whole.write_into(fd, sparse)
        self._tried = True
        out = delta.Rebuild(fd, None, 1, 0, self.size, start=self.offset, hash_head=self.verify)
        try:
            _literal(out, self.fd, self.offset, self.size - self.offset, self.pace)
        except delta.SourceChanged:
            raise _changed() from None
        if not self.verify:
            self._digest = out.digest()  # what was read is what was written
        return out.digest()

    def digest(self) -> bytes:
        return self._digest if self._digest is not None else self._whole.digest()


def _whole(writer: Writer, request: Request) -> bool:
    """Is this file copied whole: not appended (--append), not rebuilt from a basis
    (--no-whole-file; local copies are whole by default, as in rsync)?"""
    opts = writer.opts
    size = request.entry.size
    st = request.existing
    in_place = opts.inplace and st is not None and stat.S_ISREG(st.st_mode)
    if opts.append and in_place and 0 < st.st_size < size:  # type: ignore[union-attr]
        return False
    if opts.whole_file is not False or size == 0:
        return True
    if in_place:
        return not st.st_size  # type: ignore[union-attr]
    if request.partial is not None or request.basis is not None:
        return False
    return not (st is not None and stat.S_ISREG(st.st_mode) and st.st_size)


def local_source(writer: Writer, request: Request, fd: int,
                 pace: RateLimiter | None = None) -> LocalFile | LocalDelta | LocalAppend:
    """How the writer gets this file's data from the open source: copied whole, appended
    (--append), or rebuilt from a basis (--no-whole-file); at pace's rate (--bwlimit)."""
    opts = writer.opts
    size = request.entry.size
    st = request.existing
    if _whole(writer, request):
        return LocalFile(fd, size, pace)
    in_place = opts.inplace and st is not None and stat.S_ISREG(st.st_mode)
    if opts.append and in_place and 0 < st.st_size < size:  # type: ignore[union-attr]
        return LocalAppend(fd, size, st.st_size, opts.append_verify, pace)  # type: ignore[union-attr]
    if in_place:
        return LocalDelta(fd, size, None, opts.block_size, pace)
    if request.partial is not None:
        return LocalDelta(fd, size, lambda: writer.open_partial(request.dest_name), opts.block_size, pace)
    if request.basis is not None:  # -y: a similar file of the directory
        basis = request.basis
        return LocalDelta(fd, size, lambda: writer.open_basis(basis), opts.block_size, pace)
    return LocalDelta(fd, size, lambda: _open_dest(writer, request.dest_name), opts.block_size, pace)


def _open_dest(writer: Writer, name: bytes) -> int:
    """The destination file `name` for reading, beneath the destination root, no symlinks."""
    parent, base = split(name)
    fd = fsscan.open_read(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, writer.opts.open_noatime,
                          dir_fd=writer.tree.dir_fd(parent))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(21, "basis is not a regular file")
    return fd


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
    pace = RateLimiter(opts.bwlimit) if opts.bwlimit else None
    if writer.on_commit is None:  # nothing waits for a commit: small files can queue
        writer.commit_in_background()
    for batch in batches:
        count_entries(stats, batch)
        for request in generator.process(batch):
            copy_one(sender, writer, report, request, pace)
        if writer.tree.retired:
            writer.tree.close_retired()  # directory fds evicted while queued commits held them
    writer.flush_commits()
    writer.finish_delayed()
    generator.finish()


def count_entries(stats: Stats, batch: DirBatch) -> None:
    """--stats: count a batch's entries by type (a missing operand as a regular file, as
    rsync counts its mode-0 entries)."""
    for entry in batch.entries:
        stats.files += 1
        if entry.is_reg or entry.is_missing:
            stats.regular_files += 1
            stats.total_size += entry.size
        elif entry.is_dir:
            stats.dirs += 1
        elif entry.is_link:
            stats.links += 1
            stats.total_size += entry.size
        elif stat.S_ISCHR(entry.mode) or stat.S_ISBLK(entry.mode):
            stats.devices += 1
        else:
            stats.specials += 1


def copy_one(sender: Sender, writer: Writer, report: Report, request: Request,
             pace: RateLimiter | None = None) -> None:
    """Read (a small whole file) or open the source the request names, and let the writer
    commit it (its data at pace's rate, with --bwlimit)."""
    fd = -1
    source: LocalBytes | LocalFile | LocalDelta | LocalAppend
    try:
        if request.entry.size <= SMALL_FILE and _whole(writer, request):
            data, digest = sender.read(request.entry)
            if len(data) != request.entry.size:
                raise _changed()  # shrank while read
            source = LocalBytes(data, digest)
            if pace is not None:
                pace.account(len(data))  # as if sent: the commit may run on another thread
        else:
            fd = sender.open(request.entry)
            source = local_source(writer, request, fd, pace)
        if writer.write(request, source):
            report.stats.literal_bytes += source.literal
            report.stats.matched_bytes += source.matched
    except SourceChanged as exc:
        report.problem(FileProblem(escape(request.dest_name), str(exc), exc.code))
    finally:
        if fd != -1:
            os.close(fd)
