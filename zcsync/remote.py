"""The roles over a Connection: the sending side and the receiving side of a remote transfer.

Both ends run the same code: in a push the client sends and the server receives, in a
pull the other way round (docs/protocol.md, "Message order"). The sending side streams
the file list from one thread and answers requests from another; the receiving side
reads every frame on one thread (writing file data as it arrives) while its generator
works through the file list on a second thread and sends requests.
"""
from __future__ import annotations

import logging
import mmap
import os
import queue
import stat
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TextIO

import xxhash

from . import delta, fastio, fsscan, meta
from .compress import SkipCompress
from .engine import Receiver, make_receiver
from .idmap import OwnerMap
from .errors import PARTIAL, VANISHED, FileProblem, ProtocolError, UsageError
from .filters import FilterRules
from .flist import DirBatch, FileEntry
from .listing import Listing
from .options import Options
from .pathnames import escape, split
from .protocol import (MAX_NAME, Committed, Connection, Data, DataZ, Done, EntryExtras, FileBegin, FileEnd, FilesFrom, FileSkip,
                       FlistBatch, FlistEnd, Goodbye, Heartbeat, Item, Log, Match, Message, Problem, RawData,
                       Request, Requests, Stats, WholeFile, decode_signature, encode_signature, signature_fits)
from .sender import Sender, SourceChanged
from .sink import AUTO, make_sink
from .stats import NOTICE, Event, Report
from .transport.local import count_entries
from .writer import Request as WriteRequest

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes read from a file per DATA frame
# Files at least this big go from the file to a raw socket by sendfile; smaller ones are
# read into the send buffer, where they share system calls with their neighbours.
SENDFILE_MIN = 256 << 10
REQUESTS_AT_ONCE = 64  # whole-file requests the generator thread records under one lock
WHOLE_FILE_OVERHEAD = 20  # a WholeFile payload's index and digest
_NO_DIGEST = bytes(16)  # FileEnd of a file that changed while sent: cannot match its data
# Counters the receiving side owns and reports to the client at the end.
RECEIVER_STATS = ("files", "regular_files", "dirs", "links", "devices", "specials", "total_size",
                  "files_created", "files_deleted", "files_transferred", "transferred_size",
                  "literal_bytes", "matched_bytes")


def forward_report(conn: Connection, report: Report, items: bool = True) -> None:
    """Server side: problems travel to the client as Problem; events as Item, if it shows them
    (one Item per file would otherwise cost as much as the file itself on small files)."""
    def on_event(event: Event) -> None:
        conn.send(Item(event.itemize, event.name, event.extra, event.size))
    report.on_event = on_event if items else None
    report.forward = lambda problem: conn.send(Problem(problem.path, problem.message, problem.code))
    report.on_notice = lambda text: conn.send(Item(NOTICE, text, "", 0))  # few: always forwarded


def stats_message(report: Report) -> Stats:
    s = report.stats
    counters = {k: getattr(s, k) for k in RECEIVER_STATS}
    counters.update({f"created_{k}": v for k, v in s.created_kinds.items()})
    return Stats.of(counters)


def common(msg: object, report: Report, sending: bool = False) -> bool:
    """Handle what either side may get at any time; True if msg was one of those.

    The sending side shows a received file as rsync does from there: "<f" (sent), not ">f".
    """
    if isinstance(msg, Problem):
        report.problem(FileProblem(msg.path, msg.message, msg.code))
    elif isinstance(msg, Item) and msg.itemize == NOTICE:
        report.notice(msg.name)
    elif isinstance(msg, Item):
        itemize = "<" + msg.itemize[1:] if sending and msg.itemize.startswith(">") else msg.itemize
        report.event(Event(itemize, msg.name, msg.extra, msg.size))
    elif isinstance(msg, Log):
        logging.getLogger("zcsync").log(msg.level, "%s", msg.text)
    elif isinstance(msg, Stats):
        counters = msg.as_dict()
        for key in RECEIVER_STATS:
            if key in counters:
                setattr(report.stats, key, counters[key])
        kinds = {k[len("created_"):]: v for k, v in counters.items() if k.startswith("created_")}
        if kinds:
            report.stats.created_kinds = kinds
    elif not isinstance(msg, Heartbeat):
        return False
    return True


MAX_FILES_FROM = 64 << 20  # bytes of --files-from names a sender accepts from its peer


def send_files_from(conn: Connection, names: list[bytes]) -> None:
    """The receiving end's --files-from names to the sender, in frames, before anything else:
    the client's list in a pull, the server's own (host:FILE) in a push."""
    # A name the peer would refuse: said here, by name, before any of the list goes out.
    for name in names:
        if len(name) > MAX_NAME:
            raise UsageError(f"--files-from name {escape(name[:64])!r}... is too long "
                             f"({len(name)} bytes, at most {MAX_NAME})")
    chunk: list[bytes] = []
    size = 1
    for name in names:
        if chunk and size + len(name) + 1 > conn.frame_max:
            conn.send(FilesFrom(tuple(chunk)))
            chunk, size = [], 1
        chunk.append(name)
        size += len(name) + 1
    conn.send(FilesFrom(tuple(chunk), last=True))
    conn.flush()


