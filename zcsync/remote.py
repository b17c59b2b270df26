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
import threading
from collections.abc import Callable

import xxhash

from . import meta
from .compress import SkipCompress
from .engine import Receiver, make_receiver
from .errors import PARTIAL, VANISHED, FileProblem, ProtocolError
from .filters import FilterRules
from .flist import DirBatch, FileEntry
from .options import Options
from .pathnames import escape
from .protocol import (Committed, Connection, Data, DataZ, Done, EntryExtras, FileBegin, FileEnd, FileSkip,
                       FlistBatch, FlistEnd, Goodbye, Heartbeat, Item, Log, Message, Problem, Request,
                       Stats)
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


def forward_report(conn: Connection, report: Report) -> None:
    """Server side: events travel to the client as Item, problems as Problem."""
    def on_event(event: Event) -> None:
        conn.send(Item(event.itemize, event.name, event.extra, event.size))
    report.on_event = on_event
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

    def send_file(self, index: int) -> None:
        entry = self.entries.get(index)
        if entry is None:
            raise ProtocolError(f"peer requested index {index}, which is not a regular file we sent")
        try:
            fd = self.sender.open(entry)
        except SourceChanged as exc:
            self.conn.send(FileSkip(index, exc.code, str(exc)))
            self.report.problem(FileProblem(escape(entry.name), str(exc), exc.code))
            return
        compress = self.skip_compress is not None and entry.name not in self.skip_compress
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

    def run(self) -> None:
        """Serve requests until the receiver's Done; then say goodbye."""
        flist = threading.Thread(target=self._send_flist, name="zcsync-flist", daemon=True)
        flist.start()
        gave_up = False
        try:
            while True:
                msg = self.conn.recv()
                if isinstance(msg, Request):
                    self.send_file(msg.index)
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
            if not isinstance(msg, (Data, DataZ)) and not self.other(msg):
                raise ProtocolError(f"unexpected {type(msg).__name__} inside a file's data")
        self._digest = msg.digest


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
                    with self._lock:
                        self.requests[request.entry.index] = request
                    self.conn.send(Request(request.entry.index))
                self.conn.flush()
        except BaseException as exc:  # re-raised by run() on the reading thread
            self._gen_error = exc
            with self._lock:
                self.requests.clear()
        with self._lock:
            self._listed = True
        self._maybe_done()

    def _maybe_done(self) -> None:
        """Once the list is through and every request answered: retry failures once, then Done."""
        with self._lock:
            if not self._listed or self.requests or self._done_sent:
                return
            if self.redo and not self._redo_sent:
                self._redo_sent = True
                self.requests.update(self.redo)
                indexes = list(self.redo)
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
        threading.Thread(target=self._generate, name="zcsync-generator", daemon=True).start()

    def _receive_file(self, begin: FileBegin) -> None:
        assert self.receiver is not None
        with self._lock:
            request = self.requests.pop(begin.index, None)
            second_try = begin.index in self.redo
        if request is None:
            raise ProtocolError(f"peer sent data for index {begin.index}, which was not requested")
        source = StreamFile(self.conn, begin.index, begin.size, self._flist_or_common)
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
        try:
            while True:
                msg = self.conn.recv()
                if isinstance(msg, FileBegin):
                    self._receive_file(msg)
                elif isinstance(msg, FileSkip):
                    with self._lock:
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
            self.receiver.writer.finish_delayed()
            self.receiver.generator.finish()
        self.conn.send(stats_message(self.report))
        self.conn.send(Goodbye(self.report.exit_code))
        self.conn.flush()

    def close(self) -> None:
        if self.receiver is not None:
            self.receiver.close()

