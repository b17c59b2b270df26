"""daemon_config: rsyncd.conf parsing, one-line errors with file:line, hosts allow/deny."""
from __future__ import annotations

import pytest

from zcsync.daemon_config import (
    DEFAULT_PORT,
    AuthUser,
    ConfigError,
    Module,
    host_allowed,
    load_config,
    parse_config,
    valid_module_name,
)

GOOD = """\
# global part
port = 9999
address = 127.0.0.1
pid file = /run/zcsyncd.pid
log file = /var/log/zcsyncd.log
max connections = 20
auth timeout = 2.5
read only = no
timeout = 60
hosts deny = 10.0.0.0/8

[www]
    path = /srv/www/
    comment = web site \\
  (static)
    auth users = alice, bob:ro carol:deny
    secrets file = /etc/zcsyncd.secrets
    hosts allow = 192.168.1.0/24 ::1 host.example
    max connections = 2
    uid = www-data
    gid = www-data
    exclude = *.tmp /private .git/
    READ  Only = yes

; another comment
[drop]
    path = /srv/drop
    write only = yes
    list = false
    timeout = 0
"""


def test_parse_good_config():
    cfg = parse_config(GOOD, "z.conf")
    assert (cfg.port, cfg.address, cfg.pid_file, cfg.log_file) == (9999, "127.0.0.1", "/run/zcsyncd.pid",
                                                                    "/var/log/zcsyncd.log")
    assert cfg.max_connections == 20 and cfg.auth_timeout == 2.5
    www, drop = cfg.modules["www"], cfg.modules["drop"]
    assert list(cfg.modules) == ["www", "drop"]
    assert www.path == "/srv/www" and www.comment == "web site   (static)"
    assert www.auth_users == (AuthUser("alice"), AuthUser("bob", "ro"), AuthUser("carol", "deny"))
    assert www.user("bob") == AuthUser("bob", "ro") and www.user("mallory") is None
    assert www.hosts_allow == ("192.168.1.0/24", "::1", "host.example")
    assert www.exclude == ("*.tmp", "/private", ".git/")
    assert (www.max_connections, www.uid, www.gid, www.timeout) == (2, "www-data", "www-data", 60)
    assert www.read_only is True  # "READ  Only": keys ignore case and blanks, as rsync's
    # Module keys in the global part are defaults; a module's own value wins.
    assert drop.read_only is False and drop.write_only is True and drop.list is False
    assert drop.timeout == 0 and drop.hosts_deny == ("10.0.0.0/8",)
    # The global max connections is daemon-wide, not a module default.
    assert drop.max_connections == 0


def test_defaults():
    cfg = parse_config("[m]\npath=/x\n")
    m = cfg.modules["m"]
    assert cfg.port == DEFAULT_PORT and cfg.auth_timeout == 10.0 and cfg.max_connections == 0
    assert m.read_only and not m.write_only and m.list and m.strict_modes and m.reverse_lookup
    assert m.uid is None and m.gid is None and m.exclude == () and m.auth_users == ()


@pytest.mark.parametrize("text, line, fragment", [
    ("[m]\n path = /x\n frobnicate = 1\n", 3, "unknown parameter 'frobnicate'"),
    ("[m]\n path = /x\n read only = maybe\n", 3, "read only must be yes or no"),
    ("[m]\n comment = no path\n", 1, "module [m] has no path"),
    ("[m]\n path = relative/dir\n", 2, "path must be an absolute path"),
    ("[m]\n path = /x\n[m]\n path = /y\n", 3, "defined twice (first at line 1)"),
    ("[m/x]\n path = /x\n", 1, "bad module name"),
    ("[m\n path = /x\n", 1, "must end with ']'"),
    ("port = 70000\n[m]\n path = /x\n", 1, "port is out of range"),
    ("[m]\n path = /x\n max connections = -1\n", 3, "out of range"),
    ("[m]\n path = /x\n max connections = lots\n", 3, "must be a number"),
    ("[m]\n path = /x\n refuse options = delete\n", 3, "not supported by zcsync yet"),
    ("[m]\n path = /x\n incoming chmod = Fo-w\n", 3, "not supported by zcsync yet"),
    ("[m]\n path = /x\n auth users = @staff\n", 3, "groups in auth users"),
    ("[m]\n path = /x\n auth users = alice:admin\n", 3, "bad auth users entry"),
    ("[m]\n path = /x\n auth users = alice\n", 1, "auth users but no secrets file"),
    ("[m]\n path = /x\n hosts allow = 10.0.0.0/40\n", 3, "bad network"),
    ("[m]\n path = /x\n port = 1\n", 3, "belongs in the global section"),
    ("[m]\n path = /x\n just words\n", 3, "expected 'key = value'"),
    ("&include /etc/more.conf\n", 1, "directives are not supported"),
    ("auth timeout = 0\n", 1, "auth timeout is out of range"),
])
def test_errors_name_file_and_line(text, line, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "z.conf")
    message = info.value.message
    assert message.startswith(f"z.conf:{line}: "), message
    assert fragment in message
    assert "\n" not in message
    assert info.value.exit_code == 1


