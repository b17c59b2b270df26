"""--files-from=HOST:FILE / :FILE (the list is read on the remote side) and --list-only with a
destination operand, against rsync on the same trees: over a real sshd (paramiko and -e
ssh), through the daemon, and the errors rsync gives (missing list, wrong host, local
transfer)."""
from __future__ import annotations

import os
import pathlib
import pwd
import shlex
import socket
import sys

import pytest

from tests.oracle import differential, output_lines, run_rsync, run_zcsync
from tests.treegen import make_tree
from zcsync import protocol as p
from zcsync.connect import check_listed
from zcsync.engine import read_list_file, remote_files_from
from zcsync.errors import ProtocolError, UsageError
from zcsync.options import Options, from_wire, to_wire
from zcsync.remote import MAX_FILES_FROM, receive_files_from, send_files_from
from zcsync.stats import Report

from .daemon_fixture import RsyncDaemon, ZcsyncDaemon, rsync_available
from .sshd import ALIAS, REPO_ROOT, remote_zcsync_path


def _extra(program: str | None = None) -> list[str]:
    return ["--zcsync-path", program or remote_zcsync_path()]


def _stderr_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def _names(src: pathlib.Path) -> list[bytes]:
    """Every regular file below src, as names relative to it, sorted."""
    top = os.fsencode(src)
    out = []
    for dirpath, _, files in os.walk(top):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                out.append(os.path.relpath(path, top))
    return sorted(out)


def _write_list(src: pathlib.Path, target: pathlib.Path, from0: bool) -> list[bytes]:
    """A --files-from list of every third file of src at target (NUL-separated with from0, and
    then every name with a blank or a non-ASCII byte as well); the names listed.

    No comment lines: rsync skips them as its manual says, except when the list crosses
    the wire (a push with host:FILE, a pull with a local list), where it takes them as
    names; test_comments_in_a_remote_list covers them."""
    names = _names(src)
    if from0:
        names = [n for i, n in enumerate(names) if i % 3 == 0 or any(b in b" \t" or b >= 0x80 for b in n)]
        data = b"\0".join(names) + b"\0"
    else:
        names = [n for n in names[::3] if b"\n" not in n and b"\r" not in n and n[:1] not in (b"#", b";")]
        data = b"\n".join(names) + b"\n\n"
    target.write_bytes(data)
    return names


def _same_items(rs, zc) -> None:
    want, got = output_lines(rs.stdout), output_lines(zc.stdout)
    assert want == got, f"only rsync: {sorted(set(want) - set(got))}\nonly zcsync: {sorted(set(got) - set(want))}"


# -- push and pull with the list on the remote side, against rsync -------------------------

@pytest.mark.parametrize("from0", [False, True], ids=["lines", "from0"])
@pytest.mark.parametrize("prefix", ["host", "colon"])
@pytest.mark.parametrize("direction", ["push", "pull"])
def test_remote_list_matches_rsync(tmp_path, sshd, via, direction, prefix, from0):
    """The list lies on the remote host (here: outside both runs' directories): rsync and zcsync
    transfer the same names and leave the same trees."""
    listfile = tmp_path / "remote-list"
    listed: list[list[bytes]] = []

    def prepare(src: pathlib.Path, dst: pathlib.Path) -> None:
        listed.append(_write_list(src, listfile, from0))

    spec = f"{ALIAS}:{listfile}" if prefix == "host" else f":{listfile}"
    paths = ["src/", f"{ALIAS}:{{run}}/dst"] if direction == "push" else [f"{ALIAS}:{{run}}/src/", "dst"]
    options = ["-a", "-i", f"--files-from={spec}", *(["--from0"] if from0 else []), *via]
    rs, zc = differential(tmp_path, options, seed=31, prepare=prepare, env=sshd.env(), paths=paths,
                          zcsync_extra=_extra(), compare_kwargs={"dir_times": False})
    _same_items(rs, zc)
    assert rs.returncode == zc.returncode == 0, zc.stderr
    # Not a vacuous comparison: the listed files arrived, and only those.
    (dst,) = tmp_path.glob("differential-*/zcsync/dst")
    assert len(listed[0]) >= 5
    assert _names(dst) == sorted(listed[0])


