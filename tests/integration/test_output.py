"""What zcsync prints: progress only on a terminal, --json, --out-format and -v/-i lines
against rsync's on the same changes, and --log-file."""
from __future__ import annotations

import fcntl
import io
import json
import os
import pathlib
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
import time

import pytest

from tests.oracle import REPO_ROOT, differential, output_lines, run_rsync, run_zcsync
from zcsync.options import Options
from zcsync.progress import FILE, TOTAL, Progress, wanted
from zcsync.stats import Event

STAMP = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[\d+\] ")


def _tree(root: pathlib.Path, names: dict[str, bytes]) -> pathlib.Path:
    for name, data in names.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


SMALL = {"a.txt": b"alpha\n", "sub/b.bin": bytes(range(256)) * 40, "sub/deeper/c": b"c" * 5000}


def run_on_tty(args: list[str], cwd: pathlib.Path | None = None) -> tuple[int, str, str]:
    """Run zcsync with stderr on a pseudo-terminal (80x24): (exit code, stdout, terminal output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "zcsync", *args], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the last holder of the terminal closed it
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.stdout is not None
    stdout = proc.stdout.read().decode()
    proc.stdout.close()
    return proc.wait(timeout=60), stdout, b"".join(chunks).decode("utf-8", "replace")


# -- progress -------------------------------------------------------------------------

def test_progress_per_file_on_a_terminal(tmp_path):
    _tree(tmp_path / "src", SMALL)
    code, stdout, tty = run_on_tty(["-a", "--progress", "src/", "dst"], cwd=tmp_path)
    assert code == 0 and stdout == ""
    assert "100%" in tty and "B/s" in tty
    for name in ("a.txt", "sub/b.bin", "sub/deeper/c"):
        assert f"{name}: 100%" in tty, tty
    assert "xfr#3" in tty


def test_progress2_one_bar_for_the_run(tmp_path):
    _tree(tmp_path / "src", SMALL)
    code, stdout, tty = run_on_tty(["-a", "--info=progress2", "src/", "dst"], cwd=tmp_path)
    assert code == 0 and stdout == ""
    final = [part for part in tty.replace("\n", "\r").split("\r") if "100%" in part]
    assert final, tty
    assert "a.txt" not in tty  # one bar, no per-file lines
    total = sum(map(len, SMALL.values()))
    assert f"{total / 1024:.1f}k/{total / 1024:.1f}k" in final[-1] or "xfr#3" in final[-1], final[-1]


def test_dash_P_is_partial_and_progress(tmp_path):
    _tree(tmp_path / "src", SMALL)
    code, stdout, tty = run_on_tty(["-aP", "-v", "src/", "dst"], cwd=tmp_path)
    assert code == 0 and "a.txt: 100%" in tty
    assert "sending incremental file list" in stdout and "\na.txt\n" in stdout  # -v names on stdout
    assert "%|" not in stdout


@pytest.mark.parametrize("flags", [["--progress"], ["-P"], ["--info=progress2"]])
def test_no_progress_without_a_terminal(tmp_path, flags):
    _tree(tmp_path / "src", SMALL)
    zc = run_zcsync(["-a", *flags, "src/", "dst"], cwd=tmp_path)
    assert zc.returncode == 0
    assert zc.stderr == "" and zc.stdout == ""


def test_progress_always_draws_into_a_pipe(tmp_path):
    _tree(tmp_path / "src", SMALL)
    zc = run_zcsync(["-a", "--info=progress2", "--progress-always", "src/", "dst"], cwd=tmp_path)
    assert zc.returncode == 0 and zc.stdout == ""
    assert "100%" in zc.stderr


def test_progress_off_in_a_dry_run_and_with_quiet(tmp_path):
    _tree(tmp_path / "src", SMALL)
    for extra in (["-n"], ["-q"]):
        code, _, tty = run_on_tty(["-a", "--progress", *extra, "src/", "dst"], cwd=tmp_path)
        assert code == 0 and "%|" not in tty


def test_wanted_only_on_a_terminal():
    opts = Options(progress=FILE)
    assert not wanted(opts, io.StringIO())
    assert wanted(opts.replace(progress_always=True), io.StringIO())
    assert not wanted(Options(), io.StringIO())
    assert not wanted(opts.replace(progress_always=True, dry_run=True), io.StringIO())


class _SlowSource:
    """A DataSource that writes its bytes in 1 MiB steps with a pause between them."""

    def __init__(self, size: int, pause: float) -> None:
        self.size = size
        self.pause = pause

    def write_into(self, fd: int, sparse: bool) -> bytes:
        block = b"x" * (1 << 20)
        for _ in range(self.size // len(block)):
            os.write(fd, block)
            time.sleep(self.pause)
        return b"digest"

    def digest(self) -> bytes:
        return b"digest"


def test_total_counts_requested_files_and_grows(tmp_path):
    out = io.StringIO()
    progress = Progress(TOTAL, out, interval=0.01)
    progress.requested(Event(">f+++++++++", "a", size=10))
    progress.requested(Event(">f.st......", "b", size=20))
    assert progress.total == 30
    source = progress.track(b"a", _SlowSource(10, 0))
    with open(tmp_path / "a", "wb") as f:
        assert source.write_into(f.fileno(), False) == b"digest"
    progress.requested(Event(">f+++++++++", "c", size=70))  # a later batch
    progress.advance(90)
    progress.close()
    assert progress.total == 100 and progress.done == 100 and progress.files == 1
    assert "100/100" in out.getvalue()


def test_big_file_moves_the_bar_while_it_is_written(tmp_path):
    out = io.StringIO()
    size = 8 << 20
    progress = Progress(TOTAL, out, interval=0.01)
    progress.requested(Event(">f+++++++++", "big", size=size))
    source = progress.track(b"big", _SlowSource(size, 0.03))
    with open(tmp_path / "big", "wb") as f:
        source.write_into(f.fileno(), False)
    progress.close()
    shown = {int(m) for m in re.findall(r"(\d+)%\|", out.getvalue())}
    assert any(0 < p < 100 for p in shown), shown
    assert 100 in shown


# -- --json ---------------------------------------------------------------------------

STATS_KEYS = ("files_transferred", "files_deleted", "bytes_sent", "bytes_received", "literal_bytes",
              "matched_bytes", "total_size", "elapsed_s")


def _check_schema(doc: dict) -> None:
    assert isinstance(doc["exit_code"], int) and isinstance(doc["ok"], bool)
    assert doc["ok"] == (doc["exit_code"] == 0)
    for key in STATS_KEYS:
        assert isinstance(doc["stats"][key], (float if key == "elapsed_s" else int)), key
    assert isinstance(doc["errors"], list)
    for error in doc["errors"]:
        assert set(error) == {"path", "message", "code"}
        assert isinstance(error["message"], str) and isinstance(error["code"], int)
        assert error["path"] is None or isinstance(error["path"], str)


def test_json_is_the_only_thing_on_stdout(tmp_path):
    _tree(tmp_path / "src", SMALL)
    zc = run_zcsync(["-a", "-v", "-i", "--stats", "--json", "src/", "dst"], cwd=tmp_path)
    assert zc.returncode == 0
    assert zc.stdout.count("\n") == 1, zc.stdout
    doc = json.loads(zc.stdout)
    _check_schema(doc)
    assert doc["exit_code"] == 0 and doc["errors"] == []
    s = doc["stats"]
    assert s["files_transferred"] == 3 and s["literal_bytes"] == s["total_size"] == sum(map(len, SMALL.values()))
    assert {i["name"] for i in doc["items"] if i["itemize"] == ">f+++++++++"} == set(SMALL)
    again = json.loads(run_zcsync(["-a", "--json", "src/", "dst"], cwd=tmp_path).stdout)
    assert again["stats"]["files_transferred"] == 0 and "items" not in again


def test_json_lists_per_file_errors_exit_23(tmp_path):
    _tree(tmp_path / "src", SMALL)
    _tree(tmp_path / "dst", {"a.txt/keep": b"a directory where src has a file"})
    zc = run_zcsync(["-a", "--json", "src/", "dst"], cwd=tmp_path)
    assert zc.returncode == 23
    doc = json.loads(zc.stdout)
    _check_schema(doc)
    assert doc["exit_code"] == 23 and doc["ok"] is False
    assert doc["errors"] and {e["path"] for e in doc["errors"]} == {"a.txt"}
    assert all(e["code"] == 23 for e in doc["errors"])
    assert "cannot delete non-empty directory" in zc.stderr  # messages stay on stderr


def test_json_on_a_fatal_error(tmp_path):
    _tree(tmp_path / "src", SMALL)
    zc = run_zcsync(["-a", "--json", "src/", str(tmp_path / "no" / "such" / "dst")], cwd=tmp_path)
    assert zc.returncode == 11
    doc = json.loads(zc.stdout)
    _check_schema(doc)
    assert doc["exit_code"] == 11 and doc["errors"][-1]["path"] is None
    assert "mkdir" in doc["errors"][-1]["message"]


def test_list_only_json_and_library(tmp_path):
    _tree(tmp_path / "src", SMALL)
    rs = run_rsync(["--list-only", "-r", "src/"], cwd=tmp_path)
    zc = run_zcsync(["--list-only", "-r", "src/"], cwd=tmp_path)
    assert zc.returncode == 0 and sorted(zc.stdout.splitlines()) == sorted(rs.stdout.splitlines())
    doc = json.loads(run_zcsync(["--list-only", "-r", "--json", "src/"], cwd=tmp_path).stdout)
    assert sorted(doc["listing"]) == sorted(rs.stdout.splitlines())
    import zcsync
    result = zcsync.sync(f"{tmp_path}/src/", None, list_only=True, recursive=True)
    assert result.ok and len(result.listing) == len(rs.stdout.splitlines())


# -- -v, -i and --out-format against rsync ---------------------------------------------------

def _same_lines(rs: subprocess.CompletedProcess, zc: subprocess.CompletedProcess) -> None:
    want, got = output_lines(rs.stdout), output_lines(zc.stdout)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    assert want == got, f"only rsync printed: {missing}\nonly zcsync printed: {extra}"


FORMATS = [
    "%n%L",
    "%i %n%L",
    "%o %n%L",
    "[%i] %l %n",
    "%-40n|%12l|%'l|%''l|%'''l|",
    "%n %% %x",
    "%L|%5L|%n",
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_out_format_like_rsync_on_a_resync(tmp_path, fmt):
    rs, zc = differential(tmp_path, ["-a", "--delete", f"--out-format={fmt}"], seed=21, mutate=True,
                          tree_kwargs={"hardlinks": False})
    _same_lines(rs, zc)


@pytest.mark.parametrize("fmt", ["%n", "%i|%n|%l"])
def test_out_format_like_rsync_on_a_fresh_copy(tmp_path, fmt):
    rs, zc = differential(tmp_path, ["-a", f"--out-format={fmt}"], seed=22, tree_kwargs={"hardlinks": False})
    _same_lines(rs, zc)


@pytest.mark.parametrize("flags", [["-v"], ["-i"], ["-v", "-i"], ["-i", "--out-format=%n"],
                                   ["-v", "--out-format=%o %n"]])
def test_verbose_and_itemize_like_rsync(tmp_path, flags):
    rs, zc = differential(tmp_path, ["-a", "--delete", *flags], seed=23, mutate=True,
                          tree_kwargs={"hardlinks": False})
    _same_lines(rs, zc)


def test_out_format_dry_run_like_rsync(tmp_path):
    rs, zc = differential(tmp_path, ["-a", "--delete", "-n", "--out-format=%i %n%L"], seed=24, mutate=True,
                          tree_kwargs={"hardlinks": False})
    _same_lines(rs, zc)


def test_out_format_bytes_name_op_and_times(tmp_path):
    _tree(tmp_path / "src", SMALL)
    zc = run_zcsync(["-a", "--out-format=%n|%b|%f|%o|%t|%M|%p", "src/", "dst"], cwd=tmp_path)
    assert zc.returncode == 0
    rows = {line.split("|")[0]: line.split("|") for line in zc.stdout.splitlines()}
    assert rows["a.txt"][1] == str(len(SMALL["a.txt"])) and rows["sub/"][1] == "0"
    assert rows["sub/"][2] == "sub" and rows["./"][2] == "." and rows["sub/deeper/c"][2] == "sub/deeper/c"
    assert {r[3] for r in rows.values()} == {"send"}
    assert all(re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d", r[4]) for r in rows.values())
    assert all(re.fullmatch(r"\d{4}/\d\d/\d\d-\d\d:\d\d:\d\d", r[5]) for r in rows.values())
    assert all(r[6].isdigit() for r in rows.values())


# -- --log-file -------------------------------------------------------------------------

def _log_items(path: pathlib.Path) -> list[str]:
    """The item lines of a log file, names unescaped (rsync's log escapes some UTF-8 bytes
    as \\#ooo where zcsync writes the character)."""
    data = re.sub(rb"\\#([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), path.read_bytes())
    lines = data.decode("utf-8", "surrogateescape").splitlines()
    assert lines and all(STAMP.match(line) for line in lines), lines
    texts = [STAMP.sub("", line) for line in lines]
    return sorted(t for t in texts if not re.match(r"(building file list|sent \d|receiving file list)", t))


@pytest.mark.parametrize("extra", [[], ["-n"], ["-i"], ["-n", "-i"], ["--out-format=%n"]])
def test_log_file_like_rsync(tmp_path, extra):
    logs = {"rsync": tmp_path / "rsync.log", "zcsync": tmp_path / "zcsync.log"}

    def zcsync_with_own_log(args, **kwargs):
        args = [a.replace(str(logs["rsync"]), str(logs["zcsync"])) for a in args]
        return run_zcsync(args, **kwargs)
    differential(tmp_path, ["-a", "--delete", *extra, f"--log-file={logs['rsync']}"], seed=25, mutate=True,
                 tree_kwargs={"hardlinks": False}, tool=zcsync_with_own_log)
    assert _log_items(logs["rsync"]) == _log_items(logs["zcsync"])


@pytest.mark.parametrize("fmt", ["%n", "%o %n%L %l", "%i %n", "%n %l %M", ""], ids=["n", "o", "i", "M", "empty"])
@pytest.mark.parametrize("extra", [[], ["-i"]], ids=["plain", "itemize"])
def test_log_file_format_like_rsync(tmp_path, fmt, extra):
    """--log-file-format: rsync's lines for transfers, attribute changes (only when
    stdout itemizes too) and deletions ("deleting %n" without %o or %i); an empty format
    logs the deletions only."""
    logs = {"rsync": tmp_path / "rsync.log", "zcsync": tmp_path / "zcsync.log"}

    def zcsync_with_own_log(args, **kwargs):
        args = [a.replace(str(logs["rsync"]), str(logs["zcsync"])) for a in args]
        return run_zcsync(args, **kwargs)
    differential(tmp_path, ["-a", "--delete", *extra, f"--log-file={logs['rsync']}", f"--log-file-format={fmt}"],
                 seed=25, mutate=True, tree_kwargs={"hardlinks": False}, tool=zcsync_with_own_log)
    want, got = _log_items(logs["rsync"]), _log_items(logs["zcsync"])
    assert want == got, f"only rsync: {sorted(set(want) - set(got))}\nonly zcsync: {sorted(set(got) - set(want))}"
    assert any(t.startswith("deleting ") for t in want) == (fmt in ("", "%n", "%n %l %M"))
    assert all(t.startswith(("deleting ", "del. ", "*deleting")) for t in want) == (fmt == "")


def test_log_file_records_errors_and_the_exit(tmp_path):
    _tree(tmp_path / "src", SMALL)
    _tree(tmp_path / "dst", {"a.txt/keep": b"a directory where src has a file"})
    log = tmp_path / "run.log"
    zc = run_zcsync(["-a", f"--log-file={log}", "src/", "dst"], cwd=tmp_path)
    assert zc.returncode == 23
    texts = [STAMP.sub("", line) for line in log.read_text().splitlines()]
    assert texts[0] == "building file list"
    assert any(t.startswith("zcsync: cannot delete non-empty directory: a.txt") for t in texts)
    assert ">f+++++++++ sub/b.bin" in texts
    assert texts[-2].startswith("sent ") and "total size" in texts[-2]
    assert texts[-1] == "zcsync error: some files/attrs were not transferred (see previous errors) (code 23)"
    assert zc.stdout == ""  # the log file does not print items


def test_log_file_that_cannot_be_opened_is_a_warning(tmp_path):
    _tree(tmp_path / "src", SMALL)
    zc = run_zcsync(["-a", f"--log-file={tmp_path}/no/such/dir/log", "src/", "dst"], cwd=tmp_path)
    assert zc.returncode == 0 and "Ignoring --log-file option." in zc.stderr
    assert shutil.which("rsync")
    rs = run_rsync(["-a", f"--log-file={tmp_path}/no/such/dir/log", "src/", "dst2"], cwd=tmp_path, check=False)
    assert rs.returncode == 0


# -- over ssh: %o is "send" on a push and "recv" on a pull, as rsync's -----------------------

@pytest.mark.parametrize("direction", ["push", "pull"])
@pytest.mark.parametrize("flags", [["--out-format=%o %i %n%L|%l"], ["-v"]])
def test_out_format_over_ssh_like_rsync(tmp_path, sshd, direction, flags):
    from .sshd import ALIAS, remote_zcsync_path
    paths = ["src/", f"{ALIAS}:{{run}}/dst"] if direction == "push" else [f"{ALIAS}:{{run}}/src/", "dst"]
    rs, zc = differential(tmp_path, ["-a", "--delete", *flags], seed=26, mutate=True, env=sshd.env(),
                          tree_kwargs={"hardlinks": False}, paths=paths,
                          zcsync_extra=["--zcsync-path", remote_zcsync_path()])
    _same_lines(rs, zc)


@pytest.mark.parametrize("direction", ["push", "pull"])
@pytest.mark.parametrize("flag", ["--progress", "--info=progress2"])
def test_progress_over_ssh(tmp_path, sshd, direction, flag):
    from .sshd import ALIAS, remote_zcsync_path
    _tree(tmp_path / "src", SMALL)
    paths = ["src/", f"{ALIAS}:{tmp_path}/dst"] if direction == "push" else [f"{ALIAS}:{tmp_path}/src/", "dst"]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = dict(sshd.env(), PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "zcsync", "-a", flag, "--zcsync-path",
                             remote_zcsync_path(), *paths], cwd=tmp_path, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    assert proc.stdout is not None and proc.stdout.read() == b""
    proc.stdout.close()
    tty = b"".join(chunks).decode("utf-8", "replace")
    assert "100%" in tty, tty  # a push draws the run's bar (per file, from the bytes sent)
    if direction == "pull" and flag == "--progress":
        assert "sub/b.bin: 100%" in tty  # a pull has the writer here: a line per file


@pytest.mark.parametrize("args", [["-r"], ["-a"], []], ids=["recursive", "archive", "top-level"])
def test_one_operand_listing_matches_rsync_line_for_line(tmp_path, args):
    """rsync's depth-first order, and `-> target` only when links are kept (-l, -a)."""
    from tests.treegen import make_tree

    make_tree(tmp_path / "src", seed=11, files=30)
    rs = run_rsync([*args, "src/"], cwd=tmp_path)
    zc = run_zcsync([*args, "src/"], cwd=tmp_path)
    assert zc.returncode == 0, zc.stderr
    assert zc.stdout.splitlines() == rs.stdout.splitlines() and len(rs.stdout.splitlines()) > 3


# -- --info=FLAGS --------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [
    ["-v", "--info=name0"],  # the closing lines, no names
    ["--info=name1"],  # names without -v (deletions too), no closing lines
    ["--info=name2"],  # ... and "X is uptodate"
    ["-i", "--info=name2"],  # unchanged names itemized, as -ii
    ["-vv"],
    ["-v", "--info=flist0"],
    ["-v", "--info=stats0"],
    ["--info=stats1"],
    ["--info=del1"],  # "deleting X" alone
    ["-v", "--info=del0"],  # still named: -v's format names deletions
    ["-v", "--info=NONE"],
    ["-v", "--info=ALL0,name"],
    ["--info=NAME,flist", "--info=name0"],  # the later word wins
    ["-i", "--info=misc0,SKIP2"],
], ids=lambda words: " ".join(words))
def test_info_flags_like_rsync(tmp_path, extra):
    """--info=FLAGS decides, as in rsync, which of the names, deletions, the file-list line and
    the closing lines a run prints on stdout, on top of (or instead of) -v."""
    rs, zc = differential(tmp_path, ["-a", "--delete", *extra], seed=41, mutate=True,
                          tree_kwargs={"hardlinks": False})
    # (rsync's -vv adds two lines of its delta code's debugging)
    debug = ("delta-transmission disabled for local transfer or --whole-file", "total: matches=")
    want = [line for line in output_lines(rs.stdout) if not line.startswith(debug)]
    got = output_lines(zc.stdout)
    assert want == got, f"only rsync: {sorted(set(want) - set(got))}\nonly zcsync: {sorted(set(got) - set(want))}"
    closing = any(line.startswith("sent ") for line in rs.stdout.splitlines())
    assert closing == any(line.startswith("sent ") for line in zc.stdout.splitlines())


