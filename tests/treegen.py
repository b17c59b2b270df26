"""Seeded generators of awkward file trees for differential tests against rsync.

Everything here works on bytes paths (names may be any bytes but `/` and NUL) and is
deterministic for a given seed: two trees made from the same seed have the same
names, contents, modes, owners and mtimes (to the nanosecond), wherever they live.
"""
from __future__ import annotations

import errno
import os
import pathlib
import random
import shutil
import stat
import subprocess
from collections.abc import Iterator

__all__ = ["make_tree", "mutate_tree", "copy_tree", "ODD_NAMES"]

# 2001-01-01 .. 2023-01-01: clearly in the past, so "now" never collides with them.
_T_MIN = 978_307_200 * 10**9
_T_MAX = 1_672_531_200 * 10**9

# Names that trip up quoting, escaping, option parsing and decoding.
ODD_NAMES: tuple[bytes, ...] = (
    b"with space",
    "\u00fcn\u00efc\u00f6d\u00e9-\u540d\u524d".encode(),
    b"-leading-dash",
    b"bad\xff\xfename",  # not UTF-8
    b".hidden",
    b"tab\tname",
    b"back\\slash",
    b"glob*?[x]",
    b"quote'\"name",
    b"L" * 200,  # long, but under NAME_MAX with any suffix a tool adds
)

_FILE_MODES = (0o444, 0o555, 0o600, 0o640, 0o644, 0o664, 0o700, 0o744, 0o755)
_DIR_MODES = (0o555, 0o700, 0o711, 0o750, 0o755)
_WORDS = ("alpha", "beta", "gamma", "delta", "data", "src", "lib", "doc", "img", "tmp")
_EXTS = ("", ".txt", ".txt", ".bin", ".log", ".c", ".tar.gz")

_CHUNK = 64 << 10


def _is_root() -> bool:
    return os.geteuid() == 0


def _join(*parts: bytes) -> bytes:
    return b"/".join(p for p in parts if p)


def _rand_time(rng: random.Random) -> int:
    """A past mtime in ns; now and then a whole second, to cover ns == 0."""
    t = rng.randrange(_T_MIN, _T_MAX)
    return t - t % 10**9 if rng.random() < 0.1 else t


def _set_time(path: bytes, ns: int) -> None:
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def _fill(fd: int, rng: random.Random, size: int) -> None:
    """Write size pseudo-random bytes: cheap for big sizes, yet no two blocks equal."""
    if size <= _CHUNK:
        os.write(fd, rng.randbytes(size))
        return
    block = bytearray(rng.randbytes(_CHUNK))
    written = 0
    index = 0
    while written < size:
        # A per-block counter keeps blocks distinct so that delta matching has
        # exactly one right answer; the rest repeats, which keeps generation fast.
        block[:8] = index.to_bytes(8, "little")
        n = min(_CHUNK, size - written)
        os.write(fd, block[:n])
        written += n
        index += 1