def test_comments_in_a_remote_list(tmp_path, sshd):
    """'#' and ';' lines and blank lines are skipped (rsync's manual): in a pull as rsync does,
    and in a push too, where rsync 3.5 takes them for names (the list crossed the wire)."""
    _tree(tmp_path)
    listfile = tmp_path / "commented"
    listfile.write_text("# a comment\n; another\n\na\n\nsub/c\n")
    spec = f"--files-from=:{listfile}"
    run_rsync(["-r", spec, f"{ALIAS}:{tmp_path}/src/", "rpull/"], cwd=tmp_path, env=sshd.env())
    assert sorted(_names(tmp_path / "rpull")) == [b"a", b"sub/c"]
    zc = run_zcsync([*_extra(), "-r", spec, f"{ALIAS}:{tmp_path}/src/", "zpull/"], cwd=tmp_path, env=sshd.env())
    assert zc.returncode == 0, zc.stderr
    assert sorted(_names(tmp_path / "zpull")) == [b"a", b"sub/c"]
    zc = run_zcsync([*_extra(), "-r", spec, "src/", f"{ALIAS}:{tmp_path}/zpush/"], cwd=tmp_path, env=sshd.env())
    assert zc.returncode == 0, zc.stderr
    assert sorted(_names(tmp_path / "zpush")) == [b"a", b"sub/c"]


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_nul_in_a_line_based_remote_list(tmp_path, sshd, direction):
    """Without --from0 a NUL ends the name, as in rsync: 'sub/c\\0x' is 'sub/c', and 'a\\0' is 'a'."""
    _tree(tmp_path)
    (tmp_path / "list").write_bytes(b"a\0junk\nsub/x\0y\n")
    paths = ["src/", f"{ALIAS}:{tmp_path}/{{}}/"] if direction == "push" else [f"{ALIAS}:{tmp_path}/src/", "{}/"]
    args = ["-r", f"--files-from=:{tmp_path}/list"]
    rs = run_rsync([*args, *(p.format("r") for p in paths)], check=False, cwd=tmp_path, env=sshd.env())
    zc = run_zcsync([*_extra(), *args, *(p.format("z") for p in paths)], cwd=tmp_path, env=sshd.env())
    assert rs.returncode == zc.returncode == 23, zc.stderr
    stat_line = f'link_stat "{tmp_path}/src/sub/x" failed: No such file or directory (2)'
    assert f"rsync: [sender] {stat_line}" in rs.stderr
    assert _stderr_lines(zc)[0] == f"zcsync: [sender] {stat_line}"
    assert _names(tmp_path / "r") == _names(tmp_path / "z") == [b"a"]


def test_remote_list_relative_to_the_remote_home(tmp_path, sshd):
    """A relative FILE is relative to the remote user's home, as in rsync."""
    listfile = tmp_path / "list"
    home = pwd.getpwnam(sshd.user).pw_dir
    rel = os.path.relpath(listfile, home)
    assert not rel.startswith("/")

    def prepare(src: pathlib.Path, dst: pathlib.Path) -> None:
        _write_list(src, listfile, False)

    rs, zc = differential(tmp_path, ["-a", "-i", f"--files-from=:{rel}"], seed=32, prepare=prepare,
                          env=sshd.env(), paths=[f"{ALIAS}:{{run}}/src/", "dst"], zcsync_extra=_extra(),
                          compare_kwargs={"dir_times": False})
    _same_items(rs, zc)
    assert any(line.startswith(">f") for line in zc.stdout.splitlines())


# -- errors, as rsync reports them ------------------------------------------------------