def test_info_stats2_is_the_stats_block_like_rsync(tmp_path):
    rs, zc = differential(tmp_path, ["-a", "--info=stats2"], seed=42, tree_kwargs={"hardlinks": False})
    wanted = ("Number of files", "Number of created files", "Total file size", "Literal data")
    def lines(out: str) -> list[str]:
        return [line for line in out.splitlines() if line.startswith(wanted)]
    assert lines(zc.stdout) == lines(rs.stdout) and len(lines(rs.stdout)) == 4


def _refused_like_rsync(tmp_path: pathlib.Path, args: list[str], said: str) -> None:
    """Both refuse args with exit 1, zcsync in rsync's words (what the regex said matches in
    rsync's stderr), and neither creates the destination."""
    (tmp_path / "src").mkdir(exist_ok=True)
    rs = run_rsync([*args, "src/", "dst/"], cwd=tmp_path, check=False)
    zc = run_zcsync([*args, "src/", "dst/"], cwd=tmp_path)
    assert rs.returncode == zc.returncode == 1
    words = re.search(said, rs.stderr)
    assert words and words.group(0) in zc.stderr, (rs.stderr, zc.stderr)
    assert not (tmp_path / "dst").exists()


def test_info_words_refused_and_help_like_rsync(tmp_path):
    for word in ("bogus", "name1,nope", "progress2x"):
        _refused_like_rsync(tmp_path, ["-a", f"--info={word}"], r'Unknown --info item: "[^"]*"')
    zc = run_zcsync(["--info=help"], cwd=tmp_path)
    rs = run_rsync(["--info=help"], cwd=tmp_path, check=False)
    assert zc.returncode == rs.returncode == 0
    kinds = lambda out: [line.split()[0] for line in out.splitlines() if re.match(r"[A-Z]+ {2,}", line)]  # noqa: E731
    assert kinds(zc.stdout) == kinds(rs.stdout)


