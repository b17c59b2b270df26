"""Run rsync and zcsync on identical trees and check that they leave identical results.

rsync is the oracle for semantics: a differential test builds one source tree (and
optionally a destination to resync), gives each tool an exact copy of both at the
very same paths, runs both with the same options, and compares what they left,
field by field (treecmp). Callers compare the returned outputs as they need
(output_lines: rsync's own line order is not stable).
"""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence

try:
    from .treecmp import assert_same_tree
    from .treegen import copy_tree, make_tree, mutate_tree
except ImportError:  # imported as a top-level module, with tests/ on sys.path
    from treecmp import assert_same_tree  # type: ignore[no-redef]
    from treegen import copy_tree, make_tree, mutate_tree  # type: ignore[no-redef]

__all__ = [
    "RSYNC",
    "REPO_ROOT",
    "CommandFailed",
    "run_rsync",
    "run_zcsync",
    "differential",
    "compare_kwargs_for",
    "strip_stats",
    "output_lines",
]

RSYNC = "/usr/bin/rsync"
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT = 300

Runner = Callable[..., subprocess.CompletedProcess]


class CommandFailed(subprocess.CalledProcessError):
    """A command that had to succeed did not; the message carries its stderr."""

    def __str__(self) -> str:
        tail = (self.stderr or "").strip()[-2000:]
        return f"{super().__str__()}\nstderr:\n{tail}" if tail else super().__str__()


def _run(cmd: list[str], *, check: bool, cwd: os.PathLike[str] | str | None,
         env: Mapping[str, str] | None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd,
        cwd=cwd,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        errors="surrogateescape",  # names in output may be any bytes
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
    )
    if check and result.returncode != 0:
        raise CommandFailed(result.returncode, cmd, result.stdout, result.stderr)
    return result


def run_rsync(args: Sequence[str], *, check: bool = True,
              cwd: os.PathLike[str] | str | None = None,
              env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run /usr/bin/rsync with args, capturing text output."""
    return _run([RSYNC, *args], check=check, cwd=cwd, env=env)


def run_zcsync(args: Sequence[str], *, check: bool = False,
               cwd: os.PathLike[str] | str | None = None,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m zcsync` from this checkout (whatever the cwd), capturing text output."""
    full_env = dict(os.environ if env is None else env)
    old = full_env.get("PYTHONPATH")
    full_env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + old if old else "")
    return _run([sys.executable, "-m", "zcsync", *args], check=check, cwd=cwd, env=full_env)


# rsync short options that take an argument (the rest of the bundle, or the next word).
_SHORT_WITH_ARG = set("eBTfM@")


def _effective_flags(options: Sequence[str]) -> dict[str, bool]:
    """Which of the time-related rsync options end up on, reading options like rsync."""
    flags = {"times": False, "omit_dir_times": False, "omit_link_times": False,
             "backup": False, "backup_dir": False}
    long_map = {
        "--archive": ("times", True), "--times": ("times", True),
        "--no-times": ("times", False), "--no-t": ("times", False),
        "--omit-dir-times": ("omit_dir_times", True),
        "--no-omit-dir-times": ("omit_dir_times", False),
        "--omit-link-times": ("omit_link_times", True),
        "--no-omit-link-times": ("omit_link_times", False),
    }
    short_map = {"a": ("times", True), "t": ("times", True),
                 "O": ("omit_dir_times", True), "J": ("omit_link_times", True)}
    skip_next = False
    for word in options:
        if skip_next:
            skip_next = False
            continue
        if word.startswith("--"):
            if word == "--backup":
                flags["backup"] = True
            elif word == "--no-backup":
                flags["backup"] = False
            elif word.startswith("--backup-dir"):
                flags["backup_dir"] = True
                skip_next = word == "--backup-dir"
            if word in long_map:
                key, value = long_map[word]
                flags[key] = value
        elif word.startswith("-") and len(word) > 1:
            for i, ch in enumerate(word[1:], start=1):
                if ch in _SHORT_WITH_ARG:
                    skip_next = i == len(word) - 1
                    break
                if ch == "b":
                    flags["backup"] = True
                if ch in short_map:
                    key, value = short_map[ch]
                    flags[key] = value
    return flags


def compare_kwargs_for(options: Sequence[str], src_suffix: str = "/") -> dict[str, bool]:
    """The treecmp switches under which two runs with these options should agree.

    Times a run does not preserve are "now" and differ between two runs; everything
    else (owners, modes, hard links) comes out the same on both sides either way.
    """
    flags = _effective_flags(options)
    # rsync(1): --backup without --backup-dir forces --omit-dir-times on.
    backup_omits = flags["backup"] and not flags["backup_dir"]
    return {
        "times": flags["times"],
        "dir_times": not (flags["omit_dir_times"] or backup_omits),
        "link_times": not flags["omit_link_times"],
        # Without the trailing slash the source goes *inside* dst, and dst's own
        # times are whenever it was last written to.
        "root_times": src_suffix.endswith("/"),
    }


_TIMING_LINE = re.compile(
    r"^(sent [\d,.]+ bytes +received [\d,.]+ bytes .*|total size is .* speedup is .*"
    r"|File list (generation|transfer) time: .*|File list size: .*"
    r"|Total bytes (sent|received): .*)$")


