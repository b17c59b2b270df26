"""`zcsync --server` arguments come from the client: parsed strictly; --restrict-to confines them."""
from __future__ import annotations

import pytest

from zcsync.errors import UsageError
from zcsync.options import Options, from_wire, to_wire
from zcsync.server import check_restricted, parse_server_args


def test_parse_roundtrip():
    opts = Options(recursive=True, times=True, filter_rules=("- *.o",))
    role, got, restrict, paths = parse_server_args(
        ["--server", "--receiver", f"--options={to_wire(opts)}", "--", "dst/"])
    assert (role, got, restrict, paths) == ("receiver", opts, None, ["dst/"])


@pytest.mark.parametrize("argv", [
    ["--server"],
    ["--server", "--sender", "--options={}"],  # no "--" and paths
    ["--server", "--options={}", "--", "x"],  # no role
    ["--server", "--sender", "--evil", "--options={}", "--", "x"],
    ["--server", "--sender", "--options=[1]", "--", "x"],
])
def test_bad_arguments_refused(argv):
    with pytest.raises(UsageError):
        parse_server_args(argv)


@pytest.mark.parametrize("text", [
    '{"rsh": "sh -c evil"}',  # client-only options are never accepted from a client
    '{"recursive": "yes"}',
    '{"max_delete": true}',
    '{"filter_rules": [1]}',
    '{"__class__": 1}',
])
def test_wire_options_type_checked(text):
    with pytest.raises(UsageError):
        from_wire(text)


def test_restrict_to(tmp_path):
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "link").symlink_to("/etc")
    check_restricted([str(tmp_path / "ok")], Options(), str(tmp_path))
    for bad in ("/etc", str(tmp_path / "ok" / ".." / ".."), str(tmp_path / "ok" / "link")):
        with pytest.raises(UsageError):
            check_restricted([bad], Options(), str(tmp_path))
    with pytest.raises(UsageError):
        check_restricted([str(tmp_path / "ok")], Options(backup_dir="/tmp/x"), str(tmp_path))
    with pytest.raises(UsageError):
        check_restricted([str(tmp_path / "ok")], Options(link_dest=("../../etc",)), str(tmp_path))


def test_restricted_wildcards_reveal_nothing_outside(tmp_path):
    """With --restrict-to a pull's wildcards expand inside DIR only: a pattern that leads out
    is refused by its own text, and a match that leads out is dropped without its name."""
    import os

    import pytest

    from zcsync.errors import UsageError
    from zcsync.server import ServerArgs, _job

    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    for name in ("a.txt", "b.txt"):
        (inside / name).write_text(name)
    (outside / "secret.txt").write_text("secret")
    os.symlink("../outside", inside / "out")

    def job(*patterns):
        return _job(ServerArgs("sender", Options(), str(inside), tuple(patterns)))

    assert job(f"{inside}/*.txt").paths == (f"{inside}/a.txt", f"{inside}/b.txt")
    assert job(f"{inside}/*/*.txt").paths == (f"{inside}/*/*.txt",)  # out/secret.txt dropped
    with pytest.raises(UsageError) as err:
        job(f"{inside}/out/*")
    assert "secret" not in str(err.value)
    unrestricted = _job(ServerArgs("sender", Options(), None, (f"{inside}/*/*.txt",)))
    assert unrestricted.paths == (f"{inside}/out/secret.txt",)  # no --restrict-to: the user's own files


# -- what the host imposes: ZCSYNC_RESTRICT_TO, an authorized_keys command= line ----------

def _client(*args: str) -> str:
    """The command a client asks sshd to run (what a forced command sees in SSH_ORIGINAL_COMMAND)."""
    import shlex
    return shlex.join(["env", "PYTHONPATH=/x", "python3", "-m", "zcsync", "--server", *args])


def test_forced_command_serves_the_clients_arguments_held_to_dir(tmp_path):
    from zcsync.server import client_command
    wire = to_wire(Options(recursive=True))
    env = {"SSH_ORIGINAL_COMMAND": _client("--receiver", f"--options={wire}", "--", str(tmp_path / "d"))}
    argv, imposed = client_command(["--server", f"--restrict-to={tmp_path}"], env)
    assert argv == ["--server", "--receiver", f"--options={wire}", "--", str(tmp_path / "d")]
    assert imposed == [str(tmp_path)]
    # Without sshd's variable, or with a command that is not a server's, nothing is served.
    for bad in ({}, {"SSH_ORIGINAL_COMMAND": "sh -c 'cat /etc/shadow'"}, {"SSH_ORIGINAL_COMMAND": "zcsync '"}):
        with pytest.raises(UsageError):
            client_command(["--server", f"--restrict-to={tmp_path}"], bad)
    # A client's full command line is served as it is, held to what the host sets.
    argv = ["--server", "--sender", f"--options={wire}", "--", "x"]
    assert client_command(argv, {"ZCSYNC_RESTRICT_TO": str(tmp_path)}) == (argv, [str(tmp_path)])
    assert client_command(argv, {}) == (argv, [])


