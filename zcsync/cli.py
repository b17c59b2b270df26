"""The command line: rsync's options mapped onto Options; results mapped onto rsync's exit codes."""
from __future__ import annotations

import gc
import io
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from . import __version__, errors, info
from .errors import ZcsyncError
from .filters import FilterRules
from .options import MAX_BLOCK_SIZE, Options, from_mapping
from .stats import (
    DELETING,
    EXIT_TEXT,
    Event,
    Hooks,
    LineFormat,
    Report,
    RunLog,
    Stats,
    big_num,
    exit_text,
    stdout_format,
)
from .units import parse_size, parse_stop_at

if TYPE_CHECKING:
    import click

    from .progress import Progress

__all__ = ["EXIT_TEXT", "build_options", "command", "main", "run_cli"]

log = logging.getLogger("zcsync")

# click (8-10 ms of imports) and the command built on it load on first use, through the
# module __getattr__ below: `zcsync --server` and `zcsync daemon` parse their own
# arguments, and the remote end of every ssh transfer would otherwise pay for them.
command: click.Command


# Short options that take a value: the filter pre-scan must skip their argument.
_VALUE_SHORTS = set("feBM")
_FILTER_LONG = {"--exclude": "- ", "--include": "+ ", "--filter": "", "--exclude-from": "-",
                "--include-from": "+"}
# Long options whose value may look like a filter option (-M --exclude=x is the remote's).
_SKIP_VALUE_LONG = {"--remote-option"}


# rsync's --no-X for short options: --no-o is --no-owner, --no-D turns off both of -D's.
_SHORT_NEGATIONS = {
    "r": ["--no-recursive"], "d": ["--no-dirs"], "l": ["--no-links"], "L": ["--no-copy-links"],
    "p": ["--no-perms"], "t": ["--no-times"], "g": ["--no-group"], "o": ["--no-owner"],
    "D": ["--no-devices", "--no-specials"], "H": ["--no-hard-links"], "A": ["--no-acls"],
    "X": ["--no-xattrs"], "S": ["--no-sparse"], "x": ["--no-one-file-system"],
    "R": ["--no-relative"], "W": ["--no-whole-file"], "O": ["--no-omit-dir-times"],
    "J": ["--no-omit-link-times"], "h": ["--no-human-readable"],
    "E": ["--no-executability"], "y": ["--no-fuzzy"],
}


def expand_short_negations(args: list[str]) -> list[str]:
    out: list[str] = []
    verbatim = False  # the word after -M is the remote side's, as written
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        if verbatim or not arg.startswith("--no-"):
            out.append(arg)
        else:
            out.extend(_SHORT_NEGATIONS.get(arg[5:], [arg]))
        verbatim = arg in ("-M", "--remote-option")
    return out


_AM_ROOT_WORDS = ("--super", "--no-super", "--fake-super")


def last_am_root_word(args: Sequence[str]) -> str | None:
    """Which of --super, --no-super and --fake-super came last (rsync's am_root: it wins)."""
    last = None
    verbatim = False  # (a -M word is the remote side's)
    for arg in args:
        if arg == "--":
            break
        if arg in _AM_ROOT_WORDS and not verbatim:
            last = arg
        verbatim = arg in ("-M", "--remote-option")
    return last


def ordered_filter_rules(args: Sequence[str]) -> list[tuple[str, str]]:
    """(kind, value) for every filter-ish option, in command-line order.

    kind is a rule prefix ("- ", "+ ", "" for a raw rule) or "-"/"+" for --exclude-from /
    --include-from (value is then a file), or "F" for -F.
    """
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            break
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name in _SKIP_VALUE_LONG and not eq:
                i += 1
                continue
            if name in _FILTER_LONG:
                if not eq:
                    if i >= len(args):
                        break
                    value = args[i]
                    i += 1
                out.append((_FILTER_LONG[name], value))
            continue
        if arg.startswith("-") and len(arg) > 1:
            j = 1
            while j < len(arg):
                ch = arg[j]
                if ch == "F":
                    out.append(("F", ""))
                elif ch in _VALUE_SHORTS:
                    value = arg[j + 1:]
                    if not value and i < len(args):
                        value = args[i]
                        i += 1
                    if ch == "f":
                        out.append(("", value))
                    break
                j += 1
    return out


def filter_specs(ordered: list[tuple[str, str]], from0: bool) -> tuple[str, ...]:
    """Expand the ordered filter options into rule strings."""
    specs: list[str] = []
    f_count = 0
    for kind, value in ordered:
        if kind in ("- ", "+ "):
            specs.append(FilterRules.old_style(value, kind.strip()))
        elif kind == "":
            specs.append(value)
        elif kind in ("-", "+"):
            specs.extend(FilterRules.rules_from_file(value, kind, from0=from0))
        elif kind == "F":
            f_count += 1
            specs.append(": /.rsync-filter" if f_count == 1 else "- .rsync-filter")
    return tuple(specs)


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    import click

    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _block_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """--block-size: a size with rsync's suffixes; 0 is the automatic size."""
    import click

    if value is None:
        return None
    try:
        size = parse_size(value)
    except ValueError:
        raise click.UsageError(f"--block-size={value} is invalid") from None
    if size > MAX_BLOCK_SIZE:
        raise click.UsageError(f"--block-size={value} is too large (max: 128.00K)")
    return size


