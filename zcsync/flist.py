"""The file list: FileEntry values and the sender's streaming scan of the source."""
from __future__ import annotations

import errno
import logging
import operator
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from . import fsscan, meta
from .errors import PARTIAL, VANISHED, FileProblem
from .filters import FilterRules
from .options import Options
from .pathnames import escape, unsafe_symlink

log = logging.getLogger(__name__)

ROOT = b"."
ABSENT = object()  # a missing source operand that --ignore-missing-args lets go


class Stat(NamedTuple):
    """The stat fields the scan uses (what fsscan.list_dir returns; os.stat_result has the same names)."""

    st_mode: int
    st_size: int
    st_mtime_ns: int
    st_uid: int
    st_gid: int
    st_ino: int
    st_dev: int
    st_nlink: int
    st_rdev: int


class FileEntry(NamedTuple):
    """One name in the transfer, relative to the transfer root (b"." is the root).

    A NamedTuple rather than a frozen dataclass: it is built once per file, and on
    trees of 100k files construction cost shows (0.2 us against 0.8 us).
    """

    index: int
    name: bytes
    mode: int
    size: int
    mtime_ns: int
    uid: int = 0
    gid: int = 0
    rdev: int = 0
    link: bytes | None = None  # symlink target
    hlink: int | None = None  # index of the first name of this hard-link group
    xattrs: dict[bytes, bytes] | None = None
    digest: bytes | None = None  # xxh3-128 of the contents, sent with -c

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_missing(self) -> bool:
        """A source operand that does not exist (--delete-missing-args): a deletion request."""
        return self.mode == 0

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def perms(self) -> int:
        return stat.S_IMODE(self.mode)

    @property
    def parent(self) -> bytes:
        head, _, _ = self.name.rpartition(b"/")
        return head or ROOT

    @property
    def basename(self) -> bytes:
        return self.name.rpartition(b"/")[2]


@dataclass(frozen=True, slots=True)
class DirBatch:
    """The entries of one directory level, sent together so the receiver can delete per directory.

    `dir_name` is the directory whose complete contents these are, or None when the batch
    only names top-level sources (no deletion is implied for it).
    """

    dir_name: bytes | None
    entries: tuple[FileEntry, ...]
    expanded: frozenset[bytes] = frozenset()  # directories here whose contents come in a later batch


@dataclass(frozen=True)
class SourceArg:
    """One source operand as the user wrote it."""

    path: bytes  # filesystem path of the operand, without trailing slash (except "/")
    contents: bool  # trailing slash (or "."): send the contents, not the directory itself
    prefix: bytes  # name under which it appears in the transfer (b"." for contents)
    implied_dirs: tuple[tuple[bytes, bytes], ...] = ()  # (name, fs path) for -R parents
    # The directory rsync changes into before it looks at the name (None: the current one):
    # the operand's parent, the operand itself with a trailing slash, the part before "/./"
    # with -R. A missing name counts as missing (--ignore-missing-args) only when it exists.
    anchor: bytes | None = None


def device_size(path: bytes, fd: int | None = None, follow: bool = False) -> int | None:
    """Where a device's contents end (rsync's get_device_size: lseek to the end), from path
    (through a final symlink only if follow) or an open fd; None if it cannot be opened."""
    own = fd is None
    if own:
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY | (0 if follow else os.O_NOFOLLOW)
        try:
            fd = os.open(path, flags)
        except OSError:
            return None
    assert fd is not None
    try:
        return max(os.lseek(fd, 0, os.SEEK_END), 0)
    except OSError:
        return 0
    finally:
        if own:
            os.close(fd)


def sort_key(entry: FileEntry) -> tuple[bool, bytes]:
    """rsync's order inside a directory: non-directories first, then directories, by name."""
    return (entry.is_dir, entry.name)