@pytest.mark.parametrize("extra", [
    ["-av", "--stderr=all"], ["-av", "--msgs2stderr"], ["-a", "--stats", "--stderr=a"], ["-av", "--stderr=errors"],
    ["-av", "--stderr=c"], ["-av", "--msgs2stderr", "--no-msgs2stderr"], ["-a", "--list-only", "--stderr=all"],
], ids=lambda words: " ".join(words))
def test_stderr_mode_like_rsync(tmp_path, extra):
    """--stderr=all (and --msgs2stderr) moves everything stdout would carry to stderr, as in
    rsync; errors and client (prefixes allowed) leave stdout as it is."""
    rs, zc = differential(tmp_path, [*extra], seed=43, tree_kwargs={"hardlinks": False},
                          check_returncode="--list-only" not in extra,
                          compare_kwargs={"times": False} if "--list-only" in extra else None)
    assert rs.returncode == zc.returncode == 0
    assert output_lines(zc.stdout) == output_lines(rs.stdout)
    if not rs.stdout:
        want = [line for line in output_lines(rs.stderr) if not line.startswith("rsync")]
        got = output_lines(zc.stderr)
        if "--list-only" in extra:  # (rsync escapes non-ASCII names there: compared by count)
            want, got = len(want), len(got)
        assert want and got == want


