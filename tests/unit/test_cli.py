"""The command line: rsync's option syntax onto Options; usage errors exit 1."""
from __future__ import annotations

import subprocess
import sys
import time

import click
import pytest

from zcsync import cli, errors
from zcsync.options import Options, from_mapping
from zcsync.pathnames import escape, is_safe_name, unsafe_symlink
from zcsync.units import parse_size


def parse(*args: str) -> Options:
    """Options exactly as `zcsync ARGS src dst` would build them."""
    ctx = cli.command.make_context("zcsync", [*args, "src", "dst"])
    kw = dict(ctx.params)
    kw.pop("paths")
    kw.pop("version")
    return cli.build_options(ctx, kw)


def test_archive_expands_to_rlptgoD():
    o = parse("-a")
    assert (o.recursive, o.links, o.perms, o.times, o.group, o.owner, o.devices, o.specials) == (True,) * 8
    assert not o.hard_links and not o.acls and not o.xattrs


def test_archive_fills_only_unset_flags():
    o = parse("-a", "--no-perms", "--no-o")
    assert o.perms is False and o.owner is False and o.times is True
    o = parse("--no-times", "-a")
    assert o.times is False


def test_bundled_short_flags():
    o = parse("-avHSn")
    assert o.recursive and o.verbose == 1 and o.hard_links and o.sparse and o.dry_run
    assert parse("-vvv").verbose == 3


def test_dash_D_and_acl_implications():
    o = parse("-D")
    assert o.devices and o.specials
    assert parse("-A").perms


def test_delete_modes():
    assert parse("--delete").delete_mode == "during"
    o = parse("--delete-after")
    assert o.delete and o.delete_mode == "after"
    assert parse("--delete-before").delete_mode == "before"
    assert parse("--delete-excluded").delete


def test_fuzzy_levels():
    assert parse().fuzzy == 0
    assert parse("-y").fuzzy == 1 and parse("--fuzzy").fuzzy == 1
    assert parse("-avyy").fuzzy == 2 and parse("-yyy").fuzzy == 2  # rsync: more is -yy
    assert parse("-y", "--no-fuzzy").fuzzy == 0 and parse("-yy", "--no-y").fuzzy == 0


def test_fuzzy_goes_to_the_server():
    from zcsync.options import from_wire, to_wire
    assert from_wire(to_wire(parse("-yy"))).fuzzy == 2
    assert "fuzzy" not in to_wire(parse("-a"))


def test_backup_without_dir_omits_dir_times():
    assert parse("-a", "-b").omit_dir_times
    assert not parse("-a", "-b", "--backup-dir=x").omit_dir_times


def test_files_from_implies_relative_dirs_and_not_recursive():
    o = parse("-a", "--files-from=list")
    assert o.relative and o.dirs and not o.recursive
    assert parse("-a", "-r", "--files-from=list").recursive


def test_filter_rules_keep_command_line_order():
    args = ["--exclude", "*.o", "--include=*.c", "-f", "- tmp/", "-F", "--exclude=+ keep", "-FF"]
    assert cli.ordered_filter_rules(args) == [
        ("- ", "*.o"), ("+ ", "*.c"), ("", "- tmp/"), ("F", ""), ("- ", "+ keep"), ("F", ""), ("F", "")]
    assert cli.filter_specs(cli.ordered_filter_rules(args), False) == (
        "- *.o", "+ *.c", "- tmp/", ": /.rsync-filter", "+ keep", "- .rsync-filter", "- .rsync-filter")
    assert parse(*args).filter_rules[0] == "- *.o"


def test_filter_value_not_mistaken_for_flags():
    # "-f" takes the rest of its bundle or the next word; an -e value is skipped.
    assert cli.ordered_filter_rules(["-avf", "- x", "-e", "ssh -F cfg"]) == [("", "- x")]


@pytest.mark.parametrize("args", [
    ["--no-such-option"],
    ["--max-size=12Q"],
    ["--delete-before", "--delete-after"],
    ["--inplace", "--delay-updates"],
    ["--link-dest=a", "--copy-dest=b"],
    ["--max-delete=-1"],
])
def test_usage_errors_exit_1(args, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*args, "src", "dst"])
    assert exc.value.code == errors.USAGE


def test_no_operands_prints_help_and_exits_1(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == errors.USAGE
    assert "--archive" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code in (0, None)
    assert "zcsync version" in capsys.readouterr().out


@pytest.mark.parametrize("text,value", [
    ("0", 0), ("100", 100), ("1k", 1024), ("1K", 1024), ("1KB", 1000), ("1KiB", 1024),
    ("1.5M", 1572864), ("2G", 2 << 30), ("1G-1", (1 << 30) - 1), ("1k+1", 1025),
])
def test_sizes_as_rsync(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "k", "1X", "-1", "1..2"])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_options_from_mapping_rejects_unknown():
    with pytest.raises(errors.UsageError):
        from_mapping({"archive": True, "no_such": 1})