@dataclass
class ScanState:
    """What the scan learned that the rest of the run needs."""

    io_error: bool = False
    on_problem: Callable[[FileProblem], None] | None = None
    on_notice: Callable[[str], None] | None = None  # rsync's lines without -v ("skipping directory X")
    inodes: dict[tuple[int, int], int] = field(default_factory=dict)
    next_index: int = 0
    # Where each listed directory and each top-level name is on disk: a file's path is
    # derived from its directory's (kept per directory, not per file).
    dirs: dict[bytes, bytes] = field(default_factory=dict)  # directory name -> fs path
    # index -> fs path of the entries that are not at their directory's path: the top-level
    # names, and those a merged directory took from one of its later sources
    tops: dict[int, bytes] = field(default_factory=dict)
    # Symlinks listed as what they point to (-k, --copy-unsafe-links): opened through the link.
    followed: set[bytes] = field(default_factory=set)
    # Devices listed as regular files of their contents (--copy-devices).
    devices: set[bytes] = field(default_factory=set)

    def path_of(self, entry: FileEntry) -> bytes:
        """The source path of an entry of the scan."""
        top = self.tops.get(entry.index)
        if top is not None:
            return top
        return self.dirs[entry.parent] + b"/" + entry.basename

    def notice(self, text: str) -> None:
        if self.on_notice is not None:
            self.on_notice(text)
        else:
            log.info("%s", text)

    def problem(self, path: bytes, message: str, code: int = PARTIAL) -> None:
        problem = FileProblem(escape(path), "[sender] " + message, code)
        if self.on_problem is not None:
            self.on_problem(problem)
        else:
            log.error("%s", problem.message)


