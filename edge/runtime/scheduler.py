"""Which modality encoders to run and attach, how deep and how pruned: chosen from the context, every frame.

A plan is scored by the expected quality of what the runtime produces, read from measured per-condition tables
(the perception evaluation: BEV obstacle IoU within 5 m per modality subset and lighting; what a modality's own
output adds, as its plugin's plan-value model reads it from the same evaluation (edge.runtime.plan_value: audio's
event and direction accuracy); and, when an LLM answers, the held-out answer accuracy of each aligner set per
lighting), and must fit a latency and memory budget: the whole frame's latency at the budget's percentile, predicted
from per-stage cost distributions kept measured while running (edge.runtime.cost_model), keyed by backend and
thread count (the encoders' thread count is part of the plan). The static policies run what the plugins declare
(`policies`: the "camera" setup is every camera). The plan names the aligner set attached to the LLM, so a switch of
the LLM's connections is a plan change, logged with its reason like any other. Hysteresis keeps the plan from
flapping: a better plan must be there for `dwell` frames in a row, fit with headroom, and wait for the change rate
(`max_changes_per_min`, paced as a credit that every change spends, `ChangePacer`); a modality of the current plan
losing its sensor, or the current plan staying over budget, is acted on at once (and spends credit it then lacks).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edge.errors import EdgeError
from edge.modalities.interface import ModalityPlugin
from edge.modalities.registry import registry
from edge.names import POLICIES, BackendName, Policy
from edge.runtime.context import Context
from edge.runtime.cost_model import CostModel
from edge.runtime.plan_value import LIGHTINGS, PlanValue, Scene, build_values
from edge.runtime.stages import plan_keeps, settings

__all__ = ["AlignerSet", "Budget", "ChangePacer", "CostModel", "Decision", "Plan", "QualityTable", "Scheduler"]

MODALITIES: tuple[str, ...] = registry().names  # the installed modality plugins, in registry order
BEV_MODALITIES: tuple[str, ...] = registry().bev_names  # those fused into the BEV map (perception eval subsets)
# A plan left for running over budget is not chosen again voluntarily for TABU_S, doubled each time the same plan
# is left again (up to TABU_MAX_S): a fixed 15 s kept a plan near the budget's edge (the hindsight oracle's, issue 16)
# out for most of a drive after one overrun a passing load caused, while a plan that keeps overrunning is still held
# off ever longer.
TABU_S = 5.0
TABU_MAX_S = 60.0


def ban_s(times_before: int) -> float:
    """How long a ban lasts after `times_before` earlier ones of the same kind: TABU_S, doubled each time, capped."""
    return min(TABU_S * 2 ** times_before, TABU_MAX_S)

# Quality units (IoU, EM: 0..1) a plan predicted at the budget loses against one with the headroom to spare
# (Scheduler.edge_penalty): more than the camera's or a quiet audio stream's worth, less than a map's or an event's.
EDGE_PENALTY = 0.1

# Frames of its own over the budget that end a trial: the first frame of a newly started stage is often slow (as
# probes are: a stage run once after seconds idle), and one preempted frame is the machine's, not the plan's.
TRIAL_MISSES = 2
# Changes the pacing lets through back to back: a trial needs this much credit, as it may end in a forced change back.
BURST = 2


class ChangePacer:
    """The plan-change rate as a credit (a token bucket): `per_min` / 60 credits a second, at most `BURST` held,
    one spent by every change, forced ones included (they may leave it negative). A voluntary change waits until
    it can pay for itself, a trial until it can also pay for the forced change that may end it.

    Why not "at most `per_min` changes in the last minute": that window let 6 changes through within seconds and
    did not count the forced changes a voluntary one brings (a trial's end, a plan left over budget), so 10-40 s
    drives measured 8-31 changes a minute in steady conditions (issue 16, docs/runtime.md). Here, over any span of T seconds the
    changes are at most `BURST` + T x `per_min` / 60 plus the forced changes no voluntary one caused (a sensor
    lost, a load that comes). The first plan is not a change and spends nothing."""

    def __init__(self, per_min: int, clock: Callable[[], float]) -> None:
        if per_min < 1:
            raise EdgeError(f"configuration key 'max_plan_changes_per_min': {per_min!r}; give 1 or more")
        self.rate_s = per_min / 60.0
        self.clock = clock
        self.credit = float(min(BURST, per_min))
        self._at: float | None = None

    def _refill(self) -> float:
        now = self.clock()
        if self._at is not None:
            self.credit = min(float(BURST), self.credit + (now - self._at) * self.rate_s)
        self._at = now
        return self.credit

    def allows(self, cost: float = 1.0) -> bool:
        """Whether a voluntary change costing `cost` changes (2: a trial) can be paid now."""
        return self._refill() >= cost - 1e-9

    def spend(self) -> None:
        """A change happened (any kind)."""
        self._refill()
        self.credit -= 1.0


@dataclass(frozen=True)
class Plan:
    """What runs for a frame. `keep` is the plan's keep ratio, given to each of its modalities whose plugin declares
    several (`keep_ratios`: the camera's token pruning; `edge.runtime.stages.settings`); the plan JSON and
    report.json carry it as `camera_keep`, their historic name."""

    modalities: tuple[str, ...]  # encoders run
    n_blocks: int  # LLM blocks connected
    keep: float  # keep ratio of its modalities that declare several (1.0 when none does)
    backend: str = BackendName.EAGER
    aligners: str = ""  # the aligner set attached to the LLM ("" = none: the LLM answers from text alone)
    threads: int = 0  # intra-op threads of the encoders (0: the process default)

    def describe(self) -> str:
        mods = "+".join(self.modalities) or "none"
        pruned = "+".join(settings(self.modalities, self.keep))
        keep = f", {pruned} keep {self.keep:g}" if pruned else ""
        llm = f", LLM set {self.aligners}" if self.aligners else ""
        threads = f", {self.threads} thread{'s' if self.threads > 1 else ''}" if self.threads else ""
        return f"{mods}, N={self.n_blocks}{keep}{llm}, {self.backend}{threads}"


@dataclass(frozen=True)
class AlignerSet:
    """Aligners trained together (one run directory) and their measured answer accuracy per lighting."""

    name: str
    modalities: tuple[str, ...]
    accuracy: dict[str, float]  # lighting -> exact match in 0..1 on held-out drives; empty when not measured
    trained_lighting: tuple[str, ...] = ()
    keep: float = 1.0  # the keep ratio its aligners of modalities with several were trained with (camera pruning)

    def expected(self, lighting: str) -> float:
        if self.accuracy:
            if lighting in self.accuracy:
                return self.accuracy[lighting]
            return min(self.accuracy.values())  # dusk or unmeasured: the worse of what was measured
        # Not measured: rank by the conditions it was trained for only, far below any measured figure.
        return 0.01 if not self.trained_lighting or lighting in self.trained_lighting else 0.0

    def usable_with(self, plan_modalities: tuple[str, ...], keep: float) -> bool:
        """All its modalities run, and those with several keep ratios (if any) as pruned as in training."""
        return set(self.modalities) <= set(plan_modalities) and (
            not settings(self.modalities, keep) or keep == self.keep)


@dataclass
class QualityTable:
    """Measured accuracy per condition, from the perception evaluation (models/perception/eval.json): the BEV
    subsets' IoU, and each other output's accuracy (`figures`, what the plugins' plan-value models read)."""

    bev: dict[str, dict[str, float]]  # subset ("fisheye+ultrasonic", "fisheye", "ultrasonic") -> lighting -> IoU
    figures: dict[str, float]  # output ("audio_event", "camera_lighting", ...) -> accuracy
    source: str = ""

    @classmethod
    def from_perception_eval(cls, path: str | Path) -> "QualityTable":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            bev = {subset: {light: float(v["near5m_obstacle_iou"]) for light, v in rows.items()
                            if v.get("near5m_obstacle_iou") is not None}
                   for subset, rows in d["bev"].items()}
            figures = {key: float(v["accuracy"]) for key, v in d.items()
                       if key != "bev" and isinstance(v, dict) and v.get("accuracy") is not None}
            return cls(bev, figures, str(path))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise EdgeError(f"{path}: not a perception evaluation ({exc.__class__.__name__}: {exc})") from None

    def bev_quality(self, modalities: tuple[str, ...], lighting: str) -> float:
        subset = "+".join(m for m in BEV_MODALITIES if m in modalities)
        if not subset:
            return 0.0
        rows = self.bev.get(subset, {})
        return rows.get(lighting, rows.get("all", 0.0))


@dataclass(frozen=True)
class Budget:
    """What a frame may cost. `latency_ms` bounds the whole frame (context, planning, encoders, fusion, token
    hand-off) at the `percentile`-th percentile; answers run off the frame path under their own `answer_ms`
    (question taken to answer ready)."""

    latency_ms: float = 100.0  # per frame: 10 Hz
    memory_mb: float = 2048.0
    percentile: float = 95.0
    answer_ms: float = 1000.0

    def __post_init__(self) -> None:
        for key, v in (("budget_ms", self.latency_ms), ("budget_mb", self.memory_mb),
                       ("answer_budget_ms", self.answer_ms)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise EdgeError(f"configuration key '{key}': {v!r} is not a positive finite number")
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 50 <= p <= 100:
            raise EdgeError(f"configuration key 'budget_percentile': {p!r} is not a percentile in [50, 100]")


@dataclass(frozen=True)
class Decision:
    plan: Plan
    changed: bool
    reason: str
    score: float
    predicted_ms: float | None = None  # the plan's predicted frame latency at the budget percentile
    budget_miss: dict[str, Any] | None = None  # set while no plan fits: the budget, the cheapest plan, its cost


class Scheduler:
    """Chooses plans; `policy` = Policy.ADAPTIVE or a static baseline (Policy.CAMERA, Policy.ALL).

    Changes the scheduler is forced to make (first plan, a sensor lost, the current plan over budget for `dwell`
    frames) happen at once; changes for a better plan wait `dwell` frames, need the better plan to fit with
    `headroom` to spare (a band that keeps a plan near the budget from flapping in and out) and wait for the
    change rate's credit (`ChangePacer`: `max_changes_per_min`, forced changes counted)."""

    def __init__(self, quality: QualityTable, costs: CostModel, budget: Budget, available: tuple[str, ...],
                 n_blocks: int, policy: Policy | str = Policy.ADAPTIVE, dwell: int = 5, margin: float = 0.01,
                 quality_per_ms: float = 1e-3, aligner_sets: tuple[AlignerSet, ...] = (),
                 answer_weight: float = 1.0, backend: str = BackendName.EAGER, threads: tuple[int, ...] = (),
                 max_changes_per_min: int = 6, headroom: float = 0.1, fixed: Plan | None = None,
                 plugins: Iterable[ModalityPlugin] | None = None) -> None:
        if policy not in POLICIES:
            raise EdgeError(f"unknown scheduling policy '{policy}' ({', '.join(POLICIES)})")
        # the modality plugins it plans (tests hand it others), in registry order
        self.plugins = tuple(registry() if plugins is None else plugins)
        known = [p.name for p in self.plugins]
        unknown = set(available) - set(known)
        if unknown:
            raise EdgeError(f"unknown modalities {sorted(unknown)}; known: {', '.join(known)}")
        self.quality, self.costs, self.budget = quality, costs, budget
        self.available, self.n_blocks, self.policy = tuple(available), n_blocks, Policy(policy)
        self.dwell, self.margin, self.headroom = dwell, margin, headroom
        self.quality_per_ms = quality_per_ms  # what a millisecond of compute is worth in quality (IoU) units
        self.aligner_sets = {a.name: a for a in aligner_sets}
        self.backend = backend  # where the encoders' networks run (chosen at start-up; engines are built then)
        # intra-op thread counts a plan may use; the last is the one static policies run with
        self.threads = tuple(threads) or (costs.threads,)
        self.answer_weight = answer_weight  # answer exact match (0..1) against obstacle IoU (0..1): equal by default
        self.max_changes_per_min = max_changes_per_min
        # A plan held whatever the context and the load (its encoders, keep and threads; the LLM takes the best set
        # they allow, as for the static policies): the evaluation's hindsight oracle tries each such plan.
        self.fixed = fixed
        # what each modality's own output adds to a plan's score (its plugin's plan_value), in registry order
        self.values: dict[str, PlanValue] = build_values(self.plugins, quality.figures, quality.source)
        self.current: Plan | None = None
        self._pending: tuple[Plan, int] | None = None
        self._over = 0  # consecutive frames the current plan has been over budget
        self._pacer = ChangePacer(max_changes_per_min, costs.clock)
        self._tabu: dict[Plan, float] = {}  # plan -> clock time until which it is not re-chosen voluntarily
        self._left: dict[Plan, int] = {}  # plan -> times it was left over budget (its next tabu doubles)
        self._trial: Plan | None = None  # the current plan while it is on trial (chosen on its best case)
        # Failed trials ban trials of every plan (its neighbours share the slow stage) for TABU_S, doubling per failure
        self._failed_trials = 0
        self._no_trial_until = -math.inf
        self._predicted: dict[Plan, float | None] = {}  # memo of one step
        # candidate plans per (usable modalities, lighting): fixed for the scheduler's life (its sets, threads)
        self._candidates: dict[tuple[tuple[str, ...], str], list[Plan]] = {}
        self._scores: dict[Plan, float] = {}

    @property
    def adaptive(self) -> bool:
        """Whether plans follow the costs (the adaptive policy): static and fixed plans read no estimate."""
        return self.policy == Policy.ADAPTIVE and self.fixed is None

    @property
    def static_threads(self) -> int:
        """The thread count a static or fixed plan runs its encoders with."""
        return self.fixed.threads if self.fixed is not None and self.fixed.threads else self.threads[-1]

    # ---------------------------------------------------------------- scoring
    def score(self, plan: Plan, ctx: Context) -> float:
        """Expected usefulness of a plan's outputs in this context (higher is better): its BEV map, what its
        modalities' own outputs add (their plan-value models), the answers of its aligner set, less its compute."""
        lighting = ctx.lighting if ctx.lighting in LIGHTINGS else "night"
        value = self.quality.bev_quality(plan.modalities, lighting)
        scene = Scene(ctx, lighting, bool(self.aligner_sets))
        for name, model in self.values.items():
            if name in plan.modalities:
                value += model.value(plan.keep, scene)
        if plan.aligners in self.aligner_sets:
            value += self.answer_weight * self.aligner_sets[plan.aligners].expected(lighting)
        # Compute is not free: a plan must earn its (median) milliseconds (by default 10 ms for 0.01 IoU).
        value -= self.quality_per_ms * (self.costs.plan_latency(plan, 50.0) or 0.0)
        return value - self.edge_penalty(plan)

    def edge_penalty(self, plan: Plan) -> float:
        """What sitting near the budget costs: 0 with `headroom` to spare, rising linearly to EDGE_PENALTY at the
        budget (predicted at its percentile). Why: at 40 ms the best plans scored +0.015 for the camera and +0.03
        for audio without an event, which put them at the budget's edge; they measured over it every few seconds and
        the runtime moved on every time (0.89-0.92 of frames within the budget on the quiet machine, 8 forced
        changes in 20 s). A small quality is not worth a miss; a map or a sound event still is. Judged on the
        prediction, as every candidate is, except that the current plan pays nothing once its own frames (at least
        `dwell`) all met the budget (as `over_budget` spares it)."""
        if plan == self.current:
            worst = self.costs.frame_latency(plan, 100.0, min_frames=self.dwell)
            if worst is not None and worst <= self.budget.latency_ms:
                return 0.0
        ms = self.predicted(plan)
        if ms is None:
            return 0.0
        start = (1.0 - self.headroom) * self.budget.latency_ms
        return EDGE_PENALTY * min(1.0, max(0.0, (ms - start) / (self.budget.latency_ms - start)))

    def predicted(self, plan: Plan) -> float | None:
        """The plan's frame latency at the budget percentile (None: a stage of it was never measured)."""
        if plan not in self._predicted:
            self._predicted[plan] = self.costs.plan_latency(plan, self.budget.percentile)
        return self._predicted[plan]

    def _score(self, plan: Plan, ctx: Context) -> float:
        """score() memoised for one step (the costs and the context do not change within it)."""
        if plan not in self._scores:
            self._scores[plan] = self.score(plan, ctx)
        return self._scores[plan]

    def over_budget(self, plan: Plan) -> bool:
        """The current plan, judged on its own recent frames where it has 10 of them, else on prediction; but a
        plan whose own frames so far (at least `dwell`) all met the budget is not left on a prediction alone (a
        prediction built from a probe or two and borrowed tails had sent plans that met the budget away within
        half a second, issue 16)."""
        ms = self.costs.frame_latency(plan, self.budget.percentile)
        if ms is not None:
            return ms > self.budget.latency_ms
        if plan == self._trial:  # a trial is judged on its own frames alone: a second one over the budget ends it
            return self.costs.frames_over(plan, self.budget.latency_ms) >= TRIAL_MISSES
        worst = self.costs.frame_latency(plan, 100.0, min_frames=self.dwell)
        if worst is not None and worst <= self.budget.latency_ms:
            return False
        return not self.fits(plan)

    def tryable(self, plan: Plan) -> bool:
        """A plan that does not fit on its prediction, but would with headroom if its stages ran as fast as they
        ever measured (`CostModel.best_case`), whose median prediction is within the budget (only its tail is in
        doubt), and whose memory fits: worth a trial on its own frames.

        Why the median: a trial is chosen by score, and without it the best-scoring trial was a plan whose median
        was over the budget (fisheye + audio + camera under a 1-core hog at 40 ms, while a siren made audio worth
        most): it failed on its first 2 frames, and the pacing then left no credit to try the plan that would hold
        (ultrasonic alone), so the drive ran the camera alone (issue 16)."""
        best = self.costs.best_case(plan)
        median = self.costs.plan_latency(plan, 50.0)
        return (best is not None and best <= (1.0 - self.headroom) * self.budget.latency_ms
                and median is not None and median <= self.budget.latency_ms
                and self.costs.plan_memory(plan) <= self.budget.memory_mb)

    # ---------------------------------------------------------------- candidates
    def healthy(self, ctx: Context) -> tuple[str, ...]:
        return tuple(m for m in self.available if ctx.streams.get(m) is not None and ctx.streams[m].healthy)

    def candidates(self, usable: tuple[str, ...], lighting: str = "day") -> list[Plan]:
        """Every subset of the usable modalities, keep ratio (as their plugins declare: edge.runtime.stages.plan_keeps)
        and thread count, each with the aligner set measured best in this lighting among those it allows (the others
        cost the same and answer worse)."""
        light = lighting if lighting in ("day", "dusk", "night") else "night"
        if (usable, light) in self._candidates:
            return self._candidates[usable, light]
        plans = []
        for r in range(len(usable) + 1):
            for mods in itertools.combinations(usable, r):
                for keep in plan_keeps(mods):
                    sets = self.sets_for(mods, keep)
                    name = max(sets, key=lambda n: self.aligner_sets[n].expected(light) if n else 0.0)
                    plans += [Plan(tuple(mods), self.n_blocks, keep, self.backend, name, t) for t in self.threads]
        self._candidates[usable, light] = plans
        return plans

    def sets_for(self, modalities: tuple[str, ...], keep: float) -> list[str]:
        """The aligner sets the LLM can use with these encoders running ("" = none attached)."""
        return [""] + [n for n, a in self.aligner_sets.items() if a.usable_with(modalities, keep)]

    def static_modalities(self) -> tuple[str, ...]:
        """What a static policy runs: every modality (`all`), or those whose plugins declare the policy."""
        if self.policy == Policy.ALL:
            return tuple(p.name for p in self.plugins)
        return tuple(p.name for p in self.plugins if self.policy in p.policies)

    def fits(self, plan: Plan, share: float = 1.0) -> bool:
        """Predicted latency within `share` of the budget (never for an unmeasured stage), memory within its own."""
        ms = self.predicted(plan)
        return (ms is not None and ms <= share * self.budget.latency_ms
                and self.costs.plan_memory(plan) <= self.budget.memory_mb)

    # ---------------------------------------------------------------- decision
    def step(self, ctx: Context) -> Decision:
        self._predicted.clear()
        self._scores.clear()
        for model in self.values.values():
            model.observe(ctx)
        usable = self.healthy(ctx)
        if not self.adaptive:
            wanted = self.fixed.modalities if self.fixed is not None else self.static_modalities()
            keep = self.fixed.keep if self.fixed is not None else 1.0
            mods = tuple(m for m in self.available if m in wanted and m in usable)
            # static encoders; the LLM uses the best aligner set they allow (as mPnP switches by hand)
            plan = max((Plan(mods, self.n_blocks, keep, self.backend, n, self.static_threads)
                        for n in self.sets_for(mods, keep)), key=lambda p: self._score(p, ctx))
            if plan == self.current:
                return self._stay(ctx)
            name = "fixed plan" if self.fixed is not None else f"static policy {self.policy}"
            why = name + (f": lighting {ctx.lighting}" if self.current is not None else "")
            return self._switch(plan, why, ctx)
        options = [p for p in self.candidates(usable, ctx.lighting) if p.modalities]
        fitting = [p for p in options if self.fits(p)]
        if not fitting:
            return self._unmet(options, ctx)
        # With an LLM, a plan no aligner set can read (the LLM answers blind) only when nothing else fits.
        fitting = [p for p in fitting if p.aligners] or fitting
        best = max(fitting, key=lambda p: self._score(p, ctx))
        if self.current is None:
            return self._switch(best, "first plan", ctx)
        lost = [m for m in self.current.modalities if m not in usable]
        if lost:
            return self._switch(best, f"{', '.join(lost)} unhealthy (silent or dropping)", ctx)
        if not self.current.modalities:
            # Nothing ran (no sensor was healthy) and something can now: restored at once, as a forced change. Paced
            # like a voluntary one, the empty plan outlived the sensors' return by up to 10 s: a node behind by its
            # start-up calibration saw every stream as dropping for two frames, spent its credit on moving to the
            # ultrasonic and then to nothing, and published no map for 35 % of a 30 s drive (benchmarks/bench_dds.py).
            return self._switch(best, "sensors healthy again", ctx)
        roomy = [p for p in fitting if self.fits(p, 1.0 - self.headroom)]
        if self._trial is not None and (self._trial != self.current or (self.costs.frame_latency(
                self._trial, self.budget.percentile) is not None)):
            self._trial = None  # left, or 10 frames of its own: judged like any plan from now on
        if self.over_budget(self.current):
            self._over += 1
            if self._over >= (1 if self.current == self._trial else self.dwell):  # sustained, not one slow frame
                self._over = 0
                ran = self.costs.frame_latency(self.current, self.budget.percentile)
                ms, how = (ran, "measured") if ran is not None else (self.predicted(self.current), "predicted")
                over = f" ({how} {ms:.0f} ms at p{self.budget.percentile:g} > {self.budget.latency_ms:g} ms)" \
                    if ms is not None else ""
                if self.current == self._trial and ran is None:
                    n, of = self.costs.frames_over(self.current, self.budget.latency_ms), \
                        self.costs.frames_run(self.current)
                    over = f" (on trial: {n} of its {of} frames over {self.budget.latency_ms:g} ms)"
                # To the best plan that is cheaper (a dearer one would not do better on this machine now), not
                # banned while another will do (a plan that overruns again is banned longer each time), and drawn
                # from:
                # - for an overshoot within the headroom (measured, or predicted while the plan has few frames), the
                #   plans with the headroom: plans that merely fit sit at the same edge, and moving among them only
                #   flapped (at 15 ms the camera's keep ratios and thread counts cost the same; docs/runtime.md has
                #   the evaluation before and after);
                # - for a larger one, or a failed trial, every plan that fits: at 40 ms every plan with a map sits
                #   within 10 % of the budget, and leaving for the roomy ones alone put the runtime on the camera
                #   and audio, with no map, for the rest of the drive (issue 16).
                # And one that would meet the budget where this one's frames did not: its prediction plus what this
                # plan's frames measured over their own prediction (the load on every stage at once, which adding
                # tails in quadrature leaves out). Moving among cheap plans that save less than that only flaps: on
                # the loaded 2-core machine, audio + camera measured 102 ms at p95 (budget 100) -> audio alone,
                # then 129 ms (h22-before).
                now = self.costs.plan_latency(self.current, 50.0) or math.inf
                expected = self.predicted(self.current)
                under = max(0.0, ran - expected) if ran is not None and expected is not None else 0.0
                small = ms is not None and ms - self.budget.latency_ms <= self.headroom * self.budget.latency_ms
                pool = roomy if small and self.current != self._trial else fitting
                cheaper = [p for p in pool if p != self.current and (
                    self.current == self._trial or ((self.costs.plan_latency(p, 50.0) or math.inf) < now and (
                        self.predicted(p) or math.inf) + under <= self.budget.latency_ms))]
                if cheaper:
                    # not straight back to a plan itself left over budget a moment ago, while another will do
                    clock = self.costs.clock()
                    cheaper = [p for p in cheaper if self._tabu.get(p, -math.inf) <= clock] or cheaper
                    target = max(cheaper, key=lambda p: self._score(p, ctx))
                    if self.current == self._trial:  # a failed trial: no trial of any plan for a while either
                        self._failed_trials += 1
                        self._no_trial_until = self.costs.clock() + ban_s(self._failed_trials - 1)
                    self._ban(self.current)
                    return self._switch(target, "current plan over budget" + over, ctx)
            return self._stay(ctx)
        self._over = 0
        # A voluntary change: only to a plan that fits with headroom, that is not banned for having been left over
        # budget (the load that pushed it out may still be there: `_ban`), and not more often than the rate allows.
        now = self.costs.clock()
        roomy = [p for p in roomy if self._tabu.get(p, -math.inf) <= now]
        # Trials: a plan whose prediction rests on probes (stages it does not run) may be better than they say.
        # Only one better than every roomy plan is tried, judged on its own frames (TRIAL_MISSES over budget end it
        # and ban it, 5 s, 10 s, ...), so a failed trial costs about two frames over budget.
        roomy_ids = set(roomy)
        trials = [p for p in options if p not in roomy_ids and p != self.current
                  and self._tabu.get(p, -math.inf) <= now and self.tryable(p)] if now >= self._no_trial_until else []
        best = max(roomy + trials + [self.current], key=lambda p: self._score(p, ctx))
        if best == self.current:
            self._pending = None
            return self._stay(ctx)
        gain = self._score(best, ctx) - self._score(self.current, ctx)
        if gain < self.margin:
            self._pending = None
            return self._stay(ctx)
        # counted while *a* plan beats the current one by the margin, not the same one: near-equal candidates (the
        # camera's keep ratios, with or without audio) trade places with the estimates' noise from frame to frame,
        # and requiring one of them to lead `dwell` frames in a row kept a better plan out indefinitely
        count = self._pending[1] + 1 if self._pending else 1
        self._pending = (best, count)
        trial = best not in roomy_ids
        # Getting the map back (the current plan runs no BEV modality, a roomy one does) waits for the dwell and the
        # bans but not for the change credit: paced, a plan left over budget for a mapless one at 40 ms kept the
        # obstacle map off for the last 12 of a 20 s drive (2 of 3 runs without the hog at 0.37-0.40 of the
        # oracle's IoU, docs/runtime.md, 7 Dec 2026 evening). A roomy plan fits with headroom, and the plan left over
        # budget is banned (longer each time), so this cannot flap faster than the bans allow.
        restores_map = not trial and self._maps(best) and not self._maps(self.current)
        if count < self.dwell or not (restores_map or self._pacer.allows(BURST if trial else 1.0)):
            return self._stay(ctx)
        d = self._switch(best, self._why(best, ctx, gain) + ("; on trial: predicted over the budget from probes, "
                                                             "judged on its own frames" if trial else ""), ctx)
        self._trial = best if trial else None
        return d

    def _unmet(self, options: list[Plan], ctx: Context) -> Decision:
        """No plan fits: keep serving the cheapest measured plan, and say which and by how much."""
        known = [p for p in options if self.predicted(p) is not None]
        if not known:
            plan = Plan((), self.n_blocks, 1.0, self.backend, "", self.threads[-1])
            why = "no healthy sensor" if not options else "no stage of the healthy sensors measured yet"
            return self._stay(ctx) if plan == self.current else self._switch(plan, why, ctx)
        plan = min(known, key=lambda p: (self.predicted(p), -self._score(p, ctx)))
        cheapest, cheapest_ms = plan, self.predicted(plan)
        b = self.budget
        miss = {"budget_ms": b.latency_ms, "percentile": b.percentile, "memory_mb": b.memory_mb,
                "cheapest_plan": cheapest.describe(), "cheapest_ms": round(cheapest_ms, 2),
                "cheapest_memory_mb": round(self.costs.plan_memory(cheapest), 1)}
        if self.current in known and not (self.current == self._trial and self.over_budget(self.current)):
            # which plan is cheapest flips with noise in the estimates: move only for a sustained, clear gap
            # (a trial over the budget is left at once, here as when other plans fit)
            self._over = self._over + 1 if self.predicted(self.current) > 1.5 * cheapest_ms else 0
            if self._over < self.dwell:
                return Decision(self.current, False, "", self._score(self.current, ctx),
                                self.predicted(self.current), miss)
            self._over = 0
        reason = (f"no plan fits the budget ({b.latency_ms:g} ms at p{b.percentile:g}, {b.memory_mb:g} MB): the "
                  f"cheapest is {cheapest.describe()}, predicted {cheapest_ms:.1f} ms and "
                  f"{self.costs.plan_memory(cheapest):.0f} MB; running it")
        d = self._switch(plan, reason, ctx)
        return Decision(d.plan, True, reason, d.score, d.predicted_ms, miss)

    @staticmethod
    def _maps(plan: Plan) -> bool:
        """Whether the plan makes an obstacle map (runs a BEV modality)."""
        return any(m in BEV_MODALITIES for m in plan.modalities)

    def _ban(self, plan: Plan) -> None:
        """Keep a plan left over budget out of voluntary changes: TABU_S, doubled for each earlier time it was left."""
        n = self._left.get(plan, 0)
        self._left[plan] = n + 1
        self._tabu[plan] = self.costs.clock() + ban_s(n)

    def _stay(self, ctx: Context) -> Decision:
        plan = self.current
        assert plan is not None
        return Decision(plan, False, "", self._score(plan, ctx), self.predicted(plan))

    def _why(self, plan: Plan, ctx: Context, gain: float) -> str:
        assert self.current is not None
        added = [m for m in plan.modalities if m not in self.current.modalities]
        removed = [m for m in self.current.modalities if m not in plan.modalities]
        cues = [f"lighting {ctx.lighting}"]
        if ctx.glare_cameras:
            cues.append("glare on " + ", ".join(ctx.glare_cameras))
        cues += [cue for m in added if m in self.values and (cue := self.values[m].cue(ctx))]
        llm = f"LLM {self.current.aligners or 'none'} -> {plan.aligners or 'none'}" \
            if plan.aligners != self.current.aligners else ""
        threads = f"threads {self.current.threads} -> {plan.threads}" if plan.threads != self.current.threads else ""
        change = ", ".join(x for x in (f"+{'+'.join(added)}" if added else "", f"-{'-'.join(removed)}" if removed else "",
                                       llm, threads) if x) or "pruning"
        return f"{change}: {'; '.join(cues)}; expected quality +{gain:.3f}"

    def _switch(self, plan: Plan, reason: str, ctx: Context) -> Decision:
        if self.aligner_sets and plan.modalities and not plan.aligners:
            reason += "; the LLM answers from text alone: no plan an aligner set can read fits"
        if self.current is not None:  # the first plan is not a change
            self._pacer.spend()
        self.current = plan
        self._pending = None
        return Decision(plan, True, reason, self._score(plan, ctx), self.predicted(plan))
