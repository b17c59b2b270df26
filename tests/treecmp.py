"""Snapshots of file trees and field-by-field comparison, for tests against rsync.

Not compared, ever: atime, ctime, inode numbers, st_dev, directory sizes (they
depend on the filesystem's history) and allocated blocks unless asked (blocks=True).
"""
from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields

try:
    from xxhash import xxh3_128 as _hasher
except ImportError:  # the harness must also run where only the stdlib is around
    from hashlib import blake2b as _hasher

__all__ = ["Record", "snapshot", "diff_trees", "assert_same_tree", "show_path"]

_TYPES = {
    stat.S_IFREG: "f",
    stat.S_IFDIR: "d",
    stat.S_IFLNK: "l",
    stat.S_IFCHR: "c",
    stat.S_IFBLK: "b",
    stat.S_IFIFO: "p",
    stat.S_IFSOCK: "s",
}

MAX_SHOWN = 30


@dataclass(frozen=True)
class Record:
    """What a tree comparison looks at for one entry; None means not compared."""

    type: str  # one of f d l c b p s
    mode: int | None  # permission bits with suid/sgid/sticky
    uid: int | None
    gid: int | None
    size: int | None  # regular files only (a symlink's is its target's length)
    mtime_ns: int | None
    digest: bytes | None = None  # xxh3-128 (or blake2b) of a regular file's contents
    target: bytes | None = None  # symlink target
    rdev: int | None = None  # devices only
    xattrs: Mapping[bytes, bytes] | None = field(default=None, hash=False)
    # The names (relative, sorted) of every entry in the tree that shares this
    # entry's inode, when there are two or more; comparing this field path by path
    # compares the hard-link partitions of the two trees.
    link_group: tuple[bytes, ...] | None = None
    blocks: int | None = None  # st_blocks, only with blocks=True


def show_path(rel: bytes) -> str:
    """A printable form of a relative bytes path (non-UTF-8 bytes as \\xNN)."""
    text = rel.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def _digest(path: bytes) -> bytes:
    h = _hasher()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.digest()


def _xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in sorted(names):
        try:
            out[os.fsencode(name)] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def snapshot(
    root: os.PathLike[str] | str | bytes,
    *,
    times: bool = True,
    dir_times: bool = True,
    root_times: bool = True,
    link_times: bool = True,
    owners: bool = True,
    perms: bool = True,
    contents: bool = True,
    hardlinks: bool = True,
    xattrs: bool = False,
    blocks: bool = False,
    exclude: Callable[[bytes], bool] | None = None,
) -> dict[bytes, Record]:
    """Record every entry under root, keyed by relative bytes path; root itself is b"."

    exclude(rel) -> True drops an entry (and, for a directory, everything below it).
    blocks=True compares st_blocks of regular files (sparseness); on ext4 it also
    counts an external xattr block, so use it only where xattrs were copied too.
    """
    top = os.fsencode(root)
    out: dict[bytes, Record] = {}
    inodes: dict[tuple[int, int], list[bytes]] = {}

    def record(rel: bytes, path: bytes, st: os.stat_result) -> None:
        kind = _TYPES.get(stat.S_IFMT(st.st_mode), "?")
        if kind == "d":
            want_time = times and dir_times and (root_times or rel != b".")
        elif kind == "l":
            want_time = times and link_times
        else:
            want_time = times
        out[rel] = Record(
            type=kind,
            mode=stat.S_IMODE(st.st_mode) if perms else None,
            uid=st.st_uid if owners else None,
            gid=st.st_gid if owners else None,
            size=st.st_size if kind == "f" else None,
            mtime_ns=st.st_mtime_ns if want_time else None,
            digest=_digest(path) if kind == "f" and contents else None,
            target=os.readlink(path) if kind == "l" else None,
            rdev=st.st_rdev if kind in ("c", "b") else None,
            xattrs=_xattrs(path) if xattrs else None,
            blocks=st.st_blocks if blocks and kind == "f" else None,
        )
        if kind != "d" and st.st_nlink > 1 and hardlinks:
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)

    record(b".", top, os.lstat(top))
    stack = [b""]
    while stack:
        rel_dir = stack.pop()
        dir_path = os.path.join(top, rel_dir) if rel_dir else top
        for name in sorted(os.listdir(dir_path)):
            rel = rel_dir + b"/" + name if rel_dir else name
            if exclude is not None and exclude(rel):
                continue
            path = os.path.join(dir_path, name)
            st = os.lstat(path)
            record(rel, path, st)
            if stat.S_ISDIR(st.st_mode):
                stack.append(rel)

    for names in inodes.values():
        if len(names) >= 2:
            group = tuple(sorted(names))
            for rel in names:
                out[rel] = _replace(out[rel], link_group=group)
    return out


