"""zcsync over a real sshd against `rsync -e ssh` on the same trees: push and pull, paramiko and -e."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from tests.oracle import differential, output_lines

from .sshd import ALIAS, direction_paths, remote_zcsync_path


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _descendants(pid: int, depth: int = 8) -> list[int]:
    """Processes below pid (to signal only what this test started, never the whole machine)."""
    found, level = [], [pid]
    for _ in range(depth):
        level = [c for p in level for c in _children(p)]
        found += level
    return found


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ")
    except OSError:
        return b""


def _extra() -> list[str]:
    return ["--zcsync-path", remote_zcsync_path()]


def _same_items(rs, zc) -> None:
    want, got = output_lines(rs.stdout), output_lines(zc.stdout)
    assert want == got, f"only rsync: {sorted(set(want) - set(got))}\nonly zcsync: {sorted(set(got) - set(want))}"


@pytest.mark.parametrize("seed", [1, 2])
def test_push_fresh(tmp_path, sshd, via, seed):
    rsh = via
    rs, zc = differential(tmp_path, ["-aS", "-i", *rsh], seed=seed, env=sshd.env(),
                          paths=["src/", f"{ALIAS}:{{run}}/dst"], zcsync_extra=_extra())
    _same_items(rs, zc)


@pytest.mark.parametrize("seed", [1, 2])
def test_pull_fresh(tmp_path, sshd, via, seed):
    rsh = via
    rs, zc = differential(tmp_path, ["-aS", "-i", *rsh], seed=seed, env=sshd.env(),
                          paths=[f"{ALIAS}:{{run}}/src/", "dst"], zcsync_extra=_extra())
    _same_items(rs, zc)


def test_push_resync_delete_hard_links(tmp_path, sshd, via):
    rsh = via
    differential(tmp_path, ["-aH", "--delete", *rsh], seed=3, mutate=True, env=sshd.env(),
                 paths=["src/", f"{ALIAS}:{{run}}/dst"], zcsync_extra=_extra())


def test_pull_resync_delete(tmp_path, sshd, via):
    rsh = via
    rs, zc = differential(tmp_path, ["-a", "--delete", "-i", *rsh], seed=4, mutate=True, env=sshd.env(),
                          paths=[f"{ALIAS}:{{run}}/src/", "dst"], zcsync_extra=_extra())
    _same_items(rs, zc)


@pytest.mark.parametrize("direction", ["push", "pull"])
@pytest.mark.parametrize("mode", ["--delete-before", "--delete-after", "--delete-during", "--delete-delay"])
def test_resync_delete_modes(tmp_path, sshd, direction, mode):
    """Each --delete-WHEN removes what rsync's removes. (--delete-before over ssh deleted
    nothing until 2026-12: only the local run read the whole list first.)"""
    paths = direction_paths(direction)
    rs, zc = differential(tmp_path, ["-a", mode, "-i"], seed=4, mutate=True, env=sshd.env(),
                          paths=paths, zcsync_extra=_extra())
    _same_items(rs, zc)


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_resync_ignore_times(tmp_path, sshd, direction):
    """-I over ssh: every file goes (as a delta against the old one), as with rsync."""
    paths = direction_paths(direction)
    rs, zc = differential(tmp_path, ["-a", "-I", "-i"], seed=4, mutate=True, env=sshd.env(),
                          paths=paths, zcsync_extra=_extra())
    _same_items(rs, zc)


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_prune_empty_dirs(tmp_path, sshd, direction):
    """-m over ssh: the sender prunes (on a pull, the server), with the same result as rsync."""
    paths = ["src", f"{ALIAS}:{{run}}/dst"] if direction == "push" else [f"{ALIAS}:{{run}}/src", "dst"]
    rs, zc = differential(tmp_path, ["-am", "-i", "--delete", "--include=*/", "--include=*.txt", "--exclude=*"],
                          seed=6, mutate=True, env=sshd.env(), paths=paths, zcsync_extra=_extra(),
                          compare_kwargs={"dir_times": False})
    # rsync may print a "cannot delete non-empty directory" note twice
    assert sorted(set(output_lines(rs.stdout))) == sorted(set(output_lines(zc.stdout)))


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_delete_keeps_what_excludes_protect_inside_an_extraneous_dir(tmp_path, sshd, direction):
    from .test_local_differential import _extraneous_dir_with_excluded_files
    paths = direction_paths(direction)
    rs, zc = differential(tmp_path, ["-a", "--delete", "-i", "--exclude=*.log", "--max-delete=3"], seed=6,
                          mutate=True, prepare=_extraneous_dir_with_excluded_files, env=sshd.env(), paths=paths,
                          zcsync_extra=_extra(), compare_kwargs={"dir_times": False})
    # rsync may print a "cannot delete non-empty directory" note twice
    assert sorted(set(output_lines(rs.stdout))) == sorted(set(output_lines(zc.stdout)))


@pytest.mark.parametrize("direction", ["push", "pull"])
@pytest.mark.parametrize("options", [[], ["-r"]], ids=["no-recursion", "no-links"])
def test_without_v_the_same_notices_as_rsync(tmp_path, sshd, direction, options):
    """The lines rsync prints without -v come from either end: a server's arrive as Items."""
    paths = ["src", f"{ALIAS}:{{run}}/dst"] if direction == "push" else [f"{ALIAS}:{{run}}/src", "dst"]
    if options:
        paths = [p + "/" if p.endswith("src") else p for p in paths]
    rs, zc = differential(tmp_path, options, seed=3, env=sshd.env(), paths=paths, zcsync_extra=_extra(),
                          compare_kwargs={"root_times": False})
    assert rs.stdout and output_lines(rs.stdout) == output_lines(zc.stdout)


