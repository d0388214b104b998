"""Shared by the tests and the benchmarks: the repository root, real processes (tests.support.
procs), real deployments (tests.support.deploy), hostile graphs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
