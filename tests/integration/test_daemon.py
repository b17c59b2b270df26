"""`zcsync daemon` on 127.0.0.1: lifecycle, modules, auth, access rules, limits, escapes,
and push/pull compared with `rsync --daemon` on the same trees.

The client is the real one (api.run_paths -> connect.run_remote) reaching the daemon
through daemon.open_daemon_stream (see daemon_fixture.daemon_client).
"""
from __future__ import annotations

import os
import pwd
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.oracle import compare_kwargs_for, run_rsync, run_zcsync
from tests.treecmp import assert_same_tree
from tests.treegen import copy_tree, make_tree, mutate_tree
from zcsync import auth, daemon
from zcsync.endpoints import parse_endpoint
from zcsync.errors import ZcsyncError
from zcsync.options import Options

from .daemon_fixture import RsyncDaemon, ZcsyncDaemon, rsync_available, run_client

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the daemon tests switch uid/gid: need root")

PASSWORD = "s3cret pass"


def _modules(root: Path) -> str:
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "hello").write_text("hello\n")
    return f"""\
# test daemon
auth timeout = 3
[rw]
    path = {root}/data
    comment = read-write module
    read only = no
    uid = root
    gid = root
[ro]
    path = {root}/data
    comment = read-only module
    uid = root
    gid = root
[wo]
    path = {root}/data
    read only = no
    write only = yes
    uid = root
    gid = root
[sec]
    path = {root}/data
    comment = needs a password
    read only = no
    auth users = alice, bob:ro
    secrets file = {root}/secrets
    uid = root
    gid = root
[hidden]
    path = {root}/data
    list = no
[denied]
    path = {root}/data
    hosts deny = 127.0.0.1
[onlyothers]
    path = {root}/data
    hosts allow = 10.9.8.7
[ghost]
    path = {root}/does-not-exist
    auth users = alice
    secrets file = {root}/secrets
[loose]
    path = {root}/data
    auth users = alice
    secrets file = {root}/loose-secrets
[asnobody]
    path = {root}/nobody
    read only = no
[one]
    path = {root}/data
    max connections = 1
    read only = no
    uid = root
    gid = root
"""


@pytest.fixture(scope="module")
def zd(tmp_path_factory):
    """One daemon for the tests that do not stop or reconfigure it."""
    root = tmp_path_factory.mktemp("zd")
    d = ZcsyncDaemon(root)
    d.secrets(f"alice:{PASSWORD}\nbob:{PASSWORD}\n")
    (root / "loose-secrets").write_text(f"alice:{PASSWORD}\n")
    os.chmod(root / "loose-secrets", 0o644)
    (root / "nobody").mkdir()
    os.chown(root / "nobody", pwd.getpwnam("nobody").pw_uid, -1)
    d.write_config(_modules(root))
    d.start()
    yield d
    d.stop()


@pytest.fixture
def pwfile(tmp_path):
    path = tmp_path / "pw"
    path.write_text(PASSWORD + "\n")
    os.chmod(path, 0o600)
    return str(path)


def _src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_text("a\n")
    (src / "sub" / "b").write_text("b\n")
    return src


# -- lifecycle and listing -------------------------------------------------------

def test_lifecycle_reload_and_clean_stop(tmp_path):
    d = ZcsyncDaemon(tmp_path / "d")
    (tmp_path / "m").mkdir()
    d.write_config(f"pid file = {d.pid_file}\n[first]\n path = {tmp_path}/m\n")
    d.start()
    try:
        assert d.pid_file.read_text().strip() == str(d.proc.pid)
        ep = parse_endpoint(f"zcsync://127.0.0.1:{d.port}/")
        assert [m for m, _ in daemon.list_modules(ep, Options())] == ["first"]
        d.write_config(f"pid file = {d.pid_file}\n[first]\n path = {tmp_path}/m\n"
                       f"[second]\n path = {tmp_path}/m\n comment = added\n")
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while ("second", "added") not in daemon.list_modules(ep, Options()):
            assert time.monotonic() < deadline, "SIGHUP did not load the new module: " + d.log_text()
            time.sleep(0.05)
        # A broken config on reload keeps the old one.
        d.write_config("[bad\n")
        d.signal(signal.SIGHUP)
        while "config not reloaded" not in d.log_text():
            assert time.monotonic() < deadline, d.log_text()
            time.sleep(0.05)
        assert ("second", "added") in daemon.list_modules(ep, Options())
        assert "config not reloaded: " + f"{d.config}:1: a section header must end with ']'" in d.log_text()
    finally:
        code = d.stop()
    assert code == 0
    assert not d.pid_file.exists()
    assert "zcsync daemon stopped" in d.log_text()


