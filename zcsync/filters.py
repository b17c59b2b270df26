"""rsync filter rules: parsing, per-directory merge files, and fast matching.

The semantics follow rsync 3.x (``exclude.c`` and ``lib/wildmatch.c``), which is
the oracle; the tests compare against the real rsync on the same trees.

Every pattern is compiled once to a bytes regex. Consecutive rules with the same
verdict are merged into one regex per kind of text they look at (the final name
component, the whole path, ...), so ``excluded()`` usually runs one or two regex
calls per file however many ``--exclude`` options were given.

Where we deliberately differ from rsync (all rare corners, all logged):

- ``merge`` rules inside per-directory merge files are ignored: rsync reads them
  relative to the process' working directory, which a remote peer should not
  be able to steer.
- A ``dir-merge`` name with a ``/`` inside a per-directory merge file is reduced
  to its last component (no parent-directory scan).
- ``x`` (xattr) rules are accepted but never match file names (as in rsync);
  xattr-name filtering itself is not implemented here.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Iterable

from .errors import FILE_IO, UsageError

log = logging.getLogger(__name__)

__all__ = ["FilterError", "FilterFileError", "FilterRules", "SIDES"]

SIDES = ("sender", "receiver")


class FilterError(UsageError):
    """{detail}"""


class FilterFileError(FilterError):
    """{detail}"""

    exit_code = FILE_IO


# -- rule flags (rsync's FILTRULE_*) ------------------------------------------
INCLUDE = 1 << 0
DIRECTORY = 1 << 1
NEGATE = 1 << 2
PERISHABLE = 1 << 3
ABS_PATH = 1 << 4
SENDER = 1 << 5
RECEIVER = 1 << 6
MERGE_FILE = 1 << 7
PERDIR_MERGE = 1 << 8
NO_PREFIXES = 1 << 9
WORD_SPLIT = 1 << 10
NO_INHERIT = 1 << 11
CVS_IGNORE = 1 << 12
EXCLUDE_SELF = 1 << 13
XATTR = 1 << 14
CLEAR_LIST = 1 << 15

SIDE_FLAGS = SENDER | RECEIVER
# What a rule read from a merge file inherits from the merge rule itself.
FROM_CONTAINER = ABS_PATH | INCLUDE | DIRECTORY | NEGATE | PERISHABLE

_LONG_NAMES = {
    b"clear": b"!", b"dir-merge": b":", b"exclude": b"-", b"hide": b"H",
    b"include": b"+", b"merge": b".", b"protect": b"P", b"risk": b"R", b"show": b"S",
}

# rsync's built-in --cvs-exclude list (marked perishable, protocol >= 30).
DEFAULT_CVSIGNORE = (
    b"RCS SCCS CVS CVS.adm RCSLOG cvslog.* tags TAGS .make.state .nse_depinfo"
    b" *~ #* .#* ,* _$* *$ *.old *.bak *.BAK *.orig *.rej .del-* *.a *.olb *.o"
    b" *.obj *.so *.exe *.Z *.elc *.ln core .svn/ .git/ .hg/ .bzr/"
)

_MAX_MERGE_DEPTH = 32
_WS = b" \t\n\r\x0b\x0c"  # C isspace() in the C locale


def _fail(msg: str, rule: bytes) -> FilterError:
    return FilterError(f"{msg}: {_show(rule)!r}")


def _show(b: bytes) -> str:
    return os.fsdecode(b)


# -- wildmatch -> regex ---------------------------------------------------------

def _ascii_class(pred: Callable[[int], bool]) -> frozenset[int]:
    return frozenset(c for c in range(128) if pred(c))


def _isalpha(c: int) -> bool:
    return 65 <= c <= 90 or 97 <= c <= 122


def _isdigit(c: int) -> bool:
    return 48 <= c <= 57


def _isgraph(c: int) -> bool:
    return 33 <= c <= 126


_CHAR_CLASSES: dict[bytes, frozenset[int]] = {
    b"alnum": _ascii_class(lambda c: _isalpha(c) or _isdigit(c)),
    b"alpha": _ascii_class(_isalpha),
    b"blank": frozenset(b" \t"),
    b"cntrl": _ascii_class(lambda c: c < 32 or c == 127),
    b"digit": _ascii_class(_isdigit),
    b"graph": _ascii_class(_isgraph),
    b"lower": _ascii_class(lambda c: 97 <= c <= 122),
    b"print": _ascii_class(lambda c: 32 <= c <= 126),
    b"punct": _ascii_class(lambda c: _isgraph(c) and not (_isalpha(c) or _isdigit(c))),
    b"space": frozenset(_WS),
    b"upper": _ascii_class(lambda c: 65 <= c <= 90),
    b"xdigit": _ascii_class(lambda c: _isdigit(c) or 65 <= c <= 70 or 97 <= c <= 102),
}

_SLASH, _BSL, _LBR, _RBR = 0x2F, 0x5C, 0x5B, 0x5D


def _lit(c: int) -> bytes:
    return re.escape(bytes((c,)))


def _class_regex(members: set[int]) -> bytes:
    # A bracket expression never matches '/' in rsync's wildmatch.
    members.discard(_SLASH)
    if not members:
        return b"(?!)"
    out = [b"["]
    vals = sorted(members)
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        out.append(b"\\x%02x" % vals[i])
        if j > i:
            out.append(b"-\\x%02x" % vals[j])
        i = j + 1
    out.append(b"]")
    return b"".join(out)


def _translate_class(pat: bytes, i: int) -> tuple[bytes, int] | None:
    """Translate the bracket expression at pat[i] ('['); None if malformed."""
    n = len(pat)
    p = i + 1
    if p >= n:
        return None
    ch = pat[p]
    negate = ch in b"!^"
    if negate:
        p += 1
        if p >= n:
            return None
        ch = pat[p]
    members: set[int] = set()
    prev = 0
    # Mirrors dowild(): the first character is taken before ']' can close the set.
    while True:
        if ch == _BSL:
            p += 1
            if p >= n:
                return None
            ch = pat[p]
            members.add(ch)
        elif ch == 0x2D and prev and p + 1 < n and pat[p + 1] != _RBR:  # '-' range
            p += 1
            ch = pat[p]
            if ch == _BSL:
                p += 1
                if p >= n:
                    return None
                ch = pat[p]
            members.update(range(prev, ch + 1))
            ch = 0
        elif ch == _LBR and p + 1 < n and pat[p + 1] == 0x3A:  # "[:"
            s = q = p + 2
            while q < n and pat[q] != _RBR:
                q += 1
            if q >= n:
                return None
            if q - s - 1 < 0 or pat[q - 1] != 0x3A:
                # No ":]": the '[' is an ordinary member.
                members.add(_LBR)
                p = s - 2
                ch = _LBR
            else:
                cls = _CHAR_CLASSES.get(pat[s:q - 1])
                if cls is None:
                    return None
                members.update(cls)
                p = q
                ch = 0
        else:
            members.add(ch)
        prev = ch
        p += 1
        if p >= n:
            return None
        ch = pat[p]
        if ch == _RBR:
            break
    if negate:
        members = set(range(256)) - members
    return _class_regex(members), p + 1


def _literal_slashes(pat: bytes, wild: bool) -> int:
    """How many '/' a pattern matches literally (not inside a bracket expression)."""
    if not wild:
        return pat.count(b"/")
    n = i = 0
    while i < len(pat):
        c = pat[i]
        if c == _BSL:
            n += pat[i + 1:i + 2] == b"/"
            i += 2
        elif c == _LBR:
            res = _translate_class(pat, i)
            if res is None:
                return -1
            i = res[1]
        else:
            n += c == _SLASH
            i += 1
    return n


def _translate(pat: bytes) -> bytes | None:
    """Translate an rsync wildcard pattern to a regex body; None if it can never match."""
    out: list[bytes] = []
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        if c == _BSL:
            if i + 1 >= n:
                return None  # a trailing backslash never matches
            out.append(_lit(pat[i + 1]))
            i += 2
        elif c == 0x3F:  # '?'
            out.append(b"[^/]")
            i += 1
        elif c == 0x2A:  # '*'
            j = i
            while j < n and pat[j] == 0x2A:
                j += 1
            out.append(b".*" if j - i > 1 else b"[^/]*")
            i = j
        elif c == _LBR:
            res = _translate_class(pat, i)
            if res is None:
                return None
            cls, i = res
            out.append(cls)
        else:
            out.append(_lit(c))
            i += 1
    return b"".join(out)


# -- rules ------------------------------------------------------------------------

# What text a rule is matched against (rsync's rule_matches()).
_BASE = 0    # the final path component
_PATH = 1    # the whole relative path
_SLASH_PATH = 2  # "/" + path: a leading "**" may match at the start
_ABS = 3     # the absolute path (the "/" modifier, parent-dir merge files)


class _Rule:
    """One compiled include/exclude rule."""

    __slots__ = ("pattern", "flags", "kind", "wild3", "regex", "literal", "never")

    def __init__(self, pattern: bytes, flags: int) -> None:
        self.pattern = pattern
        self.flags = flags
        wild = any(c in pattern for c in b"*?[")
        wild2 = wild and b"**" in pattern
        slash_cnt = pattern.count(b"/")
        anchored = pattern.startswith(b"/")
        body = pattern[1:] if anchored else pattern
        self.wild3 = wild2 and pattern.endswith(b"***")
        if not slash_cnt and not wild2:
            self.kind = _BASE
        elif flags & ABS_PATH:
            self.kind = _ABS
        elif wild2 and pattern.startswith(b"**"):
            self.kind = _SLASH_PATH
        else:
            self.kind = _PATH
        self.never = False
        self.literal: bytes | None = None
        if not wild:
            self.literal = body
            rx = re.escape(body)
        else:
            translated = _translate(body)
            if translated is None:
                self.never = True
                translated = b"(?!)"
            rx = translated
        if self.kind == _BASE or anchored or (wild2 and pattern.startswith(b"**")):
            self.regex = rx  # matched from the start of its text
        else:
            # Unanchored with a slash or "**": match at the start or after any slash.
            # Without "**" the pattern consumes a fixed number of slashes, so this also
            # picks rsync's "last slash_cnt+1 elements" -- unless a '/' sits inside a
            # bracket expression (which never matches '/'): then it can never match.
            if not wild2 and _literal_slashes(body, wild) != slash_cnt:
                self.never = True
            self.regex = b"(?:.*/)?" + rx

    @property
    def include(self) -> bool:
        return bool(self.flags & INCLUDE)

    def applies_to(self, side: str) -> bool:
        sides = self.flags & SIDE_FLAGS
        if not sides or sides == SIDE_FLAGS:
            return True
        return bool(sides & (SENDER if side == "sender" else RECEIVER))

    def spec(self) -> str:
        """The rule in rsync's filter syntax (for logs and debugging)."""
        mods = "".join(m for f, m in ((ABS_PATH, "/"), (NEGATE, "!"), (PERISHABLE, "p"),
                                      (SENDER, "s"), (RECEIVER, "r")) if self.flags & f)
        tail = "/" if self.flags & DIRECTORY else ""
        return f"{'+' if self.include else '-'}{mods} {_show(self.pattern)}{tail}"

    def __repr__(self) -> str:
        return f"<_Rule {self.spec()}>"