def test_escape_names_like_rsync():
    assert escape(b"plain name") == "plain name"
    assert escape(b"tab\there") == "tab\there"
    assert escape(b"nl\nx") == "nl\\#012x"
    assert escape(b"bad\xff") == "bad\\#377"
    assert escape("ünï".encode()) == "ünï"


@pytest.mark.parametrize("name,ok", [
    (b".", True), (b"a", True), (b"a/b", True), (b"..", False), (b"a/../b", False), (b"/abs", False),
    (b"a//b", False), (b"a/", False), (b"a\0b", False), (b"", False), (b"./a", False),
])
def test_safe_names(name, ok):
    assert is_safe_name(name) is ok


@pytest.mark.parametrize(("target", "name", "unsafe"), [
    # as rsync 3.5 decides them (checked against its --safe-links by hand)
    (b"x", b"link", False), (b"../x", b"link", True), (b"../x", b"a/link", False),
    (b"../../x", b"a/b/link", False), (b"../../x", b"a/link", True), (b"./../x", b"a/b/link", True),
    (b"..", b"a/link", False), (b"../..", b"a/b/link", True), (b"../../", b"a/b/link", False),
    (b"x/..", b"a/link", True), (b"x/../y", b"a/b/link", True), (b"..//x", b"a/link", False),
    (b"..//../x", b"a/b/link", False), (b"/abs", b"a/link", True), (b"", b"link", True),
    (b".", b"link", False), (b"../.", b"a/link", False), (b"..x", b"link", False), (b"x/..y", b"link", False),
])
def test_unsafe_symlink_as_rsync(target, name, unsafe):
    assert unsafe_symlink(target, name) is unsafe


def test_click_command_has_every_issue_option():
    names = {o for p in cli.command.params for o in p.opts + p.secondary_opts}
    for opt in ("-a", "-r", "-d", "-l", "-L", "-p", "-t", "-g", "-o", "-D", "--devices", "--specials",
                "-H", "-A", "-X", "-S", "-x", "-R", "-n", "-v", "-q", "-c", "-W", "-u", "--existing",
                "--ignore-existing", "--size-only", "--modify-window", "--delete", "--delete-before",
                "--delete-during", "--delete-after", "--delete-excluded", "--max-delete", "--exclude",
                "--include", "--exclude-from", "--include-from", "-f", "--filter", "-F", "--files-from",
                "--min-size", "--max-size", "--partial", "--partial-dir", "--inplace", "--backup",
                "--backup-dir", "--suffix", "--link-dest", "--compare-dest", "--copy-dest",
                "--numeric-ids", "--chmod", "--chown", "--mkpath", "-O", "--omit-dir-times",
                "--delay-updates", "--remove-source-files", "--list-only", "-i", "--itemize-changes",
                "--stats", "--log-file", "--version", "--help", "--no-perms", "--no-fsync"):
        assert opt in names or opt == "--help", opt
    assert isinstance(cli.command, click.Command)


@pytest.mark.parametrize(("given", "runs"), [
    ("sudo rsync", "sudo zcsync"), ("/usr/bin/rsync", "zcsync"), ("nice -n 5 /opt/bin/rsync --x", "nice -n 5 zcsync --x"),
    ("rsync-3.2", "rsync-3.2"), ("/opt/zcsync/bin/zcsync", "/opt/zcsync/bin/zcsync"),
])
def test_rsync_path_runs_zcsync_where_it_named_rsync(given, runs):
    assert cli.rsync_path_as_zcsync(given) == runs


def test_zcsync_path_wins_over_rsync_path():
    assert parse("--rsync-path=sudo rsync", "--zcsync-path=/z").zcsync_path == "/z"
    assert parse("--rsync-path=sudo rsync").zcsync_path == "sudo zcsync"


@pytest.mark.parametrize("mode", ["N", "line", "b"])
def test_outbuf_modes_are_accepted(tmp_path, mode):
    import subprocess
    import sys
    (tmp_path / "src").mkdir()
    (tmp_path / "src/f").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "zcsync", "-av", f"--outbuf={mode}", "--no-motd", "src/", "dst"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0 and "f\n" in proc.stdout, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "zcsync", "-a", "--outbuf=X", "src/", "dst"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1 and "Invalid --outbuf setting -- specify N, L, or B." in proc.stderr


@pytest.mark.parametrize("choice", ["auto", "xxh128", "XXH128", "xxh128,auto"])
def test_checksum_choice_names_what_zcsync_uses(choice):
    parse(f"--checksum-choice={choice}")
    parse("--cc", choice)


@pytest.mark.parametrize("choice", ["md5", "xxh3", "none", "xxh128,md5"])
def test_checksum_choice_refuses_what_zcsync_does_not_do(choice):
    with pytest.raises(click.UsageError, match="always uses xxh3-128"):
        parse(f"--checksum-choice={choice}")