def test_bad_config_is_one_line_with_place(tmp_path):
    d = ZcsyncDaemon(tmp_path / "d")
    d.write_config("[m]\n path = /tmp\n read only = perhaps\n")
    proc = subprocess.run(d.argv(), capture_output=True, text=True, timeout=30, check=False,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"zcsync daemon: {d.config}:3: read only must be yes or no, not 'perhaps'"


def test_module_listing(zd):
    ep = parse_endpoint("127.0.0.1::")
    modules = daemon.list_modules(ep, Options(port=zd.port))
    names = [m for m, _ in modules]
    assert ("rw", "read-write module") in modules and ("sec", "needs a password") in modules
    assert "hidden" not in names  # list = no
    assert "denied" not in names and "onlyothers" not in names  # not for this host
    assert daemon.format_module_list([("rw", "x")]) == "rw             \tx\n"


def test_one_operand_lists_the_module_path_like_rsync(zd):
    """`zcsync zcsync://host/module/path/` alone lists the remote tree, in rsync's order."""
    from tests.oracle import run_rsync, run_zcsync
    from tests.treegen import make_tree

    make_tree(zd.dir / "data" / "tree", seed=7, files=25)
    rs = run_rsync(["-r", f"{zd.dir}/data/tree/"])
    zc = run_zcsync(["-r", zd.url("rw", "tree/")])
    assert zc.returncode == 0, zc.stderr
    assert zc.stdout.splitlines() == rs.stdout.splitlines() and len(rs.stdout.splitlines()) > 5
    code, msg, _ = run_client([zd.url("rw", "../")], recursive=True)
    assert code != 0  # escapes are refused as for a transfer


def test_unknown_module(zd, tmp_path):
    code, msg, _ = run_client([zd.url("nosuch", ""), str(tmp_path / "out")], archive=True)
    assert code == 5 and "Unknown module 'nosuch'" in msg


# -- access rules -------------------------------------------------------------------

def test_read_only_refuses_push(zd, tmp_path):
    code, msg, _ = run_client([f"{_src(tmp_path)}/", zd.url("ro", "x/")], archive=True)
    assert code == 1 and "module is read only" in msg
    assert not (Path(zd.dir) / "data" / "x").exists()


def test_write_only_refuses_pull(zd, tmp_path):
    code, msg, _ = run_client([zd.url("wo", ""), str(tmp_path / "out")], archive=True)
    assert code == 1 and "module is write only" in msg
    assert not (tmp_path / "out").exists()
    code, msg, _ = run_client([f"{_src(tmp_path)}/", zd.url("wo", "from-wo/")], archive=True)
    assert code == 0, msg


def test_hosts_deny(zd, tmp_path):
    for module in ("denied", "onlyothers"):
        code, msg, _ = run_client([zd.url(module, ""), str(tmp_path / "out")], archive=True)
        assert code == 5 and f"access denied to {module} from 127.0.0.1" in msg


# -- authentication --------------------------------------------------------------

def test_auth_right_password(zd, tmp_path, pwfile):
    code, msg, _ = run_client([f"{_src(tmp_path)}/", zd.url("sec", "auth-push/", user="alice")],
                              archive=True, password_file=pwfile)
    assert code == 0, msg
    assert (Path(zd.dir) / "data" / "auth-push" / "sub" / "b").read_text() == "b\n"


def test_auth_password_from_environment(zd, tmp_path, monkeypatch):
    monkeypatch.setenv("ZCSYNC_PASSWORD", PASSWORD)
    code, msg, _ = run_client([zd.url("sec", "hello", user="alice"), str(tmp_path / "h")], archive=True)
    assert code == 0, msg
    assert (tmp_path / "h").read_text() == "hello\n"


def test_auth_per_user_read_only(zd, tmp_path, pwfile):
    code, msg, _ = run_client([f"{_src(tmp_path)}/", zd.url("sec", "bob/", user="bob")],
                              archive=True, password_file=pwfile)
    assert code == 1 and "read only" in msg


def test_auth_wrong_password_then_throttled(zd, tmp_path, monkeypatch):
    monkeypatch.setenv("ZCSYNC_PASSWORD", "wrong")
    code, msg, _ = run_client([zd.url("sec", ""), str(tmp_path / "o")], archive=True)
    assert code == 5 and "auth failed on module sec" in msg
    code, msg, _ = run_client([zd.url("sec", "", user="mallory"), str(tmp_path / "o")], archive=True)
    assert code == 5 and "auth failed on module sec" in msg  # unknown user: same answer
    # Two failures from this address: the next attempt waits before its verdict, even a good one.
    monkeypatch.setenv("ZCSYNC_PASSWORD", PASSWORD)
    started = time.monotonic()
    code, msg, _ = run_client([zd.url("sec", "hello", user="alice"), str(tmp_path / "h")], archive=True)
    assert code == 0, msg
    assert time.monotonic() - started >= 0.9
    assert not (tmp_path / "o").exists()


def test_nothing_touches_the_module_before_auth(zd, tmp_path, pwfile, monkeypatch):
    # The module's path does not exist: a wrong password must learn only "auth failed";
    # the path is looked at (and found missing) only after a good one.
    monkeypatch.setenv("ZCSYNC_PASSWORD", "wrong")
    code, msg, _ = run_client([zd.url("ghost", "", user="alice"), str(tmp_path / "o")], archive=True)
    assert code == 5 and "auth failed on module ghost" in msg
    code, msg, _ = run_client([zd.url("ghost", "", user="alice"), str(tmp_path / "o")], archive=True,
                              password_file=pwfile)
    assert code == 5 and "chdir failed" in msg


def test_other_readable_secrets_file_refused(zd, tmp_path, pwfile):
    code, msg, _ = run_client([zd.url("loose", "hello", user="alice"), str(tmp_path / "h")], archive=True,
                              password_file=pwfile)
    assert code == 5 and "auth failed on module loose" in msg
    assert "must not be other-accessible" in zd.log_text()


def test_sessions_run_as_the_module_user(zd, tmp_path):
    # No uid/gid in the module: as root the daemon becomes nobody (rsync's default).
    src = _src(tmp_path)
    code, msg, _ = run_client([f"{src}/", zd.url("asnobody", "d/")], recursive=True)
    assert code == 0, msg
    made = Path(zd.dir) / "nobody" / "d" / "sub" / "b"
    assert made.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    code, msg, _ = run_client([f"{src}/", zd.url("rw", "as-root/")], recursive=True)
    assert code == 0, msg
    assert (Path(zd.dir) / "data" / "as-root" / "a").stat().st_uid == 0


def test_auth_missing_password(zd, tmp_path, monkeypatch):
    monkeypatch.delenv("ZCSYNC_PASSWORD", raising=False)
    code, msg, _ = run_client([zd.url("sec", "", user="alice"), str(tmp_path / "o")], archive=True)
    assert code == 5 and "needs a password" in msg and "--password-file" in msg


def test_other_readable_password_file_refused(zd, tmp_path, pwfile):
    os.chmod(pwfile, 0o604)
    code, msg, _ = run_client([zd.url("sec", "", user="alice"), str(tmp_path / "o")],
                              archive=True, password_file=pwfile)
    assert code == 1 and "other-accessible" in msg


class _Recorder:
    """A one-connection TCP proxy that records what the client sends."""

    def __init__(self, target_port: int) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.target = target_port
        self.sent = bytearray()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _pump(self, a: socket.socket, b: socket.socket, record: bool) -> None:
        try:
            while data := a.recv(65536):
                if record:
                    self.sent += data
                b.sendall(data)
        except OSError:
            pass
        finally:
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _run(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.target))
        back = threading.Thread(target=self._pump, args=(server, client, False), daemon=True)
        back.start()
        self._pump(client, server, True)
        back.join(10)
        client.close()
        server.close()