def test_stderr_mode_refused_like_rsync(tmp_path):
    _refused_like_rsync(tmp_path, ["-a", "--stderr=x"], '--stderr mode "x" is not one of errors, all, or client')


def test_crtimes_refused_as_by_rsync_on_linux(tmp_path):
    for flag in ("-N", "--crtimes"):
        _refused_like_rsync(tmp_path, ["-a", flag], r"does not support --crtimes \(-N\)")


@pytest.mark.parametrize("extra", [["--max-alloc=100M"], ["--max-alloc=0"], ["--trust-sender"], ["--blocking-io"],
                                   ["--no-blocking-io"]], ids=lambda words: " ".join(words))
def test_accepted_rsync_options_change_nothing_like_rsync(tmp_path, extra):
    """Options rsync scripts pass that change nothing here: the same trees and lines as rsync's."""
    rs, zc = differential(tmp_path, ["-ai", *extra], seed=44, tree_kwargs={"hardlinks": False})
    assert output_lines(zc.stdout) == output_lines(rs.stdout)


@pytest.mark.parametrize("value", ["bogus", "1", "1023K"])
def test_max_alloc_refused_like_rsync(tmp_path, value):
    _refused_like_rsync(tmp_path, ["-a", f"--max-alloc={value}"], r"--max-alloc=\S+ is (invalid|too small.*)")