def receive_files_from(conn: Connection, report: Report) -> list[bytes] | None:
    """The sending end: the --files-from names its peer sends (at most MAX_FILES_FROM bytes),
    the client's list in a pull, the server's own list file in a push (host:FILE).

    None if the peer ended the session instead (its Goodbye code counts toward ours, and
    its Log said why): a server that could not read its list file, or refused it.
    """
    names: list[bytes] = []
    total = 0
    while True:
        msg = conn.recv()
        if isinstance(msg, FilesFrom):
            total += sum(len(n) + 1 for n in msg.names)
            if total > MAX_FILES_FROM:
                raise ProtocolError(f"peer sent more than {MAX_FILES_FROM} bytes of --files-from names")
            names.extend(msg.names)
            if msg.last:
                return names
        elif isinstance(msg, Goodbye):
            report.outcome(msg.exit_code)
            return None
        elif not common(msg, report):
            raise ProtocolError(f"peer sent {type(msg).__name__} before the end of the --files-from list")


def _goodbye(conn: Connection, report: Report) -> None:
    """Read until the peer's Goodbye; its code counts toward ours."""
    while True:
        msg = conn.recv()
        if isinstance(msg, Goodbye):
            report.outcome(msg.exit_code)
            return
        if not common(msg, report):
            raise ProtocolError(f"unexpected {type(msg).__name__} before Goodbye")


# -- the sending side ----------------------------------------------------------

