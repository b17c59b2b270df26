"""Which attributes of a destination name differ from the source entry, and setting them."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from . import meta
from .flist import FileEntry
from .options import Options

_TYPE_LETTER = {
    stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "L",
    stat.S_IFCHR: "D", stat.S_IFBLK: "D", stat.S_IFIFO: "S", stat.S_IFSOCK: "S",
}


def type_letter(mode: int) -> str:
    return _TYPE_LETTER.get(stat.S_IFMT(mode), "?")


@dataclass(frozen=True)
class Wanted:
    """The final attributes a destination name should get, resolved from options."""

    perms: int
    uid: int | None
    gid: int | None
    mtime_ns: int | None
    # --fake-super: (file type bits, device number) of what the name stands for. perms, uid
    # and gid are then recorded in user.rsync.%stat, not set (apply_fd).
    fake: tuple[int, int] | None = None


class AttrPolicy:
    """Turns a source entry into the attributes the destination gets, per the options."""

    def __init__(self, opts: Options, chmod: object | None, am_root: int, umask: int) -> None:
        """Entries' owners are already the receiver's (idmap.OwnerMap: names, --usermap, --chown).
        am_root is rsync's (options.am_root): -1 for --fake-super, which keeps owners as root does."""
        self.opts = opts
        self.chmod = chmod
        self.am_root = bool(am_root)
        self.fake_super = am_root < 0
        self.umask = umask
        # What the quick no-change test must compare (None: it cannot decide, take the slow path).
        simple = chmod is None and not (opts.executability and not opts.perms)
        self._fast = simple and opts.times and opts.modify_window == 0
        self._perm_mask = 0o7777 if opts.perms else 0
        self._check_uid = opts.owner and am_root
        self._check_gid = opts.group

    def unchanged_row(self, entry: FileEntry, row: tuple) -> bool:
        """unchanged() for a regular file against an fsscan stat row (mode, size, mtime_ns, uid, gid, ...)."""
        return (self._fast and entry.mode & 0o170000 == stat.S_IFREG and row[0] & 0o170000 == stat.S_IFREG
                and row[1] == entry.size and row[2] == entry.mtime_ns
                and (row[0] ^ entry.mode) & self._perm_mask == 0
                and (not self._check_uid or row[3] == entry.uid)
                and (not self._check_gid or row[4] == entry.gid))

    def unchanged(self, entry: FileEntry, st: os.stat_result) -> bool:
        """True when st already has entry's size, mtime, permissions and owner (the common case)."""
        return (self._fast and st.st_size == entry.size and st.st_mtime_ns == entry.mtime_ns
                and (st.st_mode ^ entry.mode) & self._perm_mask == 0
                and (not self._check_uid or st.st_uid == entry.uid)
                and (not self._check_gid or st.st_gid == entry.gid))

    def wanted(self, entry: FileEntry, existing: os.stat_result | None) -> Wanted:
        opts = self.opts
        perms = entry.perms
        if self.chmod is not None:
            perms = self.chmod.apply(perms, entry.is_dir)  # type: ignore[attr-defined]
        if not opts.perms:
            if existing is not None and stat.S_IFMT(existing.st_mode) == stat.S_IFMT(entry.mode):
                perms = stat.S_IMODE(existing.st_mode)
                if opts.executability and entry.is_reg:  # -E: rsync's dest_mode
                    if not entry.perms & 0o111:
                        perms &= ~0o111
                    elif not perms & 0o111:
                        perms |= (perms & 0o444) >> 2  # execute for whoever may read
            else:
                perms = perms & ~self.umask & 0o777
        uid = entry.uid if opts.owner and self.am_root else None
        gid = entry.gid if opts.group else None
        keep_time = opts.times and not ((entry.is_dir and opts.omit_dir_times)
                                        or (entry.is_link and opts.omit_link_times))
        fake = (stat.S_IFMT(entry.mode), entry.rdev) if self.fake_super else None
        return Wanted(perms, uid, gid, entry.mtime_ns if keep_time else None, fake)

    def same_time(self, a_ns: int, b_ns: int) -> bool:
        window = self.opts.modify_window
        if window == 0:
            return a_ns == b_ns
        return abs(a_ns // 1_000_000_000 - b_ns // 1_000_000_000) <= window

    def changes(self, entry: FileEntry, st: os.stat_result, want: Wanted) -> str:
        """The tpog part of an itemize string for an existing name (dots where equal)."""
        t = "."
        if want.mtime_ns is not None and not entry.is_link and not self.same_time(st.st_mtime_ns, want.mtime_ns):
            t = "t"
        elif entry.is_link:
            # rsync shows a link's time difference with -J too, though it does not set it.
            shown = want.mtime_ns if want.mtime_ns is not None or not self.opts.times else entry.mtime_ns
            if shown is not None and st.st_mtime_ns != shown:
                t = "t"
        p = "p" if not entry.is_link and stat.S_IMODE(st.st_mode) != want.perms else "."
        o = "o" if want.uid is not None and st.st_uid != want.uid else "."
        g = "g" if want.gid is not None and st.st_gid != want.gid else "."
        return t + p + o + g


def apply_fd(fd: int, want: Wanted, is_dir: bool = False) -> None:
    """Set owner, permissions and times on an open fd (owner first: chown clears set-id bits).

    With want.fake (--fake-super) the fd is a regular file or directory standing for what
    want describes: it gets the permission bits alone, with read and write (and, for a
    directory, search) for its owner, and the rest goes into user.rsync.%stat, as rsync's
    set_stat_xattr does. Without -o/-g the recorded owner is the one recorded before, or
    the file's own."""
    if want.fake is not None:
        st = os.fstat(fd)
        os.fchmod(fd, (want.perms & 0o777) | (0o700 if stat.S_ISDIR(st.st_mode) else 0o600))
        uid, gid = want.uid, want.gid
        if uid is None or gid is None:
            try:
                before = meta.read_fake_stat(fd)
            except ValueError:
                before = None
            uid = uid if uid is not None else before.uid if before is not None else st.st_uid
            gid = gid if gid is not None else before.gid if before is not None else st.st_gid
        kind, rdev = want.fake
        meta.write_fake_stat(fd, meta.FakeStat(kind | want.perms, rdev if kind in (stat.S_IFCHR, stat.S_IFBLK)
                                               else 0, uid, gid))
        if want.mtime_ns is not None:
            os.utime(fd, ns=(want.mtime_ns, want.mtime_ns))
        return
    if want.uid is not None or want.gid is not None:
        os.fchown(fd, -1 if want.uid is None else want.uid, -1 if want.gid is None else want.gid)
    os.fchmod(fd, want.perms)
    if want.mtime_ns is not None:
        os.utime(fd, ns=(want.mtime_ns, want.mtime_ns))


def apply_name(dir_fd: int, base: bytes, want: Wanted, is_link: bool, times: bool = True) -> None:
    """Set attributes on a name that cannot be opened (symlinks, devices) without following it."""
    if want.uid is not None or want.gid is not None:
        os.chown(base, -1 if want.uid is None else want.uid, -1 if want.gid is None else want.gid,
                 dir_fd=dir_fd, follow_symlinks=False)
    if not is_link:
        # An O_PATH fd pins the inode we checked; chmod through /proc never follows a swapped-in link.
        fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.chmod(f"/proc/self/fd/{fd}", want.perms)
        finally:
            os.close(fd)
    if times and want.mtime_ns is not None:
        os.utime(base, ns=(want.mtime_ns, want.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