def test_replayed_handshake_fails(zd, tmp_path, pwfile):
    rec = _Recorder(zd.port)
    code, msg, _ = run_client([f"zcsync://alice@127.0.0.1:{rec.port}/sec/hello", str(tmp_path / "h")],
                              archive=True, password_file=pwfile)
    assert code == 0, msg
    rec.thread.join(10)
    recorded = bytes(rec.sent)
    (body_len,) = struct.unpack(">I", recorded[8:12])
    preamble = recorded[:12 + body_len + auth.PROOF_SIZE]
    with socket.create_connection(("127.0.0.1", zd.port), timeout=20) as s:
        greeting = _recv_exact(s, 8 + 1 + auth.NONCE_SIZE)
        assert greeting[:9] == daemon.MAGIC + b"\0"
        # The captured request and proof, byte for byte (not what followed them: the daemon
        # closes on the failed proof, and unread bytes would turn its close into a reset).
        s.sendall(preamble)
        reply = _recv_all(s)
    assert reply[:1] == bytes([daemon.R_AUTH])
    assert reply[1:2] == bytes([daemon.R_ERROR]) and b"auth failed on module sec" in reply
    assert len(preamble) < len(recorded)  # the original session went on past the proof


def _recv_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def _recv_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def test_malformed_requests_are_refused(zd):
    cases = [
        struct.pack(">I", daemon.MAX_REQUEST + 1),  # over-long body, refused from its length alone
        struct.pack(">I", 3) + b"\x02\x05a",  # truncated
    ]
    for payload in cases:
        with socket.create_connection(("127.0.0.1", zd.port), timeout=10) as s:
            _recv_exact(s, 8 + 1 + auth.NONCE_SIZE)
            s.sendall(daemon.MAGIC + payload)
            reply = _recv_all(s)
        assert reply[:1] == bytes([daemon.R_ERROR]) and reply[1] == 2, reply
    bad_module = daemon.DaemonRequest(daemon.KIND_TRANSFER, "rw", "u", "sender", "{}", (b".",),
                                      auth.new_nonce()).encode().replace(b"\x02rw", b"\x02r/")
    with socket.create_connection(("127.0.0.1", zd.port), timeout=10) as s:
        _recv_exact(s, 8 + 1 + auth.NONCE_SIZE)
        s.sendall(daemon.MAGIC + struct.pack(">I", len(bad_module)) + bad_module)
        assert b"bad module name" in _recv_all(s)


# -- limits ---------------------------------------------------------------------------