def strip_stats(text: str) -> str:
    """Drop the lines of -v/--stats output that depend on timing or on wire bytes."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not _TIMING_LINE.match(line.rstrip("\n")))


def output_lines(text: str, *, sort: bool = True) -> list[str]:
    """Output lines without timing lines, sorted by default: rsync's own order of
    *deleting and itemize lines varies between two identical runs."""
    lines = strip_stats(text).splitlines()
    return sorted(lines) if sort else lines


def _run_rsync_as_tool(args: Sequence[str], *, cwd: os.PathLike[str] | str | None = None,
                       env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_rsync(args, check=False, cwd=cwd, env=env)


def differential(
    tmp_path: pathlib.Path,
    options: Sequence[str],
    *,
    seed: int,
    prepare: Callable[[pathlib.Path, pathlib.Path], None] | None = None,
    mutate: bool = False,
    src_suffix: str = "/",
    compare_kwargs: Mapping[str, object] | None = None,
    tree_kwargs: Mapping[str, object] | None = None,
    presync: Sequence[str] = ("-a",),
    paths: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    check_returncode: bool = True,
    tool: Runner | None = None,
    zcsync_extra: Sequence[str] = (),
) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """Run rsync and zcsync with the same options on identical trees; assert the same outcome.

    Layout under a fresh directory in tmp_path: base/ holds src/ and (for a resync)
    dst/, plus whatever prepare() puts next to them (a --link-dest tree, a
    --files-from list...). For each tool in turn base/ is copied exactly to run/, the
    tool runs with run/ as cwd and the arguments [*options, "src" + src_suffix, "dst"]
    (or [*options, *paths]), and run/ is then renamed to rsync/ or zcsync/. So both
    tools see the very same paths, and their output (even rsync's absolute paths in
    error messages) can be compared as is, except for timings (see output_lines).

    - dst does not exist at the start unless mutate=True, in which case base/dst is
      first synced with `rsync *presync base/src/ base/dst/` and then the source is
      changed with mutate_tree, so that the run under test is a resync.
    - prepare(src, dst) runs on base/src and base/dst last, to tweak the starting
      point (dst may not exist yet); src.parent is base/, i.e. run/ at run time.
    - Compared afterwards: dst with compare_kwargs (default compare_kwargs_for(options),
      given keys override); src strictly (a tool must not touch it unless told to);
      everything else in run/ (e.g. a --backup-dir) with compare_kwargs but without
      directory times.
    - tool replaces run_zcsync (same call signature as run_zcsync minus check), e.g.
      to check the harness itself with rsync on both sides.
    - "{run}" in paths becomes the run directory's absolute path (remote operands);
      zcsync_extra are arguments only zcsync gets (e.g. --zcsync-path).

    Returns (rsync_result, zcsync_result) for callers to compare output.
    """
    work = pathlib.Path(tempfile.mkdtemp(prefix="differential-", dir=tmp_path))
    base_src, base_dst = work / "base" / "src", work / "base" / "dst"
    make_tree(base_src, seed, **dict(tree_kwargs or {}))
    if mutate:
        run_rsync([*presync, f"{base_src}/", f"{base_dst}/"])
        mutate_tree(base_src, seed + 1)
    if prepare is not None:
        prepare(base_src, base_dst)

    run_dir = work / "run"
    # "{run}" in a path is the run directory's absolute path (for host:/abs/path operands).
    argv = [*options, *(p.replace("{run}", str(run_dir))
                        for p in (paths if paths is not None else ["src" + src_suffix, "dst"]))]
    runners: dict[str, Runner] = {
        "rsync": _run_rsync_as_tool,
        "zcsync": tool if tool is not None else run_zcsync,
    }
    # Both tools run in the same directory, one after the other, so that even the
    # absolute paths in their messages are the same; each result is then moved aside.
    sides: dict[str, pathlib.Path] = {}
    results: dict[str, subprocess.CompletedProcess] = {}
    for name, runner in runners.items():
        copy_tree(work / "base", run_dir)
        args = [*zcsync_extra, *argv] if name == "zcsync" else argv
        results[name] = runner(args, cwd=run_dir, env=env)
        sides[name] = work / name
        run_dir.rename(sides[name])
    expected, actual = results["rsync"], results["zcsync"]

    def outputs() -> str:
        return (f"\nargs: {argv}\nrsync rc={expected.returncode} stdout:\n{expected.stdout}"
                f"stderr:\n{expected.stderr}\nzcsync rc={actual.returncode} stdout:\n"
                f"{actual.stdout}stderr:\n{actual.stderr}")

    if check_returncode and expected.returncode != actual.returncode:
        raise AssertionError(
            f"Exit codes differ: rsync {expected.returncode}, zcsync {actual.returncode}"
            + outputs())

    kwargs: dict[str, object] = compare_kwargs_for(options, src_suffix)
    if paths is not None:
        # dst's own times are the transfer's only for one "dir/" source into dst.
        sources, dest = paths[:-1], paths[-1].rstrip("/")
        kwargs["root_times"] = (dest == "dst" and len(sources) == 1
                                and sources[0].endswith("/"))
    kwargs.update(compare_kwargs or {})
    try:
        have = {name: os.path.lexists(side / "dst") for name, side in sides.items()}
        if have["rsync"] != have["zcsync"]:
            raise AssertionError("dst exists after only one tool: "
                                 + ", ".join(n for n, ok in have.items() if ok))
        if have["rsync"]:
            assert_same_tree(sides["rsync"] / "dst", sides["zcsync"] / "dst", **kwargs)
        # --remove-source-files empties source dirs, whose mtimes become "now".
        removes = "--remove-source-files" in options
        assert_same_tree(sides["rsync"] / "src", sides["zcsync"] / "src",
                         dir_times=not removes, root_times=not removes)
        assert_same_tree(sides["rsync"], sides["zcsync"],
                         **{**kwargs, "dir_times": False, "root_times": False,
                            "exclude": lambda rel: rel in (b"src", b"dst")})
    except AssertionError as exc:
        raise AssertionError(str(exc) + outputs()) from None
    return expected, actual
