"""Compression of file data on the wire (-z), rsync's --skip-compress list, and --bwlimit.

A :class:`Codec` turns one chunk into one self-contained compressed block and back.
The codec packages are imported only when a codec is chosen, so that a machine
without ``zstandard`` or ``lz4`` runs every uncompressed transfer and fails with a
clear message only when asked for what it lacks. Decompression is always bounded:
it never produces, or allocates for, more than the length the peer declared, which
the protocol has already checked against the negotiated frame size.
"""
from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterable, Iterator
from typing import ClassVar, Protocol

from .errors import UsageError
from .transport.base import Buffer

__all__ = [
    "CODECS", "PREFERENCE", "Codec", "CodecUnavailable", "CorruptData", "available", "supported",
    "get_codec", "offer", "SkipCompress", "DEFAULT_SKIP_COMPRESS", "RateLimiter",
]

#: Codec names in the order a client prefers them when -z names none.
PREFERENCE = ("zstd", "lz4")
#: Every name the compress capability may carry, "none" included.
CODECS = (*PREFERENCE, "none")
_MODULES = {"zstd": ("zstandard", "zstandard"), "lz4": ("lz4", "lz4")}  # codec: (module, pip package)

ZSTD_LEVEL = 3  # zstd's and rsync's default level
ZSTD_MIN_VERSION = (0, 22)  # decompress(allow_extra_data=False) that also rejects data after an empty frame

# rsync 3.2's default --skip-compress list (suffixes of already-compressed formats).
DEFAULT_SKIP_COMPRESS = (
    "3g2/3gp/7z/aac/ace/apk/avi/bz2/deb/dmg/ear/f4v/flac/flv/gpg/gz/iso/jar/jpeg/jpg/lrz/lz/lz4/lzma/lzo/"
    "m1a/m1v/m2a/m2ts/m2v/m4a/m4b/m4p/m4r/m4v/mka/mkv/mov/mp1/mp2/mp3/mp4/mpa/mpeg/mpg/mpv/mts/"
    "odb/odf/odg/odi/odm/odp/ods/odt/oga/ogg/ogm/ogv/ogx/opus/otg/oth/otp/ots/ott/oxt/png/qt/"
    "rar/rpm/rz/rzip/spx/squashfs/sxc/sxd/sxg/sxm/sxw/sz/tbz/tbz2/tgz/tlz/ts/txz/tzo/vob/war/"
    "webm/webp/xz/z/zip/zst"
)


class CodecUnavailable(UsageError):
    """{detail}"""


class CorruptData(ValueError):
    """A compressed block that does not decompress to exactly the declared length."""


class Codec(Protocol):
    """One compression method; compress() and decompress() are each used by one thread at a time."""

    name: str

    def compress(self, data: Buffer) -> bytes:
        """One self-contained compressed block holding data."""
        ...

    def decompress(self, data: bytes, size: int) -> bytes:
        """Exactly `size` bytes from one block, producing no more than that; else CorruptData."""
        ...


class ZstdCodec:
    """zstd frames with their content size; level 3 (rsync's default)."""

    name: ClassVar[str] = "zstd"

    def __init__(self, level: int = ZSTD_LEVEL) -> None:
        import zstandard
        version = tuple(int(x) for x in zstandard.__version__.split(".")[:2] if x.isdigit())
        if version < ZSTD_MIN_VERSION:
            raise CodecUnavailable(f"zstd compression needs zstandard >= "
                                   f"{'.'.join(map(str, ZSTD_MIN_VERSION))} (found {zstandard.__version__}); "
                                   "pip install -U zstandard, or choose --compress-choice=lz4")
        self._zstd = zstandard
        self._cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
        self._dctx = zstandard.ZstdDecompressor()

    def compress(self, data: Buffer) -> bytes:
        return self._cctx.compress(data)

    def decompress(self, data: bytes, size: int) -> bytes:
        zstd = self._zstd
        try:
            # decompress() allocates what the frame header claims, whatever max_output_size
            # says: check the claim first, so the allocation is the declared (bounded) size.
            claimed = zstd.frame_content_size(data)
            if claimed != size:
                what = "no content size" if claimed < 0 else f"a content size of {claimed}"
                raise CorruptData(f"a zstd frame with {what}")
            out = self._dctx.decompress(data, max_output_size=size, allow_extra_data=False)
        except zstd.ZstdError as exc:
            raise CorruptData(f"zstd: {exc}") from None
        if len(out) != size:
            raise CorruptData(f"zstd data of {len(out)} bytes")
        return out