def test_module_max_connections(zd, tmp_path):
    ep = parse_endpoint(zd.url("one", ""))
    first = daemon.open_daemon_stream(ep, Options(), "sender", ["."])  # holds the only slot
    try:
        with pytest.raises(ZcsyncError) as info:
            daemon.open_daemon_stream(ep, Options(), "sender", ["."])
        assert info.value.exit_code == 5
        assert "max connections (1) reached -- try again later" in info.value.message
    finally:
        first.close()
    deadline = time.monotonic() + 10
    while True:  # the slot frees when the first session's process ends
        code, msg, _ = run_client([zd.url("one", "hello"), str(tmp_path / "h")], archive=True)
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert code == 0, msg


def test_stalled_client_dropped_at_deadline_and_slot_freed(tmp_path):
    d = ZcsyncDaemon(tmp_path / "d")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "f").write_text("f\n")
    d.write_config(f"max connections = 1\nauth timeout = 1\n[m]\n path = {tmp_path}/m\n uid = root\n gid = root\n")
    d.start()
    try:
        stalled = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        started = time.monotonic()
        time.sleep(0.2)  # the daemon has accepted it
        code, msg, _ = run_client([d.url("m", "f"), str(tmp_path / "f1")], archive=True)
        assert code == 5 and "max connections (1) reached" in msg
        assert _recv_all(stalled)[:9] == daemon.MAGIC + b"\0"  # greeting, then closed at the deadline
        waited = time.monotonic() - started
        assert 0.8 <= waited < 5, waited
        stalled.close()
        deadline = time.monotonic() + 5
        while True:
            code, msg, _ = run_client([d.url("m", "f"), str(tmp_path / "f2")], archive=True)
            if code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert code == 0, msg
        assert "did not authenticate within 1 seconds" in d.log_text()
    finally:
        assert d.stop() == 0


def test_connection_refused_exit_10(tmp_path):
    port = ZcsyncDaemon(tmp_path / "nothing").port  # a free port: nobody listens
    code, msg, _ = run_client([f"zcsync://127.0.0.1:{port}/m/", str(tmp_path / "o")], archive=True)
    assert code == 10 and "failed to connect" in msg


def test_contimeout_exit_35(tmp_path):
    # A listener whose backlog is full never completes another handshake: connect hangs.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        filler = socket.create_connection(("127.0.0.1", port), timeout=2)
        try:
            started = time.monotonic()
            code, msg, _ = run_client([f"zcsync://127.0.0.1:{port}/m/", str(tmp_path / "o")], archive=True,
                                      contimeout=1)
        finally:
            filler.close()
    assert code == 35, msg
    assert time.monotonic() - started < 5


def test_not_a_zcsync_daemon(tmp_path):
    if not rsync_available():
        pytest.skip("rsync not installed")
    (tmp_path / "m").mkdir()
    rd = RsyncDaemon(tmp_path / "rd")
    rd.write_config(f"use chroot = no\n[m]\n path = {tmp_path}/m\n")
    rd.start()
    try:
        code, msg, _ = run_client([f"zcsync://127.0.0.1:{rd.port}/m/", str(tmp_path / "o")], archive=True)
        assert code == 5 and "is an rsync daemon" in msg
    finally:
        rd.stop()


# -- escapes ------------------------------------------------------------------------

def test_escapes_from_module_refused(zd, tmp_path):
    data = Path(zd.dir) / "data"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret\n")
    if not (data / "out-link").is_symlink():
        os.symlink(str(outside), data / "out-link")
        os.symlink("../..", data / "up-link")
    os.makedirs(data / "inner", exist_ok=True)
    if not (data / "in-link").is_symlink():
        os.symlink("inner", data / "in-link")
    src = _src(tmp_path)
    for remote in ("../", "sub/../../", "/etc/", "out-link/", "out-link/secret", "up-link/", "up-link/x"):
        code, msg, _ = run_client([zd.url("rw", remote), str(tmp_path / "got")], archive=True)
        assert code == 3, (remote, code, msg)
        assert "refused" in msg, msg
        code, msg, _ = run_client([f"{src}/", zd.url("rw", remote + ("" if remote.endswith("/") else "/"))],
                                  archive=True)
        assert code == 3, (remote, code, msg)
    code, msg, _ = run_client([f"{src}/", zd.url("rw", "inner/x/")], archive=True, backup=True,
                              backup_dir="/tmp/elsewhere")
    assert code == 3 and "--backup-dir" in msg
    assert not (tmp_path / "got").exists()
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    # A symlink that stays inside the module is fine.
    code, msg, _ = run_client([f"{src}/", zd.url("rw", "in-link/")], archive=True)
    assert code == 0, msg
    assert (data / "inner" / "sub" / "b").exists()


def test_copy_links_refused_when_daemon_sends(zd, tmp_path):
    code, msg, _ = run_client([zd.url("rw", ""), str(tmp_path / "o")], archive=True, copy_links=True)
    assert code == 1 and "--copy-links" in msg


def test_copy_devices_refused_when_daemon_sends(zd, tmp_path):
    """As rsync's daemon by default: a client may not read the daemon's device nodes."""
    code, msg, _ = run_client([zd.url("rw", ""), str(tmp_path / "o")], archive=True, copy_devices=True)
    assert code == 1 and "--copy-devices" in msg
    assert not (tmp_path / "o").exists()