@pytest.mark.parametrize("environ", ["forced", "env"])
def test_the_client_cannot_widen_what_the_host_imposes(tmp_path, environ):
    """A --restrict-to among the client's own arguments narrows what the host imposes
    (a forced command= line's DIR, or ZCSYNC_RESTRICT_TO) and never widens it."""
    from zcsync.server import _job, client_command, parse_server_command
    inner = tmp_path / "inner"
    (inner / "d").mkdir(parents=True)
    wire = to_wire(Options(recursive=True))

    def job(*args: str):
        words = ["--server", *args]
        if environ == "forced":
            env = {"SSH_ORIGINAL_COMMAND": _client(*args)}
            argv = ["--server", f"--restrict-to={tmp_path}"]
        else:
            env, argv = {"ZCSYNC_RESTRICT_TO": str(tmp_path)}, words
        argv, imposed = client_command(argv, env)
        return _job(parse_server_command(argv), imposed)
    assert job("--receiver", f"--options={wire}", "--", str(inner / "d")).paths == (str(inner / "d"),)
    assert job("--receiver", f"--restrict-to={inner}", f"--options={wire}", "--", str(inner / "d"))
    for asked, path in (("/", "/etc"), (str(tmp_path.parent), str(tmp_path.parent)), (str(inner), str(tmp_path))):
        with pytest.raises(UsageError, match="outside"):
            job("--receiver", f"--restrict-to={asked}", f"--options={wire}", "--", path)


def test_remote_option_words_change_this_sides_options():
    """-M words after --options: the server's own parser applies them on top of the JSON."""
    opts = Options(recursive=True, write_mode="buffered")
    role, got, _, paths = parse_server_args(
        ["--server", "--receiver", f"--options={to_wire(opts)}", "--no-fsync", "--write-mode", "direct",
         "--bwlimit=2M", "--", "dst/"])
    assert got == opts.replace(fsync=False, write_mode="direct", bwlimit=2 << 20)
    assert (role, paths) == ("receiver", ["dst/"])


@pytest.mark.parametrize(("words", "message"), [
    (["--bogus"], "on remote machine: --bogus: unknown option"),
    (["--delete"], "--delete: unknown option"),  # both sides must know that one
    (["--temp-dir"], "--temp-dir: missing argument"),
    (["--write-mode=fast"], "--write-mode must be auto, direct, splice or buffered"),
    (["--no-fsync=1"], "--no-fsync=1: unknown option"),
])
def test_remote_option_words_refused(words, message):
    with pytest.raises(UsageError, match=message):
        parse_server_args(["--server", "--sender", "--options={}", *words, "--", "src/"])


def test_server_argv_carries_remote_options_before_the_paths():
    from zcsync.connect import server_argv
    opts = Options(remote_options=("--fake-super", "--temp-dir", "/t"))
    argv = server_argv("receiver", opts, ["dst/"])
    assert argv == ["--server", "--receiver", "--options={}", "--fake-super", "--temp-dir", "/t", "--", "dst/"]
    assert to_wire(opts) == "{}"  # never in the JSON: they are the remote side's own words
    with pytest.raises(UsageError, match="cannot pass '--'"):
        server_argv("receiver", Options(remote_options=("--",)), ["dst/"])


def test_super_goes_to_a_receiving_server_and_fake_super_to_none():
    """As rsync's server_options: --super for a receiving server only, --no-super never, and
    --fake-super is the side's own (-M --fake-super gives it the server)."""
    from zcsync.connect import server_argv
    import json
    def wire(opts, role):
        return json.loads(server_argv(role, opts, ["p"])[2][len("--options="):])
    assert wire(Options(super_user=True), "receiver") == {"super_user": True}
    assert wire(Options(super_user=True), "sender") == {}
    assert wire(Options(super_user=False), "receiver") == {}
    assert wire(Options(fake_super=True), "receiver") == {}
    with pytest.raises(UsageError):
        from_wire('{"fake_super": true}')
    got = parse_server_args(["--server", "--receiver", "--options={}", "--fake-super", "--", "d"])[1]
    assert (got.fake_super, got.super_user) == (True, None)
    got = parse_server_args(["--server", "--sender", "--options={}", "--fake-super", "--super", "--", "d"])[1]
    assert (got.fake_super, got.super_user) == (False, True)
    with pytest.raises(UsageError, match="on remote machine: --fake-super with -A/--acls"):
        parse_server_args(["--server", "--receiver", f"--options={to_wire(Options(acls=True))}",
                           "--fake-super", "--", "d"])


@pytest.mark.parametrize("words", [["EVIL2"], ["NAME"], ["NAME999"], ["name2"], ["NAME2", "../x1"]])
def test_info_words_from_a_client_checked_at_receipt(words):
    import json
    with pytest.raises(UsageError, match="bad --info word"):
        from_wire(json.dumps({"info": words}))
    assert from_wire(json.dumps({"info": ["NAME2", "STATS0"]})).info == ("NAME2", "STATS0")
