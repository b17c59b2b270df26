"""Frozen Options: every rsync-style switch the engine understands, validated once."""
from __future__ import annotations

import dataclasses
import functools
import os
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import UsageError
from .units import parse_size

MAX_BLOCK_SIZE = 1 << 17  # rsync's MAX_BLOCK_SIZE (protocol >= 30)
# rsync's --info kinds (zcsync.info); Options.info holds them as "KIND<level>" words
INFO_KINDS = ("BACKUP", "COPY", "DEL", "FLIST", "MISC", "MOUNT", "NAME", "NONREG", "PROGRESS", "REMOVE",
              "SKIP", "STATS", "SYMSAFE")

# -a is -rlptgoD: each of these is filled only when the user left it unset.
ARCHIVE_FLAGS = ("recursive", "links", "perms", "times", "group", "owner", "devices", "specials")


@dataclass(frozen=True)
class Options:
    """What to transfer and how; shared by the CLI, the library API and the server."""

    recursive: bool = False
    dirs: bool = False
    links: bool = False
    copy_links: bool = False
    copy_dirlinks: bool = False  # -k: a symlink to a directory is sent as the directory
    copy_unsafe_links: bool = False  # a symlink out of the tree is sent as what it points to
    safe_links: bool = False  # the receiver ignores symlinks that point outside the transfer
    perms: bool = False
    times: bool = False
    group: bool = False
    owner: bool = False
    devices: bool = False
    specials: bool = False
    hard_links: bool = False
    acls: bool = False
    xattrs: bool = False
    sparse: bool = False
    executability: bool = False  # -E: without -p, execute bits follow the source's
    prune_empty_dirs: bool = False  # -m: leave empty directory chains out of the file list
    one_file_system: bool = False
    relative: bool = False
    dry_run: bool = False
    verbose: int = 0
    quiet: bool = False
    checksum: bool = False
    whole_file: bool | None = None
    update: bool = False
    existing: bool = False
    ignore_existing: bool = False
    ignore_missing_args: bool = False  # a missing source operand is skipped, not an error
    # ... and its destination name deleted (rsync's --delete-missing-args; implies the above)
    delete_missing_args: bool = False
    ignore_errors: bool = False  # --delete deletes after a read error on the sending side too
    size_only: bool = False
    ignore_times: bool = False  # -I: transfer even files whose size and time match
    modify_window: int = 0
    delete: bool = False
    delete_mode: str = "during"  # before | during | after | delay
    delete_excluded: bool = False
    force: bool = False
    max_delete: int | None = None
    filter_rules: tuple[str, ...] = ()
    files_from: str | None = None
    files_from_peer: bool = False  # the client sends the --files-from names after the handshake (pull)
    # --files-from=host:FILE or :FILE: FILE on the server's host, which the server reads (pull)
    # or reads and sends to the client's sender before it scans (push)
    files_from_remote: str | None = None
    from0: bool = False
    min_size: int | None = None
    max_size: int | None = None
    partial: bool = False
    partial_dir: str | None = None
    preallocate: bool = False  # reserve each received file's size before writing it
    open_noatime: bool = False  # read files with O_NOATIME where the kernel allows it
    stop_at: int | None = None  # --stop-after/--stop-at: epoch seconds at which the run stops (exit 30)
    temp_dir: str | None = None  # -T: the receiver's temp files go there (relative: to the destination)
    inplace: bool = False
    append: bool = False  # --append (implies --inplace); --append-verify sets append_verify too
    append_verify: bool = False
    block_size: int | None = None  # --block-size: fixed delta block length (None/0: rsync's sqrt rule)
    backup: bool = False
    backup_dir: str | None = None
    suffix: str | None = None
    link_dest: tuple[str, ...] = ()
    compare_dest: tuple[str, ...] = ()
    copy_dest: tuple[str, ...] = ()
    # -y: a missing file's delta basis is a similar file of its directory (2, -yy: or of the
    # same directory in a --*-dest dir)
    fuzzy: int = 0
    numeric_ids: bool = False
    copy_devices: bool = False  # the sender lists a device as a regular file of its contents
    # rsync's am_root on the receiver: --fake-super keeps owners, special modes and device
    # numbers in the user.rsync.%stat xattr (and reads them back when sending); --super
    # (True) acts as root even when not, --no-super (False) does not even as root.
    fake_super: bool = False
    super_user: bool | None = None
    chmod: tuple[str, ...] = ()
    chown: str | None = None
    usermap: str | None = None  # rsync's FROM:TO,... (receiver side); implies owner
    groupmap: str | None = None  # implies group
    mkpath: bool = False
    omit_dir_times: bool = False
    human_readable: int = 1  # rsync's -h levels: 0 digits, 1 commas, 2 units of 1000, 3 of 1024
    omit_link_times: bool = False  # -J: no times on symlinks
    delay_updates: bool = False
    remove_source_files: bool = False
    list_only: bool = False
    itemize: bool = False
    stats: bool = False
    log_file: str | None = None
    log_file_format: str | None = None  # the item lines of --log-file (None: "%i %n%L"; "": none)
    fsync: bool = True
    write_mode: str = "auto"  # how a receiver on a raw socket writes: auto | direct | splice | buffered
    json: bool = False
    compress: bool = False
    compress_choice: str | None = None  # zstd | lz4 | none
    compress_level: int | None = None  # --compress-level: zstd's level (None: 3, rsync's default)
    skip_compress: str | None = None  # rsync's --skip-compress list (suffixes, '/'-separated)
    bwlimit: int | None = None  # bytes per second (rsync's units parsed by the CLI)
    progress: str | None = None  # None | "file" (--progress) | "total" (--info=progress2)
    progress_always: bool = False  # draw progress even when stderr is not a terminal
    out_format: str | None = None
    # --info: the levels the user set, as "KIND<level>" words ("NAME2"; info.levels adds
    # what -v and the rest set); sent to the server, whose generator names unchanged files
    info: tuple[str, ...] = ()
    want_items: bool = False  # the client shows per-file items: the server sends them (Item)
    # remote transports (client side only; never sent to the server)
    port: int | None = None
    password_file: str | None = None
    transport: str | None = None  # None (as the endpoint says) | "tcp" (ssh-bootstrapped raw TCP)
    rsh: str | None = None
    zcsync_path: str | None = None
    ssh_accept_new: bool = False
    timeout: int | None = None
    contimeout: int | None = None
    ip_version: int | None = None  # -4 / -6: the address family of the sockets we open (and ssh's)
    address: str | None = None  # --address: the local address a daemon connection binds to
    # -M/--remote-option: words for the remote side's command line alone (in a local copy,
    # for the receiving side), parsed there by side_options()
    remote_options: tuple[str, ...] = ()

    def replace(self, **changes: object) -> Options:
        """Return a copy with some fields changed (and validated)."""
        return dataclasses.replace(self, **changes)

    @property
    def backup_suffix(self) -> str:
        if self.suffix is not None:
            return self.suffix
        return "" if self.backup_dir else "~"

    @property
    def basis_dirs(self) -> tuple[tuple[str, str], ...]:
        """Alternate basis directories as (kind, dir), in the order rsync tries them."""
        return (tuple(("compare", d) for d in self.compare_dest)
                + tuple(("copy", d) for d in self.copy_dest)
                + tuple(("link", d) for d in self.link_dest))

    def __post_init__(self) -> None:
        if self.delete_mode not in ("before", "during", "after", "delay"):
            raise UsageError(f"Unknown delete mode {self.delete_mode!r}")
        if self.max_delete is not None and self.max_delete < 0:
            raise UsageError("--max-delete must not be negative")
        if self.modify_window < 0:
            raise UsageError("--modify-window must not be negative")
        for name in ("min_size", "max_size"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UsageError(f"--{name.replace('_', '-')} must not be negative")
        if self.delete_missing_args and not self.ignore_missing_args:
            object.__setattr__(self, "ignore_missing_args", True)  # rsync's missing_args 2 takes in 1
        if self.append_verify and not self.append:
            object.__setattr__(self, "append", True)
        if self.append:
            for name, given in (("whole-file", self.whole_file is True), ("partial-dir", self.partial_dir),
                                ("delay-updates", self.delay_updates)):
                if given:
                    raise UsageError(f"--append cannot be used with --{name}")
            object.__setattr__(self, "inplace", True)  # rsync: --append implies --inplace
        if self.fuzzy < 0:
            raise UsageError("--fuzzy must not be negative")
        if self.fuzzy > 2:
            object.__setattr__(self, "fuzzy", 2)  # rsync: more than -yy is -yy
        if self.block_size == 0:
            object.__setattr__(self, "block_size", None)  # rsync: 0 is the automatic size
        if self.block_size is not None and not 0 <= self.block_size <= MAX_BLOCK_SIZE:
            raise UsageError(f"--block-size={self.block_size} is too large (max: 128.00K)"
                             if self.block_size > 0 else f"--block-size={self.block_size} is invalid")
        if self.inplace and (self.delay_updates or self.partial_dir):
            raise UsageError("--inplace cannot be used with --delay-updates or --partial-dir")
        if self.compress_level is not None and not -131072 <= self.compress_level <= 22:
            raise UsageError(f"--compress-level={self.compress_level} is out of range (zstd: -131072 to 22)")
        if self.compress_choice not in (None, "zstd", "lz4", "none"):
            raise UsageError(f"--compress-choice must be zstd, lz4 or none, not {self.compress_choice!r}")
        if self.write_mode not in ("auto", "direct", "splice", "buffered"):
            raise UsageError(f"--write-mode must be auto, direct, splice or buffered, not {self.write_mode!r}")
        for word in self.info:  # (a client's too: checked where the options are received)
            kind = word.rstrip("0123456789")
            if kind not in INFO_KINDS or not 0 < len(word) - len(kind) <= 2:
                raise UsageError(f"bad --info word {word!r}")
        if self.bwlimit is not None and self.bwlimit < 0:
            raise UsageError("--bwlimit must not be negative")
        if self.fake_super and self.super_user is not None:
            raise UsageError("--fake-super cannot be used with --super or --no-super (the last one given wins "
                             "on the command line)")
        if self.fake_super and self.acls:
            raise UsageError("--fake-super with -A/--acls is not supported (rsync keeps ACLs in the "
                             "user.rsync.%aacl and %dacl xattrs)")
        if sum(map(bool, (self.compare_dest, self.copy_dest, self.link_dest))) > 1:
            raise UsageError("You may not mix --compare-dest, --copy-dest, and --link-dest")


# What only the client acts on: never sent to the server, never accepted from a client.
CLIENT_ONLY = frozenset({"rsh", "zcsync_path", "ssh_accept_new", "contimeout", "log_file", "log_file_format", "json",
                         "stats", "list_only", "files_from", "quiet", "progress", "progress_always",
                         "out_format", "port", "password_file", "transport", "ip_version", "address", "stop_at",
                         "remote_options", "fake_super"})
MAX_WIRE_OPTIONS = 64 * 1024


@functools.cache
def _field_types() -> dict[str, frozenset[type]]:
    """Each Options field's accepted value types (None excluded), from its annotation."""
    out = {}
    for name, hint in typing.get_type_hints(Options).items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        args = typing.get_args(hint) if union else (hint,)
        out[name] = frozenset(typing.get_origin(a) or a for a in args) - {type(None)}
    return out


def to_wire(opts: Options, role: str | None = None) -> str:
    """The options the server needs, as JSON of the fields that differ from the defaults.

    role is the server's: as rsync's server_options, --super goes to a receiving server
    only (and --no-super to none); --fake-super is the client's own (-M gives it the
    server, see side_options)."""
    import json
    opts = opts.replace(super_user=True if opts.super_user and role == "receiver" else None)
    default = Options()
    changed = {f.name: getattr(opts, f.name) for f in dataclasses.fields(Options)
               if f.name not in CLIENT_ONLY and getattr(opts, f.name) != getattr(default, f.name)}
    return json.dumps(changed, separators=(",", ":"), sort_keys=True)


def from_wire(text: str) -> Options:
    """Parse and type-check options a client sent (untrusted): plain JSON, known fields only."""
    import json
    if len(text) > MAX_WIRE_OPTIONS:
        raise UsageError("options from the client are too long")
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"unreadable options from the client: {exc}") from None
    if not isinstance(raw, dict):
        raise UsageError("options from the client must be an object")
    hints = _field_types()
    values: dict[str, object] = {}
    for key, value in raw.items():
        if key in CLIENT_ONLY or key not in hints:
            raise UsageError(f"option {key!r} is not accepted from a client")
        allowed = hints[key]
        if isinstance(value, list):
            if tuple not in allowed or not all(isinstance(v, str) for v in value):
                raise UsageError(f"option {key!r} must not be a list")
            value = tuple(value)
        elif type(value) not in allowed:  # exact: a JSON true is not a number
            raise UsageError(f"option {key!r} has the wrong type ({type(value).__name__})")
        values[key] = value
    return Options(**values)  # type: ignore[arg-type]


