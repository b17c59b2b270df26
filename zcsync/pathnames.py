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
