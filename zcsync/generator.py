"""The generator role: compares each source entry with the destination and decides what to do.

It creates directories, symlinks, devices and hard links itself, deletes extraneous names,
and asks the sender (through a Request) only for files whose data must move.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from . import commit, fastio, fsscan, fuzzy, info, meta
from .attrs import AttrPolicy, Wanted, apply_fd, apply_name, type_letter
from .commit import DestTree
from .errors import MAX_DELETE, PARTIAL, FileProblem
from .filters import FilterRules
from .flist import ROOT, DirBatch, FileEntry, Stat
from .options import Options
from .pathnames import escape, join, split, unsafe_symlink
from .stats import Event, Report
from .writer import PARTIAL_DIR, FATAL_ERRNOS, Request, Writer

log = logging.getLogger(__name__)

NEW = "+++++++++"
# (destination dir, base name -> fsscan stat row or None, entry index -> -c digest)
Prefetch = tuple[bytes, list["tuple | None"], dict[int, bytes]]  # (dest dir, stat rows in entry order, -c digests)
_MISSING = object()



@dataclass
class _DirFix:
    name: bytes
    want: Wanted


@dataclass
class Generator:
    """Receiver-side decisions, one entry at a time, in file-list order."""

    opts: Options
    tree: DestTree
    policy: AttrPolicy
    report: Report
    writer: Writer
    filters: FilterRules
    io_error: Callable[[], bool]  # has the sender hit a read error? (then: no deletions)
    source_digest: Callable[[FileEntry], bytes | None]  # for -c
    dest_digest: Callable[[int, int], bytes]  # (fd, size) -> digest
    rename_root: dict[bytes, bytes] = field(default_factory=dict)  # source name -> dest name
    basis_roots: list[tuple[str, int]] = field(default_factory=list)  # (kind, dir fd)
    xattr_apply: Callable | None = None
    xattr_read: Callable | None = None
    dir_fixes: list[_DirFix] = field(default_factory=list)
    hl_done: dict[int, bytes] = field(default_factory=dict)  # leader index -> dest name, once final
    hl_waiting: dict[int, list[FileEntry]] = field(default_factory=dict)
    remove_source: Callable[[FileEntry], None] | None = None  # --remove-source-files
    deleted: int = 0
    delete_skipped: int = 0
    root_created: bool = False  # the destination directory was made by this run
    whole_default: bool = False  # files are copied whole unless --no-whole-file (a local run)
    # Destination names that no -y basis may be (a daemon module's excludes: a basis's
    # signature goes to the client); with it, -yy looks in the destination only.
    basis_hidden: Callable[[bytes], bool] | None = None
    _virtual_dirs: set[bytes] = field(default_factory=set)  # created only in a dry run
    _pending_dirs: dict[bytes, FileEntry] = field(default_factory=dict)
    _dir_rules: dict[bytes, FilterRules] = field(default_factory=dict)
    _prefetched: dict[bytes, tuple | None] = field(default_factory=dict)  # base name -> stat row
    _prefetch_dir: bytes | None = None
    _dest_digests: dict[int, bytes] = field(default_factory=dict)
    _after: list[tuple[bytes, frozenset[bytes]]] = field(default_factory=list)
    _delayed: list[tuple[bytes, list[tuple[bytes, bool]]]] = field(default_factory=list)  # --delete-delay
    # -y, per batch: each directory's candidate lists (read at its first missing file), and
    # the names requested so far in each (being replaced: no basis for another file).
    _fuzzy_lists: dict[bytes, list[list[fuzzy.Candidate]]] = field(default_factory=dict)
    _fuzzy_spent: dict[bytes, set[bytes]] = field(default_factory=dict)
    _batch_dir: bytes | None = None
    _batch_names: frozenset[bytes] = frozenset()

    def __post_init__(self) -> None:
        o = self.opts
        # Does anything wait for a file's commit (a hard link to it, removing its source)?
        self._plain_final = not (o.hard_links or o.remove_source_files)
        self.writer.on_commit = None if self._plain_final else self._committed
        self._hl_lock = threading.Lock()
        # Unchanged names get a line too: itemized with -ii (or -i and --info=name2), else
        # rsync's "X is uptodate" with -vv (--info=name2).
        names = info.level(o, "NAME")
        self._all_items = o.itemize and (o.verbose > 1 or names > 1)
        self._uptodate = names > 1 and not o.itemize
        # May an up-to-date file be recognised from its stat alone?
        self._quick = not (o.checksum or o.size_only or o.ignore_times or o.ignore_existing or o.xattrs or o.acls
                           or self._all_items or self._uptodate or self.policy.fake_super)
        # --link-dest / --compare-dest dirs, which rsync consults for existing files too, up to
        # date or not (_alt_exact): then no file is known to be done from its own stat.
        self._exact_roots = [(kind, fd) for kind, fd in self.basis_roots if kind != "copy"]
        self._size_limits = o.max_size is not None or o.min_size is not None
        if self._exact_roots:
            self._quick = False
        # Will a new file's data come as a delta (so that a basis other than its own old
        # copy is worth looking for)? Not in a dry run, nor with --append (rsync would append
        # onto that basis, or skip a new file whose basis is not shorter).
        whole = o.whole_file is not False if self.whole_default else o.whole_file is True
        self._other_basis = not (whole or o.dry_run or o.append)
        self._fuzzy = bool(o.fuzzy) and self._other_basis

    # -- per batch ------------------------------------------------------------
    def process(self, batch: DirBatch) -> Iterator[Request]:
        """Handle one directory's entries; yield the files whose data must be sent.

        A directory that will get a batch of its own is handled when that batch arrives,
        just before its contents (rsync's order); --delete-during removes extraneous names
        once the batch is through.
        """
        prefetched = None
        if batch.dir_name is not None:
            pending = self._pending_dirs.pop(batch.dir_name, None)
            if pending is not None:
                self.entry(pending)
            if self.opts.delete and self.filters.has_dir_merge:
                self._rules_for(batch.dir_name)  # read the destination's merge files before they change
            if not self._dry_run_dir(batch.dir_name):
                prefetched = self.prefetch(batch)
        missing: list[FileEntry] = []
        if batch.dir_name is None and self.opts.delete_missing_args and any(e.is_missing for e in batch.entries):
            missing = [e for e in batch.entries if e.is_missing]
            listed = frozenset(e.name for e in batch.entries if e.is_dir or e.is_missing)
            batch = DirBatch(None, tuple(e for e in batch.entries if not e.is_missing), batch.expanded)
        rows: list | None = None
        if prefetched is not None:
            self._prefetch_dir, rows, self._dest_digests = prefetched
            self._prefetched = dict(zip((e.basename for e in batch.entries), rows))
        if self._fuzzy:
            self._batch_dir = batch.dir_name
            self._batch_names = frozenset(e.basename for e in batch.entries)
        try:
            yield from self._entries(batch, rows)
        finally:
            self._prefetch_dir, self._prefetched, self._dest_digests = None, {}, {}
            if self._fuzzy:
                self._fuzzy_lists.clear()
                self._fuzzy_spent.clear()
        if missing:
            self.delete_missing(missing, listed)
        if batch.dir_name is not None and self.opts.delete:
            names = frozenset(e.basename for e in batch.entries)
            if self.opts.delete_mode == "during":
                # After the directory's files were read (the local driver copies each request
                # before asking for the next), so a read error there suppresses its deletions.
                self.delete_extraneous(batch.dir_name, names)
            elif self.opts.delete_mode == "after":
                self._after.append((batch.dir_name, names))
            elif self.opts.delete_mode == "delay":  # found now, deleted once the transfer is done
                self._delayed.append((batch.dir_name, self._extraneous(batch.dir_name, names)))

    def _entries(self, batch: DirBatch, rows: list | None) -> Iterator[Request]:
        expanded = batch.expanded
        quick = self._quick and self._plain_final and rows is not None
        same = self.policy.unchanged_row
        for entry, row in zip(batch.entries, rows if quick else [None] * len(batch.entries)):
            if entry.name in expanded:
                self._pending_dirs[entry.name] = entry
                continue
            # The no-change case, inline: a regular file whose destination stat already matches.
            if row is not None and same(entry, row):
                continue
            request = self.entry(entry)
            if request is not None:
                yield request

    def _dry_run_dir(self, dir_name: bytes) -> bool:
        dest_dir = self.rename_root.get(dir_name, dir_name)
        return self._under_virtual(dest_dir) or dest_dir in self._virtual_dirs

    def prefetch(self, batch: DirBatch) -> Prefetch | None:
        """lstat the batch's names in the destination in one call (C, without the GIL), and
        with -c digest the same-size regular files.

        Each entry's stat is used once, when that entry is handled; only that entry's
        handling changes its name, so the early stat is still current then.
        """
        if batch.dir_name is None:
            return None
        dest_dir = self.rename_root.get(batch.dir_name, batch.dir_name)
        try:
            fd = self.tree.dir_fd(dest_dir)
        except OSError:
            return None
        names = [e.basename for e in batch.entries]
        rows = fsscan.stat_names(fd, names)
        digests: dict[int, bytes] = {}
        if self.opts.checksum:
            # -c: read the destination files that may be equal (same size) in one C call.
            same = [e for e, row in zip(batch.entries, rows)
                    if e.is_reg and row is not None and stat.S_ISREG(row[0]) and row[1] == e.size]
            found = fsscan.digest_names(fd, [e.basename for e in same], [e.size for e in same],
                                        self.opts.open_noatime)
            digests = {e.index: d for e, d in zip(same, found) if isinstance(d, bytes)}
        return dest_dir, rows, digests

    def delete_all(self, batches: list[DirBatch]) -> None:
        """--delete-before: delete extraneous names before anything is transferred."""
        for batch in batches:
            if batch.dir_name is not None:
                self.delete_extraneous(batch.dir_name, frozenset(e.basename for e in batch.entries))

    # -- one entry ------------------------------------------------------------
    def dest_name(self, entry: FileEntry) -> bytes:
        return self.rename_root.get(entry.name, entry.name)

    def lookup(self, name: bytes) -> os.stat_result | Stat | None:
        parent, base = split(name)
        row = self._prefetched.pop(base, _MISSING) if parent == self._prefetch_dir else _MISSING
        if row is not _MISSING:
            if row is None:
                return None
            if row[0] < 0:
                raise OSError(-row[0], os.strerror(-row[0]), name)
            st: os.stat_result | Stat = Stat(*row)
        elif self._under_virtual(parent):
            return None
        else:
            try:
                st = self.tree.lstat(name)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return None
                raise
        if self.policy.fake_super and st is not None:
            return self._faked(self.tree.dir_fd(parent), base, name, st)
        return st

    def _faked(self, pfd: int, base: bytes, name: bytes, st: os.stat_result | Stat) -> os.stat_result | Stat:
        """--fake-super: a destination name as rsync's x_lstat sees it: a regular file or
        directory as its user.rsync.%stat records it. A real device or special file is never
        up to date (its device number reads as -1): it is made again as a fake one."""
        mode = st.st_mode
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
            try:
                fake = meta.read_fake_stat((pfd, base))
            except ValueError as exc:  # (its argument is the value) rewritten as any other difference
                self._problem(name, f"Corrupt {meta.FAKE_STAT.decode()} xattr attached to {escape(name)!r}: "
                              f'"{escape(exc.args[0])}"')
                return st
            if fake is None or stat.S_ISDIR(fake.mode) != stat.S_ISDIR(mode):
                return st
            return Stat(fake.mode, st.st_size, st.st_mtime_ns, fake.uid, fake.gid, st.st_ino, st.st_dev,
                        st.st_nlink, fake.rdev)
        if stat.S_ISLNK(mode):
            return st  # (_readlink: a real one never matches)
        return Stat(mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid, st.st_ino, st.st_dev, st.st_nlink, -1)

    def _readlink(self, pfd: int, base: bytes) -> bytes | None:
        """A destination symlink's target; with --fake-super, the contents of the regular file
        that stands for it (None for a real symlink, which is then made again as a fake one,
        as rsync's do_readlink has it)."""
        if not self.policy.fake_super:
            return os.readlink(base, dir_fd=pfd)
        try:
            fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return None
            raise
        try:
            return os.read(fd, 4097)
        finally:
            os.close(fd)

    def _under_virtual(self, name: bytes) -> bool:
        while self._virtual_dirs and name != ROOT:
            if name in self._virtual_dirs:
                return True
            name = split(name)[0]
        return False

    def entry(self, entry: FileEntry) -> Request | None:
        name = self.dest_name(entry)
        try:
            st = self.lookup(name)
            if self.opts.existing and st is None:
                return None
            if self.opts.ignore_existing and st is not None and not (
                    entry.is_dir and stat.S_ISDIR(st.st_mode)):
                return None
            if entry.is_dir:
                self._dir(entry, name, st)
                return None
            if self._size_limits and entry.is_reg and self._size_skipped(entry):
                return None  # listed (so --delete keeps it) but not transferred, as in rsync
            if entry.hlink is not None:
                return self._hard_link(entry, name, st)
            if entry.is_reg:
                return self._file(entry, name, st)
            if entry.is_link:
                if self.opts.safe_links and unsafe_symlink(entry.link, entry.name):  # type: ignore[arg-type]
                    log.info('ignoring unsafe symlink "%s" -> "%s"', escape(name), escape(entry.link))  # type: ignore[arg-type]
                    return None
                self._symlink(entry, name, st)
            elif not entry.is_missing:  # (a missing operand is only ever a deletion request)
                self._special(entry, name, st)
        except OSError as exc:
            if exc.errno in FATAL_ERRNOS:
                raise
            self._problem(name, f"recv_generator: failed to update {escape(name)!r}: {exc.strerror} ({exc.errno})")
        return None

    def _problem(self, name: bytes, message: str, code: int = PARTIAL) -> None:
        self.report.problem(FileProblem(escape(name), message, code))

    def _event(self, itemize: str, name: bytes, entry: FileEntry, extra: str = "") -> None:
        if self.report.on_event is None:
            return
        shown = b"./" if name == ROOT else name + (b"/" if entry.is_dir else b"")
        self.report.event(Event(itemize, escape(shown), extra, entry.size, entry.mtime_ns))

    def _attr_only(self, entry: FileEntry, name: bytes, st: os.stat_result, prefix: str) -> None:
        """Bring attributes of an up-to-date name in line; itemize if anything differs."""
        want = self.policy.wanted(entry, st)
        changes = self.policy.changes(entry, st, want)
        xchange = self._xattr_differs(entry, name)
        target = " -> " + escape(entry.link) if entry.link is not None else ""
        if changes == "...." and not xchange:
            if self._all_items:
                self._event(prefix + "." * 9, name, entry, target)
            elif self._uptodate and not entry.is_dir:
                self.report.notice(f"{escape(name)} is uptodate")
            return
        self._event(prefix + "." + ("." if not entry.is_reg else ".") + changes + ".." +
                    ("x" if xchange else "."), name, entry, target)
        if self.opts.dry_run:
            return
        parent, base = split(name)
        pfd = self.tree.dir_fd(parent)
        if entry.is_dir:
            if xchange:
                self.xattr_apply(self.tree.dir_fd(name), entry.xattrs)
            self.dir_fixes.append(_DirFix(name, want))
            return
        if entry.is_reg or self.policy.fake_super:  # (what stands for a link or device is a file)
            fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pfd)
            try:
                if xchange:
                    self.xattr_apply(fd, entry.xattrs)
                apply_fd(fd, want)
            finally:
                os.close(fd)
        else:
            apply_name(pfd, base, want, entry.is_link)

    def _xattr_differs(self, entry: FileEntry, name: bytes) -> bool:
        if entry.xattrs is None or self.xattr_read is None or entry.is_link:
            return False
        parent, base = split(name)
        return self.xattr_read((self.tree.dir_fd(parent), base)) != entry.xattrs

    def make_way(self, entry: FileEntry, name: bytes, st: os.stat_result) -> bool:
        """Remove a name of another type so entry can take its place; False (reported) if not allowed."""
        if self.opts.dry_run:
            return True
        parent, base = split(name)
        pfd = self.tree.dir_fd(parent)
        if stat.S_ISDIR(st.st_mode):
            try:
                os.rmdir(base, dir_fd=pfd)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                if not (self.opts.delete or self.opts.force):
                    self._problem(name, f"cannot delete non-empty directory: {escape(name)}")
                    self._problem(name, f"could not make way for new {_kind(entry)}: {escape(name)}")
                    return False
                self._backup_or_remove(pfd, base, name, st)
            self.tree.forget(name)
        else:
            self._backup_or_remove(pfd, base, name, st)
        self.tree.mark_dirty(parent)
        return True

    def _backup_or_remove(self, pfd: int, base: bytes, name: bytes, st: os.stat_result) -> None:
        if not self.opts.backup:
            commit.remove_tree(pfd, base)
        elif not stat.S_ISDIR(st.st_mode):
            self.backup(pfd, base, name, move=True)
        else:
            # rsync backs up each file of a deleted directory, then removes what became empty.
            dfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            try:
                for child in sorted(commit.listdir(dfd)):
                    cst = os.stat(child, dir_fd=dfd, follow_symlinks=False)
                    self._backup_or_remove(dfd, child, join(name, child), cst)
            finally:
                os.close(dfd)
            try:
                os.rmdir(base, dir_fd=pfd)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                self.report.notice(f"cannot delete non-empty directory: {escape(name)}")

    # -- directories ----------------------------------------------------------
    def _new_itemize(self, entry: FileEntry, name: bytes, prefix: str) -> str | None:
        """Itemize a new name as rsync does: against the same name in a --*-dest dir if one
        has it (None: nothing differs, so nothing is shown), else as all new."""
        bst = self._basis_stat(name) if self.basis_roots else None
        if bst is None or stat.S_IFMT(bst.st_mode) != stat.S_IFMT(entry.mode):
            return prefix + NEW
        changes = self.policy.changes(entry, bst, self.policy.wanted(entry, None))
        size = "s" if entry.is_reg and bst.st_size != entry.size else "."
        if changes == "...." and size == "." and not self._all_items:
            return None
        return prefix + "." + size + changes + "..."

    def _count_created(self, entry: FileEntry, itemize: str | None) -> None:
        """--stats: a new symlink or special is created, unless a --copy-dest dir had it
        (rsync's local copy of it; a --link-dest or --compare-dest one still counts)."""
        from_copy = itemize is None or not itemize.endswith(NEW)
        if not (from_copy and self.basis_roots and self.basis_roots[0][0] == "copy"):
            self.report.stats.created(entry.mode)

    def _basis_stat(self, name: bytes) -> os.stat_result | None:
        for _, pfd, base, st in self._in_basis_roots(name):
            return self._faked(pfd, base, name, st) if self.policy.fake_super else st
        return None

    def _in_basis_roots(self, name: bytes) -> Iterator[tuple[int, int, bytes, os.stat_result]]:
        """(i, parent fd, base name, lstat) of name in each --*-dest dir that has it (i from
        1), reached through directories only; the parent fd is closed when the loop goes on."""
        parent, base = split(name)
        for i, (_, root_fd) in enumerate(self.basis_roots, 1):
            try:
                pfd = commit.open_beneath(root_fd, parent)
            except OSError:
                continue
            try:
                try:
                    st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
                except OSError:
                    continue
                yield i, pfd, base, st
            finally:
                os.close(pfd)

    def _dir(self, entry: FileEntry, name: bytes, st: os.stat_result | None) -> None:
        if name == ROOT and self.root_created:
            itemize = self._new_itemize(entry, name, "cd")
            if itemize is not None:
                self._event(itemize, name, entry)
            if itemize is not None and itemize.endswith(NEW):  # not one a --*-dest dir had
                self.report.stats.created(entry.mode)
            self.dir_fixes.append(_DirFix(name, self.policy.wanted(entry, None)))
            return
        if st is not None and stat.S_ISDIR(st.st_mode):
            self._attr_only(entry, name, st, ".d")
            want = self.policy.wanted(entry, st)
            if not self.opts.dry_run and (want.mtime_ns is not None or
                                          want.perms != stat.S_IMODE(st.st_mode)):
                self.dir_fixes.append(_DirFix(name, want))
            return
        if st is not None and not self.make_way(entry, name, st):
            return
        itemize = self._new_itemize(entry, name, "cd")
        if itemize is not None:
            self._event(itemize, name, entry)
        if itemize is not None and itemize.endswith(NEW):  # not one a --*-dest dir had
            self.report.stats.created(entry.mode)
        if self.opts.dry_run:
            self._virtual_dirs.add(name)
            return
        parent, base = split(name)
        pfd = self.tree.dir_fd(parent)
        want = self.policy.wanted(entry, None)
        os.mkdir(base, 0o700, dir_fd=pfd)
        self.tree.mark_dirty(parent)
        fd = self.tree.dir_fd(name)
        if self.xattr_apply is not None and entry.xattrs is not None:
            self.xattr_apply(fd, entry.xattrs)
        # Writable for us until the end; the exact mode and times are set when it is complete.
        apply_fd(fd, dataclasses.replace(want, perms=want.perms | 0o700, mtime_ns=None))
        self.dir_fixes.append(_DirFix(name, want))

    # -- regular files --------------------------------------------------------
    def _same(self, entry: FileEntry, name: bytes, st: os.stat_result) -> bool:
        """rsync's quick check (or -c / --size-only) against the destination name."""
        if self.opts.checksum and st.st_size == entry.size:
            mine = self._dest_digests.pop(entry.index, None)
            if mine is not None:
                return mine == self.source_digest(entry)
        parent, base = split(name)
        return self._same_in(entry, self.tree.dir_fd(parent), base, st)

    def _file(self, entry: FileEntry, name: bytes, st: os.stat_result | None) -> Request | None:
        opts = self.opts
        if st is not None and self._exact_roots and stat.S_ISREG(st.st_mode) and self._alt_exact(entry, name, st):
            return None
        if st is not None and self._quick and stat.S_ISREG(st.st_mode) and self.policy.unchanged(entry, st):
            self._final(entry, name)
            return None
        if st is not None and stat.S_ISREG(st.st_mode):
            if opts.update and st.st_mtime_ns // 1_000_000_000 > entry.mtime_ns // 1_000_000_000 + opts.modify_window:
                return None
            if self._same(entry, name, st):
                self._attr_only(entry, name, st, ".f")
                self._final(entry, name)
                return None
            if opts.append and st.st_size >= entry.size:
                return None  # rsync's --append: a file not shorter than the source is left alone
            want = self.policy.wanted(entry, st)
            changes = self.policy.changes(entry, st, want)
            if not opts.times:  # rsync: "T", the file gets the transfer time
                changes = "T" + changes[1:]
            size = "s" if st.st_size != entry.size else "."
            csum = "c" if opts.checksum else "."
            xattrs = "x" if self._xattr_differs(entry, name) else "."  # (the old file's, as rsync)
            return self._request(entry, name, st, ">f" + csum + size + changes + ".." + xattrs)
        if st is None:
            if self.basis_roots and self._alt_basis(entry, name):
                return None
        elif stat.S_ISDIR(st.st_mode):
            if not self.make_way(entry, name, st):
                return None
            st = None
            if self.basis_roots and self._alt_basis(entry, name):
                return None  # the directory made way: now as if the name had been missing
        # Any other type is replaced by the final rename (after its backup). A name that a
        # --*-dest dir holds unchanged but was not taken from there (-I) shows no change.
        return self._request(entry, name, st, (self._new_itemize(entry, name, ">f") or ">f" + "." * 9)
                             if st is None else ">f" + NEW)

    def _request(self, entry: FileEntry, name: bytes, st: os.stat_result | None, itemize: str) -> Request | None:
        self._event(itemize, name, entry)
        if st is None and itemize.endswith(NEW):  # not one a --*-dest dir had (rsync's ITEM_IS_NEW)
            self.report.stats.created(entry.mode)
        self.report.stats.files_transferred += 1
        self.report.stats.transferred_size += entry.size
        if self.opts.dry_run:
            self.hl_done[entry.index] = name
            return None
        partial = self.writer.partial_stat(name)
        basis = None
        # No file of this name to rebuild from: as rsync, a basis dir's copy of it, else (-y)
        # a similar file; a kept partial file comes before either.
        if self._other_basis and partial is None and entry.size and (st is None or not stat.S_ISREG(st.st_mode)):
            if self.basis_roots and self.basis_hidden is None:
                basis = self._alt_delta_basis(name)
            if basis is None and self._fuzzy:
                basis = self._fuzzy_basis(entry, name)
        if self._fuzzy:
            parent, base = split(name)
            self._fuzzy_spent.setdefault(parent, set()).add(base)
        return Request(entry, name, st, itemize, partial, basis)

    def _committed(self, entry: FileEntry, name: bytes) -> None:
        """The writer committed entry: finish what waited on it."""
        self._final(entry, name)

    def _final(self, entry: FileEntry, name: bytes) -> None:
        """entry is final under name: hard links to it can be made; the source may be removed."""
        if self._plain_final:
            return
        if self.opts.hard_links:
            with self._hl_lock:  # the writer thread commits while the generator thread lists
                self.hl_done[entry.index] = name
                followers = self.hl_waiting.pop(entry.index, ())
            for follower in followers:
                self._link_to(follower, self.dest_name(follower), name, self.lookup(self.dest_name(follower)))
        if self.opts.remove_source_files and self.remove_source is not None:
            self.remove_source(entry)

    # -- alternate basis dirs -------------------------------------------------
    def _basis_matches(self, entry: FileEntry, name: bytes,
                       roots: list[tuple[str, int]]) -> Iterator[tuple[str, int, os.stat_result, bool]]:
        """The basis dirs' copies of name that match entry (rsync's quick check), in order:
        (kind, the copy's directory fd, its stat, whether its attributes match too). Each fd
        is valid until the next item."""
        parent, base = split(name)
        for kind, root_fd in roots:
            try:
                pfd = commit.open_beneath(root_fd, parent)
            except OSError:
                continue
            try:
                try:
                    st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
                except OSError:
                    continue
                if self.policy.fake_super:
                    st = self._faked(pfd, base, name, st)
                if self._same_in(entry, pfd, base, st):
                    yield kind, pfd, st, self.policy.changes(entry, st, self.policy.wanted(entry, None)) == "...."
            finally:
                os.close(pfd)

    def _alt_basis(self, entry: FileEntry, name: bytes) -> bool:
        """--compare-dest / --copy-dest / --link-dest: True if entry was settled from there."""
        parent, base = split(name)
        for kind, pfd, st, same_attrs in self._basis_matches(entry, name, self.basis_roots):
            if kind == "compare":
                return True
            if kind == "link" and same_attrs:
                if not self.opts.dry_run:
                    os.link(base, base, src_dir_fd=pfd, dst_dir_fd=self.tree.dir_fd(parent), follow_symlinks=False)
                    self.tree.mark_dirty(parent)
                if self._all_items:
                    self._event("hf" + "." * 9, name, entry)
                self._final(entry, name)
                return True
            if not entry.is_reg:
                return False  # made afresh, like any new symlink or device
            changes = self.policy.changes(entry, st, self.policy.wanted(entry, None))
            if kind == "copy":  # rsync's copy_altdest_file: a local copy ("cf"), not a created file
                if not same_attrs or self._all_items:
                    self._event("cf.." + changes + "...", name, entry)
            else:
                if not same_attrs:
                    self._event(">f.." + changes + "...", name, entry)
                self.report.stats.created(entry.mode)
            if not self.opts.dry_run:
                self._copy_local(entry, name, pfd, base, st)
            self._final(entry, name)
            return True
        return False

    # -- fuzzy basis (-y) -------------------------------------------------------
    def _fuzzy_basis(self, entry: FileEntry, name: bytes) -> tuple[int, bytes] | None:
        """-y: the basis for entry, whose destination `name` has no regular file, from the
        files of its directory (and with -yy of that directory in the --*-dest dirs), by
        rsync's rule (zcsync.fuzzy); (0 for the destination or i for the i-th basis dir, the
        name there), or None. A name requested earlier in the directory is being replaced
        and is no basis (rsync's FLAG_FILE_SENT)."""
        parent, base = split(name)
        lists = self._fuzzy_lists.get(parent)
        if lists is None:
            lists = self._fuzzy_lists[parent] = self._fuzzy_candidates(parent)
        spent = self._fuzzy_spent.get(parent)
        if spent:
            lists = [[c for c in lists[0] if c.name not in spent], *lists[1:]]
        found = fuzzy.choose(base, entry.size, entry.mtime_ns, lists, self._fuzzy_same_time)
        if found is None:
            return None
        root, cand = found
        log.debug("fuzzy basis selected for %s: %s", escape(name), escape(cand.name))
        return root, join(parent, cand.name)

    def _fuzzy_same_time(self, a_ns: int, b_ns: int) -> bool:
        """rsync's same_time for the fuzzy size+mtime match: seconds, within --modify-window."""
        return abs(a_ns // 1_000_000_000 - b_ns // 1_000_000_000) <= self.opts.modify_window

    def _fuzzy_candidates(self, parent: bytes) -> list[list[fuzzy.Candidate]]:
        """The regular, non-empty files of destination directory `parent` (then, with -yy, of
        `parent` in each basis dir), each list sorted by name. Not our temp files, nor
        (--delete-during) the names this directory's deletion will remove: rsync deletes them
        before it looks for a basis. Symlinks are no candidates; directories are reached
        without following one."""
        out: list[list[fuzzy.Candidate]] = []
        try:
            rows = fsscan.list_dir(self.tree.dir_fd(parent))
        except OSError:
            rows = []
        exclude: set[bytes] = set()
        o = self.opts
        if o.delete and o.delete_mode == "during" and self._batch_dir is not None \
                and self.rename_root.get(self._batch_dir, self._batch_dir) == parent:
            exclude = {b for b, _ in self._extraneous(self._batch_dir, self._batch_names)}
        hidden = self.basis_hidden
        if hidden is not None:
            exclude.update(row[0] for row in rows if hidden(join(parent, row[0])))
        out.append(_candidates(rows, exclude))
        if o.fuzzy > 1 and hidden is None:
            for _, root_fd in self.basis_roots:
                try:
                    pfd = commit.open_beneath(root_fd, parent)
                except OSError:
                    out.append([])
                    continue
                try:
                    out.append(_candidates(fsscan.list_dir(pfd), set()))
                except OSError:
                    out.append([])
                finally:
                    os.close(pfd)
        return out

    def _alt_delta_basis(self, name: bytes) -> tuple[int, bytes] | None:
        """The delta basis of a missing file from the --*-dest dirs, as rsync's try_dests_reg:
        the first one that has a regular file of this name (one that differs: _alt_basis
        settled those that match); none if that file is empty. (i for the i-th dir, name).
        Not in a daemon module with excludes (basis_hidden), whose paths there it cannot judge."""
        for i, _, _, st in self._in_basis_roots(name):
            if stat.S_ISREG(st.st_mode):
                return (i, name) if st.st_size else None
        return None

    def _size_skipped(self, entry: FileEntry) -> bool:
        """--max-size / --min-size: the receiver leaves this file alone."""
        o = self.opts
        return (o.max_size is not None and entry.size > o.max_size) or \
            (o.min_size is not None and entry.size < o.min_size)

    def _alt_exact(self, entry: FileEntry, name: bytes, st: os.stat_result) -> bool:
        """An existing file that a --link-dest / --compare-dest dir holds exactly (content and
        attributes): as rsync, it is replaced by a hard link to that file, or (compare) removed,
        even when it is up to date itself. True if so; False leaves it to the usual checks."""
        parent, base = split(name)
        for kind, afd, ast, same_attrs in self._basis_matches(entry, name, self._exact_roots):
            if not same_attrs:
                continue
            if kind == "link" and (ast.st_dev, ast.st_ino) == (st.st_dev, st.st_ino):
                return False  # already that file
            if not self.opts.dry_run:
                pfd = self.tree.dir_fd(parent)
                if kind == "link":  # linked under a temp name, renamed over: never a moment without
                    tmp = commit.temp_name(base)
                    os.link(base, tmp, src_dir_fd=afd, dst_dir_fd=pfd, follow_symlinks=False)
                    os.rename(tmp, base, src_dir_fd=pfd, dst_dir_fd=pfd)
                else:
                    os.unlink(base, dir_fd=pfd)
                self.tree.mark_dirty(parent)
            if kind == "link":
                if self._all_items:
                    self._event("hf" + "." * 9, name, entry)
                self._final(entry, name)
            return True
        return False

    def _same_in(self, entry: FileEntry, pfd: int, base: bytes, st: os.stat_result) -> bool:
        """Is the basis-dir name the same as entry (type, and content by the quick check)?"""
        if stat.S_IFMT(st.st_mode) != stat.S_IFMT(entry.mode):
            return False
        if entry.is_link:
            return self._readlink(pfd, base) == entry.link
        if not entry.is_reg:
            return st.st_rdev == entry.rdev
        if st.st_size != entry.size:
            return False
        if self.opts.size_only:
            return True
        if self.opts.checksum:
            fd = fsscan.open_read(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, self.opts.open_noatime, dir_fd=pfd)
            try:
                return self.dest_digest(fd, st.st_size) == self.source_digest(entry)
            finally:
                os.close(fd)
        if self.opts.ignore_times:
            return False  # rsync's quick_check_ok: -I after -c and --size-only
        return self.policy.same_time(st.st_mtime_ns, entry.mtime_ns)

    def _copy_local(self, entry: FileEntry, name: bytes, pfd: int, base: bytes, st: os.stat_result) -> None:
        from .transport.local import LocalFile  # the same data path the local transport uses
        fd = fsscan.open_read(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, self.opts.open_noatime, dir_fd=pfd)
        try:
            self.writer.write(Request(entry, name, None, "cf" + NEW), LocalFile(fd, st.st_size))
        finally:
            os.close(fd)

    # -- hard links -----------------------------------------------------------
    def _hard_link(self, entry: FileEntry, name: bytes, st: os.stat_result | None) -> Request | None:
        leader = entry.hlink
        assert leader is not None
        with self._hl_lock:
            target = self.hl_done.get(leader)
            if target is None:
                # The leader's data is still on its way (or failed): wait for its commit.
                self.hl_waiting.setdefault(leader, []).append(entry)
                return None
        self._link_to(entry, name, target, st)
        return None

    def _link_to(self, entry: FileEntry, name: bytes, target: bytes, st: os.stat_result | None) -> None:
        tst = self.lookup(target) if not self.opts.dry_run else None
        if st is not None and tst is not None and st.st_ino == tst.st_ino and st.st_dev == tst.st_dev:
            return
        self._event("hf" + (NEW if st is None else "." * 9), name, entry, " => " + escape(target))
        if self.opts.dry_run:
            return
        if st is not None and stat.S_ISDIR(st.st_mode):
            if not self.make_way(entry, name, st):
                return
            st = None
        parent, base = split(name)
        tparent, tbase = split(target)
        pfd = self.tree.dir_fd(parent)
        tmp = commit.temp_name(base)
        os.link(tbase, tmp, src_dir_fd=self.tree.dir_fd(tparent), dst_dir_fd=pfd, follow_symlinks=False)
        if st is not None and self.opts.backup:
            self.backup(pfd, base, name)
        os.rename(tmp, base, src_dir_fd=pfd, dst_dir_fd=pfd)
        self.tree.mark_dirty(parent)
        if self.opts.remove_source_files and self.remove_source is not None:
            self.remove_source(entry)

    def finish_hard_links(self) -> None:
        """Followers whose leader never committed: report them."""
        for leader, followers in self.hl_waiting.items():
            for f in followers:
                self._problem(self.dest_name(f), f"Cannot link {escape(self.dest_name(f))!r}: its first name failed")
        self.hl_waiting.clear()

    # -- symlinks, devices, fifos -----------------------------------------------
    def _symlink(self, entry: FileEntry, name: bytes, st: os.stat_result | None) -> None:
        assert entry.link is not None
        parent, base = split(name)
        if st is not None and stat.S_ISLNK(st.st_mode):
            current = self._readlink(self.tree.dir_fd(parent), base)
            if current == entry.link:
                self._attr_only(entry, name, st, ".L")
                self._final(entry, name)
                return
            want = self.policy.wanted(entry, st)
            changes = self.policy.changes(entry, st, want)
            if not self.opts.times:  # as for files: the link gets the time of its making
                changes = "T" + changes[1:]
            itemize = "cLc." + changes + "..."
        else:
            itemize = "cL" + NEW
            if st is None and self.basis_roots:
                if self._alt_basis(entry, name):
                    return
                itemize = self._new_itemize(entry, name, "cL")
            if st is not None and stat.S_ISDIR(st.st_mode):
                if not self.make_way(entry, name, st):
                    return
                st = None
            self._count_created(entry, itemize)
        if itemize is not None:
            self._event(itemize, name, entry, " -> " + escape(entry.link))
        if self.opts.dry_run:
            return
        target = entry.link
        self._put_in_place(entry, name, st, lambda pfd, tmp: os.symlink(target, tmp, dir_fd=pfd))
        self._final(entry, name)

    def _special(self, entry: FileEntry, name: bytes, st: os.stat_result | None) -> None:
        if st is not None and stat.S_IFMT(st.st_mode) == stat.S_IFMT(entry.mode) \
                and st.st_rdev == entry.rdev:
            self._attr_only(entry, name, st, "." + type_letter(entry.mode))
            self._final(entry, name)
            return
        if st is not None and stat.S_IFMT(st.st_mode) == stat.S_IFMT(entry.mode):
            itemize = "c" + type_letter(entry.mode) + "c" + "." * 8
        else:
            if st is None and self.basis_roots and self._alt_basis(entry, name):
                return
            if st is not None and stat.S_ISDIR(st.st_mode):
                if not self.make_way(entry, name, st):
                    return
                st = None
            itemize = self._new_itemize(entry, name, "c" + type_letter(entry.mode))
            self._count_created(entry, itemize)
        if itemize is not None:
            self._event(itemize, name, entry)
        if self.opts.dry_run:
            return
        self._put_in_place(entry, name, st, lambda pfd, tmp: os.mknod(
            tmp, stat.S_IFMT(entry.mode) | 0o600, entry.rdev, dir_fd=pfd))
        self._final(entry, name)

    def _put_in_place(self, entry: FileEntry, name: bytes, st: os.stat_result | None,
                      make: Callable[[int, bytes], None]) -> None:
        """Make a node at a temp name beside name, give it its attributes, back up what it
        replaces, and rename it over the old one (so the name is never missing)."""
        parent, base = split(name)
        pfd = self.tree.dir_fd(parent)
        tmp = commit.temp_name(base)
        if self.policy.fake_super:  # as rsync's: a regular file holds the link's target, or nothing
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=pfd)
        else:
            fd = -1
            make(pfd, tmp)
        try:
            want = self.policy.wanted(entry, None)
            if fd >= 0:
                view = memoryview(entry.link or b"")
                while view:
                    view = view[os.write(fd, view):]
                apply_fd(fd, want)
            else:
                apply_name(pfd, tmp, want, is_link=entry.is_link)
            if st is not None and self.opts.backup:
                self.backup(pfd, base, name)
            os.rename(tmp, base, src_dir_fd=pfd, dst_dir_fd=pfd)
        except BaseException:
            commit.unlink_quietly(pfd, tmp)
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        self.tree.mark_dirty(parent)

    # -- backups --------------------------------------------------------------
    def _backup_parent(self, parent: bytes) -> int:
        """Open (making as needed) the --backup-dir directory for parent; new levels copy the
        destination directory's mode and owner, as rsync does. The caller closes the fd."""
        broot = os.fsencode(self.opts.backup_dir or "")
        if broot.startswith(b"/"):
            os.makedirs(broot, exist_ok=True)
            fd = os.open(broot, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            fd = commit.makedirs_beneath(self.tree.root_fd, broot, 0o755)
        done = b"."
        try:
            for part in ([] if parent == ROOT else parent.split(b"/")):
                done = join(done, part) if done != ROOT else part
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                    made = True
                except FileExistsError:
                    made = False
                new = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = new
                st = self.tree.lstat(done) if made else None
                if st is not None:
                    os.fchown(fd, st.st_uid, st.st_gid)
                    os.fchmod(fd, stat.S_IMODE(st.st_mode))
            return fd
        except BaseException:
            os.close(fd)
            raise

    def backup(self, pfd: int, base: bytes, name: bytes, move: bool = False, copy: bool = False) -> None:
        """Keep the old version of name as rsync's --backup does (link, so the name never vanishes;
        copy: a copy of the file, which is about to be rewritten where it lies, --inplace)."""
        opts = self.opts
        suffix = os.fsencode(opts.backup_suffix)
        if opts.backup_dir:
            bfd = self._backup_parent(split(name)[0])
            target_fd, target = bfd, base + suffix
        else:
            bfd = None
            target_fd, target = pfd, base + suffix
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
            try:
                existing = os.stat(target, dir_fd=target_fd, follow_symlinks=False)
                if stat.S_ISDIR(existing.st_mode):
                    commit.remove_tree(target_fd, target)
            except FileNotFoundError:
                pass
            if copy and stat.S_ISREG(st.st_mode):
                self._backup_copy(pfd, base, st, target_fd, target)
            elif move or stat.S_ISDIR(st.st_mode):
                os.rename(base, target, src_dir_fd=pfd, dst_dir_fd=target_fd)
            else:
                tmp = commit.temp_name(target)
                try:
                    os.link(base, tmp, src_dir_fd=pfd, dst_dir_fd=target_fd, follow_symlinks=False)
                except OSError:
                    os.rename(base, target, src_dir_fd=pfd, dst_dir_fd=target_fd)
                else:
                    os.rename(tmp, target, src_dir_fd=target_fd, dst_dir_fd=target_fd)
            if opts.verbose > 1:
                log.info("backed up %s to %s", escape(name), escape(target))
        finally:
            if bfd is not None:
                os.close(bfd)

    def _backup_copy(self, pfd: int, base: bytes, st: os.stat_result, target_fd: int, target: bytes) -> None:
        """A copy of regular file base as target, with its mode, owner and times (via a temp file)."""
        src = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            fd, tmp = commit.create_temp(target_fd, target)
            try:
                fastio.copy_data(src, fd, st.st_size)
                apply_fd(fd, Wanted(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns))
                if self.policy.fake_super:  # what it stands for, too
                    _copy_fake_stat(src, fd)
            except BaseException:
                os.close(fd)
                commit.unlink_quietly(target_fd, tmp)
                raise
            os.close(fd)
        finally:
            os.close(src)
        os.rename(tmp, target, src_dir_fd=target_fd, dst_dir_fd=target_fd)

    # -- deletion -------------------------------------------------------------
    def _deletions_off(self) -> bool:
        """After a read error on the sending side nothing is deleted (unless --ignore-errors)."""
        return self.io_error() and not self.opts.ignore_errors

    def delete_extraneous(self, dir_name: bytes, keep: frozenset[bytes]) -> None:
        """Delete names in dest dir_name that the source does not have (rsync --delete)."""
        self._delete_found(dir_name, self._extraneous(dir_name, keep))

    def _extraneous(self, dir_name: bytes, keep: frozenset[bytes]) -> list[tuple[bytes, bool]]:
        """The names in dest dir_name that the source does not have and the rules let go,
        in the order they are deleted; none after a read error on the sending side."""
        if self._deletions_off():
            return []
        dest_dir = self.rename_root.get(dir_name, dir_name)
        if self._under_virtual(dest_dir) or dest_dir in self._virtual_dirs:
            return []
        try:
            fd = self.tree.dir_fd(dest_dir)
            names = [n for n in commit.listdir(fd) if n not in keep]
        except OSError:
            return []
        return self._doomed(fd, names, dir_name, self._rules_for(dir_name))[0]

    def _delete_found(self, dir_name: bytes, found: list[tuple[bytes, bool]], again: bool = False) -> None:
        """Delete what _extraneous found in dir_name; again: some time later (--delete-delay),
        so each name is looked at once more (gone meanwhile: skipped)."""
        if not found or self._deletions_off():
            return
        dest_dir = self.rename_root.get(dir_name, dir_name)
        try:
            fd = self.tree.dir_fd(dest_dir)
        except OSError:
            return
        rules = self._rules_for(dir_name)
        for base, is_dir in found:
            if again:
                try:
                    is_dir = stat.S_ISDIR(os.stat(base, dir_fd=fd, follow_symlinks=False).st_mode)
                except FileNotFoundError:
                    continue
            self._delete(fd, base, join(dest_dir, base), is_dir, join(dir_name, base), rules)

    def _doomed(self, fd: int, names: list[bytes], dir_name: bytes, rules: FilterRules,
                inside: bool = False) -> tuple[list[tuple[bytes, bool]], bool]:
        """Which of the names in directory fd (dir_name in the source's terms) deletion may
        remove, in rsync's order: directories, then the rest, each in reverse name order
        (it decides what --max-delete reaches). Not what the receiver's rules protect
        (perishable ones aside inside a deleted directory), nor our temp files and partial
        dir, nor (-b without --backup-dir) backups, which rsync protects as "P *SUFFIX".
        Also: was any name kept?"""
        partial_dir = os.fsencode(self.opts.partial_dir or PARTIAL_DIR)
        backups = os.fsencode(self.opts.backup_suffix) if self.opts.backup and not self.opts.backup_dir else None
        doomed = []
        kept = False
        for base in names:
            if base == partial_dir or base.endswith(commit.TEMP_SUFFIX) or (backups and base.endswith(backups)):
                kept = True
                continue
            try:
                st = os.stat(base, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if rules.has_rules and rules.excluded(join(dir_name, base), is_dir, side="receiver",
                                                  ignore_perishable=inside):
                kept = True
                continue
            doomed.append((base, is_dir))
        doomed.sort(key=lambda item: (item[1], item[0]), reverse=True)
        return doomed, kept

    def _rules_for(self, dir_name: bytes) -> FilterRules:
        """Receiver-side rules in force in dir_name: per-directory merge files are read from
        the destination, as rsync's receiver does for --delete."""
        if not self.filters.has_dir_merge:
            return self.filters
        rules = self._dir_rules.get(dir_name)
        if rules is None:
            parent = self.filters if dir_name == ROOT else self._rules_for(split(dir_name)[0])
            dest_dir = self.rename_root.get(dir_name, dir_name)

            def read(name: bytes) -> bytes | None:
                try:
                    fd = self.tree.dir_fd(dest_dir)
                except OSError:
                    return None
                return _read_beneath(fd, name)
            rules = parent.enter_dir(dir_name, read)
            self._dir_rules[dir_name] = rules
        return rules

    def delete_missing(self, entries: list[FileEntry], listed: frozenset[bytes]) -> None:
        """--delete-missing-args: delete the destination names of the source operands that do
        not exist, in rsync's file-list order (it decides what --max-delete reaches).

        As rsync's generator: a name the receiver's rules protect stays (matched as a file,
        whatever is there), and a non-empty directory goes only with --delete or --force.
        Unlike rsync, a read error on the sending side stops them as it stops every other
        deletion (--ignore-errors lets them go). Names are resolved from the destination
        root through directories only (never a symlink)."""
        if self._deletions_off():
            return
        recurse = self.opts.delete or self.opts.force
        warned: set[bytes] = set()
        for entry in sorted(entries, key=_list_order):
            parent = entry.parent
            if parent != ROOT and parent not in listed and parent not in warned:
                warned.add(parent)  # (rsync's whole list sends names whose parent vanished)
                log.warning("WARNING: parent dir is absent in the file list: %s", escape(parent))
            rules = self._rules_for(parent) if self.filters.has_dir_merge else self.filters
            if rules.has_rules and rules.excluded(entry.name, False, side="receiver"):
                continue
            name = self.dest_name(entry)
            dest_parent, base = split(name)
            if self._under_virtual(dest_parent) or name in self._virtual_dirs:
                continue  # made by this dry run: nothing there yet
            try:
                fd = self.tree.dir_fd(dest_parent)
                st = os.stat(base, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue  # nothing there, or not reachable through directories: nothing to delete
            self._delete(fd, base, name, stat.S_ISDIR(st.st_mode), entry.name, rules, recurse=recurse)

    def _delete(self, fd: int, base: bytes, rel: bytes, is_dir: bool, name: bytes, rules: FilterRules,
                depth: int = 0, recurse: bool = True) -> bool:
        """Delete one extraneous name (rel in the destination, name in the source's terms, for
        the rules); True if it is gone. As rsync's delete_item: a directory's contents go
        first, deepest first, except what the receiver's rules protect (perishable rules
        aside); a directory left non-empty stays, with rsync's note (for the name itself
        and the directories right inside it); --max-delete is counted per name. Without
        recurse only an empty directory goes (rsync's delete_item without DEL_RECURSE)."""
        if is_dir and not recurse:
            if self._has_names(fd, base):
                self.report.notice(f"cannot delete non-empty directory: {escape(rel)}")
                return False
        elif is_dir:
            if not self._delete_contents(fd, base, rel, name, rules, depth):
                if depth <= 1:
                    self.report.notice(f"cannot delete non-empty directory: {escape(rel)}")
                return False
        limit = self.opts.max_delete
        if limit is not None and self.deleted >= limit:
            self.delete_skipped += 1
            return False
        if not self.opts.dry_run:
            try:
                if is_dir:
                    os.rmdir(base, dir_fd=fd)  # emptied above (its files backed up one by one)
                    self.tree.forget(rel)
                elif self.opts.backup:
                    self.backup(fd, base, rel, move=True)
                else:
                    os.unlink(base, dir_fd=fd)
            except OSError as exc:
                if is_dir and exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # backups made beside its files
                    self.report.notice(f"cannot delete non-empty directory: {escape(rel)}")
                elif exc.errno == errno.ENOENT:
                    return True  # gone meanwhile
                else:
                    what = "rmdir" if is_dir else "unlink"
                    self._problem(rel, f"delete_file: {what}({escape(rel)}) failed: {exc.strerror} ({exc.errno})")
                return False
            if depth == 0:
                self.tree.mark_dirty(split(rel)[0])
        self.deleted += 1
        self.report.stats.files_deleted += 1
        self.report.event(Event("*deleting", escape(rel + (b"/" if is_dir else b""))))
        return True

    def _has_names(self, fd: int, base: bytes) -> bool:
        """Does directory base (in directory fd) hold anything?"""
        try:
            dfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            return False  # gone meanwhile, or unreadable: its rmdir says which
        try:
            return bool(commit.listdir(dfd))
        finally:
            os.close(dfd)

    def _delete_contents(self, fd: int, base: bytes, rel: bytes, name: bytes, rules: FilterRules,
                         depth: int) -> bool:
        """Delete what directory base holds; True if nothing is left in it."""
        try:
            dfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            return True  # gone meanwhile, or unreadable: its rmdir says which
        try:
            if rules.has_dir_merge:
                rules = rules.enter_dir(name, lambda merge: _read_beneath(dfd, merge))
            doomed, kept = self._doomed(dfd, commit.listdir(dfd), name, rules, inside=True)
            gone = not kept
            for child, child_is_dir in doomed:
                if not self._delete(dfd, child, join(rel, child), child_is_dir, join(name, child), rules, depth + 1):
                    gone = False
            return gone
        finally:
            os.close(dfd)

    def finish(self) -> None:
        """Deletions after the transfer, then directory modes and times, deepest first."""
        for name in sorted(self._pending_dirs):
            self.entry(self._pending_dirs[name])
        self._pending_dirs.clear()
        for dir_name, names in self._after:
            self.delete_extraneous(dir_name, names)
        self._after.clear()
        for dir_name, found in self._delayed:
            self._delete_found(dir_name, found, again=True)
        self._delayed.clear()
        self.finish_hard_links()
        if self.delete_skipped:
            log.warning("Deletions stopped due to --max-delete limit (%d skipped)", self.delete_skipped)
            self.report.outcome(MAX_DELETE)
        if self._deletions_off() and (self.opts.delete or self.opts.delete_missing_args):
            log.warning("IO error encountered -- skipping file deletion")
        for fix in sorted(self.dir_fixes, key=lambda f: f.name.count(b"/"), reverse=True):
            try:
                fd = self.tree.dir_fd(fix.name)
                apply_fd(fd, fix.want)
            except OSError as exc:
                self._problem(fix.name, f"Cannot set attributes of {escape(fix.name)!r}: {exc.strerror}")
        self.dir_fixes.clear()


def _copy_fake_stat(src: int, dst: int) -> None:
    try:
        os.setxattr(dst, meta.FAKE_STAT, os.getxattr(src, meta.FAKE_STAT))
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


def _candidates(rows: list, exclude: set[bytes]) -> list[fuzzy.Candidate]:
    """fsscan.list_dir rows as fuzzy candidates: regular non-empty files, by name."""
    return sorted((fuzzy.Candidate.of(row[0], row[2], row[3]) for row in rows
                   if row[1] > 0 and stat.S_ISREG(row[1]) and row[2] > 0
                   and not row[0].endswith(commit.TEMP_SUFFIX) and row[0] not in exclude),
                  key=lambda c: c.name)


def _read_beneath(dir_fd: int, name: bytes) -> bytes | None:
    """A per-directory merge file in a destination directory, never through a symlink."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _list_order(entry: FileEntry) -> tuple[tuple[int, bytes], ...]:
    """Where rsync sorts a missing operand in its file list: component by component, the
    leading ones directories, the last one a file (files before directories, by name)."""
    parts = entry.name.split(b"/")
    return tuple((1, p) for p in parts[:-1]) + ((0, parts[-1]),)


def _kind(entry: FileEntry) -> str:
    if entry.is_reg:
        return "regular file"
    if entry.is_link:
        return "symlink"
    if entry.is_dir:
        return "directory"
    return "special file"