def _tree(tmp_path: pathlib.Path) -> pathlib.Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for rel in ("a", "b", "sub/c"):
        (src / rel).write_text(rel + "\n")
    (tmp_path / "list").write_text("a\nsub/c\n")
    return src


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_missing_remote_list(tmp_path, sshd, via, direction):
    """rsync: 'failed to open files-from file F: No such file or directory', code 1 on the
    server (its client, cut off, reports 12); zcsync: the same line and exit 1. Nothing is
    transferred or created."""
    _tree(tmp_path)
    missing = tmp_path / "no-such-list"
    dst = tmp_path / "dst"
    paths = ["src/", f"{ALIAS}:{dst}/"] if direction == "push" else [f"{ALIAS}:{tmp_path}/src/", "dst/"]
    rs = run_rsync([f"--files-from=:{missing}", "-a", *paths], check=False, cwd=tmp_path, env=sshd.env())
    assert not dst.exists()
    zc = run_zcsync([*_extra(), *via, f"--files-from=:{missing}", "-a", *paths], cwd=tmp_path, env=sshd.env())
    assert not dst.exists()
    message = f"failed to open files-from file {missing}: No such file or directory"
    assert f"rsync: {message}" in rs.stderr and "(code 1)" in rs.stderr and rs.returncode == 12
    assert zc.returncode == 1, zc.stderr
    assert _stderr_lines(zc) == [f"zcsync: {message}", "zcsync error: syntax or usage error (code 1)"]
    assert zc.stdout == ""


@pytest.mark.parametrize("spec", ["otherhost:{list}", "root@{alias}:{list}", "otherhost::{list}"])
@pytest.mark.parametrize("direction", ["push", "pull"])
def test_list_on_another_host_is_refused(tmp_path, sshd, direction, spec):
    """A host prefix that is not the transfer's remote host (user@ included, as rsync compares
    it): rsync's usage error, exit 1, before anything connects."""
    _tree(tmp_path)
    value = spec.format(list=tmp_path / "list", alias=ALIAS)
    dst = tmp_path / "dst"
    paths = ["src/", f"{ALIAS}:{dst}/"] if direction == "push" else [f"{ALIAS}:{tmp_path}/src/", "dst/"]
    rs = run_rsync([f"--files-from={value}", "-a", *paths], check=False, cwd=tmp_path, env=sshd.env())
    zc = run_zcsync([*_extra(), f"--files-from={value}", "-a", *paths], cwd=tmp_path, env=sshd.env())
    message = "--files-from hostname is not the same as the transfer hostname"
    assert rs.returncode == zc.returncode == 1, (rs.stderr, zc.stderr)
    assert _stderr_lines(rs)[0] == message
    assert _stderr_lines(zc) == [f"zcsync: {message}", "zcsync error: syntax or usage error (code 1)"]
    assert not dst.exists()


def test_the_same_host_with_its_user_is_accepted(tmp_path, sshd):
    """user@host:FILE matches a transfer to user@host (the other half of rsync's comparison)."""
    _tree(tmp_path)
    user = sshd.user
    zc = run_zcsync([*_extra(), f"--files-from={user}@{ALIAS}:{tmp_path}/list", "-r",
                     f"{user}@{ALIAS}:{tmp_path}/src/", "dst/"], cwd=tmp_path, env=sshd.env())
    assert zc.returncode == 0, zc.stderr
    assert sorted(_names(tmp_path / "dst")) == [b"a", b"sub/c"]


@pytest.mark.parametrize("spec", ["{alias}:{list}", ":{list}"])
def test_remote_list_in_a_local_transfer_is_refused(tmp_path, spec):
    _tree(tmp_path)
    value = spec.format(list=tmp_path / "list", alias=ALIAS)
    rs = run_rsync([f"--files-from={value}", "-a", "src/", "dst/"], check=False, cwd=tmp_path)
    zc = run_zcsync([f"--files-from={value}", "-a", "src/", "dst/"], cwd=tmp_path)
    message = "--files-from cannot be remote when the transfer is local"
    assert rs.returncode == zc.returncode == 1
    assert _stderr_lines(rs)[0] == message
    assert _stderr_lines(zc) == [f"zcsync: {message}", "zcsync error: syntax or usage error (code 1)"]
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_dotdot_in_the_remote_list_is_refused(tmp_path, sshd, direction):
    """The server applies to its own list the checks it applies to a client's names: no '..'."""
    _tree(tmp_path)
    (tmp_path / "outside").write_text("secret\n")
    (tmp_path / "list").write_text("a\n../outside\n")
    dst = tmp_path / "dst"
    paths = ["src/", f"{ALIAS}:{dst}/"] if direction == "push" else [f"{ALIAS}:{tmp_path}/src/", "dst/"]
    zc = run_zcsync([*_extra(), f"--files-from=:{tmp_path}/list", "-a", *paths], cwd=tmp_path, env=sshd.env())
    assert zc.returncode == 1, zc.stderr
    assert _stderr_lines(zc)[0] == ("zcsync: --files-from name '../outside' refused: '..' is not allowed "
                                    "in a remote transfer")
    assert not dst.exists()


