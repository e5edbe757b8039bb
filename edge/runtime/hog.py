"""A controlled CPU hog for evaluating the scheduler under contention: K busy processes, stopped on exit.

Processes, not threads: a Python thread spinning would contend for the interpreter lock, not for a core, and
measure something else than a vehicle's other processes do. Each one also ends itself when its parent is gone, so
a killed evaluation leaves no hog behind."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from types import TracebackType

# busy on one core; every million iterations, exit if the parent (the evaluation) is gone
_SPIN = ("import os\nparent = {parent}\nx = 0\nwhile True:\n    x += 1\n"
         "    if x % 1000000 == 0 and os.getppid() != parent:\n        break\n")


class CpuHog:
    """`with CpuHog(k, stop_after_s=None):` k processes each busy on one core; `stop_after_s` ends them early
    (to measure recovery), and `stopped_at` is then the time.monotonic() they were stopped."""

    def __init__(self, k: int, stop_after_s: float | None = None) -> None:
        if k < 0:
            raise ValueError(f"load must be >= 0 busy processes, got {k}")
        self.k, self.stop_after_s = k, stop_after_s
        self.stopped_at: float | None = None
        self._procs: list[subprocess.Popen] = []
        self._timer: threading.Timer | None = None

    def __enter__(self) -> "CpuHog":
        code = _SPIN.format(parent=os.getpid())
        self._procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.k)]
        if self.k and self.stop_after_s is not None:
            self._timer = threading.Timer(self.stop_after_s, self.stop)
            self._timer.daemon = True
            self._timer.start()
        return self

    @property
    def running(self) -> int:
        return sum(p.poll() is None for p in self._procs)

    def stop(self) -> None:
        if self.stopped_at is not None or not self._procs:
            return
        for p in self._procs:
            p.terminate()
        for p in self._procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        self.stopped_at = time.monotonic()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.stop()
