"""`edge.Runtime`: synchronised samples -> context -> plan -> encoders -> BEV fusion -> LLM connections.

Every frame result carries the header stamps of the inputs it came from. The sensor queue is bounded and drops
the oldest sample when the consumer falls behind. Questions can be asked at any time; they are bound to the next
frame (its plan's aligner set and its tokens) and answered off the frame path by `AnswerWorker`; a frame result
carries the answers that finished since the previous one, each with the stamp of the data it used.

Costs stay measured (edge.runtime.cost_model): every stage of every frame is timed; after a frame, within the
frame period it left unused, one stage the plan does not run is re-measured once its estimate is half
`max_estimate_age_s` old (whatever the slack once it is `max_estimate_age_s` old), and a sensor that arrives after
start-up is measured on its first sample. A re-measured stage is recorded as it would take inside a frame
(`CostModel.observe_probe`: its CPU time times the frames' wall/CPU ratio), as the OS gives a process that has just
used its time slice less of the core than one that waited for its sample.
"""

from __future__ import annotations

import logging
import resource
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edge.encoders.fingerprint import token_fingerprints
from edge.encoders.stack import OCCUPANCY_VALUES, PerceptionStack
from edge.errors import EdgeError
from edge.frames import Frame
from edge.names import BackendName, Policy
from edge.runtime.answer_worker import AnswerWorker
from edge.runtime.context import Context, ContextEstimator
from edge.runtime.cost_model import OVERHEAD, CostModel, Key, timed_call
from edge.runtime.isolation import Detacher
from edge.runtime.plausibility import ObstacleView
from edge.runtime.scheduler import MODALITIES, Budget, Decision, Plan, QualityTable, Scheduler
from edge.runtime.stages import FUSION, every_stage, fuses, passes, run_of, settings

log = logging.getLogger(__name__)
PROBE_DUTY = 0.1  # share of wall time re-measurement may take beyond the frames' slack
WARMUP_PASSES = 2  # untimed start-up passes at every thread count before calibration counts any (Runtime.calibrate)
Stopwatch = Callable[[str, Callable[[], Any]], tuple[Any, float, float]]  # (stage, fn) -> (fn(), wall ms, cpu ms)

DEFAULT_PERCEPTION = Path(__file__).resolve().parents[2] / "models" / "perception"


@dataclass
class FrameResult:
    stamp_ns: int
    source_stamps: dict[str, int]
    plan: Plan
    decision: Decision
    context: Context
    timings_ms: dict[str, float]
    rss_mb: float
    bev_classes: np.ndarray | None  # (nx, ny) uint8 class ids (BEV_CLASSES) on the perception grid
    resolution: float
    modalities_used: list[str]
    # modality -> its encoder's extras this frame (ModalityEncoder.run's, less those its plugin declares transient),
    # None when it did not run; one entry per modality of the stack
    extras: dict[str, dict[str, Any] | None]
    answers: list[dict[str, Any]] = field(default_factory=list)  # finished since the previous frame
    diagnostics: list[str] = field(default_factory=list)
    probes_ms: dict[str, float] = field(default_factory=dict)  # stages re-measured after this frame ("fisheye/1")
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)  # LLM tokens of the modalities run (split graph)

    def occupancy_grid(self) -> np.ndarray | None:
        """(rows y, columns x) int8 in the nav_msgs/OccupancyGrid values of docs/drives.md."""
        return None if self.bev_classes is None else OCCUPANCY_VALUES[self.bev_classes].T.copy()