# -- --restrict-to and a misbehaving server -----------------------------------------------

def _restricted(root: pathlib.Path) -> str:
    return (f"env ZCSYNC_RESTRICT_TO={shlex.quote(str(root))} PYTHONPATH={shlex.quote(str(REPO_ROOT))} "
            f"{shlex.quote(sys.executable)} -m zcsync")


def test_restricted_server_reads_only_lists_inside(tmp_path, sshd):
    """Under --restrict-to the list file must lie inside DIR, and no symlink may lead it out."""
    root = tmp_path / "allowed"
    root.mkdir()
    _tree(root)
    (root / "list").write_text("a\nsub/c\n")
    (tmp_path / "outside-list").write_text("a\n")
    (root / "escape").symlink_to(tmp_path / "outside-list")
    restricted = _extra(_restricted(root))

    ok = run_zcsync([*restricted, f"--files-from=:{root}/list", "-r", f"{ALIAS}:{root}/src/", "d1/"],
                    cwd=tmp_path, env=sshd.env())
    assert ok.returncode == 0, ok.stderr
    assert sorted(_names(tmp_path / "d1")) == [b"a", b"sub/c"]
    for listfile in (tmp_path / "outside-list", root / "escape"):
        zc = run_zcsync([*restricted, f"--files-from=:{listfile}", "-r", f"{ALIAS}:{root}/src/", "d2/"],
                        cwd=tmp_path, env=sshd.env())
        assert zc.returncode == 1, zc.stderr
        assert "is outside" in _stderr_lines(zc)[0] and "(--restrict-to)" in _stderr_lines(zc)[0]
        assert not (tmp_path / "d2").exists()


def test_client_refuses_unsafe_names_from_the_server(tmp_path, sshd):
    """A push: the names come from the server, so the client checks them before its sender
    reads anything; a server that sends '../secret' gets a protocol error and nothing."""
    _tree(tmp_path)
    (tmp_path / "secret").write_text("do not send\n")
    evil = tmp_path / "evil_server.py"
    evil.write_text(
        "import sys\n"
        "import zcsync.server as s\n"
        "s.read_list_file = lambda path, from0, limit, nofollow=False: [b'a', b'../secret']\n"
        "s.check_files_from = lambda *args: None\n"
        "sys.exit(s.main(sys.argv[1:]))\n")
    program = f"env PYTHONPATH={shlex.quote(str(REPO_ROOT))} {shlex.quote(sys.executable)} {shlex.quote(str(evil))}"
    dst = tmp_path / "dst"
    zc = run_zcsync([*_extra(program), "--files-from=:whatever", "-r", "src/", f"{ALIAS}:{dst}/"],
                    cwd=tmp_path, env=sshd.env())
    assert zc.returncode == 2, zc.stderr
    assert "the server sent an unsafe --files-from name '../secret'" in zc.stderr
    assert not dst.exists()


# -- the daemon ------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the daemon switches uid/gid: needs root")


@pytest.fixture
def zdaemon(tmp_path):
    module = tmp_path / "module"
    _tree(module)
    (module / "list").write_text("a\nsub/c\n")
    d = ZcsyncDaemon(tmp_path / "zdaemon")
    d.write_config(f"[m]\n    path = {module}\n    read only = no\n    uid = root\n    gid = root\n")
    d.start()
    yield d, module
    d.stop()


@pytest.fixture
def rdaemon(tmp_path):
    if not rsync_available():
        pytest.skip("rsync is not installed")
    module = tmp_path / "rmodule"
    _tree(module)
    (module / "list").write_text("a\nsub/c\n")
    d = RsyncDaemon(tmp_path / "rdaemon")
    d.write_config(f"pid file = {d.pid_file}\n[m]\n    path = {module}\n    read only = no\n"
                   "    uid = root\n    gid = root\n")
    d.start()
    yield d, module
    d.stop()


