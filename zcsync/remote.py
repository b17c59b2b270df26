"""The roles over a Connection: the sending side and the receiving side of a remote transfer.

Both ends run the same code: in a push the client sends and the server receives, in a
pull the other way round (docs/protocol.md, "Message order"). The sending side streams
the file list from one thread and answers requests from another; the receiving side
reads every frame on one thread (writing file data as it arrives) while its generator
works through the file list on a second thread and sends requests.
"""
from __future__ import annotations

import logging
import os
import queue
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass

import xxhash

from . import delta, meta
from .compress import SkipCompress
from .delta.patch import _copy_range
from .engine import Receiver, make_receiver
from .errors import PARTIAL, VANISHED, FileProblem, ProtocolError
from .filters import FilterRules
from .flist import DirBatch, FileEntry
from .options import Options
from .pathnames import escape, split
from .protocol import (Committed, Connection, Data, DataZ, Done, EntryExtras, FileBegin, FileEnd, FileSkip,
                       FlistBatch, FlistEnd, Goodbye, Heartbeat, Item, Log, Match, Message, Problem, Request,
                       Stats, decode_signature, encode_signature, max_signature_blocks)
from .sender import Sender, SourceChanged
from .stats import Event, Report
from .transport.local import count_entries
from .writer import Request as WriteRequest

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes read from a file per DATA frame
# Counters the receiving side owns and reports to the client at the end.
RECEIVER_STATS = ("files", "regular_files", "dirs", "links", "specials", "total_size",
                  "files_created", "files_deleted", "files_transferred", "transferred_size",
                  "literal_bytes", "matched_bytes")


def forward_report(conn: Connection, report: Report, items: bool = True) -> None:
    """Server side: problems travel to the client as Problem; events as Item, if it shows them
    (one Item per file would otherwise cost as much as the file itself on small files)."""
    def on_event(event: Event) -> None:
        conn.send(Item(event.itemize, event.name, event.extra, event.size))
    report.on_event = on_event if items else None
    report.forward = lambda problem: conn.send(Problem(problem.path, problem.message, problem.code))


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

    def _extras(self, entry: FileEntry) -> EntryExtras | None:
        digest = uname = gname = None
        if self.opts.checksum and entry.is_reg:
            digest = entry.digest if entry.digest is not None else self.sender.digest(entry)
        if not self.opts.numeric_ids:
            if self.opts.owner and (name := meta.uid_name(entry.uid)):
                uname = name.encode()
            if self.opts.group and (name := meta.gid_name(entry.gid)):
                gname = name.encode()
        if digest is None and uname is None and gname is None:
            return None
        return EntryExtras(digest, uname, gname)

    def _send_flist(self) -> None:
        try:
            for batch in self.sender.batches():
                for entry in batch.entries:
                    if entry.is_reg:
                        self.entries[entry.index] = entry
                extras = tuple(self._extras(e) for e in batch.entries)
                self.conn.send(FlistBatch.from_dir_batch(batch, extras, io_error=self.sender.io_error))
                self.conn.flush()
            self.conn.send(FlistEnd(self.sender.io_error))
            self.conn.flush()
        except BaseException as exc:  # re-raised by run() on the main thread
            self._flist_error = exc

    def send_file(self, index: int, signature: bytes | None = None) -> None:
        entry = self.entries.get(index)
        if entry is None:
            raise ProtocolError(f"peer requested index {index}, which is not a regular file we sent")
        # Checked before anything else: a bad signature is a misbehaving peer, not a file problem.
        sig = decode_signature(signature, self.conn.frame_max) if signature is not None else None
        try:
            fd = self.sender.open(entry)
        except SourceChanged as exc:
            self.conn.send(FileSkip(index, exc.code, str(exc)))
            self.report.problem(FileProblem(escape(entry.name), str(exc), exc.code))
            return
        compress = self.skip_compress is not None and entry.name not in self.skip_compress
        if sig is not None and entry.size > 0:
            try:
                self._send_delta(index, entry, fd, sig, compress)
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

    def _send_delta(self, index: int, entry: FileEntry, fd: int, sig: delta.Signature, compress: bool) -> None:
        """FileBegin, Match runs and literal Data in source order, FileEnd with the whole file's digest.

        The scan maps the source under the C kernel's SIGBUS guard; everything sent or
        hashed afterwards is read with pread, so a file that shrinks later ends short
        (its digest cannot match: the receiver asks again) instead of killing us.
        """
        size = entry.size
        try:
            if os.fstat(fd).st_size < size:
                raise delta.SourceChanged(5, "file shrank")
            ops = delta.delta_ops_fd(fd, size, sig)
        except delta.SourceChanged:
            message = f"File {escape(entry.name)!r} changed during transfer (it shrank)"
            self.conn.send(FileSkip(index, PARTIAL, message))
            self.report.problem(FileProblem(escape(entry.name), message, PARTIAL))
            return
        hasher = xxhash.xxh3_128()
        self.conn.send(FileBegin(index, size))
        pos = literal = 0
        short = False
        for kind, a, b in delta.iter_ops(ops):
            if kind == delta.MATCH:
                self.conn.send(Match(a, b))
                length = min((a + b) * sig.block_len, sig.size) - a * sig.block_len
            else:
                length = b
            end = pos + length
            while pos < end:
                data = os.pread(fd, min(CHUNK, end - pos), pos)
                if not data:
                    short = True
                    break
                hasher.update(data)
                if kind != delta.MATCH:
                    self.conn.send_data(data, compress)
                    literal += len(data)
                pos += len(data)
            if short:
                break
        self.conn.send(FileEnd(index, hasher.digest()))
        self.report.stats.bytes_sent += literal

    def run(self) -> None:
        """Serve requests until the receiver's Done; then say goodbye."""
        flist = threading.Thread(target=self._send_flist, name="zcsync-flist", daemon=True)
        flist.start()
        gave_up = False
        try:
            while True:
                msg = self.conn.recv()
                if isinstance(msg, Request):
                    self.send_file(msg.index, msg.signature)
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
        if gave_up:
            return
        if self._flist_error is not None:
            raise self._flist_error
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