@pytest.mark.parametrize("direction", ["push", "pull"])
@pytest.mark.parametrize("case", ["safe-links", "copy-unsafe-links"])
def test_link_options(tmp_path, sshd, direction, case):
    """--safe-links is the receiver's (on a push the server leaves out the same links);
    -k and --copy-unsafe-links are the sender's (on a pull the server follows them)."""
    from .test_local_differential import _links_in_and_out, _links_to_dirs_and_out
    options, prepare = {"safe-links": (["-a", "--safe-links"], _links_in_and_out),
                        "copy-unsafe-links": (["-ak", "--copy-unsafe-links"], _links_to_dirs_and_out)}[case]
    rs, zc = differential(tmp_path, [*options, "-i"], seed=2, prepare=prepare, env=sshd.env(),
                          paths=direction_paths(direction), zcsync_extra=_extra())
    _same_items(rs, zc)


@pytest.mark.parametrize("direction", ["push", "pull"])
@pytest.mark.parametrize("options", [
    ["-a", "--usermap=1000:daemon,nobody:bin,1200-1300:sys,*:backup", "--groupmap=nog*:daemon,4321:bin"],
    ["-a", "--numeric-ids", "--usermap=nobody:bin,65534:sys"],
    ["-r", "--chown=nobody:1234"],
], ids=["maps", "numeric-ids", "chown"])
def test_owner_maps(tmp_path, sshd, direction, options):
    """The maps are the receiver's: on a push the server applies them to names the client sends."""
    if os.geteuid() != 0:
        pytest.skip("mapping owners needs root")
    rs, zc = differential(tmp_path, [*options, "-i"], seed=31, mutate=True, env=sshd.env(),
                          paths=direction_paths(direction), zcsync_extra=_extra())
    _same_items(rs, zc)


