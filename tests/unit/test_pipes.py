"""transport.base.grow_pipe: the server's pipes from sshd get a 1 MiB buffer."""
from __future__ import annotations

import fcntl
import os

from zcsync.transport.base import PIPE_SIZE
from zcsync.transport.stdio import FdStream

F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def test_the_server_stream_grows_both_of_its_pipes():
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        assert fcntl.fcntl(r1, F_GETPIPE_SZ) < PIPE_SIZE
        FdStream(r1, w2)
        assert fcntl.fcntl(w1, F_GETPIPE_SZ) == PIPE_SIZE  # the buffer is the pipe's, both ends
        assert fcntl.fcntl(r2, F_GETPIPE_SZ) == PIPE_SIZE
    finally:
        for fd in (r1, w1, r2, w2):
            os.close(fd)