_STOP_AT_CASES = ["1-30", "14:00", "1", "31", ":59", "2099-01-02T03:04", "99/1/2", "T10:00", "12-31T23:59", "2-29",
                  "1T", "T", "1-2-3-4", "25:00", ":60", "2020-01-01", "1t5", "::5", "5:", "13-1", "0", "32", "x", ""]


@pytest.mark.parametrize("text", _STOP_AT_CASES)
def test_stop_at_accepts_and_refuses_what_rsync_does(text, tmp_path):
    """rsync's verdict on each --stop-at value (a malformed one, one in the past, or a time)."""
    import shutil
    from zcsync.cli import stop_time
    if not shutil.which("rsync"):
        pytest.skip("rsync not installed")
    proc = subprocess.run(["rsync", "-n", f"--stop-at={text}", f"{tmp_path}/none/", f"{tmp_path}/dst"],
                          capture_output=True, text=True)
    rsync_says = ("invalid" if "invalid --stop-at format" in proc.stderr
                  else "past" if "not in the future" in proc.stderr else "ok")
    try:
        stop_time(None, text)
        ours = "ok"
    except click.UsageError as exc:
        ours = "invalid" if "invalid --stop-at format" in exc.message else "past"
    assert ours == rsync_says


@pytest.mark.parametrize("text,now,want", [
    ("1-30", (2026, 12, 7, 21, 30), (2027, 1, 30, 0, 0)),  # the next January 30th, at midnight
    ("14:00", (2026, 12, 7, 21, 30), (2026, 12, 8, 14, 0)),  # the next 2 PM
    ("14:00", (2026, 12, 7, 9, 30), (2026, 12, 7, 14, 0)),
    ("1", (2026, 12, 7, 21, 30), (2027, 1, 1, 0, 0)),  # the next 1st of a month
    ("31", (2026, 11, 7, 12, 0), (2026, 12, 31, 0, 0)),  # the next month that has a 31st
    (":59", (2026, 12, 7, 21, 30), (2026, 12, 7, 21, 59)),  # the next 59th minute
    (":10", (2026, 12, 7, 21, 30), (2026, 12, 7, 22, 10)),
    ("2-29", (2026, 12, 7, 21, 30), (2028, 2, 29, 0, 0)),  # the next leap day
    ("27/1/2T3:04", (2026, 12, 7, 21, 30), (2027, 1, 2, 3, 4)),
])
def test_stop_at_finds_the_next_matching_time(text, now, want):
    from zcsync.units import parse_stop_at
    local = lambda t: time.mktime((*t, 0, 0, 0, -1))  # noqa: E731
    assert parse_stop_at(text, local(now)) == local(want)


@pytest.mark.parametrize("args,message", [
    (["--stop-after=0"], "invalid --stop-after value: 0"),
    (["--time-limit=x"], "invalid --stop-after value: x"),
    (["--stop-at=25:00"], "invalid --stop-at format: 25:00"),
    (["--stop-at=2020-01-01"], "--stop-at time is not in the future: 2020-01-01"),
])
def test_stop_limits_refused_as_rsync(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "zcsync", "-a", *args, f"{tmp_path}/", f"{tmp_path}/dst"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and message in proc.stderr
    assert not (tmp_path / "dst").exists()


def test_stop_after_sets_the_limit_in_minutes():
    from zcsync.cli import stop_time
    before = time.time()
    assert before + 300 - 1 <= stop_time("5", None) <= time.time() + 300
    at = stop_time("5", "T" + time.strftime("%H:%M", time.localtime(before + 120)))  # both: the earlier
    assert at < before + 180


def test_remote_option_words_kept_as_written():
    """-M's word is the remote side's: not a filter rule here, not expanded as --no-X."""
    o = parse("-M--exclude=x", "-M", "--no-D", "--remote-option", "--include=y", "--remote-option=-f")
    assert o.remote_options == ("--exclude=x", "--no-D", "--include=y", "-f")
    assert o.filter_rules == () and o.devices is False


@pytest.mark.parametrize(("args", "fake", "super_user"), [
    (["--fake-super"], True, None), (["--super"], False, True), (["--no-super"], False, False),
    (["--super", "--fake-super"], True, None), (["--fake-super", "--no-super"], False, False),
    (["--fake-super", "-M--super"], True, None),  # (the -M word is the remote side's)
])
def test_super_and_fake_super_the_last_one_wins(args, fake, super_user):
    """rsync's am_root: --super, --no-super and --fake-super set one value; the last wins."""
    o = parse(*args)
    assert (o.fake_super, o.super_user) == (fake, super_user)


def test_fake_super_refuses_acls():
    with pytest.raises(click.UsageError, match="--fake-super with -A/--acls is not supported"):
        parse("-aA", "--fake-super")