class _DirMerge:
    """A dir-merge rule: a slot whose rules come from a file in each directory."""

    __slots__ = ("name", "flags", "scan_dir")

    def __init__(self, name: bytes, flags: int, scan_dir: bytes | None) -> None:
        self.name = name
        self.flags = flags
        self.scan_dir = scan_dir

    def __repr__(self) -> str:
        return f"<_DirMerge {_show(self.name)}>"


_Entry = _Rule | _DirMerge
Matcher = Callable[[bytes, bytes, bool], bool]


class _List:
    """A rule list being built; ``cleared`` records a '!' (drops inherited rules)."""

    __slots__ = ("items", "cleared")

    def __init__(self) -> None:
        self.items: list[_Entry] = []
        self.cleared = False

    def clear(self) -> None:
        self.items.clear()
        self.cleared = True


# -- parsing ------------------------------------------------------------------------

_LONG_BY_INITIAL = {name[0]: (name, short) for name, short in _LONG_NAMES.items()}


def _parse_rule(s: bytes, template: int, delete_excluded: bool) -> tuple[int, bytes] | None:
    """Parse one rule (rsync's parse_rule_tok) into (flags, pattern); None if empty."""
    if template & WORD_SPLIT:
        s = s.lstrip(_WS)
    if not s:
        return None
    orig = s
    flags = template & FROM_CONTAINER
    pos = 0
    if template & NO_PREFIXES:
        if s[0] == 0x21 and template & CVS_IGNORE:  # '!'
            flags |= CLEAR_LIST  # tentative: only a lone "!"
    else:
        ch = 0
        if s[0] in _LONG_BY_INITIAL:
            # Lower-case initials only introduce long names ("exclude", "merge", ...).
            lname, short = _LONG_BY_INITIAL[s[0]]
            if s.startswith(lname):
                nxt = s[len(lname):len(lname) + 1]
                if not nxt or nxt == b"_" or nxt in _WS:
                    pos, ch = len(lname) - 1, short[0]
                elif nxt == b",":
                    pos, ch = len(lname), short[0]
        else:
            ch = s[0]
            if s[1:2] == b",":
                pos = 1
        side_prefix = False
        if ch == 0x3A:  # ':'
            flags |= PERDIR_MERGE | MERGE_FILE
        elif ch == 0x2E:  # '.'
            flags |= MERGE_FILE
        elif ch == 0x2B:  # '+'
            flags |= INCLUDE
        elif ch == 0x2D:  # '-'
            pass
        elif ch in b"SH":
            flags |= SENDER | (INCLUDE if ch == 0x53 else 0)
            side_prefix = True
        elif ch in b"RP":
            flags |= RECEIVER | (INCLUDE if ch == 0x52 else 0)
            side_prefix = True
        elif ch == 0x21:  # '!'
            flags |= CLEAR_LIST
        else:
            raise _fail("Unknown filter rule", orig)
        if ch != 0x21:
            while True:
                pos += 1
                if pos >= len(s) or s[pos] in b" _":
                    break
                m = s[pos]
                if template & WORD_SPLIT and m in _WS:
                    pos -= 1
                    break
                bad = False
                if m in b"-+":
                    bad = not flags & MERGE_FILE or bool(flags & NO_PREFIXES)
                    flags |= NO_PREFIXES | (INCLUDE if m == 0x2B else 0)
                elif m == 0x2F:  # '/'
                    flags |= ABS_PATH
                elif m == 0x21:  # '!': negation belongs to a pattern, not a merge file
                    bad = bool(flags & MERGE_FILE)
                    flags |= NEGATE
                elif m == 0x43:  # 'C'
                    bad = bool(flags & NO_PREFIXES) or side_prefix
                    flags |= NO_PREFIXES | WORD_SPLIT | NO_INHERIT | CVS_IGNORE
                elif m in b"enw":
                    bad = not flags & MERGE_FILE
                    flags |= {0x65: EXCLUDE_SELF, 0x6E: NO_INHERIT, 0x77: WORD_SPLIT}[m]
                elif m == 0x70:  # 'p'
                    flags |= PERISHABLE
                elif m in b"rs":
                    bad = side_prefix
                    flags |= RECEIVER if m == 0x72 else SENDER
                elif m == 0x78:  # 'x'
                    flags |= XATTR
                else:
                    bad = True
                if bad:
                    raise FilterError(
                        f"Invalid modifier '{chr(m)}' at position {pos} in filter rule: "
                        f"{_show(orig)!r}")
        if pos < len(s):
            pos += 1
    if template & SIDE_FLAGS:
        if flags & SIDE_FLAGS:
            raise _fail("Specified-side merge file contains specified-side filter", orig)
        flags |= template & SIDE_FLAGS
    pattern = s[pos:]
    if template & WORD_SPLIT:
        ws = re.search(rb"[ \t\n\r\x0b\x0c]", pattern)
        if ws:
            pattern = pattern[:ws.start()]
    if flags & CLEAR_LIST:
        if not template & NO_PREFIXES and pattern:
            raise _fail("'!' rule has trailing characters", orig)
        if len(pattern) > 1:
            flags &= ~CLEAR_LIST
    elif not pattern and not flags & CVS_IGNORE:
        raise _fail("Unexpected end of filter rule", orig)
    # --delete-excluded turns an unmodified include/exclude into a sender-side rule.
    if delete_excluded and not flags & (SIDE_FLAGS | MERGE_FILE | PERDIR_MERGE):
        flags |= SENDER
    return flags, pattern