class SendingSide:
    """Streams the file list and the requested files' bytes to the peer.

    File data is compressed when the handshake negotiated a codec, except for files
    whose suffix is in --skip-compress (rsync's list of already-compressed formats).
    """

    def __init__(self, conn: Connection, sender: Sender, opts: Options, report: Report) -> None:
        self.conn = conn
        self.sender = sender
        self.opts = opts
        self.report = report
        self.entries: dict[int, FileEntry] = {}
        self.skip_compress = SkipCompress(opts.skip_compress) if conn.codec is not None else None
        self._flist_error: BaseException | None = None
        self._digests: ThreadPoolExecutor | None = None  # hashes a file while sendfile sends it
        self._named_uids: set[int] = set()  # ids whose owner name went out already (once per id)
        self._named_gids: set[int] = set()

    def _extras(self, entry: FileEntry) -> EntryExtras | None:
        if entry.is_missing:
            return None  # a name and nothing else on the wire
        digest = uname = gname = None
        if self.opts.checksum and entry.is_reg:
            digest = entry.digest if entry.digest is not None else self.sender.digest(entry)
        if not self.opts.numeric_ids:
            if self.opts.owner and entry.uid not in self._named_uids:
                self._named_uids.add(entry.uid)
                if name := meta.uid_name(entry.uid):
                    uname = name.encode()
            if self.opts.group and entry.gid not in self._named_gids:
                self._named_gids.add(entry.gid)
                if name := meta.gid_name(entry.gid):
                    gname = name.encode()
        if digest is None and uname is None and gname is None:
            return None
        return EntryExtras(digest, uname, gname)

    def _send_flist(self) -> None:
        ended = False
        removing = self.opts.remove_source_files  # then every non-directory may be removed
        try:
            for batch in self.sender.batches():
                for entry in batch.entries:  # (a missing operand has nothing to send or remove)
                    if entry.is_reg or (removing and not entry.is_dir and not entry.is_missing):
                        self.entries[entry.index] = entry
                extras = tuple(self._extras(e) for e in batch.entries)
                self.conn.send(FlistBatch.from_dir_batch(batch, extras, io_error=self.sender.io_error))
                self.conn.flush()
            ended = True
            self.conn.send(FlistEnd(self.sender.io_error))
            self.conn.flush()
        except BaseException as exc:  # re-raised by run() on the main thread
            self._flist_error = exc
            if not ended:
                # run() waits in recv() for the receiver, which waits for the rest of the list:
                # end it (with an I/O error: no deletions), so that the receiver answers (Done
                # at the latest) and run() wakes up to raise this.
                try:
                    self.conn.send(FlistEnd(True))
                    self.conn.flush()
                except Exception:  # noqa: BLE001 - the stream itself failed: recv() fails too
                    pass

    def _requested(self, index: int) -> FileEntry:
        """The regular file a Request names (ProtocolError for anything else)."""
        entry = self.entries.get(index)
        if entry is None or not entry.is_reg:
            raise ProtocolError(f"peer requested index {index}, which is not a regular file we sent")
        return entry

    def _open(self, index: int, entry: FileEntry) -> int | None:
        """The source file opened for sending, or None after telling the peer it will not come."""
        try:
            return self.sender.open(entry)
        except SourceChanged as exc:
            self._skip(index, entry, exc)
            return None

    def _skip(self, index: int, entry: FileEntry, exc: SourceChanged) -> None:
        """Tell the peer a requested file will not come, and why."""
        self.conn.send(FileSkip(index, exc.code, str(exc)))
        self.report.problem(FileProblem(escape(entry.name), str(exc), exc.code))

    def send_file(self, index: int, signature: bytes | None = None) -> None:
        entry = self._requested(index)
        # Checked before anything else: a bad signature is a misbehaving peer, not a file problem.
        sig = decode_signature(signature) if signature is not None else None
        compress = self.skip_compress is not None and entry.name not in self.skip_compress
        if sig is None and not compress and entry.size < min(SENDFILE_MIN, self.conn.frame_max - WHOLE_FILE_OVERHEAD):
            # A small file goes whole in one frame, read and hashed in one call.
            try:
                data, digest = self.sender.read(entry)
            except SourceChanged as exc:
                self._skip(index, entry, exc)
                return
            # A file that shrank meanwhile arrives short: the receiver, which knows the
            # listed size, discards it and asks once more.
            self.conn.send(WholeFile(index, digest, data))
            self.report.stats.bytes_sent += len(data)
            return
        fd = self._open(index, entry)
        if fd is None:
            return
        if sig is not None and entry.size > 0:
            try:
                self._send_delta(index, entry, fd, sig, compress)
            finally:
                os.close(fd)
            return
        if not compress and entry.size >= SENDFILE_MIN and self.conn.can_sendfile:
            try:
                self._send_zero_copy(index, entry.size, fd)
            finally:
                os.close(fd)
            return
        try:
            hasher = xxhash.xxh3_128()  # over the file's bytes, compressed on the wire or not
            self.conn.send(FileBegin(index, entry.size))
            pos = 0
            while pos < entry.size:
                data = os.pread(fd, min(CHUNK, entry.size - pos), pos)
                if not data:
                    break
                hasher.update(data)
                self.conn.send_data(data, compress)
                pos += len(data)
            # A file that shrank meanwhile ends early: its digest cannot match, the receiver
            # discards it and asks once more.
            self.conn.send(FileEnd(index, hasher.digest()))
            self.report.stats.bytes_sent += pos
        finally:
            os.close(fd)

    def _send_zero_copy(self, index: int, size: int, fd: int) -> None:
        """The whole file from the page cache to the socket (sendfile), hashed meanwhile on a second thread.

        Both read the file independently: if it changes in between, the digest cannot
        match what was sent, and the receiver discards the file and asks again.
        """
        digest = self._digest_pool().submit(fastio.file_digest, fd, size)
        self.conn.send(FileBegin(index, size))
        try:
            sent = self.conn.send_file_range(fd, 0, size)
        finally:
            try:
                vouched = digest.result()
            except fastio.SourceChanged:
                vouched = _NO_DIGEST
        self.conn.send(FileEnd(index, vouched if sent == size else _NO_DIGEST))
        self.report.stats.bytes_sent += sent

    def _send_delta(self, index: int, entry: FileEntry, fd: int, sig: delta.Signature, compress: bool) -> None:
        """FileBegin, Match runs and literal Data in source order, FileEnd with the whole file's digest.

        The scan maps the source under the C kernel's SIGBUS guard; everything sent or
        hashed afterwards is read with pread or sendfile, so a file that shrinks later ends
        short (its digest cannot match: the receiver asks again) instead of killing us.
        """
        size = entry.size
        try:
            if os.fstat(fd).st_size < size:
                raise delta.SourceChanged(5, "file shrank")
            ops = self._scan(fd, size, sig)
        except delta.SourceChanged:
            message = f"File {escape(entry.name)!r} changed during transfer (it shrank)"
            self.conn.send(FileSkip(index, PARTIAL, message))
            self.report.problem(FileProblem(escape(entry.name), message, PARTIAL))
            return
        # The whole file's digest comes from a second thread: matched ranges are never read
        # here, and literal ones go by sendfile on a raw socket.
        digest = self._digest_pool().submit(fastio.file_digest, fd, size)
        zero_copy = not compress and self.conn.can_sendfile
        self.conn.send(FileBegin(index, size))
        pos = literal = 0
        short = False
        try:
            for kind, a, b in ops:
                if kind == delta.MATCH:
                    self.conn.send(Match(a, b))
                    pos += min((a + b) * sig.block_len, sig.size) - a * sig.block_len
                    continue
                if zero_copy:
                    got = self.conn.send_file_range(fd, pos, b)
                    short = got < b
                else:
                    got = self._send_read(fd, pos, b, compress)
                    short = got < b
                literal += got
                pos += b
                if short:
                    break
        finally:
            try:
                vouched = digest.result()
            except fastio.SourceChanged:
                vouched = _NO_DIGEST
        self.conn.send(FileEnd(index, _NO_DIGEST if short else vouched))
        self.report.stats.bytes_sent += literal

    def _send_read(self, fd: int, pos: int, length: int, compress: bool) -> int:
        """Bytes [pos, pos+length) of fd as Data frames read with pread; how many there were."""
        end = pos + length
        start = pos
        while pos < end:
            data = os.pread(fd, min(CHUNK, end - pos), pos)
            if not data:
                break
            self.conn.send_data(data, compress)
            pos += len(data)
        return pos - start

    def _digest_pool(self) -> ThreadPoolExecutor:
        if self._digests is None:
            self._digests = ThreadPoolExecutor(1, thread_name_prefix="zcsync-digest")
        return self._digests

    # Whether the Request being answered rebuilds over its basis (--inplace): the scan
    # then keeps to the blocks the receiver has not overwritten yet.
    _inplace = False

    def _scan(self, fd: int, size: int, sig: delta.Signature) -> Iterator[tuple[int, int, int]]:
        """The delta ops of the source against sig, scanned piece by piece as they are sent.

        The first piece is scanned before this returns, so a source that already shrank
        raises SourceChanged here. The connection is flushed after each piece: the receiver
        rebuilds it while the next one is scanned. A source that shrinks later ends the
        ops early (under the C kernel's SIGBUS guard); the file then comes out short and
        the receiver asks for it again.
        """
        try:
            m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        except ValueError:  # already shorter than the scan saw it
            raise delta.SourceChanged(5, "file shrank") from None
        try:
            m.madvise(mmap.MADV_SEQUENTIAL)
            scanner = delta.Scanner(m, sig, inplace=self._inplace)
            first = scanner.next()
        except BaseException:
            m.close()
            raise
        return self._pieces(m, scanner, first)

    def _pieces(self, m: mmap.mmap, scanner: delta.Scanner, ops: array) -> Iterator[tuple[int, int, int]]:
        rest = None
        try:
            yield from delta.iter_ops(ops)
            if scanner.done:
                return
            rest = scanner.ahead()  # the next piece is scanned while this one is sent
            while True:
                self.conn.flush()
                try:
                    ops = next(rest)
                except (StopIteration, delta.SourceChanged):
                    return
                yield from delta.iter_ops(ops)
        finally:
            if rest is not None:
                rest.close()  # the scanning thread is done with the mapping
            del scanner
            m.close()

    def _answer(self, msg: Request) -> None:
        """One Request: the rest of a file (--append), or the file whole or as a delta."""
        if msg.append_from is not None:
            self._send_append(msg.index, msg.append_from, msg.append_verify)
            return
        self._inplace = msg.inplace
        try:
            self.send_file(msg.index, msg.signature)
        finally:
            self._inplace = False

    def _send_append(self, index: int, offset: int, verify: bool) -> None:
        """--append: FileBegin, the file's bytes after `offset` as Data, FileEnd with the digest of
        those bytes (of the whole file with --append-verify)."""
        entry = self._requested(index)
        if offset > entry.size:
            raise ProtocolError(f"peer asked for index {index} from offset {offset}, "
                                f"beyond its size {entry.size}")
        fd = self._open(index, entry)
        if fd is None:
            return
        compress = self.skip_compress is not None and entry.name not in self.skip_compress
        try:
            hasher = xxhash.xxh3_128()
            if verify:
                pos = 0
                while pos < offset:
                    data = os.pread(fd, min(CHUNK, offset - pos), pos)
                    if not data:
                        break
                    hasher.update(data)
                    pos += len(data)
            self.conn.send(FileBegin(index, entry.size))
            pos = offset
            while pos < entry.size:
                data = os.pread(fd, min(CHUNK, entry.size - pos), pos)
                if not data:
                    break  # shrank: the digest cannot match, the receiver asks again
                hasher.update(data)
                self.conn.send_data(data, compress)
                pos += len(data)
            self.conn.send(FileEnd(index, hasher.digest()))
            self.report.stats.bytes_sent += pos - offset
        finally:
            os.close(fd)

    def run(self) -> None:
        """Serve requests until the receiver's Done; then say goodbye."""
        flist = threading.Thread(target=self._send_flist, name="zcsync-flist", daemon=True)
        flist.start()
        gave_up = False
        try:
            while True:
                msg = self.conn.recv()
                if isinstance(msg, Requests):
                    for index in msg.indices:
                        self.send_file(index)
                elif isinstance(msg, Request):
                    self._answer(msg)
                elif isinstance(msg, Committed):
                    entry = self.entries.get(msg.index)
                    if entry is not None and self.opts.remove_source_files:
                        self.sender.remove(entry)
                elif isinstance(msg, Done):
                    break
                elif isinstance(msg, Goodbye):
                    # The receiver stopped on a fatal error (it logged why): its code is the outcome.
                    self.report.outcome(msg.exit_code)
                    gave_up = True
                    break
                elif not common(msg, self.report, sending=True):
                    raise ProtocolError(f"unexpected {type(msg).__name__} from the receiver")
                if self._flist_error is not None:
                    raise self._flist_error
        finally:
            flist.join(timeout=10)
            if self._digests is not None:
                self._digests.shutdown()
        if self._flist_error is not None:
            raise self._flist_error
        if gave_up:
            return
        self.conn.send(Goodbye(self.report.exit_code))
        self.conn.flush()
        while True:  # the rest of Committed, the receiver's Stats and Goodbye
            msg = self.conn.recv()
            if isinstance(msg, Committed):
                entry = self.entries.get(msg.index)
                if entry is not None and self.opts.remove_source_files:
                    self.sender.remove(entry)
            elif isinstance(msg, Goodbye):
                self.report.outcome(msg.exit_code)
                return
            elif not common(msg, self.report, sending=True):
                raise ProtocolError(f"unexpected {type(msg).__name__} from the receiver")