@pytest.mark.parametrize("sources", [
    ["src/one/", "src/two/"],  # two sources of one directory: merged (this hung before)
    ["src/*/"],  # the remote expands wildcards, as rsync's remote shell does
    ["src/one/s*", "src/two/[a-z]nly2"],
    ["src/*.none"],  # no match: a missing file (exit 23), as with rsync
    ["src/one/fd", "src/two/fd"],
], ids=["merged", "glob-dirs", "glob-names", "glob-no-match", "named-merged"])
def test_pull_several_and_wildcard_sources(tmp_path, sshd, via, sources):
    from .test_local_differential import _overlapping_sources
    paths = [f"{ALIAS}:{{run}}/{s}" for s in sources] + ["dst"]
    rs, zc = differential(tmp_path, [*via, "-a", "-i"], seed=40, prepare=_overlapping_sources, env=sshd.env(),
                          paths=paths, zcsync_extra=_extra(), check_returncode="none" not in sources[0])
    _same_items(rs, zc)
    if "none" in sources[0]:
        assert rs.returncode == zc.returncode == 23


@pytest.mark.parametrize("direction", ["push", "pull"])
@pytest.mark.parametrize("options", [["-ai", "--max-size=2k", "--delete"], ["-ai", "--link-dest=../src"],
                                     ["-ai", "--compare-dest=../src"]], ids=["max-size", "link-dest", "compare-dest"])
def test_receiver_side_choices_over_an_existing_destination(tmp_path, sshd, direction, options):
    """Size limits and alternate basis dirs are the receiver's: on a push the server decides."""
    rs, zc = differential(tmp_path, options, seed=17, mutate=True, env=sshd.env(),
                          paths=direction_paths(direction), zcsync_extra=_extra())
    assert sorted(set(output_lines(rs.stdout))) == sorted(set(output_lines(zc.stdout)))


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_remove_source_files_removes_links_and_specials_too(tmp_path, sshd, direction):
    """rsync's sender removes every non-directory it sent: symlinks and fifos as well as files."""
    rs, zc = differential(tmp_path, ["-ai", "--remove-source-files"], seed=17, env=sshd.env(),
                          paths=direction_paths(direction), zcsync_extra=_extra())
    _same_items(rs, zc)


def test_push_no_trailing_slash_filters_checksum(tmp_path, sshd):
    differential(tmp_path, ["-a", "-c", "--exclude=*.bin", "--delete"], seed=5, mutate=True, env=sshd.env(),
                 paths=["src", f"{ALIAS}:{{run}}/dst"], compare_kwargs={"root_times": False},
                 zcsync_extra=_extra())


def test_pull_dry_run(tmp_path, sshd):
    rs, zc = differential(tmp_path, ["-a", "-n", "-i", "--delete"], seed=6, mutate=True, env=sshd.env(),
                          paths=[f"{ALIAS}:{{run}}/src/", "dst"], zcsync_extra=_extra())
    _same_items(rs, zc)


def test_push_backup_and_link_dest(tmp_path, sshd):
    def prepare(src: pathlib.Path, dst: pathlib.Path) -> None:
        subprocess.run(["rsync", "-a", "--mkpath", f"{src}/", f"{dst}/prev/"], check=True)
        (src / "new-file").write_bytes(b"new")
        os.utime(src, ns=(1_600_000_000_000_000_000,) * 2)
    differential(tmp_path, ["-a", "--link-dest=../prev"], seed=7, prepare=prepare, env=sshd.env(),
                 paths=["src/", f"{ALIAS}:{{run}}/dst/new"], zcsync_extra=_extra())


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_link_dest_copy_is_the_delta_basis(tmp_path, sshd, direction):
    """A file the --link-dest dir holds in another version is the delta basis, as in rsync."""
    from .test_local_differential import changed_snapshot, stat_of
    paths = ["src/", f"{ALIAS}:{{run}}/dst/new"] if direction == "push" else [f"{ALIAS}:{{run}}/src/", "dst/new"]
    rs, zc = differential(tmp_path, ["-a", "--stats", "--link-dest=../prev"], seed=13, prepare=changed_snapshot,
                          env=sshd.env(), paths=paths, zcsync_extra=_extra())
    for what in ("Literal data", "Matched data"):
        assert stat_of(rs.stdout, what) == stat_of(zc.stdout, what), what
    assert stat_of(zc.stdout, "Matched data") > 400_000


