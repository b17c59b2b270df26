"""parse_endpoint follows rsync's check_for_hostspec()/parse_hostspec() rules."""
from __future__ import annotations

import pytest

from zcsync.endpoints import DEFAULT_DAEMON_PORT, Endpoint, needs_trailing_slash, parse_endpoint
from zcsync.errors import UsageError


def ssh(path, host, user=None):
    return Endpoint("ssh", path, user=user, host=host)


def daemon(module, path, host, user=None, port=DEFAULT_DAEMON_PORT):
    return Endpoint("daemon", path, user=user, host=host, port=port, module=module)


def local(path):
    return Endpoint("local", path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # local paths
        ("dir", local("dir")),
        ("dir/", local("dir/")),
        ("/abs/path", local("/abs/path")),
        ("/abs:colon", local("/abs:colon")),
        ("./a:b", local("./a:b")),
        ("dir/x:y", local("dir/x:y")),
        ("../up:x/y", local("../up:x/y")),
        (".", local(".")),
        ("a b", local("a b")),
        ("user@host", local("user@host")),  # no colon: a file called user@host
        ("[::1]", local("[::1]")),  # brackets but no colon
        ("[::1]/x:y", local("[::1]/x:y")),  # slash after ] means a local path
        ("a[b:c", local("a[b:c")),  # '[' not at the start of the host
        ("[]:x", local("[]:x")),  # empty brackets
        # ssh
        ("host:path", ssh("path", "host")),
        ("host:", ssh("", "host")),
        ("host:/abs/dir/", ssh("/abs/dir/", "host")),
        ("host:a:b", ssh("a:b", "host")),
        ("user@host:path", ssh("path", "host", "user")),
        ("user@host:", ssh("", "host", "user")),
        ("a@b@host:p", ssh("p", "host", "a@b")),  # the last '@' ends the user
        ("host.example.com:~/x", ssh("~/x", "host.example.com")),
        ("[::1]:path", ssh("path", "::1")),
        ("[fe80::1%eth0]:/srv", ssh("/srv", "fe80::1%eth0")),
        ("user@[::1]:path", ssh("path", "::1", "user")),
        ("[::1]:", ssh("", "::1")),
        ("10.0.0.1:x", ssh("x", "10.0.0.1")),
        # daemon, rsync syntax
        ("host::module/path", daemon("module", "path", "host")),
        ("host::module", daemon("module", "", "host")),
        ("host::module/", daemon("module", "", "host")),
        ("host::module/a/b/", daemon("module", "a/b/", "host")),
        ("host::", daemon("", "", "host")),
        ("user@host::mod/p", daemon("mod", "p", "host", "user")),
        ("[::1]::mod/p", daemon("mod", "p", "::1")),
        ("host::/module/path", daemon("module", "path", "host")),  # leading slashes dropped
        # daemon, URL syntax
        ("zcsync://host/module/path", daemon("module", "path", "host")),
        ("zcsync://host/module", daemon("module", "", "host")),
        ("zcsync://host/", daemon("", "", "host")),
        ("zcsync://host", daemon("", "", "host")),
        ("zcsync://host:9000/m/p", daemon("m", "p", "host", port=9000)),
        ("zcsync://host:/m", daemon("m", "", "host")),  # empty port: the default
        ("zcsync://user@host:9000/m/p", daemon("m", "p", "host", "user", 9000)),
        ("zcsync://[::1]:9000/m", daemon("m", "", "::1", port=9000)),
        ("zcsync://user@[::1]/m", daemon("m", "", "::1", "user")),
        ("ZCSYNC://Host/m", daemon("m", "", "Host")),  # scheme is case-insensitive
    ],
)
def test_parse(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        ":path",  # rsync would run ssh with an empty host name
        "user@:path",
        "::module",
        "zcsync://host:12x/m",  # rsync would ssh to a host named "zcsync"
        "zcsync://host:70000/m",
        "zcsync:///m",
        "zcsync://[::1/m",
        "rsync://host/module",
    ],
)
def test_rejected(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_endpoint(text)
    assert info.value.exit_code == 1


@pytest.mark.parametrize(
    ("text", "contents"),
    [
        ("src/", True),
        ("src", False),
        ("/", True),
        ("./a:b/", True),
        ("host:dir/", True),
        ("host:dir", False),
        ("host:", True),  # the remote home's contents
        ("host::mod", True),  # a module root
        ("host::mod/sub/", True),
        ("host::mod/sub", False),
        ("zcsync://h/mod/sub/", True),
        ("zcsync://h/mod/sub", False),
    ],
)
def test_trailing_slash(text: str, contents: bool) -> None:
    assert needs_trailing_slash(text) is contents


def test_str_round_trips() -> None:
    for text in ["host:path", "user@host:", "user@[::1]:x", "zcsync://u@h:9000/m/p", "dir/x:y"]:
        assert parse_endpoint(str(parse_endpoint(text))) == parse_endpoint(text)
    assert str(parse_endpoint("h::m/p")) == "zcsync://h/m/p"


def test_is_remote() -> None:
    assert not parse_endpoint("a/b").is_remote
    assert parse_endpoint("h:x").is_remote
    assert parse_endpoint("h::x").is_remote