# -- the oracle: rsync --daemon on the same trees ---------------------------------------

def _pair(tmp_path: Path, extra: str = "") -> tuple[ZcsyncDaemon, RsyncDaemon, Path, Path]:
    if not rsync_available():
        pytest.skip("rsync not installed")
    zmod, rmod = tmp_path / "zmod", tmp_path / "rmod"
    zmod.mkdir()
    rmod.mkdir()
    common = f"    read only = no\n    uid = root\n    gid = root\n{extra}"
    zd = ZcsyncDaemon(tmp_path / "zdaemon")
    zd.write_config(f"[m]\n    path = {zmod}\n{common}")
    rd = RsyncDaemon(tmp_path / "rdaemon")
    rd.write_config(f"use chroot = yes\n[m]\n    path = {rmod}\n{common}")
    return zd.start(), rd.start(), zmod, rmod


def _items(events: list) -> list[str]:
    return sorted(f"{e.itemize} {e.name}{e.extra}" for e in events if e.itemize)


def _rsync_items(stdout: str) -> list[str]:
    return sorted(line for line in stdout.splitlines() if line and not line.startswith("created directory"))


def test_push_matches_rsync_daemon(tmp_path):
    zd, rd, zmod, rmod = _pair(tmp_path)
    try:
        src = tmp_path / "src"
        make_tree(src, 11, max_size=256 << 10)
        rs = run_rsync(["-a", "-i", f"{src}/", rd.url("m", "dst/")], check=False)
        code, msg, events = run_client([f"{src}/", zd.url("m", "dst/")], archive=True, itemize=True)
        assert rs.returncode == code == 0, (rs.stderr, msg)
        assert_same_tree(rmod / "dst", zmod / "dst", **compare_kwargs_for(["-a"]))
        assert _items(events) == _rsync_items(rs.stdout)
        # A resync with deletions.
        mutate_tree(src, 12)
        rs = run_rsync(["-a", "--delete", f"{src}/", rd.url("m", "dst/")], check=False)
        code, msg, _ = run_client([f"{src}/", zd.url("m", "dst/")], archive=True, delete=True)
        assert rs.returncode == code, (rs.stderr, msg)
        assert_same_tree(rmod / "dst", zmod / "dst", **compare_kwargs_for(["-a"]))
    finally:
        zd.stop()
        rd.stop()


def test_push_names_no_unchanged_files_like_rsync_daemon(tmp_path):
    """A daemon tells a client no more than level 1 of names (rsync's "max verbosity" of 1):
    --info=name2 or -vv gets no "X is uptodate" lines from a push, as from rsync's daemon."""
    zd, rd, zmod, rmod = _pair(tmp_path)
    try:
        src = tmp_path / "src"
        make_tree(src, 14, max_size=16 << 10)
        for words in (["--info=name2"], ["-vv"]):
            run_rsync(["-a", f"{src}/", rd.url("m", "dst/")])
            run_client([f"{src}/", zd.url("m", "dst/")], archive=True)
            rs = run_rsync(["-a", *words, f"{src}/", rd.url("m", "dst/")])
            zc = run_zcsync(["-a", *words, f"{src}/", zd.url("m", "dst/")])
            assert rs.returncode == zc.returncode == 0, zc.stderr
            assert "is uptodate" not in rs.stdout and "is uptodate" not in zc.stdout
            # (locally the same words do name them)
            local = run_zcsync(["-a", *words, f"{src}/", str(zmod / "dst") + "/"])
            assert "is uptodate" in local.stdout
    finally:
        zd.stop()
        rd.stop()


def test_pull_matches_rsync_daemon(tmp_path):
    zd, rd, zmod, rmod = _pair(tmp_path)
    try:
        make_tree(tmp_path / "base", 21, max_size=256 << 10)
        copy_tree(tmp_path / "base", zmod / "src")
        copy_tree(tmp_path / "base", rmod / "src")
        rs = run_rsync(["-a", "-i", rd.url("m", "src/"), str(tmp_path / "rout")], check=False)
        code, msg, events = run_client([zd.url("m", "src/"), str(tmp_path / "zout")], archive=True, itemize=True)
        assert rs.returncode == code, (rs.stderr, msg)
        assert_same_tree(tmp_path / "rout", tmp_path / "zout", **compare_kwargs_for(["-a"]))
        assert _items(events) == _rsync_items(rs.stdout)
    finally:
        zd.stop()
        rd.stop()


