"""Sets up one run: source operands, the destination root, the roles, and the transport."""
from __future__ import annotations

import errno
import glob  # at import: a daemon session globs after dropping privileges (stdlib may be unreadable then)
import itertools
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import fastio, meta
from .attrs import AttrPolicy
from .idmap import OwnerMap
from .commit import DestTree, open_beneath
from .errors import FileIOError, FileProblem, FileSelectError, UsageError
from .filters import FilterRules
from .flist import ROOT, DirBatch, FileEntry, SourceArg, quote
from .generator import Generator
from .options import Options, am_root, side_options
from .pathnames import escape, split
from .sender import Sender
from .stats import Event, Report
from .writer import Writer

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished run reports back to the CLI or the library API."""

    exit_code: int
    report: Report
    problems: list[FileProblem] = field(default_factory=list)


_WILD = ("*", "?", "[")


def glob_sources(operands: Sequence[str], keep: Callable[[str], bool] | None = None) -> list[str]:
    """A sending server's operands with wildcards expanded, as the remote shell does for rsync.

    rsync leaves ``*?[`` unescaped when it passes paths to the remote shell (and its
    server globs them itself with --secluded-args), so ``host:'logs/*.gz'`` sends every
    match. Matches are sorted; a trailing slash stays; hidden names need a leading dot;
    a pattern that matches nothing stays as given (and then fails as a missing file).
    ``keep`` drops matches a caller refuses (a daemon: matches outside the module), without
    a word about them.
    """
    out = []
    for operand in operands:
        if not any(c in operand for c in _WILD):
            out.append(operand)
            continue
        found = sorted(m for m in glob.glob(operand) if keep is None or keep(m))
        out.extend(found or [operand])
    return out


def source_args(operands: list[str], opts: Options, files_from: list[bytes] | None = None) -> list[SourceArg]:
    """Turn source operands into SourceArgs with rsync's trailing-slash and -R rules.

    With --files-from each operand is a directory and the listed names (read here from
    opts.files_from, or given: a list a client sent) are the sources below it.
    """
    if files_from is None and opts.files_from is not None:
        files_from = read_files_from(opts)
    result = []
    for text in operands:
        raw = os.fsencode(text)
        if files_from is not None:
            result.extend(_files_from(raw, files_from, opts))
            continue
        result.append(_one_source(raw, opts))
    return result


def _one_source(raw: bytes, opts: Options, base: bytes | None = None) -> SourceArg:
    contents = raw.endswith(b"/") or raw in (b".", b"..") or raw.endswith(b"/.")
    path = raw.rstrip(b"/") or b"/"
    if path.endswith(b"/."):
        path = path[:-2] or b"/"
    fs_path = path if base is None else base + b"/" + path
    if not opts.relative:
        if contents:
            return SourceArg(fs_path, True, b".", anchor=fs_path)
        return SourceArg(fs_path, False, os.path.basename(path), anchor=os.path.dirname(fs_path) or None)
    # -R: the name keeps its path, cut at a "/./" marker, without a leading "/".
    rel = path
    if b"/./" in rel:
        rel = rel.split(b"/./", 1)[1]
    rel = b"/".join(p for p in rel.split(b"/") if p not in (b"", b"."))
    if not rel:
        return SourceArg(fs_path, True, b".", anchor=fs_path)
    implied = []
    parts = rel.split(b"/")
    prefix_fs = fs_path[: len(fs_path) - len(rel)].rstrip(b"/")
    for i in range(1, len(parts)):
        name = b"/".join(parts[:i])
        implied.append((name, (prefix_fs + b"/" if prefix_fs else (b"/" if fs_path.startswith(b"/") else b""))
                        + name))
    return SourceArg(fs_path, False, rel, tuple(implied), anchor=prefix_fs or None)


def read_files_from(opts: Options) -> list[bytes]:
    """The names of the --files-from file (or stdin for "-"): one per line (NUL with
    --from0), comments and empty lines skipped, leading slashes dropped."""
    assert opts.files_from is not None
    if remote_files_from(opts.files_from) is not None:
        # A remote transfer takes a host: prefix off before anything reads the list here.
        raise UsageError("--files-from cannot be remote when the transfer is local")
    try:
        if opts.files_from == "-":
            import sys
            data = sys.stdin.buffer.read()
        else:
            with open(opts.files_from, "rb") as f:
                data = f.read()
    except OSError as exc:
        raise UsageError(f"failed to open files-from file {opts.files_from}: {exc.strerror}") from exc
    return parse_files_from(data, opts.from0)


def parse_files_from(data: bytes, from0: bool) -> list[bytes]:
    """The names in the text of a --files-from list (see read_files_from)."""
    sep = b"\0" if from0 else b"\n"
    names = []
    for line in data.split(sep):
        if not from0:
            # A NUL ends the name, as in rsync (its names are C strings).
            line = line.split(b"\0", 1)[0].rstrip(b"\r")
        if not line or (not from0 and line[:1] in (b"#", b";")):
            continue
        names.append(line.lstrip(b"/") or b".")  # "/" alone: the source directory itself
    return names


@dataclass(frozen=True)
class RemoteList:
    """--files-from=[[user@]host]:FILE: a list on the remote side of the transfer.

    host is None for ":FILE" (whatever host the transfer reaches). path is FILE as
    rsync passes it on: for ``host::FILE`` and ``zcsync://host/FILE`` the whole rest,
    module name included, relative to the module root.
    """

    user: str | None
    host: str | None
    path: str


def remote_files_from(value: str) -> RemoteList | None:
    """Where a --files-from value's list is: None for a local file (or "-"), else the
    remote spec, split off as rsync does (its check_for_hostspec)."""
    from .endpoints import DAEMON, parse_endpoint

    if value.startswith(":"):
        spec = RemoteList(None, None, value[1:])
    else:
        endpoint = parse_endpoint(value)
        if not endpoint.is_remote:
            return None
        path = endpoint.path
        if endpoint.kind == DAEMON:
            path = "/".join(p for p in (endpoint.module, endpoint.path) if p)
        spec = RemoteList(endpoint.user, endpoint.host, path)
    if spec.path in ("", "-"):
        raise UsageError(f"Invalid --files-from remote filename {value!r}")
    return spec


def read_list_file(path: str, from0: bool, limit: int, nofollow: bool = False) -> list[bytes]:
    """A server's own --files-from file (the client gave host:FILE or :FILE): its names, as
    parse_files_from makes them, at most `limit` bytes of them.

    The file must be a regular file (not a fifo or a device that never ends). With
    nofollow no symlink is followed anywhere on the way: every directory is opened from
    its parent with O_NOFOLLOW, so a symlink swapped in after the caller checked the path
    cannot lead elsewhere.
    """
    raw = os.fsencode(path)
    try:
        fd = _open_nofollow(raw) if nofollow else os.open(raw, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
            if not stat.S_ISREG(mode):
                raise UsageError(f"failed to open files-from file {path}: not a regular file")
            chunks: list[bytes] = []
            total = 0
            # The names are at most `limit` bytes; comments and blank lines get as much again.
            while total <= 2 * limit and (chunk := os.read(fd, 1 << 20)):
                chunks.append(chunk)
                total += len(chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UsageError(f"failed to open files-from file {path}: {exc.strerror}") from exc
    names = parse_files_from(b"".join(chunks), from0) if total <= 2 * limit else None
    if names is None or sum(len(n) + 1 for n in names) > limit:
        raise UsageError(f"files-from file {path} is too long (more than {limit} bytes of names)")
    return names


def _open_nofollow(path: bytes) -> int:
    """path opened for reading through real directories only (ELOOP at any symlink)."""
    parent, base = split(path.rstrip(b"/") or b".")
    top = os.open(b"/" if path.startswith(b"/") else b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = open_beneath(top, parent)
    finally:
        os.close(top)
    try:
        return os.open(base, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)


def _files_from(base: bytes, names: list[bytes], opts: Options) -> list[SourceArg]:
    """--files-from: every listed name is a source relative to the one source directory."""
    base = base.rstrip(b"/") or b"/"
    relative = opts.replace(relative=True)
    return [_one_source(collapse_dot_dots(rel), relative, base=base) for rel in names]


def collapse_dot_dots(name: bytes) -> bytes:
    """A listed name with its '..' parts resolved as rsync resolves them (clean_fname with
    CFN_COLLAPSE_DOT_DOT_DIRS, then leading '..' dropped): 'a/../../b' is 'b', always below
    the source directory. A peer's names never get here with '..' (they are refused)."""
    if b".." not in name:
        return name
    parts: list[bytes] = []
    for part in name.split(b"/"):
        if part == b"..":
            if parts:
                parts.pop()
        elif part not in (b"", b"."):
            parts.append(part)
    return b"/".join(parts) or b"."


def _is_dir(path: bytes, follow: bool) -> bool | None:
    try:
        return stat.S_ISDIR(os.stat(path, follow_symlinks=follow).st_mode)
    except OSError:
        return None


def single_file_transfer(top: DirBatch, opts: Options) -> bool:
    """rsync's rule: one non-directory source (no -R parents, no --files-from) may take the
    destination's name."""
    return (opts.files_from is None and len(top.entries) == 1
            and not top.entries[0].is_dir and top.entries[0].name != ROOT)


def open_destination(dest: str, top: DirBatch, opts: Options) -> tuple[DestTree, dict[bytes, bytes]]:
    """Find the destination root as rsync does; returns the tree and the root renames."""
    raw = os.fsencode(dest)
    trailing = raw.endswith(b"/")
    path = raw.rstrip(b"/") or b"/"
    single_file = single_file_transfer(top, opts)
    existing = _is_dir(path, True)
    if existing is False or (existing is None and single_file and not trailing):
        if not single_file:
            raise FileSelectError("ERROR: destination must be a directory when copying more than 1 file")
        root = os.path.dirname(path) or b"."
        rename = {top.entries[0].name: os.path.basename(path)}
        if opts.dry_run and _is_dir(root, True) is not True:
            return _standin(opts), rename
        return _open_tree(root, opts), rename
    if existing is None:
        if opts.dry_run:
            tree = _standin(opts)
            tree.created = True
            return tree, {}
        try:
            if opts.mkpath:
                os.makedirs(path, exist_ok=True)
            else:
                os.mkdir(path)
        except OSError as exc:
            raise FileIOError(f"mkdir {quote(path)} failed: {exc.strerror} ({exc.errno})") from exc
        tree = _open_tree(path, opts)
        tree.created = True
        return tree, {}
    return _open_tree(path, opts), {}


def _open_tree(path: bytes, opts: Options) -> DestTree:
    try:
        return DestTree.open(path, fsync=opts.fsync and not opts.dry_run)
    except OSError as exc:
        raise FileIOError(f"change_dir {quote(path)} failed: {exc.strerror} ({exc.errno})") from exc


def _standin(opts: Options) -> DestTree:
    """A dry run into a destination that does not exist yet: an empty stand-in, never written."""
    tmp = tempfile.mkdtemp(prefix="zcsync-dry-")
    tree = DestTree.open(os.fsencode(tmp), fsync=False)
    shutil.rmtree(tmp)  # the fd stays valid; nothing can be created in a removed directory
    return tree


def xattr_functions(opts: Options, receiving: bool = True) -> tuple[Callable | None, Callable | None]:
    """(read, apply) for -X/-A, or (None, None). With --fake-super (rsync's am_root -1) a
    receiver keeps other namespaces under user.rsync.NAME and reads only user.*; both
    sides read user.rsync.NAME as NAME."""
    if not (opts.xattrs or opts.acls):
        return None, None
    fake = opts.fake_super
    user_only = True if fake and receiving else None

    def read(target):  # type: ignore[no-untyped-def]
        return meta.read_xattrs(target, xattrs=opts.xattrs, acls=opts.acls, user_only=user_only, fake_super=fake)

    def apply(target, wanted):  # type: ignore[no-untyped-def]
        return meta.apply_xattrs(target, wanted, xattrs=opts.xattrs, acls=opts.acls, fake_super=fake)
    return read, apply


def read_source_xattrs(opts: Options) -> Callable[[bytes], dict[bytes, bytes]] | None:
    """The sender's xattr reader: by path, never following a final symlink."""
    read, _ = xattr_functions(opts, receiving=False)
    if read is None:
        return None

    def by_path(path: bytes) -> dict[bytes, bytes]:
        parent, base = os.path.split(path)
        dfd = os.open(parent or b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return read((dfd, base))
        finally:
            os.close(dfd)
    return by_path


@dataclass
class Receiver:
    """The receiving half of a run: the destination tree with its generator and writer."""

    tree: DestTree
    generator: Generator
    writer: Writer
    basis_roots: list[tuple[str, int]]

    def close(self) -> None:
        try:
            for _, fd in self.basis_roots:
                os.close(fd)
            self.writer.close()
        finally:
            self.tree.close()


def make_receiver(dest: str, opts: Options, top: DirBatch, report: Report, filters: FilterRules,
                  io_error: Callable[[], bool], source_digest: Callable[[FileEntry], bytes | None],
                  remove_source: Callable[[FileEntry], None] | None = None, local: bool = False,
                  basis_hidden: Callable[[bytes], bool] | None = None) -> Receiver:
    """Open the destination (as the top batch decides) and build generator and writer for it
    (local: for a local copy, whose files are whole unless --no-whole-file; basis_hidden:
    destination names that no -y basis may be)."""
    tree, rename = open_destination(dest, top, opts)
    try:
        chmod = meta.ChmodRules.parse(opts.chmod) if opts.chmod else None
        policy = AttrPolicy(opts, chmod, am_root(opts), meta.current_umask())
        xread, xapply = xattr_functions(opts)
        writer = Writer(opts, tree, policy, report, xattr_apply=xapply)
        basis_roots = _basis_roots(dest, opts)
        writer.basis_fds = [fd for _, fd in basis_roots]
        generator = Generator(opts, tree, policy, report, writer, filters,
                              io_error=io_error, source_digest=source_digest,
                              dest_digest=fastio.file_digest, rename_root=rename,
                              basis_roots=basis_roots, xattr_apply=xapply, xattr_read=xread,
                              remove_source=remove_source, root_created=tree.created, whole_default=local,
                              basis_hidden=basis_hidden)
        writer.backup = generator.backup if opts.backup else None
    except BaseException:
        tree.close()
        raise
    if tree.created:
        report.note(f"created directory {escape(os.fsencode(dest).rstrip(b'/') or b'/')}")
    return Receiver(tree, generator, writer, basis_roots)


def run_local(sources_text: list[str], dest: str, opts: Options,
              on_event: Callable[[Event], None] | None = None) -> RunResult:
    """One local transfer, rsync semantics."""
    from .transport import local

    started = time.monotonic()
    if opts.files_from is not None and len(sources_text) != 1:
        raise UsageError("--files-from needs exactly one source directory")
    # -M: as in rsync's local copy, the receiving side is the "remote" one that takes them.
    receiving = side_options(opts, opts.remote_options)
    sources = source_args(sources_text, opts)
    filters = FilterRules.parse(opts.filter_rules, delete_excluded=opts.delete_excluded)
    report = Report(on_event=on_event)
    owners = OwnerMap(opts, remote=False)
    sender = Sender(sources, opts, filters, read_xattrs=read_source_xattrs(opts), on_problem=report.problem,
                    on_notice=report.notice)
    batches = owners.batches(sender.batches())
    top = next(batches)
    if not top.entries:  # nothing to transfer: rsync does not even create DST
        return RunResult(report.exit_code, report, report.problems)
    receiver = make_receiver(dest, receiving, top, report, filters, io_error=lambda: sender.io_error,
                             source_digest=lambda e: e.digest if e.digest is not None else sender.digest(e),
                             remove_source=sender.remove if opts.remove_source_files else None, local=True)
    try:
        local.run(sender, receiver.generator, receiver.writer, report, itertools.chain([top], batches))
    except BaseException:
        receiver.writer.cleanup()
        raise
    finally:
        receiver.close()
    report.stats.elapsed_s = time.monotonic() - started
    return RunResult(report.exit_code, report, report.problems)


def _basis_roots(dest: str, opts: Options) -> list[tuple[str, int]]:
    """Open --compare-dest/--copy-dest/--link-dest dirs (relative ones are relative to dest)."""
    roots = []
    for kind, d in opts.basis_dirs:
        path = d if os.path.isabs(d) else os.path.join(dest, d)
        try:
            roots.append((kind, os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)))
        except OSError as exc:
            log.warning("%s %s: %s", f"--{kind}-dest", path, exc.strerror)
    return roots
