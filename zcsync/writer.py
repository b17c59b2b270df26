"""The writer role: receives a file's data, verifies it, and commits it (shared/DESIGN.md, per file)."""
from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from dataclasses import dataclass
from typing import Protocol

import xxhash

from . import commit, fastio, fsscan
from .attrs import AttrPolicy, apply_fd
from .commit import DestTree
from .errors import FileIOError, FileProblem, UsageError
from .flist import FileEntry
from .options import Options
from .pathnames import escape, join, split
from .stats import Event, Report

log = logging.getLogger(__name__)

try:
    from . import _commit
except ImportError:  # not built (a source checkout without build_ext): one step at a time
    _commit = None

PARTIAL_DIR = ".zcsync-partial"  # where --partial keeps data: never under the final name

# Errors that mean the destination itself is broken: stop the run (rsync exits 11 on these).
FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}
# Background commits are collected once per this many submits (and at flush_commits()):
# a failure is reported that much later, the pins of their directories held that long.
COLLECT_EVERY = 16


class DataSource(Protocol):
    """A file's bytes as the transport delivers them."""

    size: int

    def write_into(self, fd: int, sparse: bool) -> bytes:
        """Write all bytes into fd (at offset 0) and return the xxh3-128 digest of what was written."""

    def digest(self) -> bytes:
        """The digest the sender vouches for; valid after write_into."""


@dataclass(frozen=True)
class Request:
    """The generator asks for one file's data; the writer will commit it under dest_name."""

    entry: FileEntry
    dest_name: bytes
    existing: os.stat_result | None
    itemize: str
    # A partial file of this name kept by an interrupted run (--partial, --partial-dir): the
    # delta basis instead of the old destination, as in rsync; removed once the file commits.
    partial: os.stat_result | None = None
    # The delta basis when the destination has no file of this name (-y, --fuzzy): (0, a
    # name in the destination) or (i, a name in the i-th --compare/copy/link-dest dir).
    basis: tuple[int, bytes] | None = None


