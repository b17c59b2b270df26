"""The daemon's configuration file: rsyncd.conf syntax and key names, and host access rules.

A file is ``[module]`` sections of ``key = value`` lines; lines before the first section
(or in ``[global]``) are global. Keys are case-insensitive and blanks inside them do not
matter (``read only``, ``readonly``). ``#`` and ``;`` start comment lines, a trailing
``\\`` continues a line. As in rsync, a module key given in the global part is the
default for every module.

Every problem is one line naming the place: ``zcsyncd.conf:12: unknown parameter 'foo'``.
Keys that rsync knows and zcsync does not implement are refused when ignoring them
could open access (``refuse options``, ``incoming chmod``, ...), and accepted with a
warning when they only change logging or tuning. zcsync-only keys: ``auth timeout``
(global; seconds an unauthenticated connection may live, default 10).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from .endpoints import MAX_MODULE_NAME, valid_module_name
from .errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_PORT = 2873
DEFAULT_AUTH_TIMEOUT = 10.0
MAX_CONFIG_SIZE = 4 << 20


class ConfigError(UsageError):
    """{detail}"""


@dataclass(frozen=True)
class AuthUser:
    """One entry of ``auth users``: a name and what it may do (None: as the module says)."""

    name: str
    access: str | None = None  # "ro", "rw" or "deny"


@dataclass(frozen=True)
class Module:
    """One ``[name]`` section."""

    name: str
    path: str
    comment: str = ""
    read_only: bool = True
    write_only: bool = False
    list: bool = True
    auth_users: tuple[AuthUser, ...] = ()
    secrets_file: str | None = None
    strict_modes: bool = True
    hosts_allow: tuple[str, ...] = ()
    hosts_deny: tuple[str, ...] = ()
    reverse_lookup: bool = True
    max_connections: int = 0  # 0: no limit
    uid: str | None = None
    gid: str | None = None
    exclude: tuple[str, ...] = ()
    timeout: int = 0  # 0: none

    def user(self, name: str) -> AuthUser | None:
        """The auth users entry for name, or None when name may not log in."""
        for entry in self.auth_users:
            if entry.name == name:
                return entry
        return None


@dataclass(frozen=True)
class DaemonConfig:
    """The whole file: global settings and the modules in file order."""

    path: str = ""
    port: int = DEFAULT_PORT
    address: str | None = None
    pid_file: str | None = None
    log_file: str | None = None
    max_connections: int = 0  # daemon-wide; 0: no limit
    auth_timeout: float = DEFAULT_AUTH_TIMEOUT
    modules: dict[str, Module] = field(default_factory=dict)


# -- keys ---------------------------------------------------------------------

def _norm(key: str) -> str:
    return "".join(key.split()).lower()


_GLOBAL_KEYS = {  # canonical key -> (DaemonConfig field, kind)
    "port": ("port", "port"),
    "address": ("address", "str"),
    "pidfile": ("pid_file", "abspath"),
    "logfile": ("log_file", "abspath"),
    "maxconnections": ("max_connections", "count"),
    "authtimeout": ("auth_timeout", "seconds"),
}
_MODULE_KEYS = {  # canonical key -> (Module field, kind)
    "path": ("path", "abspath"),
    "comment": ("comment", "str"),
    "readonly": ("read_only", "bool"),
    "writeonly": ("write_only", "bool"),
    "list": ("list", "bool"),
    "authusers": ("auth_users", "users"),
    "secretsfile": ("secrets_file", "abspath"),
    "strictmodes": ("strict_modes", "bool"),
    "hostsallow": ("hosts_allow", "hosts"),
    "hostsdeny": ("hosts_deny", "hosts"),
    "reverselookup": ("reverse_lookup", "bool"),
    "maxconnections": ("max_connections", "count"),
    "uid": ("uid", "str"),
    "gid": ("gid", "str"),
    "exclude": ("exclude", "words"),
    "timeout": ("timeout", "count"),
}
# rsync keys whose effect we do not have, and that only tune or log: accepted, warned about.
_IGNORED = {_norm(k) for k in (
    "use chroot", "numeric ids", "transfer logging", "log format", "syslog facility", "syslog tag",
    "dont compress", "max verbosity", "ignore errors", "ignore nonreadable", "charset",
    "forward lookup", "socket options", "listen backlog", "motd file", "lock file", "open noatime",
    "write only file", "read only file")}
# rsync keys that restrict or transform access: silently ignoring one could let a client do
# what the administrator meant to forbid, so they are refused until implemented.
_REFUSED = {_norm(k) for k in (
    "refuse options", "filter", "include", "include from", "exclude from", "incoming chmod",
    "outgoing chmod", "munge symlinks", "fake super", "pre-xfer exec", "post-xfer exec",
    "early exec", "name converter", "temp dir", "daemon chroot", "daemon uid", "daemon gid",
    "proxy protocol", "exclude from", "auth users from")}
_BOOLS = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False,
          "0": False}


def _convert(kind: str, value: str, where: str, key: str) -> object:
    if kind == "str":
        return value
    if kind == "abspath":
        if not value.startswith("/"):
            raise ConfigError(f"{where}: {key} must be an absolute path, not {value!r}")
        return os.path.normpath(value)
    if kind == "bool":
        try:
            return _BOOLS[value.lower()]
        except KeyError:
            raise ConfigError(f"{where}: {key} must be yes or no, not {value!r}") from None
    if kind in ("count", "port", "seconds"):
        try:
            number = float(value) if kind == "seconds" else int(value, 10)
        except ValueError:
            raise ConfigError(f"{where}: {key} must be a number, not {value!r}") from None
        if number < 0 or (kind == "port" and not 0 < number < 65536) or (kind == "seconds" and not number > 0):
            raise ConfigError(f"{where}: {key} is out of range: {value!r}")
        return number
    if kind == "words":
        return tuple(value.split())
    if kind == "hosts":
        items = tuple(x for x in value.replace(",", " ").split() if x)
        for item in items:
            if "/" in item:
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ConfigError(f"{where}: bad network {item!r} in {key}") from None
        return items
    if kind == "users":
        users = []
        for item in value.replace(",", " ").split():
            name, _, access = item.partition(":")
            if name.startswith("@"):
                raise ConfigError(f"{where}: groups in auth users ({item!r}) are not supported yet")
            if not name or (access and access.lower() not in ("ro", "rw", "deny")):
                raise ConfigError(f"{where}: bad auth users entry {item!r} (want name or name:ro|rw|deny)")
            users.append(AuthUser(name, access.lower() or None))
        return tuple(users)
    raise AssertionError(kind)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(line number, text) with continuation lines joined."""
    out: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1]
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def parse_config(text: str, filename: str = "zcsyncd.conf") -> DaemonConfig:
    """Parse rsyncd.conf-style text; raises ConfigError naming file:line."""
    global_values: dict[str, object] = {}
    defaults: dict[str, object] = {}  # module keys given globally
    sections: list[tuple[str, int, dict[str, object]]] = []
    seen: dict[str, int] = {}
    current: dict[str, object] | None = None
    for number, raw in _logical_lines(text):
        where = f"{filename}:{number}"
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("&"):
            raise ConfigError(f"{where}: {line.split()[0]} directives are not supported")
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(f"{where}: a section header must end with ']': {line!r}")
            name = line[1:-1].strip()
            if name.lower() == "global":
                current = None
                continue
            if not valid_module_name(name):
                raise ConfigError(f"{where}: bad module name {name!r} (printable ASCII, no '/' or ']', "
                                  f"at most {MAX_MODULE_NAME} characters)")
            if name in seen:
                raise ConfigError(f"{where}: module [{name}] is defined twice (first at line {seen[name]})")
            seen[name] = number
            current = {}
            sections.append((name, number, current))
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise ConfigError(f"{where}: expected 'key = value', got {line!r}")
        key, value = key.strip(), value.strip()
        canon = _norm(key)
        if canon in _REFUSED:
            raise ConfigError(f"{where}: {key!r} is not supported by zcsync yet (refused rather than ignored)")
        if canon in _IGNORED:
            log.warning("%s: %r has no effect in zcsync; ignored", where, key)
            continue
        if current is None and canon in _GLOBAL_KEYS:
            attr, kind = _GLOBAL_KEYS[canon]
            global_values[attr] = _convert(kind, value, where, key)
        elif canon in _MODULE_KEYS:
            attr, kind = _MODULE_KEYS[canon]
            target = defaults if current is None else current
            target[attr] = _convert(kind, value, where, key)
        elif canon in _GLOBAL_KEYS:
            raise ConfigError(f"{where}: {key!r} belongs in the global section")
        else:
            raise ConfigError(f"{where}: unknown parameter {key!r}")
    modules: dict[str, Module] = {}
    for name, number, values in sections:
        merged = {**defaults, **values}
        if "path" not in values:
            raise ConfigError(f"{filename}:{number}: module [{name}] has no path")
        module = Module(name=name, **merged)  # type: ignore[arg-type]
        if module.auth_users and not module.secrets_file:
            raise ConfigError(f"{filename}:{number}: module [{name}] has auth users but no secrets file")
        if module.read_only and module.write_only:
            log.warning("%s:%d: module [%s] is both read only and write only: nothing is allowed",
                        filename, number, name)
        modules[name] = module
    return DaemonConfig(path=filename, modules=modules, **global_values)  # type: ignore[arg-type]