# -- a listing ---------------------------------------------------------------

class ListingSide:
    """The receiving end of `zcsync host:path` (one operand): rsync's --list-only of a remote
    tree. Prints the file list the sender sends and asks for no data."""

    def __init__(self, conn: Connection, out: TextIO, report: Report, show_links: bool, human: int = 1,
                 missing: bool = False) -> None:
        self.conn = conn
        conn.decoder.missing_entries = missing  # --delete-missing-args: "*missing" lines
        self.listing = Listing(out, show_links, human)
        self.report = report

    def run(self) -> None:
        while True:
            msg = self.conn.recv()
            if isinstance(msg, FlistBatch):
                self.listing.batch(msg.dir_name, msg.entries, msg.expanded)
            elif isinstance(msg, FlistEnd):
                self.listing.finish()
                self.conn.send(Done())
                self.conn.flush()
            elif isinstance(msg, Goodbye):
                self.report.outcome(msg.exit_code)
                break
            elif not common(msg, self.report):
                raise ProtocolError(f"unexpected {type(msg).__name__} from the sender")
        self.conn.send(stats_message(self.report))
        self.conn.send(Goodbye(self.report.exit_code))
        self.conn.flush()


# -- the receiving side --------------------------------------------------------

class _Redo(Exception):
    """A streamed file did not verify and cannot be read twice: request it again."""


