"""-M/--remote-option: words for the remote side's command line alone, against rsync.

Over ssh (paramiko and -e) they follow the server's options and its own parser judges
them; in a local copy the receiving side takes them, as rsync's forked receiver does.
"""
from __future__ import annotations

import pytest

from tests.oracle import differential, output_lines, run_rsync, run_zcsync

from .sshd import ALIAS, direction_paths, remote_zcsync_path


def _extra() -> list[str]:
    return ["--zcsync-path", remote_zcsync_path()]


def _same_items(rs, zc) -> None:
    assert output_lines(rs.stdout) == output_lines(zc.stdout)


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_ssh_remote_options_reach_the_server(tmp_path, sshd, via, direction):
    """Options one side takes alone change nothing in the result, as with rsync."""
    rs, zc = differential(tmp_path, ["-a", "-i", "-M--preallocate", "--remote-option=--fsync", "-M", "--open-noatime", *via],
                          seed=11, mutate=True, env=sshd.env(), paths=direction_paths(direction),
                          zcsync_extra=_extra())
    _same_items(rs, zc)


def test_ssh_unknown_remote_option_is_the_servers_usage_error(tmp_path, sshd, via):
    """The server refuses an option it does not know, as rsync's does ("--bogus: unknown
    option", code 1 on its side); zcsync's client exits with the server's 1 (rsync's
    client, cut off, with 12). Nothing is written."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("x")
    dst = tmp_path / "dst"
    rs = run_rsync(["-a", *via, "-M--bogus", f"{tmp_path}/src/", f"{ALIAS}:{dst}/"], check=False, env=sshd.env())
    assert rs.returncode == 12 and "--bogus: unknown option" in rs.stderr
    zc = run_zcsync([*_extra(), "-a", *via, "-M--bogus", f"{tmp_path}/src/", f"{ALIAS}:{dst}/"],
                    env=sshd.env())
    assert zc.returncode == 1, zc.stderr
    assert "on remote machine: --bogus: unknown option" in zc.stderr
    assert not dst.exists()


def test_ssh_remote_option_value_checked_by_the_server(tmp_path, sshd):
    (tmp_path / "src").mkdir()
    zc = run_zcsync([*_extra(), "-a", "-M--write-mode=fast", f"{tmp_path}/src/", f"{ALIAS}:{tmp_path}/dst/"],
                    env=sshd.env())
    assert zc.returncode == 1 and "--write-mode must be auto, direct, splice or buffered" in zc.stderr


def test_ssh_remote_listing_takes_remote_options(tmp_path, sshd):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("x")
    zc = run_zcsync([*_extra(), "-M--bogus", f"{ALIAS}:{tmp_path}/src/"], env=sshd.env())
    assert zc.returncode == 1 and "--bogus: unknown option" in zc.stderr
    zc = run_zcsync([*_extra(), "-M--open-noatime", f"{ALIAS}:{tmp_path}/src/"], env=sshd.env())
    assert zc.returncode == 0 and zc.stdout.splitlines()[-1].endswith(" f")


def test_local_copy_gives_them_to_the_receiving_side(tmp_path):
    differential(tmp_path, ["-a", "-M--preallocate", "-M", "--fsync"], seed=12, mutate=True)


def test_local_unknown_remote_option_stops_before_anything(tmp_path):
    """rsync's forked receiver refuses it (its client then reports code 12); zcsync refuses
    it before it starts, with the same words and the usage code."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("x")
    rs = run_rsync(["-a", "-M--bogus", "src/", "rs/"], check=False, cwd=tmp_path)
    assert rs.returncode == 12 and "--bogus: unknown option" in rs.stderr
    zc = run_zcsync(["-a", "-M--bogus", "src/", "zc/"], cwd=tmp_path)
    assert zc.returncode == 1 and "--bogus: unknown option" in zc.stderr
    assert not (tmp_path / "zc").exists()


def test_daemon_refuses_remote_options(tmp_path):
    """rsync hands -M words to its daemon; a zcsync daemon request has no place for them:
    a clear usage error before any connection (the port is never tried)."""
    (tmp_path / "src").mkdir()
    for dest in ("zcsync://127.0.0.1:9/mod/", "127.0.0.1::mod/"):
        zc = run_zcsync(["-a", "-M--no-fsync", "src/", dest], cwd=tmp_path)
        assert zc.returncode == 1, zc.stderr
        assert "-M/--remote-option is not supported with a zcsync daemon" in zc.stderr
    zc = run_zcsync(["-M--no-fsync", "127.0.0.1::"], cwd=tmp_path)
    assert zc.returncode == 1 and "not supported with a zcsync daemon" in zc.stderr
