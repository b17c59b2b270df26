"""PacketPipe: the input buffer zcsync gives paramiko channels, with BufferedPipe's semantics."""
from __future__ import annotations

import threading
import time

import pytest
from paramiko.buffered_pipe import PipeTimeout

from zcsync.transport.packet_pipe import PacketPipe


def test_a_whole_packet_comes_back_as_the_same_object():
    pipe = PacketPipe()
    packet = b"x" * 32768
    pipe.feed(packet)
    assert pipe.read(1 << 20) is packet
    assert len(pipe) == 0


def test_reads_join_packets_and_split_one_at_the_limit():
    pipe = PacketPipe()
    for part in (b"abc", b"defg", b"hij"):
        pipe.feed(part)
    assert len(pipe) == 10
    assert pipe.read(5) == b"abcde"
    assert len(pipe) == 5
    assert pipe.read(1) == b"f"
    assert pipe.read(100) == b"ghij"
    assert not pipe.read_ready()


def test_empty_feed_adds_nothing_but_wakes_the_reader():
    pipe = PacketPipe()
    pipe.feed(b"")
    assert len(pipe) == 0 and not pipe.read_ready()


def test_read_waits_for_data_from_another_thread():
    pipe = PacketPipe()
    threading.Timer(0.05, pipe.feed, args=(b"late",)).start()
    assert pipe.read(10, timeout=5) == b"late"


@pytest.mark.parametrize("timeout", [0.0, 0.05])
def test_nothing_within_the_timeout_is_paramikos_pipe_timeout(timeout):
    pipe = PacketPipe()
    started = time.monotonic()
    with pytest.raises(PipeTimeout):
        pipe.read(10, timeout=timeout)
    assert time.monotonic() - started >= timeout


def test_close_wakes_a_blocked_reader_and_leaves_the_rest_readable():
    pipe = PacketPipe()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read(10)))
    reader.start()
    time.sleep(0.05)
    pipe.close()
    reader.join(5)
    assert got == [b""]
    pipe2 = PacketPipe()
    pipe2.feed(b"tail")
    pipe2.close()
    assert pipe2.read(10, timeout=0.0) == b"tail"
    assert pipe2.read(10, timeout=0.0) == b""


def test_event_follows_readiness():
    pipe = PacketPipe()
    event = threading.Event()
    pipe.set_event(event)
    assert not event.is_set()
    pipe.feed(b"ab")
    assert event.is_set()
    assert pipe.read(1) == b"a"
    assert event.is_set()
    assert pipe.read(1) == b"b"
    assert not event.is_set()
    pipe.feed(b"cd")
    assert pipe.empty() == b"cd" and not event.is_set()
    pipe.close()
    assert event.is_set()
    closed = PacketPipe()
    closed.close()
    late = threading.Event()
    closed.set_event(late)
    assert late.is_set()


def test_many_small_reads_of_a_large_backlog_stay_cheap():
    # BufferedPipe shifted its whole array on every partial read: 8 MiB read 1 KiB at a
    # time moved gigabytes. Here each read costs only the packet it splits.
    pipe = PacketPipe()
    for _ in range(256):
        pipe.feed(bytes(32768))
    started = time.perf_counter()
    total = 0
    while total < 256 * 32768:
        total += len(pipe.read(1024))
    assert time.perf_counter() - started < 2.0
    with pytest.raises(PipeTimeout):
        pipe.read(1, timeout=0.0)

