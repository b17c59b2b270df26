"""auth: mutual HMAC proofs, secrets and password files, throttling; the daemon request codec's bounds."""
from __future__ import annotations

import os
import struct

import pytest

from zcsync import auth
from zcsync.daemon import (
    KIND_LIST,
    KIND_TRANSFER,
    MAX_PATHS,
    MAX_REQUEST,
    DaemonRequest,
)
from zcsync.errors import ProtocolError, UsageError

SN, CN = b"s" * 32, b"c" * 32
DIGEST = auth.request_digest(b"request bytes")


def _proof(**changes):
    args = {"password": b"pw", "server_nonce": SN, "client_nonce": CN, "module": b"mod", "user": b"alice",
            "digest": DIGEST}
    args.update(changes)
    return auth.client_proof(args["password"], args["server_nonce"], args["client_nonce"], args["module"],
                             args["user"], args["digest"])


def test_proof_binds_every_input():
    base = _proof()
    assert len(base) == auth.PROOF_SIZE
    for change in ({"password": b"pw2"}, {"server_nonce": b"S" * 32}, {"client_nonce": b"C" * 32},
                   {"module": b"mod2"}, {"user": b"bob"}, {"digest": auth.request_digest(b"other")}):
        assert _proof(**change) != base, change
    # Length prefixes: moving a byte from module to user changes the proof.
    assert _proof(module=b"moda", user=b"lice") != base


def test_server_proof_differs_from_client_proof():
    server = auth.server_proof(b"pw", SN, CN, b"mod", b"alice", DIGEST)
    assert server != _proof()  # a client's proof cannot be reflected back as the server's
    assert auth.proofs_equal(server, auth.server_proof(b"pw", SN, CN, b"mod", b"alice", DIGEST))
    assert not auth.proofs_equal(server, _proof())


def test_nonces_are_fresh():
    assert len({auth.new_nonce() for _ in range(100)}) == 100
    with pytest.raises(ValueError):
        auth.client_proof(b"pw", b"short", CN, b"m", b"u", DIGEST)


def test_load_secrets(tmp_path):
    path = tmp_path / "secrets"
    path.write_bytes(b"# comment\n\nalice:pw:with:colons\r\nbob:\nnocolon\n:nouser\nalice:second\n")
    os.chmod(path, 0o600)
    table = auth.load_secrets(str(path), as_root=False)
    assert table == {"alice": b"pw:with:colons", "bob": b""}


@pytest.mark.parametrize("mode", [0o604, 0o640 | 0o001, 0o606])
def test_other_accessible_secrets_refused(tmp_path, mode):
    path = tmp_path / "secrets"
    path.write_text("alice:pw\n")
    os.chmod(path, mode)
    with pytest.raises(auth.SecretsError, match="must not be other-accessible"):
        auth.load_secrets(str(path), as_root=False)
    assert auth.load_secrets(str(path), strict=False, as_root=False) == {"alice": b"pw"}


def test_secrets_must_be_roots_when_root(tmp_path):
    path = tmp_path / "secrets"
    path.write_text("alice:pw\n")
    os.chmod(path, 0o600)
    if os.geteuid() == 0:
        os.chown(path, 65534, -1)
        with pytest.raises(auth.SecretsError, match="owned by root"):
            auth.load_secrets(str(path), as_root=True)
    with pytest.raises(auth.SecretsError, match="Cannot open"):
        auth.load_secrets(str(tmp_path / "missing"))


def test_password_file(tmp_path):
    path = tmp_path / "pw"
    path.write_bytes(b"secret word\r\nsecond line\n")
    os.chmod(path, 0o600)
    assert auth.read_password_file(str(path)) == b"secret word"
    os.chmod(path, 0o604)
    with pytest.raises(UsageError, match="other-accessible"):
        auth.read_password_file(str(path))
    with pytest.raises(UsageError, match="Cannot read password file"):
        auth.read_password_file(str(tmp_path / "missing"))