def load_config(path: str) -> DaemonConfig:
    """Read and parse the configuration file at path."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_SIZE + 1)
    except OSError as exc:
        raise ConfigError(f"Cannot read config file {path!r}: {exc.strerror}") from exc
    if len(data) > MAX_CONFIG_SIZE:
        raise ConfigError(f"{path}: config file is too big")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8") from None
    return parse_config(text, path)


def with_overrides(config: DaemonConfig, **changes: object) -> DaemonConfig:
    """A copy with command-line settings (--port, --address) applied."""
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})


# -- hosts allow / hosts deny ------------------------------------------------------

Resolver = Callable[[str], list[str] | None]


def _forward(name: str) -> list[str] | None:
    """Addresses of a host name; None when it cannot be resolved."""
    try:
        return [info[4][0] for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)]
    except (OSError, UnicodeError):
        return None


def _reverse(addr: str) -> list[str] | None:
    """Forward-confirmed names of an address; None when there are none."""
    try:
        name, aliases, _ = socket.gethostbyaddr(addr)
    except (OSError, UnicodeError):
        return None
    confirmed = []
    for candidate in (name, *aliases):
        addrs = _forward(candidate)
        if addrs and any(_same_ip(a, addr) for a in addrs):
            confirmed.append(candidate.lower())
    return confirmed or None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _same_ip(a: str, b: str) -> bool:
    ia, ib = _ip(a), _ip(b)
    return ia is not None and ia == ib


def _match(entry: str, addr: str, names: Callable[[], list[str] | None], forward: Resolver,
           reverse_lookup: bool) -> bool | None:
    """Does entry name the client? None when it cannot be told (a name that does not resolve)."""
    client = _ip(addr)
    if "/" in entry:
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return None
        return client is not None and client.version == net.version and client in net
    literal = _ip(entry)
    if literal is not None:
        return literal == client
    lowered = entry.lower()
    if any(c in entry for c in "*?["):
        if fnmatch.fnmatchcase(addr, entry):
            return True
        if not reverse_lookup:
            return False
        hostnames = names()
        if hostnames is None:
            return None
        return any(fnmatch.fnmatchcase(h, lowered) for h in hostnames)
    addrs = forward(entry)
    if addrs is None:
        return None
    return any(_same_ip(a, addr) for a in addrs)


def host_allowed(module: Module, addr: str, *, forward: Resolver = _forward,
                 reverse: Resolver = _reverse) -> bool:
    """rsync's rule: an allow match admits; else a deny match refuses; else admitted unless
    there was an allow list and no deny list. A name that cannot be resolved never matches
    an allow entry and always matches a deny entry (fail closed)."""
    cache: list[list[str] | None] = []

    def names() -> list[str] | None:
        if not cache:
            cache.append(reverse(addr))
        return cache[0]

    def any_match(entries: tuple[str, ...], unknown: bool) -> bool:
        for entry in entries:
            result = _match(entry, addr, names, forward, module.reverse_lookup)
            if result is None:
                result = unknown
            if result:
                return True
        return False

    if module.hosts_allow and any_match(module.hosts_allow, False):
        return True
    if module.hosts_deny and any_match(module.hosts_deny, True):
        return False
    return bool(module.hosts_deny) or not module.hosts_allow
