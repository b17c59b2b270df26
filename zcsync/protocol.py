"""The wire protocol: frames, messages, bounds checked at receipt, and the handshake.

Everything here is documented byte for byte in ``docs/protocol.md``. The peer is
untrusted: every length, count and index is checked against a bound *before* it is
used or anything is allocated for it, and any violation is a :class:`ProtocolError`
(exit 2). Our own programming errors on the sending side are ``ValueError``.
"""
from __future__ import annotations

import queue
import re
import stat
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Union

from .compress import Codec, CorruptData, RateLimiter, get_codec
from .delta import MAX_STRONG_LEN, MIN_STRONG_LEN, Signature, validate
from .errors import ProtocolError, StartupError, StreamError
from .fastio import SourceChanged
from .flist import DirBatch, FileEntry
from .pathnames import escape, is_safe_name
from .transport.base import Buffer, Stream

__all__ = [
    "MAGIC", "PROTOCOL_VERSION", "MIN_PROTOCOL_VERSION", "DEFAULT_FRAME_MAX", "DEFAULT_CAPS",
    "MAX_NAME", "MAX_LINK", "MAX_ENTRIES", "MAX_REQUESTS", "MAX_XATTRS", "MAX_XATTR_NAME", "MAX_XATTR_VALUE",
    "MAX_TEXT", "MAX_PATH_TEXT", "MAX_OWNER_NAME", "DIGEST_SIZE",
    "Message", "FlistBatch", "EntryExtras", "FlistEnd", "Request", "Requests", "FilesFrom", "FileBegin", "Data", "DataZ", "FileEnd",
    "WholeFile", "FileSkip", "Match", "Done", "Committed", "Problem", "Log", "Item", "Stats", "Heartbeat", "Goodbye",
    "Negotiated", "Connection", "ConnectionClosed", "Decoder", "handshake", "entry_problem",
    "encode_signature", "decode_signature", "signature_fits", "MAX_SIGNATURE_BLOCKS",
]

# -- constants ---------------------------------------------------------------

MAGIC = b"ZCSYNC\x00\x01"  # the last two bytes name the HELLO layout, which never changes
PROTOCOL_VERSION = 1  # newest version we speak
MIN_PROTOCOL_VERSION = 1  # oldest version we speak

DEFAULT_FRAME_MAX = 1024 * 1024 + 64 * 1024  # a 1 MiB data chunk plus room for a full batch
MIN_FRAME_MAX = 128 * 1024  # holds any Problem (~29 KiB) and an entry with one maximal xattr
MAX_FRAME_MAX = 64 * 1024 * 1024

MAX_NAME = 4096  # bytes of a relative name (PATH_MAX)
MAX_LINK = 4096  # bytes of a symlink target
MAX_ENTRIES = 65536  # entries in one FlistBatch message
MAX_REQUESTS = 65536  # files named by one Requests message
MAX_SIGNATURE_BLOCKS = 1 << 24  # blocks of one delta signature: a 2 TiB basis at 128 KiB blocks
MAX_XATTRS = 256  # xattrs per entry
MAX_XATTR_NAME = 255  # XATTR_NAME_MAX
MAX_XATTR_VALUE = 65536  # XATTR_SIZE_MAX
MAX_TEXT = 8192  # bytes of a Log / Problem / FileSkip message text
MAX_PATH_TEXT = 5 * MAX_NAME  # an escaped name: every byte may become "\#ooo"
MAX_OWNER_NAME = 255  # bytes of a user or group name
MAX_ITEMIZE = 16  # an itemize string ("*deleting", ">f.st......")
DIGEST_SIZE = 16  # xxh3-128
MAX_STATS = 64  # counters in a Stats message
MAX_STAT_KEY = 32
MAX_CAPS = 64  # capabilities in a HELLO
MAX_CAPS_BYTES = 8192
MAX_CAP_KEY = 32
MAX_CAP_VALUE = 1024
MAX_CAP_LIST = 16  # items in a comma-separated capability value

_U64_LIMIT = 1 << 63  # sizes are off_t on both ends
_U32_LIMIT = 1 << 32
_BATCH_OVERHEAD = 1 + 2 + MAX_NAME + 4  # flags, directory name, count
_ENTRY_OVERHEAD = 43 + 2 + 4 + 2 + DIGEST_SIZE + 2 * (1 + MAX_OWNER_NAME)  # everything but the variable parts
_SMALL_DATA = 16 * 1024  # DATA payloads below this are copied into the send buffer
_MIN_COMPRESS = 64  # smaller chunks are sent as they are: a compressed block would not be smaller
_BUFFER_SIZE = 64 * 1024  # flush the send buffer when it reaches this
_BANNER_SHOW = 60  # bytes of foreign text quoted in the "protocol mismatch" error

DEFAULT_CAPS: Mapping[str, str] = {
    "checksums": "xxh3-128",
    "compress": "none",
    "frame-max": str(DEFAULT_FRAME_MAX),
    "request-batch": "1",  # we decode Requests (0x23): a peer that lists it may send them
    "signature-parts": "1",  # we join a signature sent over several Request frames (_R_MORE)
}

_HEADER = struct.Struct(">BI")  # frame: type, payload length
_HELLO = struct.Struct(">HHH")  # after the magic: min version, max version, caps length
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ENTRY = struct.Struct(">IBIQqIIQH")  # index flags mode size mtime_ns uid gid rdev name_len
_XATTR = struct.Struct(">B")
_REQUEST = struct.Struct(">IBI")  # index, flags, signature length
_FILE_BEGIN = struct.Struct(">IQ")
_DATAZ = struct.Struct(">I")  # uncompressed length; the compressed block follows
_FILE_END = struct.Struct(">I16s")
_MATCH = struct.Struct(">II")  # first block, block count
_SIG_HEAD = struct.Struct(">BIBIQQ")  # layout, block_len, strong_len, count, basis size, seed
_SIG_LAYOUT = 1
_FILE_SKIP = struct.Struct(">IBH")
_PROBLEM = struct.Struct(">BH")
_LOG = struct.Struct(">BH")
_STAT = struct.Struct(">Q")

# FlistBatch flags
_B_DIR = 0x01
_B_MORE = 0x02
_B_IO_ERROR = 0x04
# entry flags
_E_LINK = 0x01
_E_HLINK = 0x02
_E_XATTRS = 0x04
_E_DIGEST = 0x08
_E_UNAME = 0x10
_E_GNAME = 0x20
_E_EXPANDED = 0x40
_E_KNOWN = 0x7F
# Request flags
_R_SIGNATURE = 0x01
_R_MORE = 0x02  # only with _R_SIGNATURE: the signature goes on in the next frame, a Request of the same index
_R_INPLACE = 0x10  # only with _R_SIGNATURE
_R_APPEND = 0x20  # a u64 offset follows the signature field
_R_APPEND_VERIFY = 0x40  # only with _R_APPEND
_R_KNOWN = _R_SIGNATURE | _R_MORE | _R_APPEND | _R_APPEND_VERIFY | _R_INPLACE

_S_IFMT, _S_IFREG = 0o170000, stat.S_IFREG
_FILE_TYPES = frozenset({stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR,
                         stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK})
_LOG_LEVELS = frozenset({10, 20, 30, 40, 50})  # logging.DEBUG .. logging.CRITICAL
_CAP_KEY = re.compile(r"[a-z][a-z0-9-]{0,31}\Z")
_CAP_VALUE = re.compile(r"[\x20-\x7e]*\Z")
_CAP_ITEM = re.compile(r"[a-z0-9][a-z0-9-]{0,31}\Z")
_STAT_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
# Control characters a peer could use to forge log lines or drive the terminal.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


# -- messages ----------------------------------------------------------------

class Message:
    """Base of every framed message; TYPE is its one-byte frame type."""

    __slots__ = ()
    TYPE: ClassVar[int]
    NAME: ClassVar[str]


@dataclass(frozen=True, slots=True)
class EntryExtras:
    """Per-entry wire fields FileEntry does not carry: -c digest and owner names for mapping."""

    digest: bytes | None = None  # xxh3-128 of a regular file's contents (-c)
    uname: bytes | None = None  # owner name, for uid mapping without --numeric-ids
    gname: bytes | None = None

    @property
    def empty(self) -> bool:
        return self.digest is None and self.uname is None and self.gname is None


@dataclass(frozen=True, slots=True)
class FlistBatch(Message):
    """One directory level of the file list (see flist.DirBatch), or one part of it.

    ``extras`` is empty or parallel to ``entries``. ``more`` says the next FlistBatch
    continues the same directory: the receiver must not act on the directory as
    complete (deletions) until a part with ``more=False`` arrives. Connection.send
    splits big batches into parts itself. ``io_error`` says the sender has had an
    I/O error so far in the scan: from then on the receiver must not delete.
    """

    TYPE: ClassVar[int] = 0x10
    NAME: ClassVar[str] = "FlistBatch"
    dir_name: bytes | None
    expanded: frozenset[bytes]
    entries: tuple[FileEntry, ...]
    extras: tuple[EntryExtras | None, ...] = ()
    more: bool = False
    io_error: bool = False

    def __post_init__(self) -> None:
        extras = tuple(None if x is None or x.empty else x for x in self.extras)
        if extras and len(extras) != len(self.entries):
            raise ValueError("FlistBatch.extras must be empty or parallel to entries")
        object.__setattr__(self, "extras", extras if any(x is not None for x in extras) else ())
        object.__setattr__(self, "entries", tuple(self.entries))
        object.__setattr__(self, "expanded", frozenset(self.expanded))

    @classmethod
    def from_dir_batch(cls, batch: DirBatch, extras: tuple[EntryExtras | None, ...] = (),
                       io_error: bool = False) -> FlistBatch:
        return cls(batch.dir_name, batch.expanded, batch.entries, extras, io_error=io_error)

    def to_dir_batch(self) -> DirBatch:
        return DirBatch(self.dir_name, self.entries, self.expanded)

    def extras_of(self, i: int) -> EntryExtras | None:
        """The extras of entries[i], or None."""
        return self.extras[i] if self.extras else None