def _split_file(content: bytes, word_split: bool, from0: bool) -> list[bytes]:
    """Split a filter file into rule strings as rsync's parse_filter_file() does."""
    parts = content.split(b"\0") if from0 else re.split(rb"[\r\n]", content)
    if word_split:
        return [tok for part in parts for tok in part.split()]
    return [p for p in parts if p and p[:1] not in b";#"]


def _read_path(path: bytes) -> bytes:
    if path == b"-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


class _Parser:
    """Parses rule strings into a _List; one instance per list being built."""

    def __init__(self, rules: "FilterRules", *, perdir: bool = False, dirrel: bytes = b"",
                 abs_dir: bytes | None = None, active: set[bytes] | None = None) -> None:
        self.rules = rules
        self.perdir = perdir        # parsing a per-directory merge file
        self.dirrel = dirrel        # its directory, relative to the transfer root
        self.abs_dir = abs_dir      # or its absolute directory (parent-dir scan)
        self.active = active if active is not None else set()  # active dir-merge names

    def parse(self, lst: _List, s: bytes, template: int, depth: int = 0) -> None:
        s = s.split(b"\0", 1)[0]  # rsync's rules are C strings
        parsed = _parse_rule(s, template, self.rules._delete_excluded)
        if parsed is None:
            return
        flags, pat = parsed
        if flags & CLEAR_LIST:
            lst.clear()
            if not self.perdir:
                self.active = {e.name for e in lst.items if isinstance(e, _DirMerge)}
            return
        if flags & MERGE_FILE:
            self._merge(lst, s, flags, pat or b".cvsignore", depth)
            return
        if flags & CVS_IGNORE:
            # "-C": rsync's global CVS list, kept apart so a "!" in it clears only it.
            cvs = _List()
            for word, perishable in self.rules._cvs_words():
                self.parse(cvs, word, flags | (PERISHABLE if perishable else 0), depth + 1)
            lst.items.extend(cvs.items)
            return
        self.add(lst, pat, flags)

    def parse_file(self, lst: _List, content: bytes, template: int, where: str,
                   depth: int = 0) -> None:
        """Parse a merge file's content; errors name the file and line."""
        for n, line in enumerate(_split_file(content, bool(template & WORD_SPLIT),
                                             self.rules._from0), 1):
            try:
                self.parse(lst, line, template, depth)
            except FilterFileError:
                raise
            except FilterError as exc:
                raise FilterError(f"{exc.detail} (rule {n} of {where})") from None

    def add(self, lst: _List, pat: bytes, flags: int) -> None:
        if flags & XATTR:
            return  # xattr-name rules never match file names
        if len(pat) > 1 and pat.endswith(b"/"):
            pat = pat[:-1]
            flags |= DIRECTORY
        if self.perdir and not flags & ABS_PATH and pat.startswith(b"/"):
            # Anchored rules in a per-directory file are relative to its directory.
            if self.abs_dir is not None:
                flags |= ABS_PATH
                pat = self.abs_dir.rstrip(b"/") + pat
            elif self.dirrel:
                pat = b"/" + self.dirrel + pat
        lst.items.append(_Rule(pat, flags))

    def _merge(self, lst: _List, s: bytes, flags: int, name: bytes, depth: int) -> None:
        if flags & EXCLUDE_SELF:
            excl = 0 if self.perdir or not self.rules._delete_excluded else SENDER
            self.add(lst, name.rsplit(b"/", 1)[-1], excl)
            flags &= ~EXCLUDE_SELF
        if flags & PERDIR_MERGE:
            base = name.rsplit(b"/", 1)[-1]
            if not base:
                raise _fail("Bad dir-merge file name", s)
            if base in self.active:
                return  # rsync ignores a second dir-merge of the same file name
            scan_dir = None
            if b"/" in name:
                if self.perdir:
                    log.debug("dir-merge %r in a per-directory file: using %r",
                              _show(name), _show(base))
                else:
                    scan_dir = self.rules._scan_dir_for(name)
            self.active.add(base)
            lst.items.append(_DirMerge(base, flags, scan_dir))
            return
        if self.perdir:
            log.warning("Ignoring merge rule in a per-directory filter file: %r", _show(s))
            return
        if not self.rules._trusted:
            raise _fail("Merge rules are not allowed here", s)
        if depth >= _MAX_MERGE_DEPTH:
            raise _fail("Too many nested merge files", s)
        try:
            content = _read_path(name)
        except OSError as exc:
            raise FilterFileError(
                f"Cannot read filter file {_show(name)!r}: {exc.strerror}") from exc
        self.parse_file(lst, content, flags, repr(_show(name)), depth + 1)