class StreamFile:
    """A DataSource whose bytes arrive as Data or DataZ frames until FileEnd."""

    def __init__(self, conn: Connection, index: int, size: int,
                 other: Callable[[Message], bool], write_mode: str = AUTO) -> None:
        self.conn = conn
        self.index = index
        self.size = size
        self.other = other  # file-list frames interleave with file data
        self.write_mode = write_mode
        self._digest: bytes | None = None
        self.consumed = False

    def write_into(self, fd: int, sparse: bool) -> bytes:
        """Write the file's data frames into fd; the digest of what was written.

        On a raw socket a Data frame's payload moves from the socket to the file by the
        write mode's own system calls (sink.py) without becoming a Python object here.
        """
        if self.consumed:
            raise _Redo()
        self.consumed = True
        raw = self.conn.can_take_raw
        sink = make_sink(fd, self.write_mode, raw, sparse)
        got = 0
        while True:
            msg = self.conn.recv(raw_data=raw)
            if isinstance(msg, RawData):
                got += msg.length
                if got > self.size:
                    raise ProtocolError(f"peer sent more than the {self.size} bytes announced for a file")
                sink.take(self.conn.stream, msg.length)  # type: ignore[arg-type]
            elif isinstance(msg, (Data, DataZ)):
                # A DataZ's size is checked against the file before anything is decompressed.
                got += len(msg.payload) if isinstance(msg, Data) else msg.size
                if got > self.size:
                    raise ProtocolError(f"peer sent more than the {self.size} bytes announced for a file")
                sink.write(msg.payload if isinstance(msg, Data) else self.conn.inflate(msg))
            elif isinstance(msg, FileEnd):
                self._digest = msg.digest if got == self.size else b"short"
                return sink.finish()
            elif isinstance(msg, Match):
                raise ProtocolError("peer sent Match for a file requested whole")
            elif not self.other(msg):
                raise ProtocolError(f"unexpected {type(msg).__name__} inside a file's data")

    def digest(self) -> bytes:
        assert self._digest is not None
        return self._digest

    def drain(self) -> None:
        """Read past the rest of the file's frames (the writer gave up on it)."""
        if self._digest is not None:
            return
        while not isinstance(msg := self.conn.recv(), FileEnd):
            if isinstance(msg, Match) and not self.delta:
                raise ProtocolError("peer sent Match for a file requested whole")
            if not isinstance(msg, (Data, DataZ, Match)) and not self.other(msg):
                raise ProtocolError(f"unexpected {type(msg).__name__} inside a file's data")
        self._digest = msg.digest

    delta = False
    matched = 0
    literal = 0


class InFrameFile(StreamFile):
    """A DataSource for a WholeFile message: the data is already here."""

    def __init__(self, msg: WholeFile, listed_size: int) -> None:
        self.index = msg.index
        self.size = len(msg.data)
        self.data = msg.data
        # Shorter or longer than the file list said: changed while sent; cannot verify.
        self._digest = msg.digest if self.size == listed_size else b"short"
        self.consumed = False

    def write_into(self, fd: int, sparse: bool) -> bytes:
        if self.consumed:
            raise _Redo()
        self.consumed = True
        sink = make_sink(fd, AUTO, raw=False, sparse=sparse)
        sink.write(self.data)
        return sink.finish()

    def drain(self) -> None:
        """Nothing follows a WholeFile frame."""


@dataclass(frozen=True)
class Basis:
    """What the receiver told the sender about a basis file: the bounds its Match runs must keep.

    inplace: the basis is the destination itself, rebuilt where it lies (--inplace).
    append_from: no blocks at all; the file's first append_from bytes are already in place and
    only the rest comes, as literal data (--append); append_verify: the digest covers them too.
    """

    block_len: int
    count: int
    size: int
    inplace: bool = False
    append_from: int | None = None
    append_verify: bool = False