@needs_root
@pytest.mark.parametrize("spec", [":list", "127.0.0.1::list"])
@pytest.mark.parametrize("direction", ["push", "pull"])
def test_daemon_reads_a_list_file_in_the_module(tmp_path, zdaemon, rdaemon, direction, spec):
    """As rsync's daemon: --files-from=:FILE (or host::FILE) is a list file in the module,
    relative to its root. A pull sends the listed files; a push gets the names back and
    sends those. Both daemons end up with the same files."""
    results = {}
    for name, (d, module) in (("zcsync", zdaemon), ("rsync", rdaemon)):
        local = tmp_path / f"local-{name}"
        _tree(local)
        if direction == "push":
            paths, created = ["src/", d.url("m", "pushed/")], module / "pushed"
        else:
            paths, created = [d.url("m", "src/"), "pulled/"], local / "pulled"
        args = [f"--files-from={spec}", "-r", *paths]
        proc = run_zcsync(args, cwd=local) if name == "zcsync" else run_rsync(args, cwd=local, check=False)
        assert proc.returncode == 0, (name, proc.stderr)
        results[name] = _names(created)
    assert results["zcsync"] == results["rsync"] == [b"a", b"sub/c"]


@needs_root
@pytest.mark.parametrize("spec, code, why", [
    (":../outside", 3, "--files-from path '../outside' refused: '..' is not allowed in a module"),
    (":/etc/passwd", 3, "--files-from absolute path '/etc/passwd' refused"),
    (":sub/../list", 3, "--files-from path 'sub/../list' refused: '..' is not allowed in a module"),
    (":link-out", 3, "--files-from path 'link-out' refused: it leads out of module 'm'"),
    (":link-in", 1, "failed to open files-from file link-in: Too many levels of symbolic links"),
    (":secret-list", 1, "--files-from file 'secret-list' refused: the module excludes it"),
    (":missing", 1, "failed to open files-from file missing: No such file or directory"),
], ids=["dotdot", "absolute", "dotdot-inside", "symlink-out", "symlink-in", "excluded", "missing"])
def test_daemon_list_file_stays_inside_the_module(tmp_path, spec, code, why):
    """A list file is read as a module path is resolved: never through '..', an absolute
    name or any symlink, never one the module excludes. rsync instead rewrites such names
    to lie inside the module (sanitize_path); zcsync refuses them, in one line, and
    transfers nothing."""
    module = tmp_path / "module"
    _tree(module)
    (tmp_path / "outside").write_text("a\n")
    (module / "secret-list").write_text("a\n")
    (module / "link-out").symlink_to(tmp_path / "outside")
    (module / "link-in").symlink_to("list")
    d = ZcsyncDaemon(tmp_path / "zdaemon")
    d.write_config(f"[m]\n    path = {module}\n    read only = no\n    uid = root\n    gid = root\n"
                   "    exclude = secret*\n")
    d.start()
    try:
        zc = run_zcsync([f"--files-from={spec}", "-r", d.url("m", "src/"), "pulled/"], cwd=tmp_path)
    finally:
        d.stop()
    assert zc.returncode == code, zc.stderr
    first = _stderr_lines(zc)[0]
    assert first.startswith("zcsync: " + why), first
    assert not (tmp_path / "pulled").exists()


@needs_root
def test_write_only_module_reads_no_list_file(tmp_path):
    """A write-only module's files are not for reading, a list file among them: refused before
    the transfer starts, whichever way it goes."""
    module = tmp_path / "module"
    _tree(module)
    (module / "list").write_text("a\n")
    _tree(tmp_path / "local")
    d = ZcsyncDaemon(tmp_path / "zdaemon")
    d.write_config(f"[m]\n    path = {module}\n    read only = no\n    write only = yes\n"
                   "    uid = root\n    gid = root\n")
    d.start()
    try:
        zc = run_zcsync(["--files-from=:list", "-r", "src/", d.url("m", "pushed/")], cwd=tmp_path / "local")
    finally:
        d.stop()
    assert zc.returncode == 1, zc.stderr
    assert "module is write only (--files-from reads a file of the module)" in _stderr_lines(zc)[0]
    assert not (module / "pushed").exists()