# -- the receiving side --------------------------------------------------------

class _Redo(Exception):
    """A streamed file did not verify and cannot be read twice: request it again."""


class StreamFile:
    """A DataSource whose bytes arrive as Data or DataZ frames until FileEnd."""

    def __init__(self, conn: Connection, index: int, size: int,
                 other: Callable[[Message], bool]) -> None:
        self.conn = conn
        self.index = index
        self.size = size
        self.other = other  # file-list frames interleave with file data
        self._digest: bytes | None = None
        self.consumed = False

    def write_into(self, fd: int, sparse: bool) -> bytes:
        if self.consumed:
            raise _Redo()
        self.consumed = True
        hasher = xxhash.xxh3_128()
        got = 0
        while True:
            msg = self.conn.recv()
            if isinstance(msg, (Data, DataZ)):
                # A DataZ's size is checked against the file before anything is decompressed.
                got += len(msg.payload) if isinstance(msg, Data) else msg.size
                if got > self.size:
                    raise ProtocolError(f"peer sent more than the {self.size} bytes announced for a file")
                payload = msg.payload if isinstance(msg, Data) else self.conn.inflate(msg)
                hasher.update(payload)
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
            elif isinstance(msg, FileEnd):
                self._digest = msg.digest if got == self.size else b"short"
                return hasher.digest()
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


@dataclass(frozen=True)
class Basis:
    """What the receiver told the sender about a basis file: the bounds its Match runs must keep."""

    block_len: int
    count: int
    size: int


