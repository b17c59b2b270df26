"""Run statistics and the per-run report (itemize events, problems, exit code)."""
from __future__ import annotations

import logging
import stat
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from . import errors
from .errors import FileProblem

log = logging.getLogger("zcsync")


@dataclass
class Stats:
    """Counters in rsync's --stats vocabulary."""

    files: int = 0
    regular_files: int = 0
    dirs: int = 0
    links: int = 0
    specials: int = 0
    files_created: int = 0
    created_kinds: dict[str, int] = field(default_factory=dict)  # "reg", "dir", "link", "special"
    files_deleted: int = 0
    files_transferred: int = 0
    total_size: int = 0
    transferred_size: int = 0
    literal_bytes: int = 0
    matched_bytes: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    flist_size: int = 0
    elapsed_s: float = 0.0

    def created(self, mode: int) -> None:
        """Count one created name by type (rsync's "Number of created files" line)."""
        kind = ("reg" if stat.S_ISREG(mode) else "dir" if stat.S_ISDIR(mode)
                else "link" if stat.S_ISLNK(mode) else "special")
        self.files_created += 1
        self.created_kinds[kind] = self.created_kinds.get(kind, 0) + 1

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Event:
    """One line of -i / -v output: what happened to a name."""

    itemize: str  # rsync's YXcstpoguax string, or "*deleting" and the like
    name: str  # escaped, directories with a trailing "/"
    extra: str = ""  # " -> target" for symlinks, " => target" for hard links
    size: int = 0


@dataclass
class Report:
    """Collects events and problems from every role; thread-safe; decides the exit code."""

    on_event: Callable[[Event], None] | None = None
    forward: Callable[[FileProblem], None] | None = None  # server side: send problems to the client
    stats: Stats = field(default_factory=Stats)
    problems: list[FileProblem] = field(default_factory=list)
    exit_code: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def event(self, event: Event) -> None:
        if self.on_event is not None:
            with self._lock:
                self.on_event(event)

    def note(self, text: str) -> None:
        """An informational line for the user (rsync prints these with -v or -i)."""
        self.event(Event("", text))

    def problem(self, problem: FileProblem) -> None:
        """Record (and log, or forward to the client) a per-file problem; the run goes on."""
        if self.forward is not None:
            self.forward(problem)
        else:
            log.error("%s", problem.message)
        with self._lock:
            self.problems.append(problem)
            self.exit_code = errors.worst(self.exit_code, problem.code)

    def outcome(self, code: int) -> None:
        with self._lock:
            self.exit_code = errors.worst(self.exit_code, code)
