"""Timing helper shared by the benchmark scripts (they run as `python benchmarks/<script>.py`, so this imports)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def timed_pair(a: Callable[[], Any], b: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Median seconds of a and b, interleaved so drifting load on a shared machine hits both alike (one warm-up
    call each)."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeat):
        for fn, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)