def from_mapping(values: dict[str, object]) -> Options:
    """Build Options from keyword values (library API and CLI share this)."""
    values = dict(values)
    archive = bool(values.pop("archive", False))
    if archive:
        for name in ARCHIVE_FLAGS:
            if name == "recursive" and values.get("files_from") is not None:
                continue  # rsync: with --files-from, -a does not imply -r
            if values.get(name) is None:
                values[name] = True
    if values.get("files_from") is not None:
        for name in ("relative", "dirs"):  # rsync: --files-from implies -R and -d
            if values.get(name) is None:
                values[name] = True
    chown_user, _, chown_group = str(values.get("chown") or "").partition(":")
    for kind, part, implied in (("user", chown_user, "owner"), ("group", chown_group, "group")):
        if values.get(f"{kind}map"):
            if part:
                raise UsageError(f"--{kind}map conflicts with prior --chown.")
            values[implied] = True  # rsync: a map preserves the owner (or group) it maps
        elif part:
            values[implied] = True
    if values.get("backup_dir"):
        values["backup"] = True  # rsync: --backup-dir implies --backup
    if values.get("backup") and not values.get("backup_dir"):
        values["omit_dir_times"] = True  # rsync forces -O for backups beside the files
    names = {f.name for f in dataclasses.fields(Options)}
    unknown = set(values) - names
    if unknown:
        raise UsageError(f"Unknown option(s): {', '.join(sorted(unknown))}")
    clean = {k: v for k, v in values.items() if v is not None}
    for key in ("filter_rules", "link_dest", "compare_dest", "copy_dest", "chmod", "remote_options"):
        if key in clean and isinstance(clean[key], (list, str)):
            clean[key] = tuple([clean[key]] if isinstance(clean[key], str) else clean[key])
    return Options(**clean)  # type: ignore[arg-type]