class DeltaFile(StreamFile):
    """A DataSource rebuilt from basis blocks (Match frames) and literal data (Data/DataZ).

    Each Match run is checked against the basis the signature described before anything
    is copied; blocks are copied and hashed as written (delta.Rebuild: pread, hash, pwrite;
    copy_file_range and a read-back where the filesystem shares data), so the digest is of
    what was really written. In place, a run found at its own offset is not written at all.
    """

    delta = True

    def __init__(self, conn: Connection, index: int, size: int, other: Callable[[Message], bool],
                 basis: Basis, open_basis: Callable[[], int]) -> None:
        super().__init__(conn, index, size, other)
        self.basis = basis
        self.open_basis = open_basis

    def write_into(self, fd: int, sparse: bool) -> bytes:
        if self.consumed:
            raise _Redo()
        self.consumed = True
        if self.basis.append_from is not None or self.basis.inplace:
            return self._rebuild(fd, None)  # the file being written is its own basis
        try:
            bfd = self.open_basis()
        except OSError as exc:
            log.info("Cannot open the basis of index %d (%s): asking for the whole file", self.index, exc.strerror)
            raise _Redo() from exc
        try:
            return self._rebuild(fd, bfd)
        finally:
            os.close(bfd)

    def _rebuild(self, fd: int, bfd: int | None) -> bytes:
        basis = self.basis
        appending = basis.append_from is not None
        out = delta.Rebuild(fd, bfd, basis.block_len, basis.size, self.size, inplace=basis.inplace,
                            start=basis.append_from or 0, hash_head=basis.append_verify)
        while True:
            msg = self.conn.recv()
            if isinstance(msg, (Data, DataZ)):
                n = len(msg.payload) if isinstance(msg, Data) else msg.size
                if out.pos + n > self.size:  # before anything is decompressed
                    raise ProtocolError(f"peer sent more than the {self.size} bytes announced for a file")
                out.write(msg.payload if isinstance(msg, Data) else self.conn.inflate(msg))
            elif isinstance(msg, Match):
                if appending:
                    raise ProtocolError("peer sent Match for a file requested from an offset")
                try:
                    out.blocks(msg.first_block, msg.count)
                except delta.SourceChanged as exc:
                    raise _Redo() from exc  # the basis shrank: the whole file, then
            elif isinstance(msg, FileEnd):
                self.matched, self.literal = out.matched, out.literal
                self._digest = msg.digest if out.pos == self.size else b"short"
                return out.digest()
            elif not self.other(msg):
                raise ProtocolError(f"unexpected {type(msg).__name__} inside a file's data")


