"""Per-component latency as a distribution that stays true on a machine shared with other work.

Why: a cost table measured once, on a loaded machine, froze whole drives on the wrong plan (a 505 ms fisheye
measured while another job ran was still the estimate 200 frames later, because a dropped component is never run
again). So here:
- a cost is a distribution (p50 and the budget percentile) over the recent measurements of one key
  (component, backend, thread count), and measurements older than `max_age_s` leave the window;
- every measurement is timed on the wall clock and on the calling thread's CPU clock: wall time far above CPU time
  means the thread was off the CPU (preempted, or waiting for a preempted worker), which start-up calibration
  discards when it has clean repeats;
- each key knows when it was last measured, so the runtime can re-measure what the plan does not run (`due`);
- a probe (a stage re-measured after a frame, outside it) is recorded as what it would cost inside a frame
  (`observe_probe`): its CPU time times the wall/CPU ratio the stages inside frames show now. Measured on the shared
  2-core machine (benchmarks/bench_probe_timing.py, fisheye on 1 thread): probes and frames took the same CPU time
  (medians within 10 %), while their wall times disagreed either way with the load (load average ~9: probes
  108-137 ms against 101 in frames, and 1.5-2.3x in the evaluation's runs; ~6: probes 24-36 ms against 42), whatever
  the warm-up or thread switch before them. A probe runs right after the frame has used its time slice, a frame
  after the process waited for its sample, and the OS shares the core differently between the two: the wall time
  of a probe is the machine's, its CPU time the stage's.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from edge.names import BackendName
from edge.runtime import stages


Key = tuple[str, str, int]  # (component, backend, threads)
OVERHEAD = "overhead"  # per-frame work outside the encoders: context, planning, token hand-off
FRAME = "frame:"  # + a plan's description: whole frames of that plan
FEW = 10  # measurements below which a stage's own tail is not trusted


def preempted(wall_ms: float, cpu_ms: float | None) -> bool:
    """The thread spent most of the call off the CPU (the other job had the core)."""
    return cpu_ms is not None and wall_ms - cpu_ms > max(2.0, 0.5 * wall_ms)


def tail_rank(n: int, q: float) -> int:
    """Index, in n sorted measurements, of the one taken as their q-th percentile.

    Up to the median: numpy's "inverted_cdf" (the smallest value with at least q % at or below it). Above it, the
    n * (1 - q/100) largest measurements are set aside rounded to the nearest whole one, not rounded down as
    inverted_cdf does: at p95 inverted_cdf takes the maximum of anything under 20 measurements, so one preempted
    frame among 10-19 (the windows a plan or a stage has just after it starts, or once old samples retire) was its
    p95, and the scheduler left, or never chose, plans whose frames met the budget (issue 16: predicted p95 over
    measured p95 by a median 1.19x, over 1.5x in 7 of 35 plan segments). Here one in 10-29 is set aside, two in
    30-49; under 10, the maximum (too few to tell an outlier)."""
    if q <= 50.0:
        return max(0, math.ceil(q / 100.0 * n) - 1)
    return max(0, n - 1 - math.floor(n * (1.0 - q / 100.0) + 0.5))


def timed_call(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """fn() with its wall and thread-CPU milliseconds."""
    w, c = time.perf_counter(), time.thread_time()
    out = fn()
    return out, (time.perf_counter() - w) * 1e3, (time.thread_time() - c) * 1e3


@dataclass
class _Series:
    samples: deque = field(default_factory=lambda: deque(maxlen=64))  # (at, ms)
    last_at: float = -math.inf
    preempted: int = 0


class CostModel:
    """Latency distributions per (component, backend, threads) and resident memory per component (MB)."""

    def __init__(self, memory_mb: dict[str, float] | None = None, window: int = 20, max_age_s: float = 5.0,
                 percentile: float = 95.0, clock: Callable[[], float] = time.monotonic,
                 backend: str = BackendName.EAGER, threads: int = 1) -> None:
        if not (0 < max_age_s <= 60 and math.isfinite(max_age_s)):
            raise ValueError(f"max_age_s must be in (0, 60] s, got {max_age_s!r}")
        self.memory_mb = dict(memory_mb or {})
        self.window, self.max_age_s, self.percentile, self.clock = window, max_age_s, percentile, clock
        self.backend, self.threads = backend, threads  # defaults for callers that do not say
        self._series: dict[Key, _Series] = {}
        # thread count -> recent (at, wall ms, cpu ms) of stages timed inside frames: the contention frames see
        self._inside: dict[int, deque] = {}
        self._memo: dict[tuple[Key, float], float | None] = {}  # quantiles until the next measurement
        self._plan_memo: dict[tuple, Any] = {}  # plan latencies, stages' (median, squared tail), contention
        # each key's recent window, sorted, until that key's next measurement: the planner reads it for every
        # candidate plan (64 of them) each frame, and rebuilding it per read cost ~2 ms a frame (issue 16)
        self._window_memo: dict[Key, list[float]] = {}

    # ---------------------------------------------------------------- measurements
    def key(self, component: str, backend: str | None = None, threads: int | None = None) -> Key:
        return (component, backend or self.backend, self.threads if threads is None else threads)

    def observe(self, component: str, ms: float, cpu_ms: float | None = None, backend: str | None = None,
                threads: int | None = None) -> bool:
        """Record one measurement; returns whether it looks preempted (it is kept: it is what the frame cost)."""
        key = self.key(component, backend, threads)
        s = self._series.setdefault(key, _Series())
        now = self.clock()
        self._memo.clear()
        self._plan_memo.clear()
        self._window_memo.pop(key, None)
        s.samples.append((now, float(ms)))
        s.last_at = now
        hit = preempted(ms, cpu_ms)
        s.preempted += hit
        return hit

    def observe_inside(self, component: str, ms: float, cpu_ms: float | None = None, backend: str | None = None,
                       threads: int | None = None) -> bool:
        """`observe` for a stage timed inside a frame; its wall/CPU ratio is what `observe_probe` applies."""
        if cpu_ms is not None and cpu_ms > 0:
            t = self.threads if threads is None else threads
            self._inside.setdefault(t, deque(maxlen=self.window)).append((self.clock(), float(ms), float(cpu_ms)))
        return self.observe(component, ms, cpu_ms, backend, threads)

    def inside_ratio(self, threads: int | None = None) -> float | None:
        """Wall over CPU time of the stages timed inside recent frames at this thread count (summed, so weighted by
        their milliseconds; None with fewer than `FEW` of them in the last `max_age_s`)."""
        now = self.clock()
        recent = [(w, c) for at, w, c in self._inside.get(self.threads if threads is None else threads, ())
                  if now - at < self.max_age_s]
        if len(recent) < FEW:
            return None
        return sum(w for w, _ in recent) / sum(c for _, c in recent)

    def observe_probe(self, component: str, ms: float, cpu_ms: float | None, backend: str | None = None,
                      threads: int | None = None) -> float:
        """A stage measured outside a frame, recorded as it would take inside one: its CPU time times the frames'
        wall/CPU ratio at that thread count (module docstring: a probe's wall time is shared out by the OS unlike a
        frame's). Its wall time as it is where that ratio is unknown. Returns the milliseconds recorded."""
        ratio = self.inside_ratio(threads)
        if cpu_ms is not None and cpu_ms > 0 and ratio is not None:
            ms = cpu_ms * max(1.0, ratio)
        self.observe(component, ms, cpu_ms, backend, threads)
        return ms

    def calibrate(self, component: str, runs: Iterable[tuple[float, float | None]], backend: str | None = None,
                  threads: int | None = None) -> list[float]:
        """Start-up repeats (wall, cpu ms) of one key: preempted repeats are dropped while a clean one remains.
        Replaces what the key held; returns the kept measurements."""
        runs = list(runs)
        clean = [w for w, c in runs if not preempted(w, c)]
        kept = clean or [w for w, _ in runs]
        key = self.key(component, backend, threads)
        self.forget(component, backend, threads)
        for ms in kept:
            self.observe(component, ms, None, backend, threads)
        self._series[key].preempted = len(runs) - len(clean)
        return kept

    def forget(self, component: str, backend: str | None = None, threads: int | None = None) -> None:
        key = self.key(component, backend, threads)
        self._series.pop(key, None)
        self._window_memo.pop(key, None)
        self._memo.clear()
        self._plan_memo.clear()

    # ---------------------------------------------------------------- estimates
    def _recent(self, key: Key) -> list[float]:
        """The key's recent window, sorted (callers must not change it)."""
        if key in self._window_memo:
            return self._window_memo[key]
        s = self._series.get(key)
        if s is None or not s.samples:
            return []
        newest = s.samples[-1][0]
        # a fresh sample retires those already due for re-measurement (a stage measured every frame keeps `window`)
        recent = [ms for at, ms in s.samples if newest - at < self.max_age_s / 2]
        self._window_memo[key] = sorted(recent[-self.window:])
        return self._window_memo[key]

    def quantile(self, component: str, q: float, backend: str | None = None, threads: int | None = None
                 ) -> float | None:
        """The q-th percentile of the recent measurements (None: never measured): an observed value, so one
        preempted frame in 20 does not move p95 (`tail_rank`)."""
        key = self.key(component, backend, threads)
        if (key, q) not in self._memo:
            recent = self._recent(key)
            self._memo[key, q] = recent[tail_rank(len(recent), q)] if recent else None
        return self._memo[key, q]

    def p50(self, component: str, backend: str | None = None, threads: int | None = None) -> float | None:
        return self.quantile(component, 50.0, backend, threads)

    def measured(self, component: str, backend: str | None = None, threads: int | None = None) -> bool:
        return self.key(component, backend, threads) in self._series

    def age_s(self, component: str, backend: str | None = None, threads: int | None = None) -> float:
        s = self._series.get(self.key(component, backend, threads))
        return math.inf if s is None else self.clock() - s.last_at

    def stats(self) -> dict[str, dict[str, Any]]:
        """Every key's p50, budget percentile, age and preempted count (for reports)."""
        out = {}
        for key, s in self._series.items():
            if key[0].startswith(FRAME):
                continue
            c, b, t = key
            out[f"{c}/{b}/{t}"] = {"p50": self.quantile(c, 50.0, b, t),
                                   f"p{self.percentile:g}": self.quantile(c, self.percentile, b, t),
                                   "age_s": round(self.clock() - s.last_at, 3), "n": len(self._recent(key)),
                                   "preempted": s.preempted}
        return out

    def due(self, keys: Iterable[Key], slack_ms: float, forced: bool = True) -> Key | None:
        """The key to re-measure now: the oldest of `keys` past half `max_age_s` whose p50 fits `slack_ms` (the
        frame period left after the frame), or (when `forced`) any past `max_age_s` whatever the slack: no plan
        rests longer than that on an estimate nobody re-measured. Never-measured keys are not here: they are
        measured on arrival."""
        best: tuple[float, Key] | None = None
        for key in keys:
            if key not in self._series:
                continue
            age = self.clock() - self._series[key].last_at
            if age < self.max_age_s / 2:
                continue
            p50 = self.quantile(key[0], 50.0, key[1], key[2]) or 0.0
            if ((forced and age >= self.max_age_s) or p50 <= slack_ms) and (best is None or age > best[0]):
                best = (age, key)
        return None if best is None else best[1]

    # ---------------------------------------------------------------- plans
    @staticmethod
    def components(modalities: Iterable[str], keep: float) -> list[str]:
        """The timed stages a plan runs (names as PerceptionStack.run times them; edge.runtime.stages)."""
        return stages.components(modalities, keep)

    def plan_latency(self, plan: Any, q: float | None = None) -> float | None:
        """Predicted frame latency at the q-th percentile (default: the budget's): its stages and the per-frame
        overhead, None when a stage was never measured (an unknown cost never fits). The medians add; the tails
        (q-th percentile above the median) add in quadrature, as for independent delays: summing every stage's
        p95 would assume they are all slow on the same frame and shed plans that meet the budget."""
        q = self.percentile if q is None else q
        backend, threads = plan.backend, plan.threads or self.threads
        memo = ("plan", plan.modalities, plan.keep, backend, threads, q)  # plans differing by aligners share it
        if memo not in self._plan_memo:
            self._plan_memo[memo] = self._plan_latency(plan.modalities, plan.keep, backend, threads, q)
        return self._plan_memo[memo]

    def _plan_latency(self, modalities: tuple[str, ...], keep: float, backend: str, threads: int, q: float
                      ) -> float | None:
        keys = [(part, backend, threads) for part in self.components(modalities, keep)]
        median = tail = 0.0
        for key in keys + [(OVERHEAD, backend, 0)]:
            stage = self._stage(key, q)
            if stage is None:
                if key[0] == OVERHEAD:
                    continue
                return None
            median += stage[0]
            tail += stage[1]
        return median + math.sqrt(tail)

    def _stage(self, key: Key, q: float) -> tuple[float, float] | None:
        """A stage's median and its squared tail (q-th percentile above the median) as plans add them; memoised
        with the plans (64 candidate plans share a dozen stages)."""
        memo = ("stage", key, q)
        if memo not in self._plan_memo:
            mid = self.quantile(key[0], 50.0, key[1], key[2])
            if mid is None:
                self._plan_memo[memo] = None
            else:
                spread = 0.0
                if q > 50.0:
                    spread = self.quantile(key[0], q, key[1], key[2]) - mid  # type: ignore[operator]
                    if len(self._recent(key)) < FEW:  # a probe or two say little about the tail: use the load's
                        spread = max(spread, mid * self.contention(q))
                self._plan_memo[memo] = (mid, spread ** 2)
        return self._plan_memo[memo]  # type: ignore[return-value]

    def contention(self, q: float) -> float:
        """How far the q-th percentile sits above the median, relative to it, over the stages measured every frame
        (their tails summed over their medians summed; 0 when none): what the machine's load does to a tail now.

        Summed, not a median of per-stage ratios: a preempted time slice adds milliseconds whatever the stage, so
        a 4 ms stage (the front camera, the overhead) shows a ratio of 2-3 where a 35 ms encoder shows 0.5, and the
        median ratio lent a probed fisheye twice its median as tail (issue 16's parking-day runs).

        The encoders' stages only: the per-frame overhead (context, planning, hand-off: Python that a garbage
        collection or the first frames stretch) is added to every plan with its own tail already, and, the only
        key measured 10 times in a run's first frames, it alone set the ratio then: 1.1 on the quiet machine
        (p50 5.5, p95 11.6 ms), which lent fisheye on 1 thread a 27 ms tail and kept the 40 ms budget's best plan
        out (issue 16)."""
        memo = ("contention", q)
        if memo not in self._plan_memo:
            mids = tails = 0.0
            for key in self._series:
                if not key[0].startswith(FRAME) and key[0] != OVERHEAD and len(self._recent(key)) >= FEW:
                    mid = self.quantile(key[0], 50.0, key[1], key[2]) or 0.0
                    mids += mid
                    tails += (self.quantile(key[0], q, key[1], key[2]) or 0.0) - mid
            self._plan_memo[memo] = tails / mids if mids > 0 else 0.0
        return self._plan_memo[memo]

    def best_case(self, plan: Any) -> float | None:
        """The plan's latency if every stage ran as fast as its fastest stored measurement (the last 64, any age),
        plus the overhead's median (None: a stage never measured). What a trial of a plan can hope for: a stage
        the plan does not run is known from probes alone, one at a time, each after a frame and often after
        another thread count's probe, and their wall time measured 2-4x what the same stage took inside frames
        (issue 16's parking-day runs: fisheye probes 50-170 ms, fisheye in frames 30-45 ms; `observe_probe` now
        records them at the frames' wall/CPU ratio)."""
        total = self.quantile(OVERHEAD, 50.0, plan.backend, 0) or 0.0
        threads = plan.threads or self.threads
        for part in self.components(plan.modalities, plan.keep):
            s = self._series.get((part, plan.backend, threads))
            if s is None or not s.samples:
                return None
            total += min(ms for _, ms in s.samples)
        return total

    def frame_latency(self, plan: Any, q: float | None = None, min_frames: int = 10) -> float | None:
        """The q-th percentile of the frames this plan actually ran (None: fewer than `min_frames` recent ones)."""
        key = (FRAME + plan.describe(), plan.backend, 0)
        if len(self._recent(key)) < min_frames:
            return None
        return self.quantile(key[0], self.percentile if q is None else q, key[1], 0)

    def frames_over(self, plan: Any, ms: float) -> int:
        """How many of the recent frames this plan ran took more than `ms`."""
        return sum(x > ms for x in self._recent((FRAME + plan.describe(), plan.backend, 0)))

    def frames_run(self, plan: Any) -> int:
        """How many recent frames this plan ran."""
        return len(self._recent((FRAME + plan.describe(), plan.backend, 0)))

    def observe_frame(self, plan: Any, ms: float) -> None:
        """A whole frame of `plan`, end to end."""
        self.observe(FRAME + plan.describe(), ms, None, plan.backend, 0)

    def plan_memory(self, plan: Any) -> float:
        return sum(self.memory_mb.get(m, 0.0) for m in plan.modalities)
