"""Sender owners to receiver owners: --usermap/--groupmap/--chown rules, then names.

rsync's uidlist.c, on the receiving side: each sender id (with the sender's name for
it, when there is one) is matched against the rules in order; the first rule that
matches gives the id. A rule's FROM is a name, a wildcard pattern over names
(``*``, ``?``, ``[...]``), an id, or an id range ``LOW-HIGH``; its TO is a name or an
id on the receiver. An id that no rule matches keeps its name (the receiver's id for
the sender's name) unless --numeric-ids, or keeps its number. ``--chown=USER:GROUP``
is the rule ``*:USER`` / ``*:GROUP``, as in rsync.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import meta
from .errors import UsageError
from .flist import DirBatch
from .options import Options


@dataclass(frozen=True)
class _Rule:
    name: str | None  # a name or a wildcard pattern (then low/high are unused)
    wild: bool
    low: int
    high: int
    to: int

    def matches(self, ident: int, name: str | None) -> bool:
        if self.name is None:
            return self.low <= ident <= self.high
        if self.wild:
            return fnmatch.fnmatchcase(name or "", self.name)
        return self.name == (name or "")


def parse_rules(spec: str, kind: str) -> tuple[_Rule, ...]:
    """Parse a --usermap (kind "user") or --groupmap ("group") value; raises UsageError."""
    by_name = meta.uid_by_name if kind == "user" else meta.gid_by_name
    rules = []
    for item in spec.split(","):
        source, colon, target = item.partition(":")
        if not colon:
            raise UsageError(f"No colon found in --{kind}map: {item}")
        if not target:
            raise UsageError(f"No name found after colon --{kind}map: {item}")
        to = meta.resolve_id(target, by_name, kind)
        if to is None:  # an empty TO was refused above
            raise UsageError(f"No name found after colon --{kind}map: {item}")
        if source[:1].isdigit():
            low, dash, high = source.partition("-")
            if not (low.isdigit() and (not dash or high.isdigit())) or not source.isascii():
                raise UsageError(f"Invalid number in --{kind}map: {source}")
            rules.append(_Rule(None, False, int(low), int(high) if dash else int(low), to))
        elif any(c in source for c in "*?["):
            rules.append(_Rule(source.replace("[^", "[!"), True, 0, 0, to))
        else:
            rules.append(_Rule(source, False, 0, 0, to))
    return tuple(rules)


class _Side:
    """One kind (users or groups): sender id -> receiver id, decided once per id."""

    def __init__(self, rules: tuple[_Rule, ...], by_name: Callable[[str], int | None] | None,
                 name_of: Callable[[int], str | None] | None) -> None:
        self.rules = rules
        self.by_name = by_name  # None: numbers stay numbers (--numeric-ids, or a local sender)
        self.names: dict[int, str] = {}  # the sender's names, as they arrive with the file list
        self.name_of = name_of or self.names.get
        # Without rules only a name can move an id, and names are learnt before the ids are
        # used: the ids that move are known then. With rules every id is decided on first use.
        self.moved: dict[int, int] = {}

    def learn(self, ident: int, name: str) -> None:
        if ident not in self.names:
            self.names[ident] = name
            if not self.rules and (to := self._decide(ident)) != ident:
                self.moved[ident] = to

    def __call__(self, ident: int) -> int:
        got = self.moved.get(ident)
        if got is None:
            if not self.rules:
                return ident
            got = self.moved[ident] = self._decide(ident)
        return got

    def _decide(self, ident: int) -> int:
        name = self.name_of(ident)
        for rule in self.rules:
            if rule.matches(ident, name):
                return rule.to
        if name and ident and self.by_name is not None:  # rsync never maps id 0 by name
            local = self.by_name(name)
            if local is not None:
                return local
        return ident


class OwnerMap:
    """The receiver's view of the sender's owners (see the module docstring).

    A remote sender's names arrive with its file list (learn); a local sender's are this
    host's, and only rules can change its ids.
    """

    def __init__(self, opts: Options, *, remote: bool) -> None:
        users, groups = self.rules(opts)
        by_names = remote and not opts.numeric_ids
        local_names = not remote and not opts.numeric_ids  # --numeric-ids: rules see no names
        self.users = _Side(users, meta.uid_by_name if by_names else None, meta.uid_name if local_names else None)
        self.groups = _Side(groups, meta.gid_by_name if by_names else None, meta.gid_name if local_names else None)
        self._ruled = bool(users or groups)
        self.active = self._ruled or by_names  # False: every id stays as it is

    @staticmethod
    def rules(opts: Options) -> tuple[tuple[_Rule, ...], tuple[_Rule, ...]]:
        """(user rules, group rules) of these options; raises UsageError on a bad spec."""
        users = parse_rules(opts.usermap, "user") if opts.usermap else ()
        groups = parse_rules(opts.groupmap, "group") if opts.groupmap else ()
        if opts.chown:
            uid, gid = meta.parse_chown(opts.chown)
            users = users or (() if uid is None else (_Rule("*", True, 0, 0, uid),))
            groups = groups or (() if gid is None else (_Rule("*", True, 0, 0, gid),))
        return users, groups

    def learn(self, uid: int, uname: bytes | None, gid: int, gname: bytes | None) -> None:
        """Names the sender gave for its ids (the first time each id appears)."""
        if uname:
            self.users.learn(uid, uname.decode("utf-8", "replace"))
        if gname:
            self.groups.learn(gid, gname.decode("utf-8", "replace"))

    def batch(self, batch: DirBatch) -> DirBatch:
        """The batch with every entry's owner and group as this side should set them."""
        if not self._ruled and not self.users.moved and not self.groups.moved:
            return batch
        uid_of, gid_of = self.users, self.groups
        entries = []
        changed = False
        for entry in batch.entries:
            uid, gid = uid_of(entry.uid), gid_of(entry.gid)
            if uid != entry.uid or gid != entry.gid:
                entry = entry._replace(uid=uid, gid=gid)
                changed = True
            entries.append(entry)
        return DirBatch(batch.dir_name, tuple(entries), batch.expanded) if changed else batch

    def batches(self, batches: Iterable[DirBatch]) -> Iterable[DirBatch]:
        return map(self.batch, batches) if self.active else batches
