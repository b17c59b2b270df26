"""Local sync against the oracle: rsync and zcsync on identical trees must leave identical results."""
from __future__ import annotations

import concurrent.futures
import os
import pathlib
import stat
import shutil
import subprocess
import tempfile
import time
import sys

import pytest

from tests.oracle import compare_kwargs_for, differential, output_lines, run_rsync, run_zcsync
from tests.treecmp import assert_same_tree

SEEDS = [1, 2, 3]


def _itemize_same(rs, zc) -> None:
    want, got = output_lines(rs.stdout), output_lines(zc.stdout)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    assert want == got, f"only rsync printed: {missing}\nonly zcsync printed: {extra}"


@pytest.mark.parametrize("seed", SEEDS)
def test_fresh_copy(tmp_path, seed):
    rs, zc = differential(tmp_path, ["-aS", "-i"], seed=seed)
    _itemize_same(rs, zc)


@pytest.mark.parametrize("seed", SEEDS)
def test_fresh_copy_hard_links(tmp_path, seed):
    # Which name of a hard-link group rsync sends first (and so its -i lines) is an
    # artefact of its incremental recursion; the trees are compared, not those lines.
    differential(tmp_path, ["-aHS"], seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_resync_with_delete(tmp_path, seed):
    rs, zc = differential(tmp_path, ["-a", "--delete", "-i"], seed=seed, mutate=True)
    _itemize_same(rs, zc)


@pytest.mark.parametrize("seed", SEEDS)
def test_resync_hard_links(tmp_path, seed):
    differential(tmp_path, ["-aH", "--delete"], seed=seed, mutate=True)


@pytest.mark.parametrize("mode", ["--delete-before", "--delete-after", "--delete-during", "--delete-delay"])
def test_delete_modes(tmp_path, mode):
    differential(tmp_path, ["-a", mode], seed=7, mutate=True)


def _transferred(out: str) -> int:
    import re
    m = re.search(r"^Number of regular files transferred: ([\d,]+)", out, re.M)
    assert m, out
    return int(m.group(1).replace(",", ""))


@pytest.mark.parametrize("extra", [[], ["--size-only"], ["--link-dest=../src"]], ids=["alone", "size-only", "link-dest"])
def test_ignore_times_transfers_what_rsync_transfers(tmp_path, extra):
    """-I: even files whose size and time match are sent (and not hard-linked from a
    --link-dest); --size-only still wins."""
    rs, zc = differential(tmp_path, ["-a", "-I", "-i", "--stats", *extra], seed=3, mutate=True)
    _itemize_same(rs, zc)
    assert _transferred(zc.stdout) == _transferred(rs.stdout) > 0


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_stats_count_devices_apart_from_specials(tmp_path):
    """rsync's --stats lists the kinds that occur: reg, dir, link, dev (character and block
    devices) and special (fifos, sockets), and none that does not."""
    def prepare(src: pathlib.Path, dst: pathlib.Path) -> None:
        os.mknod(src / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        os.mkfifo(src / "fifo")
        for path in (src / "null", src / "fifo", src):
            os.utime(path, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9), follow_symlinks=False)
    rs, zc = differential(tmp_path, ["-a", "--stats"], seed=2, prepare=prepare)
    want = [line for line in rs.stdout.splitlines() if line.startswith("Number of")]
    assert "dev: 1" in want[0], want
    assert want == [line for line in zc.stdout.splitlines() if line.startswith("Number of")]


@pytest.mark.parametrize(("options", "mutate"), [
    (["-am", "-i"], False),
    (["-am", "-i", "--include=*/", "--include=*.txt", "--exclude=*"], False),
    (["-am", "-i", "--delete", "--include=*/", "--include=*.txt", "--exclude=*"], True),
    (["-am", "-i", "--filter=P empty/"], False),
    (["-dm", "-i"], False),
], ids=["alone", "only-txt", "only-txt-delete", "protected", "dirs"])
def test_prune_empty_dirs_like_rsync(tmp_path, options, mutate):
    """-m drops directories with no file at any depth from the list (with --delete they
    are deleted in the destination too, but for what the excludes protect inside them);
    a protected one stays, and with -d every directory is empty."""
    # A directory left in place by --delete is not in the list: it keeps the time of the
    # deletion, which differs between the two runs.
    rs, zc = differential(tmp_path, options, seed=5, mutate=mutate, compare_kwargs={"dir_times": not mutate})
    if not mutate:
        _itemize_same(rs, zc)
    else:  # rsync may print a "cannot delete non-empty directory" note twice
        assert sorted(set(output_lines(rs.stdout))) == sorted(set(output_lines(zc.stdout)))


def _extraneous_dir_with_excluded_files(src: pathlib.Path, dst: pathlib.Path) -> None:
    """dst/gone/ is not in the source; some of what it holds is excluded."""
    for rel in ("gone/a.txt", "gone/b.log", "gone/sub/c.txt", "gone/sub/d.log", "gone/other/e.txt"):
        path = dst / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    _age(*(dst / "gone").rglob("*"), dst / "gone")


@pytest.mark.parametrize("rules", [
    ["--exclude=*.log"], ["--filter=P *.log"], ["--filter=-p *.log"], ["--exclude=*.log", "--delete-excluded"],
    ["--exclude=*.log", "--max-delete=2"],
], ids=["exclude", "protect", "perishable", "delete-excluded", "max-delete"])
def test_delete_keeps_what_excludes_protect_inside_an_extraneous_dir(tmp_path, rules):
    """rsync deletes an extraneous directory's names one by one, deepest first, and keeps
    those the receiver's rules protect (perishable ones aside), and so the directories
    holding them. (zcsync removed the whole directory until 2026-12.)"""
    rs, zc = differential(tmp_path, ["-a", "--delete", "-i", *rules], seed=6, mutate=True,
                          prepare=_extraneous_dir_with_excluded_files, compare_kwargs={"dir_times": False})
    # rsync may print a "cannot delete non-empty directory" note twice
    assert sorted(set(output_lines(rs.stdout))) == sorted(set(output_lines(zc.stdout)))


@pytest.mark.parametrize(("options", "suffix"), [([], ""), (["-r"], "/"), (["-d"], "/"), (["-rlpt"], "/")],
                         ids=["no-recursion", "no-links", "dirs", "no-devices"])
def test_without_v_the_same_notices_as_rsync(tmp_path, options, suffix):
    """rsync prints some lines at the default verbosity: "skipping directory src" (no -r),
    "skipping non-regular file" (a symlink without -l, a device without -D); -q silences them."""
    rs, zc = differential(tmp_path, options, seed=3, src_suffix=suffix)
    assert rs.stdout and output_lines(rs.stdout) == output_lines(zc.stdout)
    rs, zc = differential(tmp_path, ["-q", *options], seed=3, src_suffix=suffix)
    assert rs.stdout == zc.stdout == ""


def test_without_v_a_directory_left_by_delete_is_noted(tmp_path):
    rs, zc = differential(tmp_path, ["-a", "--delete", "--exclude=*.log"], seed=6, mutate=True,
                          prepare=_extraneous_dir_with_excluded_files, compare_kwargs={"dir_times": False})
    assert "cannot delete non-empty directory: gone" in rs.stdout
    assert sorted(set(output_lines(rs.stdout))) == sorted(set(output_lines(zc.stdout)))


def _links_in_and_out(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Symlinks at three depths whose targets stay inside the tree or climb out of it."""
    targets = ["x", "../x", "../../x", "./../x", "..", "../..", "../../", "x/..", "x/../..", "x/../y",
               "d/../../x", "/abs", "..//x", "..//../x", ".", "./", "../.", "x/./y", "../../../x", "..x", "x/..y"]
    for where in ("", "a/", "a/b/", "a/b/c/"):
        (src / where).mkdir(parents=True, exist_ok=True)
        for i, target in enumerate(targets):
            os.symlink(target, src / f"{where}link{i}")
            os.utime(src / f"{where}link{i}", ns=(1_600_000_000 * 10**9,) * 2, follow_symlinks=False)
    for where in ("a/b/c", "a/b", "a", ""):
        os.utime(src / where, ns=(1_600_000_000 * 10**9,) * 2)


@pytest.mark.parametrize("suffix", ["/", ""], ids=["contents", "named"])
def test_safe_links_ignores_what_rsync_ignores(tmp_path, suffix):
    rs, zc = differential(tmp_path, ["-a", "--safe-links", "-i"], seed=2, src_suffix=suffix,
                          prepare=_links_in_and_out)
    _itemize_same(rs, zc)


@pytest.mark.parametrize("mutate", [False, True], ids=["fresh", "resync"])
def test_omit_link_times(tmp_path, mutate):
    rs, zc = differential(tmp_path, ["-a", "-J", "-i"], seed=7, mutate=mutate)
    _itemize_same(rs, zc)


def test_delete_delay_deletes_after_the_transfer(tmp_path):
    """--delete-delay finds the extraneous names during the transfer and deletes them once it
    is done: every *deleting line comes after the last transfer line, as with rsync."""
    rs, zc = differential(tmp_path, ["-a", "--delete-delay", "-i"], seed=7, mutate=True)
    for out in (rs.stdout, zc.stdout):
        lines = out.splitlines()
        deleting = [i for i, line in enumerate(lines) if line.startswith("*deleting")]
        sent = [i for i, line in enumerate(lines) if line.startswith(">f")]
        assert deleting and sent and min(deleting) > max(sent), out


@pytest.mark.parametrize("level", ["-h", "-hh", "--no-h", "--no-human-readable"])
def test_human_readable_numbers_like_rsync(tmp_path, level):
    """-avh transfers (it is not a request for help) and prints sizes as rsync does."""
    rs, zc = differential(tmp_path, ["-av", level, "--stats"], seed=4)
    wanted = ("Number of files", "Total file size", "Total transferred file size", "Literal data", "Matched data")

    def sizes(out: str) -> list[str]:
        return [line for line in out.splitlines() if line.startswith(wanted)]
    assert len(sizes(rs.stdout)) == len(wanted) and sizes(rs.stdout) == sizes(zc.stdout)
    listing = [["--list-only", "-r", level, "src/"]]
    from tests.oracle import run_rsync, run_zcsync
    base = next(tmp_path.glob("differential-*")) / "rsync"
    for args in listing:
        assert run_rsync(args, cwd=base).stdout == run_zcsync(args, cwd=base).stdout


def test_h_alone_shows_the_help():
    from tests.oracle import run_zcsync
    res = run_zcsync(["-h"])
    assert res.returncode == 0 and "--human-readable" in res.stdout


def _cvs_junk(src: pathlib.Path, dst: pathlib.Path) -> None:
    for rel in ("x.o", "core", "CVS/Entries", "d/y.bak", "d/keep.txt", "d/.cvsignore", "d/skip.me", "e/skip.me"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    (src / "d/.cvsignore").write_text("*.me\n")
    _age(*src.rglob("*"), src)


@pytest.mark.parametrize("options", [
    ["-aC", "-i"],
    ["-a", "--cvs-exclude", "--include=core", "-i"],  # -C's rules come after the user's, as in rsync
    ["-a", "--del", "-i"],
    ["-aL", "--delete", "--ignore-errors", "-i"],  # a dangling link is a read error: deletion goes on
    ["-a", "--no-i-r", "-i"],
], ids=["cvs-exclude", "cvs-exclude-after-include", "del", "ignore-errors", "no-i-r"])
def test_more_rsync_options_like_rsync(tmp_path, options):
    rs, zc = differential(tmp_path, options, seed=8, mutate=True, prepare=_cvs_junk)
    _itemize_same(rs, zc)


def test_ignore_missing_args_like_rsync(tmp_path):
    rs, zc = differential(tmp_path, ["-a", "--ignore-missing-args", "-i"], seed=8, paths=["missing", "src/", "dst"])
    assert rs.returncode == zc.returncode == 0
    _itemize_same(rs, zc)
    # A missing parent is still an error: rsync cannot change into it.
    rs, zc = differential(tmp_path, ["-a", "--ignore-missing-args"], seed=8, paths=["also/missing", "src/", "dst"])
    assert rs.returncode == zc.returncode == 23


def _keep_dir_with_other_time(src: pathlib.Path, dst: pathlib.Path) -> None:
    """src/keep and dst/keep exist with different times; dst/keep holds a file."""
    (src / "keep").mkdir()
    (dst / "keep").mkdir(parents=True)
    (dst / "keep" / "missing").write_text("old")
    _age(src / "keep", dst / "keep" / "missing", src)
    os.utime(dst / "keep", ns=(1_500_000_000 * 10**9,) * 2)


@pytest.mark.parametrize("paths", [
    ["src/./keep/missing", "src/./nosuch/f", "dst"],  # -R: looked up from "/./", no change into the parent
    ["src/./keep/missing", "dst"],  # a name that is not sent brings no implied parent
], ids=["missing-parent", "implied-parent"])
def test_ignore_missing_args_relative_like_rsync(tmp_path, paths):
    rs, zc = differential(tmp_path, ["-aR", "--ignore-missing-args", "-i"], seed=8, paths=paths,
                          prepare=_keep_dir_with_other_time)
    assert rs.returncode == zc.returncode == 0
    _itemize_same(rs, zc)


def test_ignore_missing_args_trailing_slash_is_an_error_like_rsync(tmp_path):
    """`missing/` names the directory's contents: rsync changes into it, which fails."""
    rs, zc = differential(tmp_path, ["-a", "--ignore-missing-args"], seed=8, paths=["missing/", "src/", "dst"])
    assert rs.returncode == zc.returncode == 23


def _links_to_dirs_and_out(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Beside src, a directory `outside`; in src, links to it, to a directory inside, and
    dangling ones, in and out of the tree."""
    outside = src.parent / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "o.txt").write_text("outside")
    (outside / "deep" / "d.txt").write_text("deep")
    (src / "in").mkdir()
    (src / "in" / "i.txt").write_text("inside")
    # (No link to an ancestor: followed, it makes a tree that grows until the kernel's ELOOP,
    # exponentially with several links, for rsync and zcsync alike.)
    links = {"to-outside": "../outside", "to-outside-file": "../outside/o.txt", "to-in": "in",
             "in/to-outside": "../../outside/deep", "dangling-out": "../nowhere", "dangling-in": "nowhere"}
    for rel, target in links.items():
        os.symlink(target, src / rel)
    for path in [*outside.rglob("*"), outside, *src.rglob("*"), src]:
        os.utime(path, ns=(1_600_000_000 * 10**9,) * 2, follow_symlinks=False)


@pytest.mark.parametrize("options", [["-a", "--copy-unsafe-links"], ["-ak"], ["-ak", "--copy-unsafe-links"],
                                     ["-a", "--copy-unsafe-links", "--safe-links"]],
                         ids=["copy-unsafe-links", "copy-dirlinks", "both", "with-safe-links"])
def test_links_sent_as_what_they_point_to_like_rsync(tmp_path, options):
    """-k sends a link to a directory as the directory; --copy-unsafe-links a link out of
    the tree as what it points to (an unsafe one that leads nowhere is an error, 23)."""
    rs, zc = differential(tmp_path, [*options, "-i"], seed=2, prepare=_links_to_dirs_and_out)
    _itemize_same(rs, zc)


def test_keep_dirlinks_is_refused(tmp_path):
    from tests.oracle import run_zcsync
    (tmp_path / "src").mkdir()
    res = run_zcsync(["-aK", f"{tmp_path}/src/", f"{tmp_path}/dst"])
    assert res.returncode == 1 and "never follows a symlink in the destination" in res.stderr
    assert not (tmp_path / "dst").exists()


def _modes_to_fix(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Files whose execute bits differ between source and (older) destination."""
    cases = {"x-to-plain": (0o755, 0o644), "plain-to-x": (0o644, 0o640), "x-both": (0o750, 0o700),
             "neither": (0o600, 0o644), "setuid-dest": (0o755, 0o4644)}
    for name, (smode, dmode) in cases.items():
        for root, mode, text in ((src, smode, "new"), (dst, dmode, "old")):
            root.mkdir(exist_ok=True)
            (root / name).write_text(text)
            os.chmod(root / name, mode)
    _age(*dst.iterdir(), dst, src)


@pytest.mark.parametrize("options", [["-rtE"], ["-rtE", "--chmod=g+w"], ["-rtpE"], ["-rt"]],
                         ids=["E", "E-chmod", "E-with-p", "without-E"])
def test_executability_like_rsync(tmp_path, options):
    """-E without -p: an existing file keeps its permissions, but its execute bits follow
    the source's (added for whoever may read it); new files as without -E."""
    rs, zc = differential(tmp_path, [*options, "-i"], seed=9, mutate=True, prepare=_modes_to_fix,
                          compare_kwargs={"perms": True})
    _itemize_same(rs, zc)


def test_no_trailing_slash(tmp_path):
    rs, zc = differential(tmp_path, ["-a", "-i"], seed=4, src_suffix="")
    _itemize_same(rs, zc)


def test_no_trailing_slash_resync(tmp_path):
    differential(tmp_path, ["-a", "--delete"], seed=5, src_suffix="", mutate=True)


@pytest.mark.parametrize("rules", [
    ["--exclude=*.bin"],
    ["--exclude=/d0/", "--include=*.txt"],
    ["--include=*/", "--include=*.txt", "--exclude=*"],
    ["-f", "- **/sub*/**"],
])
def test_filters(tmp_path, rules):
    rs, zc = differential(tmp_path, ["-a", "-i", *rules], seed=8)
    _itemize_same(rs, zc)


def test_filters_protect_on_delete(tmp_path):
    differential(tmp_path, ["-a", "--delete", "--exclude=*.txt"], seed=9, mutate=True)


def test_delete_excluded(tmp_path):
    differential(tmp_path, ["-a", "--delete", "--delete-excluded", "--exclude=*.txt"], seed=9, mutate=True)


def test_dry_run_leaves_destination_untouched(tmp_path):
    rs, zc = differential(tmp_path, ["-a", "--delete", "-n", "-i"], seed=10, mutate=True)
    _itemize_same(rs, zc)


def test_dry_run_fresh(tmp_path):
    rs, zc = differential(tmp_path, ["-a", "-n", "-i"], seed=10)
    _itemize_same(rs, zc)


def test_backup(tmp_path):
    differential(tmp_path, ["-a", "--delete", "--backup"], seed=11, mutate=True)


def test_inplace_backup(tmp_path):
    """--inplace rewrites the file where it lies: the backup is a copy made first (zcsync
    made none until 2026-12). (rsync 3.5 fails with --inplace and a relative --backup-dir.)"""
    differential(tmp_path, ["-a", "--inplace", "--backup"], seed=11, mutate=True)
    assert list(tmp_path.glob("differential-*/zcsync/dst/**/*~"))


@pytest.mark.parametrize("backup", [["--backup"], []], ids=["with-b", "implied"])
def test_backup_dir(tmp_path, backup):
    """--backup-dir implies --backup, as in rsync (without -b zcsync used to make no backups)."""
    differential(tmp_path, ["-a", "--delete", *backup, "--backup-dir=../bak"], seed=12, mutate=True,
                 paths=["src/", "dst/"], compare_kwargs={})


def _age(*paths: pathlib.Path) -> None:
    """Give paths a past mtime: rsync skips setting a directory time that is in the same
    second as the one it already has (it ignores nanoseconds there), which would make
    a directory made during the test differ for reasons that are not under test."""
    for p in paths:
        os.utime(p, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789), follow_symlinks=False)


def _previous_snapshot(src: pathlib.Path, dst: pathlib.Path) -> None:
    """dst/prev holds an earlier copy of src; src then changes a little."""
    subprocess.run(["rsync", "-a", "--mkpath", f"{src}/", f"{dst}/prev/"], check=True)
    (src / "new-file").write_bytes(b"new")
    victim = next(p for p in sorted(src.rglob("*")) if p.is_file() and not p.is_symlink())
    victim.write_bytes(victim.read_bytes() + b"changed")
    _age(src, victim.parent, src / "new-file", victim)


@pytest.mark.parametrize("kind", ["link", "compare", "copy"])
def test_alt_dest(tmp_path, kind):
    rs, zc = differential(tmp_path, ["-a", "-i", f"--{kind}-dest=../prev"], seed=13,
                          prepare=_previous_snapshot, paths=["src/", "dst/new"])
    _itemize_same(rs, zc)


def changed_snapshot(src: pathlib.Path, dst: pathlib.Path) -> None:
    """dst/prev holds an earlier copy of src, with an older version of src/big.bin (512 KiB,
    since grown and edited) and an empty one of src/empty-there; dst/new, the destination,
    does not exist yet."""
    import random
    rnd = random.Random("changed-snapshot")
    old = rnd.randbytes(512 << 10)
    (src / "big.bin").write_bytes(old[:100_000] + rnd.randbytes(300) + old[100_000:] + rnd.randbytes(5000))
    (src / "empty-there").write_bytes(rnd.randbytes(50_000))
    subprocess.run(["rsync", "-a", "--mkpath", f"{src}/", f"{dst}/prev/"], check=True)
    (dst / "prev" / "big.bin").write_bytes(old)
    (dst / "prev" / "empty-there").write_bytes(b"")
    _age(src, dst / "prev" / "big.bin", dst / "prev" / "empty-there")


def stat_of(out: str, what: str) -> int:
    import re
    m = re.search(rf"^{what}: ([\d,]+)", out, re.M)
    assert m, f"no {what!r} in:\n{out}"
    return int(m.group(1).replace(",", ""))


@pytest.mark.parametrize("kind", ["link", "compare", "copy"])
def test_alt_dest_copy_is_the_delta_basis(tmp_path, kind):
    """A file a --*-dest dir holds in another version is rebuilt from it (--no-whole-file), as
    rsync's try_dests_reg makes it the basis; an empty one there is no basis."""
    rs, zc = differential(tmp_path, ["-a", "-i", "--no-W", "--stats", f"--{kind}-dest=../prev"], seed=13,
                          prepare=changed_snapshot, paths=["src/", "dst/new"])
    # (with --copy-dest the copies are "cf" local changes, counted as created by neither)
    assert output_lines(rs.stdout) == output_lines(zc.stdout)
    for what in ("Literal data", "Matched data"):
        assert stat_of(rs.stdout, what) == stat_of(zc.stdout, what), what
    assert stat_of(zc.stdout, "Matched data") > 400_000


@pytest.mark.parametrize("seed", [15, 16])
def test_checksum(tmp_path, seed):
    rs, zc = differential(tmp_path, ["-a", "-c", "-i"], seed=seed, mutate=True)
    _itemize_same(rs, zc)


def test_files_from(tmp_path):
    """--files-from with names relative to the source directory."""
    def prepare(src: pathlib.Path, dst: pathlib.Path) -> None:
        names = sorted(str(p.relative_to(src)) for p in src.rglob("*")
                       if p.is_file() and not p.is_symlink() and "\n" not in str(p))
        (src / "list").write_text("\n".join(names[::3]) + "\n", errors="surrogateescape")
        _age(src / "list", src)
    differential(tmp_path, ["-a", "--files-from=src/list"], seed=17, prepare=prepare,
                 compare_kwargs={"dir_times": False})


def test_files_from_dot_dot_names_resolve_below_the_source(tmp_path):
    """'..' in a local list is resolved as rsync resolves it ('a/../../b' is 'b', never above
    the source directory); a name that is then missing is an error (23), as a missing
    implied -R parent is not. Nothing outside dst is written."""
    def prepare(src: pathlib.Path, dst: pathlib.Path) -> None:
        (src.parent / "outside").mkdir()
        (src.parent / "outside" / "secret").write_text("not to be copied")
        names = sorted(str(p.relative_to(src)) for p in src.rglob("*")
                       if p.is_file() and not p.is_symlink() and "\n" not in str(p))
        first = names[0]
        top = first.split("/")[0]
        lines = [f"../{first}", f"{top}/../{first}", "../outside/secret", "nodir/../../outside/secret",
                 "missing/dir/file"]
        (src.parent / "list").write_text("\n".join(lines) + "\n", errors="surrogateescape")
    rs, zc = differential(tmp_path, ["-a", "--files-from=list"], seed=17, prepare=prepare,
                          check_returncode=False, compare_kwargs={"dir_times": False})
    assert rs.returncode == zc.returncode == 23
    def problems(text: str, tool: str) -> list[str]:
        return sorted(line[len(tool) + 2:] for line in text.splitlines() if line.startswith(f"{tool}: "))
    assert problems(rs.stderr, "rsync") == problems(zc.stderr, "zcsync")
    assert len(problems(rs.stderr, "rsync")) == 3


def test_update_existing_ignore_existing(tmp_path):
    differential(tmp_path, ["-a", "-u"], seed=18, mutate=True)
    differential(tmp_path, ["-a", "--existing"], seed=19, mutate=True)


def test_ignore_existing(tmp_path):
    # Not mutate_tree: where a file stands in the way of a directory, rsync
    # --ignore-existing stamps the directory's mtime onto that file (a bug we do not copy).
    def prepare(src: pathlib.Path, dst: pathlib.Path) -> None:
        subprocess.run(["rsync", "-a", f"{src}/", f"{dst}/"], check=True)
        files = [p for p in sorted(dst.rglob("*")) if p.is_file() and not p.is_symlink()]
        for p in files[::4]:
            p.write_bytes(b"changed on the receiver")
        for p in files[1::4]:
            p.unlink()
    differential(tmp_path, ["-a", "-i", "--ignore-existing"], seed=20, prepare=prepare)


def test_size_limits(tmp_path):
    differential(tmp_path, ["-a", "--max-size=100K", "--min-size=10"], seed=21)


def test_without_times_and_perms(tmp_path):
    differential(tmp_path, ["-rl"], seed=22)


def test_relative(tmp_path):
    def prepare(src: pathlib.Path, dst: pathlib.Path) -> None:
        (src / "d0" / "sub").mkdir(parents=True)
        (src / "d0" / "sub" / "f").write_bytes(b"x")
        _age(src / "d0" / "sub" / "f", src / "d0" / "sub", src / "d0", src)
    differential(tmp_path, ["-aR"], seed=23, prepare=prepare, paths=["src/./d0", "dst"],
                 compare_kwargs={"root_times": False})


def test_missing_source(tmp_path):
    differential(tmp_path, ["-a"], seed=23, paths=["src/nonexistent", "src/", "dst"])


def test_chmod(tmp_path):
    differential(tmp_path, ["-a", "--chmod=D755,F644"], seed=24)


def test_inplace(tmp_path):
    differential(tmp_path, ["-a", "--inplace"], seed=25, mutate=True)


def test_delay_updates(tmp_path):
    differential(tmp_path, ["-a", "--delay-updates"], seed=26, mutate=True)


def test_remove_source_files(tmp_path):
    differential(tmp_path, ["-a", "--remove-source-files"], seed=27)


def test_max_delete(tmp_path):
    differential(tmp_path, ["-a", "--delete", "--max-delete=0"], seed=28, mutate=True)


def test_sparse(tmp_path):
    differential(tmp_path, ["-aS"], seed=29)


def test_single_file_to_new_name(tmp_path):
    def prepare(src: pathlib.Path, dst: pathlib.Path) -> None:
        (src / "one").write_bytes(b"x" * 1000)
        dst.mkdir()
        _age(src / "one", src, dst)
    differential(tmp_path, ["-a"], seed=30, prepare=prepare, paths=["src/one", "dst/renamed"],
                 compare_kwargs={"root_times": False})


def test_dir_merge_filter_files_with_delete(tmp_path):
    """-F: .rsync-filter files in the source hide names; in the destination they protect them."""
    def prepare(src: pathlib.Path, dst: pathlib.Path) -> None:
        subprocess.run(["rsync", "-a", f"{src}/", f"{dst}/"], check=True)
        (src / ".rsync-filter").write_text("- *.log\n")
        (src / "d0" / ".rsync-filter").write_text("- *.c\n+ keep*\n")
        (dst / "d0" / ".rsync-filter").write_text("P *.extra\n")
        (dst / "d0" / "precious.extra").write_bytes(b"protected on the receiver")
        (dst / "d0" / "stale.txt").write_bytes(b"extraneous")
        _age(src, src / "d0", src / ".rsync-filter", src / "d0" / ".rsync-filter")
    rs, zc = differential(tmp_path, ["-a", "-F", "--delete", "-i"], seed=31, prepare=prepare)
    _itemize_same(rs, zc)


def test_old_style_patterns(tmp_path):
    rs, zc = differential(tmp_path, ["-a", "-i", "--exclude=+ *.txt", "--exclude=*.bin", "--exclude=!",
                                     "--exclude=*.log"], seed=32)
    _itemize_same(rs, zc)


def test_xattrs_and_acls(tmp_path):
    def prepare(src: pathlib.Path, dst: pathlib.Path) -> None:
        victim = next(p for p in sorted(src.rglob("*")) if p.is_file() and not p.is_symlink())
        subprocess.run(["setfacl", "-m", "u:nobody:rwx", str(victim)], check=True)
        subprocess.run(["setfacl", "-d", "-m", "g:nogroup:rx", str(src / "d0")], check=True)
        os.setxattr(victim, b"user.zcsync-test", b"value")
        _age(victim, src / "d0")
    if subprocess.run(["which", "setfacl"], capture_output=True).returncode:
        pytest.skip("setfacl (Debian package acl) not installed")
    differential(tmp_path, ["-aAX"], seed=33, prepare=prepare, compare_kwargs={"xattrs": True})


def test_xattrs_resync_onto_a_copy_without_them_like_rsync(tmp_path):
    """-aX over a copy made without -X: every name gets its xattrs (directories, read-only
    ones too), and the lines name them with an x, as rsync's (a changed file's too)."""
    rs, zc = differential(tmp_path, ["-aX", "-i"], seed=7, mutate=True, compare_kwargs={"xattrs": True})
    _itemize_same(rs, zc)
    assert any(line.startswith(".d") and line[10] == "x" for line in zc.stdout.splitlines())


OWNER_MAPS = [
    ["-a", "--usermap=1000:daemon,nobody:bin,1200-1300:sys,*:backup",
     "--groupmap=nog*:daemon,4321:bin", "-i"],  # id, name, range, wildcard: the first match wins
    ["-r", "--usermap=*:nobody", "--groupmap=[^r]*:bin", "-i"],  # a map implies -o / -g
    ["-a", "--numeric-ids", "--usermap=nobody:bin,65534:sys", "-i"],  # no names: only ids match
    ["-rt", "--chown=:nogroup", "-i"],  # the group alone: owners are not preserved
    ["-a", "--no-o", "--chown=nobody", "-i"],  # --chown overrides --no-o, as in rsync
]
OWNER_MAP_IDS = ["mixed", "implies-o-g", "numeric-ids", "chown-group", "chown-no-o"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mapping owners needs root")
@pytest.mark.parametrize("options", OWNER_MAPS, ids=OWNER_MAP_IDS)
def test_owner_maps_like_rsync(tmp_path, options):
    rs, zc = differential(tmp_path, options, seed=31, mutate=True)
    _itemize_same(rs, zc)


@pytest.mark.parametrize(("options", "message"), [
    (["--usermap=nobody"], "No colon found in --usermap: nobody"),
    (["--groupmap=nogroup:"], "No name found after colon --groupmap: nogroup:"),
    (["--usermap=1x:root"], "Invalid number in --usermap: 1x"),
    (["--usermap=1-2-3:root"], "Invalid number in --usermap: 1-2-3"),
    (["--chown=nobody", "--usermap=*:root"], "--usermap conflicts with prior --chown."),
])
def test_bad_owner_maps_are_usage_errors(tmp_path, options, message):
    (tmp_path / "src").mkdir()
    zc = subprocess.run([sys.executable, "-m", "zcsync", "-a", *options, "src/", "dst"], cwd=tmp_path,
                        capture_output=True, text=True)
    assert zc.returncode == 1
    assert message in zc.stderr
    assert not (tmp_path / "dst").exists()


def test_an_unknown_map_target_is_an_error_not_a_silent_skip(tmp_path):
    """rsync warns and carries on (files keep the sender's owner); zcsync stops before it writes."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src/f").write_text("x")
    zc = subprocess.run([sys.executable, "-m", "zcsync", "-a", "--usermap=*:no-such-user-zc", "src/", "dst"],
                        cwd=tmp_path, capture_output=True, text=True)
    assert zc.returncode == 1
    assert "Unknown user name: no-such-user-zc" in zc.stderr
    assert not (tmp_path / "dst/f").exists()


@pytest.mark.parametrize("options", [["-rl", "-i"], ["-rlpgo", "-i"], ["-rltJ", "-i"]], ids=["rl", "rlpgo", "J"])
def test_without_t_an_updated_file_or_link_itemizes_T(tmp_path, options):
    """rsync's "T": without -t a transferred file (or changed link) gets the time of the transfer."""
    rs, zc = differential(tmp_path, options, seed=31, mutate=True)
    _itemize_same(rs, zc)
    assert any(line[:5] in (">f..T", ">f.sT", "cLc.T") for line in output_lines(rs.stdout)) == ("-rltJ" not in options)


def _overlapping_sources(src: pathlib.Path, dst: pathlib.Path) -> None:
    """src/one and src/two hold names in common: a file in both (different contents and
    sizes), a directory in both (merged below), a file in one that is a directory in the other."""
    layout = {
        "one": {"same": "first\n", "only1": "1\n", "sub/p": "p\n", "sub/both": "1\n", "fd": "a file\n",
                "df/inner": "in one\n", "deep/a/b/x": "x1\n"},
        "two": {"same": "second, longer\n", "only2": "2\n", "sub/q": "q\n", "sub/both": "two\n",
                "fd/inner": "in two\n", "df": "a file\n", "deep/a/b/y": "y2\n", "deep/a/b/x": "x2 longer\n"},
    }
    for top, files in layout.items():
        for rel, text in files.items():
            path = src / top / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    (src / "one").chmod(0o700)
    _age(*src.rglob("*"))
    os.utime(src / "two", ns=(1_500_000_000 * 10**9,) * 2)


@pytest.mark.parametrize("options", [["-a", "-i"], ["-ac", "-i"], ["-a", "--delete", "-i"], ["-rlt", "-i"]],
                         ids=["a", "checksum", "delete", "rlt"])
@pytest.mark.parametrize("order", ["one-two", "two-one"])
def test_sources_with_the_same_names_merge_like_rsync(tmp_path, options, order):
    """``a/ b/ DST``: one file list, the first source's name winning unless only a later one is
    a directory, same-named directories merged at every depth (each file read from its own source)."""
    first, second = order.split("-")
    rs, zc = differential(tmp_path, options, seed=40, prepare=_overlapping_sources, mutate="delete" in options[1],
                          paths=[f"src/{first}/", f"src/{second}/", "dst"])
    _itemize_same(rs, zc)
    assert not zc.stderr


def test_named_sources_with_the_same_name_like_rsync(tmp_path):
    rs, zc = differential(tmp_path, ["-a", "-i"], seed=40, prepare=_overlapping_sources,
                          paths=["src/one/fd", "src/two/fd", "src/one/same", "src/two/same", "src/one/sub",
                                 "src/two/sub", "dst"])
    _itemize_same(rs, zc)


def _temp_dir_in_dst(src: pathlib.Path, dst: pathlib.Path) -> None:
    (dst / "tmpx").mkdir()
    _age(dst / "tmpx", dst)


@pytest.mark.parametrize("options", [["-a", "-T", "tmpx", "-i"], ["-a", "--temp-dir=tmpx", "--delay-updates", "-i"],
                                     ["-a", "-T", "tmpx", "--backup", "-i"]], ids=["T", "delay-updates", "backup"])
def test_temp_dir_like_rsync(tmp_path, options):
    """-T DIR (relative: to the destination): the same result as rsync's, and nothing left in DIR."""
    # (the temp dir's own time is when the last temp file left it, for either tool)
    rs, zc = differential(tmp_path, options, seed=41, mutate=True, prepare=_temp_dir_in_dst,
                          compare_kwargs={"exclude": lambda rel: rel == b"tmpx"})
    _itemize_same(rs, zc)
    assert not any((tmp_path.glob("*/zcsync/dst/tmpx/*")))


def test_temp_dir_missing_is_rsyncs_usage_error(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src/f").write_text("x")
    (tmp_path / "dst").mkdir()
    rs = subprocess.run(["rsync", "-a", "-T", "nope", "src/", "dst/"], cwd=tmp_path, capture_output=True, text=True)
    zc = subprocess.run([sys.executable, "-m", "zcsync", "-a", "-T", "nope", "src/", "dst/"], cwd=tmp_path,
                        capture_output=True, text=True)
    assert rs.returncode == zc.returncode == 1
    assert "The temp-dir does not exist: nope" in rs.stderr and "The temp-dir does not exist: nope" in zc.stderr
    assert not (tmp_path / "dst/f").exists()


def test_temp_dir_on_another_filesystem(tmp_path):
    """A temp dir on tmpfs for a destination on disk: rename cannot cross, the verified file is
    copied beside its name and renamed there (rsync copies onto the final name itself)."""
    shm = pathlib.Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's tmp_path")
    temp = pathlib.Path(tempfile.mkdtemp(dir=shm))
    try:
        (tmp_path / "src/sub").mkdir(parents=True)
        data = os.urandom(3 << 20)
        (tmp_path / "src/big").write_bytes(data)
        (tmp_path / "src/sub/small").write_text("small\n")
        zc = subprocess.run([sys.executable, "-m", "zcsync", "-a", f"--temp-dir={temp}", "src/", "dst/"],
                            cwd=tmp_path, capture_output=True, text=True)
        assert zc.returncode == 0, zc.stderr
        assert (tmp_path / "dst/big").read_bytes() == data
        assert (tmp_path / "dst/sub/small").read_text() == "small\n"
        assert list(temp.iterdir()) == []
        assert not [p for p in (tmp_path / "dst").rglob("*.zcs")]
    finally:
        shutil.rmtree(temp)


@pytest.mark.parametrize("options", [["-ai", "--link-dest=../src"], ["-ai", "--compare-dest=../src"],
                                     ["-ai", "--copy-dest=../src"], ["-ai", "--link-dest=../src", "-c"],
                                     ["-aii", "--copy-dest=../src", "--stats"]],
                         ids=["link", "compare", "copy", "link-checksum", "copy-ii-stats"])
def test_alt_dest_over_an_existing_destination_like_rsync(tmp_path, options):
    """rsync consults --link-dest/--compare-dest for files the destination already has, up to
    date or not: an exact match there becomes a hard link (link) or a removal (compare)."""
    rs, zc = differential(tmp_path, options, seed=17, mutate=True)
    assert sorted(set(output_lines(rs.stdout))) == sorted(set(output_lines(zc.stdout)))


@pytest.mark.parametrize("options", [["-ai", "--max-size=2k", "--delete"], ["-ai", "--min-size=2k", "--delete"],
                                     ["-aiH", "--max-size=2k", "--delete"]], ids=["max", "min", "max-H"])
def test_size_limits_never_delete_what_the_source_has(tmp_path, options):
    """A file outside --max-size/--min-size is still listed (rsync's receiver skips it), so
    --delete keeps the destination's copy; zcsync used to delete it."""
    rs, zc = differential(tmp_path, options, seed=17, mutate=True)
    _itemize_same(rs, zc)


def test_preallocate_like_rsync(tmp_path):
    rs, zc = differential(tmp_path, ["-ai", "--preallocate"], seed=42, mutate=True)
    _itemize_same(rs, zc)


def test_preallocate_reserves_each_file_before_its_data(tmp_path, monkeypatch):
    """A spy on posix_fallocate (the kernel call itself runs): every non-empty file, at its
    full size, on an fd that holds no data yet."""
    import zcsync
    src = tmp_path / "src"
    src.mkdir()
    sizes = {"a": 10, "b": 3 << 20, "empty": 0}
    for name, size in sizes.items():
        (src / name).write_bytes(os.urandom(size))
    calls = []
    real = os.posix_fallocate

    def spy(fd, offset, length):
        calls.append((os.fstat(fd).st_size, offset, length))
        real(fd, offset, length)
    monkeypatch.setattr(os, "posix_fallocate", spy)
    assert zcsync.sync(f"{src}/", str(tmp_path / "dst"), archive=True, preallocate=True).exit_code == 0
    assert sorted(calls) == sorted((0, 0, size) for size in sizes.values() if size)
    for name in sizes:
        assert (tmp_path / "dst" / name).read_bytes() == (src / name).read_bytes()


_OLD_ATIME = 1_600_000_000_000_000_000  # 2020: older than a day, so relatime would update it on a read


def _aged_atimes(root: pathlib.Path) -> dict[str, int]:
    """Give every regular file under root an old atime (mtime kept); its atimes by name."""
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.utime(path, ns=(_OLD_ATIME, path.lstat().st_mtime_ns), follow_symlinks=False)
    return _atimes(root)


def _atimes(root: pathlib.Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_atime_ns for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def _atime_tree(root: pathlib.Path) -> None:
    from tests.treegen import make_tree
    make_tree(root, 43, files=30, fifo=False)
    (root / "big").write_bytes(os.urandom(3 << 20))  # read through open(), not read_file()


@pytest.mark.parametrize("extra", [[], ["-c"]], ids=["fresh", "checksum-resync"])
@pytest.mark.parametrize("noatime", [True, False], ids=["open-noatime", "plain"])
def test_open_noatime_keeps_atimes_as_rsync(tmp_path, extra, noatime):
    """--open-noatime: the sender's reads of source files (and, with -c, the receiver's reads of
    destination files) leave their atimes alone, as rsync's; without it both tools update them."""
    from tests.oracle import run_rsync, run_zcsync
    results = {}
    for tool in ("rsync", "zcsync"):
        src, dst = tmp_path / tool / "src", tmp_path / tool / "dst"
        _atime_tree(src)
        if extra:  # a resync over an identical copy: -c reads every file on both sides
            run_rsync(["-a", f"{src}/", f"{dst}/"])
        before_src, before_dst = _aged_atimes(src), _aged_atimes(dst) if extra else {}
        args = ["-a", *extra, *(["--open-noatime"] if noatime else []), f"{src}/", f"{dst}/"]
        proc = run_rsync(args) if tool == "rsync" else run_zcsync(args)
        assert proc.returncode == 0, proc.stderr
        results[tool] = (before_src == _atimes(src), before_dst == _atimes(dst) if extra else None)
    kept = (noatime, noatime if extra else None)
    assert results["rsync"] == results["zcsync"] == kept


# -- --delete-missing-args ---------------------------------------------------------

_SMALL = {"files": 20, "max_size": 64 << 10}
# Operands that do not exist in src: each names something in dst (or nothing).
_MISSING = ["src/missing_f", "src/gone", "src/emptydir", "src/link", "src/nonesuch"]


def _missing_in_src(src: pathlib.Path, dst: pathlib.Path) -> None:
    """dst holds what the missing operands name: a file, a non-empty directory (with a
    subdirectory), an empty one, a symlink to a directory outside dst; src/keep exists
    and dst/keep/zz does not in src; dst/nosuch/f's parent is missing in src too."""
    (src / "keep").mkdir()
    for rel in ("missing_f", "gone/g", "gone/sub/h", "keep/zz", "keep/stay", "nosuch/f", "nosuch/deeper/h", "other"):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_text(rel)
    (src / "keep" / "stay").write_text("keep/stay")
    (dst / "emptydir").mkdir()
    (src.parent / "outside").mkdir()
    (src.parent / "outside" / "precious").write_text("outside")
    os.symlink("../outside", dst / "link")
    _age(*dst.rglob("*"), *src.rglob("*"), src, src.parent / "outside", src.parent / "outside" / "precious")


def _deletes_like_rsync(tmp_path, options, paths, prepare=_missing_in_src, **kwargs):
    rs, zc = differential(tmp_path, options, seed=8, prepare=prepare, paths=paths, tree_kwargs=_SMALL, **kwargs)
    # (rsync prints this note on stdout, zcsync on stderr; rsync may print a "cannot delete
    # non-empty directory" note twice)
    rs.stdout = rs.stdout.replace("IO error encountered -- skipping file deletion\n", "")
    want, got = output_lines(rs.stdout), output_lines(zc.stdout)
    if any(line.startswith("cannot delete") for line in want):
        want = sorted(set(want))
    assert want == got, f"only rsync printed: {sorted(set(want) - set(got))}\nonly zcsync printed: " \
                        f"{sorted(set(got) - set(want))}"
    for side in tmp_path.glob("differential-*/zcsync"):
        assert (side / "outside" / "precious").read_text() == "outside"  # never through the link
    return rs, zc


@pytest.mark.parametrize("options", [
    [],
    ["--force"],
    ["--delete"],
    ["-n"],
    ["-n", "--force"],
    ["--ignore-missing-args"],
    ["--max-delete=1"],
    ["--force", "--max-delete=2"],
    ["--force", "-b"],
    ["--force", "--backup-dir=../bak"],
    ["--force", "--exclude=missing_f", "--filter=P emptydir"],
    ["--force", "--exclude=gone/"],  # a missing operand is matched as a file
    ["--force", "--exclude=h"],  # protected inside the directory: it stays
], ids=["alone", "force", "delete", "dry-run", "dry-run-force", "with-ignore", "max-delete",
        "force-max-delete", "backup", "backup-dir", "protected", "dir-rule", "protected-inside"])
def test_delete_missing_args_like_rsync(tmp_path, options):
    """Each missing operand deletes its destination name, as rsync does: a non-empty
    directory only with --force or --delete (else "cannot delete non-empty directory"), a
    symlink as a symlink, --max-delete in rsync's list order (25), -b, --backup-dir and
    the receiver's rules as for any deletion, nothing in a dry run."""
    rs, zc = _deletes_like_rsync(tmp_path, ["-a", "-i", "--delete-missing-args", *options],
                                 ["src/", *_MISSING, "dst/"], compare_kwargs={"dir_times": False})
    assert rs.returncode == zc.returncode == (25 if any("max-delete" in o for o in options) else 0)


def test_delete_missing_args_count_in_stats_like_rsync(tmp_path):
    """--stats counts a missing operand as a regular file of the list, as rsync does."""
    rs, zc = differential(tmp_path, ["-a", "--stats", "--force", "--delete-missing-args"], seed=8,
                          prepare=_missing_in_src, paths=["src/keep", *_MISSING, "dst/"], tree_kwargs=_SMALL,
                          compare_kwargs={"dir_times": False})
    def files(out: str) -> list[str]:
        return [line for line in out.splitlines() if line.startswith("Number of files")]
    assert files(zc.stdout) == files(rs.stdout) and "reg: 6" in files(rs.stdout)[0]


_TOO_LONG = "src/" + "x" * 300  # an operand whose stat fails (ENAMETOOLONG): a read error


def test_delete_missing_args_after_a_read_error_with_ignore_errors_like_rsync(tmp_path):
    """With --ignore-errors a read error on the sending side stops no deletion: the missing
    operands' destination names go, as in rsync."""
    rs, zc = _deletes_like_rsync(tmp_path, ["-a", "-i", "--force", "--ignore-errors", "--delete-missing-args"],
                                 ["src/", *_MISSING, _TOO_LONG, "dst/"], compare_kwargs={"dir_times": False})
    assert rs.returncode == zc.returncode == 23
    assert not (next(tmp_path.glob("differential-*/zcsync")) / "dst" / "missing_f").exists()


def test_delete_missing_args_stopped_by_a_read_error(tmp_path):
    """zcsync's rule for every deletion holds for these too: after a read error on the
    sending side nothing is deleted, with rsync's note, exit 23. (rsync deletes them all
    the same; checked here so that the difference stays a known one.)"""
    results = {}
    for tool, run in (("rsync", run_rsync), ("zcsync", run_zcsync)):
        base = tmp_path / tool
        (base / "src").mkdir(parents=True)
        (base / "dst").mkdir()
        _missing_in_src(base / "src", base / "dst")
        proc = run(["-a", "--force", "--delete-missing-args", "src/", *_MISSING, _TOO_LONG, "dst/"],
                   check=False, cwd=base)
        results[tool] = proc
        assert proc.returncode == 23, proc.stderr
    assert not (tmp_path / "rsync" / "dst" / "missing_f").exists()
    dst = tmp_path / "zcsync" / "dst"
    assert (dst / "missing_f").read_text() == "missing_f" and (dst / "gone" / "sub" / "h").exists()
    assert (dst / "emptydir").is_dir() and (dst / "link").is_symlink()
    assert (dst / "keep" / "stay").read_text() == "keep/stay"  # the rest is copied
    assert "IO error encountered -- skipping file deletion" in results["zcsync"].stderr


def test_delete_missing_args_single_operand_takes_the_destination_name(tmp_path):
    """One missing operand and a destination file: rsync deletes that file (the operand
    takes the destination's name, as one file does)."""
    rs, zc = _deletes_like_rsync(tmp_path, ["-a", "-i", "--delete-missing-args"], ["src/missing_f", "dst/other"])
    assert rs.returncode == zc.returncode == 0 and "*deleting   other" in zc.stdout


@pytest.mark.parametrize("options", [["-a"], ["-a", "--force"], ["-ar"]], ids=["whole-list", "force", "incremental"])
def test_delete_missing_args_files_from_like_rsync(tmp_path, options):
    """--files-from, the option's usual company: listed names that are gone are deleted.
    A name whose parent is missing in the source too is a vanished parent (24); rsync's
    whole file list (no -r) still deletes it, its incremental one (-r) drops it."""
    def prepare(src: pathlib.Path, dst: pathlib.Path) -> None:
        _missing_in_src(src, dst)
        present = sorted(str(p.relative_to(src)) for p in src.rglob("*")
                         if p.is_file() and not p.is_symlink() and "\n" not in str(p))[:3]
        names = [*present, "missing_f", "keep/zz", "gone", "emptydir", "nosuch/f", "nosuch/deeper/h",
                 "link/precious", "keep/stay", "nonesuch", "link"]  # (never deleted through the link)
        (src.parent / "list").write_text("\n".join(names) + "\n", errors="surrogateescape")
    rs, zc = _deletes_like_rsync(tmp_path, [*options, "-i", "--delete-missing-args", "--files-from=list"],
                                 ["src", "dst/"], prepare=prepare, compare_kwargs={"dir_times": False})
    assert rs.returncode == zc.returncode == 24


def test_delete_missing_args_relative_like_rsync(tmp_path):
    rs, zc = _deletes_like_rsync(tmp_path, ["-aR", "-i", "--delete-missing-args"],
                                 ["src/./keep/zz", "src/./nosuch/f", "src/./missing_f", "dst/"],
                                 compare_kwargs={"dir_times": False})
    assert rs.returncode == zc.returncode == 24


def test_delete_missing_args_list_only_like_rsync(tmp_path):
    """--list-only shows each missing operand as rsync's "*missing" line."""
    for human in ([], ["--no-h"]):
        rs, zc = differential(tmp_path, ["--list-only", *human, "--delete-missing-args"], seed=8,
                              prepare=_missing_in_src, paths=["src/keep/stay", *_MISSING, "dst/"],
                              tree_kwargs=_SMALL)
        _itemize_same(rs, zc)
        assert "*missing" in zc.stdout


# -- --bwlimit -----------------------------------------------------------------

_RATE = 1 << 20  # --bwlimit=1M


def _paced_runs(tmp_path: pathlib.Path, args: list[str], prepare) -> dict[str, tuple[subprocess.CompletedProcess, float]]:
    """rsync and zcsync with args on copies of one starting tree (prepare(src, dst) builds it),
    at the same time (both spend their run sleeping); each one's result and seconds taken."""
    base = tmp_path / "base"
    (base / "src").mkdir(parents=True)
    prepare(base / "src", base / "dst")
    # Directories dated well before the run: rsync leaves a directory's time alone when it
    # is within the same second as the source's (its time check is in whole seconds here).
    for d in (base / "src", base / "dst"):
        if d.is_dir():
            os.utime(d, (1_600_000_000, 1_600_000_000))
    runners = {"rsync": run_rsync, "zcsync": run_zcsync}
    for tool in runners:
        shutil.copytree(base, tmp_path / tool, symlinks=True)

    def timed(tool: str) -> tuple[subprocess.CompletedProcess, float]:
        started = time.monotonic()
        proc = runners[tool]([*args, "src/", "dst/"], check=False, cwd=tmp_path / tool)
        return proc, time.monotonic() - started
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {tool: pool.submit(timed, tool) for tool in runners}
    results = {tool: future.result() for tool, future in futures.items()}
    for tool, (proc, _) in results.items():
        assert proc.returncode == 0, f"{tool}: {proc.stderr}"
    assert_same_tree(tmp_path / "rsync" / "dst", tmp_path / "zcsync" / "dst", **compare_kwargs_for(args))
    assert_same_tree(tmp_path / "zcsync" / "src", tmp_path / "zcsync" / "dst", **compare_kwargs_for(args))
    return results


def test_bwlimit_paces_a_local_copy_like_rsync(tmp_path):
    """rsync's --bwlimit limits a local copy too (its sender writes to the receiver through a
    pipe); zcsync's paces the copy itself: 2.5 MiB at 1 MiB/s take about 2.5 s in both."""
    size = (2 << 20) + (1 << 19)

    def prepare(src, dst):
        (src / "big").write_bytes(os.urandom(size - 300_000))  # copied by the kernel, in pieces
        for i, n in enumerate((100_000, 200_000)):  # read whole and committed from memory
            (src / f"small{i}").write_bytes(os.urandom(n))
    results = _paced_runs(tmp_path, ["-a", "--bwlimit=1M"], prepare)
    (_, rs), (_, zc) = results["rsync"], results["zcsync"]
    want = size / _RATE
    assert rs >= 0.6 * want, f"rsync took {rs:.2f} s: the oracle did not pace"
    assert zc >= 0.6 * want, f"zcsync took {zc:.2f} s for {want:.2f} s of data"
    assert zc <= 1.5 * rs + 1.0, f"zcsync {zc:.2f} s, rsync {rs:.2f} s"


def _stat_bytes(out: str, label: str) -> int:
    import re
    m = re.search(rf"^{label}: ([\d,]+) bytes", out, re.M)
    assert m, out
    return int(m.group(1).replace(",", ""))


def test_bwlimit_paces_the_literal_data_of_a_local_delta_like_rsync(tmp_path):
    """--no-whole-file over an old copy: the literal bytes are paced, the basis blocks are
    not (for rsync they are tokens on the pipe): 768 KiB changed of 3 MiB take about 0.75 s."""
    size, changed = 3 << 20, 3 << 18

    def prepare(src, dst):
        old = os.urandom(size)
        dst.mkdir()
        (dst / "big").write_bytes(old)
        (src / "big").write_bytes(old[:1 << 20] + os.urandom(changed) + old[(1 << 20) + changed:])
        os.utime(dst / "big", (1_600_000_000, 1_600_000_000))
    results = _paced_runs(tmp_path, ["-a", "--no-whole-file", "--stats", "--bwlimit=1M"], prepare)
    (rs_proc, rs), (zc_proc, zc) = results["rsync"], results["zcsync"]
    literal = _stat_bytes(zc_proc.stdout, "Literal data")
    assert literal == _stat_bytes(rs_proc.stdout, "Literal data") and changed <= literal < 2 * changed
    for tool, took in (("rsync", rs), ("zcsync", zc)):
        # (pacing the whole file would take size / _RATE; start-up on a busy machine adds some)
        assert 0.6 * literal / _RATE <= took < 0.9 * size / _RATE, f"{tool} took {took:.2f} s"
    assert zc <= 1.5 * rs + 1.0, f"zcsync {zc:.2f} s, rsync {rs:.2f} s"