def _rate(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """--bwlimit: a plain number is KiB/s (rsync), suffixes as --max-size; returns bytes/s."""
    import click

    if value is None:
        return None
    try:
        return parse_size(value, default_unit="k")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def flag(*decls: str, help: str) -> Any:
    """A boolean rsync flag with a --no- form; None when not given (so -a can fill it)."""
    import click

    return click.option(*decls, default=None, help=help)


def _cmd_options(f: Any) -> Any:
    import click

    opts = [
        click.option("-v", "--verbose", count=True, help="increase verbosity"),
        click.option("-q", "--quiet", is_flag=True, default=False, help="suppress non-error messages"),
        click.option("-a", "--archive", is_flag=True, default=False, help="archive mode; equals -rlptgoD"),
        flag("-r", "--recursive/--no-recursive", help="recurse into directories"),
        flag("-d", "--dirs/--no-dirs", help="transfer directories without recursing"),
        flag("-l", "--links/--no-links", help="copy symlinks as symlinks"),
        flag("-L", "--copy-links/--no-copy-links", help="transform symlink into referent file/dir"),
        click.option("--safe-links", is_flag=True, default=False, help="ignore symlinks that point outside the tree"),
        click.option("--copy-unsafe-links", is_flag=True, default=False, help='only "unsafe" symlinks are transformed'),
        click.option("-k", "--copy-dirlinks", is_flag=True, default=False, help="transform symlink to dir into referent dir"),
        click.option("-K", "--keep-dirlinks", is_flag=True, default=False,
                     help="(refused: zcsync never follows a symlink in the destination)"),
        click.option("--copy-devices", is_flag=True, default=False, help="copy device contents as a regular file"),
        click.option("-N", "--crtimes", is_flag=True, default=False,
                     help="(refused, as by rsync on Linux: no settable creation times)"),
        flag("-p", "--perms/--no-perms", help="preserve permissions"),
        flag("-E", "--executability/--no-executability", help="preserve executability"),
        flag("-t", "--times/--no-times", help="preserve modification times"),
        flag("-g", "--group/--no-group", help="preserve group"),
        flag("-o", "--owner/--no-owner", help="preserve owner (super-user only)"),
        click.option("-D", "devices_specials", is_flag=True, default=False, help="same as --devices --specials"),
        flag("--devices/--no-devices", help="preserve device files (super-user only)"),
        flag("--specials/--no-specials", help="preserve special files"),
        flag("-H", "--hard-links/--no-hard-links", help="preserve hard links"),
        flag("-A", "--acls/--no-acls", help="preserve ACLs (implies --perms)"),
        flag("-X", "--xattrs/--no-xattrs", help="preserve extended attributes"),
        flag("-S", "--sparse/--no-sparse", help="turn sequences of nulls into sparse blocks"),
        flag("-m", "--prune-empty-dirs/--no-prune-empty-dirs", help="prune empty directory chains from file-list"),
        flag("-x", "--one-file-system/--no-one-file-system", help="don't cross filesystem boundaries"),
        flag("-R", "--relative/--no-relative", help="use relative path names"),
        click.option("-n", "--dry-run", is_flag=True, default=False, help="perform a trial run with no changes made"),
        click.option("-c", "--checksum", is_flag=True, default=False, help="skip based on checksum, not mod-time & size"),
        flag("-W", "--whole-file/--no-whole-file", help="copy files whole (without delta-xfer algorithm)"),
        click.option("-u", "--update", is_flag=True, default=False, help="skip files that are newer on the receiver"),
        click.option("--existing", is_flag=True, default=False, help="skip creating new files on receiver"),
        click.option("--ignore-existing", is_flag=True, default=False, help="skip updating files that exist on receiver"),
        click.option("--ignore-missing-args", is_flag=True, default=False, help="ignore missing source args without error"),
        click.option("--delete-missing-args", is_flag=True, default=False, help="delete missing source arguments from destination"),
        click.option("--size-only", is_flag=True, default=False, help="skip files that match in size"),
        click.option("-I", "--ignore-times", is_flag=True, default=False,
                     help="don't skip files that match size and time"),
        click.option("--modify-window", type=int, default=0, metavar="NUM", help="set the accuracy for mod-time comparisons"),
        click.option("--delete", is_flag=True, default=False, help="delete extraneous files from dest dirs"),
        click.option("--delete-before", is_flag=True, default=False, help="receiver deletes before transfer"),
        click.option("--delete-during", "--del", "delete_during", is_flag=True, default=False,
                     help="receiver deletes during the transfer"),
        click.option("--ignore-errors", is_flag=True, default=False, help="delete even if there are I/O errors"),
        click.option("--delete-after", is_flag=True, default=False, help="receiver deletes after transfer"),
        click.option("--delete-delay", is_flag=True, default=False, help="find deletions during, delete after"),
        click.option("--delete-excluded", is_flag=True, default=False, help="also delete excluded files from dest dirs"),
        click.option("--force", is_flag=True, default=False, help="force deletion of dirs even if not empty"),
        click.option("--max-delete", type=int, default=None, metavar="NUM", help="don't delete more than NUM files"),
        click.option("--exclude", multiple=True, metavar="PATTERN", help="exclude files matching PATTERN"),
        click.option("--include", multiple=True, metavar="PATTERN", help="don't exclude files matching PATTERN"),
        click.option("--exclude-from", multiple=True, metavar="FILE", help="read exclude patterns from FILE"),
        click.option("--include-from", multiple=True, metavar="FILE", help="read include patterns from FILE"),
        click.option("-f", "--filter", "filter_", multiple=True, metavar="RULE", help="add a file-filtering RULE"),
        click.option("-F", "filter_F", count=True, help="same as --filter='dir-merge /.rsync-filter'; repeated: --filter='- .rsync-filter'"),
        click.option("--files-from", metavar="FILE", default=None, help="read list of source-file names from FILE ([host]:FILE: on the remote host)"),
        click.option("-0", "--from0", is_flag=True, default=False, help="all *-from/filter files are delimited by 0s"),
        click.option("--min-size", callback=_size, metavar="SIZE", help="don't transfer any file smaller than SIZE"),
        click.option("--max-size", callback=_size, metavar="SIZE", help="don't transfer any file larger than SIZE"),
        click.option("--partial", is_flag=True, default=False, help="keep partially transferred files (in .zcsync-partial/)"),
        click.option("--partial-dir", metavar="DIR", default=None, help="put a partially transferred file into DIR"),
        click.option("--preallocate", is_flag=True, default=False, help="allocate dest files before writing them"),
        click.option("--open-noatime", is_flag=True, default=False, help="avoid changing the atime on opened files"),
        click.option("-T", "--temp-dir", metavar="DIR", default=None, help="create temporary files in directory DIR"),
        click.option("--inplace", is_flag=True, default=False, help="update destination files in-place"),
        click.option("--append", is_flag=True, default=False, help="append data onto shorter files"),
        click.option("--append-verify", is_flag=True, default=False, help="--append w/old data in file checksum"),
        click.option("-B", "--block-size", metavar="SIZE", default=None, callback=_block_size, help="force a fixed checksum block-size"),
        click.option("-b", "--backup", is_flag=True, default=False, help="make backups (see --suffix & --backup-dir)"),
        click.option("--backup-dir", metavar="DIR", default=None, help="make backups into hierarchy based in DIR"),
        click.option("--suffix", metavar="SUFFIX", default=None, help="backup suffix (default ~ w/o --backup-dir)"),
        click.option("--link-dest", multiple=True, metavar="DIR", help="hardlink to files in DIR when unchanged"),
        click.option("--compare-dest", multiple=True, metavar="DIR", help="also compare destination files relative to DIR"),
        click.option("--copy-dest", multiple=True, metavar="DIR", help="... and include copies of unchanged files"),
        click.option("-y", "--fuzzy", count=True,
                     help="find similar file for basis if no dest file (-yy: in --*-dest dirs too)"),
        click.option("--no-fuzzy", is_flag=True, default=False, help="turn off -y, wherever it is given"),
        click.option("--numeric-ids", is_flag=True, default=False, help="don't map uid/gid values by user/group name"),
        flag("--super/--no-super", "super_user", help="receiver attempts super-user activities"),
        click.option("--fake-super", is_flag=True, default=False, help="store/recover privileged attrs using xattrs"),
        click.option("--chmod", multiple=True, metavar="CHMOD", help="affect file and/or directory permissions"),
        click.option("--chown", metavar="USER:GROUP", default=None, help="simple username/groupname mapping"),
        click.option("--usermap", metavar="STRING", default=None, help="custom username mapping"),
        click.option("--groupmap", metavar="STRING", default=None, help="custom groupname mapping"),
        click.option("--mkpath", is_flag=True, default=False, help="create destination's missing path components"),
        flag("-O", "--omit-dir-times/--no-omit-dir-times", help="omit directories from --times"),
        flag("-J", "--omit-link-times/--no-omit-link-times", help="omit symlinks from --times"),
        click.option("--delay-updates", is_flag=True, default=False, help="put all updated files into place at end"),
        click.option("--remove-source-files", is_flag=True, default=False, help="sender removes synchronized files (non-dir)"),
        click.option("--list-only", is_flag=True, default=False, help="list the files instead of copying them"),
        click.option("-i", "--itemize-changes", "itemize", count=True, help="output a change-summary for all updates"),
        click.option("--stats", is_flag=True, default=False, help="give some file-transfer stats"),
        click.option("--log-file", metavar="FILE", default=None, help="log what we're doing to the specified FILE"),
        click.option("--log-file-format", metavar="FMT", default=None, help="log updates using the specified FMT"),
        click.option("--fsync/--no-fsync", default=True, help="fsync every file and directory before it is final (default on)"),
        click.option("--write-mode", type=click.Choice(["auto", "direct", "splice", "buffered"]), default="auto", help="how a receiver on a raw TCP connection writes files: O_DIRECT, splice or buffered (auto: buffered)"),
        click.option("-e", "--rsh", metavar="COMMAND", default=None, help="specify the remote shell to use (e.g. 'ssh -p 2222')"),
        click.option("--zcsync-path", metavar="PROGRAM", default=None, help="specify the zcsync to run on the remote machine"),
        click.option("-M", "--remote-option", "remote_options", multiple=True, metavar="OPT",
                     help="send OPTION to the remote side only (local copy: to the receiving side)"),
        click.option("--rsync-path", metavar="PROGRAM", default=None,
                     help="rsync's name for --zcsync-path (a word rsync in it becomes zcsync)"),
        click.option("--ssh-accept-new", is_flag=True, default=False, help="trust an unknown host key and remember it (zcsync's own known_hosts)"),
        click.option("-z", "--compress", is_flag=True, default=False, help="compress file data during the transfer"),
        click.option("--compress-level", "--zl", "compress_level", type=int, default=None, metavar="NUM",
                     help="explicitly set compression level"),
        click.option("--compress-choice", "--zc", "compress_choice", type=click.Choice(["zstd", "lz4", "none"]), default=None, help="choose the compression algorithm"),
        click.option("--skip-compress", metavar="LIST", default=None, help="skip compressing files with suffix in LIST"),
        click.option("--bwlimit", metavar="RATE", default=None, callback=_rate, help="limit I/O bandwidth, local copies too (KiB/s; rsync's units)"),
        click.option("--progress", "progress_flag", is_flag=True, default=False, help="show progress during transfer"),
        click.option("-P", "partial_progress", is_flag=True, default=False, help="same as --partial --progress"),
        click.option("--info", metavar="FLAGS", multiple=True, help="fine-grained informational verbosity"),
        click.option("--progress-always", is_flag=True, default=False, help="draw progress even when stderr is not a terminal"),
        click.option("--stderr", "stderr_mode", metavar="e|a|c", default=None, help="change stderr output mode (default: errors)"),
        click.option("--msgs2stderr/--no-msgs2stderr", default=None, help="all messages to stderr (--stderr=all) or not"),
        click.option("--out-format", metavar="FORMAT", default=None, help="output updates using the specified FORMAT"),
        click.option("--json", "json_", is_flag=True, default=False, help="print one JSON document with the result on stdout"),
        click.option("--port", type=click.IntRange(1, 65535), default=None, help="specify double-colon alternate port number"),
        click.option("--password-file", metavar="FILE", default=None, help="read daemon-access password from FILE"),
        click.option("--transport", type=click.Choice(["tcp"]), default=None, help="tcp: ssh starts a one-shot listener, data then goes over raw TCP (NOT encrypted)"),
        click.option("--timeout", type=click.IntRange(min=0), default=None, metavar="SECONDS", help="set I/O timeout in seconds"),
        click.option("--contimeout", type=click.IntRange(min=0), default=None, metavar="SECONDS", help="set connection timeout in seconds"),
        click.option("--stop-after", "--time-limit", "stop_after", metavar="MINS", default=None,
                     help="stop after MINS minutes have elapsed"),
        click.option("--stop-at", metavar="y-m-dTh:m", default=None, help="stop at the specified point in time"),
        click.option("--address", metavar="ADDRESS", default=None, help="bind address for outgoing socket to daemon"),
        click.option("-4", "--ipv4", "ip_version", flag_value=4, default=None, help="prefer IPv4"),
        click.option("-6", "--ipv6", "ip_version", flag_value=6, default=None, help="prefer IPv6"),
        click.option("--no-motd", is_flag=True, default=False,
                     help="suppress daemon-mode MOTD (accepted: a zcsync daemon sends none)"),
        click.option("--max-alloc", metavar="SIZE", default=None,
                     help="change a limit relating to memory alloc (checked as rsync; zcsync's stay far below)"),
        click.option("--trust-sender", is_flag=True, default=False,
                     help="trust the remote sender's file list (accepted: zcsync checks every name anyway)"),
        click.option("--blocking-io/--no-blocking-io", default=None,
                     help="use blocking I/O for the remote shell (accepted: zcsync polls its pipes)"),
        click.option("-s", "--secluded-args", "--protect-args", "secluded_args", is_flag=True, default=False,
                     help="use the protocol to safely send the arguments (zcsync always does)"),
        click.option("--outbuf", metavar="N|L|B", default=None, help="set out buffering to None, Line, or Block"),
        click.option("--version", is_flag=True, default=False, help="print the version and exit"),
        click.option("--checksum-choice", "--cc", "checksum_choice", metavar="STR", default=None,
                     help="choose the checksum algorithm (zcsync: always xxh3-128; auto or xxh128)"),
        click.option("-C", "--cvs-exclude", is_flag=True, default=False, help="auto-ignore files in the same way CVS does"),
        click.option("--inc-recursive/--no-inc-recursive", "--i-r/--no-i-r", "inc_recursive", default=None,
                     help="(accepted for rsync's scripts: zcsync's file list is always incremental)"),
        click.option("-h", "--human-readable", "human_count", count=True,
                     help="output numbers in a human-readable format (-h alone: this help)"),
        click.option("--no-human-readable", "no_human", is_flag=True, default=False, help="output numbers as digits"),
    ]
    for option in reversed(opts):
        f = option(f)
    return f


def _build_command() -> click.Command:
    """The click command (the module's `command`), built on first use."""
    import click

    class RsyncCommand(click.Command):
        """click, but usage errors exit 1 (rsync's code) and filter rules keep command-line order."""

        def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
            ctx.meta["zcsync.filters"] = ordered_filter_rules(args)
            ctx.meta["zcsync.am_root"] = last_am_root_word(args)
            return super().parse_args(ctx, expand_short_negations(args))

        def main(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().main(*args, standalone_mode=False, **kwargs)
            except click.exceptions.Exit as exc:
                sys.exit(exc.exit_code)
            except click.Abort:
                sys.exit(errors.SIGNAL)
            except click.UsageError as exc:
                exc.show()
                sys.exit(errors.USAGE)
            except click.ClickException as exc:
                exc.show()
                sys.exit(errors.USAGE)

    @click.command(cls=RsyncCommand, context_settings={"help_option_names": ["--help"]},
                   no_args_is_help=False)
    @_cmd_options
    @click.argument("paths", nargs=-1, type=click.UNPROCESSED)
    @click.pass_context
    def command(ctx: click.Context, paths: tuple[str, ...], **kw: Any) -> None:
        """zcsync [OPTION]... SRC [SRC]... DEST  -- fast, safe file tree replication (rsync syntax)."""
        if kw.pop("version"):
            click.echo(f"zcsync version {__version__}  (rsync-compatible command line)")
            sys.exit(0)
        if info.wants_help(kw["info"]):  # rsync prints its table of --info words and stops
            click.echo(info.HELP, nl=False)
            sys.exit(0)
        if not paths:  # rsync: -h alone asks for the help; nothing at all is a usage error
            click.echo(ctx.get_help())
            sys.exit(0 if kw["human_count"] else errors.USAGE)
        _set_outbuf(kw["outbuf"])
        opts = build_options(ctx, kw)
        if ctx.meta.get("zcsync.stderr") == "all":
            sys.stdout = sys.stderr  # rsync's --stderr=all: names, stats, listings, everything
        sys.exit(run_cli(list(paths), opts))

    return command


def _command() -> click.Command:
    cmd = globals().get("command")
    if cmd is None:
        # Two threads may both build it; either result is the same command.
        cmd = globals()["command"] = _build_command()
    return cmd


def __getattr__(name: str) -> Any:
    """`command` and `RsyncCommand`, built (and click imported) when first asked for."""
    if name == "command":
        return _command()
    if name == "RsyncCommand":
        return type(_command())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _set_outbuf(mode: str | None) -> None:
    """--outbuf: stdout unbuffered (N), flushed per line (L) or in blocks (B), as rsync's setvbuf."""
    import click

    if mode is None:
        return
    kind = mode[:1].upper()
    if kind not in ("N", "L", "B"):
        raise click.UsageError("Invalid --outbuf setting -- specify N, L, or B.")
    sys.stdout.reconfigure(line_buffering=kind == "L", write_through=kind == "N")  # type: ignore[union-attr]


def check_max_alloc(text: str | None) -> None:
    """--max-alloc=SIZE, refused as rsync refuses it (not a size; under 1M and not 0). zcsync's
    buffers are bounded by its frame and batch limits, far below any value it accepts."""
    import click

    if text is None:
        return
    try:
        size = parse_size(text)
    except ValueError:
        raise click.UsageError(f"--max-alloc={text} is invalid") from None
    if 0 < size < 1 << 20:
        raise click.UsageError(f"--max-alloc={text} is too small (min: 1.00M or 0 for unlimited)")


def stderr_mode(mode: str | None, msgs2stderr: bool | None) -> str:
    """--stderr=errors|all|client (any prefix, as rsync), else --msgs2stderr (all) or
    --no-msgs2stderr (errors). "errors" and "client" are the same here: every message
    is written on stderr by the side that has it or, from the remote side, by the client."""
    import click

    if mode is None:
        return "all" if msgs2stderr else "errors"
    for name in ("errors", "all", "client"):
        if mode and name.startswith(mode):
            return name
    raise click.UsageError(f'--stderr mode "{mode}" is not one of errors, all, or client')


def rsync_path_as_zcsync(program: str) -> str:
    """--rsync-path from an rsync script: each word that is rsync (or a path to an rsync)
    becomes zcsync, so that ``--rsync-path='sudo rsync'`` runs ``sudo zcsync`` there."""
    import shlex

    import click

    try:
        words = shlex.split(program)
    except ValueError as exc:
        raise click.UsageError(f"Cannot parse --rsync-path {program!r}: {exc}") from None
    return shlex.join("zcsync" if os.path.basename(w) == "rsync" else w for w in words)


def stop_time(after: str | None, at: str | None) -> int | None:
    """--stop-after=MINS / --stop-at=WHEN as the epoch second to stop at (both: the earlier)."""
    import click

    now = time.time()
    limits = []
    if after is not None:
        digits = re.match(r"\s*[+-]?\d+", after)  # as rsync's atol(): the leading number, else 0
        minutes = int(digits.group()) if digits else 0
        if minutes <= 0:
            raise click.UsageError(f"invalid --stop-after value: {after}")
        limits.append(int(now) + minutes * 60)
    if at is not None:
        try:
            when = parse_stop_at(at, now)
        except ValueError:
            raise click.UsageError(f"invalid --stop-at format: {at}") from None
        if when <= now:
            raise click.UsageError(f"--stop-at time is not in the future: {at}")
        limits.append(when)
    return min(limits) if limits else None


def build_options(ctx: click.Context, kw: dict[str, Any]) -> Options:
    """Map click's values onto Options (rsync's implications and conflicts)."""
    import click

    values = dict(kw)
    values["filter_rules"] = filter_specs(ctx.meta.get("zcsync.filters", []), values["from0"])
    if values.pop("crtimes"):  # rsync's own words on Linux
        raise click.UsageError("This zcsync does not support --crtimes (-N): Linux has no settable "
                               "creation times")
    if values.pop("keep_dirlinks"):
        raise click.UsageError("-K/--keep-dirlinks is not supported: zcsync never follows a symlink in the "
                               "destination (make it a real directory, or give its target as DEST)")
    if values.pop("cvs_exclude"):  # rsync appends these after every other rule, wherever -C was
        values["filter_rules"] += ("-C", ":C")
    values.pop("inc_recursive")
    values.pop("no_motd")
    check_max_alloc(values.pop("max_alloc"))
    values.pop("trust_sender")  # zcsync checks every name a sender sends, trusted or not
    values.pop("blocking_io")
    values.pop("secluded_args")  # zcsync always quotes every argument it gives the remote shell
    values["stop_at"] = stop_time(values.pop("stop_after"), values.pop("stop_at"))
    for word in (values.pop("checksum_choice") or "auto").split(","):
        if word.lower() not in ("auto", "xxh128"):  # one name for both the transfer and -c checksums
            raise click.UsageError(f"--checksum-choice={word}: zcsync always uses xxh3-128 for the "
                                   "transfer and for -c (give auto or xxh128)")
    values.pop("outbuf", None)  # the command line's alone (_set_outbuf)
    ctx.meta["zcsync.stderr"] = stderr_mode(values.pop("stderr_mode"), values.pop("msgs2stderr"))
    rsync_path = values.pop("rsync_path")
    if rsync_path is not None and values["zcsync_path"] is None:
        values["zcsync_path"] = rsync_path_as_zcsync(rsync_path)
    # -h raises rsync's default level (1, commas) by one each time; --no-h is 0.
    human_count, no_human = values.pop("human_count"), values.pop("no_human")
    values["human_readable"] = 0 if no_human else 1 + human_count
    for key in ("exclude", "include", "exclude_from", "include_from", "filter_", "filter_F"):
        values.pop(key)
    if values.pop("devices_specials"):
        values["devices"] = values["devices"] if values["devices"] is not None else True
        values["specials"] = values["specials"] if values["specials"] is not None else True
    before, during, after, delay = (values.pop("delete_before"), values.pop("delete_during"),
                                    values.pop("delete_after"), values.pop("delete_delay"))
    if sum((before, during, after, delay)) > 1:
        raise click.UsageError("You may not combine multiple --delete-WHEN options.")
    if before or during or after or delay or values["delete_excluded"]:
        values["delete"] = True
    values["delete_mode"] = "before" if before else "after" if after else "delay" if delay else "during"
    # rsync itemizes when stdout does: -i, or an --out-format with %i (the format wins for the lines).
    out_format = values["out_format"]
    values["itemize"] = bool(values["itemize"]) or bool(out_format and LineFormat(out_format).has_i)
    progress_flag, partial_progress, info_values = (values.pop("progress_flag"), values.pop("partial_progress"),
                                                    tuple(values.pop("info")))
    values["json"] = values.pop("json_")
    if partial_progress:
        values["partial"] = True
    progress = "file" if progress_flag or partial_progress else None
    if info.wants_help(info_values):  # (the command line prints the table before it gets here)
        raise click.UsageError("--info=help lists the --info words; it is for the command line")
    try:
        values["info"] = info_words = info.user_levels(info_values)
    except ZcsyncError as exc:
        raise click.UsageError(exc.message) from None
    shown = next((int(w[len("PROGRESS"):]) for w in info_words if w.startswith("PROGRESS")), None)
    if shown is not None:
        progress = None if shown == 0 else "file" if shown == 1 else "total"
    values["progress"] = progress
    if kw.get("itemize", 0) > 1 and not any(w.startswith("NAME") for w in values["info"]):
        # -ii itemizes the unchanged names too (rsync's stdout_format_has_i of 2), which is
        # what --info=name2 does with -i; it makes no more verbose than that.
        values["info"] = tuple(sorted((*values["info"], "NAME2")))
    if values.pop("no_fuzzy"):
        values["fuzzy"] = 0
    values["link_dest"] = tuple(values["link_dest"])
    values["compare_dest"] = tuple(values["compare_dest"])
    values["copy_dest"] = tuple(values["copy_dest"])
    values["chmod"] = tuple(values["chmod"])
    values["remote_options"] = tuple(values["remote_options"])
    if values["fake_super"] and values["super_user"] is not None:  # rsync: the last one given wins
        if ctx.meta.get("zcsync.am_root") == "--fake-super":
            values["super_user"] = None
        else:
            values["fake_super"] = False
    if values["acls"]:
        values["perms"] = True
    for key in ("timeout", "contimeout"):
        if values[key] == 0:
            values[key] = None  # rsync: 0 means no timeout
    try:
        return from_mapping(values)
    except ZcsyncError as exc:
        raise click.UsageError(exc.message) from exc


class _Display:
    """What the command line prints on stdout for a run's events: -v names, -i itemize
    lines, or --out-format lines, with rsync's rules for which items get one."""

    def __init__(self, opts: Options, out: TextIO, op: str, progress: Progress | None) -> None:
        shown = info.levels(opts)
        self.format = stdout_format(opts)
        self.out = out
        self.op = op
        self.progress = progress
        # Deletions get a line with a format, or with --info=del (rsync's log_delete).
        self.deletions = self.format is not None or shown["DEL"] > 0
        # With --json stdout carries the JSON document only.
        self.enabled = self.deletions and not opts.quiet and not opts.json
        # "created directory X" and the like: with names shown, or a format with %i (rsync).
        self.notes = bool(shown["NAME"] or (self.format is not None and self.format.has_i))
        self.every_change = shown["NAME"] > 1  # attribute-only changes named too (-vv)

    def line(self, event: Event) -> str | None:
        """The stdout line for event, or None if rsync would not name it."""
        fmt = self.format
        if event.is_deletion and event.itemize:
            return (fmt.deletion_format() if fmt is not None else DELETING).render(event, self.op)
        if fmt is None:
            return None
        if not event.itemize:
            return event.name if self.notes else None
        return fmt.render(event, self.op) if fmt.wants(event) or self.every_change else None

    def write(self, text: str) -> None:
        if self.progress is not None:
            self.progress.write_above(text, self.out)
        else:
            self.out.write(text + "\n")

    def event(self, event: Event) -> None:
        line = self.line(event)
        if line is not None:
            self.write(line)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines on stderr ("zcsync: ..."); moved clear of the progress bars when they are drawn."""

    def __init__(self, progress: Progress | None) -> None:
        super().__init__(sys.stderr)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        if self.progress is None:
            super().emit(record)
            return
        from tqdm import tqdm
        with tqdm.external_write_mode(file=self.stream):
            super().emit(record)


class _RunLogHandler(logging.Handler):
    """--log-file: the run's log messages, errors as "zcsync: ..." (rsync writes "rsync: ...")."""

    def __init__(self, runlog: RunLog) -> None:
        super().__init__(logging.INFO)
        self.runlog = runlog

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            self.runlog.logfile.write(f"zcsync: {text}" if record.levelno >= logging.WARNING else text)
        except Exception:  # noqa: BLE001 - logging must not break the run
            self.handleError(record)


def _setup_logging(opts: Options, progress: Progress | None) -> list[logging.Handler]:
    stream = _StderrHandler(progress)
    stream.setFormatter(logging.Formatter("zcsync: %(message)s"))
    stream.setLevel(logging.ERROR if opts.quiet else (logging.INFO if info.level(opts, "MISC") else logging.WARNING))
    root = logging.getLogger("zcsync")
    root.setLevel(logging.INFO)
    root.propagate = False
    root.addHandler(stream)
    return [stream]


def _raise_interrupt(signum: int, frame: object) -> None:
    raise errors.Interrupted(signal.Signals(signum).name)


def run_cli(paths: list[str], opts: Options) -> int:
    """Run one transfer for the command line; print what rsync prints; return the exit code.

    stdout carries what was asked for (-v/-i/--out-format lines, --stats, --list-only, or
    with --json one JSON document and nothing else); messages and progress go to stderr.
    """
    from .api import SyncResult, is_push, run_paths, transfer_op
    from .progress import Progress

    transfer = len(paths) > 1 and not opts.list_only
    op = transfer_op(paths)
    progress = Progress.for_options(opts, sys.stderr, push=is_push(paths)) if transfer else None
    handlers = _setup_logging(opts, progress)
    zlog = logging.getLogger("zcsync")
    runlog = RunLog.open(opts, op) if opts.log_file and transfer else None
    if runlog is not None:
        handlers.append(_RunLogHandler(runlog))
        zlog.addHandler(handlers[-1])
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    out = sys.stdout
    started = time.monotonic()
    display = _Display(opts, out, op, progress)
    shown = info.levels(opts)
    items: list[Event] = []
    collect = opts.json and bool(opts.itemize or opts.verbose or opts.out_format)

    def on_event(event: Event) -> None:
        if display.enabled:
            display.event(event)
        if runlog is not None:
            runlog.event(event)
        if collect:
            items.append(event)

    listening = display.enabled or runlog is not None or collect
    # rsync's lines without -v ("skipping directory X"): on stdout, unless -q (or --json).
    on_notice = None if opts.quiet or opts.json else display.write
    hooks = Hooks(on_event=on_event if listening else None, progress=progress, on_notice=on_notice)
    listing = io.StringIO() if opts.json else out
    code = 0
    result = None
    fatal: ZcsyncError | None = None
    try:
        try:
            if shown["FLIST"] and not opts.quiet and not opts.json and transfer:
                display.write("receiving incremental file list" if op == "recv"
                              else "sending incremental file list")
            try:
                try:
                    result = run_paths(paths, opts, on_event=hooks, out=listing)
                finally:
                    if progress is not None:
                        progress.close()
            except KeyboardInterrupt:
                raise errors.Interrupted("SIGINT") from None
            code = result.exit_code
            if transfer and not opts.json:
                _summary(result.report, opts, time.monotonic() - started)
        except ZcsyncError as exc:
            fatal = exc
            if os.environ.get("ZCSYNC_DEBUG"):
                log.exception("%s", exc.message)
            else:
                log.error("%s", exc.message)
            code = exc.exit_code
        # What the run got to, even when it ended early: the counters and problems so far.
        report = result.report if result is not None else hooks.report
        stats = report.stats if report is not None else Stats()
        if runlog is not None:
            runlog.finish(stats, code)
        if opts.json:
            import json
            lines = tuple(listing.getvalue().splitlines()) if isinstance(listing, io.StringIO) else ()
            problems = tuple(report.problems) if report is not None else ()
            doc = SyncResult(code, stats, problems, tuple(items), lines).as_dict(items=collect)
            if fatal is not None:  # the error that ended the run names no one file
                errors_list = doc["errors"]
                assert isinstance(errors_list, list)
                errors_list.append({"path": None, "message": fatal.message, "code": fatal.exit_code})
            out.write(json.dumps(doc) + "\n")
        out.flush()
        if code:
            sys.stderr.write(f"zcsync error: {exit_text(code)} (code {code})\n")
    finally:
        for h in handlers:
            h.flush()
            zlog.removeHandler(h)
            h.close()
        zlog.propagate = True
        if runlog is not None:
            runlog.close()
    return code


def _num(n: int) -> str:
    """A count, as rsync's comma_num (commas at every -h level)."""
    return f"{n:,}"


def _summary(report: Report, opts: Options, elapsed: float) -> None:
    s = report.stats
    out = sys.stdout
    level = opts.human_readable

    def size(n: int) -> str:  # rsync's human_num
        return big_num(n, level)

    def rate(r: float) -> str:  # rsync's human_dnum(r, 2): units, else two decimals
        text = big_num(int(r), level)
        return text if text[-1:].isalpha() else (f"{r:,.2f}" if level else f"{r:.2f}")
    sent = s.bytes_sent or s.literal_bytes + s.flist_size
    received = s.bytes_received
    shown = info.level(opts, "STATS")
    if shown > 1:
        def kinds(counts: dict[str, int]) -> str:
            """rsync's " (reg: N, dir: N, ...)": the kinds that occur, none if none does."""
            parts = [f"{k}: {_num(counts[k])}" for k in ("reg", "dir", "link", "dev", "special") if counts.get(k)]
            return f" ({', '.join(parts)})" if parts else ""
        listed = {"reg": s.regular_files, "dir": s.dirs, "link": s.links, "dev": s.devices, "special": s.specials}
        out.write(f"\nNumber of files: {_num(s.files)}{kinds(listed)}\n")
        created = f"{_num(s.files_created)}{kinds(s.created_kinds) if s.files_created else ''}"
        out.write(f"Number of created files: {created}\n")
        out.write(f"Number of deleted files: {_num(s.files_deleted)}\n")
        out.write(f"Number of regular files transferred: {_num(s.files_transferred)}\n")
        out.write(f"Total file size: {size(s.total_size)} bytes\n")
        out.write(f"Total transferred file size: {size(s.transferred_size)} bytes\n")
        out.write(f"Literal data: {size(s.literal_bytes)} bytes\n")
        out.write(f"Matched data: {size(s.matched_bytes)} bytes\n")
        out.write(f"File list size: {size(s.flist_size)}\n")
        out.write(f"Total bytes sent: {size(sent)}\n")
        out.write(f"Total bytes received: {size(received)}\n")
    if shown:
        per_s = (sent + received) / elapsed if elapsed > 0 else 0.0
        speedup = s.total_size / (sent + received) if sent + received else 0.0
        out.write(f"\nsent {size(sent)} bytes  received {size(received)} bytes  {rate(per_s)} bytes/sec\n")
        out.write(f"total size is {size(s.total_size)}  speedup is {speedup:,.2f}"
                  f"{' (DRY RUN)' if opts.dry_run else ''}\n")


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point; argv None: the program's own arguments (the process ends here)."""
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        if args[:1] == ["--server"]:
            from .server import main as server_main
            sys.exit(server_main(args))
        if args[:1] in (["daemon"], ["--daemon"]):
            from .daemon import main as daemon_main
            sys.exit(daemon_main(args[1:]))
        _command().main(args=args, prog_name="zcsync")
    finally:
        if argv is None:
            # The process is about to end and the OS frees its memory: spare the interpreter's
            # shutdown its garbage collections over every object of every module loaded (8-15 ms
            # of a small transfer). atexit handlers, thread joins and flushes still run.
            gc.freeze()