def _user_xattrs(root: Path) -> dict[str, dict[str, bytes]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_symlink():
            names = sorted(n for n in os.listxattr(p) if n.startswith("user."))
            out[str(p.relative_to(root))] = {n: os.getxattr(p, n) for n in names}
    return out


def test_xattrs_push_and_pull_match_rsync_daemon(tmp_path):
    """-X through the daemon, both ways: the xattrs rsync's daemon keeps (the sending side
    of a push and the daemon's of a pull used to send none)."""
    zd, rd, zmod, rmod = _pair(tmp_path)
    try:
        src = tmp_path / "src"
        make_tree(src, 13, max_size=64 << 10)
        assert any(_user_xattrs(src).values())
        rs = run_rsync(["-aX", f"{src}/", rd.url("m", "dst/")], check=False)
        code, msg, _ = run_client([f"{src}/", zd.url("m", "dst/")], archive=True, xattrs=True)
        assert rs.returncode == code == 0, (rs.stderr, msg)
        assert_same_tree(rmod / "dst", zmod / "dst", xattrs=True, **compare_kwargs_for(["-a"]))
        assert _user_xattrs(zmod / "dst") == _user_xattrs(src)
        rs = run_rsync(["-aX", rd.url("m", "dst/"), str(tmp_path / "rout")], check=False)
        code, msg, _ = run_client([zd.url("m", "dst/"), str(tmp_path / "zout")], archive=True, xattrs=True)
        assert rs.returncode == code == 0, (rs.stderr, msg)
        assert_same_tree(tmp_path / "rout", tmp_path / "zout", xattrs=True, **compare_kwargs_for(["-a"]))
        assert _user_xattrs(tmp_path / "zout") == _user_xattrs(src)
    finally:
        zd.stop()
        rd.stop()


@pytest.mark.parametrize("option", [{"copy_dest": "../secret"}, {"link_dest": "../secret"},
                                    {"compare_dest": "../secret"}, {"backup": True, "backup_dir": "../secret"}],
                         ids=lambda o: next(iter(o.items()))[0] if "backup" not in o else "backup_dir")
def test_basis_and_backup_dirs_refused_on_a_module_with_excludes(tmp_path, option):
    """An excluded file must not be reached through a --*-dest dir (a file of the same size
    and time would take it as its copy, then be pulled) nor replaced by a backup."""
    zd = ZcsyncDaemon(tmp_path / "zdaemon")
    mod = tmp_path / "mod"
    (mod / "secret").mkdir(parents=True)
    (mod / "dst").mkdir()
    key = mod / "secret" / "x"
    key.write_bytes(b"the secret key")
    os.utime(key, (1_600_000_000, 1_600_000_000))
    (mod / "dst" / "x").write_bytes(b"an old dst file")
    zd.write_config(f"[m]\n    path = {mod}\n    read only = no\n    exclude = /secret/\n")
    zd.start()
    try:
        src = tmp_path / "src"
        src.mkdir()
        (src / "x").write_bytes(b"same size: 14")  # 14 bytes, like the key
        os.utime(src / "x", (1_600_000_000, 1_600_000_000))
        code, msg, _ = run_client([f"{src}/", zd.url("m", "dst/")], archive=True, ignore_times=True, **option)
        assert code == 1 and "refused on a module with excludes" in msg, msg
        assert key.read_bytes() == b"the secret key"
        assert (mod / "dst" / "x").read_bytes() == b"an old dst file"
    finally:
        zd.stop()


def test_module_exclude_matches_rsync_daemon(tmp_path):
    zd, rd, zmod, rmod = _pair(tmp_path, "    exclude = *.tmp /top-secret\n")
    try:
        base = tmp_path / "base"
        (base / "sub").mkdir(parents=True)
        (base / "top-secret").mkdir()
        for rel in ("a", "x.tmp", "sub/b", "sub/y.tmp", "top-secret/c"):
            (base / rel).write_text(rel)
        # Times in the past: rsync leaves a directory's time alone when it is within the
        # same second as the copy's "now" (its daemon transfers no nanoseconds).
        for rel in ("a", "x.tmp", "sub/b", "sub/y.tmp", "top-secret/c", "sub", "top-secret", "."):
            os.utime(base / rel, ns=(1_600_000_000_123_456_789,) * 2)
        copy_tree(base, zmod / "tree")
        copy_tree(base, rmod / "tree")
        # Pull: the excluded names are silently not sent.
        rs = run_rsync(["-a", rd.url("m", "tree/"), str(tmp_path / "rpull")], check=False)
        code, msg, _ = run_client([zd.url("m", "tree/"), str(tmp_path / "zpull")], archive=True)
        assert rs.returncode == code == 0, (rs.stderr, msg)
        assert_same_tree(tmp_path / "rpull", tmp_path / "zpull", **compare_kwargs_for(["-a"]))
        # Push: the daemon refuses them (exit 23) and --delete leaves excluded names alone.
        (base / "extra").write_text("extra")
        copy_tree(base, tmp_path / "push-src")
        (zmod / "keep.tmp").write_text("old")
        (rmod / "keep.tmp").write_text("old")
        rs = run_rsync(["-a", "--delete", f"{tmp_path}/push-src/", rd.url("m", "")], check=False)
        code, msg, _ = run_client([f"{tmp_path}/push-src/", zd.url("m", "")], archive=True, delete=True)
        assert rs.returncode == code == 23, (rs.stderr, msg)
        assert "daemon refused to receive" in msg
        assert (zmod / "keep.tmp").read_text() == "old"
        for rel in ("a", "extra", "sub/b"):
            assert (zmod / rel).read_text() == (rmod / rel).read_text()
        for rel in ("x.tmp", "sub/y.tmp"):
            assert (zmod / rel).exists() == (rmod / rel).exists()
        assert not (zmod / "sub" / "y.tmp").exists()
        # Pulling an excluded path looks like pulling one that does not exist.
        rs = run_rsync(["-a", rd.url("m", "top-secret/"), str(tmp_path / "r3")], check=False)
        code, msg, _ = run_client([zd.url("m", "top-secret/"), str(tmp_path / "z3")], archive=True)
        assert rs.returncode == code == 23, (rs.stderr, msg)
        assert not (tmp_path / "z3" / "c").exists()
    finally:
        zd.stop()
        rd.stop()


def test_files_from_pull_and_escapes(zd, tmp_path, caplog):
    """A pull with --files-from sends the names to the daemon, which checks each one like a path."""
    data = zd.dir / "data"
    (data / "ff").mkdir(exist_ok=True)
    (data / "ff" / "one").write_text("1")
    (data / "ff" / "two").write_text("2")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    if not (data / "ff" / "out").is_symlink():
        (data / "ff" / "out").symlink_to(outside)
    names = tmp_path / "names"
    names.write_text("one\n")
    code, msg, _ = run_client([zd.url("rw", "ff/"), str(tmp_path / "got")], archive=True, files_from=str(names))
    assert code == 0, msg
    assert sorted(p.name for p in (tmp_path / "got").iterdir()) == ["one"]
    for bad, why in (("out/secret\n", "leads out of module"), ("../hello\n", "'..' is not allowed")):
        names.write_text(bad)
        caplog.clear()
        code, msg, _ = run_client([zd.url("rw", "ff/"), str(tmp_path / "bad")], archive=True,
                                  files_from=str(names))
        assert code in (1, 3) and why in msg + caplog.text, (code, msg, caplog.text)
        assert not (tmp_path / "bad" / "secret").exists() and not (tmp_path / "bad" / "hello").exists()


def test_wildcard_pull_matches_rsync_daemon_and_reveals_nothing_outside(tmp_path):
    """A pull's wildcards are expanded in the module, as rsync's daemon does; a match that
    leads out of the module or that the module excludes is dropped without a word."""
    zd, rd, zmod, rmod = _pair(tmp_path, "    exclude = *.tmp\n")
    try:
        base = tmp_path / "base"
        for rel in ("a.txt", "b.txt", "x.tmp", "sub/c.txt", "sub2/d", "sun"):
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            (base / rel).write_text(rel)
        for rel in ("a.txt", "b.txt", "x.tmp", "sub/c.txt", "sub2/d", "sun", "sub", "sub2", "."):
            os.utime(base / rel, ns=(1_600_000_000_123_456_789,) * 2)
        copy_tree(base, zmod / "tree")
        copy_tree(base, rmod / "tree")
        for i, patterns in enumerate((["tree/*.txt"], ["tree/*/"], ["tree/s*", "tree/[ab].txt"], ["tree/*.t?p"])):
            rs = run_rsync(["-a", *(rd.url("m", p) for p in patterns), str(tmp_path / f"r{i}")], check=False)
            code, msg, _ = run_client([*(zd.url("m", p) for p in patterns), str(tmp_path / f"z{i}")], archive=True)
            assert rs.returncode == code, (patterns, rs.stderr, msg)
            if code == 0:
                assert_same_tree(tmp_path / f"r{i}", tmp_path / f"z{i}", **{**compare_kwargs_for(["-a"]), "root_times": False})
        assert code == 23  # *.t?p: only the excluded x.tmp matches, so nothing does
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "secret-name").write_text("secret\n")
        os.symlink(str(outside), zmod / "tree" / "out-link")
        code, msg, _ = run_client([zd.url("m", "tree/*/secret*"), str(tmp_path / "leak")], archive=True)
        assert code == 23 and "secret-name" not in msg, msg
        code, msg, _ = run_client([zd.url("m", "tree/out-link/*"), str(tmp_path / "leak")], archive=True)
        assert code == 3 and "refused" in msg and "secret-name" not in msg, msg
        assert not (tmp_path / "leak").exists() or not any((tmp_path / "leak").rglob("secret*"))
    finally:
        zd.stop()
        rd.stop()


