"""-y/--fuzzy against rsync: a missing file's delta basis is a similar file of its directory.

rsync is the oracle twice over: its --debug=fuzzy2 lines give the name distances that
zcsync.fuzzy must compute, and differential runs (local --no-whole-file, push and pull
over a real sshd) must leave the same trees with the same "Literal data" / "Matched
data" in --stats, which shows that both took the same basis.
"""
from __future__ import annotations

import os
import pathlib
import random
import re
import shutil

import pytest

from tests.oracle import differential, output_lines, run_rsync, run_zcsync
from zcsync import fuzzy

from .sshd import direction_paths, remote_zcsync_path

OLD = 1_500_000_000  # the destination's files: older than the sources, so never up to date
SIZE = 1 << 20


def stat_of(out: str, what: str) -> int:
    m = re.search(rf"^{what}: ([\d,]+)", out, re.M)
    assert m, f"no {what!r} in:\n{out}"
    return int(m.group(1).replace(",", ""))


def _same_stats(rs, zc) -> int:
    """Literal and matched data equal in both runs; returns the matched bytes."""
    for what in ("Literal data", "Matched data"):
        theirs, ours = stat_of(rs.stdout, what), stat_of(zc.stdout, what)
        assert ours == theirs, f"{what}: zcsync {ours}, rsync {theirs}\n{zc.stdout}\n{rs.stdout}"
    return stat_of(zc.stdout, "Matched data")


