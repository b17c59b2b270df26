"""`zcsync daemon` across a real link: two network namespaces joined by a veth pair.

The daemon runs in namespace A, bound to A's end of the veth only; the client runs in
namespace B. A tree is pushed to the daemon and pulled back, both copies are compared
with the source (treecmp), and the veth's byte counters show that the data crossed the
link (in each direction, at least the bytes that the files hold).

Needs root, `ip` (iproute2) and a kernel that allows network namespaces and veth; skips
with the reason otherwise. Namespaces, links and processes are removed in the fixtures'
finalizers, also when the test fails.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.oracle import compare_kwargs_for
from tests.treecmp import assert_same_tree
from tests.treegen import make_tree

from .daemon_fixture import REPO_ROOT, ZcsyncDaemon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

IP = shutil.which("ip")
PORT = 2873  # the namespace is new: nothing else listens there
TIMEOUT = 60


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    assert IP is not None
    proc = subprocess.run([IP, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=TIMEOUT)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


class NetnsPair:
    """Namespaces A and B, veth A<->B with 10.231.N.1/30 (A) and .2/30 (B), links up."""

    def __init__(self) -> None:
        token = secrets.token_hex(3)
        self.ns_a, self.ns_b = f"zcs-{token}-a", f"zcs-{token}-b"
        self.veth_a, self.veth_b = f"zv{token}a", f"zv{token}b"  # under IFNAMSIZ (15)
        net = int(token[:2], 16)
        self.addr_a, self.addr_b = f"10.231.{net}.1", f"10.231.{net}.2"
        self.made: list[str] = []

    def create(self) -> None:
        for ns in (self.ns_a, self.ns_b):
            proc = _ip("netns", "add", ns, check=False)
            if proc.returncode != 0:
                pytest.skip(f"cannot create a network namespace: {proc.stderr.strip()}")
            self.made.append(ns)
        proc = _ip("link", "add", self.veth_a, "type", "veth", "peer", "name", self.veth_b,
                   check=False)
        if proc.returncode != 0:
            pytest.skip(f"cannot create a veth pair: {proc.stderr.strip()}")
        for ns, dev, addr in ((self.ns_a, self.veth_a, self.addr_a),
                              (self.ns_b, self.veth_b, self.addr_b)):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")

    def counter(self, ns: str, dev: str, which: str) -> int:
        """tx_bytes or rx_bytes of a device, read from its own namespace's sysfs."""
        proc = _ip("netns", "exec", ns, "cat", f"/sys/class/net/{dev}/statistics/{which}")
        return int(proc.stdout)

    def destroy(self) -> None:
        for ns in self.made:
            # Whatever still runs in the namespace was started by this test.
            pids = _ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", ns, check=False)  # takes the veth ends with it
        # Left in the root namespace if moving it failed.
        _ip("link", "del", self.veth_a, check=False)


class NetnsDaemon(ZcsyncDaemon):
    """`zcsync daemon --no-detach` inside a namespace, bound to one address there."""

    def __init__(self, workdir: Path, ns: str, address: str) -> None:
        super().__init__(workdir)
        self.ns, self.address, self.port = ns, address, PORT

    def argv(self) -> list[str]:
        assert IP is not None
        # `ip netns exec` execs the command: the Popen's pid is the daemon's.
        return [IP, "netns", "exec", self.ns, sys.executable, "-m", "zcsync", "daemon",
                "--no-detach", "--config", str(self.config), "--port", str(self.port),
                "--address", self.address]

    def url(self, module: str, path: str = "", user: str | None = None) -> str:
        return f"zcsync://{self.address}:{self.port}/{module}/{path}"


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    if IP is None:
        pytest.skip("ip (iproute2) is not installed")
    pair = NetnsPair()
    try:
        pair.create()
        yield pair
    finally:
        pair.destroy()


@pytest.fixture
def daemon_in_a(netns_pair: NetnsPair, tmp_path: Path) -> Iterator[NetnsDaemon]:
    module = tmp_path / "module"
    module.mkdir()
    d = NetnsDaemon(tmp_path / "daemon", netns_pair.ns_a, netns_pair.addr_a)
    d.write_config(f"[m]\n    path = {module}\n    read only = no\n    uid = root\n    gid = root\n")
    try:
        d.start()
        yield d
    finally:
        d.stop()


def _client_in(ns: str, *args: str) -> subprocess.CompletedProcess:
    """Run this checkout's `python -m zcsync` inside a namespace."""
    assert IP is not None
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([IP, "netns", "exec", ns, sys.executable, "-m", "zcsync", *args],
                          capture_output=True, text=True, errors="surrogateescape", env=env,
                          stdin=subprocess.DEVNULL, timeout=TIMEOUT)


def _data_bytes(root: Path) -> int:
    """Bytes the files hold, at least: each inode once, holes not counted."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for top, _dirs, files in os.walk(os.fsencode(root)):
        for name in files:
            st = os.lstat(os.path.join(top, name))
            if (st.st_mode & 0o170000) != 0o100000 or (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += min(st.st_size, st.st_blocks * 512)
    return total


def test_push_and_pull_across_veth(netns_pair: NetnsPair, daemon_in_a: NetnsDaemon,
                                   tmp_path: Path) -> None:
    pair, d = netns_pair, daemon_in_a
    src = tmp_path / "src"
    make_tree(src, 31, files=80)
    data = _data_bytes(src)
    assert data > 1 << 20, "the tree should hold enough data to stand out from other traffic"
    same = {**compare_kwargs_for(["-a"]), "hardlinks": False}  # -a without -H

    tx0 = pair.counter(pair.ns_b, pair.veth_b, "tx_bytes")
    rx0 = pair.counter(pair.ns_a, pair.veth_a, "rx_bytes")
    push = _client_in(pair.ns_b, "-a", f"{src}/", d.url("m", "dst/"))
    assert push.returncode == 0, (push.stderr, d.log_text())
    pushed_tx = pair.counter(pair.ns_b, pair.veth_b, "tx_bytes") - tx0
    pushed_rx = pair.counter(pair.ns_a, pair.veth_a, "rx_bytes") - rx0
    assert_same_tree(src, tmp_path / "module" / "dst", **same)
    assert pushed_tx >= data, f"push: {pushed_tx} bytes left B's veth for {data} bytes of data"
    assert pushed_rx >= data, f"push: {pushed_rx} bytes reached A's veth for {data} bytes of data"

    rx0 = pair.counter(pair.ns_b, pair.veth_b, "rx_bytes")
    back = tmp_path / "back"
    pull = _client_in(pair.ns_b, "-a", d.url("m", "dst/"), f"{back}/")
    assert pull.returncode == 0, (pull.stderr, d.log_text())
    pulled = pair.counter(pair.ns_b, pair.veth_b, "rx_bytes") - rx0
    assert_same_tree(src, back, **same)
    assert pulled >= data, f"pull: {pulled} bytes reached B's veth for {data} bytes of data"

    # The daemon is reachable only over the veth: not on B's loopback.
    probe = _client_in(pair.ns_b, "-a", f"zcsync://127.0.0.1:{PORT}/m/dst/", f"{tmp_path}/x/")
    assert probe.returncode != 0