def test_address_binds_the_client_socket(zd, tmp_path):
    """--address: the daemon sees the connection come from that address (hosts deny = 127.0.0.1)."""
    code, msg, _ = run_client([zd.url("denied", "hello"), str(tmp_path / "a")])
    assert code == 5 and "denied" in msg.lower(), msg
    code, msg, _ = run_client([zd.url("denied", "hello"), str(tmp_path / "b")], address="127.0.0.2")
    assert code == 0, msg
    assert (tmp_path / "b").read_text() == "hello\n"


def test_ip_version_picks_the_address_family(zd, tmp_path):
    """-6 to an IPv4 address fails in getaddrinfo (exit 10, as rsync); -4 connects."""
    code, msg, _ = run_client([zd.url("rw", "hello"), str(tmp_path / "six")], ip_version=6)
    assert code == 10 and "getaddrinfo" in msg, msg
    code, msg, _ = run_client([zd.url("rw", "hello"), str(tmp_path / "four")], ip_version=4)
    assert code == 0, msg


def test_wildcard_pull_from_a_module_run_as_nobody(zd, tmp_path):
    """The session globs after it dropped privileges (no uid: it runs as nobody, who may not
    be able to read the Python installation: glob must be imported before)."""
    code, msg, _ = run_client([zd.url("denied", "hel*"), str(tmp_path / "got")], address="127.0.0.2")
    assert code == 0, msg
    assert (tmp_path / "got").read_text() == "hello\n"