class ReceivingSide:
    """Builds the destination from the peer's file list and file data."""

    def __init__(self, conn: Connection, dest: str, opts: Options, report: Report,
                 filters: FilterRules, basis_hidden: Callable[[bytes], bool] | None = None) -> None:
        self.conn = conn
        self.dest = dest
        self.basis_hidden = basis_hidden  # names no -y basis may be (a daemon module's excludes)
        self.opts = opts
        self.report = report
        self.filters = filters
        # --delete-missing-args: the sender's top batches may name missing operands.
        conn.decoder.missing_entries = opts.delete_missing_args
        # Whole-file requests go out several to a frame (Requests) if the peer decodes them.
        caps = conn.negotiated.peer_caps if conn.negotiated is not None else {}
        self._batch_requests = caps.get("request-batch") == "1"
        # A signature bigger than a frame may go in parts if the peer joins them.
        self._signature_parts = caps.get("signature-parts") == "1"
        self.receiver: Receiver | None = None
        self.io_error = False
        self.batches: queue.Queue[DirBatch | None] = queue.Queue()
        self.requests: dict[int, WriteRequest] = {}
        self.redo: dict[int, WriteRequest] = {}
        self.digests: dict[int, bytes] = {}
        self.bases: dict[int, Basis] = {}  # requests that carried a signature
        self._partial_bases: set[bytes] = set()  # dest names whose signature is of their partial file
        self.seed = int.from_bytes(os.urandom(8), "big")  # per transfer, as rsync's checksum seed
        self._parts: list[FileEntry] = []
        # The sender's ids -> ours: its owner names (sent once per id), --usermap, --chown.
        self.owners = OwnerMap(opts, remote=True)
        self._lock = threading.Lock()
        self._listed = False
        self._empty = False
        self._redo_sent = False
        self._done_sent = False
        self._gen_error: BaseException | None = None

    # -- generator thread: file list in, requests out --
    def _generate(self) -> None:
        assert self.receiver is not None
        generator = self.receiver.generator
        try:
            batches: Iterable[DirBatch] = iter(self.batches.get, None)
            if self.opts.delete and self.opts.delete_mode == "before":
                batches = list(batches)  # the whole list first (rsync's order, as the local run)
                generator.delete_all(batches)
            for batch in batches:
                pending: list[tuple[WriteRequest, Request]] = []
                for request in generator.process(batch):
                    message = self._request_for(request)
                    pending.append((request, message))
                    # A delta's signature took a basis read: the sender may start on it now.
                    if len(pending) == REQUESTS_AT_ONCE or message.signature is not None:
                        self._send_requests(pending)
                self._send_requests(pending)
                self.conn.flush()
                if not self.opts.hard_links:
                    # Hard links are made from the writer thread with unpinned fds: with -H
                    # evicted fds stay open until the end instead.
                    self.receiver.tree.close_retired()
        except BaseException as exc:  # re-raised by run() on the reading thread
            self._gen_error = exc
            with self._lock:
                self.requests.clear()
        # The list is through: from now on only the reading thread uses the tree.
        self.receiver.tree.shared = False
        with self._lock:
            self._listed = True
        self._maybe_done()

    def _send_requests(self, pending: list[tuple[WriteRequest, Request]]) -> None:
        """Record requests (under one lock: the reading thread takes them as data arrives),
        then send them; empties `pending`."""
        with self._lock:
            for request, _ in pending:
                self.requests[request.entry.index] = request
        whole: list[int] = []  # a run of plain whole-file requests, sent as one Requests
        for _, message in pending:
            if self._batch_requests and message.signature is None and message.append_from is None:
                whole.append(message.index)
                continue
            if whole:
                self.conn.send(Requests(tuple(whole)))
                whole = []
            self.conn.send(message)
        if whole:
            self.conn.send(Requests(tuple(whole)))
        pending.clear()

    def _delta_wanted(self) -> bool:
        # rsync's default for a remote transfer is the delta algorithm.
        return self.opts.whole_file is not True

    def _request_for(self, request: WriteRequest) -> Request:
        """The Request for a file: the rest of it (--append), a delta against a basis, or all of it."""
        index = request.entry.index
        st = request.existing
        if self.opts.append and st is not None and stat.S_ISREG(st.st_mode) and 0 < st.st_size < request.entry.size:
            with self._lock:
                self.bases[index] = Basis(1, 0, 0, append_from=st.st_size, append_verify=self.opts.append_verify)
            return Request(index, append_from=st.st_size, append_verify=self.opts.append_verify)
        signature = self._signature(request)
        if signature is None:
            return Request(index)
        with self._lock:
            basis = self.bases.get(index)
        return Request(index, signature, inplace=basis is not None and basis.inplace)

    def _inplace(self, request: WriteRequest) -> bool:
        """Will the writer update this file where it lies (as Writer decides)?"""
        st = request.existing
        return self.opts.inplace and st is not None and stat.S_ISREG(st.st_mode)

    def _open_basis(self, request: WriteRequest, partial: bool | None = None) -> int:
        """The basis of a request for reading: the partial file its signature was made from
        (--partial; None: as recorded), else the similar file the generator chose (-y), else
        the destination file, opened beneath the destination root."""
        assert self.receiver is not None
        name = request.dest_name
        if partial is None:
            with self._lock:
                partial = name in self._partial_bases
        if partial:
            return self.receiver.writer.open_partial(name)
        if request.basis is not None:
            return self.receiver.writer.open_basis(request.basis)
        parent, base = split(name)
        pfd = self.receiver.writer.tree.dir_fd(parent)
        fd = fsscan.open_read(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                              self.opts.open_noatime, dir_fd=pfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(21, "basis is not a regular file")
        return fd

    def _signature(self, request: WriteRequest) -> bytes | None:
        """Request.signature for a file with a basis, or None for the whole file.

        The basis is a partial file an interrupted run kept (--partial, --partial-dir), as
        rsync does, else the similar file the generator chose for a missing one (-y), else
        the file it replaces. --block-size fixes the block length (never below what a
        sender accepts from a peer).
        """
        st = request.existing
        if not self._delta_wanted():
            return None
        inplace = self._inplace(request)
        partial = request.partial is not None and not inplace
        if not partial and request.basis is None and (st is None or not stat.S_ISREG(st.st_mode)
                                                      or st.st_size == 0):
            return None
        assert self.receiver is not None
        try:
            fd = self._open_basis(request, partial)
        except OSError:
            return None
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return None
            block_len = delta.block_length(size)
            if self.opts.block_size:
                # A sender refuses tiny blocks from a peer (its op list could outgrow the file).
                block_len = max(self.opts.block_size, delta.MIN_PEER_BLOCK_LEN)
            if not signature_fits(delta.block_count(size, block_len), delta.strong_length(size, block_len),
                                  self.conn.frame_max, self._signature_parts):
                log.info("%s: basis has too many blocks for a signature the peer takes; sending it whole",
                         escape(request.dest_name))
                return None
            sig = delta.make_signature(fd, size, block_len, seed=self.seed)
        except OSError as exc:  # SourceChanged included: the basis shrank while hashed
            log.info("%s: cannot hash the basis (%s); sending it whole", escape(request.dest_name), exc.strerror)
            return None
        finally:
            os.close(fd)
        blob = encode_signature(sig)
        with self._lock:
            self.bases[request.entry.index] = Basis(sig.block_len, sig.count, sig.size, inplace=inplace)
            if partial:
                self._partial_bases.add(request.dest_name)
            else:
                self._partial_bases.discard(request.dest_name)
        return blob

    def _maybe_done(self) -> None:
        """Once the list is through and every request answered: retry failures once, then Done."""
        if not self._listed or self._done_sent:  # the common case, without the lock (both only ever turn True)
            return
        with self._lock:
            if not self._listed or self.requests or self._done_sent:
                return
            if self.redo and not self._redo_sent:
                self._redo_sent = True
                self.requests.update(self.redo)
                indexes = list(self.redo)
                for index in indexes:  # rsync redoes with full checksums: whole files, here
                    self.bases.pop(index, None)
            else:
                self._done_sent = True
                indexes = None
        if indexes is not None:
            for index in indexes:
                self.conn.send(Request(index))
        else:
            self.conn.send(Done())
        self.conn.flush()

    def _local_batch(self, msg: FlistBatch) -> DirBatch:
        """Wire entries to local ones: owners as OwnerMap maps them, -c digests kept."""
        owners = self.owners
        for entry, extras in zip(msg.entries, msg.extras):  # extras: () when no entry has any
            if extras is None:
                continue
            if extras.digest is not None:
                self.digests[entry.index] = extras.digest
            if extras.uname or extras.gname:
                owners.learn(entry.uid, extras.uname, entry.gid, extras.gname)
        return owners.batch(DirBatch(msg.dir_name, msg.entries, msg.expanded))

    def _start(self, top: DirBatch) -> None:
        remove = None
        if self.opts.remove_source_files:
            def remove(entry: FileEntry) -> None:
                self.conn.send(Committed(entry.index))
        self.receiver = make_receiver(self.dest, self.opts, top, self.report, self.filters,
                                      io_error=lambda: self.io_error,
                                      source_digest=lambda e: self.digests.get(e.index),
                                      remove_source=remove, basis_hidden=self.basis_hidden)
        self.receiver.tree.shared = True  # the generator thread and this one both use it
        if self.receiver.writer.on_commit is None:  # nothing waits for a commit: they can queue
            self.receiver.writer.commit_in_background()
        self._gen_thread = threading.Thread(target=self._generate, name="zcsync-generator", daemon=True)
        self._gen_thread.start()

    def _receive_file(self, begin: FileBegin | WholeFile) -> None:
        assert self.receiver is not None
        tree = self.receiver.tree
        if not tree.shared and tree.retired:
            tree.close_retired()  # fds evicted while the generator thread still listed
        with self._lock:
            request = self.requests.pop(begin.index, None)
            second_try = begin.index in self.redo
            basis = self.bases.pop(begin.index, None)
        if request is None:
            raise ProtocolError(f"peer sent data for index {begin.index}, which was not requested")
        source: StreamFile
        if isinstance(begin, WholeFile):
            if basis is not None:
                raise ProtocolError(f"peer sent index {begin.index} whole, but it was requested as a delta")
            source = InFrameFile(begin, request.entry.size)
        elif basis is None:
            source = StreamFile(self.conn, begin.index, begin.size, self._flist_or_common, self.opts.write_mode)
        else:
            source = DeltaFile(self.conn, begin.index, begin.size, self._flist_or_common, basis,
                               lambda: self._open_basis(request))
        try:
            ok = self.receiver.writer.write(request, source)
        except _Redo:
            ok = None
        # Past what the writer left unread. Not when an exception ends the session (a signal or
        # --stop-after in the middle of a frame): the stream is then mid-frame, and over.
        source.drain()
        if ok is None:
            if second_try:
                self.report.problem(FileProblem(escape(request.dest_name), f"File {escape(request.dest_name)!r} "
                                                "failed verification twice (changed during the transfer?)"))
            else:
                with self._lock:
                    self.redo[begin.index] = request
        elif ok and source.delta:
            self.report.stats.literal_bytes += source.literal
            self.report.stats.matched_bytes += source.matched
        elif ok:
            self.report.stats.literal_bytes += source.size
        if ok is not None and second_try:
            with self._lock:
                self.redo.pop(begin.index, None)

    def _flist_or_common(self, msg: Message) -> bool:
        """File-list frames and the messages either side may get; True if msg was one."""
        if isinstance(msg, FlistBatch):
            self.io_error = self.io_error or msg.io_error
            self._parts.extend(self._local_batch(msg).entries)
            if not msg.more:
                batch = DirBatch(msg.dir_name, tuple(self._parts), msg.expanded)
                self._parts = []
                if self.receiver is None and not self._empty:
                    if not batch.entries:
                        self._empty = True  # nothing to transfer: rsync does not even create DST
                        with self._lock:
                            self._listed = True
                    else:
                        self._start(batch)
                count_entries(self.report.stats, batch)
                self.batches.put(batch)
        elif isinstance(msg, FlistEnd):
            self.io_error = self.io_error or msg.io_error
            self.batches.put(None)
            if self.receiver is None:  # a sender that failed before its first batch: nothing to
                with self._lock:       # generate, so answer Done at once (it waits for that)
                    self._listed = True
        else:
            return common(msg, self.report)
        return True

    def run(self) -> None:
        """Read frames until the sender's Goodbye; then finish the destination."""
        self.conn.start_writer()  # this thread reads and also sends: it must never block on a write
        try:
            while True:
                msg = self.conn.recv()
                if isinstance(msg, (FileBegin, WholeFile)):
                    self._receive_file(msg)
                elif isinstance(msg, FileSkip):
                    with self._lock:
                        self.bases.pop(msg.index, None)
                        if self.requests.pop(msg.index, None) is None:
                            raise ProtocolError(f"peer skipped index {msg.index}, which was not requested")
                    if msg.code == PARTIAL:
                        self.io_error = True
                    self.report.outcome(msg.code if msg.code in (PARTIAL, VANISHED) else PARTIAL)
                elif isinstance(msg, Goodbye):
                    self.report.outcome(msg.exit_code)
                    break
                elif not self._flist_or_common(msg):
                    raise ProtocolError(f"unexpected {type(msg).__name__} from the sender")
                if self._gen_error is not None:
                    raise self._gen_error
                self._maybe_done()
            if self.receiver is not None:
                self.receiver.writer.flush_commits()
        except BaseException:
            if self.receiver is not None:
                self.receiver.writer.cleanup()
            raise
        finally:
            self.batches.put(None)  # let the generator thread end whatever happened
        if self._gen_error is not None:
            raise self._gen_error
        if self.receiver is not None:
            self._gen_thread.join()
            self.receiver.tree.close_retired()
            self.receiver.writer.finish_delayed()
            self.receiver.generator.finish()
        self.conn.send(stats_message(self.report))
        self.conn.send(Goodbye(self.report.exit_code))
        self.conn.drain()

    def close(self) -> None:
        if self.receiver is not None:
            self.receiver.close()