@needs_root
def test_daemon_list_on_another_host_is_refused(tmp_path, zdaemon):
    d, _ = zdaemon
    zc = run_zcsync(["--files-from=otherhost::list", "-r", d.url("m", "src/"), "pulled/"], cwd=tmp_path)
    assert zc.returncode == 1
    assert _stderr_lines(zc)[0] == "zcsync: --files-from hostname is not the same as the transfer hostname"


# -- --list-only with a destination operand -------------------------------------------------

@pytest.mark.parametrize("args", [[], ["-r"], ["-a"]], ids=["top-level", "recursive", "archive"])
def test_list_only_remote_source_with_destination(tmp_path, sshd, via, args):
    """`--list-only host:src/ dst/` lists the remote tree line for line as rsync does, and
    neither transfers nor creates dst."""
    make_tree(tmp_path / "src", seed=41, files=30)
    operand = f"{ALIAS}:{tmp_path}/src/"
    rs = run_rsync(["--list-only", *args, operand, "dst/"], cwd=tmp_path, env=sshd.env())
    zc = run_zcsync(["--list-only", *args, *via, *_extra(), operand, "dst/"], cwd=tmp_path, env=sshd.env())
    assert zc.returncode == 0, zc.stderr
    assert zc.stdout.splitlines() == rs.stdout.splitlines()
    assert len(rs.stdout.splitlines()) > 3
    assert not (tmp_path / "dst").exists()


def test_list_only_with_a_remote_list(tmp_path, sshd, via):
    """--list-only host:src/ dst/ with --files-from=:FILE lists just the names in the remote list."""
    _tree(tmp_path)
    args = ["--list-only", f"--files-from=:{tmp_path}/list", f"{ALIAS}:{tmp_path}/src/", "dst/"]
    rs = run_rsync(args, cwd=tmp_path, env=sshd.env())
    zc = run_zcsync([*via, *_extra(), *args], cwd=tmp_path, env=sshd.env())
    assert zc.returncode == 0, zc.stderr
    assert zc.stdout.splitlines() == rs.stdout.splitlines()
    assert sorted(line.split()[-1] for line in zc.stdout.splitlines()) == ["a", "sub", "sub/c"]
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("args", [[], ["-r"]], ids=["top-level", "recursive"])
def test_list_only_local_source_with_destination(tmp_path, sshd, args):
    """`--list-only src/ host:dst/` and `--list-only src/ dst/`: rsync lists the source and
    ignores the destination (creates nothing)."""
    make_tree(tmp_path / "src", seed=42, files=20)
    for dest in (f"{ALIAS}:{tmp_path}/rdst/", "dst/"):
        rs = run_rsync(["--list-only", *args, "src/", dest], cwd=tmp_path, env=sshd.env())
        zc = run_zcsync(["--list-only", *args, *_extra(), "src/", dest], cwd=tmp_path, env=sshd.env())
        assert zc.returncode == 0, zc.stderr
        assert zc.stdout.splitlines() == rs.stdout.splitlines() and len(rs.stdout.splitlines()) > 3
        assert not (tmp_path / "rdst").exists() and not (tmp_path / "dst").exists()


@needs_root
@pytest.mark.parametrize("form", ["url", "double-colon"])
def test_list_only_daemon_source_with_destination(tmp_path, zdaemon, form):
    """The daemon forms: listed as rsync lists the module directory; dst is not created."""
    d, module = zdaemon
    make_tree(module / "tree", seed=43, files=25)
    if form == "url":
        operand, port = d.url("m", "tree/"), []
    else:
        operand, port = "127.0.0.1::m/tree/", [f"--port={d.port}"]
    rs = run_rsync(["--list-only", "-r", f"{module}/tree/", "dst/"], cwd=tmp_path)
    zc = run_zcsync(["--list-only", "-r", *port, operand, "dst/"], cwd=tmp_path)
    assert zc.returncode == 0, zc.stderr
    assert zc.stdout.splitlines() == rs.stdout.splitlines() and len(rs.stdout.splitlines()) > 5
    assert not (tmp_path / "dst").exists()


# -- the parts, in process ------------------------------------------------------------------

