"""rsync's --list-only output: the file list in `ls -l` style, in rsync's order."""
from __future__ import annotations

from typing import TextIO

from . import meta
from .flist import FileEntry
from .pathnames import escape


class Listing:
    """Prints the batches of a file list, local or received, as rsync lists them.

    rsync's order is depth first: a directory whose contents come in a batch of their
    own is shown just before them (batches come depth first). A symlink shows its
    target only when links are preserved (-l, -a), as rsync does.
    """

    def __init__(self, out: TextIO, show_links: bool, human: int = 1) -> None:
        self.out = out
        self.show_links = show_links
        self.human = human  # rsync's -h level for the sizes
        self._held: dict[bytes, FileEntry] = {}

    def batch(self, dir_name: bytes | None, entries: tuple[FileEntry, ...], expanded: frozenset[bytes]) -> None:
        if dir_name in self._held:
            self._show(self._held.pop(dir_name))  # type: ignore[arg-type]
        for e in entries:
            if e.name in expanded:
                self._held[e.name] = e
            else:
                self._show(e)

    def finish(self) -> None:
        """The list is through: show directories whose contents never came (unreadable)."""
        for e in self._held.values():
            self._show(e)
        self._held.clear()

    def _show(self, e: FileEntry) -> None:
        if e.is_missing:  # rsync's line for a missing operand (--delete-missing-args)
            self.out.write(f"{'*missing':<{(14 if self.human else 11) + 31}} {escape(e.name)}\n")
            return
        link = escape(e.link) if e.link is not None and self.show_links else None
        self.out.write(meta.list_line(e.mode, e.size, e.mtime_ns // 1_000_000_000, escape(e.name),
                                      link_target_escaped=link, human=self.human) + "\n")