def test_ignored_keys_warn(caplog):
    cfg = parse_config("use chroot = yes\n[m]\n path = /x\n transfer logging = yes\n", "z.conf")
    assert "m" in cfg.modules
    assert "z.conf:1: 'use chroot' has no effect" in caplog.text


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="Cannot read config file"):
        load_config(str(tmp_path / "missing.conf"))
    bad = tmp_path / "bad.conf"
    bad.write_bytes(b"[m]\n path = /x\n comment = \xff\n")
    with pytest.raises(ConfigError, match=r"bad.conf:3: not valid UTF-8"):
        load_config(str(bad))


def test_module_names():
    assert valid_module_name("www") and valid_module_name("my module")
    for bad in ("", " lead", "a/b", "a]b", "x" * 256, "tab\there", "é"):
        assert not valid_module_name(bad), bad


# -- hosts allow / deny -----------------------------------------------------------------

def _mod(allow=(), deny=(), reverse=True) -> Module:
    return Module("m", "/x", hosts_allow=tuple(allow), hosts_deny=tuple(deny), reverse_lookup=reverse)


def _fwd(table):
    return lambda name: table.get(name)


NO_NAMES = {"forward": _fwd({}), "reverse": lambda addr: None}


def test_no_lists_allows_everyone():
    assert host_allowed(_mod(), "203.0.113.5", **NO_NAMES)


def test_allow_only():
    m = _mod(allow=["192.168.1.0/24", "10.1.2.3"])
    assert host_allowed(m, "192.168.1.77", **NO_NAMES)
    assert host_allowed(m, "10.1.2.3", **NO_NAMES)
    assert not host_allowed(m, "10.1.2.4", **NO_NAMES)


def test_deny_only():
    m = _mod(deny=["127.0.0.1"])
    assert not host_allowed(m, "127.0.0.1", **NO_NAMES)
    assert not host_allowed(m, "::ffff:127.0.0.1", **NO_NAMES)  # v4-mapped is the same host
    assert host_allowed(m, "127.0.0.2", **NO_NAMES)


def test_both_lists_rsync_rule():
    m = _mod(allow=["10.0.0.0/8"], deny=["10.9.0.0/16", "172.16.0.0/12"])
    assert host_allowed(m, "10.9.1.1", **NO_NAMES)  # allow is checked first
    assert not host_allowed(m, "172.16.3.4", **NO_NAMES)
    assert host_allowed(m, "8.8.8.8", **NO_NAMES)  # in neither list: allowed


def test_ipv6_and_masks():
    m = _mod(allow=["2001:db8::/32", "192.168.0.0/255.255.0.0"])
    assert host_allowed(m, "2001:db8::5", **NO_NAMES)
    assert host_allowed(m, "192.168.200.1", **NO_NAMES)
    assert not host_allowed(m, "2001:db9::5", **NO_NAMES)


def test_hostnames_resolve_forward():
    m = _mod(allow=["trusted.example"])
    resolvers = {"forward": _fwd({"trusted.example": ["198.51.100.7"]}), "reverse": lambda a: None}
    assert host_allowed(m, "198.51.100.7", **resolvers)
    assert not host_allowed(m, "198.51.100.8", **resolvers)


def test_unresolvable_names_fail_closed():
    # A deny entry that cannot be resolved might be this client: denied.
    assert not host_allowed(_mod(deny=["gone.example"]), "198.51.100.7", **NO_NAMES)
    # An allow entry that cannot be resolved admits nobody.
    assert not host_allowed(_mod(allow=["gone.example"]), "198.51.100.7", **NO_NAMES)
    # A wildcard deny needs the client's name; without one it is denied.
    assert not host_allowed(_mod(deny=["*.evil.example"]), "198.51.100.7", **NO_NAMES)
    assert host_allowed(_mod(allow=["*.good.example"], deny=["*"]), "198.51.100.7",
                        forward=_fwd({}), reverse=lambda a: ["box.good.example"])


def test_wildcards_match_address_text_and_names():
    m = _mod(allow=["192.168.*"])
    assert host_allowed(m, "192.168.3.4", **NO_NAMES)
    m = _mod(allow=["*.example.org"])
    assert host_allowed(m, "198.51.100.9", forward=_fwd({}), reverse=lambda a: ["web.example.org"])
    assert not host_allowed(m, "198.51.100.9", forward=_fwd({}), reverse=lambda a: ["web.example.com"])
    # reverse lookup = no: names are never looked up, so a wildcard name cannot match
    m = _mod(allow=["*.example.org"], reverse=False)
    assert not host_allowed(m, "198.51.100.9", forward=_fwd({}), reverse=lambda a: ["web.example.org"])