class Scanner:
    """Walks the sources and yields DirBatch values in rsync's order, without building the whole list."""

    def __init__(self, sources: list[SourceArg], options: Options, filters: FilterRules,
                 state: ScanState | None = None,
                 read_xattrs: Callable[[bytes], dict[bytes, bytes]] | None = None) -> None:
        self.sources = sources
        self.opts = options
        self.filters = filters
        self.state = state or ScanState()
        self.read_xattrs = read_xattrs
        self._root_dev: int | None = None
        # An operand that exists but must look missing (a daemon module's excluded name), as
        # rsync's is_daemon_excluded makes it: with --ignore-missing-args it is one.
        self.hidden: Callable[[bytes], bool] | None = None
        # No xattrs: a regular file with one link needs no further checks (with --fake-super
        # its user.rsync.%stat may say it stands for something else).
        self._plain = read_xattrs is None and not options.fake_super

    # -- entry construction -------------------------------------------------
    def _lstat(self, path: bytes, top: bool = False, implied: bool = False) -> os.stat_result | None:
        """stat a source name; problems are recorded (a missing operand is an error, 23).
        A missing implied -R parent is not one: the name below it says what is missing."""
        follow = self.opts.copy_links
        try:
            return os.stat(path, follow_symlinks=follow)
        except FileNotFoundError:
            if implied:
                return None
            if top:
                self.state.problem(path, f"link_stat {quote(os.path.abspath(path))} failed: "
                                   f"No such file or directory (2)")
                self.state.io_error = True
                return None
            if follow:
                try:
                    os.lstat(path)
                except OSError:
                    pass
                else:
                    self.state.problem(path, f"symlink has no referent: {quote(path)}")
                    self.state.io_error = True
                    return None
            self.state.problem(path, f"file has vanished: {quote(path)}", VANISHED)
            return None
        except OSError as exc:
            self.state.problem(path, f"link_stat {quote(path)} failed: {exc.strerror} ({exc.errno})")
            self.state.io_error = True
            return None

    def _stat_source(self, src: SourceArg) -> os.stat_result | object | None:
        """stat a source operand: its stat; ABSENT when it does not exist and
        --ignore-missing-args (or --delete-missing-args) takes that for no error; None once
        a problem is recorded. As in rsync, a name whose anchor is missing stays an error
        (rsync cannot change into it), and so does any error but ENOENT."""
        if self.opts.ignore_missing_args:
            if self.hidden is not None and self.hidden(src.path) and os.path.isdir(src.anchor or b"."):
                return ABSENT
            try:
                return os.stat(src.path, follow_symlinks=self.opts.copy_links)
            except FileNotFoundError:
                if os.path.isdir(src.anchor or b"."):
                    return ABSENT
            except OSError:
                pass  # reported below, as without the option
        return self._lstat(src.path, top=True)

    def _missing_entry(self, name: bytes) -> FileEntry:
        """The entry of a missing operand (--delete-missing-args): rsync's mode-0 entry."""
        index = self.state.next_index
        self.state.next_index = index + 1
        return FileEntry(index, name, 0, 0, 0)

    def _incremental(self) -> bool:
        """Would rsync build this file list incrementally (its inc_recurse)? It decides what
        becomes of a missing -R name whose parent is missing too."""
        o = self.opts
        return o.recursive and not (o.delete and o.delete_mode in ("before", "after")) \
            and not o.delay_updates and not o.prune_empty_dirs

    def _referent(self, name: bytes, path: bytes) -> os.stat_result | bool | None:
        """-k / --copy-unsafe-links, as rsync's readlink_stat: the stat of what symlink `path`
        leads to when it is to be sent as that (any link out of the tree; a link to a
        directory), None to send the link itself, False when an unsafe link leads nowhere
        (reported: rsync's "symlink has no referent")."""
        try:
            target = os.readlink(path)
        except OSError:
            return None  # the link itself is read (and any error reported) as usual
        if self.opts.copy_unsafe_links and unsafe_symlink(target, name):
            try:
                return os.stat(path)
            except OSError:
                self.state.problem(path, f"symlink has no referent: {quote(path)}")
                self.state.io_error = True
                return False
        if self.opts.copy_dirlinks:
            try:
                st = os.stat(path)
            except OSError:
                return None
            if stat.S_ISDIR(st.st_mode):
                return st
        return None

    def make_entry(self, name: bytes, path: bytes, st: os.stat_result | Stat) -> FileEntry | None:
        """Build the entry for one name, or None when the options skip its type."""
        mode = st.st_mode
        opts = self.opts
        if self._plain and stat.S_ISREG(mode) and st.st_nlink == 1:
            # The common case, kept short: a regular file and nothing else to look up.
            index = self.state.next_index
            self.state.next_index = index + 1
            return FileEntry(index, name, mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid)
        link = None
        if opts.fake_super and (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            faked = self._faked(path, st)
            if faked is None:
                return None
            st, link = faked
            mode = st.st_mode
        if stat.S_ISLNK(mode) and link is None and (opts.copy_dirlinks or opts.copy_unsafe_links):
            referent = self._referent(name, path)
            if referent is False:
                return None
            if referent is not None:
                self.state.followed.add(name)
                st, mode = referent, referent.st_mode
        if opts.copy_devices and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            return self._device_as_file(name, path, st)
        if stat.S_ISLNK(mode):
            if not opts.links:
                self.state.notice(f"skipping non-regular file {quote(name)}")
                return None
            try:
                link = os.readlink(path) if link is None else link
            except OSError as exc:
                self.state.problem(path, f"readlink {quote(path)} failed: {exc.strerror} ({exc.errno})")
                self.state.io_error = True
                return None
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            if not opts.devices:
                self.state.notice(f"skipping non-regular file {quote(name)}")
                return None
        elif stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            if not opts.specials:
                self.state.notice(f"skipping non-regular file {quote(name)}")
                return None
        elif stat.S_ISDIR(mode):
            pass
        elif not stat.S_ISREG(mode):
            return None
        index = self.state.next_index
        hlink = None
        if opts.hard_links and not stat.S_ISDIR(mode) and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            hlink = self.state.inodes.setdefault(key, index)
            if hlink == index:
                hlink = None
        xattrs = None
        if self.read_xattrs is not None:
            try:
                xattrs = self.read_xattrs(path)
            except OSError as exc:
                self.state.problem(path, f"get_xattr_names {quote(path)} failed: {exc.strerror} ({exc.errno})")
                self.state.io_error = True
        self.state.next_index = index + 1
        has_size = stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode)
        return FileEntry(index, name, mode, st.st_size if has_size else 0,
                         st.st_mtime_ns, st.st_uid, st.st_gid,
                         st.st_rdev if (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) else 0,
                         link, hlink, xattrs)

    def _faked(self, path: bytes, st: os.stat_result | Stat) -> tuple[os.stat_result | Stat, bytes | None] | None:
        """--fake-super: what a regular file or directory stands for, as its user.rsync.%stat
        records it (rsync's x_lstat), and for a symlink kept as a file, its target (the
        file's contents). A corrupt or unreadable record is reported and the file is
        sent as what it is (rsync stops the run, exit 11); None (reported): a symlink whose
        target cannot be read, left out."""
        try:
            fake = meta.read_fake_stat(path)
        except ValueError as exc:  # (its argument is the value)
            self.state.problem(path, f"Corrupt {meta.FAKE_STAT.decode()} xattr attached to {quote(path)}: "
                               f'"{escape(exc.args[0])}"')
            self.state.io_error = True
            return st, None
        except OSError as exc:
            self.state.problem(path, f"failed to read xattr {meta.FAKE_STAT.decode()} for {quote(path)}: "
                               f"{exc.strerror} ({exc.errno})")
            self.state.io_error = True
            return st, None
        if fake is None:
            return st, None
        if stat.S_ISDIR(fake.mode) != stat.S_ISDIR(st.st_mode):
            self.state.problem(path, f"Corrupt {meta.FAKE_STAT.decode()} xattr attached to {quote(path)}: "
                               "a directory and a file at once")
            self.state.io_error = True
            return st, None
        size, link = st.st_size, None
        if stat.S_ISLNK(fake.mode):
            link = self._fake_link(path)
            if link is None:
                return None
            size = len(link)
        faked = Stat(fake.mode, size, st.st_mtime_ns, fake.uid, fake.gid, st.st_ino, st.st_dev, st.st_nlink,
                     fake.rdev)
        return faked, link

    def _fake_link(self, path: bytes) -> bytes | None:
        """The target of a symlink a --fake-super receiver kept as a regular file: its contents
        (None, reported, if it cannot be read or is empty)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                target = os.read(fd, 4096)
            finally:
                os.close(fd)
        except OSError as exc:
            self.state.problem(path, f"readlink {quote(path)} failed: {exc.strerror} ({exc.errno})")
            self.state.io_error = True
            return None
        if not target or b"\0" in target:
            self.state.problem(path, f"readlink {quote(path)} failed: not a symlink's target")
            self.state.io_error = True
            return None
        return target

    def _device_as_file(self, name: bytes, path: bytes, st: os.stat_result | Stat) -> FileEntry | None:
        """--copy-devices: a device as a regular file of its contents, as rsync lists it: the
        size is where the device ends (0 for a character device without one), the time is
        now, in whole seconds (a device's own time says nothing about its contents, so the
        quick check never takes an old copy for up to date)."""
        size = device_size(path, follow=self.opts.copy_links or name in self.state.followed)
        if size is None:
            self.state.problem(path, f"cannot read device {quote(path)}")
            self.state.io_error = True
            return None
        self.state.devices.add(name)
        index = self.state.next_index
        self.state.next_index = index + 1
        return FileEntry(index, name, stat.S_IFREG | stat.S_IMODE(st.st_mode), size,
                         int(time.time()) * 1_000_000_000, st.st_uid, st.st_gid)

    # -- walking ------------------------------------------------------------
    def _excluded(self, name: bytes, is_dir: bool, rules: FilterRules) -> bool:
        return rules.has_rules and rules.excluded(name, is_dir)

    def _list_dir(self, name: bytes, paths: list[bytes], rules: FilterRules,
                  top: bool = False) -> tuple[list[FileEntry], dict[bytes, list[bytes]]] | None:
        """One directory's entries, sorted as rsync sends them, indexes in that order; and, when
        several sources merge, the source paths of each subdirectory (empty otherwise).

        Several paths are one directory that several sources bring (``a/ b/ DST``): their
        names are merged as rsync does, the first source's name winning unless a later one
        is a directory and it is not; same-named subdirectories merge in turn.
        """
        listed, fds = [], {}
        try:
            for path in dict.fromkeys(paths):  # (`a/ a/ DST` lists a once)
                opened = self._open_dir(path, top)
                if opened is not None:
                    fds[path] = opened[0]
                    listed.append((path, opened[1]))
            return self._merge_listed(name, listed, fds, rules) if listed else None
        finally:
            for fd in fds.values():
                os.close(fd)

    def _merge_listed(self, name: bytes, listed: list[tuple[bytes, list[tuple]]], fds: dict[bytes, int],
                      rules: FilterRules) -> tuple[list[FileEntry], dict[bytes, list[bytes]]]:
        """_list_dir's result from the listings of the directory's source paths."""
        prefix = b"" if name == ROOT else name + b"/"
        primary = listed[0][0]
        if len(listed) == 1:
            files, dirs = self._kept_rows(prefix, primary, listed[0][1], rules)
            source: dict[bytes, bytes] = {}
        else:
            files, dirs, source, subdirs = self._merged_rows(prefix, listed, rules)
        files.sort(key=_by_name)  # rsync's order: files, then directories, each by name
        dirs.sort(key=_by_name)
        self.state.dirs[name] = primary
        entries = []
        state = self.state
        plain = self._plain
        for row in files + dirs:
            if source:  # (tested per row only when merging: this loop is the scan's hot path)
                path = source.get(row[0], primary)
                if path is not primary:
                    entry = self.make_entry(prefix + row[0], path + b"/" + row[0], Stat(*row[1:]))
                    if entry is not None:
                        state.tops[entry.index] = path + b"/" + row[0]
                        entries.append(entry)
                    continue
            mode = row[1]
            if plain and mode & 0o170000 == stat.S_IFREG and row[8] == 1:
                index = state.next_index  # the common case, inline: a plain regular file
                state.next_index = index + 1
                entries.append(FileEntry(index, prefix + row[0], mode, row[2], row[3], row[4], row[5]))
                continue
            entry = self.make_entry(prefix + row[0], primary + b"/" + row[0], Stat(*row[1:]))
            if entry is not None:
                entries.append(entry)
        if len(listed) == 1:
            subdirs = {}
        if self.opts.checksum:
            entries = self._with_digests(entries, fds, primary)
        return entries, subdirs

    def _kept_rows(self, prefix: bytes, path: bytes, rows: list[tuple],
                   rules: FilterRules) -> tuple[list[tuple], list[tuple]]:
        """One listing's rows that stay (stat failures reported, filters applied): (files, dirs)."""
        files, dirs = [], []
        for row in rows:
            mode = row[1]
            if mode <= 0:
                self._stat_failed(path + b"/" + row[0], -mode)
                continue
            is_dir = mode & 0o170000 == stat.S_IFDIR
            if rules.has_rules and rules.excluded(prefix + row[0], is_dir):
                continue
            (dirs if is_dir else files).append(row)
        return files, dirs

    def _merged_rows(self, prefix: bytes, listed: list[tuple[bytes, list[tuple]]], rules: FilterRules
                     ) -> tuple[list[tuple], list[tuple], dict[bytes, bytes], dict[bytes, list[bytes]]]:
        """Several listings of one directory as one: (files, dirs, the source dir of each name
        not from the first, every source path of each subdirectory)."""
        primary = listed[0][0]
        files: dict[bytes, tuple] = {}
        dirs: dict[bytes, tuple] = {}
        source: dict[bytes, bytes] = {}
        subdirs: dict[bytes, list[bytes]] = {}
        for path, rows in listed:
            kept_files, kept_dirs = self._kept_rows(prefix, path, rows, rules)
            for row in kept_dirs:
                subdirs.setdefault(row[0], []).append(path + b"/" + row[0])
                if row[0] in dirs:
                    continue  # merged: the first one's attributes
                files.pop(row[0], None)  # a directory wins over a file
                dirs[row[0]] = row
                if path is not primary:
                    source[row[0]] = path
                else:
                    source.pop(row[0], None)
            for row in kept_files:
                if row[0] in dirs or row[0] in files:
                    continue  # the first name wins
                files[row[0]] = row
                if path is not primary:
                    source[row[0]] = path
        return list(files.values()), list(dirs.values()), source, subdirs

    def _open_dir(self, path: bytes, top: bool) -> tuple[int, list[tuple]] | None:
        """An fd of one source directory and fsscan's rows of it (None after reporting why not)."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if top or self.opts.copy_links else os.O_NOFOLLOW)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            self._open_failed(path, exc)
            return None
        try:
            return fd, fsscan.list_dir(fd, follow_symlinks=self.opts.copy_links)
        except OSError as exc:
            os.close(fd)
            self._open_failed(path, exc)
            return None

    def _with_digests(self, entries: list[FileEntry], fds: dict[bytes, int], primary: bytes) -> list[FileEntry]:
        """-c: the contents' digests of a directory's regular files, one C call per source
        directory (through the fd it was listed with)."""
        groups: dict[bytes, list[int]] = {}
        for i, e in enumerate(entries):
            if e.is_reg:
                source = self.state.tops.get(e.index)
                groups.setdefault(primary if source is None else source.rpartition(b"/")[0], []).append(i)
        for path, regular in groups.items():
            digests = fsscan.digest_names(fds[path], [entries[i].basename for i in regular],
                                          [entries[i].size for i in regular], self.opts.open_noatime)
            for i, digest in zip(regular, digests):
                if isinstance(digest, bytes):
                    entries[i] = entries[i]._replace(digest=digest)
        return entries

    def _open_failed(self, path: bytes, exc: OSError) -> None:
        if exc.errno == errno.ENOENT:
            self.state.problem(path, f"file has vanished: {quote(path)}", VANISHED)
        else:
            self.state.problem(path, f"opendir {quote(path)} failed: {exc.strerror} ({exc.errno})")
            self.state.io_error = True

    def _vanished(self, path: bytes) -> None:
        self.state.problem(path, f"file has vanished: {quote(os.path.abspath(path))}", VANISHED)

    def _stat_failed(self, path: bytes, err: int) -> None:
        if err == 0:
            self.state.problem(path, f"file has vanished: {quote(path)}", VANISHED)
        elif err == errno.ENOENT and self.opts.copy_links:
            self.state.problem(path, f"symlink has no referent: {quote(path)}")
            self.state.io_error = True
        else:
            self.state.problem(path, f"link_stat {quote(path)} failed: {os.strerror(err)} ({err})")
            self.state.io_error = True

    def batches(self) -> Iterator[DirBatch]:
        """Yield the whole transfer as DirBatch values, in the order rsync would send them."""
        opts = self.opts
        top: list[tuple[FileEntry, bytes, bool]] = []  # entry, fs path, recurse into it
        implied: dict[bytes, bool] = {}  # -R parents looked at: name -> there
        vanished: set[bytes] = set()  # missing -R parents reported (non-incremental)
        incremental = self._incremental()
        for src in self.sources:
            # As rsync: the operand first; its -R parents only if it is sent (a missing name
            # that --delete-missing-args sends included).
            st = self._stat_source(src)
            if st is None or (st is ABSENT and not opts.delete_missing_args):
                continue
            if st is ABSENT:
                absent = self._implied_dirs(src, implied, top)
                # A missing name below a missing parent: rsync's incremental list drops it (the
                # parent "has vanished"); its whole list sends it all the same (each missing
                # parent reported once), and the receiver deletes it.
                if absent and incremental:
                    self._vanished(absent[0])
                    continue
                for ipath in absent:
                    if ipath not in vanished:
                        vanished.add(ipath)
                        self._vanished(ipath)
                entry = self._missing_entry(src.prefix)
                self.state.tops[entry.index] = src.path  # (where it would be: path_of works for it)
                top.append((entry, src.path, False))
                continue
            assert isinstance(st, os.stat_result)
            if stat.S_ISDIR(st.st_mode) and not (opts.recursive or opts.dirs):
                self.state.notice(f"skipping directory {escape(src.prefix)}")  # unquoted, as rsync
                continue
            self._implied_dirs(src, implied, top)
            if self._root_dev is None:
                self._root_dev = st.st_dev
            entry = self.make_entry(src.prefix, src.path, st)
            if entry is None:
                continue
            self.state.tops[entry.index] = src.path
            top.append((entry, src.path, entry.is_dir and (src.contents or opts.recursive)))
        kept = _merge_tops(top)
        yield DirBatch(None, tuple(e for e, _, _ in kept),
                       frozenset(e.name for e, _, recurse in kept if recurse))
        for entry, paths, recurse in kept:
            if recurse:
                rules = self.filters
                if rules.has_rules and entry.name != ROOT:
                    rules = rules.enter_dir(ROOT, _merge_reader(os.path.dirname(paths[0]) or b"."))
                yield from self._walk(entry, paths, rules, top=True)

    def _implied_dirs(self, src: SourceArg, seen: dict[bytes, bool],
                      top: list[tuple[FileEntry, bytes, bool]]) -> list[bytes]:
        """Add the -R parents of src not looked at yet to top (seen: name -> it exists);
        return the paths of those that do not exist."""
        absent = []
        for iname, ipath in src.implied_dirs:
            there = seen.get(iname)
            if there is None:
                st = self._lstat(ipath, implied=True)
                seen[iname] = there = st is not None
                entry = self.make_entry(iname, ipath, st) if st is not None else None
                if entry is not None:
                    self.state.tops[entry.index] = ipath
                    top.append((entry, ipath, False))
            if not there:
                absent.append(ipath)
        return absent

    def _walk(self, dir_entry: FileEntry, paths: list[bytes], rules: FilterRules,
              top: bool = False) -> Iterator[DirBatch]:
        """Yield dir_entry's contents, then recurse (depth first) into its subdirectories.

        ``paths``: where the directory is on disk, more than one when several sources bring
        it (its names merge; a dir-merge file is read from the first). Only a directory the
        user named may be reached through a symlink; below it the scan never follows one
        (unless -L).
        """
        rules = rules.enter_dir(dir_entry.name, _merge_reader(paths[0])) if rules.has_rules else rules
        listed = self._list_dir(dir_entry.name, paths, rules, top or dir_entry.name in self.state.followed)
        if listed is None:
            return
        entries, merged = listed
        here, tops = self.state.dirs[dir_entry.name], self.state.tops
        # A subdirectory's paths: where each source has it (merged), else beside its entry's.
        subdirs = [(e, merged.get(e.basename) or [tops.get(e.index) or here + b"/" + e.basename])
                   for e in entries if e.is_dir] if self.opts.recursive else []
        if self.opts.one_file_system:
            subdirs = [(e, kept) for e, ps in subdirs if (kept := [p for p in ps if self._same_fs(p)])]
        yield DirBatch(dir_entry.name, tuple(entries), frozenset(e.name for e, _ in subdirs))
        for entry, child_paths in subdirs:
            yield from self._walk(entry, child_paths, rules)

    def _same_fs(self, path: bytes) -> bool:
        """-x: is this directory on the file system the transfer started on?"""
        try:
            return os.stat(path, follow_symlinks=False).st_dev == self._root_dev
        except OSError:
            return False


_by_name = operator.itemgetter(0)


def _merge_tops(top: list[tuple[FileEntry, bytes, bool]]) -> list[tuple[FileEntry, list[bytes], bool]]:
    """The top-level names once each (``a/ b/ DST``, ``x/f y/f DST``), as rsync's clean_flist:
    the first wins unless only a later one is a directory; directories of one name merge
    (each recursed-into one adds its path). A dropped name's index stays unused."""
    kept: dict[bytes, tuple[FileEntry, list[bytes], bool]] = {}
    for entry, path, recurse in top:
        held = kept.get(entry.name)
        # (A name some source has wins over a missing operand of that name: never deleted.)
        if held is None or (entry.is_dir and not held[0].is_dir) or (held[0].is_missing and not entry.is_missing):
            if held is not None:
                del kept[entry.name]  # re-inserted last: its index is the highest yet
            kept[entry.name] = (entry, [path], recurse)
        elif entry.is_dir and recurse:  # (same-named directories are recursed alike)
            held[1].append(path)
    return list(kept.values())