class Lz4Codec:
    """LZ4 blocks (no size header: the protocol carries the length)."""

    name: ClassVar[str] = "lz4"

    def __init__(self) -> None:
        import lz4.block
        self._block = lz4.block

    def compress(self, data: Buffer) -> bytes:
        return self._block.compress(data, mode="default", store_size=False)

    def decompress(self, data: bytes, size: int) -> bytes:
        # LZ4_decompress_safe into a buffer of `size` bytes: a block that would write
        # more fails instead of growing anything.
        try:
            out = self._block.decompress(data, uncompressed_size=size)
        except self._block.LZ4BlockError as exc:
            raise CorruptData(f"lz4: {exc}") from None
        if len(out) != size:
            raise CorruptData(f"lz4 data of {len(out)} bytes")
        return out


class NoneCodec:
    """The identity, for completeness: a session that negotiated "none" never compresses."""

    name: ClassVar[str] = "none"

    def compress(self, data: Buffer) -> bytes:
        return bytes(data)

    def decompress(self, data: bytes, size: int) -> bytes:
        if len(data) != size:
            raise CorruptData(f"{len(data)} bytes where {size} were declared")
        return bytes(data)


_CLASSES: dict[str, Callable[..., Codec]] = {"zstd": ZstdCodec, "lz4": Lz4Codec, "none": NoneCodec}


def available(name: str) -> bool:
    """True if codec `name` can be used here (its package is installed; nothing is imported)."""
    if name == "none":
        return True
    if name not in _MODULES:
        return False
    try:
        return importlib.util.find_spec(_MODULES[name][0]) is not None
    except (ImportError, ValueError):
        return False


def supported() -> list[str]:
    """What this side can decompress, for the compress capability ("none" last)."""
    return [name for name in CODECS if available(name)]


def get_codec(name: str, level: int | None = None) -> Codec:
    """The codec called `name`, importing its package now; CodecUnavailable says what to install.
    level (--compress-level): zstd's; lz4 has none, as in rsync."""
    cls = _CLASSES.get(name)
    if cls is None:
        raise CodecUnavailable(f"Unknown compression {name!r} (choose one of {', '.join(CODECS)})")
    try:
        return cls(level) if level is not None and cls is ZstdCodec else cls()
    except ImportError as exc:
        package = _MODULES[name][1]
        raise CodecUnavailable(f"--compress-choice={name} needs the Python package {package!r}, which is "
                               f"not installed here ({exc}); pip install {package}, or choose another "
                               "--compress-choice") from None


def offer(compress: bool, choice: str | None) -> list[str]:
    """The codecs a client offers, best first; [] for no compression.

    As rsync: --compress-choice alone turns compression on, "none" turns it off even
    with -z. A named codec must be usable here; -z alone offers whatever is installed.
    """
    if choice == "none" or (not compress and choice is None):
        return []
    if choice is not None:
        if choice not in _CLASSES:
            raise CodecUnavailable(f"Unknown compression {choice!r} (choose one of {', '.join(CODECS)})")
        get_codec(choice)  # a clear error now, before anything starts
        return [choice]
    return [name for name in PREFERENCE if available(name)]


# -- --skip-compress -----------------------------------------------------------