def rss_mb() -> float:
    """Current resident memory of this process (Linux /proc), falling back to the peak."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def param_mb(module: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20


class Runtime:
    """The whole pipeline in one process; `answerer` (an LLM with mPnP connections) is optional.

    `clock` (seconds) ages the cost estimates and paces plan changes; `stopwatch` times each stage (wall and
    thread-CPU ms). Both are injectable so that tests can replay a slow measurement without sleeping."""

    def __init__(self, perception_dir: str | Path = DEFAULT_PERCEPTION, policy: Policy | str = Policy.ADAPTIVE,
                 budget: Budget | None = None, answerer: Any = None, queue_depth: int = 4, dwell: int = 5,
                 quality_per_ms: float = 1e-3, rig: Any = None, backend: BackendName | str = BackendName.EAGER,
                 engine_cache: str | Path | None = None, progress: bool = False, max_estimate_age_s: float = 5.0,
                 max_changes_per_min: int = 6, adapt_threads: bool = True, fixed_plan: Plan | None = None,
                 answer_nice: int = 10, clock: Callable[[], float] = time.monotonic,
                 stopwatch: Stopwatch | None = None) -> None:
        perception_dir = Path(perception_dir)
        budget = budget or Budget()
        self.stack = PerceptionStack.load(perception_dir, rig=rig)
        # what can run: the installed modalities whose encoder the stack built (a LiDAR on a rig without one is
        # left out), so that no plan lists, and no calibration or probe tries, a modality nothing encodes
        self.modalities: tuple[str, ...] = tuple(m for m in MODALITIES if m in self.stack.encoders)
        self.backend = backend  # network parts on eager PyTorch / ONNX Runtime / TensorRT (docs/runtime.md, Backends)
        self.stack.set_backend(backend, cache_dir=engine_cache, progress=progress)
        from edge.sensors.rig import load_rig  # as PerceptionStack.load: the default rig unless one is given

        self.estimator = ContextEstimator(rig=rig if rig is not None else load_rig(), grid=self.stack.cfg.bev_grid)
        self.detacher = Detacher()  # modalities left out after an exception, retried with back-off
        # the previous frame's BEV of a witness modality (ModalityPlugin.witness): what range readings are checked on
        self._obstacles: ObstacleView | None = None
        self._diag_sent: set[str] = set()  # runtime diagnostics already attached to a frame
        n = self._threads_at_start = torch.get_num_threads()
        # ONNX Runtime / TensorRT sessions fix their threads when built; eager can change per frame
        self.thread_options = tuple(sorted({1, n})) if backend == BackendName.EAGER and adapt_threads else (n,)
        self.costs = CostModel(memory_mb={m: param_mb(enc) for m, enc in self.stack.encoders.items()},
                               max_age_s=max_estimate_age_s, percentile=budget.percentile, clock=clock,
                               backend=backend, threads=n)
        self.costs.memory_mb[FUSION] = param_mb(self.stack.fusion)
        eval_path = perception_dir / "eval.json"
        if not eval_path.exists():
            raise EdgeError(f"{eval_path}: missing; the scheduler needs the measured per-condition accuracy table")
        self.answerer = answerer
        # aligners trained on other encoder weights: named once (their measured accuracy no longer holds)
        self.notes: list[str] = answerer.stale_sets(token_fingerprints(perception_dir)) \
            if hasattr(answerer, "stale_sets") else []
        for note in self.notes:
            log.warning("%s", note)
        self.scheduler = Scheduler(QualityTable.from_perception_eval(eval_path), self.costs, budget,
                                   self.modalities, answerer.n_blocks if answerer is not None else 0, policy, dwell,
                                   quality_per_ms=quality_per_ms,
                                   aligner_sets=answerer.aligner_sets() if answerer is not None else (),
                                   backend=backend, threads=self.thread_options,
                                   max_changes_per_min=max_changes_per_min, fixed=fixed_plan)
        self.answers = AnswerWorker(answerer, budget.answer_ms, nice=answer_nice) if answerer is not None else None
        self._stopwatch: Stopwatch = stopwatch or (lambda name, fn: timed_call(fn))
        self.queue: deque[Any] = deque(maxlen=queue_depth)
        self.dropped = 0
        self.questions: deque[dict[str, Any]] = deque()
        self._calibrated = False
        self._stamps: deque[int] = deque(maxlen=21)  # recent sample stamps: the frame period
        self._arrivals: dict[str, float] = {}  # modality -> clock time its first measurement was tried
        self._forced: deque[tuple[float, float]] = deque()  # (clock, ms) probe time beyond the frames' slack

    # ---------------------------------------------------------------- inputs
    def submit(self, sample: Frame) -> None:
        """Queue a sample from a live source; when the queue is full the oldest is dropped (and counted)."""
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(sample)

    def ask(self, question: str, **meta: Any) -> None:
        """Queue a question; it is bound to the next frame and answered off the frame path."""
        self.questions.append({"question": question, **meta, "_asked": time.perf_counter()})

    def drain(self) -> list[FrameResult]:
        out = []
        while self.queue:
            out.append(self.step(self.queue.popleft()))
        return out

    def finish(self, timeout_s: float = 600.0) -> list[dict[str, Any]]:
        """Wait for the questions still being answered; their answers (not attached to any frame yet)."""
        return self.answers.finish(timeout_s) if self.answers is not None else []

    def close(self) -> None:
        """Stop the answer thread; give the process back its intra-op thread count (plans change it)."""
        if self.answers is not None:
            self.answers.close()
        torch.set_num_threads(self._threads_at_start)

    @property
    def degradations(self) -> list[dict[str, Any]]:
        """Implausible sensor spans and detached modality spans so far, as the report's degradation records."""
        return self.estimator.degradations + self.detacher.open_records()

    @property
    def diagnostics(self) -> list[str]:
        """One line per implausible sensor and per detached modality (first occurrence each)."""
        return self.notes + self.estimator.diagnostics + self.detacher.diagnostics

    # ---------------------------------------------------------------- costs
    def calibrate(self, sample: Frame, repeats: int = 3) -> None:
        """Measure every component with data, at every thread count a plan may use, so that the first plan is
        chosen on measured costs. Warm-up passes at every thread count (lazy tables, allocator, first-call
        dispatch) are not counted; the counted repeats go round the thread counts in turn, so that none is timed
        while the process is still warming up; repeats the other job preempted are dropped while a clean one
        remains (CostModel.calibrate).

        Why in turn: timed one thread count after the other, the first one counted was the cold one. On the quiet
        2-core machine, fisheye on 1 thread calibrated at 40 ms (p50 of 3, after one warm-up pass) and ran at 21-23
        ms in frames, so the 40 ms budget's best plan (fisheye alone, 1 thread: p95 37 ms) was never chosen."""
        static = not self.scheduler.adaptive  # runs at its own thread count, reads no estimate
        counts = (self.scheduler.static_threads,) if static else self.thread_options
        runs: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for _ in range(WARMUP_PASSES):
            for threads in counts:
                self._time_stages(sample, self.modalities, threads, {})
        for _ in range(1 if static else repeats):
            for threads in counts:
                self._time_stages(sample, self.modalities, threads, runs)
        for (name, threads), r in runs.items():
            self.costs.calibrate(name, r, self.backend, threads)
        probe = ContextEstimator()  # the context's own cost, on a throwaway estimator (it keeps state)
        runs = [self._stopwatch(OVERHEAD, lambda: probe.update(sample))[1:] for _ in range(repeats)]
        self.costs.calibrate(OVERHEAD, runs, self.backend, 0)
        self._calibrated = True

    def _time_stages(self, sample: Frame, modalities: tuple[str, ...], threads: int,
                     runs: dict[tuple[str, int], list[tuple[float, float]]]) -> None:
        """One timed pass of the modalities' stages (every keep ratio of each, edge.runtime.stages.passes) at
        `threads`, appended to `runs` under (stage, threads)."""
        def record(name: str, fn: Callable[[], Any]) -> Any:
            result, wall, cpu = self._stopwatch(name, fn)
            if result is not None:
                runs.setdefault((name, threads), []).append((wall, cpu))
            return result

        self._use_threads(threads)
        for use, knobs in passes(modalities):
            self.stack.run(sample, use, knobs, timer=record, isolate=True)

    def _measure(self, sample: Frame, modalities: tuple[str, ...], threads: int, repeats: int) -> dict[str, float]:
        """Warm-up, then `repeats` timed passes of the modalities' stages; committed per stage through
        CostModel.calibrate. Returns the median kept per stage."""
        runs: dict[tuple[str, int], list[tuple[float, float]]] = {}
        self._time_stages(sample, modalities, threads, {})
        for _ in range(repeats):
            self._time_stages(sample, modalities, threads, runs)
        return {name: statistics.median(self.costs.calibrate(name, r, self.backend, threads))
                for (name, _), r in runs.items()}

    def _probe(self, sample: Frame, ctx: Context, total_ms: float) -> dict[str, float]:
        """After the frame: measure what arrived unmeasured, else re-measure the stage whose estimate is due
        (adaptive policy only: a static plan reads no estimate)."""
        if not self.scheduler.adaptive:
            return {}
        usable = self.scheduler.healthy(ctx)
        now = self.costs.clock()
        new = [m for m in usable for t in self.thread_options
               if any(not self.costs.measured(s, self.backend, t) for s in every_stage((m,)))]
        if fuses(usable) and not all(self.costs.measured(FUSION, self.backend, t) for t in self.thread_options):
            new += list(run_of(FUSION, usable)[0])  # the fusion head is measured with the BEV modalities it fuses
        # (an encoder that returns nothing on data its stream calls healthy is not retried every frame)
        new = [m for m in new if now - self._arrivals.get(m, -float("inf")) >= self.costs.max_age_s / 2]
        probes: dict[str, float] = {}
        if new:  # a sensor that came after start-up: measured on its first sample, at every thread count
            self._arrivals.update({m: now for m in new})
            mods = tuple(m for m in MODALITIES if m in new)
            for t in self.thread_options:
                probes.update({f"{k}/{t}": v for k, v in self._measure(sample, mods, t, repeats=2).items()})
            return probes
        keys: list[Key] = [(s, self.backend, t) for t in self.thread_options for s in every_stage(usable)]
        period_ms = 100.0
        if len(self._stamps) >= 3:
            period_ms = statistics.median(np.diff(list(self._stamps))) / 1e6
        # Past the bound a stage is re-measured whatever the slack, unless probes beyond the slack already took
        # `PROBE_DUTY` of the last 10 s (a 2-thread stage under a hog can take 0.6 s: live, that drops samples).
        while self._forced and now - self._forced[0][0] > 10.0:
            self._forced.popleft()
        slack = period_ms - total_ms
        key = self.costs.due(keys, slack, forced=sum(ms for _, ms in self._forced) < PROBE_DUTY * 10_000.0)
        if key is None:
            return probes
        stage, _, threads = key
        use, knobs = run_of(stage, usable)

        def record(name: str, fn: Callable[[], Any]) -> Any:
            result, wall, cpu = self._stopwatch(name, fn)
            if result is not None:
                self.costs.observe_probe(name, wall, cpu, self.backend, threads)  # as it would take in a frame
                probes[f"{name}/{threads}"] = wall
            return result

        self._use_threads(threads)
        t = time.perf_counter()
        self.stack.run(sample, use, knobs, timer=record, isolate=True)
        spent = (time.perf_counter() - t) * 1e3
        if spent > slack:
            self._forced.append((now, spent - max(slack, 0.0)))
        return probes

    @staticmethod
    def _use_threads(threads: int) -> None:
        if threads and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    # ---------------------------------------------------------------- one frame
    def step(self, sample: Frame) -> FrameResult:
        if not self._calibrated:
            self.calibrate(sample)
        self._stamps.append(sample.stamp_ns)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        ctx = self.estimator.update(sample, self._obstacles)
        decision = self.scheduler.step(ctx)
        timings["context+plan"] = (time.perf_counter() - t0) * 1e3
        out = self._perceive(_without(sample, ctx.implausible), decision.plan, timings)
        new = [d for d in self.diagnostics if d not in self._diag_sent]
        self._diag_sent.update(new)
        out["diagnostics"] = new + out["diagnostics"]
        if self.answers is not None and self.questions:
            t = time.perf_counter()
            asked = []
            while self.questions:  # popleft: ask() may append from another thread meanwhile
                asked.append(self.questions.popleft())
            self.answers.submit(asked, decision.plan, out["tokens"], sample.stamp_ns)
            timings["attach"] = (time.perf_counter() - t) * 1e3
        total = (time.perf_counter() - t0) * 1e3
        timings["total"] = total
        stages = sum(v for k, v in timings.items() if k not in ("context+plan", "attach", "total"))
        self.costs.observe(OVERHEAD, total - stages, None, self.backend, 0)
        self.costs.observe_frame(decision.plan, total)
        probes = self._probe(sample, ctx, total)
        answers = self.answers.collect() if self.answers is not None else []
        return FrameResult(sample.stamp_ns, dict(sample.source_stamps), decision.plan, decision, ctx, timings,
                           rss_mb(), out["bev_classes"], self.stack.cfg.bev_grid.resolution, out["bev_modalities"],
                           out["extras"], answers, out["diagnostics"], probes, out["tokens"])

    def _perceive(self, sample: Frame, plan: Plan, timings: dict[str, float]) -> dict[str, Any]:
        """Run the plan's encoders and the fusion head (PerceptionStack.run), each stage timed, costs observed."""
        threads = plan.threads or self.costs.threads

        def timed(name: str, fn: Callable[[], Any]) -> Any:
            result, wall, cpu = self._stopwatch(name, fn)
            if result is not None:  # an encoder without input returns at once: not a cost measurement
                timings[name] = wall
                self.costs.observe_inside(name, wall, cpu, self.backend, threads)
            return result

        self._use_threads(threads)
        use = self.detacher.allowed(plan.modalities, sample.stamp_ns)
        out = self.stack.run(sample, use, settings(use, plan.keep), timer=timed, isolate=True)
        self.detacher.observe(sample.stamp_ns, use, out.failures)
        witness = next((out.alone[m] for m, p in self.stack.plugins.items() if p.witness and m in out.alone), None)
        self._obstacles = None if witness is None else \
            ObstacleView.from_probs(witness, self.stack.cfg.bev_grid, sample.stamp_ns)
        extras = {}
        for m, p in self.stack.plugins.items():
            extra = out.outputs.get(m)
            extras[m] = None if extra is None else {k: v for k, v in extra.items() if k not in p.transient}
        return {"bev_classes": out.bev_classes, "bev_modalities": out.modalities, "extras": extras,
                "tokens": out.tokens, "diagnostics": out.diagnostics}


def _without(sample: Frame, streams: tuple[str, ...]) -> Frame:
    """`sample` with the implausible streams ("ultrasonic/<name>", "fisheye/<name>", "camera/front", as
    Context.implausible names them) treated as missing."""
    if not streams:
        return sample
    return sample.with_data(**{
        name: {s: None if f"{name}/{s}" in streams else v for s, v in entry.items()}
        for name, entry in sample.data.items() if isinstance(entry, dict)})