@dataclass(frozen=True, slots=True)
class FlistEnd(Message):
    """The file list is complete; io_error suppresses deletions on the receiver."""

    TYPE: ClassVar[int] = 0x11
    NAME: ClassVar[str] = "FlistEnd"
    io_error: bool = False


@dataclass(frozen=True, slots=True)
class Request(Message):
    """Generator -> sender: send me this file (signature: opaque delta basis, None = whole file).

    inplace (with a signature): the receiver rebuilds over the basis itself, so a Match
    may only use blocks it has not overwritten yet (--inplace).  append_from (without a
    signature): the receiver has that many bytes of the file already; send only the rest
    (--append); append_verify: FileEnd's digest covers the whole file, not just the rest.
    """

    TYPE: ClassVar[int] = 0x20
    NAME: ClassVar[str] = "Request"
    index: int
    signature: bytes | None = None
    inplace: bool = False
    append_from: int | None = None
    append_verify: bool = False


@dataclass(frozen=True, slots=True)
class Requests(Message):
    """Generator -> sender: send me these files whole, in this order (Request(index) each,
    in one frame). Sent only to a peer that announced the request-batch capability."""

    TYPE: ClassVar[int] = 0x23
    NAME: ClassVar[str] = "Requests"
    indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Done(Message):
    """Generator -> sender: no more requests."""

    TYPE: ClassVar[int] = 0x21
    NAME: ClassVar[str] = "Done"


@dataclass(frozen=True, slots=True)
class FilesFrom(Message):
    """Receiver (client) -> sender (server): part of a --files-from list, before anything else.

    The names are relative to the source directory; `last` ends the list.
    """

    TYPE: ClassVar[int] = 0x22
    NAME: ClassVar[str] = "FilesFrom"
    names: tuple[bytes, ...]
    last: bool = False


@dataclass(frozen=True, slots=True)
class FileBegin(Message):
    """Sender -> writer: the data of file `index` follows (size: bytes the scan saw)."""

    TYPE: ClassVar[int] = 0x30
    NAME: ClassVar[str] = "FileBegin"
    index: int
    size: int


@dataclass(frozen=True, slots=True)
class Data(Message):
    """A chunk of the open file's data (the whole payload of the frame)."""

    TYPE: ClassVar[int] = 0x31
    NAME: ClassVar[str] = "Data"
    payload: bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class DataZ(Message):
    """A chunk of the open file's data, compressed with the negotiated codec.

    ``size`` is the chunk's uncompressed length (1 .. frame-max), ``payload`` the
    compressed block, always shorter than ``size`` (else the chunk goes as Data).
    Connection.inflate() turns it back into ``size`` bytes, and never into more.
    """

    TYPE: ClassVar[int] = 0x34
    NAME: ClassVar[str] = "DataZ"
    size: int
    payload: bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Match(Message):
    """Sender -> writer, inside a delta file: copy `count` basis blocks from `first_block` on.

    Only valid for a file whose Request carried a signature; the receiver checks the
    run against the basis block count it announced (first_block + count <= count).
    """

    TYPE: ClassVar[int] = 0x35
    NAME: ClassVar[str] = "Match"
    first_block: int
    count: int


@dataclass(frozen=True, slots=True)
class FileEnd(Message):
    """The open file's data is complete; digest is xxh3-128 of what the sender read."""

    TYPE: ClassVar[int] = 0x32
    NAME: ClassVar[str] = "FileEnd"
    index: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class WholeFile(Message):
    """Sender -> writer: a small file in one frame (FileBegin, its Data and FileEnd in one).

    The size is the payload's; digest is xxh3-128 of data. Saves two frames per file,
    which is most of the protocol's cost when files are small.
    """

    TYPE: ClassVar[int] = 0x36
    NAME: ClassVar[str] = "WholeFile"
    index: int
    digest: bytes
    data: bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class FileSkip(Message):
    """Sender -> writer: file `index` will not come (or the open one is abandoned)."""

    TYPE: ClassVar[int] = 0x33
    NAME: ClassVar[str] = "FileSkip"
    index: int
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class Committed(Message):
    """Receiver -> sender: file `index` is durably in place (for --remove-source-files)."""

    TYPE: ClassVar[int] = 0x40
    NAME: ClassVar[str] = "Committed"
    index: int


@dataclass(frozen=True, slots=True)
class Problem(Message):
    """A per-file problem on the peer: the run goes on, `code` counts toward the exit code."""

    TYPE: ClassVar[int] = 0x50
    NAME: ClassVar[str] = "Problem"
    path: str
    message: str
    code: int


@dataclass(frozen=True, slots=True)
class Log(Message):
    """A log line from the peer; level is a logging level number (10..50)."""

    TYPE: ClassVar[int] = 0x51
    NAME: ClassVar[str] = "Log"
    level: int
    text: str


@dataclass(frozen=True, slots=True)
class Item(Message):
    """A change the peer made or will make, for -i / -v output on the client (an itemize line)."""

    TYPE: ClassVar[int] = 0x52
    NAME: ClassVar[str] = "Item"
    itemize: str
    name: str
    extra: str = ""
    size: int = 0


@dataclass(frozen=True, slots=True)
class Stats(Message):
    """The peer's counters, as (name, value) pairs of u64."""

    TYPE: ClassVar[int] = 0x60
    NAME: ClassVar[str] = "Stats"
    counters: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(cls, mapping: Mapping[str, int]) -> Stats:
        return cls(tuple((k, int(v)) for k, v in mapping.items()))

    def as_dict(self) -> dict[str, int]:
        return dict(self.counters)


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """Keeps an idle connection under --timeout alive."""

    TYPE: ClassVar[int] = 0x70
    NAME: ClassVar[str] = "Heartbeat"


@dataclass(frozen=True, slots=True)
class Goodbye(Message):
    """Last message of a side: its exit code. Nothing may follow it."""

    TYPE: ClassVar[int] = 0x7F
    NAME: ClassVar[str] = "Goodbye"
    exit_code: int = 0


AnyMessage = Union[FlistBatch, FlistEnd, Request, Requests, Done, FilesFrom, FileBegin, Data, DataZ, Match, FileEnd, WholeFile,
                   FileSkip, Committed, Problem, Log, Item, Stats, Heartbeat, Goodbye]

_TYPES: dict[int, type[Message]] = {cls.TYPE: cls for cls in (
    FlistBatch, FlistEnd, Request, Requests, Done, FilesFrom, FileBegin, Data, DataZ, Match, FileEnd, WholeFile,
    FileSkip, Committed, Problem, Log, Item, Stats, Heartbeat, Goodbye)}
# Exact payload sizes of fixed-layout messages, checked from the header alone.
_FIXED_SIZE: dict[int, int] = {
    FlistEnd.TYPE: 1, Done.TYPE: 0, FileBegin.TYPE: _FILE_BEGIN.size, FileEnd.TYPE: _FILE_END.size,
    Match.TYPE: _MATCH.size,
    Committed.TYPE: 4, Heartbeat.TYPE: 0, Goodbye.TYPE: 1,
}
_COMMON = frozenset({Problem, Log, Item, Stats, Heartbeat, Goodbye})
#: What each side accepts from its peer; the rest is a protocol error.
ACCEPTS: dict[str, frozenset[type[Message]]] = {
    "sender": _COMMON | {Request, Requests, Done, Committed, FilesFrom},
    "receiver": _COMMON | {FlistBatch, FlistEnd, FileBegin, Data, DataZ, Match, FileEnd, WholeFile, FileSkip},
}


# -- helpers -----------------------------------------------------------------

def _q(name: bytes) -> str:
    """A name quoted for an error message."""
    return "'" + escape(name) + "'"


def _show(data: bytes) -> str:
    """Foreign bytes shown safely: printable ASCII as is, the rest as Python escapes."""
    return repr(bytes(data))[2:-1]


def _encode_text(text: str, limit: int) -> bytes:
    """UTF-8, cut to `limit` bytes on a character boundary (logs are not worth failing over)."""
    raw = text.encode("utf-8", "backslashreplace")
    if len(raw) > limit:
        raw = raw[:limit].decode("utf-8", "ignore").encode("utf-8")
    return raw


def _clean_text(raw: bytes, what: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"peer sent {what} that is not UTF-8") from None
    return _CONTROL.sub(lambda m: "\\#%03o" % ord(m.group()), text)


def _name_problem(base: bytes, what: str = "an unsafe name") -> str:
    return f"{what}: {_q(base)}"