class SkipCompress:
    """rsync's --skip-compress: file suffixes whose data is sent without compression.

    The list is '/'-separated suffixes without the dot, compared case-insensitively
    with what follows the last '.' of the file's base name (a name that starts with
    its only dot, like ".gz", has no suffix). ``[abc]`` matches one of the letters in
    it, as in rsync; ``*`` and ``?`` are ordinary characters there, except that an
    item that is just ``*`` skips every file (rsyncd.conf's ``dont compress = *``).
    An empty list skips nothing; None means rsync's default list.
    """

    def __init__(self, spec: str | None = None) -> None:
        self.spec = DEFAULT_SKIP_COMPRESS if spec is None else spec
        self.all = False
        self._suffixes: set[bytes] = set()
        for item in self.spec.split("/"):
            if not item:
                continue
            if item == "*":
                self.all = True
                continue
            self._suffixes.update(_expand(item.lower().encode("utf-8", "surrogateescape")))

    def __contains__(self, name: bytes) -> bool:
        """True if the file called name (a relative name, as bytes) is to be sent uncompressed."""
        if self.all:
            return True
        if not self._suffixes:
            return False
        base = name.rpartition(b"/")[2]
        dot = base.rfind(b".")
        if dot <= 0:
            return False
        return base[dot + 1:].lower() in self._suffixes

    def __repr__(self) -> str:
        return f"SkipCompress({self.spec!r})"


_MAX_EXPANSIONS = 4096  # "[ab][cd]..." multiplies; a hostile list must not eat memory


def _expand(item: bytes) -> Iterable[bytes]:
    """All spellings of one suffix item: each "[chars]" stands for one of its characters.

    As rsync's suffix tree: "[]" and an unclosed "[" are literal.
    """
    out = [b""]
    i = 0
    while i < len(item):
        ch = item[i:i + 1]
        if ch == b"[":
            end = item.find(b"]", i + 1)
            if end > i + 1:
                letters = sorted(set(item[i + 1:end]))
                out = [prefix + bytes([c]) for prefix in out for c in letters]
                if len(out) > _MAX_EXPANSIONS:
                    raise UsageError(f"--skip-compress item {item.decode('utf-8', 'replace')!r} "
                                     "has too many character classes")
                i = end + 1
                continue
        out = [prefix + ch for prefix in out]
        i += 1
    return out


# -- --bwlimit -----------------------------------------------------------------

class RateLimiter:
    """Keeps the average rate of writes at `rate` bytes/s, as rsync's --bwlimit does.

    Writes go out in pieces of at most rate/8 bytes (rsync's bwlimit_writemax); after
    each, the bytes sent beyond what the elapsed time allows are a debt, and once the
    debt is worth 0.1 s or more the writer sleeps it off. So a burst is at most about
    0.1 s of data plus one piece, and the long-run average is the rate. A stream's
    writes go through write(); a local copy, which has no stream, moves its file data
    in the pieces() of the same limiter (fastio.copy_data, transport/local.py).
    """

    MIN_PIECE = 512
    MIN_SLEEP = 0.1

    def __init__(self, rate: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.piece = max(self.MIN_PIECE, rate // 8)
        self._clock = clock
        self._sleep = sleep
        self._debt = 0.0  # bytes written and not yet paid for by elapsed time
        self._prior: float | None = None

    def write(self, write: Callable[[Buffer], None], data: Buffer) -> None:
        """write(data) in pieces, sleeping between them to keep to the rate."""
        view = memoryview(data).cast("B")
        for off, n in self.pieces(0, len(view)):
            write(view[off:off + n])

    def pieces(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        """[offset, offset+length) as (offset, length) pieces for the caller to move one by one
        (a local copy's copy_file_range, say); each is paid for (account) once the caller asks
        for the next, so the loop sleeps between pieces as write() does."""
        if self._prior is None:
            self._prior = self._clock()  # the first piece's own time counts too
        end = offset + length
        while offset < end:
            n = min(self.piece, end - offset)
            yield offset, n
            self.account(n)
            offset += n

    def account(self, n: int) -> None:
        """n more bytes were written: sleep if they put us 0.1 s or more ahead of the rate."""
        now = self._clock()
        self._debt += n
        if self._prior is not None:
            self._debt = max(0.0, self._debt - (now - self._prior) * self.rate)
        delay = self._debt / self.rate
        if delay < self.MIN_SLEEP:
            self._prior = now
            return
        self._sleep(delay)
        self._prior = self._clock()
        # What the sleep did not cover (it may overshoot: then we are owed nothing more).
        self._debt = max(0.0, (delay - (self._prior - now)) * self.rate)
