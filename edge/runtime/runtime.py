"""`edge.Runtime`: synchronised samples -> context -> plan -> encoders -> BEV fusion -> LLM connections.

Every frame result carries the header stamps of the inputs it came from. The sensor queue is bounded and drops
the oldest sample when the consumer falls behind. Applying a plan (attach / detach / depth) costs well under a
millisecond, so it never holds the sensor loop. Questions can be asked at any time; they are answered at the next
frame with the modalities attached then.
"""

from __future__ import annotations

import resource
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edge.encoders.stack import OCCUPANCY_VALUES, PerceptionStack
from edge.errors import EdgeError
from edge.runtime.context import Context, ContextEstimator
from edge.runtime.scheduler import MODALITIES, Budget, CostModel, Decision, Plan, QualityTable, Scheduler

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
    audio: dict[str, Any] | None
    camera: dict[str, Any] | None
    answers: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: list[str] = field(default_factory=list)

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
    """The whole pipeline in one process; `answerer` (an LLM with mPnP connections) is optional."""

    def __init__(self, perception_dir: str | Path = DEFAULT_PERCEPTION, policy: str = "adaptive",
                 budget: Budget | None = None, answerer: Any = None, queue_depth: int = 4, dwell: int = 5,
                 quality_per_ms: float = 1e-3, rig: Any = None, backend: str = "eager",
                 engine_cache: str | Path | None = None, progress: bool = False) -> None:
        perception_dir = Path(perception_dir)
        self.stack = PerceptionStack.load(perception_dir, rig=rig)
        self.backend = backend  # network parts on eager PyTorch / ONNX Runtime / TensorRT (docs/runtime.md, Backends)
        self.stack.set_backend(backend, cache_dir=engine_cache, progress=progress)
        self.estimator = ContextEstimator()
        self.costs = CostModel(memory_mb={m: param_mb(getattr(self.stack, m)) for m in MODALITIES})
        self.costs.memory_mb["fusion"] = param_mb(self.stack.fusion)
        eval_path = perception_dir / "eval.json"
        if not eval_path.exists():
            raise EdgeError(f"{eval_path}: missing; the scheduler needs the measured per-condition accuracy table")
        self.answerer = answerer
        self.scheduler = Scheduler(QualityTable.from_perception_eval(eval_path), self.costs, budget or Budget(),
                                   MODALITIES, answerer.n_blocks if answerer is not None else 0, policy, dwell,
                                   quality_per_ms=quality_per_ms,
                                   aligner_sets=answerer.aligner_sets() if answerer is not None else (),
                                   backend=backend)
        self.queue: deque[Any] = deque(maxlen=queue_depth)
        self.dropped = 0
        self.questions: deque[dict[str, Any]] = deque()
        self._calibrated = False

    # ---------------------------------------------------------------- inputs
    def submit(self, sample: Any) -> None:
        """Queue a sample from a live source; when the queue is full the oldest is dropped (and counted)."""
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(sample)

    def ask(self, question: str, **meta: Any) -> None:
        """Queue a question; it is answered at the next frame."""
        self.questions.append({"question": question, **meta})

    def drain(self) -> list[FrameResult]:
        out = []
        while self.queue:
            out.append(self.step(self.queue.popleft()))
        return out

    # ---------------------------------------------------------------- one frame
    def calibrate(self, sample: Any, repeats: int = 2) -> None:
        """Measure every component on real data so that the first plan is chosen on measured costs.

        The first pass warms up (lazy tables, allocator, first-call dispatch) and is not counted."""
        for rep in range(repeats + 1):
            if rep == 1:
                self.costs.reset_latency()
            self._perceive(sample, Plan(MODALITIES, 0, 1.0), {})
            for keep in (0.5, 0.25):
                self._perceive(sample, Plan(("camera",), 0, keep), {})
        self._calibrated = True

    def step(self, sample: Any) -> FrameResult:
        if not self._calibrated:
            self.calibrate(sample)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        ctx = self.estimator.update(sample)
        decision = self.scheduler.step(ctx)
        timings["context+plan"] = (time.perf_counter() - t0) * 1e3
        out = self._perceive(sample, decision.plan, timings)
        answers = []
        if self.answerer is not None:
            t = time.perf_counter()
            self.answerer.apply(decision.plan, out["tokens"])
            timings["attach"] = (time.perf_counter() - t) * 1e3
            while self.questions:
                q = self.questions.popleft()
                t = time.perf_counter()
                text = self.answerer.answer(q["question"])
                answers.append({**q, "response": text, "latency_ms": (time.perf_counter() - t) * 1e3,
                                "modalities": sorted(self.answerer.attached),
                                "blind_prior": self.answerer.prior.get(str(q.get("kind")), "")})
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return FrameResult(sample.stamp_ns, dict(sample.source_stamps), decision.plan, decision, ctx, timings,
                           rss_mb(), out["bev_classes"], self.stack.cfg.bev_grid.resolution, out["bev_modalities"], out["audio"],
                           out["camera"], answers, out["diagnostics"])

    def _perceive(self, sample: Any, plan: Plan, timings: dict[str, float]) -> dict[str, Any]:
        """Run the plan's encoders and the fusion head (PerceptionStack.run), each stage timed, costs observed."""

        def timed(name: str, fn: Callable[[], Any]) -> Any:
            t = time.perf_counter()
            result = fn()
            ms = (time.perf_counter() - t) * 1e3
            if result is not None:  # an encoder without input returns at once: not a cost measurement
                timings[name] = ms
                self.costs.observe(name, ms)
            return result

        out = self.stack.run(sample, plan.modalities, plan.camera_keep, timer=timed)
        if out.camera is not None:
            out.camera.pop("front_map", None)
        return {"bev_classes": out.bev_classes, "bev_modalities": out.modalities, "audio": out.audio,
                "camera": out.camera, "tokens": out.tokens, "diagnostics": out.diagnostics}
