"""-y/--fuzzy: the choice of a basis, against rsync's own numbers (its --debug=fuzzy2 lines)."""
from __future__ import annotations

import os
import random
import re

import pytest

from tests.oracle import run_rsync
from zcsync import fuzzy

OLD = 1_500_000_000


# -- the name distance, against rsync's own numbers ------------------------------------

_DISTANCE = re.compile(r"^fuzzy distance for (.*) = (\d+)\.(\d{5})$")
_SELECTED = re.compile(r"^fuzzy basis selected for (.*): (.*)$")


def _names(rnd: random.Random, wanted: str) -> list[str]:
    """Names near and far from wanted: edits, suffix changes, rotations, dot files, backups."""
    stem, _, ext = wanted.partition(".")
    out = {f"{stem}.{ext}.bak", f"{stem}.{ext}~", f".{wanted}", f"{stem}.1", f"{stem}.{ext}.1",
           f"{stem}-old.{ext}", f"{stem.upper()}.{ext}", f"{stem}.{ext}.gz", f"{stem}.orig", f"{stem}",
           f"{stem}.{ext}.~3~", f"x{stem}.{ext}", "a", "zz.zz", f"{stem[:-1]}.{ext}", f"{stem}é.{ext}"}
    alphabet = "abcdefxyzABC0189._-~"
    while len(out) < 60:
        chars = list(wanted)
        for _ in range(rnd.randrange(1, 5)):
            pos = rnd.randrange(len(chars) + 1)
            op = rnd.randrange(3)
            if op == 0 and pos < len(chars):
                del chars[pos]
            elif op == 1 and pos < len(chars):
                chars[pos] = rnd.choice(alphabet)
            else:
                chars.insert(pos, rnd.choice(alphabet))
        name = "".join(chars)
        if name and name not in (".", "..", wanted) and "/" not in name:
            out.add(name)
    return sorted(n for n in out if n not in ("", ".", "..", wanted))


@pytest.mark.parametrize("wanted", ["report-2024.txt", "access.log.2", "backup.tar.gz", "Makefile", ".bashrc"])
def test_distance_and_choice_like_rsync(tmp_path, wanted):
    """For a missing file among 60 similar names, rsync's printed distances (those it worked
    out in full) are zcsync.fuzzy's, and both pick the same basis."""
    rnd = random.Random(wanted)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / wanted).write_bytes(b"new content\n")
    candidates = []
    for i, name in enumerate(_names(rnd, wanted)):
        (dst / name).write_bytes(b"x" * (100 + i))  # no size matches: the names decide
        os.utime(dst / name, (OLD, OLD))
        candidates.append(fuzzy.Candidate.of(os.fsencode(name), 100 + i, OLD * 10**9))
    res = run_rsync(["-r", "-y", "-n", "--debug=fuzzy2", f"{src}/", f"{dst}/"])
    printed = {}
    selected = None
    for line in res.stdout.splitlines():
        if m := _DISTANCE.match(line):
            printed[m.group(1)] = (int(m.group(2)) << 16) + int(m.group(3))
        elif m := _SELECTED.match(line):
            selected = m.group(2)
    assert len(printed) == len(candidates), res.stdout
    want = os.fsencode(wanted)
    exact = 0
    for cand in candidates:
        theirs = printed[os.fsdecode(cand.name)]
        if theirs >= 0xFFFF0000:
            continue  # rsync cut it short (no match): zcsync may stop sooner
        ours = fuzzy.distance(cand.name, want) + 10 * fuzzy.distance(cand.suffix, fuzzy.filename_suffix(want))
        assert ours == theirs, f"{cand.name!r}: zcsync {ours >> 16}.{ours & 0xFFFF:05d}, rsync {theirs >> 16}.{theirs & 0xFFFF:05d}"
        exact += 1
    assert exact >= 5
    found = fuzzy.choose(want, 12, OLD * 10**9 + 1, [candidates], lambda a, b: a // 10**9 == b // 10**9)
    assert (os.fsdecode(found[1].name) if found else None) == selected


def test_size_and_time_match_first_like_rsync():
    """A file of the same size and mtime wins over any name, the first of them by name."""
    cands = [fuzzy.Candidate.of(b"a.txt", 10, 5), fuzzy.Candidate.of(b"b.bin", 7, 9 * 10**9),
             fuzzy.Candidate.of(b"c.bin", 7, 9 * 10**9 + 5)]
    found = fuzzy.choose(b"a.txt~", 7, 9 * 10**9 + 1, [cands], lambda a, b: a // 10**9 == b // 10**9)
    assert found == (0, cands[1])
    # Equal distances: the one listed last wins (rsync's <=), across lists too.
    found = fuzzy.choose(b"f.2", 1, 0, [[fuzzy.Candidate.of(b"f.1", 5, 1)], [fuzzy.Candidate.of(b"f.3", 5, 1)]],
                         lambda a, b: False)
    assert found[0] == 1 and found[1].name == b"f.3"
