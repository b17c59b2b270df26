"""One error tree; each class carries rsync's exit code and a message template."""
from __future__ import annotations

from dataclasses import dataclass

# rsync's exit codes, so cron jobs and wrappers keep working.
OK = 0
USAGE = 1
PROTOCOL = 2
FILE_SELECT = 3
STARTUP = 5
SOCKET_IO = 10
FILE_IO = 11
STREAM = 12
SIGNAL = 20
PARTIAL = 23
VANISHED = 24
MAX_DELETE = 25
TIMEOUT = 30
CONNECT_TIMEOUT = 35
REMOTE_NOT_FOUND = 127

# Which per-run outcome wins when several happen (worst first).
_SEVERITY = [SIGNAL, FILE_IO, MAX_DELETE, PARTIAL, VANISHED, OK]


def worst(a: int, b: int) -> int:
    """Return the more severe of two exit codes."""
    ra = _SEVERITY.index(a) if a in _SEVERITY else -1
    rb = _SEVERITY.index(b) if b in _SEVERITY else -1
    return a if ra <= rb else b


class ZcsyncError(Exception):
    """{detail}"""

    exit_code = 1

    def __init__(self, detail: str = "", **fields: object) -> None:
        self.detail = detail
        self.fields = fields
        super().__init__(self.message)

    @property
    def message(self) -> str:
        template = type(self).__doc__ or "{detail}"
        try:
            return template.strip().format(detail=self.detail, **self.fields)
        except (KeyError, IndexError):
            return self.detail


class UsageError(ZcsyncError):
    """{detail}"""

    exit_code = USAGE


class ProtocolError(ZcsyncError):
    """Protocol error: {detail}"""

    exit_code = PROTOCOL


class FileSelectError(ZcsyncError):
    """{detail}"""

    exit_code = FILE_SELECT


class StartupError(ZcsyncError):
    """{detail}"""

    exit_code = STARTUP


class SocketIOError(ZcsyncError):
    """Connection error: {detail}"""

    exit_code = SOCKET_IO


class FileIOError(ZcsyncError):
    """{detail}"""

    exit_code = FILE_IO


class StreamError(ZcsyncError):
    """Connection lost: {detail}"""

    exit_code = STREAM


class Interrupted(ZcsyncError):
    """Interrupted by {detail}"""

    exit_code = SIGNAL


class MaxDeleteReached(ZcsyncError):
    """Deletions stopped: --max-delete={detail} reached"""

    exit_code = MAX_DELETE


class Timeout(ZcsyncError):
    """Timeout: {detail}"""

    exit_code = TIMEOUT


class ConnectTimeout(ZcsyncError):
    """Connection timed out: {detail}"""

    exit_code = CONNECT_TIMEOUT


class RemoteNotFound(ZcsyncError):
    """{detail}"""

    exit_code = REMOTE_NOT_FOUND


@dataclass(frozen=True)
class FileProblem:
    """A per-file problem: logged, collected, and the run goes on."""

    path: str
    message: str
    code: int = PARTIAL
