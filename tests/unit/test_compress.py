"""Codecs, the --skip-compress list, the client's offer, and the --bwlimit pacing."""
from __future__ import annotations

import builtins
import os

import pytest

from zcsync import compress as zc
from zcsync.errors import UsageError

TEXT = b"".join(b"%d: the quick brown fox jumps over the lazy dog\n" % i for i in range(20000))


# -- codecs --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["zstd", "lz4", "none"])
@pytest.mark.parametrize("data", [b"", b"a", TEXT, os.urandom(100_000), bytes(1 << 20)],
                         ids=["empty", "one", "text", "random", "zeros"])
def test_round_trip(name, data):
    codec = zc.get_codec(name)
    assert codec.name == name
    block = codec.compress(memoryview(data))
    assert codec.decompress(block, len(data)) == data


@pytest.mark.parametrize("name", ["zstd", "lz4"])
def test_compressible_data_shrinks(name):
    assert len(zc.get_codec(name).compress(TEXT)) < len(TEXT) // 4


@pytest.mark.parametrize("name", ["zstd", "lz4", "none"])
def test_decompress_never_exceeds_the_declared_size(name):
    codec = zc.get_codec(name)
    block = codec.compress(bytes(8 << 20))
    for size in (0, 1, 1000, (8 << 20) - 1):
        with pytest.raises(zc.CorruptData):
            codec.decompress(block, size)
    with pytest.raises(zc.CorruptData):
        codec.decompress(block, (8 << 20) + 1)  # inflates short of the declared size
    with pytest.raises(zc.CorruptData):
        codec.decompress(b"\x00garbage\xff" * 10, 1000)


def test_available_and_supported():
    assert zc.available("none") and not zc.available("gzip")
    assert zc.supported() == ["zstd", "lz4", "none"]  # both are dependencies of the package
    with pytest.raises(zc.CodecUnavailable, match="Unknown compression 'gzip'"):
        zc.get_codec("gzip")