# -- matchers -------------------------------------------------------------------------

def _make_matcher(kind: int, wild3: bool, dir_only: bool, literals: list[bytes],
                  regexes: list[bytes], abs_prefix: bytes) -> Matcher:
    """One function answering 'does any of these same-kind rules match?'."""
    f: Matcher
    if kind == _BASE:
        lits = frozenset(literals)
        fm = (re.compile(b"(?:" + b"|".join(regexes) + b")", re.S).fullmatch
              if regexes else None)
        if fm is not None and lits:
            def f(n: bytes, b: bytes, d: bool) -> bool:
                return b in lits or fm(b) is not None
        elif fm is not None:
            def f(n: bytes, b: bytes, d: bool) -> bool:
                return fm(b) is not None
        elif len(lits) == 1:
            (one,) = lits

            def f(n: bytes, b: bytes, d: bool) -> bool:
                return b == one
        else:
            def f(n: bytes, b: bytes, d: bool) -> bool:
                return b in lits
    else:
        alts = regexes + [re.escape(x) for x in literals]
        fm_path = re.compile(b"|".join(alts), re.S).fullmatch
        prefix = {_PATH: b"", _SLASH_PATH: b"/", _ABS: abs_prefix}[kind]
        if not prefix and not wild3:
            def f(n: bytes, b: bytes, d: bool) -> bool:
                return fm_path(n) is not None
        elif not wild3:
            def f(n: bytes, b: bytes, d: bool) -> bool:
                return fm_path(prefix + n) is not None
        else:
            def f(n: bytes, b: bytes, d: bool) -> bool:
                return fm_path(prefix + n + b"/" if d else prefix + n) is not None
    if dir_only:
        g = f

        def f(n: bytes, b: bytes, d: bool) -> bool:
            return d and g(n, b, d)
    return f