def _preallocate(fd: int, size: int) -> None:
    """--preallocate: reserve the file's blocks before its data arrives (a full disk shows
    before the transfer, the file is contiguous where the filesystem can); a filesystem
    that cannot is written as usual, as in rsync."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def _copy_to_temp(src_fd: int, dfd: int, base: bytes, size: int) -> tuple[int, bytes]:
    """A new temp file for base in directory dfd holding src_fd's first size bytes; its fd
    (open) and name. Nothing is left behind if the copy fails."""
    fd, tmp = commit.create_temp(dfd, base)
    try:
        fastio.copy_data(src_fd, fd, size)
    except BaseException:
        os.close(fd)
        commit.unlink_quietly(dfd, tmp)
        raise
    return fd, tmp


def _open_regular(base: bytes, dir_fd: int, noatime: bool) -> int:
    """Open base in dir_fd for reading if it is a regular file (not a symlink, nor a fifo
    that would block the open); raises OSError."""
    fd = fsscan.open_read(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, noatime, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EISDIR, "basis is not a regular file")
    return fd


def open_temp_dir(tree: DestTree, temp_dir: str) -> int:
    """The fd of -T's directory (a relative one is relative to the destination); UsageError
    with rsync's message if it is not there."""
    try:
        return os.open(temp_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=tree.root_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise UsageError(f"The temp-dir does not exist: {temp_dir}") from None
        raise UsageError(f"Cannot open the temp-dir {temp_dir}: {exc.strerror}") from None


class Writer:
    """Writes requested files into temp files and commits them; thread-safe per file."""

    def __init__(self, opts: Options, tree: DestTree, policy: AttrPolicy, report: Report,
                 xattr_apply=None, backup=None) -> None:
        self.opts = opts
        self.tree = tree
        self.policy = policy
        self.report = report
        self.xattr_apply = xattr_apply
        self.backup = backup  # callable(parent_fd, base, name, copy=False) or None
        self.delayed: list[tuple[bytes, bytes, bytes]] = []  # (parent, temp, base)
        self.on_commit = None  # callable(entry, dest_name) -> None, set by the generator
        self._lock = threading.Lock()
        self.temps: set[tuple[bytes, bytes, bytes]] = set()  # (parent, temp, base) still uncommitted
        self._committer = None  # see commit_in_background()
        self._queued = 0  # files submitted to it since its results were last collected
        # -T/--temp-dir: temp files are made there (relative to the destination, as rsync);
        # _in_temp_dir names those that still are (the rest are in their file's directory).
        self.temp_fd = open_temp_dir(tree, opts.temp_dir) if opts.temp_dir else None
        self._in_temp_dir: set[bytes] = set()
        self.basis_fds: list[int] = []  # the --*-dest dirs a Request.basis may name (not ours to close)

    @property
    def partial_dir(self) -> bytes:
        """Where partial files are kept, relative to each file's directory."""
        return os.fsencode(self.opts.partial_dir or PARTIAL_DIR)

    def partial_stat(self, name: bytes) -> os.stat_result | None:
        """The kept partial file of destination `name`, if --partial/--partial-dir is on and
        there is one (a regular file, reached without following symlinks)."""
        if not (self.opts.partial or self.opts.partial_dir) or self.opts.inplace \
                or self.partial_dir.startswith(b"/"):
            return None
        parent, base = split(name)
        try:
            fd = commit.open_beneath(self.tree.dir_fd(parent), self.partial_dir)
        except OSError:
            return None
        try:
            st = os.stat(base, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return None
        finally:
            os.close(fd)
        return st if stat.S_ISREG(st.st_mode) and st.st_size > 0 else None

    def open_partial(self, name: bytes) -> int:
        """Open the kept partial file of destination `name` for reading; raises OSError."""
        parent, base = split(name)
        dfd = commit.open_beneath(self.tree.dir_fd(parent), self.partial_dir)
        try:
            fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
        finally:
            os.close(dfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "partial file is not a regular file")
        return fd

    def open_basis(self, basis: tuple[int, bytes]) -> int:
        """Open a Request.basis for reading: a regular file of the destination or of a
        --*-dest dir, reached through directories only, never through a symlink; raises OSError."""
        root, name = basis
        parent, base = split(name)
        if root == 0:
            pfd = self.tree.pin(parent)  # (the generator thread may evict it meanwhile)
            try:
                return _open_regular(base, pfd, self.opts.open_noatime)
            finally:
                self.tree.unpin(pfd)
        dfd = commit.open_beneath(self.basis_fds[root - 1], parent)
        try:
            return _open_regular(base, dfd, self.opts.open_noatime)
        finally:
            os.close(dfd)

    def _drop_partial(self, pfd: int, base: bytes) -> None:
        """The file committed: its partial file is spent; so is the partial dir once empty."""
        try:
            dfd = commit.open_beneath(pfd, self.partial_dir)
        except OSError:
            return
        try:
            commit.unlink_quietly(dfd, base)
        finally:
            os.close(dfd)
        if b"/" not in self.partial_dir.strip(b"/"):
            try:
                os.rmdir(self.partial_dir, dir_fd=pfd)
            except OSError:
                pass  # not empty (other partials) or not ours to remove

    def write(self, req: Request, source: DataSource) -> bool:
        """Write, verify and commit one file; per-file problems are reported, fatal ones raised."""
        entry, name = req.entry, req.dest_name
        parent, base = split(name)
        if self.report.on_progress is not None:  # a progress display is on: let it see the data
            source = self.report.on_progress.track(name, source)
        try:
            committed = self._write(req, source, parent, base)
        except OSError as exc:
            if exc.errno in FATAL_ERRNOS:
                raise FileIOError(f"Cannot write {escape(name)!r}: {exc.strerror}") from exc
            self.report.problem(FileProblem(escape(name), f"Cannot write {escape(name)!r}: {exc.strerror}"))
            return False
        if committed:
            if self.on_commit is not None:
                self.on_commit(entry, name)
        return committed

    def _write(self, req: Request, source: DataSource, parent: bytes, base: bytes) -> bool:
        # Pinned: on a remote receiver the generator thread may evict and close directory
        # fds while this file's data is still arriving.
        pfd = self.tree.pin(parent)
        if self._plain(req, source) and xxhash.xxh3_128(source.data).digest() == source.digest():
            return self._commit_bytes(req, source.data, pfd, parent, base)  # it unpins
        try:
            return self._write_in(req, source, pfd, parent, base)
        finally:
            self.tree.unpin(pfd)

    def _plain(self, req: Request, source: DataSource) -> bool:
        """Is this a file already in memory (a small file received in one frame) that needs
        nothing but the commit protocol: no backup, in-place, delayed, sparse or xattr step?"""
        opts = self.opts
        return (_commit is not None and self.report.on_progress is None  # progress watches write_into
                and self.temp_fd is None  # the C commit makes its temp file beside the file
                and not opts.preallocate  # (nor preallocates it)
                and getattr(source, "data", None) is not None
                and not (opts.inplace or opts.delay_updates or opts.sparse) and req.partial is None
                and (req.existing is None or self.backup is None)
                and (self.xattr_apply is None or req.entry.xattrs is None)
                and not self.policy.fake_super)  # (the C commit would chown, not record)

    def _commit_bytes(self, req: Request, data: bytes, pfd: int, parent: bytes, base: bytes) -> bool:
        """The commit protocol of _write_in in one C call that releases the GIL (zcsync/_commit.c),
        or queued for the commit thread (commit_in_background). Takes over pfd's pin."""
        assert _commit is not None
        try:
            want = self.policy.wanted(req.entry, req.existing)
            args = (pfd, base, data, want.perms, -1 if want.uid is None else want.uid,
                    -1 if want.gid is None else want.gid, want.mtime_ns is not None, want.mtime_ns or 0,
                    self.opts.fsync, self.policy.umask)
            if self._committer is not None:
                self._committer.submit((req, parent, pfd), *args)  # unpinned in _finish_commits
                pfd = -1
            else:
                _commit.commit_bytes(*args)
                self.tree.mark_dirty(parent)
        finally:
            if pfd != -1:
                self.tree.unpin(pfd)
        if self._committer is not None:
            self._queued += 1
            if self._queued == COLLECT_EVERY:
                self._queued = 0
                self._finish_commits(self._committer.collect())
        return True

    def commit_in_background(self) -> None:
        """From now on, files that _commit_bytes takes are committed on a thread that never takes
        the GIL: write() returns once the file is queued. Only for a receiver whose commits
        nothing waits on (no hard links to make after them, no source to remove); a failure
        is reported as a later write()'s or at flush_commits(), by the file's name."""
        if _commit is not None and self._committer is None:
            # Each queued file pins its directory's fd: no more queued than the fd cache
            # may hold (256, or a quarter of a low fd limit).
            self._committer = _commit.Committer(max_jobs=commit.default_cache_size())

    def flush_commits(self) -> None:
        """Wait until every queued commit is done (before directory times, fsyncs, the end)."""
        if self._committer is not None:
            self._queued = 0
            self._finish_commits(self._committer.collect(True))

    def _finish_commits(self, done: list[tuple[tuple[Request, bytes, int], int]]) -> None:
        fatal = None
        for (req, parent, pfd), err in done:
            self.tree.unpin(pfd)
            if not err:
                self.tree.mark_dirty(parent)
                continue
            message = f"Cannot write {escape(req.dest_name)!r}: {os.strerror(err)}"
            if err in FATAL_ERRNOS:
                fatal = fatal or FileIOError(message)
            else:
                self.report.problem(FileProblem(escape(req.dest_name), message))
        if fatal is not None:
            raise fatal

    def _write_in(self, req: Request, source: DataSource, pfd: int, parent: bytes, base: bytes) -> bool:
        opts = self.opts
        entry = req.entry
        inplace = opts.inplace and req.existing is not None and stat.S_ISREG(req.existing.st_mode)
        if inplace:
            if self.backup is not None:  # the old version is about to be overwritten where it lies
                self.backup(pfd, base, req.dest_name, copy=True)
            fd = os.open(base, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            tmp = None
        else:
            fd, tmp = self._create_temp(pfd, base)
            with self._lock:
                self.temps.add((parent, tmp, base))
        ok = False
        try:
            if opts.preallocate and not opts.sparse and entry.size > 0:
                _preallocate(fd, entry.size)
            for attempt in (1, 2):
                got = source.write_into(fd, opts.sparse and not inplace)
                if got == source.digest():
                    break
                log.warning("%s: checksum mismatch, retrying", escape(req.dest_name))
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
            else:
                self.report.problem(FileProblem(
                    escape(req.dest_name), f"File {escape(req.dest_name)!r} failed verification: "
                    "data changed in transit or during the transfer"))
                return False
            if inplace:
                os.ftruncate(fd, source.size)
            elif tmp in self._in_temp_dir and os.fstat(fd).st_dev != os.fstat(pfd).st_dev:
                fd, tmp = self._bring_over(fd, tmp, pfd, parent, base, source.size)
            if opts.fsync:
                os.fsync(fd)
            want = self.policy.wanted(entry, req.existing)
            if self.xattr_apply is not None and entry.xattrs is not None:
                self.xattr_apply(fd, entry.xattrs)
            apply_fd(fd, want)
            ok = True
        finally:
            os.close(fd)
            if not ok and tmp is not None:
                self._discard(pfd, parent, tmp, base)
        if tmp is None:
            return True
        if req.partial is not None:
            self._drop_partial(pfd, base)  # once committed (or delayed: then kept again if interrupted)
        if req.existing is not None and self.backup is not None:
            self.backup(pfd, base, req.dest_name)
        if opts.delay_updates:
            with self._lock:
                self.delayed.append((parent, tmp, base))
            return True
        self._rename(tmp, pfd, base)
        with self._lock:
            self.temps.discard((parent, tmp, base))
        self.tree.mark_dirty(parent)
        return True

    def _create_temp(self, pfd: int, base: bytes) -> tuple[int, bytes]:
        """A new temp file for base: in the --temp-dir if there is one, else beside base."""
        if self.temp_fd is None:
            return commit.create_temp(pfd, base)
        fd, tmp = commit.create_temp(self.temp_fd, base)
        with self._lock:
            self._in_temp_dir.add(tmp)
        return fd, tmp

    def _dir_of(self, tmp: bytes, pfd: int) -> int:
        """The directory fd a temp file is in (only names made in the --temp-dir are listed)."""
        return self.temp_fd if tmp in self._in_temp_dir else pfd  # type: ignore[return-value]

    def _bring_over(self, fd: int, tmp: bytes, pfd: int, parent: bytes, base: bytes, size: int) -> tuple[int, bytes]:
        """A verified temp file on another filesystem than its directory: copy it to a temp
        file beside base (rename cannot cross), drop the first; return the new (fd, name).
        rsync copies onto the final name itself; this keeps that name whole until the rename."""
        assert self.temp_fd is not None
        new_fd, new_tmp = _copy_to_temp(fd, pfd, base, size)
        with self._lock:
            self.temps.add((parent, new_tmp, base))
        os.close(fd)
        self._forget_temp(parent, tmp, base)
        commit.unlink_quietly(self.temp_fd, tmp)
        return new_fd, new_tmp

    def _forget_temp(self, parent: bytes, tmp: bytes, base: bytes) -> None:
        with self._lock:
            self.temps.discard((parent, tmp, base))
            self._in_temp_dir.discard(tmp)

    def _rename(self, tmp: bytes, pfd: int, base: bytes) -> None:
        os.rename(tmp, base, src_dir_fd=self._dir_of(tmp, pfd), dst_dir_fd=pfd)
        with self._lock:
            self._in_temp_dir.discard(tmp)

    def _discard(self, pfd: int, parent: bytes, tmp: bytes, base: bytes) -> None:
        """Drop a temp file, or keep it in the partial dir when --partial asks for that."""
        tdir = self._dir_of(tmp, pfd)
        self._forget_temp(parent, tmp, base)
        if self.opts.partial or self.opts.partial_dir:
            try:
                self._keep_partial(tdir, pfd, tmp, base)
                return
            except OSError as exc:
                log.warning("Cannot keep partial file for %r: %s", escape(join(parent, base)), exc.strerror)
        commit.unlink_quietly(tdir, tmp)

    def _keep_partial(self, tdir: int, pfd: int, tmp: bytes, base: bytes) -> None:
        """Move a partial temp file (in directory tdir) into the partial dir, never under its
        final name; across filesystems (--temp-dir) by a copy."""
        pdir = os.fsencode(self.opts.partial_dir or PARTIAL_DIR)
        if pdir.startswith(b"/"):
            raise OSError(errno.EINVAL, "absolute --partial-dir is not supported")
        fd = commit.makedirs_beneath(pfd, pdir, 0o700)
        try:
            try:
                os.rename(tmp, base, src_dir_fd=tdir, dst_dir_fd=fd)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                self._copy_partial(tdir, tmp, fd, base)
        finally:
            os.close(fd)

    @staticmethod
    def _copy_partial(tdir: int, tmp: bytes, dfd: int, base: bytes) -> None:
        src = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=tdir)
        try:
            dst, part = _copy_to_temp(src, dfd, base, os.fstat(src).st_size)
            os.close(dst)
            os.rename(part, base, src_dir_fd=dfd, dst_dir_fd=dfd)
        finally:
            os.close(src)
        commit.unlink_quietly(tdir, tmp)

    def finish_delayed(self) -> None:
        """--delay-updates: put every delayed file in place at the end."""
        for parent, tmp, base in self.delayed:
            pfd = self.tree.dir_fd(parent)
            self._rename(tmp, pfd, base)
            with self._lock:
                self.temps.discard((parent, tmp, base))
            self.tree.mark_dirty(parent)
        self.delayed.clear()

    def cleanup(self) -> None:
        """Remove temp files left by an interrupted run (no partial file under a final name)."""
        if self._committer is not None:
            # Queued files are whole and verified: let them commit (a failed one leaves no temp).
            for (req, parent, pfd), err in self._committer.close():
                self.tree.unpin(pfd)
        with self._lock:
            temps = list(self.temps)
            self.temps.clear()
        for parent, tmp, base in temps:
            try:
                pfd = self.tree.dir_fd(parent)
            except OSError:
                continue
            self._discard(pfd, parent, tmp, base)

    def close(self) -> None:
        """Release what the writer holds open (the --temp-dir)."""
        if self.temp_fd is not None:
            os.close(self.temp_fd)
            self.temp_fd = None

    def event(self, itemize: str, name: bytes, size: int = 0, extra: str = "") -> None:
        self.report.event(Event(itemize, escape(name), extra, size))