def test_client_password_sources(tmp_path):
    path = tmp_path / "pw"
    path.write_text("fromfile\n")
    os.chmod(path, 0o600)
    assert auth.client_password(str(path), env={"ZCSYNC_PASSWORD": "fromenv"}) == b"fromfile"
    assert auth.client_password(None, env={"ZCSYNC_PASSWORD": "fromenv"}) == b"fromenv"
    assert auth.client_password(None, env={}) is None


def test_throttle_backs_off_and_forgets():
    now = [1000.0]
    t = auth.FailureThrottle(base=0.5, cap=4.0, window=60.0, max_addresses=3, clock=lambda: now[0])
    assert t.delay("1.2.3.4") == 0.0
    delays = []
    for _ in range(6):
        t.failed("1.2.3.4")
        delays.append(t.delay("1.2.3.4"))
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert t.delay("5.6.7.8") == 0.0  # per address
    t.succeeded("1.2.3.4")
    assert t.delay("1.2.3.4") == 0.0
    t.failed("1.2.3.4")
    now[0] += 61
    assert t.delay("1.2.3.4") == 0.0  # quiet for longer than the window
    t.failed("1.2.3.4")
    assert t.delay("1.2.3.4") == 0.5
    for addr in ("a", "b", "c", "d"):
        t.failed(addr)
    assert t.delay("1.2.3.4") == 0.0  # bounded memory: the stalest address went first


# -- the daemon request: every length bounded ---------------------------------------

def _request(**changes) -> DaemonRequest:
    values = {"kind": KIND_TRANSFER, "module": "mod", "user": "alice", "role": "receiver",
              "options": '{"recursive":true}', "paths": (b"dst/",), "client_nonce": CN}
    values.update(changes)
    return DaemonRequest(**values)


def test_request_round_trip():
    req = _request(paths=(b"a", b"b/c", b"\xff-any-bytes"))
    assert DaemonRequest.decode(req.encode()) == req
    listing = DaemonRequest(KIND_LIST, client_nonce=CN)
    assert DaemonRequest.decode(listing.encode()) == listing


@pytest.mark.parametrize("mutate, fragment", [
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"x", "trailing bytes"),
    (lambda b: b"\x09" + b[1:], "unknown request kind"),
    (lambda b: b.replace(b"\x03mod", b"\x03m/d"), "bad module name"),
    (lambda b: b.replace(b"\x03mod", b"\x03m\x07d"), "printable ASCII"),
    (lambda b: b.replace(b"\x05alice", b"\x05al:ce"), "bad user name"),
    (lambda b: b.replace(b"\x02\x00\x00\x00\x12", b"\x07\x00\x00\x00\x12"), "needs a role"),
])
def test_request_rejects_bad_fields(mutate, fragment):
    with pytest.raises(ProtocolError, match=fragment):
        DaemonRequest.decode(mutate(_request().encode()))


def test_request_bounds():
    body = bytearray(_request().encode())
    # options length over 64 KiB: refused from the length field alone
    at = body.index(b'{"recursive')
    big = body[:at - 4] + struct.pack(">I", 70_000) + body[at:]
    with pytest.raises(ProtocolError, match="options are too long"):
        DaemonRequest.decode(bytes(big))
    with pytest.raises(ProtocolError, match="too many paths"):
        DaemonRequest.decode(_request(paths=(b"p",) * (MAX_PATHS + 1)).encode())
    with pytest.raises(ProtocolError, match="path is too long"):
        DaemonRequest.decode(_request(paths=(b"p" * 4097,)).encode())
    with pytest.raises(ProtocolError, match="NUL"):
        DaemonRequest.decode(_request(paths=(b"a\0b",)).encode())
    with pytest.raises(ProtocolError, match="at least one path"):
        DaemonRequest.decode(_request(paths=()).encode())
    with pytest.raises(UsageError, match="too many or too long"):
        _request(paths=(b"p" * 4000,) * 100).encode()
    assert MAX_REQUEST <= 256 * 1024
