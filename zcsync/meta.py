"""Metadata helpers: --chmod rules, --chown specs, owner names, xattrs/ACLs, ls-style listing.

Everything here follows rsync 3.5 as observed on the same machine (the unit tests
compare against /usr/bin/rsync); where rsync and chmod(1) disagree, rsync wins.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import grp
import logging
import os
import pwd
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import UsageError
from .stats import big_num

log = logging.getLogger(__name__)

__all__ = [
    "ACL_ACCESS",
    "ACL_DEFAULT",
    "ChmodRules",
    "FAKE_STAT",
    "FakeStat",
    "apply_xattrs",
    "current_umask",
    "gid_by_name",
    "gid_name",
    "human_num",
    "list_line",
    "mode_to_str",
    "parse_chown",
    "resolve_id",
    "read_fake_stat",
    "read_xattrs",
    "uid_by_name",
    "uid_name",
    "write_fake_stat",
]

# --------------------------------------------------------------------------- umask

_umask_lock = threading.Lock()


def current_umask() -> int:
    """Return the process umask without changing it (rsync's orig_umask)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Without /proc the only way is to set and restore, which races other threads'
    # file creation; the lock at least keeps two readers from clobbering each other.
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


# --------------------------------------------------------------------------- --chmod

_WHO_BITS = {"u": 0o100, "g": 0o010, "o": 0o001, "a": 0o111}
# The special bit that "s" means for each who letter; rsync 3.5 made "a" mean both.
_WHO_TOP = {"u": 0o4000, "g": 0o2000, "o": 0, "a": 0o6000}
# What a permission-copy "=" clears per destination class (GNU chmod does the same).
_CLASS_SPECIAL = {0o100: 0o4000, 0o010: 0o2000, 0o001: 0o1000}
_CLASS_SHIFT = {"u": 6, "g": 3, "o": 0}
_PERM_LETTERS = {"r": 4, "w": 2, "x": 1, "X": 1}


@dataclass(frozen=True, slots=True)
class _ChmodItem:
    """One comma-separated item: either an AND/OR pair or a permission copy."""

    dirs_only: bool = False
    files_only: bool = False
    mode_and: int = 0o7777
    mode_or: int = 0
    x_keep: bool = False  # "X": the x bits of mode_or only count for dirs / already-x files
    copy_from: int | None = None  # bit shift of the class copied (u=6, g=3, o=0)
    copy_op: str = ""
    copy_where: int = 0  # 0o111-style class mask; 0 means "no who letter" (umask applies)


@dataclass(frozen=True)
class ChmodRules:
    """Parsed --chmod options; apply() computes the permissions the sender would supply."""

    items: tuple[_ChmodItem, ...] = ()
    umask: int = 0o022

    @classmethod
    def parse(cls, specs: Iterable[str], *, umask: int | None = None) -> ChmodRules:
        """Parse one or more --chmod values (each comma-separated); later items apply later.

        `umask` masks items without a who letter (``+w``, ``=u``), as in chmod(1);
        by default it is the process umask, as rsync's orig_umask.
        """
        if isinstance(specs, str):
            specs = (specs,)
        mask = current_umask() if umask is None else umask & 0o777
        items: list[_ChmodItem] = []
        for spec in specs:
            if not spec:
                raise _bad_chmod(spec)
            for item in spec.split(","):
                items.append(_parse_item(item, spec, mask))
        return cls(tuple(items), mask)

    def __bool__(self) -> bool:
        return bool(self.items)

    def apply(self, mode: int, is_dir: bool) -> int:
        """Return `mode` changed by the rules (bits outside 07777 pass through untouched).

        As in rsync, "X" looks at the mode before any item ran, not at the mode that
        earlier items produced (``a-x,a+X`` keeps an executable file executable), while
        a permission copy (``g=u``) reads the mode as changed by earlier items.
        Callers skip symlinks, as rsync does.
        """
        nonperm = mode & ~0o7777
        perms = mode & 0o7777
        was_x = bool(perms & 0o111)
        for item in self.items:
            if item.dirs_only and not is_dir:
                continue
            if item.files_only and is_dir:
                continue
            if item.copy_from is None:
                perms &= item.mode_and
                if item.x_keep and not was_x and not is_dir:
                    perms |= item.mode_or & ~0o111
                else:
                    perms |= item.mode_or
                continue
            value = (perms >> item.copy_from) & 7
            if item.copy_where:
                where = item.copy_where
                bits = where * value
            else:
                where = 0o111
                bits = (where * value) & ~self.umask
            if item.copy_op == "+":
                perms |= bits
            elif item.copy_op == "-":
                perms &= ~bits
            else:
                clear = where * 7
                for cls_bit, special in _CLASS_SPECIAL.items():
                    if where & cls_bit:
                        clear |= special
                perms = (perms & ~clear) | bits
        return nonperm | (perms & 0o7777)


def _bad_chmod(spec: str) -> UsageError:
    return UsageError(f"Invalid argument passed to --chmod ({spec})")


def _parse_item(item: str, spec: str, umask: int) -> _ChmodItem:
    """Parse one item the way rsync's parse_chmod() state machine does."""
    dirs_only = files_only = False
    where = topbits = 0
    op = ""
    i = 0
    while i < len(item):
        c = item[i]
        i += 1
        if c == "D":
            if files_only:
                raise _bad_chmod(spec)
            dirs_only = True
        elif c == "F":
            if dirs_only:
                raise _bad_chmod(spec)
            files_only = True
        elif c in _WHO_BITS:
            where |= _WHO_BITS[c]
            topbits |= _WHO_TOP[c]
        elif c in "+-=":
            op = c
            break
        elif c in "01234567" and not where:
            digits = item[i - 1:]
            if not all(d in "01234567" for d in digits) or int(digits, 8) > 0o7777:
                raise _bad_chmod(spec)
            return _ChmodItem(dirs_only, files_only, mode_and=0, mode_or=int(digits, 8))
        else:
            raise _bad_chmod(spec)
    if not op:
        raise _bad_chmod(spec)

    rest = item[i:]
    if rest and rest[0] in _CLASS_SHIFT:
        # Permission copy (g=u): one source class, no other letters in the item.
        if len(rest) != 1:
            raise _bad_chmod(spec)
        return _ChmodItem(dirs_only, files_only, copy_from=_CLASS_SHIFT[rest],
                          copy_op=op, copy_where=where)

    what = topoct = 0
    x_keep = False
    for c in rest:
        if c in _PERM_LETTERS:
            what |= _PERM_LETTERS[c]
            x_keep = x_keep or c == "X"
        elif c == "s":
            topoct = topoct | topbits if topbits else 0o4000
        elif c == "t":
            topoct |= 0o1000
        else:
            raise _bad_chmod(spec)

    if where:
        bits = where * what
    else:
        where = 0o111
        bits = (where * what) & ~umask
    if op == "+":
        mode_and, mode_or = 0o7777, bits | topoct
    elif op == "-":
        mode_and, mode_or = 0o7777 & ~(bits | topoct), 0
    else:
        mode_and = 0o7777 & ~(where * 7) & ~(topbits if topoct else 0)
        mode_or = bits | topoct
    return _ChmodItem(dirs_only, files_only, mode_and, mode_or, x_keep)


# --------------------------------------------------------------------------- owners

# (uid_t)-1 means "leave unchanged" to chown(2), so it cannot be a real owner.
_MAX_ID = 0xFFFFFFFE


@functools.lru_cache(maxsize=4096)
def uid_name(uid: int) -> str | None:
    """Return the user name of `uid`, or None if it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError, ValueError):
        return None


@functools.lru_cache(maxsize=4096)
def gid_name(gid: int) -> str | None:
    """Return the group name of `gid`, or None if it has none."""
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError, ValueError):
        return None


@functools.lru_cache(maxsize=4096)
def uid_by_name(name: str) -> int | None:
    """Return the uid of user `name`, or None if there is no such user."""
    try:
        return pwd.getpwnam(name).pw_uid
    except (KeyError, ValueError, UnicodeError):
        return None


@functools.lru_cache(maxsize=4096)
def gid_by_name(name: str) -> int | None:
    """Return the gid of group `name`, or None if there is no such group."""
    try:
        return grp.getgrnam(name).gr_gid
    except (KeyError, ValueError, UnicodeError):
        return None


def resolve_id(part: str, by_name: Callable[[str], int | None], kind: str) -> int | None:
    """A name or an id number on this host (None for ""); raises UsageError if unknown."""
    if not part:
        return None
    if part.isascii() and part.isdigit():
        value = int(part)
        if value > _MAX_ID:
            raise UsageError(f"Invalid ID number: {part}")
        return value
    found = by_name(part)
    if found is None:
        raise UsageError(f"Unknown {kind} name: {part}")
    return found


def parse_chown(spec: str) -> tuple[int | None, int | None]:
    """Parse --chown=USER:GROUP into (uid, gid); an empty part means "leave as is".

    As rsync: the first colon splits, all-digit parts are ids, a missing colon means
    user only. Unlike rsync (which warns and carries on), an unknown name is an error.
    """
    user, _, group = spec.partition(":")
    return resolve_id(user, uid_by_name, "user"), resolve_id(group, gid_by_name, "group")


# --------------------------------------------------------------------------- xattrs / ACLs

# POSIX ACLs live in these xattrs; we copy the kernel's binary form as is, so named
# users and groups travel by numeric id (rsync -A maps them by name unless
# --numeric-ids). The default ACL exists only on directories.
ACL_ACCESS = b"system.posix_acl_access"
ACL_DEFAULT = b"system.posix_acl_default"
# rsync keeps user.rsync.%* for --fake-super and reads them only with -XX.
_RSYNC_RESERVED = b"user.rsync.%"
# --fake-super: what a receiver may not set itself (owner, special bits, file type and
# device number), as rsync records it; other namespaces' xattrs go under user.rsync.NAME.
FAKE_STAT = b"user.rsync.%stat"
_RSYNC_PREFIX = b"user.rsync."
_NOTSUP = {errno.ENOTSUP, errno.EOPNOTSUPP}


class _Node:
    """Where the xattr calls of one target go: an fd, or a no-follow /proc path."""

    __slots__ = ("ref", "follow", "st")

    def __init__(self, target: int | tuple[int, bytes]) -> None:
        if isinstance(target, int):
            self.st = os.fstat(target)
            # f*xattr() refuse O_PATH fds (how one holds a symlink); /proc/self/fd/N
            # jumps to exactly that inode and resolves no further.
            if fcntl.fcntl(target, fcntl.F_GETFL) & getattr(os, "O_PATH", 0):
                self.ref: int | bytes = b"/proc/self/fd/%d" % target
            else:
                self.ref = target
            self.follow = True
        else:
            dir_fd, name = target
            name = os.fsencode(name)
            if not name or b"/" in name or b"\0" in name:
                raise ValueError(f"bad file name for xattrs: {name!r}")
            self.st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            self.ref = b"/proc/self/fd/%d/%s" % (dir_fd, name)
            self.follow = False

    def _kw(self) -> dict[str, bool]:
        # Python refuses follow_symlinks=False with an fd; fds never follow anyway.
        return {} if self.follow else {"follow_symlinks": False}

    def names(self) -> list[bytes]:
        return [os.fsencode(n) for n in os.listxattr(self.ref, **self._kw())]

    def get(self, name: bytes) -> bytes:
        return os.getxattr(self.ref, name, **self._kw())

    def set(self, name: bytes, value: bytes) -> None:
        os.setxattr(self.ref, name, value, 0, **self._kw())

    def remove(self, name: bytes) -> None:
        os.removexattr(self.ref, name, **self._kw())


def _managed(name: bytes, mode: int, *, xattrs: bool, acls: bool, user_only: bool) -> bool:
    """Whether `name` on a file of type `mode` is ours to copy, set and remove."""
    if name == ACL_ACCESS:
        return acls and not stat.S_ISLNK(mode)
    if name == ACL_DEFAULT:
        return acls and stat.S_ISDIR(mode)
    if not xattrs or name.startswith(b"system."):
        return False
    is_user = name.startswith(b"user.")
    if user_only and not is_user:
        return False
    # Linux allows no user.* xattrs on symlinks (trusted.* and security.* it does).
    return not (is_user and stat.S_ISLNK(mode))


def _default_user_only(user_only: bool | None) -> bool:
    return os.geteuid() != 0 if user_only is None else user_only


def read_xattrs(target: int | tuple[int, bytes], *, xattrs: bool, acls: bool,
                user_only: bool | None = None, fake_super: bool = False) -> dict[bytes, bytes]:
    """Return the xattrs (and ACL xattrs) of `target` that rsync -X / -A would send.

    With `xattrs`: user.* (non-root) or every namespace but system.* (root), less
    rsync's own user.rsync.%*. With `acls`: system.posix_acl_access/_default, raw.
    With `fake_super`, user.rsync.NAME is read as NAME (how a --fake-super receiver
    keeps other namespaces). A filesystem without xattr support reads as empty.
    Symlinks are not followed.
    """
    if not (xattrs or acls):
        return {}
    node = _Node(target)
    only_user = _default_user_only(user_only)
    try:
        names = node.names()
    except OSError as exc:
        if exc.errno in _NOTSUP:
            return {}
        raise
    result: dict[bytes, bytes] = {}
    for name in sorted(names):
        if name.startswith(_RSYNC_RESERVED):
            continue
        if not _managed(name, node.st.st_mode, xattrs=xattrs, acls=acls, user_only=only_user):
            continue
        try:
            value = node.get(name)
        except OSError as exc:
            # Removed between list and get, or refused for this one name: not there.
            if exc.errno in (errno.ENODATA, *_NOTSUP):
                continue
            raise
        if fake_super and name.startswith(_RSYNC_PREFIX) and len(name) > len(_RSYNC_PREFIX):
            name = name[len(_RSYNC_PREFIX):]  # sorted: it wins over a real one of that name
        result[name] = value
    return result


def _xattr_error(exc: OSError, verb: str, name: bytes) -> OSError:
    """An OSError naming the attribute, not the /proc path we reached it by."""
    code = exc.errno or errno.EIO
    return OSError(code, f"{os.strerror(code)} ({verb} {os.fsdecode(name)})")


def apply_xattrs(target: int | tuple[int, bytes], wanted: dict[bytes, bytes], *,
                 xattrs: bool, acls: bool, user_only: bool | None = None, fake_super: bool = False) -> bool:
    """Make the managed xattrs of `target` equal `wanted`; return True if any changed.

    Names outside the namespaces we manage are ignored in `wanted` and left alone on
    the target (e.g. user.* on a symlink, trusted.* for non-root, a default ACL on a
    file). Set ACLs before the final chmod: the kernel derives mode bits from an
    access ACL, and a later chmod rewrites the ACL's owner/mask/other entries.
    With `fake_super` (rsync's receiver): only user.* is managed, a wanted name of
    another namespace is kept as user.rsync.NAME, and user.rsync.%stat stays.
    All changes are attempted; the first failure is raised afterwards as OSError.
    """
    if not (xattrs or acls):
        return False
    node = _Node(target)
    only_user = True if fake_super else _default_user_only(user_only)
    kind = node.st.st_mode

    def ours(name: bytes) -> bool:
        if fake_super and name == FAKE_STAT:
            return False
        return _managed(name, kind, xattrs=xattrs, acls=acls, user_only=only_user)

    if fake_super:
        wanted = {(k if os.fsencode(k).startswith(b"user.") else _RSYNC_PREFIX + os.fsencode(k)): v
                  for k, v in wanted.items()}
    want = {os.fsencode(k): v for k, v in wanted.items() if ours(os.fsencode(k))}
    try:
        have_names = [n for n in node.names() if ours(n)]
    except OSError as exc:
        if exc.errno in _NOTSUP:
            if want:
                raise _xattr_error(exc, "setting", next(iter(want))) from exc
            return False
        raise

    changed = False
    first_error: OSError | None = None
    # Remove first: an ext4 inode holds only one block of xattrs.
    for name in have_names:
        if name in want:
            continue
        try:
            node.remove(name)
            changed = True
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                continue
            first_error = first_error or _xattr_error(exc, "removing", name)
    for name, value in want.items():
        try:
            if name in have_names and node.get(name) == value:
                continue
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                first_error = first_error or _xattr_error(exc, "reading", name)
                continue
        try:
            node.set(name, value)
            changed = True
        except OSError as exc:
            first_error = first_error or _xattr_error(exc, "setting", name)
    if first_error is not None:
        raise first_error
    return changed


# --------------------------------------------------------------------------- --fake-super

_FILE_TYPES = {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK}
_FAKE_VALUE = re.compile(rb"\s*([0-7]+)\s+(\d+),(\d+)\s+(\d+):(\d+)")


@dataclass(frozen=True, slots=True)
class FakeStat:
    """What user.rsync.%stat holds: the full mode (file type included), the device number
    and the owner, as rsync's "%o %u,%u %u:%u" (mode in octal, major,minor, uid:gid)."""

    mode: int
    rdev: int
    uid: int
    gid: int

    def encode(self) -> bytes:
        return b"%o %d,%d %d:%d" % (self.mode, os.major(self.rdev), os.minor(self.rdev), self.uid, self.gid)

    @classmethod
    def decode(cls, value: bytes) -> FakeStat:
        """Parse a value as rsync's sscanf does; ValueError for one rsync calls corrupt."""
        m = _FAKE_VALUE.match(value)
        if m is None:
            raise ValueError(value)
        mode, major, minor, uid, gid = (int(g, 8 if i == 0 else 10) for i, g in enumerate(m.groups()))
        if mode > 0o177777 or stat.S_IFMT(mode) not in _FILE_TYPES or max(uid, gid) > _MAX_ID \
                or max(major, minor) > 0xFFFFFFFF:
            raise ValueError(value)
        return cls(mode, os.makedev(major, minor), uid, gid)


def read_fake_stat(target: int | bytes | tuple[int, bytes]) -> FakeStat | None:
    """The user.rsync.%stat of a regular file or directory (an fd, or a path or (dir_fd, name)
    not followed), or None when it has none; ValueError for a corrupt value."""
    if isinstance(target, int):
        ref: int | bytes = target
        kw: dict[str, bool] = {}
    elif isinstance(target, bytes):
        ref, kw = target, {"follow_symlinks": False}
    else:
        dir_fd, name = target
        ref, kw = b"/proc/self/fd/%d/%s" % (dir_fd, os.fsencode(name)), {"follow_symlinks": False}
    try:
        value = os.getxattr(ref, FAKE_STAT, **kw)
    except OSError as exc:
        # none; no xattrs here; or a name that cannot have user.* ones (a symlink)
        if exc.errno in (errno.ENODATA, errno.EPERM, *_NOTSUP):
            return None
        raise
    return FakeStat.decode(value)


def write_fake_stat(fd: int, want: FakeStat) -> None:
    """rsync's set_stat_xattr on an open regular file or directory: record want where it
    differs from what the file really is, and drop the record once nothing differs."""
    st = os.fstat(fd)
    real = FakeStat(stat.S_IFMT(st.st_mode) | stat.S_IMODE(st.st_mode),
                    st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0,
                    st.st_uid, st.st_gid)
    try:
        current = read_fake_stat(fd)
    except ValueError:
        current = None  # rewritten below (it cannot equal want)
        os.removexattr(fd, FAKE_STAT)
    if real == want:
        if current is not None:
            os.removexattr(fd, FAKE_STAT)
    elif current != want:
        os.setxattr(fd, FAKE_STAT, want.encode())


# --------------------------------------------------------------------------- --list-only

_TYPE_CHAR = {
    stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFBLK: "b",
    stat.S_IFCHR: "c", stat.S_IFSOCK: "s", stat.S_IFIFO: "p",
}


def mode_to_str(mode: int) -> str:
    """Return the ls -l style string of `mode`, as rsync's permstring() does."""
    chars = [_TYPE_CHAR.get(stat.S_IFMT(mode), "-")]
    for shift in (6, 3, 0):
        chars += [
            "r" if mode & (4 << shift) else "-",
            "w" if mode & (2 << shift) else "-",
            "x" if mode & (1 << shift) else "-",
        ]
    if mode & stat.S_ISUID:
        chars[3] = "s" if mode & stat.S_IXUSR else "S"
    if mode & stat.S_ISGID:
        chars[6] = "s" if mode & stat.S_IXGRP else "S"
    if mode & stat.S_ISVTX:
        chars[9] = "t" if mode & stat.S_IXOTH else "T"
    return "".join(chars)


def human_num(num: int, human: int = 1) -> str:
    """Format a size as rsync's human_num: 0 digits, 1 "1,234", 2 "1.23K" (1000s), 3+ 1024s."""
    return big_num(num, human)


def _timestring(mtime_s: int) -> str:
    try:
        return time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(mtime_s))
    except (OverflowError, OSError, ValueError):
        # localtime() cannot represent it; keep the column width.
        return "????/??/?? ??:??:??"


def list_line(mode: int, size: int, mtime_s: int, name_escaped: str, *,
              link_target_escaped: str | None = None, human: int = 1) -> str:
    """Return one rsync --list-only line (no newline), e.g. ``-rw-r--r--  1,234 2024/01/02 03:04:05 f``.

    `size` is what rsync shows: the length of a file, directory or symlink target, and
    0 for devices, fifos and sockets. `human` is rsync's human-readable level (1 by
    default, 0 for --no-h, 2 for -h, 3 for -hh); the time is local time, as rsync
    prints it. rsync adds `` -> target`` for symlinks when links are preserved (-l/-a).
    """
    width = 14 if human else 11
    line = f"{mode_to_str(mode)} {human_num(size, human):>{width}} {_timestring(mtime_s)} {name_escaped}"
    if link_target_escaped is not None:
        line += f" -> {link_target_escaped}"
    return line