def _write_file(path: bytes, rng: random.Random, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        _fill(fd, rng, size)
    finally:
        os.close(fd)


def _pick_size(rng: random.Random, max_size: int) -> int:
    r = rng.random()
    if r < 0.10:
        return 0
    if r < 0.75:
        return rng.randint(1, min(4096, max_size))
    if r < 0.93:
        return rng.randint(1, min(64 << 10, max_size))
    return rng.randint(min(64 << 10, max_size), max_size)


def _make_sparse(path: bytes, rng: random.Random, max_size: int) -> None:
    """Data, hole, data, hole: the file ends in a hole, so a copier must truncate."""
    size = max(max_size, 1 << 20) + 12_345
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, size)
        os.pwrite(fd, rng.randbytes(4096), 0)
        os.pwrite(fd, rng.randbytes(8192 + 17), size // 2 + 123)
        os.pwrite(fd, rng.randbytes(100), size * 3 // 4)
    finally:
        os.close(fd)


def make_tree(
    root: pathlib.Path,
    seed: int,
    *,
    files: int = 60,
    max_size: int = 2 << 20,
    fifo: bool = True,
    devices: bool = False,
    hardlinks: bool = True,
    sparse: bool = True,
    owners: bool = True,
    xattrs: bool = True,
    socket: bool = False,
) -> None:
    """Build a deterministic tree of awkward entries under root (missing or empty).

    Nested dirs (depth <= 4, "empty/nested-empty", a 0555 "ro-dir" with files in it),
    files of 0..max_size bytes (one of exactly max_size) with modes 0444..0755,
    ODD_NAMES, a sparse file ending in a hole, hard-link groups of 2 and 3 names,
    relative/absolute/dangling/unsafe symlinks (never a loop under -L), a fifo,
    devices (root only), and past nanosecond mtimes on everything, set on
    directories last. Besides the documented knobs: owners=True gives a few entries
    other uids/gids (only when running as root); xattrs=True sets user.* xattrs on a
    few entries where the filesystem allows; socket=True adds a unix socket node.
    """
    rng = random.Random(seed)
    pathlib.Path(root).mkdir(parents=True, exist_ok=True)
    top = os.fsencode(root)

    def p(rel: bytes) -> bytes:
        return _join(top, rel) if rel else top

    dirs: list[bytes] = []  # relative, parents before children
    depth: dict[bytes, int] = {b"": 0}
    used: dict[bytes, list[bytes]] = {b"": []}  # names per directory
    counter = iter(range(1_000_000))

    def fresh(parent: bytes, base: bytes | None = None, *, is_dir: bool = False) -> bytes:
        if base is not None:
            name = base
        elif is_dir:  # d0 is always there, for tests that name a directory
            name = f"{'d' if not parent else 'sub'}{next(counter)}".encode()
        else:  # extensions give filter rules (*.txt, *.bin) something to match
            name = f"{rng.choice(_WORDS)}{next(counter)}{rng.choice(_EXTS)}".encode()
        while name in used[parent]:
            name = name + b"_" + str(next(counter)).encode()
        used[parent].append(name)
        return _join(parent, name)

    def add_dir(parent: bytes, base: bytes | None = None) -> bytes:
        rel = fresh(parent, base, is_dir=True)
        os.mkdir(p(rel), 0o700)
        dirs.append(rel)
        depth[rel] = depth[parent] + 1
        used[rel] = []
        return rel

    # Directories: random nesting up to depth 4, plus fixed special ones.
    for _ in range(max(4, files // 6)):
        parent = rng.choice([b""] + [d for d in dirs if depth[d] < 4])
        add_dir(parent)
    empty = add_dir(b"", b"empty")
    add_dir(empty, b"nested-empty")
    readonly = add_dir(b"", b"ro-dir")
    odd_dir = add_dir(rng.choice([b""] + dirs[:3]), ODD_NAMES[1])
    fill_dirs = [d for d in dirs if d != empty and not d.startswith(empty + b"/")]

    # Regular files.
    regular: list[bytes] = []
    modes: dict[bytes, int] = {}
    odd = list(ODD_NAMES)
    for i in range(files):
        parent = rng.choice([b""] + fill_dirs)
        base = odd.pop(0) if odd and i % 3 == 0 else None
        rel = fresh(parent, base)
        size = max_size if i == 1 else _pick_size(rng, max_size)
        _write_file(p(rel), rng, size)
        regular.append(rel)
    for base in (b"inside1", b"inside2"):
        rel = fresh(readonly, base)
        _write_file(p(rel), rng, rng.randint(0, 2000))
        regular.append(rel)
    rel = fresh(odd_dir, b"in-unicode-dir")
    _write_file(p(rel), rng, 100)
    regular.append(rel)
    for rel in regular:
        modes[rel] = rng.choice(_FILE_MODES)
    if sparse:
        rel = fresh(rng.choice([b""] + fill_dirs), b"sparse.img")
        _make_sparse(p(rel), rng, max_size)
        regular.append(rel)
        modes[rel] = 0o644

    # Hard-link groups: one of three names across directories, one of two in the
    # same directory, one of two across directories.
    others: list[bytes] = []  # every non-directory, for times
    if hardlinks and len(regular) >= 3:
        candidates = [r for r in regular if not r.endswith(b"sparse.img")]
        targets = rng.sample(candidates, 3)
        for target, extra, same_dir in ((targets[0], 2, False), (targets[1], 1, True),
                                        (targets[2], 1, False)):
            for _ in range(extra):
                parent = target.rpartition(b"/")[0] if same_dir else rng.choice(
                    [d for d in [b""] + fill_dirs if d != target.rpartition(b"/")[0]])
                rel = fresh(parent, b"link-" + target.rpartition(b"/")[2][:40])
                os.link(p(target), p(rel))
                others.append(rel)

    # Symlinks: relative to a file and to a directory, absolute, dangling, unsafe.
    symlinks: list[bytes] = []

    def add_link(parent: bytes, base: bytes, target: bytes) -> None:
        rel = fresh(parent, base)
        os.symlink(target, p(rel))
        symlinks.append(rel)

    def rel_target(parent: bytes, target: bytes) -> bytes:
        return os.path.relpath(p(target), p(parent) if parent else top)

    parent = rng.choice([b""] + fill_dirs)
    add_link(parent, b"rel-file-link", rel_target(parent, rng.choice(regular)))
    parent = rng.choice([b""] + fill_dirs)
    # Neither the link's own directory nor an ancestor: that would loop under -L.
    target_dir = rng.choice([d for d in dirs if d != parent
                             and not (parent + b"/").startswith(d + b"/")])
    add_link(parent, b"rel-dir-link", rel_target(parent, target_dir))
    add_link(rng.choice(fill_dirs), b"abs-link", b"/etc/passwd")
    add_link(rng.choice(fill_dirs), b"dangling-rel", b"does-not-exist/nowhere")
    add_link(b"", b"dangling-abs", b"/nonexistent/zcsync-treegen")
    add_link(rng.choice(fill_dirs), b"unsafe-link", b"../../../../outside-the-tree")
    add_link(b"", b"odd-target-link", b"bad\xfftarget with space")

    # Special files.
    specials: list[bytes] = []
    if fifo:
        rel = fresh(rng.choice([b""] + fill_dirs), b"a-fifo")
        os.mkfifo(p(rel), 0o644)
        specials.append(rel)
    if socket:
        rel = fresh(rng.choice([b""] + fill_dirs), b"a-socket")
        os.mknod(p(rel), stat.S_IFSOCK | 0o755)
        specials.append(rel)
    if devices and _is_root():
        rel = fresh(rng.choice([b""] + fill_dirs), b"char-dev")
        os.mknod(p(rel), stat.S_IFCHR | 0o644, os.makedev(1, 3))
        specials.append(rel)
        rel = fresh(rng.choice([b""] + fill_dirs), b"block-dev")
        os.mknod(p(rel), stat.S_IFBLK | 0o640, os.makedev(7, 200))
        specials.append(rel)

    # Owners before modes: chown clears set-id bits.
    if owners and _is_root():
        ids = [(1000, 1000), (65534, 65534), (1234, 4321)]
        for rel in rng.sample(regular, min(4, len(regular))) + [rng.choice(dirs)]:
            os.chown(p(rel), *rng.choice(ids), follow_symlinks=False)
        os.chown(p(symlinks[0]), 1234, 4321, follow_symlinks=False)
        if specials:
            os.chown(p(specials[0]), 65534, 65534, follow_symlinks=False)

    if xattrs:
        for rel in rng.sample(regular, min(3, len(regular))) + [rng.choice(dirs)]:
            try:
                os.setxattr(p(rel), b"user.zcsync-test", rng.randbytes(rng.randint(0, 40)))
                os.setxattr(p(rel), b"user.comment", b"made by treegen", follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
                break

    for rel in regular:
        os.chmod(p(rel), modes[rel])

    for rel in regular + others + symlinks + specials:
        _set_time(p(rel), _rand_time(rng))

    # Directories last and deepest first: their contents are final now, and chmod
    # leaves mtimes alone, so modes can go on at the same time (ro-dir gets 0555).
    dir_modes = {d: rng.choice(_DIR_MODES) for d in dirs}
    dir_modes[readonly] = 0o555
    for rel in sorted(dirs, key=lambda d: (-depth[d], d)):
        os.chmod(p(rel), dir_modes[rel])
        _set_time(p(rel), _rand_time(rng))
    os.chmod(top, 0o755)
    _set_time(top, _rand_time(rng))


def _walk(top: bytes) -> Iterator[tuple[bytes, os.stat_result]]:
    """Relative bytes paths and lstat results below top, sorted, parents first."""
    stack = [b""]
    while stack:
        rel = stack.pop()
        names = sorted(os.listdir(_join(top, rel) if rel else top))
        for name in reversed(names):
            child = _join(rel, name)
            st = os.lstat(_join(top, child))
            if stat.S_ISDIR(st.st_mode):
                stack.append(child)
        for name in names:
            child = _join(rel, name)
            yield child, os.lstat(_join(top, child))


def _flip_bytes(path: bytes, offset: int, count: int) -> None:
    """Invert up to count bytes at offset in place: the size stays, the content surely changes."""
    mode = stat.S_IMODE(os.lstat(path).st_mode)
    os.chmod(path, mode | 0o600)
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        old = os.pread(fd, count, offset)
        os.pwrite(fd, bytes(b ^ 0xFF for b in old), offset)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def mutate_tree(root: pathlib.Path, seed: int) -> None:
    """Change a tree the way a day of use would, deterministically for seed and tree.

    In-place edits (one same size and same mtime, which a quick check cannot see),
    size changes, deletions of files and of a subtree, new files and dirs, a file
    turned into a dir and a dir into a file, a new symlink target, a file turned into
    a symlink, new modes and mtimes, a hard link split off and a new one added.
    Directories whose contents changed get a fresh past mtime at the end.
    """
    rng = random.Random(seed)
    top = os.fsencode(root)

    def p(rel: bytes) -> bytes:
        return _join(top, rel) if rel else top

    entries = list(_walk(top))
    # Make every directory writable for the duration (needed when not root), and
    # put the modes back at the end on those that still exist.
    dir_modes = {rel: stat.S_IMODE(st.st_mode) for rel, st in entries
                 if stat.S_ISDIR(st.st_mode)}
    dir_modes[b""] = stat.S_IMODE(os.lstat(top).st_mode)
    for rel, mode in dir_modes.items():
        os.chmod(p(rel), mode | 0o700)

    touched: list[bytes] = []

    def touch_parent(rel: bytes) -> None:
        touched.append(rel.rpartition(b"/")[0])

    files = [rel for rel, st in entries if stat.S_ISREG(st.st_mode) and st.st_size > 0]
    single = [rel for rel, st in entries if stat.S_ISREG(st.st_mode) and st.st_nlink == 1]
    linked = [rel for rel, st in entries if stat.S_ISREG(st.st_mode) and st.st_nlink > 1]
    links = [rel for rel, st in entries if stat.S_ISLNK(st.st_mode)]
    dirs = [rel for rel, st in entries if stat.S_ISDIR(st.st_mode)]
    taken: list[bytes] = []  # entries already used by one mutation

    def pick(pool: list[bytes], k: int = 1) -> list[bytes]:
        free = [r for r in pool if not any(r == t or r.startswith(t + b"/") or
                                           t.startswith(r + b"/") for t in taken)]
        chosen = rng.sample(free, min(k, len(free)))
        taken.extend(chosen)
        return chosen

    # Same size, same mtime: invisible to the quick check (rsync skips it without -c).
    single_files = [f for f in files if f in single]
    for rel in pick(single_files):
        st = os.lstat(p(rel))
        _flip_bytes(p(rel), rng.randrange(st.st_size), 4)
        os.utime(p(rel), ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    # Same size, new mtime.
    for rel in pick(files, 2):
        _flip_bytes(p(rel), 0, 16)
        _set_time(p(rel), _rand_time(rng))
    # Size changes: append, truncate, rewrite with a new length.
    for i, rel in enumerate(pick(files, 3)):
        st = os.lstat(p(rel))
        os.chmod(p(rel), stat.S_IMODE(st.st_mode) | 0o200)
        fd = os.open(p(rel), os.O_WRONLY | os.O_NOFOLLOW)
        try:
            if i == 0:
                os.pwrite(fd, rng.randbytes(rng.randint(1, 5000)), st.st_size)
            elif i == 1:
                os.ftruncate(fd, st.st_size // 2)
            else:
                os.ftruncate(fd, 0)
                _fill(fd, rng, rng.randint(1, min(3 * st.st_size + 1, 4 << 20)))
        finally:
            os.close(fd)
        os.chmod(p(rel), stat.S_IMODE(st.st_mode))
        _set_time(p(rel), _rand_time(rng))
    # Modes and mtimes only.
    for rel in pick(single, 2):
        os.chmod(p(rel), rng.choice(_FILE_MODES))
    for rel in pick(single, 2):
        _set_time(p(rel), _rand_time(rng))
    # Deletions: files, a symlink, a whole subtree.
    for rel in pick(single, 3) + pick(links):
        os.unlink(p(rel))
        touch_parent(rel)
    subtrees = [d for d in dirs if any(r.startswith(d + b"/") for r in dirs + files)]
    for rel in pick(subtrees or dirs):
        shutil.rmtree(p(rel))
        touch_parent(rel)
    # A file becomes a directory (with content), a directory becomes a file.
    for rel in pick(single):
        os.unlink(p(rel))
        os.mkdir(p(rel), 0o755)
        _write_file(_join(p(rel), b"now-a-dir-file"), rng, rng.randint(0, 3000))
        _set_time(_join(p(rel), b"now-a-dir-file"), _rand_time(rng))
        _set_time(p(rel), _rand_time(rng))
        touch_parent(rel)
    leaf_dirs = [d for d in dirs if not any(r.startswith(d + b"/") for r, _ in entries)]
    for rel in pick(leaf_dirs or dirs):
        shutil.rmtree(p(rel))
        _write_file(p(rel), rng, rng.randint(1, 3000))
        os.chmod(p(rel), 0o644)
        _set_time(p(rel), _rand_time(rng))
        touch_parent(rel)
    # A file becomes a symlink; a symlink gets a new target.
    for rel in pick(single):
        os.unlink(p(rel))
        os.symlink(b"was-a-file-now-a-link", p(rel))
        _set_time(p(rel), _rand_time(rng))
        touch_parent(rel)
    for rel in pick(links):
        os.unlink(p(rel))
        os.symlink(b"new/target-" + str(rng.randrange(1000)).encode(), p(rel))
        _set_time(p(rel), _rand_time(rng))
        touch_parent(rel)
    # Hard links: split one name off its group, add a name to another file. The
    # split-off copy keeps every attribute (owner, xattrs too), so that linkage is
    # the only difference: rsync -H leaves such a pair linked in the destination.
    for rel in pick(linked):
        st = os.lstat(p(rel))
        tmp = p(rel) + b".mutate-tmp"
        shutil.copy2(p(rel), tmp, follow_symlinks=False)  # contents, mode, times, xattrs
        if _is_root():
            os.chown(tmp, st.st_uid, st.st_gid)
            os.chmod(tmp, stat.S_IMODE(st.st_mode))  # chown cleared set-id bits
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(tmp, p(rel))
        touch_parent(rel)
    for rel in pick(single):
        parent = rng.choice([d for d in [b""] + dirs if d not in taken
                             and not any(d.startswith(t + b"/") for t in taken)])
        new = _join(parent, b"new-link-to-" + rel.rpartition(b"/")[2][:40])
        if not os.path.lexists(p(new)):
            os.link(p(rel), p(new))
            touch_parent(new)
    # New files and directories.
    live_dirs = [d for d in [b""] + dirs if os.path.isdir(p(d)) and not os.path.islink(p(d))]
    for i in range(4):
        parent = rng.choice(live_dirs)
        new = _join(parent, f"added-{seed}-{i}".encode())
        if os.path.lexists(p(new)):
            continue
        _write_file(p(new), rng, _pick_size(rng, 300_000))
        os.chmod(p(new), rng.choice(_FILE_MODES))
        _set_time(p(new), _rand_time(rng))
        touch_parent(new)
    parent = rng.choice(live_dirs)
    new = _join(parent, f"added-dir-{seed}".encode())
    if not os.path.lexists(p(new)):
        os.mkdir(p(new), 0o755)
        os.mkdir(_join(p(new), b"sub"), 0o750)
        _write_file(_join(p(new), b"sub/deep-file"), rng, rng.randint(0, 10_000))
        _set_time(_join(p(new), b"sub/deep-file"), _rand_time(rng))
        _set_time(_join(p(new), b"sub"), _rand_time(rng))
        _set_time(p(new), _rand_time(rng))
        touch_parent(new)

    # Put modes back, then give changed directories a past mtime, deepest first.
    for rel, mode in dir_modes.items():
        if os.path.isdir(p(rel)) and not os.path.islink(p(rel)):
            os.chmod(p(rel), mode)
    for rel in sorted(set(touched), key=lambda d: (-d.count(b"/"), d)):
        if os.path.isdir(p(rel)) and not os.path.islink(p(rel)):
            _set_time(p(rel), _rand_time(rng))


def copy_tree(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
    """Make dst an exact copy of src (content, holes, modes, owners, times, links, xattrs).

    dst must not exist. cp -a keeps hard links within the copy, symlink mtimes and
    nanosecond times; --sparse=always punches holes wherever a block is all zeros.
    """
    dst_path = pathlib.Path(dst)
    if os.path.lexists(dst_path):
        raise FileExistsError(errno.EEXIST, "copy_tree destination exists", str(dst_path))
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["cp", "-a", "--sparse=always", "--", os.fsencode(src), os.fsencode(dst_path)],
        check=True,
        capture_output=True,
    )