def _replace(rec: Record, **changes: object) -> Record:
    values = {f.name: getattr(rec, f.name) for f in fields(rec)}
    values.update(changes)
    return Record(**values)  # type: ignore[arg-type]


def _fmt(name: str, value: object) -> str:
    if value is None:
        return "-"
    if name == "mode":
        return oct(value)  # type: ignore[arg-type]
    if name == "mtime_ns":
        sec, ns = divmod(value, 10**9)  # type: ignore[operator]
        return f"{sec}.{ns:09d}"
    if name == "digest":
        return value.hex()[:16]  # type: ignore[union-attr]
    if name == "link_group":
        return "(" + ", ".join(show_path(n) for n in value) + ")"  # type: ignore[union-attr]
    if name == "rdev":
        return f"{os.major(value)},{os.minor(value)}"  # type: ignore[arg-type]
    if isinstance(value, bytes):
        return show_path(value)
    return repr(value)


def _type_name(kind: str) -> str:
    return {"f": "file", "d": "dir", "l": "symlink", "c": "char device",
            "b": "block device", "p": "fifo", "s": "socket"}.get(kind, kind)


def diff_snapshots(a: Mapping[bytes, Record], b: Mapping[bytes, Record]) -> list[str]:
    """Human-readable differences between two snapshots, in path order."""
    diffs: list[str] = []
    for rel in sorted(set(a) | set(b)):
        ra, rb = a.get(rel), b.get(rel)
        shown = show_path(rel)
        if ra is None:
            diffs.append(f"{shown}: only in b ({_type_name(rb.type)})")  # type: ignore[union-attr]
            continue
        if rb is None:
            diffs.append(f"{shown}: only in a ({_type_name(ra.type)})")
            continue
        if ra.type != rb.type:
            diffs.append(f"{shown}: type {_type_name(ra.type)} != {_type_name(rb.type)}")
            continue
        for f in fields(Record):
            va, vb = getattr(ra, f.name), getattr(rb, f.name)
            if va != vb:
                label = "content" if f.name == "digest" else f.name
                diffs.append(f"{shown}: {label} {_fmt(f.name, va)} != {_fmt(f.name, vb)}")
    return diffs


def diff_trees(
    a: os.PathLike[str] | str | bytes | Mapping[bytes, Record],
    b: os.PathLike[str] | str | bytes | Mapping[bytes, Record],
    **same_kwargs: object,
) -> list[str]:
    """Differences between two trees (roots or snapshots), [] if they are the same.

    Keyword arguments go to snapshot(): times, dir_times, root_times, link_times,
    owners, perms, contents, hardlinks, xattrs, blocks, exclude.
    """
    sa = a if isinstance(a, Mapping) else snapshot(a, **same_kwargs)  # type: ignore[arg-type]
    sb = b if isinstance(b, Mapping) else snapshot(b, **same_kwargs)  # type: ignore[arg-type]
    return diff_snapshots(sa, sb)


def assert_same_tree(
    a_root: os.PathLike[str] | str | bytes,
    b_root: os.PathLike[str] | str | bytes,
    **kwargs: object,
) -> None:
    """Raise AssertionError listing (up to 30) differences if the trees differ."""
    diffs = diff_trees(a_root, b_root, **kwargs)
    if not diffs:
        return
    lines = [f"Trees differ: a={os.fsdecode(a_root)} b={os.fsdecode(b_root)} "
             f"({len(diffs)} difference{'s' if len(diffs) != 1 else ''})"]
    lines += ["  " + d for d in diffs[:MAX_SHOWN]]
    if len(diffs) > MAX_SHOWN:
        lines.append(f"  ... and {len(diffs) - MAX_SHOWN} more")
    raise AssertionError("\n".join(lines))
