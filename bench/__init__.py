"""Benchmarks: workloads on tmpfs and a runner that times zcsync against rsync and cp.

Run from the repository root with ``python -m bench`` (see bench/README.md).
"""
