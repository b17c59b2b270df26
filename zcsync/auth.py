"""Daemon authentication: mutual HMAC-SHA256 challenge/response, secrets files, failure throttling.

Both sides contribute a fresh 32-byte nonce. The client proves it knows the
password with ``HMAC-SHA256(password, "client" label, server_nonce, client_nonce,
module, user, request_digest)``; the server answers with the same over its own label,
so the client knows it reached a daemon that knows the password too. The request
digest is SHA-256 of the client's whole request (role, options, paths), so a man in the
middle cannot change what was asked for (downgrade an option, swap a path) without
breaking the proof. Replaying a recorded exchange fails: the server's nonce differs.
The password itself never crosses the wire. Proofs are compared in constant time.

The data that follows the handshake is not encrypted or authenticated (as with rsync's
daemon); use ssh where the network is hostile.

hashlib and hmac are imported where a digest is made: loading OpenSSL costs ~3 ms of
start-up, which a client of a module without a password does not need.
"""
from __future__ import annotations

import os
import stat
import struct
import time
from collections import OrderedDict
from collections.abc import Callable

from .errors import UsageError, ZcsyncError

NONCE_SIZE = 32
PROOF_SIZE = 32
_CLIENT_LABEL = b"zcsync-daemon-auth-v1 client"
_SERVER_LABEL = b"zcsync-daemon-auth-v1 server"
MAX_SECRETS_SIZE = 1 << 20
MAX_PASSWORD = 1024


class SecretsError(ZcsyncError):
    """{detail}"""

    exit_code = 5


def new_nonce() -> bytes:
    """A fresh random nonce from the OS CSPRNG."""
    return os.urandom(NONCE_SIZE)


def request_digest(request: bytes) -> bytes:
    """SHA-256 of the client's request as sent: what the proofs bind the session to."""
    import hashlib
    return hashlib.sha256(request).digest()


def _transcript(label: bytes, server_nonce: bytes, client_nonce: bytes, module: bytes, user: bytes,
                digest: bytes) -> bytes:
    if len(server_nonce) != NONCE_SIZE or len(client_nonce) != NONCE_SIZE or len(digest) != 32:
        raise ValueError("nonces and the request digest must be 32 bytes")
    # Length-prefixed fields: no two different (module, user) pairs give the same bytes.
    return b"".join((label, server_nonce, client_nonce, struct.pack(">H", len(module)), module,
                     struct.pack(">H", len(user)), user, digest))


def client_proof(password: bytes, server_nonce: bytes, client_nonce: bytes, module: bytes, user: bytes,
                 digest: bytes) -> bytes:
    """What the client sends to prove it knows the password."""
    msg = _transcript(_CLIENT_LABEL, server_nonce, client_nonce, module, user, digest)
    return _hmac_sha256(password, msg)


def server_proof(password: bytes, server_nonce: bytes, client_nonce: bytes, module: bytes, user: bytes,
                 digest: bytes) -> bytes:
    """What the server answers with, proving it knows the password as well."""
    msg = _transcript(_SERVER_LABEL, server_nonce, client_nonce, module, user, digest)
    return _hmac_sha256(password, msg)


def _hmac_sha256(key: bytes, msg: bytes) -> bytes:
    import hmac
    return hmac.digest(key, msg, "sha256")


def proofs_equal(expected: bytes, got: bytes) -> bool:
    """Constant-time comparison of two proofs."""
    import hmac
    return hmac.compare_digest(expected, got)


# -- secrets files (daemon side) ------------------------------------------------

def load_secrets(path: str, *, strict: bool = True, as_root: bool | None = None) -> dict[str, bytes]:
    """Read an rsyncd-style secrets file: ``user:password`` lines, ``#`` comments.

    With strict (rsync's "strict modes", the default) the file must not be accessible
    by others, and must belong to root when the daemon runs as root.
    """
    if as_root is None:
        as_root = os.geteuid() == 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise SecretsError(f"Cannot open secrets file {path!r}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretsError(f"secrets file {path!r} is not a regular file")
        if strict and st.st_mode & 0o007:
            raise SecretsError(f"secrets file {path!r} must not be other-accessible (see strict modes)")
        if strict and as_root and st.st_uid != 0:
            raise SecretsError(f"secrets file {path!r} must be owned by root when running as root")
        if st.st_size > MAX_SECRETS_SIZE:
            raise SecretsError(f"secrets file {path!r} is too big")
        data = os.read(fd, MAX_SECRETS_SIZE + 1)
    finally:
        os.close(fd)
    table: dict[str, bytes] = {}
    for raw in data.splitlines():
        line = raw.strip(b"\r")
        if not line.strip() or line.lstrip().startswith(b"#"):
            continue
        user, sep, password = line.partition(b":")
        if not sep or not user:
            continue  # rsync skips lines it cannot use; so do we
        table.setdefault(user.decode("utf-8", "replace"), password)
    return table


# -- password (client side) --------------------------------------------------

def read_password_file(path: str) -> bytes:
    """The first line of --password-file, as rsync reads it (refused if others can read it)."""
    try:
        if path == "-":
            import sys
            data = sys.stdin.buffer.readline(MAX_PASSWORD + 2)
        else:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                st = os.fstat(fd)
                if st.st_mode & 0o006:
                    raise UsageError("password file must not be other-accessible")
                if os.geteuid() == 0 and st.st_uid != 0:
                    raise UsageError("password file must be owned by root when running as root")
                data = os.read(fd, MAX_PASSWORD + 2)
            finally:
                os.close(fd)
    except OSError as exc:
        raise UsageError(f"Cannot read password file {path!r}: {exc.strerror}") from exc
    return data.split(b"\n", 1)[0].rstrip(b"\r")[:MAX_PASSWORD]


def client_password(password_file: str | None, env: dict[str, str] | None = None) -> bytes | None:
    """The daemon password: --password-file first, then $ZCSYNC_PASSWORD; None if neither."""
    if password_file:
        return read_password_file(password_file)
    value = (os.environ if env is None else env).get("ZCSYNC_PASSWORD")
    return os.fsencode(value) if value is not None else None


# -- throttling (daemon side) -----------------------------------------------

class FailureThrottle:
    """Per-address delay after failed logins: base × 2^(n-1) seconds after n failures, capped.

    The delay is served before the verdict on the next attempt from that address, whether
    it then succeeds or not, so guessing gets slower without telling a guesser anything.
    A success clears the address; failures are forgotten after ``window`` quiet seconds.
    """

    def __init__(self, base: float = 0.5, cap: float = 8.0, window: float = 600.0,
                 max_addresses: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.base = base
        self.cap = cap
        self.window = window
        self.max_addresses = max_addresses
        self.clock = clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def delay(self, addr: str) -> float:
        """Seconds to wait before answering the next attempt from addr."""
        entry = self._failures.get(addr)
        if entry is None:
            return 0.0
        count, last = entry
        if self.clock() - last > self.window:
            del self._failures[addr]
            return 0.0
        return min(self.cap, self.base * 2 ** (count - 1))

    def failed(self, addr: str) -> None:
        now = self.clock()
        count, last = self._failures.pop(addr, (0, now))
        if now - last > self.window:
            count = 0
        self._failures[addr] = (count + 1, now)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)  # forget the stalest address first

    def succeeded(self, addr: str) -> None:
        self._failures.pop(addr, None)
