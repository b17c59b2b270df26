"""zcsync.fuzzy: rsync's suffix rule, and the C name pass against the Python one."""
from __future__ import annotations

import random

import pytest

from zcsync import fuzzy


@pytest.mark.parametrize(("name", "suffix"), [
    (b"log.2", b".2"), (b"a.tar.gz", b".gz"), (b".bashrc", b""), (b"Makefile", b""),
    (b"foo.bak", b""), (b"foo.c.bak", b".c"), (b"x.c~", b".c"), (b"x.c.~1~", b".c"),
    (b"data.1.2", b".1"), (b"f.10.txt", b".txt"), (b"a.", b"."), (b"foo.c.orig", b".c"),
    # rsync compares ".bak" with the whole rest of the name (strcmp), so these are kept:
    (b"foo.bak~", b".bak"), (b"foo.bak.old", b".bak"),
])
def test_filename_suffix_as_rsync(name, suffix):
    assert fuzzy.filename_suffix(name) == suffix


def test_distances_as_rsync_prints_them():
    """rsync -y --debug=fuzzy2: log.1 for log.2 is 11.00011, other.bin 38.02918."""
    def total(cand: bytes, want: bytes) -> int:
        return fuzzy.distance(cand, want) + 10 * fuzzy.distance(fuzzy.filename_suffix(cand),
                                                                fuzzy.filename_suffix(want))
    assert total(b"log.1", b"log.2") == (11 << 16) + 11
    assert total(b"other.bin", b"log.2") == (38 << 16) + 2918


@pytest.mark.skipif(fuzzy.scan is fuzzy.py_scan, reason="zcsync._fuzzy is not built")
def test_c_scan_is_the_python_scan():
    rnd = random.Random(7)
    alphabet = b"abc.-~019xyz\x80\xe9\xff"

    def name() -> bytes:
        return bytes(rnd.choice(alphabet) for _ in range(rnd.randrange(0, 14)))
    for _ in range(3000):
        names = [name() or b"a" for _ in range(rnd.randrange(1, 12))]
        suffixes = [fuzzy.filename_suffix(n) for n in names]
        want = name() or b"q"
        lowest = rnd.choice([fuzzy.LIMIT, rnd.randrange(0, fuzzy.LIMIT), 0xFFFFFFFF])
        args = (names, suffixes, want, fuzzy.filename_suffix(want), lowest)
        assert fuzzy.scan(*args) == fuzzy.py_scan(*args), args
    with pytest.raises(TypeError):
        fuzzy.scan(["a"], [b""], b"a", b"", 1)
    with pytest.raises(ValueError):
        fuzzy.scan([b"a"], [], b"a", b"", 1)