def prune_empty_dirs(batches: Iterable[DirBatch], filters: FilterRules) -> Iterator[DirBatch]:
    """-m: the file list without the directories that hold no non-directory at any depth,
    as rsync's receiver prunes it: a directory that was not recursed into (-d, -x) counts as
    empty; the transfer root (.) and a directory that a receiver-side rule protects stay
    (rsync's --filter='P dir/'), and so do their parents. Needs the whole list first."""
    batches = list(batches)
    needed = {ROOT}
    for batch in batches:
        for entry in batch.entries:
            if entry.is_dir and not (filters.has_rules and filters.excluded(entry.name, True, side="receiver")):
                continue
            name = entry.name if entry.is_dir else entry.parent
            while name not in needed and name:  # its directory and every one above it
                needed.add(name)
                name = name.rpartition(b"/")[0]
    for batch in batches:
        if batch.dir_name is not None and batch.dir_name not in needed:
            continue
        entries = tuple(e for e in batch.entries if not e.is_dir or e.name in needed)
        yield DirBatch(batch.dir_name, entries, batch.expanded & needed)


def _merge_reader(dir_path: bytes) -> Callable[[bytes], bytes | None]:
    def read(name: bytes) -> bytes | None:
        try:
            fd = os.open(dir_path + b"/" + name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read()
    return read


def quote(name: bytes) -> str:
    """A name as rsync prints it in messages: double-quoted and escaped."""
    return f'"{escape(name)}"'