def test_remote_spec_parsing():
    assert remote_files_from("list") is None and remote_files_from("-") is None
    assert remote_files_from("./host:list") is None and remote_files_from("/abs:list") is None
    spec = remote_files_from(":sub/list")
    assert (spec.user, spec.host, spec.path) == (None, None, "sub/list")
    spec = remote_files_from("me@h:/abs/list")
    assert (spec.user, spec.host, spec.path) == ("me", "h", "/abs/list")
    spec = remote_files_from("h::mod/list")  # as rsync: the rest, module name included
    assert (spec.user, spec.host, spec.path) == (None, "h", "mod/list")
    for bad in (":", ":-", "h:"):
        with pytest.raises(UsageError):
            remote_files_from(bad)


def test_the_option_reaches_the_server():
    opts = Options(files_from="h:list", files_from_remote="list", from0=True, relative=True)
    back = from_wire(to_wire(opts))
    assert back.files_from_remote == "list" and back.from0 and back.files_from is None


def test_read_list_file_follows_no_symlink_with_nofollow(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "list").write_text("a\n#c\n\n/b\n")
    (tmp_path / "linkdir").symlink_to(real)
    (real / "linkfile").symlink_to(real / "list")
    assert read_list_file(str(real / "list"), False, 100, nofollow=True) == [b"a", b"b"]
    assert read_list_file(str(tmp_path / "linkdir" / "list"), False, 100) == [b"a", b"b"]
    for path in (tmp_path / "linkdir" / "list", real / "linkfile"):
        with pytest.raises(UsageError, match="failed to open files-from file"):
            read_list_file(str(path), False, 100, nofollow=True)
    with pytest.raises(UsageError, match="Is a directory"):
        read_list_file(str(real), False, 100)
    with pytest.raises(UsageError, match="too long"):
        read_list_file(str(real / "list"), False, 3)


def test_check_listed():
    assert check_listed([b"a", b"d/b", b"."]) == [b"a", b"d/b", b"."]
    for bad in (b"../x", b"a/../../x", b"/etc/passwd"):
        with pytest.raises(ProtocolError):
            check_listed([b"a", bad])


def _pair() -> tuple[p.Connection, p.Connection]:
    from tests.unit.test_protocol import SockStream

    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    return (p.Connection(SockStream(a), side="receiver", peer="sender"),
            p.Connection(SockStream(b), side="sender", peer="receiver"))


def test_files_from_goes_receiver_to_sender_only():
    """FilesFrom goes from the receiving end to the sender (the client's list in a pull, the
    server's in a push): a sender takes the names, a Goodbye instead of them ends the wait with
    the peer's code, and a receiver never accepts FilesFrom."""
    receiver, sender = _pair()
    send_files_from(receiver, [b"a", b"b/c"])
    assert receive_files_from(sender, Report()) == [b"a", b"b/c"]
    receiver.send(p.Goodbye(1))
    receiver.flush()
    report = Report()
    assert receive_files_from(sender, report) is None and report.exit_code == 1
    sender.send(p.FilesFrom((b"x",), last=True))
    sender.flush()
    with pytest.raises(ProtocolError, match="never accepts"):
        receiver.recv()


def test_a_sender_takes_files_from_only_before_its_list(tmp_path):
    """Once the sending side runs (its file list going out), FilesFrom is a protocol error:
    the decoder lets a sender take it, the sending side reads it only when a list is due."""
    from tests.unit.test_protocol import in_thread
    from zcsync.engine import source_args
    from zcsync.filters import FilterRules
    from zcsync.remote import SendingSide
    from zcsync.sender import Sender

    _tree(tmp_path)
    receiver, sender_conn = _pair()
    opts = Options(recursive=True)
    sender = Sender(source_args([f"{tmp_path}/src/"], opts), opts, FilterRules.parse([]))
    join = in_thread(SendingSide(sender_conn, sender, opts, Report()).run)
    while not isinstance(receiver.recv(), p.FlistEnd):
        pass
    send_files_from(receiver, [b"a"])
    with pytest.raises(ProtocolError, match="unexpected FilesFrom"):
        join()


def test_files_from_bound(monkeypatch):
    receiver, sender = _pair()
    monkeypatch.setattr("zcsync.remote.MAX_FILES_FROM", 10)
    send_files_from(receiver, [b"abcd", b"efgh", b"ijkl"])
    with pytest.raises(ProtocolError, match="more than 10 bytes"):
        receive_files_from(sender, Report())
    assert MAX_FILES_FROM == 64 << 20