class DeltaFile(StreamFile):
    """A DataSource rebuilt from basis blocks (Match frames) and literal data (Data/DataZ).

    Each Match run is checked against the basis the signature described before anything
    is copied; blocks go by copy_file_range (pread/write where that is refused) and are
    hashed as read back from the temp file, so the digest is of what was really written.
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
        try:
            bfd = self.open_basis()
        except OSError as exc:
            log.info("Cannot open the basis of index %d (%s): asking for the whole file", self.index, exc.strerror)
            raise _Redo() from exc
        try:
            return self._rebuild(fd, bfd)
        finally:
            os.close(bfd)

    def _rebuild(self, fd: int, bfd: int) -> bytes:
        basis = self.basis
        hasher = xxhash.xxh3_128()
        got = 0
        while True:
            msg = self.conn.recv()
            if isinstance(msg, (Data, DataZ)):
                n = len(msg.payload) if isinstance(msg, Data) else msg.size
                if got + n > self.size:
                    raise ProtocolError(f"peer sent more than the {self.size} bytes announced for a file")
                payload = msg.payload if isinstance(msg, Data) else self.conn.inflate(msg)
                hasher.update(payload)
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
                got += n
                self.literal += n
            elif isinstance(msg, Match):
                if msg.first_block + msg.count > basis.count:
                    raise delta.DeltaError(f"block run {msg.first_block}+{msg.count} outside the basis's "
                                           f"{basis.count} blocks")
                start = msg.first_block * basis.block_len
                length = min((msg.first_block + msg.count) * basis.block_len, basis.size) - start
                if got + length > self.size:
                    raise ProtocolError(f"peer sent more than the {self.size} bytes announced for a file")
                try:
                    _copy_range(bfd, fd, start, length)
                except delta.SourceChanged as exc:
                    raise _Redo() from exc  # the basis shrank: the whole file, then
                pos, end = got, got + length
                while pos < end:
                    data = os.pread(fd, min(CHUNK, end - pos), pos)
                    if not data:
                        raise OSError(5, "temp file shorter than written")
                    hasher.update(data)
                    pos += len(data)
                got = end
                self.matched += length
            elif isinstance(msg, FileEnd):
                self._digest = msg.digest if got == self.size else b"short"
                return hasher.digest()
            elif not self.other(msg):
                raise ProtocolError(f"unexpected {type(msg).__name__} inside a file's data")


class ReceivingSide:
    """Builds the destination from the peer's file list and file data."""

    def __init__(self, conn: Connection, dest: str, opts: Options, report: Report,
                 filters: FilterRules) -> None:
        self.conn = conn
        self.dest = dest
        self.opts = opts
        self.report = report
        self.filters = filters
        self.receiver: Receiver | None = None
        self.io_error = False
        self.batches: queue.Queue[DirBatch | None] = queue.Queue()
        self.requests: dict[int, WriteRequest] = {}
        self.redo: dict[int, WriteRequest] = {}
        self.digests: dict[int, bytes] = {}
        self.bases: dict[int, Basis] = {}  # requests that carried a signature
        self.seed = int.from_bytes(os.urandom(8), "big")  # per transfer, as rsync's checksum seed
        self._parts: list[FileEntry] = []
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
            while (batch := self.batches.get()) is not None:
                for request in generator.process(batch):
                    signature = self._signature(request)
                    with self._lock:
                        self.requests[request.entry.index] = request
                    self.conn.send(Request(request.entry.index, signature))
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

    def _delta_wanted(self) -> bool:
        # rsync's default for a remote transfer is the delta algorithm; --inplace would
        # rebuild over its own basis, so it goes whole here.
        return self.opts.whole_file is not True and not self.opts.inplace

    def _open_basis(self, name: bytes) -> int:
        """The destination file `name`, opened beneath the destination root for reading."""
        assert self.receiver is not None
        parent, base = split(name)
        pfd = self.receiver.writer.tree.dir_fd(parent)
        fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=pfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(21, "basis is not a regular file")
        return fd

    def _signature(self, request: WriteRequest) -> bytes | None:
        """Request.signature for a file with a basis (the file it replaces), or None for the whole file."""
        st = request.existing
        if not self._delta_wanted() or st is None or not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return None
        try:
            fd = self._open_basis(request.dest_name)
        except OSError:
            return None
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return None
            block_len = delta.block_length(size)
            if delta.block_count(size, block_len) > max_signature_blocks(self.conn.frame_max):
                log.info("%s: basis too big for one signature frame; sending it whole",
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
            self.bases[request.entry.index] = Basis(sig.block_len, sig.count, sig.size)
        return blob

    def _maybe_done(self) -> None:
        """Once the list is through and every request answered: retry failures once, then Done."""
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
        """Wire entries to local ones: owner names mapped to local ids, -c digests kept."""
        entries = []
        for i, entry in enumerate(msg.entries):
            extras = msg.extras_of(i)
            if extras is not None:
                if extras.digest is not None:
                    self.digests[entry.index] = extras.digest
                if not self.opts.numeric_ids:
                    uid = meta.uid_by_name(extras.uname.decode("utf-8", "replace")) if extras.uname else None
                    gid = meta.gid_by_name(extras.gname.decode("utf-8", "replace")) if extras.gname else None
                    if uid is not None or gid is not None:
                        entry = entry._replace(uid=entry.uid if uid is None else uid,
                                               gid=entry.gid if gid is None else gid)
            entries.append(entry)
        return DirBatch(msg.dir_name, tuple(entries), msg.expanded)

    def _start(self, top: DirBatch) -> None:
        remove = None
        if self.opts.remove_source_files:
            def remove(entry: FileEntry) -> None:
                self.conn.send(Committed(entry.index))
        self.receiver = make_receiver(self.dest, self.opts, top, self.report, self.filters,
                                      io_error=lambda: self.io_error,
                                      source_digest=lambda e: self.digests.get(e.index),
                                      remove_source=remove)
        self.receiver.tree.shared = True  # the generator thread and this one both use it
        self._gen_thread = threading.Thread(target=self._generate, name="zcsync-generator", daemon=True)
        self._gen_thread.start()

    def _receive_file(self, begin: FileBegin) -> None:
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
        if basis is None:
            source = StreamFile(self.conn, begin.index, begin.size, self._flist_or_common)
        else:
            source = DeltaFile(self.conn, begin.index, begin.size, self._flist_or_common, basis,
                               lambda: self._open_basis(request.dest_name))
        try:
            ok = self.receiver.writer.write(request, source)
        except _Redo:
            ok = None
        finally:
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
            self.report.stats.literal_bytes += begin.size
        if ok is not None:
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
        else:
            return common(msg, self.report)
        return True

    def run(self) -> None:
        """Read frames until the sender's Goodbye; then finish the destination."""
        self.conn.start_writer()  # this thread reads and also sends: it must never block on a write
        try:
            while True:
                msg = self.conn.recv()
                if isinstance(msg, FileBegin):
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