def _semantic_problem(e: FileEntry, x: EntryExtras | None, missing: bool = False) -> str | None:
    """What is wrong with an entry's values, bounds on lengths aside (checked while parsing).
    missing: a missing-operand entry (mode 0) is allowed here."""
    if e.mode == 0 and missing:
        return _missing_problem(e, x)
    if e.mode > 0o177777 or stat.S_IFMT(e.mode) not in _FILE_TYPES:
        return f"an unknown file type (mode 0o{e.mode:o}) for {_q(e.name)}"
    if e.name == b"." and not stat.S_ISDIR(e.mode):
        return "a non-directory named '.'"
    if not 0 <= e.size < _U64_LIMIT:
        return f"an impossible size {e.size} for {_q(e.name)}"
    if stat.S_ISLNK(e.mode):
        if not e.link or b"\0" in e.link:
            return f"a bad symlink target for {_q(e.name)}"
    elif e.link is not None:
        return f"a symlink target on non-symlink {_q(e.name)}"
    if e.hlink is not None and not 0 <= e.hlink < e.index:
        return f"a hard link of {_q(e.name)} to index {e.hlink}, which is not an earlier entry"
    if e.xattrs:
        for key in e.xattrs:
            if not key or b"\0" in key:
                return f"a bad xattr name on {_q(e.name)}"
    if x is not None:
        if x.digest is not None and len(x.digest) != DIGEST_SIZE:
            return f"a digest of {len(x.digest)} bytes for {_q(e.name)}"
        for owner in (x.uname, x.gname):
            if owner is not None and (not owner or b"\0" in owner):
                return f"a bad owner name for {_q(e.name)}"
    return None


def _missing_problem(e: FileEntry, x: EntryExtras | None) -> str | None:
    """What is wrong with a missing-operand entry: it is a name and nothing else."""
    if e.name == b".":
        return "a missing-operand entry named '.'"
    if e.size or e.mtime_ns or e.uid or e.gid or e.rdev or e.link is not None or e.hlink is not None \
            or e.xattrs is not None or x is not None:
        return f"a missing-operand entry with attributes for {_q(e.name)}"
    return None


def entry_problem(entry: FileEntry, extras: EntryExtras | None = None,
                  frame_max: int = DEFAULT_FRAME_MAX, missing: bool = False) -> str | None:
    """Why this entry cannot be sent (the sender skips it with this text), or None.

    Names longer than MAX_NAME, xattrs beyond the bounds or too big for one frame
    (pass the negotiated conn.frame_max) would make the peer end the session or
    the encoder fail; the sender should report them per file instead. missing: a
    missing-operand entry (mode 0, --delete-missing-args) may be sent (in a top batch).
    """
    if len(entry.name) > MAX_NAME:
        return f"name too long ({len(entry.name)} bytes, limit {MAX_NAME})"
    if not is_safe_name(entry.name):
        return _name_problem(entry.name)
    if entry.link is not None and len(entry.link) > MAX_LINK:
        return f"symlink target too long ({len(entry.link)} bytes, limit {MAX_LINK})"
    if entry.xattrs:
        if len(entry.xattrs) > MAX_XATTRS:
            return f"too many xattrs ({len(entry.xattrs)}, limit {MAX_XATTRS})"
        total = 0
        for key, value in entry.xattrs.items():
            if len(key) > MAX_XATTR_NAME:
                return f"xattr name too long ({len(key)} bytes)"
            if len(value) > MAX_XATTR_VALUE:
                return f"xattr value too large ({len(value)} bytes, limit {MAX_XATTR_VALUE})"
            total += 5 + len(key) + len(value)
        # The whole entry must fit one FlistBatch frame next to a worst-case batch header.
        limit = frame_max - _BATCH_OVERHEAD - _ENTRY_OVERHEAD - len(entry.name) - len(entry.link or b"")
        if total > limit:
            return f"xattrs too large to send ({total} bytes, limit {max(limit, 0)})"
    if extras is not None:
        for owner in (extras.uname, extras.gname):
            if owner is not None and len(owner) > MAX_OWNER_NAME:
                return f"owner name too long ({len(owner)} bytes)"
    return _semantic_problem(entry, extras, missing)


# -- encoding ----------------------------------------------------------------

def _encode_entry(e: FileEntry, x: EntryExtras | None, base: bytes, expanded: bool) -> bytes:
    flags = _E_EXPANDED if expanded else 0
    tail: list[bytes] = []
    if e.link is not None:
        flags |= _E_LINK
        tail += (_U16.pack(len(e.link)), e.link)
    if e.hlink is not None:
        flags |= _E_HLINK
        tail.append(_U32.pack(e.hlink))
    if e.xattrs is not None:
        flags |= _E_XATTRS
        tail.append(_U16.pack(len(e.xattrs)))
        for key, value in e.xattrs.items():
            tail += (_XATTR.pack(len(key)), key, _U32.pack(len(value)), value)
    if x is not None:
        if x.digest is not None:
            flags |= _E_DIGEST
            tail.append(x.digest)
        if x.uname is not None:
            flags |= _E_UNAME
            tail += (_U8.pack(len(x.uname)), x.uname)
        if x.gname is not None:
            flags |= _E_GNAME
            tail += (_U8.pack(len(x.gname)), x.gname)
    head = _ENTRY.pack(e.index, flags, e.mode, e.size, e.mtime_ns, e.uid, e.gid, e.rdev, len(base))
    return b"".join((head, base, *tail))


def _encode_flist(batch: FlistBatch, frame_max: int, next_index: int) -> tuple[list[bytes], int]:
    """Encode a batch as one or more FlistBatch payloads, each within frame_max and MAX_ENTRIES."""
    d = batch.dir_name
    if d is None:
        head = b""
        prefix = None
    else:
        if not is_safe_name(d) or len(d) > MAX_NAME:
            raise ValueError(f"cannot send the unsafe directory name {_q(d)}")
        head = _U16.pack(len(d)) + d
        prefix = b"" if d == b"." else d + b"/"
    flags = (_B_DIR if d is not None else 0) | (_B_IO_ERROR if batch.io_error else 0)
    budget = frame_max - (1 + len(head) + 4)
    dirs = {e.name for e in batch.entries if e.is_dir}
    if not batch.expanded <= dirs:
        raise ValueError(f"expanded names that are not directories of the batch: "
                         f"{sorted(batch.expanded - dirs)[:3]!r}")
    parts: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    seen: set[bytes] = set()
    for i, e in enumerate(batch.entries):
        x = batch.extras[i] if batch.extras else None
        problem = entry_problem(e, x, frame_max, missing=d is None)
        if problem is not None:
            raise ValueError(f"cannot send {_q(e.name)}: {problem}")
        if e.index < next_index:
            raise ValueError(f"entry index {e.index} of {_q(e.name)} is not above {next_index - 1}")
        next_index = e.index + 1
        if e.name in seen:
            raise ValueError(f"duplicate name {_q(e.name)} in a batch")
        seen.add(e.name)
        if prefix is None:
            base = e.name
        else:
            base = e.name[len(prefix):]
            if not e.name.startswith(prefix) or not base or b"/" in base or base in (b".", b".."):
                raise ValueError(f"{_q(e.name)} is not directly inside {_q(d or b'')}")
        try:
            enc = _encode_entry(e, x, base, e.name in batch.expanded)
        except struct.error as exc:
            raise ValueError(f"cannot encode {_q(e.name)}: {exc}") from None
        if len(enc) > budget:
            raise ValueError(f"entry {_q(e.name)} does not fit in a frame ({len(enc)} bytes)")
        if len(chunk) == MAX_ENTRIES or size + len(enc) > budget:
            parts.append(b"".join((_U8.pack(flags | _B_MORE), head, _U32.pack(len(chunk)), *chunk)))
            chunk, size = [], 0
        chunk.append(enc)
        size += len(enc)
    last = flags | (_B_MORE if batch.more else 0)
    parts.append(b"".join((_U8.pack(last), head, _U32.pack(len(chunk)), *chunk)))
    return parts, next_index


def _encode_request(msg: Request, frame_max: int) -> list[bytes]:
    """A Request as one frame, or a signature too big for one as several Request frames: each
    part but the last flagged _R_MORE (only for a peer that listed signature-parts)."""
    sig = msg.signature
    room = frame_max - _REQUEST.size
    if sig is None or len(sig) <= room:
        return [encode_payload(msg, frame_max)]
    if msg.append_from is not None or msg.append_verify:
        raise ValueError("an append Request carries no signature")
    flags = _R_SIGNATURE | (_R_INPLACE if msg.inplace else 0)
    view = memoryview(sig)
    parts = []
    for pos in range(0, len(sig), room):
        chunk = view[pos:pos + room]
        more = _R_MORE if pos + room < len(sig) else 0
        parts.append(_REQUEST.pack(msg.index, flags | more, len(chunk)) + chunk)
    return parts


