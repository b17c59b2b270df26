"""The sender role: walks the source, opens requested files safely, removes sent sources."""
from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator

import xxhash

from . import fastio, fsscan
from .errors import PARTIAL, VANISHED
from .filters import FilterRules
from .flist import DirBatch, FileEntry, Scanner, ScanState, SourceArg, device_size, prune_empty_dirs, quote
from .options import Options

log = logging.getLogger(__name__)


class SourceChanged(Exception):
    """A source file is not what the scan saw (vanished, replaced or resized)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Sender:
    """Produces the file list and the bytes of requested files."""

    def __init__(self, sources: list[SourceArg], opts: Options, filters: FilterRules,
                 read_xattrs=None, on_problem=None, on_notice=None) -> None:
        self.opts = opts
        self.filters = filters
        self.state = ScanState(on_problem=on_problem, on_notice=on_notice)
        self.scanner = Scanner(sources, opts, filters, self.state, read_xattrs=read_xattrs)

    @property
    def io_error(self) -> bool:
        return self.state.io_error

    def batches(self) -> Iterator[DirBatch]:
        """The file list as it is sent: the scan, and with -m without its empty directories."""
        if self.opts.prune_empty_dirs:
            return prune_empty_dirs(self.scan(), self.filters)
        return self.scan()

    def scan(self) -> Iterator[DirBatch]:
        return self.scanner.batches()

    def path(self, entry: FileEntry) -> bytes:
        return self.state.path_of(entry)

    def open(self, entry: FileEntry) -> int:
        """Open a regular source file for reading; it must still be the file the scan saw."""
        path = self.path(entry)
        # O_NONBLOCK: a FIFO swapped in since the scan must not wait for a writer.
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if self._follows(entry) else os.O_NOFOLLOW)
        try:
            fd = fsscan.open_read(path, flags, self.opts.open_noatime)
        except OSError as exc:
            raise self._unreadable(path, exc.errno or 0) from None
        st = os.fstat(fd)
        device = self.state.devices and entry.name in self.state.devices  # (--copy-devices only)
        if device and (stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode)):
            same = device_size(path, fd) == entry.size  # --copy-devices: its contents, to their end
        else:
            same = stat.S_ISREG(st.st_mode) and st.st_size == entry.size
        if not same:
            os.close(fd)
            raise self._unreadable(path, None)
        return fd

    def read(self, entry: FileEntry) -> tuple[bytes, bytes]:
        """A small requested file's bytes and their xxh3-128, with open's checks, in one call
        that releases the GIL once (fsscan.read_file). Short if it shrank while read."""
        if self.state.devices and entry.name in self.state.devices:  # (--copy-devices only)
            return self._read_device(entry)
        path = self.path(entry)
        got = fsscan.read_file(path, entry.size, self._follows(entry), self.opts.open_noatime)
        if got is None or isinstance(got, int):
            raise self._unreadable(path, None if got is None else -got)
        return got

    def _read_device(self, entry: FileEntry) -> tuple[bytes, bytes]:
        """read() of a small device listed with --copy-devices (C read_file takes regular files only)."""
        fd = self.open(entry)
        try:
            data = bytearray()
            while len(data) < entry.size:
                chunk = os.pread(fd, entry.size - len(data), len(data))
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
        return bytes(data), xxhash.xxh3_128_digest(data)

    def _follows(self, entry: FileEntry) -> bool:
        """Is entry opened through a symlink (-L; -k or --copy-unsafe-links for this one)?"""
        return self.opts.copy_links or entry.name in self.state.followed

    def _unreadable(self, path: bytes, err: int | None) -> SourceChanged:
        """What a failed open means (errno err; None: no longer the regular file the scan saw)."""
        if err is None:
            return SourceChanged(f"file has changed during the transfer: {quote(path)}", VANISHED)
        if err == errno.ENOENT:
            return SourceChanged(f"file has vanished: {quote(path)}", VANISHED)
        self.state.io_error = True  # a read error on the sender: no deletions from here on
        return SourceChanged(f"[sender] send_files failed to open {quote(os.path.abspath(path))}: "
                             f"{os.strerror(err)} ({err})", PARTIAL)

    def digest(self, entry: FileEntry) -> bytes | None:
        """xxh3-128 of a source file (for -c); None if it cannot be read."""
        try:
            fd = self.open(entry)
        except SourceChanged:
            return None
        try:
            return fastio.file_digest(fd, entry.size)
        finally:
            os.close(fd)

    def remove(self, entry: FileEntry) -> None:
        """--remove-source-files: unlink a sent non-directory if it is still the one we sent."""
        if entry.is_dir:
            return
        path = self.path(entry)
        try:
            st = os.lstat(path)
            if stat.S_IFMT(st.st_mode) != stat.S_IFMT(entry.mode) or \
                    (entry.is_reg and (st.st_size != entry.size or st.st_mtime_ns != entry.mtime_ns)):
                log.warning("Skipping sender remove for changed file: %s", quote(path))
                return
            os.unlink(path)
        except OSError as exc:
            log.warning("sender failed to remove %s: %s", quote(path), exc.strerror)
