"""Which modality encoders to run and attach, how deep and how pruned: chosen from the context, every frame.

A plan is scored by the expected quality of what the runtime produces, read from measured per-condition tables
(the perception evaluation: BEV obstacle IoU within 5 m per modality subset and lighting; audio event and direction
accuracy; and, when an LLM answers, the held-out answer accuracy of each aligner set per lighting), and must fit a
latency and memory budget taken from per-component costs measured while running. The plan names the aligner set
attached to the LLM, so a switch of the LLM's connections is a plan change, logged with its reason like any other.
Hysteresis keeps the plan from flapping: a better plan must stay better for `dwell` frames, except when a
modality of the current plan loses its sensor, which is acted on at once.
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import EdgeError
from edge.runtime.context import Context

MODALITIES = ("fisheye", "ultrasonic", "audio", "camera")
KEEP_RATIOS = (1.0, 0.5, 0.25)
POLICIES = ("adaptive", "camera", "all")
# Static baselines: "camera" is the camera setup (every camera: the surround fisheyes and the front camera).
STATIC = {"camera": ("fisheye", "camera"), "all": MODALITIES}


@dataclass(frozen=True)
class Plan:
    modalities: tuple[str, ...]  # encoders run
    n_blocks: int  # LLM blocks connected
    camera_keep: float  # token-pruning keep ratio of the front camera ViT
    backend: str = "eager"
    aligners: str = ""  # the aligner set attached to the LLM ("" = none: the LLM answers from text alone)

    def describe(self) -> str:
        mods = "+".join(self.modalities) or "none"
        keep = f", camera keep {self.camera_keep:g}" if "camera" in self.modalities else ""
        llm = f", LLM set {self.aligners}" if self.aligners else ""
        return f"{mods}, N={self.n_blocks}{keep}{llm}, {self.backend}"


@dataclass(frozen=True)
class AlignerSet:
    """Aligners trained together (one run directory) and their measured answer accuracy per lighting."""

    name: str
    modalities: tuple[str, ...]
    accuracy: dict[str, float]  # lighting -> exact match in 0..1 on held-out drives; empty when not measured
    trained_lighting: tuple[str, ...] = ()
    camera_keep: float = 1.0  # the camera token pruning its camera aligner was trained with

    def expected(self, lighting: str) -> float:
        if self.accuracy:
            if lighting in self.accuracy:
                return self.accuracy[lighting]
            return min(self.accuracy.values())  # dusk or unmeasured: the worse of what was measured
        # Not measured: rank by the conditions it was trained for only, far below any measured figure.
        return 0.01 if not self.trained_lighting or lighting in self.trained_lighting else 0.0

    def usable_with(self, plan_modalities: tuple[str, ...], camera_keep: float) -> bool:
        """All its modalities run, and the camera (if any) as pruned as in training."""
        return set(self.modalities) <= set(plan_modalities) and (
            "camera" not in self.modalities or camera_keep == self.camera_keep)


@dataclass
class QualityTable:
    """Measured accuracy per condition, from the perception evaluation (models/perception/eval.json)."""

    bev: dict[str, dict[str, float]]  # subset ("fisheye+ultrasonic", "fisheye", "ultrasonic") -> lighting -> IoU
    audio_event: float
    audio_direction: float
    camera_lighting: float
    source: str = ""

    @classmethod
    def from_perception_eval(cls, path: str | Path) -> "QualityTable":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            bev = {subset: {light: float(v["near5m_obstacle_iou"]) for light, v in rows.items()
                            if v.get("near5m_obstacle_iou") is not None}
                   for subset, rows in d["bev"].items()}
            return cls(bev, float(d["audio_event"]["accuracy"]), float(d["audio_direction"]["accuracy"]),
                       float(d["camera_lighting"]["accuracy"]), str(path))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise EdgeError(f"{path}: not a perception evaluation ({exc.__class__.__name__}: {exc})") from None

    def bev_quality(self, modalities: tuple[str, ...], lighting: str) -> float:
        subset = "+".join(m for m in ("fisheye", "ultrasonic") if m in modalities)
        if not subset:
            return 0.0
        rows = self.bev.get(subset, {})
        return rows.get(lighting, rows.get("all", 0.0))


@dataclass
class CostModel:
    """Per-component latency (ms: the median of the last `window` measurements) and resident memory (MB).

    A median, not a running mean: on a shared machine a component is sometimes preempted for a second, and one
    such frame must not reshape the plan; a sustained slow-down moves the median within `window` frames."""

    latency_ms: dict[str, float] = field(default_factory=dict)  # "fisheye", "ultrasonic", "fusion", "audio", "camera@0.5", ...
    memory_mb: dict[str, float] = field(default_factory=dict)
    window: int = 15
    _recent: dict[str, deque[float]] = field(default_factory=dict, repr=False)

    def observe(self, component: str, ms: float) -> None:
        recent = self._recent.setdefault(component, deque(maxlen=self.window))
        recent.append(ms)
        self.latency_ms[component] = float(statistics.median(recent))

    def reset_latency(self) -> None:
        self.latency_ms.clear()
        self._recent.clear()

    def plan_latency(self, plan: Plan) -> float:
        parts = [m if m != "camera" else f"camera@{plan.camera_keep:g}" for m in plan.modalities]
        if "fisheye" in plan.modalities or "ultrasonic" in plan.modalities:
            parts.append("fusion")
        return sum(self.latency_ms.get(p, 0.0) for p in parts)

    def plan_memory(self, plan: Plan) -> float:
        return sum(self.memory_mb.get(m, 0.0) for m in plan.modalities)


@dataclass(frozen=True)
class Budget:
    latency_ms: float = 100.0  # per frame: 10 Hz
    memory_mb: float = 2048.0


@dataclass(frozen=True)
class Decision:
    plan: Plan
    changed: bool
    reason: str
    score: float


class Scheduler:
    """Chooses plans; `policy` = "adaptive" or a static baseline ("camera", "all")."""

    def __init__(self, quality: QualityTable, costs: CostModel, budget: Budget, available: tuple[str, ...],
                 n_blocks: int, policy: str = "adaptive", dwell: int = 5, margin: float = 0.01,
                 quality_per_ms: float = 1e-3, aligner_sets: tuple[AlignerSet, ...] = (),
                 answer_weight: float = 1.0, backend: str = "eager") -> None:
        if policy not in POLICIES:
            raise EdgeError(f"unknown scheduling policy '{policy}' ({', '.join(POLICIES)})")
        unknown = set(available) - set(MODALITIES)
        if unknown:
            raise EdgeError(f"unknown modalities {sorted(unknown)}; known: {', '.join(MODALITIES)}")
        self.quality, self.costs, self.budget = quality, costs, budget
        self.available, self.n_blocks, self.policy = tuple(available), n_blocks, policy
        self.dwell, self.margin = dwell, margin
        self.quality_per_ms = quality_per_ms  # what a millisecond of compute is worth in quality (IoU) units
        self.aligner_sets = {a.name: a for a in aligner_sets}
        self.backend = backend  # where the encoders' networks run (chosen at start-up; engines are built then)
        self.answer_weight = answer_weight  # answer exact match (0..1) against obstacle IoU (0..1): equal by default
        self.current: Plan | None = None
        self._pending: tuple[Plan, int] | None = None
        self.audio_baseline_db: float | None = None
        self._eventful = False
        self._over = 0  # consecutive frames the current plan has been over budget

    # ---------------------------------------------------------------- scoring
    def score(self, plan: Plan, ctx: Context) -> float:
        """Expected usefulness of a plan's outputs in this context (higher is better)."""
        q = self.quality
        lighting = ctx.lighting if ctx.lighting in ("day", "dusk", "night") else "night"
        value = q.bev_quality(plan.modalities, lighting)
        if "audio" in plan.modalities:
            value += (0.6 if self._eventful else 0.05) * q.audio_event * q.audio_direction
        if "camera" in plan.modalities and not self.aligner_sets:
            # Without an LLM the camera's own output (its lighting head) is all it gives. With one, the camera is
            # there for its tokens, and what they are worth is the measured accuracy of the sets that read them.
            sight = {"day": 1.0, "dusk": 0.5, "night": 0.05}[lighting]
            if "camera/front" in ctx.glare_cameras:
                sight *= 0.2
            value += 0.15 * sight * q.camera_lighting * (0.9 + 0.1 * plan.camera_keep)
        if plan.aligners in self.aligner_sets:
            value += self.answer_weight * self.aligner_sets[plan.aligners].expected(lighting)
        # Compute is not free: a plan must earn its milliseconds (by default 10 ms for 0.01 IoU).
        return value - self.quality_per_ms * self.costs.plan_latency(plan)

    def _audio_active(self, ctx: Context) -> bool:
        """An event is likely when the audio level rises well above its running background."""
        level = ctx.audio_level_db
        if self.audio_baseline_db is None:
            self.audio_baseline_db = level
        active = level > self.audio_baseline_db + 10.0
        if not active:  # the background follows quiet periods only
            self.audio_baseline_db = 0.98 * self.audio_baseline_db + 0.02 * level
        return active

    # ---------------------------------------------------------------- candidates
    def healthy(self, ctx: Context) -> tuple[str, ...]:
        stream = {"fisheye": "fisheye", "ultrasonic": "ultrasonic", "audio": "audio", "camera": "camera"}
        return tuple(m for m in self.available if ctx.streams.get(stream[m]) is not None and ctx.streams[stream[m]].healthy)

    def candidates(self, usable: tuple[str, ...]) -> list[Plan]:
        plans = []
        for r in range(len(usable) + 1):
            for mods in itertools.combinations(usable, r):
                keeps = KEEP_RATIOS if "camera" in mods else (1.0,)
                for keep in keeps:
                    plans += [Plan(tuple(mods), self.n_blocks, keep, self.backend, name) for name in self.sets_for(mods, keep)]
        return plans

    def sets_for(self, modalities: tuple[str, ...], camera_keep: float) -> list[str]:
        """The aligner sets the LLM can use with these encoders running ("" = none attached)."""
        return [""] + [n for n, a in self.aligner_sets.items() if a.usable_with(modalities, camera_keep)]

    def fits(self, plan: Plan) -> bool:
        return (self.costs.plan_latency(plan) <= self.budget.latency_ms
                and self.costs.plan_memory(plan) <= self.budget.memory_mb)

    # ---------------------------------------------------------------- decision
    def step(self, ctx: Context) -> Decision:
        self._eventful = self._audio_active(ctx)
        usable = self.healthy(ctx)
        if self.policy != "adaptive":
            mods = tuple(m for m in self.available if m in STATIC[self.policy] and m in usable)
            # static encoders; the LLM uses the best aligner set they allow (as mPnP switches by hand)
            plan = max((Plan(mods, self.n_blocks, 1.0, self.backend, n) for n in self.sets_for(mods, 1.0)),
                       key=lambda p: self.score(p, ctx))
            if plan == self.current:
                return Decision(plan, False, "", self.score(plan, ctx))
            why = f"static policy {self.policy}" + (f": lighting {ctx.lighting}" if self.current is not None else "")
            return self._switch(plan, why, ctx)
        options = [p for p in self.candidates(usable) if p.modalities]
        fitting = [p for p in options if self.fits(p)]
        if not fitting:
            # Keep serving what we can: the cheapest plan, and say that the budget cannot be met.
            plan = (min(options, key=lambda p: (self.costs.plan_latency(p), -self.score(p, ctx))) if options
                    else Plan((), self.n_blocks, 1.0, self.backend))
            if self.current in options and (self.costs.plan_latency(self.current)
                                            <= 1.2 * self.costs.plan_latency(plan)):
                plan = self.current  # not worth a switch for noise in the cost estimates
            reason = (f"no plan fits the budget ({self.budget.latency_ms:g} ms, {self.budget.memory_mb:g} MB): running "
                      f"the cheapest, {self.costs.plan_latency(plan):.0f} ms" if options else "no healthy sensor")
            return self._switch(plan, reason, ctx) if plan != self.current else Decision(plan, False, "", 0.0)
        best = max(fitting, key=lambda p: self.score(p, ctx))
        if self.current is None:
            return self._switch(best, "first plan", ctx)
        lost = [m for m in self.current.modalities if m not in usable]
        if lost:
            return self._switch(best, f"{', '.join(lost)} unhealthy (silent or dropping)", ctx)
        if not self.fits(self.current):
            self._over += 1
            if self._over >= self.dwell:  # sustained, not one slow frame
                self._over = 0
                return self._switch(best, "current plan over budget", ctx)
            return Decision(self.current, False, "", self.score(self.current, ctx))
        self._over = 0
        if best == self.current:
            self._pending = None
            return Decision(best, False, "", self.score(best, ctx))
        gain = self.score(best, ctx) - self.score(self.current, ctx)
        if gain < self.margin:
            self._pending = None
            return Decision(self.current, False, "", self.score(self.current, ctx))
        count = self._pending[1] + 1 if self._pending and self._pending[0] == best else 1
        self._pending = (best, count)
        if count < self.dwell:
            return Decision(self.current, False, "", self.score(self.current, ctx))
        return self._switch(best, self._why(best, ctx, gain), ctx)

    def _why(self, plan: Plan, ctx: Context, gain: float) -> str:
        added = [m for m in plan.modalities if m not in self.current.modalities]
        removed = [m for m in self.current.modalities if m not in plan.modalities]
        cues = [f"lighting {ctx.lighting}"]
        if ctx.glare_cameras:
            cues.append("glare on " + ", ".join(ctx.glare_cameras))
        if "audio" in added:
            cues.append(f"audio level {ctx.audio_level_db:.0f} dB")
        llm = f"LLM {self.current.aligners or 'none'} -> {plan.aligners or 'none'}" \
            if plan.aligners != self.current.aligners else ""
        change = ", ".join(x for x in (f"+{'+'.join(added)}" if added else "", f"-{'-'.join(removed)}" if removed else "",
                                       llm) if x) or "pruning"
        return f"{change}: {'; '.join(cues)}; expected quality +{gain:.3f}"

    def _switch(self, plan: Plan, reason: str, ctx: Context) -> Decision:
        self.current = plan
        self._pending = None
        return Decision(plan, True, reason, self.score(plan, ctx))