def encode_payload(msg: Message, frame_max: int = DEFAULT_FRAME_MAX) -> bytes:
    """The payload of one frame for a message other than FlistBatch (which may need several)."""
    try:
        # The most frequent first: one WholeFile per small file.
        if isinstance(msg, WholeFile):
            if len(msg.digest) != DIGEST_SIZE:
                raise ValueError(f"digest must be {DIGEST_SIZE} bytes")
            if _FILE_END.size + len(msg.data) > frame_max:
                raise ValueError(f"a file of {len(msg.data)} bytes does not fit in one frame")
            return _FILE_END.pack(msg.index, msg.digest) + bytes(msg.data)
        if isinstance(msg, Request):
            sig = msg.signature
            if msg.append_from is not None:
                if sig is not None or msg.inplace:
                    raise ValueError("an append Request carries no signature")
                if not 0 <= msg.append_from < _U64_LIMIT:
                    raise ValueError(f"impossible append offset {msg.append_from}")
                flags = _R_APPEND | (_R_APPEND_VERIFY if msg.append_verify else 0)
                return _REQUEST.pack(msg.index, flags, 0) + _U64.pack(msg.append_from)
            if msg.append_verify:
                raise ValueError("append_verify without append_from")
            if sig is None:
                if msg.inplace:
                    raise ValueError("inplace without a signature")
                return _REQUEST.pack(msg.index, 0, 0)
            if len(sig) > frame_max - _REQUEST.size:
                raise ValueError(f"signature of {len(sig)} bytes does not fit in a frame")
            flags = _R_SIGNATURE | (_R_INPLACE if msg.inplace else 0)
            return _REQUEST.pack(msg.index, flags, len(sig)) + sig
        if isinstance(msg, Requests):
            if not 0 < len(msg.indices) <= MAX_REQUESTS:
                raise ValueError(f"a Requests message names 1 to {MAX_REQUESTS} files")
            return struct.pack(f">{len(msg.indices)}I", *msg.indices)
        if isinstance(msg, FileBegin):
            if not 0 <= msg.size < _U64_LIMIT:
                raise ValueError(f"impossible file size {msg.size}")
            return _FILE_BEGIN.pack(msg.index, msg.size)
        if isinstance(msg, Data):
            return bytes(msg.payload)
        if isinstance(msg, DataZ):
            if not 0 < msg.size <= frame_max:
                raise ValueError(f"DataZ size {msg.size} is not in 1..{frame_max}")
            if not 0 < len(msg.payload) < msg.size:
                raise ValueError("a DataZ block must be shorter than its data (send Data instead)")
            return _DATAZ.pack(msg.size) + bytes(msg.payload)
        if isinstance(msg, Match):
            if not (0 <= msg.first_block and 1 <= msg.count and msg.first_block + msg.count <= _U32_LIMIT):
                raise ValueError(f"bad block run {msg.first_block}+{msg.count}")
            return _MATCH.pack(msg.first_block, msg.count)
        if isinstance(msg, FileEnd):
            if len(msg.digest) != DIGEST_SIZE:
                raise ValueError(f"digest must be {DIGEST_SIZE} bytes")
            return _FILE_END.pack(msg.index, msg.digest)
        if isinstance(msg, FileSkip):
            text = _encode_text(msg.message, MAX_TEXT)
            return _FILE_SKIP.pack(msg.index, msg.code, len(text)) + text
        if isinstance(msg, FlistEnd):
            return _U8.pack(1 if msg.io_error else 0)
        if isinstance(msg, FilesFrom):
            for name in msg.names:
                if not name or len(name) > MAX_NAME or b"\0" in name:
                    raise ValueError(f"bad --files-from name {name!r}")
            blob = b"\0".join(msg.names)
            if 1 + len(blob) > frame_max:
                raise ValueError("FilesFrom names do not fit in a frame")
            return _U8.pack(1 if msg.last else 0) + blob
        if isinstance(msg, (Done, Heartbeat)):
            return b""
        if isinstance(msg, Committed):
            return _U32.pack(msg.index)
        if isinstance(msg, Problem):
            path = _encode_text(msg.path, MAX_PATH_TEXT)
            text = _encode_text(msg.message, MAX_TEXT)
            return b"".join((_PROBLEM.pack(msg.code, len(path)), path, _U16.pack(len(text)), text))
        if isinstance(msg, Item):
            itemize = _encode_text(msg.itemize, MAX_ITEMIZE)
            name = _encode_text(msg.name, MAX_PATH_TEXT)
            extra = _encode_text(msg.extra, MAX_PATH_TEXT + 8)
            if not 0 <= msg.size < _U64_LIMIT:
                raise ValueError(f"impossible size {msg.size}")
            return b"".join((_U8.pack(len(itemize)), itemize, _U16.pack(len(name)), name,
                             _U16.pack(len(extra)), extra, _U64.pack(msg.size)))
        if isinstance(msg, Log):
            if msg.level not in _LOG_LEVELS:
                raise ValueError(f"log level must be one of {sorted(_LOG_LEVELS)}")
            text = _encode_text(msg.text, MAX_TEXT)
            return _LOG.pack(msg.level, len(text)) + text
        if isinstance(msg, Stats):
            if len(msg.counters) > MAX_STATS:
                raise ValueError(f"more than {MAX_STATS} counters")
            out = [_U16.pack(len(msg.counters))]
            keys: set[str] = set()
            for key, value in msg.counters:
                if not _STAT_KEY.match(key) or key in keys:
                    raise ValueError(f"bad or duplicate counter name {key!r}")
                keys.add(key)
                out += (_U8.pack(len(key)), key.encode("ascii"), _STAT.pack(value))
            return b"".join(out)
        if isinstance(msg, Goodbye):
            return _U8.pack(msg.exit_code)
    except struct.error as exc:
        raise ValueError(f"cannot encode {msg.NAME}: {exc}") from None
    raise ValueError(f"not a message with a single-frame encoding: {msg!r}")


# -- delta signatures (the opaque Request.signature blob) ------------------

def signature_size(count: int, strong_len: int) -> int:
    """Bytes of the signature blob of `count` blocks with strong sums of `strong_len` bytes."""
    return _SIG_HEAD.size + count * (4 + strong_len)


def signature_fits(count: int, strong_len: int, frame_max: int, parts: bool) -> bool:
    """May a signature of this shape be sent: in one Request frame, or (parts: the peer listed
    signature-parts) in several, up to MAX_SIGNATURE_BLOCKS blocks?"""
    if parts:
        return count <= MAX_SIGNATURE_BLOCKS
    return signature_size(count, strong_len) <= frame_max - _REQUEST.size


def encode_signature(sig: Signature) -> bytes:
    """Request.signature for a basis: a small header, then the weak and the strong table."""
    return b"".join((_SIG_HEAD.pack(_SIG_LAYOUT, sig.block_len, sig.strong_len, sig.count, sig.size, sig.seed),
                     sig.weak, sig.strong))


def decode_signature(blob: bytes) -> Signature:
    """Parse and validate a peer's Request.signature (every count and length is checked).

    Raises ProtocolError (SignatureError) on anything inconsistent: a peer must not be
    able to make the sender index outside the tables (CVE-2024-12084) or allocate
    beyond what its frames carried (the Decoder bounded those at receipt).
    """
    r = _Reader(blob, "signature")
    layout, block_len, strong_len, count, size, seed = r.unpack(_SIG_HEAD)
    if layout != _SIG_LAYOUT:
        raise ProtocolError(f"peer sent a signature of unknown layout {layout}")
    if size >= _U64_LIMIT:
        raise ProtocolError(f"peer sent a signature of an impossible basis size {size}")
    if not MIN_STRONG_LEN <= strong_len <= MAX_STRONG_LEN:
        raise ProtocolError(f"peer sent a signature with strong sums of {strong_len} bytes "
                            f"(allowed {MIN_STRONG_LEN}..{MAX_STRONG_LEN})")
    if not 0 <= count <= MAX_SIGNATURE_BLOCKS:
        raise ProtocolError(f"peer sent a signature of {count} blocks (limit {MAX_SIGNATURE_BLOCKS})")
    weak = r.take(4 * count, 4 * count, "a weak sum table")
    strong = r.take(strong_len * count, MAX_STRONG_LEN * count, "a strong sum table")
    r.finish()
    return validate(Signature(block_len, strong_len, count, size, weak, strong, seed), MAX_SIGNATURE_BLOCKS)


# -- decoding ----------------------------------------------------------------