@pytest.fixture
def without_lz4(monkeypatch):
    """Make `import lz4...` fail, as on a machine where the package is missing."""
    real_import = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "lz4" or name.startswith("lz4."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", fake)
    monkeypatch.setattr(zc, "available", lambda name: name != "lz4")


def test_missing_package_is_a_clear_usage_error_only_when_chosen(without_lz4):
    with pytest.raises(zc.CodecUnavailable, match="needs the Python package 'lz4'.*pip install lz4") as info:
        zc.get_codec("lz4")
    assert isinstance(info.value, UsageError) and info.value.exit_code == 1
    with pytest.raises(zc.CodecUnavailable):
        zc.offer(True, "lz4")
    assert zc.offer(True, None) == ["zstd"]  # -z alone offers what is there
    assert zc.offer(False, None) == []  # nothing asked, nothing imported


def test_offer():
    assert zc.offer(False, None) == []
    assert zc.offer(True, None) == ["zstd", "lz4"]
    assert zc.offer(True, "lz4") == ["lz4"]
    assert zc.offer(False, "zstd") == ["zstd"]  # rsync: --compress-choice implies -z
    assert zc.offer(True, "none") == []
    with pytest.raises(UsageError):
        zc.offer(True, "brotli")


# -- --skip-compress -----------------------------------------------------------

@pytest.mark.parametrize("name", [b"a.gz", b"dir/b.JPG", b"x.tar.gz", b"photo.jpeg", b"v.m2ts", b"a.b.7z",
                                  b"img.webp", b"f.zst", b"deep/dir.gz/file.Mp4", b"archive.Z"])
def test_default_list_skips(name):
    assert name in zc.SkipCompress()


@pytest.mark.parametrize("name", [b"a.txt", b"gz", b".gz", b"dir.gz/file", b"a.gz.txt", b"noext", b"a.",
                                  b"x.gzip", b"x.jpgx", b"dir/.zip"])
def test_default_list_compresses(name):
    assert name not in zc.SkipCompress()


def test_list_replaces_the_default():
    skip = zc.SkipCompress("txt/LOG")
    assert b"a.txt" in skip and b"b.log" in skip and b"c.Log" in skip
    assert b"a.gz" not in skip  # the default list is gone


def test_empty_list_skips_nothing_and_star_skips_everything():
    assert b"a.gz" not in zc.SkipCompress("")
    assert b"a.gz" not in zc.SkipCompress("//")
    star = zc.SkipCompress("*")
    assert b"a.txt" in star and b"noext" in star


def test_character_classes_as_rsync():
    skip = zc.SkipCompress("gz/jpg/mp[34]/7z/bz2")  # rsync's man page example: 6 suffixes
    for suffix in (b"gz", b"jpg", b"mp3", b"mp4", b"7z", b"bz2"):
        assert b"f." + suffix in skip
    assert b"f.mp5" not in skip and b"f.mp" not in skip and b"f.mp[34]" not in skip
    assert b"f.[x" in zc.SkipCompress("[x")  # an unclosed or empty class is literal
    assert b"f.[]y" in zc.SkipCompress("[]y")
    assert b"f.a*" in zc.SkipCompress("a*") and b"f.ab" not in zc.SkipCompress("a*")  # * is literal inside
    assert b"f.ab" not in zc.SkipCompress("a?")


def test_hostile_character_classes_are_refused():
    with pytest.raises(UsageError, match="too many"):
        zc.SkipCompress("[abcdefgh]" * 8)


# -- --bwlimit -----------------------------------------------------------------

class FakeClock:
    """A clock that advances only when the limiter sleeps, or when told (the write's own time)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def limited(rate: int, per_byte: float = 0.0):
    clock = FakeClock()
    limiter = zc.RateLimiter(rate, clock=clock, sleep=clock.sleep)
    pieces: list[int] = []

    def write(data) -> None:
        pieces.append(len(data))
        clock.now += len(data) * per_byte  # the stream's own speed
    return limiter, clock, pieces, write


def test_limiter_keeps_the_average_rate():
    limiter, clock, pieces, write = limited(1_000_000)
    start = clock.now
    for _ in range(20):
        limiter.write(write, b"x" * 300_000)
    assert sum(pieces) == 6_000_000 and max(pieces) == 125_000  # rate / 8 per write
    elapsed = clock.now - start
    assert 5.85 <= elapsed <= 6.0  # 6 s of data, less at most the 0.1 s burst allowance and one piece


def test_limiter_does_not_sleep_below_the_rate():
    limiter, clock, _, write = limited(1_000_000, per_byte=2e-6)  # the stream does 500 kB/s
    for _ in range(10):
        limiter.write(write, b"x" * 100_000)
    assert clock.slept == []


def test_limiter_sleeps_in_steps_of_at_least_a_tenth_of_a_second():
    limiter, clock, _, write = limited(100_000)
    for _ in range(100):
        limiter.write(write, b"x" * 1000)
    assert clock.slept and min(clock.slept) >= 0.1
    assert sum(clock.slept) == pytest.approx(1.0 - 0.1, abs=0.11)


def test_limiter_pieces_are_paid_for_once_moved():
    limiter, clock, _, _ = limited(1_000_000)
    pieces = limiter.pieces(10, 1_000_001)
    assert next(pieces) == (10, 125_000) and clock.slept == []  # not yet moved: not yet paid for
    got = [(10, 125_000), *pieces]
    assert [off for off, _ in got] == list(range(10, 1_000_011, 125_000))
    assert sum(n for _, n in got) == 1_000_001 and got[-1] == (1_000_010, 1)
    assert 0.9 <= clock.now - 100 <= 1.0  # a second of data, less the 0.1 s burst allowance


def test_limiter_small_rates_write_small_pieces():
    limiter, _, pieces, write = limited(1000)
    limiter.write(write, b"x" * 2000)
    assert max(pieces) == 512 and sum(pieces) == 2000
    with pytest.raises(ValueError):
        zc.RateLimiter(0)
