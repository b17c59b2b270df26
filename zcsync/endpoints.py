"""Parse a command-line location into a local path, an ssh target or a daemon target.

The rules are rsync's (``check_for_hostspec`` / ``parse_hostspec`` in rsync's
options.c), so a command line that names a remote host for rsync names the same
host for zcsync:

- ``zcsync://[user@]host[:port]/module/path``  daemon (default port 2873)
- ``[user@]host::module/path``                 daemon
- ``[user@]host:path``, ``host:``              ssh (``host:`` is the remote home)
- ``[addr]:path``, ``user@[addr]:path``        ssh to an IPv6 literal
- anything else is local: a path that starts with ``/``, or that has a ``/``
  before its first ``:`` (``./a:b``, ``dir/x:y``), or that has no ``:`` at all.

Where rsync silently does something surprising we refuse instead: an empty host
(``:path``) and a malformed ``zcsync://`` URL (which rsync would run as ssh to
a host called ``zcsync``) are usage errors, and so is an ``rsync://`` URL, which
names an rsync daemon that zcsync cannot talk to.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError

DEFAULT_DAEMON_PORT = 2873
MAX_MODULE_NAME = 255
URL_PREFIX = "zcsync://"
_RSYNC_URL_PREFIX = "rsync://"

LOCAL = "local"
SSH = "ssh"
DAEMON = "daemon"


@dataclass(frozen=True)
class Endpoint:
    """One side of a transfer, as the user wrote it.

    ``path`` keeps the user's spelling, trailing slash included. For ssh an
    empty path means the remote home directory; for a daemon ``module`` is the
    module name (empty to list modules) and ``path`` is relative to the module
    root (empty for the root itself). ``port`` is None for ssh unless something
    set it: ssh_config decides.
    """

    kind: str
    path: str
    user: str | None = None
    host: str | None = None
    port: int | None = None
    module: str | None = None

    @property
    def is_remote(self) -> bool:
        """True for ssh and daemon endpoints."""
        return self.kind != LOCAL

    def __str__(self) -> str:
        if self.kind == LOCAL:
            return self.path
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        who = f"{self.user}@{host}" if self.user else f"{host}"
        if self.kind == SSH:
            return f"{who}:{self.path}"
        port = "" if self.port in (None, DEFAULT_DAEMON_PORT) else f":{self.port}"
        rest = self.module or ""
        if self.path:
            rest += "/" + self.path
        return f"{URL_PREFIX}{who}{port}/{rest}"


@dataclass(frozen=True)
class _HostSpec:
    user: str | None
    host: str
    port: int | None  # only from a URL; 0 when the URL named none
    rest: str


def _parse_hostspec(s: str, url: bool) -> _HostSpec | None:
    """Port of rsync's parse_hostspec(): split ``[user@]host`` off the front of s.

    Returns None when s is not a host spec (then it is a local path). ``url``
    selects the rules for what follows ``zcsync://``.
    """
    n = len(s)
    i = 0
    host_start = 0
    hostlen = 0
    userlen = 0
    port: int | None = None
    while True:
        if i == n:
            # Running out of string is only fine for a URL (zcsync://host).
            if not url:
                return None
            if not hostlen:
                hostlen = i - host_start
            break
        c = s[i]
        if c in ":/":
            if not hostlen:
                hostlen = i - host_start
            i += 1
            if c == "/":
                if not url:
                    return None
            elif url:
                start = i
                while i < n and s[i] in "0123456789":
                    i += 1
                port = int(s[start:i]) if i > start else 0
                if i < n:
                    if s[i] != "/":
                        return None
                    i += 1
            break
        if c == "@":
            userlen = i + 1
            host_start = i + 1
        elif c == "[":
            if i != host_start:
                return None
            host_start += 1
            while i < n and s[i] not in "]/":
                i += 1
            hostlen = i - host_start
            if i == n or s[i] != "]" or (i + 1 < n and s[i + 1] not in "/:") or not hostlen:
                return None
        i += 1
    user = s[: userlen - 1] if userlen else None
    return _HostSpec(user, s[host_start : host_start + hostlen], port, s[i:])


def _daemon(spec: _HostSpec, text: str) -> Endpoint:
    # rsync's daemon strips leading slashes before looking up the module.
    module, _, path = spec.rest.lstrip("/").partition("/")
    port = spec.port or DEFAULT_DAEMON_PORT
    if not 0 < port < 65536:
        raise UsageError(f"Bad port in {text!r}: {port}")
    return Endpoint(DAEMON, path, user=spec.user, host=spec.host, port=port, module=module)


def parse_endpoint(text: str) -> Endpoint:
    """Classify one command-line location as local, ssh or daemon, the way rsync does."""
    if text[: len(URL_PREFIX)].lower() == URL_PREFIX:
        spec = _parse_hostspec(text[len(URL_PREFIX) :], url=True)
        if spec is None or not spec.host:
            raise UsageError(f"Bad {URL_PREFIX} URL {text!r}: expected {URL_PREFIX}[user@]host[:port]/module/path")
        return _daemon(spec, text)
    if text[: len(_RSYNC_URL_PREFIX)].lower() == _RSYNC_URL_PREFIX:
        raise UsageError(f"{text!r} names an rsync daemon; zcsync daemons use {URL_PREFIX}host/module/path")
    spec = _parse_hostspec(text, url=False)
    if spec is None:
        return Endpoint(LOCAL, text)
    if not spec.host:
        raise UsageError(f"Missing host name in {text!r} (write ./{text} for a local path)")
    if spec.rest.startswith(":"):
        return _daemon(_HostSpec(spec.user, spec.host, None, spec.rest[1:]), text)
    return Endpoint(SSH, spec.rest, user=spec.user, host=spec.host)


def valid_module_name(name: str) -> bool:
    """A daemon module name: printable ASCII, at most 255 bytes, no '/' or ']' and no surrounding blanks."""
    return (0 < len(name) <= MAX_MODULE_NAME and name == name.strip()
            and all(0x20 <= ord(c) < 0x7f for c in name) and "/" not in name and "]" not in name)


def needs_trailing_slash(text: str) -> bool:
    """True when the user's location names a directory's contents, not the directory.

    That is rsync's source rule: ``src/`` copies what is in src, ``src`` copies
    src itself. Call it on the original text before any path normalisation
    drops the slash. An empty remote path (``host:``, ``host::module``) names
    the remote home or the module root, whose contents are what gets copied.
    """
    ep = parse_endpoint(text)
    if ep.kind == LOCAL:
        return ep.path.endswith("/")
    return ep.path == "" or ep.path.endswith("/")
