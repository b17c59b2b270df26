"""rsync's --info=FLAGS: which kinds of messages the client prints, at what level.

Each kind has a level (0 = silent). -v and -vv raise a default set, --stats raises STATS
to 2 and --progress PROGRESS to 1; the --info words, in order, then set what they name,
whatever -v said (rsync's USER_PRIORITY). A word is a kind with an optional level
("name0", "STATS2"; no digits = 1), ALL or NONE (every kind, with the same optional
level), or help. zcsync acts on NAME (file names: 1 updated, 2 "X is uptodate" for unchanged ones too),
DEL ("deleting X" lines), FLIST (the "sending incremental file list" line), STATS
(1 the closing lines, 2 the --stats block), PROGRESS (1 per file, 2 the whole
transfer) and MISC (the informational log lines of -v); the other kinds are accepted
as rsync's names and do not change zcsync's output.
"""
from __future__ import annotations

import re

from .errors import UsageError
from .options import INFO_KINDS as KINDS
from .options import Options

# rsync's info_verbosity: what -v raises, and what -vv raises on top.
_VERBOSITY = ("COPY,DEL,FLIST,MISC,NAME,STATS,SYMSAFE", "BACKUP,MISC2,MOUNT,NAME2,REMOVE,SKIP")
_WORD = re.compile(r"([A-Za-z]+)(\d*)")

HELP = """\
Use OPT or OPT1 for level 1 output, OPT2 for level 2, etc.; OPT0 silences.

BACKUP     Mention files backed up
COPY       Mention files copied locally on the receiving side
DEL        Mention deletions on the receiving side
FLIST      Mention file-list receiving/sending (levels 1-2)
MISC       Mention miscellaneous information (levels 1-2)
MOUNT      Mention mounts that were found or skipped
NAME       Mention 1) updated file/dir names, 2) unchanged names
NONREG     Mention skipped non-regular files (default 1, 0 disables)
PROGRESS   Mention 1) per-file progress or 2) total transfer progress
REMOVE     Mention files removed on the sending side
SKIP       Mention files skipped due to transfer overrides (levels 1-2)
STATS      Mention statistics at end of run (levels 1-3)
SYMSAFE    Mention symlinks that are unsafe

ALL        Set all --info options (e.g. all4)
NONE       Silence all --info options (same as all0)
HELP       Output this help message

Options added at each level of verbosity:
0) NONREG
1) COPY,DEL,FLIST,MISC,NAME,STATS,SYMSAFE
2) BACKUP,MISC2,MOUNT,NAME2,REMOVE,SKIP
"""


def parse_words(text: str, levels: dict[str, int]) -> None:
    """Apply one --info value (comma-separated words) to levels; UsageError for an unknown word.
    "help" is for the caller to catch first (wants_help)."""
    for word in text.split(","):
        if not word:
            continue
        m = _WORD.fullmatch(word)
        name = m.group(1).upper() if m else ""
        if not m or (name not in KINDS and name not in ("ALL", "NONE")):
            raise UsageError(f'Unknown --info item: "{word}"')
        level = min(int(m.group(2)), 99) if m.group(2) else (0 if name == "NONE" else 1)
        for kind in (KINDS if name in ("ALL", "NONE") else (name,)):
            levels[kind] = level


def wants_help(values: tuple[str, ...]) -> bool:
    return any(word.lower() == "help" for text in values for word in text.split(","))


def user_levels(values: tuple[str, ...]) -> tuple[str, ...]:
    """The levels the --info values set (in order; a later word wins), as Options.info's
    words ("NAME2")."""
    levels: dict[str, int] = {}
    for text in values:
        parse_words(text, levels)
    return tuple(f"{kind}{level}" for kind, level in sorted(levels.items()))


def levels(opts: Options) -> dict[str, int]:
    """Every kind's level for this run: -v, --stats and --progress first, then --info's."""
    out = dict.fromkeys(KINDS, 0)
    out["NONREG"] = 1
    for words in _VERBOSITY[:min(opts.verbose, len(_VERBOSITY))]:
        parse_words(words, out)
    if opts.stats:
        out["STATS"] = 3 if opts.verbose > 1 else 2
    if opts.progress is not None:
        out["PROGRESS"] = 2 if opts.progress == "total" else 1
    parse_words(",".join(opts.info), out)  # (from a client: its words are checked here too)
    return out


def level(opts: Options, kind: str) -> int:
    return levels(opts)[kind]
