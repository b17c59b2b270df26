"""-y/--fuzzy: which file of a directory is the delta basis of a file the destination lacks.

rsync's rule (generator.c find_fuzzy, util1.c find_filename_suffix and fuzzy_distance),
ported to the byte: among the regular, non-empty files of the lists (the destination
directory first, then with -yy the same directory in each --*-dest dir), the first one
with the file's size and modification time (in seconds, within --modify-window) wins;
else the one whose name is nearest by a Levenshtein distance in which each edit costs
one UNIT plus the byte values involved, and in which the names' suffixes (".gz", not
an all-digit ".1", nor ".bak", ".old", ".orig", "~" or ".~1~") count ten times again.
A distance above 25 units is no match; of equal distances the one listed last wins.
Each list is in rsync's order for the files of one directory: by name, byte by byte.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Candidate", "UNIT", "choose", "distance", "filename_suffix", "py_scan", "scan"]

UNIT = 1 << 16
LIMIT = 25 * UNIT  # rsync ignores a distance greater than 25 units
NO_MATCH = 0xFFFF * UNIT + 1  # what rsync's fuzzy_distance says when the limit rules a name out
_SUFFIX_LIMIT = 0xFFFF0000  # below this, a name distance gets its suffix distance added
_DOT, _TILDE = ord("."), ord("~")


@dataclass(frozen=True)
class Candidate:
    """A regular, non-empty file that may be a basis: its base name, size and mtime."""

    name: bytes
    size: int
    mtime_ns: int
    suffix: bytes

    @classmethod
    def of(cls, name: bytes, size: int, mtime_ns: int) -> Candidate:
        return cls(name, size, mtime_ns, filename_suffix(name))


def filename_suffix(fn: bytes) -> bytes:
    """The most significant suffix of a file name, dot included, as rsync's find_filename_suffix:
    leading dots are no suffix; a trailing "~", ".bak", ".old", ".orig" and ".~N~" are looked
    past; an all-digit suffix (".1") is kept only if no other comes before it."""
    start = 0
    while start < len(fn) and fn[start] == _DOT:
        start += 1
    fn = fn[start:]
    n = len(fn)
    had_tilde = n > 1 and fn[n - 1] == _TILDE
    if had_tilde:
        n -= 1
    suf = b""
    s = n
    while n > 1:
        s -= 1
        while fn[s] != _DOT and s != 0:
            s -= 1
        if s == 0:
            break
        s_len = n - s
        n = s
        rest = fn[s + 1:]  # rsync's strcmp(s+1, ...) reads to the end of the whole name
        if s_len == 4:
            if rest in (b"bak", b"old"):
                continue
        elif s_len == 5:
            if rest == b"orig":
                continue
        elif s_len > 2 and had_tilde and fn[s + 1] == _TILDE and 0x30 <= fn[s + 2] <= 0x39:
            continue
        suf = fn[s:s + s_len]
        if s_len == 1:
            break
        if not suf[1:].isdigit():
            return suf
        # An all-digit suffix may not be that significant: look for one before it.
    return suf


def _signed(c: int) -> int:
    return c - 256 if c > 127 else c  # rsync sums plain (signed) chars here


def distance(s1: bytes, s2: bytes, limit: int = _SUFFIX_LIMIT) -> int:
    """rsync's fuzzy_distance(s1, s2, limit): edits cost UNIT each plus how far apart the bytes
    are (a change) or the byte itself (an insertion or deletion). NO_MATCH when the distance
    must exceed limit (rsync checks the length difference; this also stops once a whole row
    of the table is above it, which changes no choice)."""
    len1, len2 = len(s1), len(s2)
    if abs(len1 - len2) * UNIT > limit:
        return NO_MATCH
    if not len1 or not len2:
        s = s1 or s2
        return (len(s) * UNIT + sum(_signed(c) for c in s)) & 0xFFFFFFFF
    a = [(i + 1) * UNIT for i in range(len2)]
    for i1, c1 in enumerate(s1):
        diag = i1 * UNIT
        above = diag + UNIT
        floor = diag
        for i2, c2 in enumerate(s2):
            left = a[i2]
            cost = UNIT + abs(c1 - c2) if c1 != c2 else 0
            diag_inc = diag + cost
            if left < above:
                inc = left + UNIT + c1
            else:
                inc = above + UNIT + c2
            above = inc if inc < diag_inc else diag_inc
            a[i2] = above
            diag = left
            if above < floor:
                floor = above
        # No later cell can be below this row's lowest (and the left edge): past the limit, done.
        if floor > limit:
            return NO_MATCH
    return a[-1]


def py_scan(names: Sequence[bytes], suffixes: Sequence[bytes], name: bytes, suffix: bytes,
            lowest: int) -> tuple[int, int]:
    """The name pass over one list: (index of the last candidate whose suffix distance x10
    plus name distance is <= the running lowest, or -1; the new lowest). zcsync._fuzzy.scan
    does the same in C."""
    best = -1
    for i, (cand, cand_suffix) in enumerate(zip(names, suffixes)):
        # rsync adds the suffix distance (x10) to the name distance; computed first here,
        # it tightens the limit the name must keep to (the same names qualify).
        extra = distance(cand_suffix, suffix) * 10
        if extra > lowest:
            continue
        dist = distance(cand, name, lowest - extra)
        if dist >= _SUFFIX_LIMIT:
            continue
        dist += extra
        if dist <= lowest:
            lowest = dist
            best = i
    return best, lowest


try:
    from ._fuzzy import scan
except ImportError:  # not built (a source checkout without build_ext): the same in Python
    scan = py_scan


def choose(name: bytes, size: int, mtime_ns: int, lists: Sequence[Sequence[Candidate]],
           same_time: Callable[[int, int], bool]) -> tuple[int, Candidate] | None:
    """The basis for a missing file `name` (a base name) of this size and mtime: (which
    list, the candidate), or None. same_time compares two mtimes (ns) as rsync's same_time."""
    for i, files in enumerate(lists):
        for cand in files:
            if cand.size == size and same_time(cand.mtime_ns, mtime_ns):
                return i, cand
    suffix = filename_suffix(name)
    lowest = LIMIT
    best: tuple[int, Candidate] | None = None
    for i, files in enumerate(lists):
        if not files:
            continue
        j, lowest = scan([c.name for c in files], [c.suffix for c in files], name, suffix, lowest)
        if j >= 0:
            best = i, files[j]
    return best