def test_temp_dir_must_stay_in_the_module(zd, tmp_path):
    src = _src(tmp_path)
    for temp in ("/tmp", "../x"):
        code, msg, _ = run_client([f"{src}/", zd.url("rw", "tin/")], archive=True, temp_dir=temp)
        assert code == 3 and "--temp-dir" in msg, (temp, msg)
    os.makedirs(zd.dir / "data" / "tin" / "t", exist_ok=True)
    code, msg, _ = run_client([f"{src}/", zd.url("rw", "tin/")], archive=True, temp_dir="t")
    assert code == 0, msg
    assert list((zd.dir / "data" / "tin" / "t").iterdir()) == []


def _missing_args_trees(src: Path, dst: Path) -> None:
    """src has a file; dst has it too, plus what the missing operands name."""
    src.mkdir(parents=True)
    (src / "a").write_text("a")
    for rel in ("a", "missing_f", "gone/g", "keep.tmp"):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_text("old " + rel)
    (dst / "emptydir").mkdir()
    for path in (*src.rglob("*"), src, *dst.rglob("*"), dst):
        os.utime(path, ns=(1_600_000_000_123_456_789,) * 2)


@pytest.mark.parametrize("force", [False, True], ids=["alone", "force"])
def test_delete_missing_args_push_matches_rsync_daemon(tmp_path, force):
    """A push into a module: the missing operands' names are deleted; one the module
    excludes is refused (23) and stays, as with rsync's daemon."""
    zd, rd, zmod, rmod = _pair(tmp_path, "    exclude = *.tmp\n")
    try:
        src = tmp_path / "src"
        _missing_args_trees(src, zmod / "dst")
        copy_tree(zmod / "dst", rmod / "dst")
        operands = [f"{src}/{name}" for name in ("a", "missing_f", "gone", "emptydir", "keep.tmp", "nonesuch")]
        rs = run_rsync(["-a", "-i", "--delete-missing-args", *(["--force"] if force else []), *operands,
                        rd.url("m", "dst/")], check=False)
        code, msg, events = run_client([*operands, zd.url("m", "dst/")], archive=True, itemize=True,
                                       delete_missing_args=True, force=force)
        assert rs.returncode == code == 23, (rs.stderr, msg)
        assert "daemon refused to receive file" in msg and (zmod / "dst" / "keep.tmp").exists()
        assert_same_tree(rmod / "dst", zmod / "dst", **{**compare_kwargs_for(["-a"]), "dir_times": False})
        assert [i.split() for i in _items(events) if i.startswith("*")] == \
            [i.split() for i in _rsync_items(rs.stdout) if i.startswith("*")]
        assert not (zmod / "dst" / "missing_f").exists() and (zmod / "dst" / "gone").exists() != force
    finally:
        zd.stop()
        rd.stop()


@pytest.mark.parametrize("option", ["delete", "ignore"])
def test_missing_args_pull_matches_rsync_daemon(tmp_path, option):
    """A pull from a module: the daemon's sender sends the missing operands, the client
    deletes (--delete-missing-args) or nothing happens (--ignore-missing-args). A name the
    module excludes looks missing, as in rsync: the client's copy of it goes too."""
    zd, rd, zmod, rmod = _pair(tmp_path, "    exclude = *.tmp\n")
    try:
        _missing_args_trees(zmod / "src", tmp_path / "zout")
        (zmod / "src" / "keep.tmp").write_text("secret")
        copy_tree(zmod / "src", rmod / "src")
        copy_tree(tmp_path / "zout", tmp_path / "rout")
        names = ("a", "missing_f", "gone", "emptydir", "nonesuch", "keep.tmp")
        rs = run_rsync(["-a", "-i", f"--{option}-missing-args", "--force", *(rd.url("m", f"src/{n}") for n in names),
                        f"{tmp_path}/rout/"], check=False)
        code, msg, events = run_client([*(zd.url("m", f"src/{n}") for n in names), f"{tmp_path}/zout/"],
                                       archive=True, itemize=True, force=True, **{f"{option}_missing_args": True})
        assert rs.returncode == code == 0, (rs.stderr, msg)
        assert_same_tree(tmp_path / "rout", tmp_path / "zout", **{**compare_kwargs_for(["-a"]), "dir_times": False})
        assert [i.split() for i in _items(events)] == [i.split() for i in _rsync_items(rs.stdout)]
        assert (tmp_path / "zout" / "gone").exists() == (option == "ignore")
        assert (tmp_path / "zout" / "keep.tmp").exists() == (option == "ignore")
    finally:
        zd.stop()
        rd.stop()