# -- one side's own options (-M/--remote-option) -----------------------------------------
#
# What -M may give the remote side (in a local copy, the receiving side) on top of the
# options both sides share: what that side does alone, never what both must agree on.
_SIDE_FLAGS: dict[str, dict[str, object]] = {
    "--fsync": {"fsync": True}, "--no-fsync": {"fsync": False},
    "--open-noatime": {"open_noatime": True}, "--preallocate": {"preallocate": True},
    # rsync's am_root: the last of them wins
    "--fake-super": {"fake_super": True, "super_user": None},
    "--super": {"fake_super": False, "super_user": True},
    "--no-super": {"fake_super": False, "super_user": False},
}


def _rate(text: str) -> int:
    try:
        return parse_size(text, default_unit="k")
    except ValueError as exc:
        raise UsageError(f"--bwlimit={text}: {exc}") from None


_SIDE_VALUES: dict[str, tuple[str, Callable[[str], object]]] = {
    "--write-mode": ("write_mode", str), "--bwlimit": ("bwlimit", _rate), "--temp-dir": ("temp_dir", str),
}
SIDE_OPTION_NAMES = (*_SIDE_FLAGS, *(f"{name}=..." for name in _SIDE_VALUES))


def side_options(opts: Options, words: Sequence[str]) -> Options:
    """opts with the options one side was given alone (rsync's -M words, "--name",
    "--name=VALUE" or "--name" "VALUE"); UsageError for an option that side does not take."""
    changes: dict[str, object] = {}
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        name, eq, value = word.partition("=")
        if name in _SIDE_FLAGS and not eq:
            changes.update(_SIDE_FLAGS[name])
            continue
        if name in _SIDE_VALUES and word.startswith("--"):
            if not eq:
                if i == len(words):
                    raise UsageError(f"{name}: missing argument")
                value = words[i]
                i += 1
            field, convert = _SIDE_VALUES[name]
            changes[field] = convert(value)
            continue
        raise UsageError(f"{word}: unknown option (one side takes alone: {', '.join(SIDE_OPTION_NAMES)})")
    return opts.replace(**changes) if changes else opts


def am_root(opts: Options) -> int:
    """rsync's am_root for the side these options are: -1 with --fake-super, else 1 when it
    acts as root (running as root, or --super) and 0 when not (or --no-super)."""
    if opts.fake_super:
        return -1
    return int(opts.super_user if opts.super_user is not None else os.geteuid() == 0)
