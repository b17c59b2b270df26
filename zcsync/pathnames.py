"""Names as bytes: escaping for messages and validation of names a peer sends."""
from __future__ import annotations

import re

_UNPRINTABLE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]|\\#")


def escape(name: bytes) -> str:
    """Render a name for logs as rsync does: control bytes (not tab) and bad UTF-8 as \\#ooo."""
    def octal(m: re.Match[bytes]) -> bytes:
        return b"".join(b"\\#%03o" % c for c in m.group(0))
    out = []
    for chunk in _UNPRINTABLE.sub(octal, name).decode("utf-8", "surrogateescape"):
        if "\udc80" <= chunk <= "\udcff":
            out.append("\\#%03o" % (ord(chunk) - 0xDC00))
        else:
            out.append(chunk)
    return "".join(out)


def is_safe_name(name: bytes) -> bool:
    """A canonical relative name: no '..', no absolute path, no NUL, no empty or '.' parts."""
    if name == b".":
        return True
    if not name or b"\0" in name:
        return False
    # With a slash added at both ends, an empty, '.' or '..' part (a leading or trailing
    # slash included) shows as one of these; three searches in C instead of a split.
    padded = b"/" + name + b"/"
    return b"//" not in padded and b"/./" not in padded and b"/../" not in padded


def join(parent: bytes, base: bytes) -> bytes:
    """Join a relative directory name and a base name (b'.' is the root)."""
    return base if parent == b"." else parent + b"/" + base


def split(name: bytes) -> tuple[bytes, bytes]:
    """Split a relative name into (parent, base); the parent of a top name is b'.'."""
    head, _, tail = name.rpartition(b"/")
    return (head or b".", tail)


def unsafe_symlink(target: bytes, name: bytes) -> bool:
    """Does symlink `name` (a path inside the transfer) with this target point outside the
    transfer? rsync 3.4's unsafe_symlink: an absolute or empty target is unsafe, and so is
    a '..' anywhere but in a leading run of them (a directory before it could later become
    a symlink), or at the end after a slash; otherwise the leading '..' steps may not climb
    above the link's own depth ('.' is ignored, and a '..' in the link's own path starts
    its count over)."""
    if not target or target.startswith(b"/"):
        return True
    rest = target
    while rest.startswith(b"../"):
        rest = rest[3:].lstrip(b"/")
    if b"/../" in rest or (len(target) > 3 and target.endswith(b"/..")):
        return True
    depth = 0
    *dirs, last = name.split(b"/")
    for part in dirs:
        if part == b"..":
            depth = 0
        elif part not in (b".", b""):
            depth += 1
    if last == b"..":
        depth = 0
    *steps, last = target.split(b"/")
    for part in steps:
        if part == b"..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in (b".", b""):
            depth += 1
    if last == b"..":
        depth -= 1
    return depth < 0