def _rule_matcher(rule: _Rule, abs_prefix: bytes) -> Matcher:
    """A matcher for one rule, honouring its '!' (negate) modifier."""
    if rule.never:
        inner: Matcher = lambda n, b, d: False  # noqa: E731
    else:
        lit, rx = _split_lit(rule)
        inner = _make_matcher(rule.kind, rule.wild3, bool(rule.flags & DIRECTORY),
                              lit, rx, abs_prefix)
    if rule.flags & NEGATE:
        return lambda n, b, d: not inner(n, b, d)
    return inner


def _split_lit(rule: _Rule) -> tuple[list[bytes], list[bytes]]:
    # Anchored or base-name literals compare as plain bytes; the rest use the regex.
    if rule.literal is not None and (rule.kind == _BASE or rule.pattern.startswith(b"/")):
        return [rule.literal], []
    return [], [rule.regex]


def _build_matchers(rules: list[_Rule], abs_prefix: bytes) -> tuple[tuple[Matcher, bool], ...]:
    """Compile rules (first match wins) into (matcher, excludes) pairs."""
    out: list[tuple[Matcher, bool]] = []
    run: list[_Rule] = []

    def flush() -> None:
        if not run:
            return
        verdict = not run[0].include
        buckets: dict[tuple[int, bool, bool], tuple[list[bytes], list[bytes]]] = {}
        for r in run:
            key = (r.kind, r.wild3, bool(r.flags & DIRECTORY))
            lit, rx = buckets.setdefault(key, ([], []))
            rl, rr = _split_lit(r)
            lit.extend(rl)
            rx.extend(rr)
        for (kind, wild3, dir_only), (lit, rx) in buckets.items():
            out.append((_make_matcher(kind, wild3, dir_only, lit, rx, abs_prefix), verdict))
        run.clear()

    for r in rules:
        if r.flags & NEGATE:
            flush()
            out.append((_rule_matcher(r, abs_prefix), not r.include))
            continue
        if r.never:
            continue
        if run and run[0].include != r.include:
            flush()
        run.append(r)
    flush()
    return tuple(out)


