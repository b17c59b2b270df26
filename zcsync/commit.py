"""Safe destination access: directory fds, O_NOFOLLOW, temp files, rename, directory fsync."""
from __future__ import annotations

import errno
import os
import random
import resource
import stat
import threading
from collections import OrderedDict

from .pathnames import split

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_SUFFIX = b".zcs"


class DestTree:
    """The destination root and every directory below it, reached only through directory fds.

    Each directory is opened relative to its parent with O_NOFOLLOW, so a symlink found
    in (or planted into) the destination is never followed. Open fds are kept in a small
    LRU cache; renamed-into directories are fsynced once, when evicted or at close().
    """

    def __init__(self, root_fd: int, fsync: bool = True, cache_size: int | None = None) -> None:
        self.root_fd = root_fd
        self.fsync = fsync
        self._cache: OrderedDict[bytes, int] = OrderedDict()
        self._cache_size = cache_size or default_cache_size()
        self._dirty: set[bytes] = set()
        self.created = False  # made by this run (rsync itemizes it as new)
        self._lock = threading.RLock()  # pin() resolves under it
        self._retired: list[tuple[bytes, int]] = []  # evicted while writers may still use them
        self._pins: dict[int, int] = {}  # fd -> uses in progress on another thread (see pin())
        # True while two threads use the tree (a remote receiver's generator and writer):
        # evicted fds are then closed only by close_retired(), never under another thread.
        # A pinned fd (a commit thread's) is retired rather than closed in any case.
        self.shared = False

    @classmethod
    def open(cls, path: bytes, fsync: bool = True) -> DestTree:
        """Open the destination root the user named (following a symlink there, as rsync does)."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return cls(fd, fsync=fsync)

    def dir_fd(self, name: bytes) -> int:
        """The fd of the destination directory `name` (b"." is the root); raises OSError."""
        if name == b".":
            return self.root_fd
        with self._lock:
            fd = self._cache.get(name)
            if fd is not None:
                self._cache.move_to_end(name)
                return fd
        parent, base = split(name)
        fd = os.open(base, _DIR_FLAGS, dir_fd=self.dir_fd(parent))
        with self._lock:
            if name in self._cache:  # another thread opened it meanwhile
                os.close(fd)
                return self._cache[name]
            self._cache[name] = fd
            if len(self._cache) > self._cache_size:
                old = self._cache.popitem(last=False)
                if self.shared or old[1] in self._pins:
                    self._retired.append(old)  # another thread may hold it: see close_retired()
                else:
                    self._release(*old)
        return fd

    @property
    def retired(self) -> int:
        return len(self._retired)

    def pin(self, name: bytes) -> int:
        """dir_fd(name), kept open until unpin() even if evicted meanwhile (for a writer
        thread that holds a directory while a file's data arrives)."""
        with self._lock:
            fd = self.dir_fd(name)
            self._pins[fd] = self._pins.get(fd, 0) + 1
            return fd

    def unpin(self, fd: int) -> None:
        with self._lock:
            left = self._pins[fd] - 1
            if left:
                self._pins[fd] = left
            else:
                del self._pins[fd]

    def close_retired(self) -> None:
        """Close evicted directory fds that no pin holds. Call it from the thread that uses
        unpinned fds (the generator's), between its own uses."""
        with self._lock:
            retired = [(n, fd) for n, fd in self._retired if fd not in self._pins]
            self._retired = [(n, fd) for n, fd in self._retired if fd in self._pins]
        for name, fd in retired:
            self._release(name, fd)

    def _release(self, name: bytes, fd: int) -> None:
        if name in self._dirty:
            self._dirty.discard(name)
            if self.fsync:
                os.fsync(fd)
        os.close(fd)

    def forget(self, name: bytes) -> None:
        """Drop cached fds of `name` and everything below it (after it was removed or replaced)."""
        prefix = name + b"/"
        with self._lock:
            for key in [k for k in self._cache if k == name or k.startswith(prefix)]:
                fd = self._cache.pop(key)
                self._dirty.discard(key)
                if self.shared or fd in self._pins:
                    self._retired.append((key, fd))
                else:
                    os.close(fd)

    def lstat(self, name: bytes) -> os.stat_result | None:
        """lstat a destination name without following symlinks; None if it does not exist."""
        parent, base = split(name)
        try:
            return os.stat(base, dir_fd=self.dir_fd(parent), follow_symlinks=False)
        except FileNotFoundError:
            return None

    def mark_dirty(self, parent: bytes) -> None:
        """Note that a name in `parent` changed, so the directory needs an fsync."""
        if self.fsync:
            self._dirty.add(parent)

    def sync_dirs(self) -> None:
        """fsync every directory that had a name renamed into it."""
        for name in list(self._dirty):
            try:
                fd = self.dir_fd(name)
            except OSError:
                continue
            os.fsync(fd)
        self._dirty.clear()

    def close(self) -> None:
        try:
            self.sync_dirs()
        finally:
            self.close_retired()
            for fd in self._cache.values():
                os.close(fd)
            self._cache.clear()
            os.close(self.root_fd)


def default_cache_size() -> int:
    """Directory fds to keep open: 256, but never more than a quarter of the fd limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 256
    return max(8, min(256, soft // 4))


# Temp names need to be unlikely, not secret: they are created O_EXCL|O_NOFOLLOW, so a
# name someone else made first only costs a retry. A seeded generator saves a getrandom
# call per file; a forked child (a daemon session) reseeds so sessions differ.
_names = random.Random()
os.register_at_fork(after_in_child=_names.seed)


def temp_name(base: bytes) -> bytes:
    """`.<name>.<random>.zcs`, kept under NAME_MAX."""
    return b"." + base[:200] + b"." + b"%08x" % _names.getrandbits(32) + TEMP_SUFFIX


def create_temp(dir_fd: int, base: bytes) -> tuple[int, bytes]:
    """Create a fresh temp file beside `base` (O_EXCL|O_NOFOLLOW, mode 0600)."""
    for _ in range(16):
        name = temp_name(base)
        try:
            return os.open(name, _TEMP_FLAGS, 0o600, dir_fd=dir_fd), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "cannot create a unique temp file")


def unlink_quietly(dir_fd: int, name: bytes) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def listdir(dir_fd: int) -> list[bytes]:
    """Names in a directory fd, as bytes (os.listdir on an fd gives str)."""
    return [os.fsencode(n) for n in os.listdir(dir_fd)]


def remove_tree(dir_fd: int, name: bytes, on_remove=None, rel: bytes = b"") -> None:
    """Remove `name` (below dir_fd) and everything inside it, never following symlinks.

    on_remove(relative_name, is_dir) is called for each removed name, deepest first.
    """
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        if on_remove:
            on_remove(rel or name, False)
        return
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        for child in sorted(listdir(fd), reverse=True):
            remove_tree(fd, child, on_remove, (rel or name) + b"/" + child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)
    if on_remove:
        on_remove(rel or name, True)


def makedirs_beneath(root_fd: int, name: bytes, mode: int = 0o755, create: bool = True) -> int:
    """Open directory `name` below root_fd (creating missing parts if asked), never following symlinks.

    The caller closes the returned fd.
    """
    fd = os.dup(root_fd)
    try:
        for part in name.split(b"/"):
            if part in (b"", b"."):
                continue
            if create:
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                except FileExistsError:
                    pass
            new = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = new
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_beneath(root_fd: int, name: bytes) -> int:
    """Open existing directory `name` below root_fd, never following a symlink; caller closes."""
    return makedirs_beneath(root_fd, name, create=False)