def _edit(data: bytes, rnd: random.Random) -> bytes:
    out = bytearray(data)
    for i in range(8):
        pos = (i * len(data)) // 8 + rnd.randrange(len(data) // 16)
        out[pos:pos + 64] = rnd.randbytes(64)
    return bytes(out) + rnd.randbytes(len(data) // 20)


def rotated(src: pathlib.Path, dst: pathlib.Path) -> None:
    """A differential prepare(): the destination has yesterday's files under other names.

    - log.1 -> log.2: a rotated log, edited and grown (found by name: log.1 is nearest);
    - data.csv -> archive-2024-01-01.bin: same content, size and mtime, a far name (found
      by size and time only);
    - notes.txt: new, nothing like it (no basis);
    - unrelated, far-named files that must not be chosen.
    """
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(dst, ignore_errors=True)
    (src / "sub").mkdir(parents=True)
    (dst / "sub").mkdir(parents=True)
    rnd = random.Random("rotated")
    old_log = rnd.randbytes(SIZE)
    (dst / "log.1").write_bytes(old_log)
    (src / "log.2").write_bytes(_edit(old_log, rnd))
    data = rnd.randbytes(SIZE // 2)
    (dst / "sub" / "archive-2024-01-01.bin").write_bytes(data)
    (src / "sub" / "data.csv").write_bytes(data)
    os.utime(src / "sub" / "data.csv", (OLD + 5, OLD + 5))
    os.utime(dst / "sub" / "archive-2024-01-01.bin", (OLD + 5, OLD + 5))
    (src / "notes.txt").write_bytes(rnd.randbytes(SIZE // 4))
    (dst / "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzz.q").write_bytes(rnd.randbytes(SIZE // 4))
    for path in dst.rglob("*"):
        if path.is_file() and path.name != "archive-2024-01-01.bin":
            os.utime(path, (OLD, OLD))
    for d in (src / "sub", src):
        os.utime(d, (OLD + 7, OLD + 7))


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


# -- local --no-whole-file -------------------------------------------------------------

def test_local_fuzzy_like_rsync(tmp_path):
    """The rotated log is rebuilt from log.1, the renamed file from its same-size-and-time
    twin: rsync's literal and matched bytes, and its -i lines (a fuzzy basis shows as new)."""
    rs, zc = differential(tmp_path, ["-a", "--no-W", "-y", "--stats", "-i"], seed=1, prepare=rotated)
    matched = _same_stats(rs, zc)
    assert matched > SIZE  # most of log.2 and all of data.csv
    assert output_lines(rs.stdout) == output_lines(zc.stdout)


@pytest.mark.parametrize("options", [["-a", "--no-W"], ["-a", "-y"], ["-a", "-W", "-y"], ["-a", "--no-W", "-y", "--no-fuzzy"],
                                     ["-a", "--no-W", "-yyy", "--no-y"]],
                         ids=["no-y", "whole-default", "whole", "no-fuzzy", "no-y-short"])
def test_local_no_fuzzy_basis_without_delta_or_y(tmp_path, options):
    """Without -y (or with whole files, the local default) nothing is matched, as in rsync."""
    rs, zc = differential(tmp_path, [*options, "--stats"], seed=1, prepare=rotated)
    assert _same_stats(rs, zc) == 0


def test_local_fuzzy_append_takes_no_basis(tmp_path):
    """--append -y: new files come whole, with the source's content. (rsync appends onto the
    fuzzy basis as if it were the file's start, and skips a file whose basis is not
    shorter: log.2 would end up as log.1 plus the source's tail, data.csv missing.)"""
    src, dst = tmp_path / "src", tmp_path / "dst"
    rotated(src, dst)
    res = run_zcsync(["-a", "--no-W", "-y", "--append", "--stats", f"{src}/", f"{dst}/"])
    assert res.returncode == 0, res.stderr
    assert stat_of(res.stdout, "Matched data") == 0
    for rel in ("log.2", "sub/data.csv", "notes.txt"):
        assert (dst / rel).read_bytes() == (src / rel).read_bytes()


@pytest.mark.parametrize("delete", ["--delete", "--delete-before", "--delete-after", "--delete-delay"])
def test_local_fuzzy_with_delete_like_rsync(tmp_path, delete):
    """--delete (during) and --delete-before remove the extraneous files before they can be
    a basis, --delete-after and --delete-delay after: as rsync's manual warns."""
    rs, zc = differential(tmp_path, ["-a", "--no-W", "-y", "--stats", delete], seed=1, prepare=rotated)
    matched = _same_stats(rs, zc)
    assert (matched == 0) == (delete in ("--delete", "--delete-before"))


def test_local_fuzzy_with_delete_protected_like_rsync(tmp_path):
    """A file the filter rules protect from --delete stays a basis."""
    rs, zc = differential(tmp_path, ["-a", "--no-W", "-y", "--stats", "--delete", "--filter=P log.*"],
                          seed=1, prepare=rotated)
    assert _same_stats(rs, zc) > SIZE // 2


def test_local_fuzzy_dry_run_like_rsync(tmp_path):
    rs, zc = differential(tmp_path, ["-a", "--no-W", "-y", "-n", "-i"], seed=1, prepare=rotated)
    assert output_lines(rs.stdout) == output_lines(zc.stdout)


def _symlinked(src: pathlib.Path, dst: pathlib.Path) -> None:
    """log.1 in the destination is a symlink to a file outside it, the only near name."""
    rotated(src, dst)
    outside = dst.parent / "outside.log"
    os.rename(dst / "log.1", outside)
    os.symlink("../outside.log", dst / "log.1")
    os.remove(dst / "sub" / "archive-2024-01-01.bin")


def test_local_symlink_is_no_basis_like_rsync(tmp_path):
    """A symlink is never a basis (rsync lstats the directory's names; zcsync never follows one)."""
    rs, zc = differential(tmp_path, ["-a", "--no-W", "-y", "--stats"], seed=1, prepare=_symlinked)
    assert _same_stats(rs, zc) == 0


def _updated_first(src: pathlib.Path, dst: pathlib.Path) -> None:
    """a.1 is both updated and the nearest name to the new a.2; b.1 -> b.2 as a control."""
    rotated(src, dst)
    rnd = random.Random("first")
    old = rnd.randbytes(SIZE // 2)
    (dst / "a.1").write_bytes(old)
    (src / "a.1").write_bytes(rnd.randbytes(SIZE // 2))  # replaced by the run, before a.2
    (src / "a.2").write_bytes(_edit(old, rnd))
    for p in (dst / "a.1", src):
        os.utime(p, (OLD, OLD))


@pytest.mark.parametrize("where", ["local", "push"])
def test_updated_file_is_no_basis(tmp_path, sshd, where):
    """A file the run replaces before it gets to the missing one is not its basis (rsync's
    FLAG_FILE_SENT; rsync may still use it when it read the directory first), so that a.2
    is not rebuilt from blocks that are gone: the same tree as rsync's."""
    remote = {"env": sshd.env(), "paths": direction_paths("push"),
              "zcsync_extra": ["--zcsync-path", remote_zcsync_path()]} if where == "push" else {}
    differential(tmp_path, ["-a", "--no-W", "-y", "--stats"], seed=1, prepare=_updated_first, **remote)


# -- -yy: the --*-dest dirs too ----------------------------------------------------------

def _in_compare_dir(src: pathlib.Path, dst: pathlib.Path) -> None:
    """The old files are in ../prev (a --compare-dest / --link-dest dir), dst is empty."""
    rotated(src, dst)
    prev = dst.parent / "prev"
    shutil.rmtree(prev, ignore_errors=True)
    os.rename(dst, prev)
    dst.mkdir()


@pytest.mark.parametrize("kind", ["--compare-dest=../prev", "--copy-dest=../prev", "--link-dest=../prev"])
@pytest.mark.parametrize("level", ["-y", "-yy"])
def test_local_fuzzy_in_basis_dirs_like_rsync(tmp_path, kind, level):
    """-yy finds the basis in the --*-dest dir's copy of the directory; -y does not look there."""
    rs, zc = differential(tmp_path, ["-a", "--no-W", level, "--stats", kind], seed=1, prepare=_in_compare_dir)
    matched = _same_stats(rs, zc)
    assert (matched > SIZE) == (level == "-yy")


def _same_name_in_compare_dir(src: pathlib.Path, dst: pathlib.Path) -> None:
    """dst has log.1 (log.2's old version); ../prev has an unrelated file named log.2."""
    rotated(src, dst)
    prev = dst.parent / "prev"
    shutil.rmtree(prev, ignore_errors=True)
    prev.mkdir()
    (prev / "log.2").write_bytes(random.Random("unrelated").randbytes(SIZE))
    os.utime(prev / "log.2", (OLD, OLD))


@pytest.mark.parametrize("level", ["-y", "-yy"])
def test_local_basis_dir_copy_before_fuzzy_like_rsync(tmp_path, level):
    """A --*-dest dir's file of the same name is the basis, however unlike: no fuzzy search then."""
    rs, zc = differential(tmp_path, ["-a", "--no-W", level, "--stats", "-i", "--compare-dest=../prev"], seed=1,
                          prepare=_same_name_in_compare_dir)
    _same_stats(rs, zc)
    assert output_lines(rs.stdout) == output_lines(zc.stdout)


# -- over ssh ----------------------------------------------------------------------------

@pytest.mark.parametrize("direction", ["push", "pull"])
def test_ssh_fuzzy_like_rsync(tmp_path, sshd, direction):
    """Delta is the default over ssh: -y finds the same bases at the receiving end, remote
    (push) or local (pull)."""
    rs, zc = differential(tmp_path, ["-a", "-y", "--stats", "-i"], seed=1, prepare=rotated, env=sshd.env(),
                          paths=direction_paths(direction), zcsync_extra=["--zcsync-path", remote_zcsync_path()])
    assert _same_stats(rs, zc) > SIZE
    assert output_lines(rs.stdout) == output_lines(zc.stdout)


def test_ssh_without_fuzzy_matches_nothing(tmp_path, sshd):
    rs, zc = differential(tmp_path, ["-a", "--stats"], seed=1, prepare=rotated, env=sshd.env(),
                          paths=direction_paths("push"), zcsync_extra=["--zcsync-path", remote_zcsync_path()])
    assert _same_stats(rs, zc) == 0


def test_ssh_fuzzy_symlink_is_no_basis(tmp_path, sshd):
    rs, zc = differential(tmp_path, ["-a", "-y", "--stats"], seed=1, prepare=_symlinked, env=sshd.env(),
                          paths=direction_paths("push"), zcsync_extra=["--zcsync-path", remote_zcsync_path()])
    assert _same_stats(rs, zc) == 0


# -- through the daemon ------------------------------------------------------------------

@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """A zcsync daemon with two modules: [open], and [hiding], which excludes log.1."""
    if os.geteuid() != 0:
        pytest.skip("the daemon switches uid/gid: need root")
    from .daemon_fixture import ZcsyncDaemon
    root = tmp_path_factory.mktemp("fuzzy-daemon")
    common = "    read only = no\n    uid = root\n    gid = root\n"
    zd = ZcsyncDaemon(root / "zdaemon")
    zd.write_config(f"[open]\n    path = {root / 'open'}\n{common}"
                    f"[hiding]\n    path = {root / 'hiding'}\n    exclude = log.1\n{common}")
    for module in ("open", "hiding"):
        (root / module).mkdir()
    zd.start()
    try:
        yield zd, root
    finally:
        zd.stop()


@pytest.mark.parametrize("module", ["open", "hiding"])
def test_daemon_push_never_uses_an_excluded_basis(tmp_path, daemon, module):
    """Through the daemon -y finds log.1 for log.2, unless the module excludes log.1: a
    basis's signature goes to the client, and nothing the module hides may reach it."""
    zd, root = daemon
    src, dst = tmp_path / "src", root / module / "dst"
    rotated(src, dst)
    os.remove(dst / "sub" / "archive-2024-01-01.bin")
    res = run_zcsync(["-a", "-y", "--stats", f"{src}/", zd.url(module, "dst/")])
    assert res.returncode == 0, res.stderr
    assert (dst / "log.2").read_bytes() == (src / "log.2").read_bytes()
    matched = stat_of(res.stdout, "Matched data")
    assert (matched > SIZE // 2) == (module == "open"), res.stdout