# -- the public object ----------------------------------------------------------------

class FilterRules:
    """An ordered rsync filter list, as in force inside one directory."""

    __slots__ = ("_entries", "_slots", "_delete_excluded", "_from0", "_root", "_trusted",
                 "_abs_prefix", "_has_merge", "_scanned", "_matchers", "_cvs")

    def __init__(self, entries: tuple[_Entry, ...] = (), *, delete_excluded: bool = False,
                 from0: bool = False, root: bytes | None = None, trusted: bool = True) -> None:
        self._entries = entries
        self._slots: dict[_DirMerge, tuple[_Entry, ...]] = {}
        self._delete_excluded = delete_excluded
        self._from0 = from0
        self._root = root
        self._trusted = trusted
        if root is None or root == b"/":
            self._abs_prefix = b""
        else:
            self._abs_prefix = root.strip(b"/") + b"/"
        self._has_merge = any(isinstance(e, _DirMerge) for e in entries)
        self._scanned = False
        self._matchers: dict[tuple[str, bool], tuple[tuple[Matcher, bool], ...]] = {}
        self._cvs: list[tuple[bytes, bool]] | None = None

    # -- construction ----------------------------------------------------------------
    @classmethod
    def parse(cls, specs: Iterable[str | bytes], *, delete_excluded: bool = False,
              from0: bool = False, root: str | bytes | None = None,
              trusted: bool = True) -> FilterRules:
        """Build the global filter list from rule strings in command-line order.

        ``from0`` makes merge files NUL-delimited (--from0). ``root`` is the absolute
        path of the transfer root on the side that uses these rules; it is needed only
        for the '/' modifier and for dir-merge names with a directory part (-F scans
        the parents of the root). ``trusted=False`` (rules from a peer) refuses
        ``merge`` rules and the parent-directory scan.
        """
        root_b = None
        if root is not None:
            root_b = os.path.normpath(os.path.abspath(os.fsencode(root)))
        self = cls((), delete_excluded=delete_excluded, from0=from0, root=root_b,
                   trusted=trusted)
        lst = _List()
        parser = _Parser(self)
        for spec in specs:
            parser.parse(lst, os.fsencode(spec), 0)
        self._entries = tuple(lst.items)
        self._has_merge = any(isinstance(e, _DirMerge) for e in self._entries)
        return self

    @staticmethod
    def old_style(pattern: str, kind: str) -> str:
        """Turn an --exclude/--include pattern into a filter rule as rsync does.

        Old-style patterns may start with "+ " or "- " to choose the other kind, and
        a lone "!" clears the list.
        """
        if pattern == "!" or pattern.startswith(("+ ", "- ")):
            return pattern
        return f"{kind} {pattern}"

    @staticmethod
    def rules_from_file(path: str | bytes, kind: str | None, from0: bool = False) -> list[str]:
        """Read rules from a file (--exclude-from, --include-from, or a merge file).

        kind '-' / '+' reads old-style patterns (one per line, with optional "+ "/"- "
        prefixes); None reads full filter-rule syntax. Blank lines and lines starting
        with ';' or '#' are skipped; lines end at CR or LF, or at NUL with from0.
        A path of "-" reads standard input.
        """
        if kind not in ("+", "-", None):
            raise ValueError(f"kind must be '+', '-' or None, not {kind!r}")
        p = os.fsencode(path)
        try:
            content = _read_path(p)
        except OSError as exc:
            what = {"+": "include", "-": "exclude", None: "filter"}[kind]
            raise FilterFileError(
                f"Cannot read {what} file {_show(p)!r}: {exc.strerror}") from exc
        lines = [os.fsdecode(x) for x in _split_file(content, False, from0)]
        if kind is None:
            return lines
        return [FilterRules.old_style(x, kind) for x in lines]

    # -- queries ---------------------------------------------------------------------
    @property
    def has_rules(self) -> bool:
        """False when there is nothing to match (the engine then skips matching)."""
        return bool(self._entries)

    @property
    def has_dir_merge(self) -> bool:
        """True when enter_dir() may change the rules (per-directory merge files)."""
        return self._has_merge

    def excluded(self, name: bytes, is_dir: bool, side: str = "sender", *,
                 ignore_perishable: bool = False) -> bool:
        """Is name excluded on this side (sender: hidden; receiver: protected)?

        ``ignore_perishable`` drops 'p' rules, as rsync does inside directories that
        are being deleted.
        """
        try:
            matchers = self._matchers[(side, ignore_perishable)]
        except KeyError:
            matchers = self._compile(side, ignore_perishable)
        if not matchers or name == b".":
            return False
        i = name.rfind(b"/")
        base = name[i + 1:] if i >= 0 else name
        for match, excludes in matchers:
            if match(name, base, is_dir):
                return excludes
        return False

    def rules(self, side: str = "sender") -> list[str]:
        """The effective rule list on a side, in rsync syntax (for debugging)."""
        return [r.spec() for r in self._flat() if r.applies_to(side)]

    # -- per-directory merge files ---------------------------------------------------
    def enter_dir(self, dir_name: bytes,
                  read_file: Callable[[bytes], bytes | None]) -> FilterRules:
        """The rules in force inside dir_name, reading its per-directory merge files.

        dir_name is relative to the transfer root (b"." for the root itself, which
        must be entered first); read_file(basename) returns that file's content in
        dir_name, or None. Returns self when nothing changes.
        """
        if not self._has_merge:
            return self
        dirrel = b"" if dir_name == b"." else dir_name
        queue: list[_DirMerge] = [e for e in self._entries if isinstance(e, _DirMerge)]
        seen = set(queue)
        active = {m.name for m in queue}
        new_slots: dict[_DirMerge, tuple[_Entry, ...]] = {}
        changed = not self._scanned
        i = 0
        while i < len(queue):
            m = queue[i]
            i += 1
            old = self._slots.get(m, ())
            inherited = () if m.flags & NO_INHERIT else old
            if not self._scanned and m.scan_dir is not None:
                inherited = self._parent_scan(m, active)
            content = read_file(m.name)
            if content is not None:
                lst = _List()
                parser = _Parser(self, perdir=True, dirrel=dirrel, active=active)
                where = repr(_show(dirrel + b"/" + m.name if dirrel else m.name))
                parser.parse_file(lst, content, m.flags, where)
                new = tuple(lst.items) + (() if lst.cleared else inherited)
            else:
                new = inherited
            new_slots[m] = new
            if new != old:
                changed = True
            for e in new:
                if isinstance(e, _DirMerge) and e not in seen:
                    seen.add(e)
                    active.add(e.name)
                    queue.append(e)
        if not changed:
            return self
        child = self._copy()
        child._slots = new_slots
        child._scanned = True
        return child

    # -- internals --------------------------------------------------------------------
    def _copy(self) -> FilterRules:
        new = FilterRules(self._entries, delete_excluded=self._delete_excluded,
                          from0=self._from0, root=self._root, trusted=self._trusted)
        new._cvs = self._cvs
        return new

    def _flat(self) -> list[_Rule]:
        out: list[_Rule] = []

        def walk(entries: Iterable[_Entry]) -> None:
            for e in entries:
                if isinstance(e, _DirMerge):
                    walk(self._slots.get(e, ()))
                else:
                    out.append(e)
        walk(self._entries)
        return out

    def _compile(self, side: str, ignore_perishable: bool) -> tuple[tuple[Matcher, bool], ...]:
        if side not in SIDES:
            raise ValueError(f"side must be 'sender' or 'receiver', not {side!r}")
        rules = [r for r in self._flat() if r.applies_to(side)
                 and not (ignore_perishable and r.flags & PERISHABLE)]
        matchers = _build_matchers(rules, self._abs_prefix)
        self._matchers[(side, ignore_perishable)] = matchers
        return matchers

    def _scan_dir_for(self, name: bytes) -> bytes | None:
        """Where the parent-directory scan of a dir-merge name like "/.rsync-filter" starts."""
        if self._root is None or not self._trusted:
            return None
        full = name if name.startswith(b"/") else self._root + b"/" + name
        return os.path.dirname(os.path.normpath(full))

    def _parent_scan(self, m: _DirMerge, active: set[bytes]) -> tuple[_Entry, ...]:
        """Rules from m's file in the root's ancestors, from m.scan_dir down (rsync -F)."""
        root, start = self._root, m.scan_dir
        assert root is not None and start is not None
        if start != b"/" and root != start and not root.startswith(start + b"/"):
            return ()  # not a parent of the transfer root: no scan
        rel = root[len(start):].strip(b"/")
        dirs = [start]
        parts = rel.split(b"/") if rel else []
        for part in parts[:-1]:
            dirs.append(os.path.join(dirs[-1], part))
        if not parts:
            return ()  # the root itself is read by enter_dir(b".")
        inherited: tuple[_Entry, ...] = ()
        for d in dirs:
            try:
                content = _read_path(os.path.join(d, m.name))
            except OSError:
                continue
            if m.flags & NO_INHERIT:
                continue
            lst = _List()
            parser = _Parser(self, perdir=True, abs_dir=d, active=active)
            parser.parse_file(lst, content, m.flags, repr(_show(os.path.join(d, m.name))))
            inherited = tuple(lst.items) + (() if lst.cleared else inherited)
        return inherited

    def _cvs_words(self) -> list[tuple[bytes, bool]]:
        """rsync's --cvs-exclude list: (word, perishable) pairs."""
        if self._cvs is None:
            words = [(w, True) for w in DEFAULT_CVSIGNORE.split()]
            home = os.environ.get("HOME")
            if home:
                try:
                    words += [(w, False) for w in
                              _read_path(os.path.join(os.fsencode(home), b".cvsignore")).split()]
                except OSError:
                    pass
            env = os.environb.get(b"CVSIGNORE")
            if env:
                words += [(w, False) for w in env.split()]
            self._cvs = words
        return self._cvs

    def __repr__(self) -> str:
        return f"<FilterRules {self.rules('sender')!r}>"
