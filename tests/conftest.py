"""Shared fixtures: small synthetic drive bags written with our own builders (no generator needed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_bench_read() -> Any:
    spec = importlib.util.spec_from_file_location("bench_read", ROOT / "benchmarks" / "bench_read.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_read"] = mod
    spec.loader.exec_module(mod)
    return mod


bench_read = _load_bench_read()


@pytest.fixture(scope="session")
def drive_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s drive with every contract stream (compressed images, zstd MCAP), shared read-only by tests."""
    return bench_read.build_synthetic_bag(tmp_path_factory.mktemp("bags") / "drive", 2.0)


@pytest.fixture()
def make_bag(tmp_path: Path) -> Callable[..., Path]:
    """Factory: make_bag(name, **build_synthetic_bag kwargs) -> bag path under this test's tmp dir."""

    def make(name: str = "bag", **kw: Any) -> Path:
        kw.setdefault("duration_s", 1.0)
        return bench_read.build_synthetic_bag(tmp_path / name, **kw)

    return make


@pytest.fixture()
def one_thread():
    """One torch thread for the LLM tests: tiny models are dispatch-bound, and on a CPU shared with other jobs
    2-thread GEMMs stall on preempted workers (5-10x slower). Use with `pytestmark = usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