def test_remote_missing_source(tmp_path, sshd):
    rs, zc = differential(tmp_path, ["-a"], seed=8, env=sshd.env(),
                          paths=[f"{ALIAS}:{{run}}/src/nonexistent", "dst"], zcsync_extra=_extra())
    assert zc.returncode == 23
    assert "nonexistent" in zc.stderr


def test_remote_program_missing(tmp_path, sshd):
    (tmp_path / "src").mkdir()
    result = subprocess.run([sys.executable, "-m", "zcsync", "-a", "--zcsync-path", "/nonexistent/zcsync",
                             f"{tmp_path}/src/", f"{ALIAS}:{tmp_path}/dst"],
                            env=sshd.env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 127, result.stderr
    assert "zcsync not found on" in result.stderr and "--zcsync-path" in result.stderr


def test_remote_shell_banner(tmp_path, sshd):
    (tmp_path / "src").mkdir()
    noisy = f"echo Welcome to the server; {remote_zcsync_path()}"
    result = subprocess.run([sys.executable, "-m", "zcsync", "-a", "--zcsync-path", noisy,
                             f"{tmp_path}/src/", f"{ALIAS}:{tmp_path}/dst"],
                            env=sshd.env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 5, result.stderr
    assert "is the remote shell printing text?" in result.stderr
    assert "Welcome" in result.stderr


def test_unknown_host_key_refused(tmp_path, sshd):
    (tmp_path / "src").mkdir()
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config = tmp_path / "ssh_config"
    config.write_text(sshd.host_block("stranger", UserKnownHostsFile=str(empty)))
    result = subprocess.run([sys.executable, "-m", "zcsync", "-a", "--zcsync-path", remote_zcsync_path(),
                             f"{tmp_path}/src/", f"stranger:{tmp_path}/dst"],
                            env=sshd.env(ZCSYNC_SSH_CONFIG=str(config),
                                         ZCSYNC_KNOWN_HOSTS=str(tmp_path / "zk")),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 5, result.stderr
    assert "SHA256:" in result.stderr
    assert not (tmp_path / "dst").exists()


def test_sshd_killed_mid_transfer_keeps_old_files(tmp_path, sshd):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    block = os.urandom(1 << 20)
    for i in range(4):
        with open(src / f"big{i}", "wb") as f:
            for _ in range(160):
                f.write(block)
        (dst / f"big{i}").write_bytes(b"old")
    proc = subprocess.Popen([sys.executable, "-m", "zcsync", "-a", "--zcsync-path", remote_zcsync_path(),
                             f"{src}/", f"{ALIAS}:{dst}/"],
                            env=sshd.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not [p for p in dst.iterdir() if p.name.endswith(".zcs")]:
        time.sleep(0.01)
    # Kill the sshd processes that serve this session: the fixture sshd's children only.
    for pid in _descendants(sshd.proc.pid, depth=1):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the transfer finished before sshd was killed")
    assert proc.returncode in (10, 12), err
    time.sleep(1)  # the server notices the lost connection and cleans up
    for i in range(4):
        data = (dst / f"big{i}").read_bytes()
        assert data == b"old" or data == (src / f"big{i}").read_bytes()
    assert not [p for p in dst.rglob("*") if p.name.endswith(".zcs")]
    # and a rerun completes
    again = subprocess.run([sys.executable, "-m", "zcsync", "-a", "--zcsync-path", remote_zcsync_path(),
                            f"{src}/", f"{ALIAS}:{dst}/"], env=sshd.env(), capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr
    for i in range(4):
        assert (dst / f"big{i}").read_bytes() == (src / f"big{i}").read_bytes()


def test_timeout_on_stalled_peer(tmp_path, sshd):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(200):
        (src / f"f{i}").write_bytes(os.urandom(100_000))
    env = sshd.env()
    proc = subprocess.Popen([sys.executable, "-m", "zcsync", "-a", "--timeout=3", "--zcsync-path",
                             remote_zcsync_path(), f"{src}/", f"{ALIAS}:{tmp_path}/dst"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Stop the remote end (the server process under our sshd) as soon as it exists.
    deadline = time.monotonic() + 20
    stopped = []
    while time.monotonic() < deadline and not stopped:
        for pid in _descendants(sshd.proc.pid):
            if b"--server" in _cmdline(pid):
                try:
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
                except ProcessLookupError:
                    pass
        time.sleep(0.02)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if not stopped:
        pytest.skip("could not catch the server process")
    assert proc.returncode == 30, err
    assert "timeout" in err.lower() or "no progress" in err.lower()



def _files_from_list(src: pathlib.Path, dst: pathlib.Path) -> None:
    names = sorted(str(p.relative_to(src)) for p in src.rglob("*")
                   if p.is_file() and not p.is_symlink() and "\n" not in str(p))
    (src / "list").write_text("\n".join(names[::3]) + "\n", errors="surrogateescape")
    os.utime(src / "list", ns=(10**18, 10**18))


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_files_from_with_a_remote_side(tmp_path, sshd, via, direction):
    """--files-from read here: a push scans the names locally, a pull sends them to the server."""
    paths = direction_paths(direction)
    rs, zc = differential(tmp_path, ["-a", "-i", "--files-from=src/list", *via], seed=23,
                          prepare=_files_from_list, env=sshd.env(), paths=paths, zcsync_extra=_extra(),
                          compare_kwargs={"dir_times": False})
    _same_items(rs, zc)


@pytest.mark.parametrize("args", [["-r"], [], ["-a"]], ids=["recursive", "top-level", "archive"])
def test_one_remote_operand_lists_like_rsync(tmp_path, sshd, via, args):
    """`zcsync host:dir/` (no destination) prints the remote listing, as `rsync host:dir/` does."""
    from tests.oracle import run_rsync, run_zcsync
    from tests.treegen import make_tree

    make_tree(tmp_path / "src", seed=5, files=30)
    operand = f"{ALIAS}:{tmp_path}/src/"
    rs = run_rsync([*args, "-e", sshd.rsh, operand], env=sshd.env())
    zc = run_zcsync([*args, *via, *_extra(), operand], env=sshd.env())
    assert zc.returncode == 0, zc.stderr
    assert zc.stdout.splitlines() == rs.stdout.splitlines()
    assert len(rs.stdout.splitlines()) > 1
    assert not (tmp_path / f"{ALIAS}:{tmp_path}").exists()  # nothing local was taken for the operand


def test_push_temp_dir_holds_the_file_in_flight(tmp_path, sshd):
    """-T on a push: while the data arrives, the temp file is in DIR, never beside its name."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src/big").write_bytes(os.urandom(2 << 20))
    (tmp_path / "dst/tmpx").mkdir(parents=True)
    env = {**os.environ, **sshd.env()}
    proc = subprocess.Popen([sys.executable, "-m", "zcsync", "-a", "-T", "tmpx", "--bwlimit=512", *_extra(),
                             "src/", f"{ALIAS}:{tmp_path}/dst/"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen_in_temp, seen_beside = set(), set()
    while proc.poll() is None:
        seen_in_temp.update(p.name for p in (tmp_path / "dst/tmpx").iterdir())
        seen_beside.update(p.name for p in (tmp_path / "dst").iterdir() if p.name.endswith(".zcs"))
        time.sleep(0.05)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert any(n.startswith(".big.") and n.endswith(".zcs") for n in seen_in_temp), seen_in_temp
    assert not seen_beside
    assert (tmp_path / "dst/big").read_bytes() == (tmp_path / "src/big").read_bytes()
    assert list((tmp_path / "dst/tmpx").iterdir()) == []


def _awkward_names(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Names a remote shell would split or expand: spaces, quotes, $, ;, a star."""
    from .test_local_differential import _age
    for rel in ["with space/a b", "with space/it's", "with space/$HOME;x", "with space/*", "with space/x y z"]:
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel + "\n")
    _age(*src.rglob("*"))


@pytest.mark.parametrize("sources", [["src/with space/"], ["src/with space/a b", "src/with space/$HOME;x"],
                                     ["src/with space/*"]], ids=["dir", "names", "wildcard"])
def test_secluded_args_pull(tmp_path, sshd, via, sources):
    """-s: rsync sends the arguments through its protocol; zcsync quotes every argument of the
    remote command: the same names arrive, and a wildcard is expanded by the remote program."""
    paths = [f"{ALIAS}:{{run}}/{s}" for s in sources] + ["dst"]
    rs, zc = differential(tmp_path, [*via, "-s", "-a", "-i"], seed=41, prepare=_awkward_names, env=sshd.env(),
                          paths=paths, zcsync_extra=_extra())
    _same_items(rs, zc)
    assert output_lines(zc.stdout), "nothing was copied"


def test_secluded_args_push(tmp_path, sshd, via):
    rs, zc = differential(tmp_path, [*via, "--protect-args", "-a", "-i"], seed=41, prepare=_awkward_names,
                          env=sshd.env(), paths=["src/", f"{ALIAS}:{{run}}/dst/with space/"],
                          zcsync_extra=_extra())
    _same_items(rs, zc)


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_open_noatime_over_ssh(tmp_path, sshd, direction):
    """--open-noatime reaches the remote end: a pull's sender there (and a push's -c reads of the
    remote destination) leave atimes alone, as rsync's do."""
    from tests.oracle import run_rsync, run_zcsync

    from .test_local_differential import _aged_atimes, _atime_tree, _atimes
    kept = {}
    for tool in ("rsync", "zcsync"):
        src, dst = tmp_path / tool / "src", tmp_path / tool / "dst"
        _atime_tree(src)
        run_rsync(["-a", f"{src}/", f"{dst}/"])
        before = (_aged_atimes(src), _aged_atimes(dst))
        args = ["-a", "-c", "--open-noatime", *(["src/", f"{ALIAS}:{dst}/"] if direction == "push"
                                                 else [f"{ALIAS}:{src}/", "dst/"])]
        run = run_rsync if tool == "rsync" else run_zcsync
        proc = run([*args, *(_extra() if tool == "zcsync" else [])], cwd=tmp_path / tool, env=sshd.env(),
                   check=False)
        assert proc.returncode == 0, proc.stderr
        kept[tool] = before == (_atimes(src), _atimes(dst))
    assert kept == {"rsync": True, "zcsync": True}


# -- --delete-missing-args: the missing operands travel in the file list ----------------

def _missing_paths(direction: str) -> list[str]:
    from .test_local_differential import _MISSING
    if direction == "push":
        return ["src/", *_MISSING, f"{ALIAS}:{{run}}/dst/"]
    return [f"{ALIAS}:{{run}}/{p}" for p in ["src/", *_MISSING]] + ["dst/"]


@pytest.mark.parametrize("direction", ["push", "pull"])
@pytest.mark.parametrize("options", [[], ["--force"], ["-n", "--force"]], ids=["alone", "force", "dry-run"])
def test_delete_missing_args(tmp_path, sshd, direction, options):
    """Push and pull: each missing operand deletes its destination name, as rsync's does."""
    from .test_local_differential import _deletes_like_rsync
    rs, zc = _deletes_like_rsync(tmp_path, ["-a", "-i", "--delete-missing-args", *options],
                                 _missing_paths(direction), env=sshd.env(), zcsync_extra=_extra(),
                                 compare_kwargs={"dir_times": False})
    assert rs.returncode == zc.returncode == 0
    assert ("*deleting   missing_f" in zc.stdout) and ("*deleting   gone/" in zc.stdout) == bool(options)


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_delete_missing_args_files_from(tmp_path, sshd, via, direction):
    """--files-from names that are gone, over ssh: pushed from this side's scan, or sent to
    the server that scans for a pull; a name whose parent is missing too (24) is deleted
    from rsync's whole list, with its warning."""
    from .test_local_differential import _deletes_like_rsync, _missing_in_src

    def prepare(src: pathlib.Path, dst: pathlib.Path) -> None:
        _missing_in_src(src, dst)
        (src.parent / "list").write_text("missing_f\nkeep/zz\nkeep/stay\ngone\nnosuch/f\nlink/precious\nlink\nnonesuch\n")
    paths = ["src", f"{ALIAS}:{{run}}/dst/"] if direction == "push" else [f"{ALIAS}:{{run}}/src", "dst/"]
    rs, zc = _deletes_like_rsync(tmp_path, ["-a", "-i", "--delete-missing-args", "--files-from=list", *via],
                                 paths, prepare=prepare, env=sshd.env(), zcsync_extra=_extra(),
                                 compare_kwargs={"dir_times": False})
    assert rs.returncode == zc.returncode == 24
    assert "*deleting   nosuch/f" in zc.stdout and "parent dir is absent in the file list: nosuch" in zc.stderr


def test_delete_missing_args_remote_listing(tmp_path, sshd):
    """`zcsync --delete-missing-args host:missing`: rsync's "*missing" line for it."""
    from tests.oracle import run_rsync, run_zcsync

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "here").write_text("here")
    operands = [f"{ALIAS}:{tmp_path}/src/here", f"{ALIAS}:{tmp_path}/src/gone"]
    for human in ([], ["--no-h"]):
        rs = run_rsync(["--delete-missing-args", *human, "--list-only", *operands, "dst"], env=sshd.env())
        zc = run_zcsync(["--delete-missing-args", *human, "--list-only", *_extra(), *operands, "dst"],
                        env=sshd.env())
        assert zc.returncode == 0, zc.stderr
        assert sorted(zc.stdout.splitlines()) == sorted(rs.stdout.splitlines())
        assert any(line.startswith("*missing") for line in zc.stdout.splitlines())


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_delete_missing_args_receiver_rules_protect(tmp_path, sshd, direction):
    """The receiver's rules protect a name from --delete-missing-args over ssh as in a local
    copy (rsync's push without --delete deletes it: its receiver gets no rules; its pull
    stops, exit 4). A sender-only rule protects nothing."""
    from tests.oracle import run_zcsync

    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    for name in ("kept", "protected", "hidden-only"):
        (tmp_path / "dst" / name).write_text(name)
    sources = [f"{tmp_path}/src/{n}" for n in ("kept", "protected", "hidden-only")]
    if direction == "push":
        paths = [*sources, f"{ALIAS}:{tmp_path}/dst/"]
    else:
        paths = [f"{ALIAS}:{s}" for s in sources] + [f"{tmp_path}/dst/"]
    zc = run_zcsync(["-a", "-i", "--delete-missing-args", "--exclude=kept", "--filter=P protected",
                     "--filter=-s hidden-only", *_extra(), *paths], env=sshd.env())
    assert zc.returncode == 0, zc.stderr
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["kept", "protected"]
    assert zc.stdout.splitlines() == ["*deleting   hidden-only"]


# -- -X and -A cross the wire ------------------------------------------------------------

def _xattrs_and_acls(src: pathlib.Path, dst: pathlib.Path) -> None:
    """An ACL on a file, a default ACL on a directory, user xattrs (treegen sets some too)."""
    victim = next(p for p in sorted(src.rglob("*")) if p.is_file() and not p.is_symlink())
    subprocess.run(["setfacl", "-m", "u:nobody:rwx", str(victim)], check=True)
    subprocess.run(["setfacl", "-d", "-m", "g:nogroup:rx", str(src / "d0")], check=True)
    os.setxattr(victim, b"user.zcsync-test", b"value")
    stamp = 1_600_000_000
    for p in (victim, src / "d0"):
        os.utime(p, (stamp, stamp))


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_xattrs_resync_onto_a_copy_without_them(tmp_path, sshd, via, direction):
    """-aX over a copy made without -X, as rsync: directories get theirs too, x in the lines."""
    rs, zc = differential(tmp_path, ["-aX", "-i", *via], seed=7, mutate=True, env=sshd.env(),
                          paths=direction_paths(direction), zcsync_extra=_extra(), compare_kwargs={"xattrs": True})
    _same_items(rs, zc)


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_xattrs_and_acls(tmp_path, sshd, via, direction):
    """-aAX over ssh leaves the xattrs and ACLs rsync's does, both ways (before, the remote
    sender of a pull and the local one of a push sent none, silently)."""
    if subprocess.run(["which", "setfacl"], capture_output=True).returncode:
        pytest.skip("setfacl (Debian package acl) not installed")
    rs, zc = differential(tmp_path, ["-aAX", "-i", *via], seed=33, prepare=_xattrs_and_acls, env=sshd.env(),
                          paths=direction_paths(direction), zcsync_extra=_extra(),
                          compare_kwargs={"xattrs": True})
    _same_items(rs, zc)
    side = next(tmp_path.glob("differential-*/zcsync"))
    got = [p for p in (side / "dst").rglob("*") if not p.is_symlink() and b"user.zcsync-test" in
           [os.fsencode(n) for n in os.listxattr(p)]]
    assert got, "no user xattr arrived"


# -- the remote program without --zcsync-path ---------------------------------------------

def test_default_remote_program_is_zcsync_on_the_remote_path(tmp_path):
    """Without --zcsync-path the remote shell runs `zcsync --server ...`, found on its PATH
    (rsync runs `rsync`); a remote shell here is a script that runs the command it gets,
    with a zcsync of this checkout on the PATH, and records it."""
    import shlex
    from tests.oracle import REPO_ROOT, run_zcsync
    bindir = tmp_path / "bin"
    bindir.mkdir()
    program = bindir / "zcsync"
    program.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO_ROOT))} exec {shlex.quote(sys.executable)} "
                       '-m zcsync "$@"\n')
    program.chmod(0o755)
    seen = tmp_path / "command"
    rsh = tmp_path / "rsh"
    rsh.write_text(f'#!/bin/sh\nshift\nprintf "%s" "$*" > {shlex.quote(str(seen))}\n'
                   f'PATH={shlex.quote(str(bindir))}:$PATH exec sh -c "$*"\n')
    rsh.chmod(0o755)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("data")
    env = {k: v for k, v in os.environ.items() if k not in ("ZCSYNC_RSH", "RSYNC_RSH")}
    for operands in (["src/", f"somehost:{tmp_path}/pushed/"], [f"somehost:{tmp_path}/src/", "pulled/"]):
        proc = run_zcsync(["-a", "-e", str(rsh), *operands], cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
        assert seen.read_text().startswith("zcsync --server ")
    assert (tmp_path / "pushed" / "f").read_text() == (tmp_path / "pulled" / "f").read_text() == "data"


def test_default_remote_program_over_paramiko(tmp_path, sshd):
    """Without --zcsync-path paramiko runs `zcsync --server ...` too: the transfer works
    if the remote PATH has a zcsync, else the one clear line of a missing program (before,
    the command began with '--server' and the remote shell refused it: exit 12)."""
    from tests.oracle import run_zcsync
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("data")
    proc = run_zcsync(["-a", "src/", f"{ALIAS}:{tmp_path}/pushed/"], cwd=tmp_path, env=sshd.env())
    if proc.returncode == 0:
        assert (tmp_path / "pushed" / "f").read_text() == "data"
    else:
        assert proc.returncode == 127, proc.stderr
        assert f"zcsync not found on {ALIAS} (install it there or pass --zcsync-path)" in proc.stderr