class _Reader:
    """Bounds-checked cursor over one payload."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, buf: bytes, what: str) -> None:
        self.buf = buf
        self.pos = 0
        self.what = what

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def unpack(self, st: struct.Struct) -> tuple:
        end = self.pos + st.size
        if end > len(self.buf):
            raise ProtocolError(f"peer sent a truncated {self.what} message")
        values = st.unpack_from(self.buf, self.pos)
        self.pos = end
        return values

    def take(self, n: int, limit: int, what: str) -> bytes:
        if n > limit:
            raise ProtocolError(f"peer sent {what} of {n} bytes (limit {limit})")
        end = self.pos + n
        if end > len(self.buf):
            raise ProtocolError(f"peer sent a truncated {self.what} message")
        data = self.buf[self.pos:end]
        self.pos = end
        return data

    def finish(self) -> None:
        if self.pos != len(self.buf):
            raise ProtocolError(f"peer sent {len(self.buf) - self.pos} trailing bytes in a {self.what} message")


_NOTHING = object()


@dataclass
class _SignatureParts:
    """A signature arriving in several Request frames (Decoder._signature_part)."""

    index: int
    flags: int  # of every part, but _R_MORE
    size: int  # what its head announced
    have: int = 0
    chunks: list[bytes] = field(default_factory=list)


class Decoder:
    """Turns frames into messages and enforces the session rules that need memory.

    ``side`` ("sender" or "receiver") limits what the peer may send us; None allows
    every message (tests, tools). ``sent_next_index`` is kept up to date by the
    Connection so that Request/Committed indexes can be checked on the sender.
    ``codec`` is the negotiated compression (None: the peer may not send DataZ).
    """

    def __init__(self, side: str | None = None, frame_max: int = DEFAULT_FRAME_MAX,
                 codec: Codec | None = None) -> None:
        if side is not None and side not in ACCEPTS:
            raise ValueError(f"side must be one of {sorted(ACCEPTS)} or None")
        self.accepts = ACCEPTS.get(side) if side else None
        self.frame_max = frame_max
        self.codec = codec
        self.next_index = 0  # every received entry index must be at least this
        self.sent_next_index = 0  # the same for entries we sent
        self.entries_received = 0
        self.flist_done = False
        self.requests_done = False
        self.goodbye = False
        self.open_file: int | None = None
        self.pending_dirs: set[bytes] = set()  # expanded, contents not yet listed
        # May the peer send missing-operand entries (mode 0, in a top batch)? Only a receiver
        # whose options have --delete-missing-args sets this.
        self.missing_entries = False
        self._cont: object = _NOTHING  # dir_name of a batch whose next part must follow
        self._cont_names: set[bytes] = set()
        self._sig: _SignatureParts | None = None  # a signature whose next part must follow

    @property
    def index_limit(self) -> int:
        """File indexes a peer may name are below this."""
        return max(self.next_index, self.sent_next_index)

    def check_header(self, mtype: int, length: int) -> type[Message]:
        """Validate a frame header before its payload is read (or allocated)."""
        cls = _TYPES.get(mtype)
        if cls is None:
            raise ProtocolError(f"peer sent an unknown message type 0x{mtype:02x}")
        if self.goodbye:
            raise ProtocolError(f"peer sent {cls.NAME} after Goodbye")
        if self.accepts is not None and cls not in self.accepts:
            raise ProtocolError(f"peer sent {cls.NAME}, which this side never accepts")
        if self._sig is not None and cls is not Request:
            raise ProtocolError(f"peer sent {cls.NAME} in the middle of the signature for index {self._sig.index}")
        if length > self.frame_max:
            raise ProtocolError(f"peer sent a {cls.NAME} frame of {length} bytes (limit {self.frame_max})")
        fixed = _FIXED_SIZE.get(mtype)
        if fixed is not None and length != fixed:
            raise ProtocolError(f"peer sent a {cls.NAME} message of {length} bytes (expected {fixed})")
        return cls

    def decode(self, mtype: int, payload: bytes) -> Message | None:
        """Decode and validate one frame (header checks included)."""
        return self.decode_payload(self.check_header(mtype, len(payload)), payload)

    def decode_payload(self, cls: type[Message], payload: bytes) -> Message | None:
        """Decode and validate a payload whose header check_header() accepted; None for a
        part of a message that goes on in the next frame (a signature sent in parts)."""
        r = _Reader(payload, cls.NAME)
        msg = _DECODE[cls](self, r)
        r.finish()
        return msg

    def _index(self, index: int, what: str) -> None:
        if index >= self.index_limit:
            raise ProtocolError(f"peer sent {what} for index {index}, which is not in the file list")

    # one method per message type ---------------------------------------------
    def _d_FlistBatch(self, r: _Reader) -> FlistBatch:
        if self.flist_done:
            raise ProtocolError("peer sent a FlistBatch after FlistEnd")
        (flags,) = r.unpack(_U8)
        if flags & ~(_B_DIR | _B_MORE | _B_IO_ERROR):
            raise ProtocolError(f"peer sent unknown FlistBatch flags 0x{flags:02x}")
        dir_name: bytes | None = None
        if flags & _B_DIR:
            (n,) = r.unpack(_U16)
            dir_name = r.take(n, MAX_NAME, "a directory name")
            if not is_safe_name(dir_name):
                raise ProtocolError(f"peer sent an unsafe name: {_q(dir_name)}")
        (count,) = r.unpack(_U32)
        if count > MAX_ENTRIES:
            raise ProtocolError(f"peer sent a FlistBatch of {count} entries (limit {MAX_ENTRIES})")
        if count * (_ENTRY.size + 1) > r.remaining():
            raise ProtocolError("peer sent a truncated FlistBatch message")
        if self._cont is not _NOTHING:
            if dir_name != self._cont:
                raise ProtocolError(f"peer interrupted the file list of {_q(self._cont or b'(top)')} "  # type: ignore[arg-type]
                                    f"with {_q(dir_name or b'(top)')}")
            names = self._cont_names
        else:
            if dir_name is not None:
                if dir_name not in self.pending_dirs:
                    raise ProtocolError(f"peer sent the contents of {_q(dir_name)}, "
                                        "which it did not announce as an expanded directory")
                self.pending_dirs.discard(dir_name)
            names = set()
        prefix = None if dir_name is None else (b"" if dir_name == b"." else dir_name + b"/")
        entries: list[FileEntry] = []
        extras: list[EntryExtras | None] = []
        expanded: list[bytes] = []
        next_index = self.next_index
        buf, entry_size, unpack_entry = r.buf, _ENTRY.size, _ENTRY.unpack_from
        for _ in range(count):
            # The fixed part and the name read in place (r.unpack and r.take, inlined: this
            # loop runs once per file of the transfer).
            pos = r.pos
            if pos + entry_size > len(buf):
                raise ProtocolError("peer sent a truncated FlistBatch message")
            index, ef, mode, size, mtime_ns, uid, gid, rdev, nlen = unpack_entry(buf, pos)
            if ef & ~_E_KNOWN:
                raise ProtocolError(f"peer sent unknown entry flags 0x{ef:02x}")
            pos += entry_size
            if nlen > MAX_NAME:
                raise ProtocolError(f"peer sent a name of {nlen} bytes (limit {MAX_NAME})")
            r.pos = pos + nlen
            if r.pos > len(buf):
                raise ProtocolError("peer sent a truncated FlistBatch message")
            raw = buf[pos:r.pos]
            if prefix is None:
                name = raw
                if not is_safe_name(name):
                    raise ProtocolError(f"peer sent an unsafe name: {_q(name)}")
            else:
                if raw in (b"", b".", b"..") or b"\0" in raw:
                    raise ProtocolError(f"peer sent an unsafe name: {_q(prefix + raw)}")
                if b"/" in raw:
                    raise ProtocolError(f"peer sent {_q(prefix + raw)}, which is not directly inside "
                                        f"{_q(dir_name)}")  # type: ignore[arg-type]
                name = prefix + raw
                if len(name) > MAX_NAME:
                    raise ProtocolError(f"peer sent a name of {len(name)} bytes (limit {MAX_NAME})")
            if name in names:
                raise ProtocolError(f"peer sent the name {_q(name)} twice")
            names.add(name)
            if index < next_index:
                raise ProtocolError(f"peer sent entry index {index} for {_q(name)} after index {next_index - 1}")
            next_index = index + 1
            link = hlink = xattrs = None
            if ef & _E_LINK:
                (n,) = r.unpack(_U16)
                link = r.take(n, MAX_LINK, "a symlink target")
            if ef & _E_HLINK:
                (hlink,) = r.unpack(_U32)
            if ef & _E_XATTRS:
                (n,) = r.unpack(_U16)
                if n > MAX_XATTRS:
                    raise ProtocolError(f"peer sent {n} xattrs for {_q(name)} (limit {MAX_XATTRS})")
                xattrs = {}
                for _ in range(n):
                    (klen,) = r.unpack(_XATTR)
                    key = r.take(klen, MAX_XATTR_NAME, "an xattr name")
                    (vlen,) = r.unpack(_U32)
                    value = r.take(vlen, MAX_XATTR_VALUE, "an xattr value")
                    if key in xattrs:
                        raise ProtocolError(f"peer sent xattr {_q(key)} twice for {_q(name)}")
                    xattrs[key] = value
            x = None
            if ef & (_E_DIGEST | _E_UNAME | _E_GNAME):
                digest = r.take(DIGEST_SIZE, DIGEST_SIZE, "a digest") if ef & _E_DIGEST else None
                uname = gname = None
                if ef & _E_UNAME:
                    (n,) = r.unpack(_U8)
                    uname = r.take(n, MAX_OWNER_NAME, "a user name")
                if ef & _E_GNAME:
                    (n,) = r.unpack(_U8)
                    gname = r.take(n, MAX_OWNER_NAME, "a group name")
                x = EntryExtras(digest, uname, gname)
            entry = FileEntry(index, name, mode, size, mtime_ns, uid, gid, rdev, link, hlink, xattrs)
            # A plain regular file needs none of _semantic_problem's checks (the size is
            # unsigned on the wire but must fit an off_t).
            if not (mode & _S_IFMT == _S_IFREG and mode <= 0o177777 and size < _U64_LIMIT
                    and link is None and hlink is None and xattrs is None and x is None and name != b"."):
                problem = _semantic_problem(entry, x, self.missing_entries and prefix is None)
                if problem is not None:
                    raise ProtocolError("peer sent " + problem)
            if ef & _E_EXPANDED:
                if not stat.S_ISDIR(mode):
                    raise ProtocolError(f"peer marked non-directory {_q(name)} as expanded")
                expanded.append(name)
            entries.append(entry)
            extras.append(x)
        # Commit the session state only once the whole message is known to be good.
        self.next_index = next_index
        self.entries_received += count
        self.pending_dirs.update(expanded)
        if flags & _B_MORE:
            self._cont, self._cont_names = dir_name, names
        else:
            self._cont, self._cont_names = _NOTHING, set()
        return FlistBatch(dir_name, frozenset(expanded), tuple(entries), tuple(extras),
                          bool(flags & _B_MORE), bool(flags & _B_IO_ERROR))

    def _d_FlistEnd(self, r: _Reader) -> FlistEnd:
        (flag,) = r.unpack(_U8)
        if flag > 1:
            raise ProtocolError(f"peer sent a bad FlistEnd flag {flag}")
        if self.flist_done:
            raise ProtocolError("peer sent FlistEnd twice")
        if self._cont is not _NOTHING:
            raise ProtocolError("peer sent FlistEnd in the middle of a directory's file list")
        self.flist_done = True
        self.pending_dirs.clear()  # directories that failed to list never come
        return FlistEnd(bool(flag))

    def _d_Request(self, r: _Reader) -> Request:
        index, flags, n = r.unpack(_REQUEST)
        if self.requests_done:
            raise ProtocolError("peer sent a Request after Done")
        if flags & ~_R_KNOWN:
            raise ProtocolError(f"peer sent unknown Request flags 0x{flags:02x}")
        if (flags & _R_APPEND and flags & (_R_SIGNATURE | _R_INPLACE)) \
                or (flags & _R_APPEND_VERIFY and not flags & _R_APPEND) \
                or (flags & (_R_INPLACE | _R_MORE) and not flags & _R_SIGNATURE):
            raise ProtocolError(f"peer sent a Request with conflicting flags 0x{flags:02x}")
        self._index(index, "a Request")
        signature = None
        if flags & _R_SIGNATURE:
            signature = r.take(n, self.frame_max - _REQUEST.size, "a signature")
        elif n:
            raise ProtocolError("peer sent a signature length without a signature")
        if flags & _R_MORE or self._sig is not None:
            return self._signature_part(index, flags, signature)  # type: ignore[arg-type]
        append_from = None
        if flags & _R_APPEND:
            (append_from,) = r.unpack(_U64)
            # The sender checks it against the file's size (it alone knows it): beyond is an error too.
            if append_from >= _U64_LIMIT:
                raise ProtocolError(f"peer sent an impossible append offset {append_from}")
        return Request(index, signature, bool(flags & _R_INPLACE), append_from, bool(flags & _R_APPEND_VERIFY))

    def _signature_part(self, index: int, flags: int, chunk: bytes) -> Request | None:
        """One frame of a signature sent in parts: _R_MORE on every one but the last, nothing
        else in between. The first part's head gives the whole signature's size, which the
        parts must then add up to exactly; None until they do."""
        parts = self._sig
        if parts is None:
            if len(chunk) < _SIG_HEAD.size:
                raise ProtocolError(f"peer sent the first part of a signature in {len(chunk)} bytes, "
                                    "without its head")
            _, _, strong_len, count, _, _ = _SIG_HEAD.unpack_from(chunk)
            if not MIN_STRONG_LEN <= strong_len <= MAX_STRONG_LEN or count > MAX_SIGNATURE_BLOCKS:
                raise ProtocolError(f"peer began a signature of {count} blocks with strong sums of "
                                    f"{strong_len} bytes (limit {MAX_SIGNATURE_BLOCKS} blocks of "
                                    f"{MIN_STRONG_LEN}..{MAX_STRONG_LEN})")
            self._sig = _SignatureParts(index, flags & ~_R_MORE, signature_size(count, strong_len))
            parts = self._sig
        elif index != parts.index or flags & ~_R_MORE != parts.flags:
            raise ProtocolError(f"peer interrupted the signature for index {parts.index} "
                                f"with a Request for index {index} (flags 0x{flags:02x})")
        parts.chunks.append(chunk)
        parts.have += len(chunk)
        more = bool(flags & _R_MORE)
        if not chunk or parts.have > parts.size or (parts.have == parts.size) == more:
            raise ProtocolError(f"peer sent {parts.have} bytes of a signature of {parts.size} for index "
                                f"{index}{' and more to follow' if more else ''}")
        if more:
            return None
        self._sig = None
        return Request(index, b"".join(parts.chunks), bool(flags & _R_INPLACE))

    def _d_Requests(self, r: _Reader) -> Requests:
        if self.requests_done:
            raise ProtocolError("peer sent Requests after Done")
        count, odd = divmod(r.remaining(), _U32.size)
        if odd or not 0 < count <= MAX_REQUESTS:
            raise ProtocolError(f"peer sent a Requests message of {r.remaining()} bytes")
        indices = struct.unpack_from(f">{count}I", r.buf, r.pos)
        r.pos += count * _U32.size
        self._index(max(indices), "a Request")
        return Requests(indices)

    def _d_Done(self, r: _Reader) -> Done:
        if self.requests_done:
            raise ProtocolError("peer sent Done twice")
        self.requests_done = True
        return Done()

    def _d_FilesFrom(self, r: _Reader) -> FilesFrom:
        (flags,) = r.unpack(_U8)
        if flags > 1:
            raise ProtocolError(f"peer sent unknown FilesFrom flags 0x{flags:02x}")
        blob = r.buf[r.pos:]
        r.pos = len(r.buf)
        names = tuple(blob.split(b"\0")) if blob else ()
        for name in names:
            if not name or len(name) > MAX_NAME:
                raise ProtocolError(f"peer sent a bad --files-from name of {len(name)} bytes")
        return FilesFrom(names, bool(flags))

    def _d_FileBegin(self, r: _Reader) -> FileBegin:
        index, size = r.unpack(_FILE_BEGIN)
        self._index(index, "FileBegin")
        if self.open_file is not None:
            raise ProtocolError(f"peer sent FileBegin for index {index} while index {self.open_file} is open")
        if size >= _U64_LIMIT:
            raise ProtocolError(f"peer sent an impossible file size {size}")
        self.open_file = index
        return FileBegin(index, size)

    def _d_Data(self, r: _Reader) -> Data:
        if self.open_file is None:
            raise ProtocolError("peer sent Data outside a file")
        r.pos = len(r.buf)
        return Data(r.buf)

    def _d_DataZ(self, r: _Reader) -> DataZ:
        if self.codec is None:
            raise ProtocolError("peer sent DataZ, but no compression was negotiated")
        if self.open_file is None:
            raise ProtocolError("peer sent DataZ outside a file")
        (size,) = r.unpack(_DATAZ)
        if not 0 < size <= self.frame_max:
            raise ProtocolError(f"peer sent a DataZ of {size} bytes uncompressed (limit {self.frame_max})")
        n = r.remaining()
        if not 0 < n < size:
            raise ProtocolError(f"peer sent a DataZ block of {n} bytes for {size} bytes of data "
                                "(a block must be shorter than its data)")
        r.pos = len(r.buf)
        return DataZ(size, r.buf[_DATAZ.size:])

    def inflate(self, msg: DataZ) -> bytes:
        """The data of a DataZ this decoder accepted: exactly msg.size bytes, never more."""
        assert self.codec is not None
        try:
            return self.codec.decompress(msg.payload, msg.size)
        except CorruptData as exc:
            raise ProtocolError(f"peer sent a DataZ block that is not {msg.size} bytes of "
                                f"{self.codec.name} data ({exc})") from None

    def _d_Match(self, r: _Reader) -> Match:
        if self.open_file is None:
            raise ProtocolError("peer sent Match outside a file")
        first, count = r.unpack(_MATCH)
        if count == 0 or first + count > _U32_LIMIT:
            raise ProtocolError(f"peer sent a bad block run {first}+{count}")
        return Match(first, count)

    def _d_FileEnd(self, r: _Reader) -> FileEnd:
        index, digest = r.unpack(_FILE_END)
        if self.open_file != index:
            raise ProtocolError(f"peer sent FileEnd for index {index}, but the open file is {self.open_file}")
        self.open_file = None
        return FileEnd(index, digest)

    def _d_WholeFile(self, r: _Reader) -> WholeFile:
        index, digest = r.unpack(_FILE_END)
        self._index(index, "WholeFile")
        if self.open_file is not None:
            raise ProtocolError(f"peer sent WholeFile for index {index} while index {self.open_file} is open")
        data = r.buf[r.pos:]
        r.pos = len(r.buf)
        return WholeFile(index, digest, data)

    def _d_FileSkip(self, r: _Reader) -> FileSkip:
        index, code, n = r.unpack(_FILE_SKIP)
        self._index(index, "FileSkip")
        if self.open_file is not None and self.open_file != index:
            raise ProtocolError(f"peer sent FileSkip for index {index} while index {self.open_file} is open")
        message = _clean_text(r.take(n, MAX_TEXT, "a message"), "a message")
        self.open_file = None
        return FileSkip(index, code, message)

    def _d_Committed(self, r: _Reader) -> Committed:
        (index,) = r.unpack(_U32)
        self._index(index, "Committed")
        return Committed(index)

    def _d_Problem(self, r: _Reader) -> Problem:
        code, n = r.unpack(_PROBLEM)
        path = _clean_text(r.take(n, MAX_PATH_TEXT, "a path"), "a path")
        (n,) = r.unpack(_U16)
        message = _clean_text(r.take(n, MAX_TEXT, "a message"), "a message")
        return Problem(path, message, code)

    def _d_Item(self, r: _Reader) -> Item:
        (n,) = r.unpack(_U8)
        itemize = _clean_text(r.take(n, MAX_ITEMIZE, "an itemize string"), "an itemize string")
        (n,) = r.unpack(_U16)
        name = _clean_text(r.take(n, MAX_PATH_TEXT, "a name"), "a name")
        (n,) = r.unpack(_U16)
        extra = _clean_text(r.take(n, MAX_PATH_TEXT + 8, "a link target"), "a link target")
        (size,) = r.unpack(_U64)
        if size >= _U64_LIMIT:
            raise ProtocolError(f"peer sent an impossible size {size}")
        return Item(itemize, name, extra, size)

    def _d_Log(self, r: _Reader) -> Log:
        level, n = r.unpack(_LOG)
        if level not in _LOG_LEVELS:
            raise ProtocolError(f"peer sent an unknown log level {level}")
        return Log(level, _clean_text(r.take(n, MAX_TEXT, "a log line"), "a log line"))

    def _d_Stats(self, r: _Reader) -> Stats:
        (count,) = r.unpack(_U16)
        if count > MAX_STATS:
            raise ProtocolError(f"peer sent {count} counters (limit {MAX_STATS})")
        counters = []
        keys: set[str] = set()
        for _ in range(count):
            (n,) = r.unpack(_U8)
            raw = r.take(n, MAX_STAT_KEY, "a counter name")
            key = raw.decode("ascii", "replace")
            if not _STAT_KEY.match(key):
                raise ProtocolError(f"peer sent a bad counter name {_show(raw)!r}")
            if key in keys:
                raise ProtocolError(f"peer sent counter {key!r} twice")
            keys.add(key)
            (value,) = r.unpack(_STAT)
            counters.append((key, value))
        return Stats(tuple(counters))

    def _d_Heartbeat(self, r: _Reader) -> Heartbeat:
        return Heartbeat()

    def _d_Goodbye(self, r: _Reader) -> Goodbye:
        (code,) = r.unpack(_U8)
        self.goodbye = True
        return Goodbye(code)


# -- the connection ----------------------------------------------------------

_DECODE = {cls: getattr(Decoder, "_d_" + cls.NAME) for cls in _TYPES.values()}  # Decoder.decode_payload's


class ConnectionClosed(StreamError):
    """The peer closed the stream at a frame boundary."""


@dataclass(frozen=True, slots=True)
class RawData:
    """recv(raw_data=True): a Data frame whose `length` payload bytes are still in the stream.

    The caller moves them itself (transport.tcp.SocketStream: recv_into, splice), all of
    them, before the next recv().
    """

    length: int


DATA_CHUNK = 1 << 20  # file bytes per Data frame sent straight from a file


class Connection:
    """Framed messages over a Stream: buffered, thread-safe sends; one reader thread.

    Small frames collect in a buffer that is written when it passes buffer_size or
    on flush(); recv() flushes first when no other thread is sending. Large DATA
    payloads are written straight from the caller's buffer after their header.
    """

    def __init__(self, stream: Stream, *, side: str | None = None, peer: str = "peer",
                 frame_max: int = DEFAULT_FRAME_MAX, buffer_size: int = _BUFFER_SIZE) -> None:
        self.stream = stream
        self.peer = peer
        self.decoder = Decoder(side, frame_max)
        self.buffer_size = buffer_size
        self.bytes_sent = 0
        self.bytes_received = 0
        self.negotiated: Negotiated | None = None
        self.codec: Codec | None = None  # set by handshake() when compression was negotiated
        self.limiter: RateLimiter | None = None
        self._frame_max = frame_max
        self._lock = threading.Lock()
        self._wbuf = bytearray()
        self._outbox: queue.Queue[object] | None = None  # see start_writer()
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None

    @property
    def frame_max(self) -> int:
        return self._frame_max

    @frame_max.setter
    def frame_max(self, value: int) -> None:
        if not MIN_FRAME_MAX <= value <= MAX_FRAME_MAX:
            raise ValueError(f"frame_max must be in [{MIN_FRAME_MAX}, {MAX_FRAME_MAX}]")
        self._frame_max = value
        self.decoder.frame_max = value

    def set_bwlimit(self, rate: int | None) -> None:
        """Limit what we write to `rate` bytes per second on average (None or 0: no limit)."""
        self.limiter = RateLimiter(rate) if rate else None

    def set_codec(self, codec: Codec | None) -> None:
        """Compress and accept compressed file data with codec (None: neither)."""
        self.codec = codec
        self.decoder.codec = codec

    # -- sending ---------------------------------------------------------
    def send(self, msg: Message) -> None:
        """Send one message (a big FlistBatch or signature may go out as several frames, together)."""
        if isinstance(msg, Data):
            self.send_data(msg.payload)
            return
        with self._lock:
            if isinstance(msg, FlistBatch):
                parts, next_index = _encode_flist(msg, self._frame_max, self.decoder.sent_next_index)
                self.decoder.sent_next_index = next_index
            elif isinstance(msg, Request):
                parts = _encode_request(msg, self._frame_max)
            else:
                parts = [encode_payload(msg, self._frame_max)]
            for payload in parts:
                self._wbuf += _HEADER.pack(msg.TYPE, len(payload))
                self._wbuf += payload
                if len(self._wbuf) >= self.buffer_size:
                    self._flush_locked()

    def send_data(self, data: Buffer, compress: bool = False) -> None:
        """Send bytes of the open file as DATA frames of at most frame_max, without copying big ones.

        With compress (and a negotiated codec) each frame's worth goes as a DataZ frame
        when its compressed block is smaller, and as it is otherwise.
        """
        for header, body in self.pack_data(data, compress):
            self.send_packed(header, body)

    def pack_data(self, data: Buffer, compress: bool = False) -> list[tuple[bytes, Buffer]]:
        """The (frame header, body) pairs that carry data; compresses, but sends nothing.

        Any one thread at a time may pack (e.g. a worker, one chunk ahead of the sender).
        """
        view = memoryview(data).cast("B")
        step = self._frame_max
        codec = self.codec if compress else None
        frames: list[tuple[bytes, Buffer]] = []
        for off in range(0, len(view), step):
            chunk = view[off:off + step]
            if codec is not None and len(chunk) >= _MIN_COMPRESS:
                block = codec.compress(chunk)
                if len(block) + _DATAZ.size < len(chunk):
                    frames.append((_HEADER.pack(DataZ.TYPE, _DATAZ.size + len(block)) + _DATAZ.pack(len(chunk)),
                                   block))
                    continue
            frames.append((_HEADER.pack(Data.TYPE, len(chunk)), chunk))
        return frames

    def send_packed(self, header: bytes, body: Buffer) -> None:
        """Send one frame from pack_data(): a small body is copied into the buffer, a big one written as is."""
        with self._lock:
            self._wbuf += header
            if len(body) < _SMALL_DATA:
                self._wbuf += body
                if len(self._wbuf) >= self.buffer_size:
                    self._flush_locked()
            else:
                self._flush_locked()
                self._write(body)

    def send_file(self, index: int, size: int, chunks: Iterable[Buffer], digest: bytes,
                  compress: bool = False) -> None:
        """FileBegin, the chunks as DATA (or DataZ), FileEnd: one whole file (digest known in advance)."""
        self.send(FileBegin(index, size))
        for chunk in chunks:
            self.send_data(chunk, compress)
        self.send(FileEnd(index, digest))

    @property
    def can_sendfile(self) -> bool:
        """Can file data go from a file to the peer without passing through us (send_file_range)?"""
        return getattr(self.stream, "zero_copy", False) and self.limiter is None and self._outbox is None

    @property
    def can_take_raw(self) -> bool:
        """Can recv(raw_data=True) leave Data payloads in the stream for the caller to move?"""
        return getattr(self.stream, "zero_copy", False)

    def send_file_range(self, fd: int, offset: int, length: int) -> int:
        """Send bytes [offset, offset+length) of fd as Data frames whose bodies go by sendfile.

        Each frame's header leaves with MSG_MORE, in the same segment as its first bytes.
        Returns how many bytes came from the file: if it ended early, the frames announced
        are completed with zeros (the framing stays intact) and the caller must not vouch
        for the data (its digest cannot match). Only when can_sendfile.
        """
        stream = self.stream
        step = min(DATA_CHUNK, self._frame_max)
        pos, end = offset, offset + length
        from_file = 0
        with self._lock:
            while pos < end:
                n = min(step, end - pos)
                self._wbuf += _HEADER.pack(Data.TYPE, n)
                data, self._wbuf = self._wbuf, bytearray()
                stream.write_more(data)  # type: ignore[attr-defined]
                got = 0
                if from_file == pos - offset:  # nothing short yet
                    try:
                        stream.sendfile(fd, pos, n)  # type: ignore[attr-defined]
                        got = n
                    except SourceChanged as exc:
                        got = exc.got
                from_file += got
                if got < n:
                    stream.write(bytes(n - got))
                self.bytes_sent += len(data) + n
                pos += n
        return from_file

    def flush(self) -> None:
        """Write out buffered frames (with a writer thread: hand them to it)."""
        with self._lock:
            self._flush_locked()
        self._raise_writer_error()

    def write_eof(self) -> None:
        """Flush and half-close: we send nothing more."""
        self.drain()
        self.stream.write_eof()

    def close(self) -> None:
        if self._outbox is not None:
            self._outbox.put(None)
        self.stream.close()

    def start_writer(self) -> None:
        """Write on a thread of our own from now on: send() queues and never blocks.

        The receiving side needs this: its reading thread also sends (items, problems),
        and if a send blocked while the peer is itself blocked writing to us, neither
        would read again. Only the sending side's bulk data must block (backpressure);
        the receiver sends small frames, so its queue stays small.
        """
        if self._outbox is not None:
            return
        self._outbox = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="zcsync-conn-writer", daemon=True)
        self._writer.start()

    def drain(self) -> None:
        """Flush, and wait until the writer thread has written everything queued."""
        self.flush()
        if self._outbox is not None:
            done = threading.Event()
            self._outbox.put(done)
            while not done.wait(0.1):
                if not self._writer.is_alive():
                    break
            self._raise_writer_error()

    def _write_loop(self) -> None:
        assert self._outbox is not None
        while True:
            item = self._outbox.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            if self._writer_error is not None:
                continue  # keep consuming so that drain() returns; the error is raised there
            try:
                self._write_now(item)
            except BaseException as exc:  # raised to the next sender
                self._writer_error = exc

    def _raise_writer_error(self) -> None:
        if self._writer_error is not None:
            raise self._writer_error

    def _flush_locked(self) -> None:
        if self._wbuf:
            # Swap first: if the write fails, a view of the old buffer may live on in the traceback.
            data, self._wbuf = self._wbuf, bytearray()
            self._write(data)

    def _write(self, data: Buffer) -> None:
        if self._outbox is not None:
            self._raise_writer_error()
            self._outbox.put(bytes(data))
            return
        self._write_now(data)

    def _write_now(self, data: Buffer) -> None:
        if self.limiter is None:
            self.stream.write(data)
        else:
            self.limiter.write(self.stream.write, data)
        self.bytes_sent += len(data)

    # -- receiving -------------------------------------------------------
    def _input_ready(self) -> bool:
        has_input = getattr(self.stream, "has_input", None)
        return bool(has_input is not None and has_input())

    def recv(self, raw_data: bool = False) -> Message | RawData:
        """Receive, decode and validate the next message (ConnectionClosed at a clean EOF).

        raw_data (only when can_take_raw): a Data frame comes back as RawData, its payload
        left in the stream, and nothing is read ahead past the frame header.
        """
        if self._wbuf and not self._input_ready() and self._lock.acquire(blocking=False):
            # Flush only when we are about to wait for the peer (so that answers to many
            # small requests go out together), and never wait for the lock: its holder
            # may be blocked writing to a peer that is itself waiting for us to read.
            try:
                self._flush_locked()
            finally:
                self._lock.release()
        while True:
            header = self._read(_HEADER.size, "", ahead=not raw_data)
            mtype, length = _HEADER.unpack(header)
            cls = self.decoder.check_header(mtype, length)
            if raw_data and cls is Data:
                if self.decoder.open_file is None:
                    raise ProtocolError("peer sent Data outside a file")
                self.bytes_received += length
                return RawData(length)
            payload = self._read(length, "a message", ahead=not raw_data) if length else b""
            msg = self.decoder.decode_payload(cls, payload)
            if msg is not None:  # else a part of a message whose next part follows
                return msg

    def inflate(self, msg: DataZ) -> bytes:
        """The data a received DataZ carries (bounded by its checked size; ProtocolError if corrupt)."""
        return self.decoder.inflate(msg)

    def _read(self, n: int, inside: str, ahead: bool = True) -> bytes:
        data = self.stream.read(n) if ahead else self.stream.read(n, ahead=False)  # type: ignore[call-arg]
        self.bytes_received += len(data)
        if len(data) < n:
            if not data and not inside:
                raise ConnectionClosed(f"{self.peer} closed the connection")
            raise StreamError(f"{self.peer} closed the connection in the middle of {inside or 'a frame header'}")
        return data


# -- handshake ---------------------------------------------------------------

@dataclass(frozen=True)
class Negotiated:
    """What both sides agreed on in the handshake."""

    version: int
    checksum: str
    compress: str
    frame_max: int
    role: str  # ours: "client" or "server"
    peer_caps: Mapping[str, str] = field(default_factory=dict)


def _encode_caps(caps: Mapping[str, str]) -> bytes:
    if len(caps) > MAX_CAPS:
        raise ValueError(f"more than {MAX_CAPS} capabilities")
    out = []
    for key, value in caps.items():
        if not _CAP_KEY.match(key) or len(value) > MAX_CAP_VALUE or not _CAP_VALUE.match(value):
            raise ValueError(f"bad capability {key!r}={value!r}")
        raw = value.encode("ascii")
        out += (_U8.pack(len(key)), key.encode("ascii"), _U16.pack(len(raw)), raw)
    blob = b"".join(out)
    if len(blob) > MAX_CAPS_BYTES:
        raise ValueError("capabilities too large")
    return blob


def _decode_caps(blob: bytes) -> dict[str, str]:
    r = _Reader(blob, "HELLO")
    caps: dict[str, str] = {}
    while r.remaining():
        if len(caps) == MAX_CAPS:
            raise ProtocolError(f"peer sent more than {MAX_CAPS} capabilities")
        (n,) = r.unpack(_U8)
        raw_key = r.take(n, MAX_CAP_KEY, "a capability name")
        (n,) = r.unpack(_U16)
        raw_value = r.take(n, MAX_CAP_VALUE, "a capability value")
        key = raw_key.decode("ascii", "replace")
        value = raw_value.decode("ascii", "replace")
        if not _CAP_KEY.match(key) or not _CAP_VALUE.match(value):
            raise ProtocolError(f"peer sent a bad capability {_show(raw_key)}={_show(raw_value)}")
        if key in caps:
            raise ProtocolError(f"peer sent capability {key!r} twice")
        caps[key] = value
    return caps


def _write_hello(conn: Connection, caps: Mapping[str, str]) -> None:
    blob = _encode_caps(caps)
    with conn._lock:
        conn._wbuf += MAGIC + _HELLO.pack(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, len(blob)) + blob
        conn._flush_locked()


def _read_hello(conn: Connection) -> tuple[int, int, dict[str, str]]:
    # Byte by byte while it matches, so that a short banner followed by a silent
    # shell is reported rather than waited on for a full header.
    got = bytearray()
    while len(got) < len(MAGIC):
        b = conn.stream.read(1)
        conn.bytes_received += len(b)
        if not b:
            if not got:
                raise StreamError("connection closed before the handshake")
            raise StreamError(f"connection closed during the handshake (received: {_show(got)})")
        got += b
        if got != MAGIC[:len(got)]:
            break
    if got != MAGIC:
        if got.startswith(b"ZCSYNC\x00"):
            raise ProtocolError(f"peer speaks an incompatible handshake (magic {_show(got)}); "
                                "upgrade the older side")
        while len(got) < _BANNER_SHOW and not got.endswith(b"\n"):
            b = conn.stream.read(1)
            conn.bytes_received += len(b)
            if not b:
                break
            got += b
        raise StartupError("protocol mismatch: is the remote shell printing text? "
                           f"Received: {_show(got[:_BANNER_SHOW])}")
    head = conn.stream.read(_HELLO.size)
    conn.bytes_received += len(head)
    if len(head) < _HELLO.size:
        raise StreamError("connection closed during the handshake")
    vmin, vmax, n = _HELLO.unpack(head)
    if n > MAX_CAPS_BYTES:
        raise ProtocolError(f"peer sent {n} bytes of capabilities (limit {MAX_CAPS_BYTES})")
    blob = conn.stream.read(n)
    conn.bytes_received += len(blob)
    if len(blob) < n:
        raise StreamError("connection closed during the handshake")
    return vmin, vmax, _decode_caps(blob)


def _cap_list(value: str, key: str, peer: bool) -> list[str]:
    items = [item.strip() for item in value.split(",")] if value else []
    if len(items) > MAX_CAP_LIST or not all(_CAP_ITEM.match(i) for i in items):
        if not peer:
            raise ValueError(f"bad {key!r} capability: {value!r}")
        raise ProtocolError(f"peer sent a bad {key!r} capability: {value!r}")
    return items


def _frame_max_cap(value: str, who: str) -> int:
    if not value.isdigit() or len(value) > 10:
        raise ProtocolError(f"{who} sent a bad 'frame-max' capability: {value!r}")
    n = int(value)
    if not MIN_FRAME_MAX <= n <= MAX_FRAME_MAX:
        raise ProtocolError(f"{who} sent a 'frame-max' of {n} (allowed {MIN_FRAME_MAX}..{MAX_FRAME_MAX})")
    return n


def handshake(conn: Connection, role: str, caps: Mapping[str, str] | None = None) -> Negotiated:
    """Exchange HELLOs and agree on version and capabilities; sets conn.frame_max and conn.codec.

    Both sides send first, then read, so neither waits on the other. The client's
    preference order decides checksum and compression; frame-max is the smaller.
    The negotiated codec's library is imported here, and only if there is one.
    """
    if role not in ("client", "server"):
        raise ValueError("role must be 'client' or 'server'")
    ours = {**DEFAULT_CAPS, **(caps or {}), "role": role}
    our_frame_max = int(ours["frame-max"])
    if not MIN_FRAME_MAX <= our_frame_max <= MAX_FRAME_MAX:
        raise ValueError(f"frame-max must be in [{MIN_FRAME_MAX}, {MAX_FRAME_MAX}]")
    _write_hello(conn, ours)
    vmin, vmax, theirs = _read_hello(conn)
    if vmin > vmax:
        raise ProtocolError(f"peer sent an empty version range {vmin}..{vmax}")
    version = min(PROTOCOL_VERSION, vmax)
    if version < max(MIN_PROTOCOL_VERSION, vmin):
        raise ProtocolError(f"no common protocol version: we speak {MIN_PROTOCOL_VERSION}..{PROTOCOL_VERSION}, "
                            f"the peer speaks {vmin}..{vmax}")
    peer_role = theirs.get("role")
    if peer_role not in ("client", "server") or peer_role == role:
        raise ProtocolError(f"peer claims the role {peer_role!r}, but we are the {role}")
    full = {**DEFAULT_CAPS, **theirs}
    we_are_client = role == "client"

    def pick(key: str, fallback: str | None) -> str:
        ours_list = _cap_list(ours[key], key, peer=False)
        theirs_list = _cap_list(full[key], key, peer=True)
        offered, supported = (ours_list, theirs_list) if we_are_client else (theirs_list, ours_list)
        for item in offered:
            if item in supported:
                return item
        if fallback is not None:
            return fallback
        raise ProtocolError(f"no common {key}: the client offers {','.join(offered)!r}, "
                            f"the server supports {','.join(supported)!r}")

    checksum = pick("checksums", None)
    compress = pick("compress", "none")  # every implementation can send uncompressed
    frame_max = min(our_frame_max, _frame_max_cap(full["frame-max"], "peer"))
    conn.frame_max = frame_max
    # Both sides listed the codec, so both can use it; its package is imported only now.
    conn.set_codec(get_codec(compress) if compress != "none" else None)
    negotiated = Negotiated(version, checksum, compress, frame_max, role, theirs)
    conn.negotiated = negotiated
    return negotiated
