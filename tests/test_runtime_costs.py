"""The cost model: distributions per (stage, backend, threads), preemption, ageing and re-measurement; the budget's
configuration errors. A fake clock throughout: no sleeps, no timing assertions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from edge.errors import ConfigError, EdgeError
from edge.runtime.context import CameraHealth, Context, StreamHealth
from edge.runtime.cost_model import CostModel, preempted
from edge.runtime.scheduler import Budget, Plan, QualityTable, Scheduler

EVAL = Path(__file__).resolve().parents[1] / "models" / "perception" / "eval.json"
ALL = ("fisheye", "ultrasonic", "audio", "camera")
QUIET = {"fisheye": 30.0, "ultrasonic": 5.0, "fusion": 10.0, "audio": 4.0, "camera@1": 40.0, "camera@0.5": 25.0,
         "camera@0.25": 18.0}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def ctx(lighting: str = "day") -> Context:
    ok = StreamHealth(True, 0.0, 0.0)
    return Context(0, {"camera/front": CameraHealth(True, 0.5, 2.0, 0.0)}, {m: ok for m in ALL}, -40.0, 3.0, lighting)


def test_preemption_is_wall_time_far_above_cpu_time() -> None:
    assert preempted(500.0, 30.0) and not preempted(31.0, 30.0) and not preempted(3.0, 1.5)
    assert not preempted(500.0, None)  # without a CPU clock nothing is claimed


def test_calibration_drops_preempted_repeats_while_a_clean_one_remains() -> None:
    c = CostModel(clock=Clock())
    assert c.calibrate("fisheye", [(505.0, 28.0), (27.0, 26.5), (29.0, 28.0)]) == [27.0, 29.0]
    assert c.p50("fisheye") == 27.0 and c.stats()["fisheye/eager/1"]["preempted"] == 1
    # every repeat preempted: what was measured is all there is (and it is re-measured like any estimate)
    assert c.calibrate("ultrasonic", [(400.0, 5.0), (380.0, 5.0)]) == [400.0, 380.0]


def test_costs_are_keyed_by_backend_and_thread_count() -> None:
    c = CostModel(clock=Clock())
    c.observe("fisheye", 9.0, threads=1)
    c.observe("fisheye", 640.0, threads=2)
    c.observe("fisheye", 8.0, backend="onnxruntime", threads=2)
    assert c.p50("fisheye", threads=1) == 9.0 and c.p50("fisheye", threads=2) == 640.0
    assert c.p50("fisheye", "onnxruntime", 2) == 8.0 and not c.measured("fisheye", "onnxruntime", 1)
    plan = Plan(("fisheye",), 0, 1.0, "eager", threads=1)
    assert c.plan_latency(plan) == 9.0 and c.plan_latency(Plan(("camera",), 0, 1.0, threads=1)) is None


def test_plan_latency_adds_medians_and_tails_in_quadrature() -> None:
    c = CostModel(clock=Clock())
    for name, (mid, tail) in {"fisheye": (30.0, 33.0), "ultrasonic": (5.0, 9.0), "fusion": (10.0, 10.0)}.items():
        for _ in range(19):
            c.observe(name, mid)
        c.observe(name, tail)  # the 20th sample, the 95th percentile of 20 is the 19th
    plan = Plan(("fisheye", "ultrasonic"), 0, 1.0)
    assert c.plan_latency(plan, 50) == 45.0
    for name in ("fisheye", "ultrasonic"):
        c.observe(name, QUIET[name] + (3.0 if name == "fisheye" else 4.0))  # now 2 of 21: p95 moves
    assert c.plan_latency(plan) == pytest.approx(45.0 + math.hypot(3.0, 4.0))


def test_a_stage_probed_a_few_times_borrows_the_tail_the_load_puts_on_the_stages_that_run() -> None:
    c = CostModel(clock=Clock())
    for _ in range(10):  # what runs every frame: p95 twice the median (a loaded machine)
        c.observe("audio", 4.0)
        c.observe("camera@1", 10.0)
    for _ in range(10):
        c.observe("audio", 8.0)
        c.observe("camera@1", 20.0)
    assert c.contention(95) == 1.0
    c.observe("fisheye", 30.0)  # one probe: its own spread is 0
    assert c.plan_latency(Plan(("fisheye",), 0, 1.0)) == 30.0 + 30.0 * 1.0
    for _ in range(9):
        c.observe("fisheye", 30.0)  # measured enough: its own (zero) spread is trusted
    assert c.plan_latency(Plan(("fisheye",), 0, 1.0)) == 30.0


def test_estimates_age_and_the_oldest_due_stage_is_re_measured_within_the_bound() -> None:
    clock = Clock()
    c = CostModel(clock=clock, max_age_s=5.0)
    c.calibrate("fisheye", [(500.0, 500.0)] * 3)  # slow at start-up, and not visibly preempted
    c.calibrate("audio", [(4.0, 4.0)] * 3)
    keys = [("fisheye", "eager", 1), ("audio", "eager", 1)]
    clock.t = 2.4
    assert c.due(keys, slack_ms=1000.0) is None  # younger than half the bound
    clock.t = 2.6
    assert c.due(keys, slack_ms=60.0) == ("audio", "eager", 1)  # fisheye's 500 ms does not fit the slack
    c.observe("audio", 4.0)
    clock.t = 5.0
    assert c.due(keys, slack_ms=0.0) == ("fisheye", "eager", 1)  # at the bound: re-measured whatever the slack
    c.observe("fisheye", 28.0)
    assert c.p50("fisheye") == 28.0 and c.age_s("fisheye") == 0.0  # the stale start-up samples left the window


def test_scheduler_recovers_a_component_once_its_slow_estimate_is_re_measured() -> None:
    clock = Clock()
    c = CostModel(clock=clock, max_age_s=5.0)
    for name, ms in QUIET.items():
        c.calibrate(name, [(ms, ms)] * 3)
    c.calibrate("fisheye", [(505.0, 505.0)] * 3)
    s = Scheduler(QualityTable.from_perception_eval(EVAL), c, Budget(100.0), ALL, 0, dwell=2)
    first = s.step(ctx())
    assert "fisheye" not in first.plan.modalities
    keys = [(n, "eager", 1) for n in QUIET]
    plans, probed_at = [], None
    for i in range(1, 80):  # 10 Hz of a fake clock
        clock.t = i * 0.1
        for name in s.costs.components(s.current.modalities, s.current.keep):
            c.observe(name, QUIET[name])  # what runs is measured every frame
        due = c.due(keys, slack_ms=100.0 - 60.0)
        if due is not None:
            c.observe(due[0], QUIET[due[0]])  # a probe after the frame measures the truth
            probed_at = clock.t if due[0] == "fisheye" and probed_at is None else probed_at
        plans.append((clock.t, s.step(ctx()).plan))
    assert probed_at is not None and probed_at <= 5.0
    back = [t for t, p in plans if "fisheye" in p.modalities]
    assert back and back[0] <= probed_at + 0.3  # chosen within the dwell after the probe


def test_plan_changes_are_bounded_per_minute_but_forced_changes_are_not() -> None:
    clock = Clock()
    c = CostModel(clock=clock)
    for name, ms in QUIET.items():
        c.calibrate(name, [(ms, ms)] * 3)
    s = Scheduler(QualityTable.from_perception_eval(EVAL), c, Budget(100.0), ALL, 0, dwell=1,
                  max_changes_per_min=2)
    s.step(ctx("day"))
    changes = 0
    for i in range(1, 120):  # lighting flips every frame: every voluntary change is worth making
        clock.t = i * 0.1
        changes += s.step(ctx("day" if i % 2 else "night")).changed
    assert changes == 2  # the burst the credit holds (the first plan is not a change), then 2 a minute
    silent = Context(0, {}, {m: StreamHealth(m != "ultrasonic", 0.0 if m != "ultrasonic" else 0.6, 0.0) for m in ALL},
                     -40.0, 0.0, "night")  # the ultrasonic ring silent for 0.6 s
    assert "ultrasonic" in s.current.modalities
    assert s.step(silent).changed  # losing a sensor is acted on at once, whatever the rate
    clock.t += 60.0
    assert any(s.step(ctx("day" if i % 2 else "night")).changed for i in range(3))  # a minute later: free again


@pytest.mark.parametrize("value", [0, -5, float("nan"), float("inf")])
def test_a_bad_budget_is_a_configuration_error_naming_the_key(value: float, tmp_path: Path) -> None:
    with pytest.raises(EdgeError, match="'budget_ms'"):
        Budget(latency_ms=value)
    with pytest.raises(EdgeError, match="'answer_budget_ms'"):
        Budget(answer_ms=value)
    with pytest.raises(EdgeError, match="'budget_percentile'"):
        Budget(percentile=40.0)
    from edge.config import load_yaml_model
    from edge.config import RuntimeConfig

    bad = tmp_path / "run.yaml"
    bad.write_text(f"budget_ms: {'.nan' if math.isnan(value) else '.inf' if math.isinf(value) else value}\n")
    with pytest.raises(ConfigError, match="key 'budget_ms'"):
        load_yaml_model(bad, RuntimeConfig)


def test_a_plan_left_over_budget_is_not_re_chosen_voluntarily_until_its_tabu_ends() -> None:
    from edge.runtime.scheduler import TABU_S

    clock = Clock()
    c = CostModel(clock=clock)
    for name, ms in QUIET.items():
        c.calibrate(name, [(ms, ms)] * 3)
    s = Scheduler(QualityTable.from_perception_eval(EVAL), c, Budget(100.0), ALL, 0, dwell=2)
    first = s.step(ctx()).plan
    assert "fisheye" in first.modalities

    def frames(n: int, fisheye_ms: float) -> list:
        out = []
        for _ in range(n):
            clock.t += 0.1
            for name in c.components(("fisheye", "ultrasonic", "audio"), 1.0) + ["camera@1"]:
                c.observe(name, fisheye_ms if name == "fisheye" else QUIET[name])
            out.append(s.step(ctx()))
        return out

    slow = frames(25, 500.0)  # the load makes fisheye slow: the plan is left at once after the dwell
    left = [d for d in slow if d.changed]
    assert left and left[0].reason.startswith("current plan over budget") and "fisheye" not in s.current.modalities
    t_left = clock.t - 0.1 * (len(slow) - 1 - slow.index(left[0]))
    fast = frames(int(TABU_S / 0.1) + 80, 30.0)  # the load goes (the two forced changes spent the pacing credit)
    times = [clock.t - 0.1 * (len(fast) - 1 - i) for i in range(len(fast))]
    assert all(d.plan != first for t, d in zip(times, fast) if t < t_left + TABU_S)  # not before its tabu ended
    assert any("fisheye" in d.plan.modalities for d in fast)  # fisheye itself comes back once measured fast


def test_one_preempted_sample_among_ten_to_nineteen_does_not_set_the_tail() -> None:
    c = CostModel(clock=Clock())
    for ms in [30.0] * 11 + [250.0]:  # 12 frames of a plan just started, one of them preempted
        c.observe("fisheye", ms)
    assert c.quantile("fisheye", 95) == 30.0  # inverted_cdf took the maximum of anything under 20: 250
    c.observe("fisheye", 240.0)  # two in 13 is a tail, not one outlier
    assert c.quantile("fisheye", 95) == 240.0
    few = CostModel(clock=Clock())
    for ms in (30.0, 31.0, 90.0):
        few.observe("fisheye", ms)
    assert few.quantile("fisheye", 95) == 90.0 and few.p50("fisheye") == 31.0  # under 10: the maximum; medians
    # as before


def test_contention_weighs_each_stage_by_its_milliseconds() -> None:
    # a preempted slice adds milliseconds whatever the stage: a 4 ms stage shows a large ratio, a 40 ms one a small
    c = CostModel(clock=Clock())
    for i in range(20):
        c.observe("camera@1", 12.0 if i >= 17 else 4.0)  # 3 in 20 at 12: p95 12, spread 8 (ratio 2)
    for i in range(20):
        c.observe("ultrasonic", 50.0 if i >= 17 else 40.0)  # spread 10 (ratio 0.25)
    for i in range(20):
        c.observe("overhead", 6.0 if i >= 17 else 2.0, threads=0)  # spread 4 (ratio 2)
    # the median ratio was 2.0; the overhead (its own tail already in every plan) is left out
    assert c.contention(95) == pytest.approx((8.0 + 10.0) / (4.0 + 40.0))
    c.observe("fisheye", 35.0)  # one probe borrows that tail
    assert c.plan_latency(Plan(("fisheye",), 0, 1.0)) == pytest.approx(
        35.0 + 2.0 + math.hypot(35.0 * c.contention(95), 4.0))


def test_a_new_plan_whose_own_frames_meet_the_budget_is_not_left_on_a_prediction_alone() -> None:
    clock = Clock()
    c = CostModel(clock=clock)
    for name, ms in QUIET.items():
        c.calibrate(name, [(ms, ms)] * 3)
    s = Scheduler(QualityTable.from_perception_eval(EVAL), c, Budget(100.0), ALL, 0, dwell=3)
    plan = s.step(ctx()).plan
    assert "fisheye" in plan.modalities

    def frames(n: int, frame_ms: float) -> list:
        out = []
        for i in range(n):
            clock.t += 0.1
            for name in c.components(plan.modalities, plan.keep):
                c.observe(name, QUIET[name])
            c.observe_frame(plan, frame_ms)
            if i == 0:
                c.observe("fisheye", 150.0)  # one slow re-measurement (another job had the core): under 10, the tail
            out.append(s.step(ctx()))
        return out

    kept = frames(5, 70.0)
    assert s.predicted(plan) > 100.0  # the prediction says over budget ...
    assert not any(d.changed for d in kept) and s.current == plan  # ... the plan's own 5 frames (max 70 ms) do not
    s2 = Scheduler(QualityTable.from_perception_eval(EVAL), c, Budget(100.0), ALL, 0, dwell=3)
    s2.current = plan  # a plan whose own frames miss the budget is left after the dwell, as before
    for _ in range(3):
        clock.t += 0.1
        c.observe_frame(plan, 130.0)
    c.observe("fisheye", 150.0)
    left = [s2.step(ctx()) for _ in range(3)]
    assert [d.changed for d in left] == [False, False, True] and left[-1].reason.startswith("current plan over budget")


def test_a_plan_left_over_budget_again_is_banned_twice_as_long() -> None:
    from edge.runtime.scheduler import TABU_S

    clock = Clock()
    c = CostModel(clock=clock)
    for name, ms in QUIET.items():
        c.calibrate(name, [(ms, ms)] * 3)
    s = Scheduler(QualityTable.from_perception_eval(EVAL), c, Budget(100.0), ("fisheye", "audio"), 0, dwell=2,
                  max_changes_per_min=60)
    first = s.step(ctx()).plan
    assert first.modalities == ("fisheye", "audio")

    def frames(seconds: float, fisheye_ms: float) -> list[tuple[float, Plan, bool]]:
        out = []
        for _ in range(round(seconds / 0.1)):
            clock.t += 0.1
            for name in ("fisheye", "audio"):
                c.observe(name, fisheye_ms if name == "fisheye" else QUIET[name])
            d = s.step(ctx())
            out.append((clock.t, d.plan, d.changed))
        return out

    def left_at(run: list) -> float:
        return next(t for t, p, ch in run if ch and "fisheye" not in p.modalities)

    def back_at(run: list) -> float:
        return next(t for t, p, _ in run if p == first)

    # fisheye alone (not banned) comes back once its estimate is fast again; the plan that was left waits its ban
    t1 = left_at(frames(0.5, 500.0))
    t2 = back_at(frames(10.0, 30.0))
    assert t1 + TABU_S <= t2 <= t1 + TABU_S + 0.5  # back soon after its first ban (a fixed 15 s kept it out)
    t3 = left_at(frames(0.5, 500.0))
    t4 = back_at(frames(20.0, 30.0))
    assert t3 + 2 * TABU_S <= t4 <= t3 + 2 * TABU_S + 0.5  # left again: banned twice as long


def test_a_plan_known_only_from_slow_probes_is_tried_and_judged_on_its_own_frames() -> None:
    clock = Clock()
    c = CostModel(clock=clock)
    for name, ms in QUIET.items():
        c.calibrate(name, [(ms, ms)] * 3)  # fisheye ran at 30 ms at start-up ...
    s = Scheduler(QualityTable.from_perception_eval(EVAL), c, Budget(100.0), ("fisheye", "audio"), 0, dwell=2,
                  max_changes_per_min=60)  # trials, not the change rate, are under test here
    s.current = Plan(("audio",), 0, 1.0, "eager", "", 1)
    clock.t = 3.0

    def probes() -> None:  # two probes after frames (they retire the start-up ones): 30 ms, then a slow 150
        c.observe("fisheye", 30.0)
        c.observe("fisheye", 150.0)

    probes()  # ... so its tail is in doubt, its median (30 ms) is not
    assert not s.fits(Plan(("fisheye", "audio"), 0, 1.0, "eager", "", 1))

    def frames(n: int, frame_ms: float) -> list:
        out = []
        for _ in range(n):
            clock.t += 0.1
            c.observe("audio", 4.0)
            if "fisheye" in s.current.modalities:
                c.observe("fisheye", frame_ms - 4.0)
            c.observe_frame(s.current, frame_ms)
            out.append(s.step(ctx()))
        return out

    tried = [d for d in frames(3, 20.0) if d.changed]
    assert len(tried) == 1 and "fisheye" in tried[0].plan.modalities and "on trial" in tried[0].reason
    trial = s.current
    assert not any(d.changed for d in frames(12, 40.0))  # its frames meet the budget: kept, then judged as usual
    assert s.current == trial and s.fits(trial)  # now measured inside frames, its prediction fits
    s2 = Scheduler(QualityTable.from_perception_eval(EVAL), c, Budget(100.0), ("fisheye", "audio"), 0, dwell=2,
                   max_changes_per_min=60)
    s2.current = Plan(("audio",), 0, 1.0, "eager", "", 1)
    clock.t += 3.0
    probes()
    s = s2
    assert "on trial" in [d for d in frames(3, 20.0) if d.changed][0].reason
    left = frames(3, 130.0)  # its second frame over the budget ends the trial, at once (the first may be warm-up)
    assert not left[0].changed and left[1].changed and left[1].reason.startswith("current plan over budget")
    assert "fisheye" not in s.current.modalities
    assert not any(d.changed for d in frames(20, 20.0))  # and it is banned for a while (5 s)
    clock.t += 10.0
    probes()
    again = [d for d in frames(3, 20.0) if d.changed][0]
    assert "on trial" in again.reason
    c.observe("audio", 150.0)  # the load rises: now nothing fits on prediction ...
    left = frames(2, 130.0)  # ... and the trial, over the budget, is still left at once, for the cheapest plan
    assert left[1].changed and "no plan fits" in left[1].reason and s.current != again.plan


def test_plan_changes_are_paced_and_forced_changes_spend_the_same_credit() -> None:
    """The rate is a credit, not a count per last minute: the old window let `max_changes_per_min` changes through
    within a second and did not make room for the forced changes voluntary ones bring."""
    from edge.runtime.scheduler import BURST

    clock = Clock()
    c = CostModel(clock=clock)
    for name, ms in QUIET.items():
        c.calibrate(name, [(ms, ms)] * 3)
    s = Scheduler(QualityTable.from_perception_eval(EVAL), c, Budget(100.0), ALL, 0, dwell=1, max_changes_per_min=6)
    s.step(ctx("day"))

    def flip(seconds: float) -> list[float]:
        """The lighting flips every frame: every voluntary change is worth making. Times of the changes."""
        out = []
        for _ in range(round(seconds / 0.1)):
            clock.t += 0.1
            if s.step(ctx("day" if round(clock.t * 10) % 2 else "night")).changed:
                out.append(clock.t)
        return out

    times = flip(30.0)
    assert len([t for t in times if t < 10.0]) <= BURST  # the window let all 6 through in the first second
    assert len(times) <= BURST + 3  # at most the burst plus 6 a minute over the 30 s
    assert all(b - a >= 10.0 - 1e-6 for a, b in zip(times[BURST:], times[BURST + 1:]))  # then one per 10 s
    while not flip(0.1):  # up to the next paced change: it spent the credit that had come back
        pass
    t_paced = clock.t
    silent = Context(0, {}, {m: StreamHealth(m != "ultrasonic", 0.0 if m != "ultrasonic" else 0.6, 0.0) for m in ALL},
                     -40.0, 0.0, "night")  # the ultrasonic ring silent for 0.6 s
    assert "ultrasonic" in s.current.modalities
    assert s.step(silent).changed  # a lost sensor is acted on at once, without credit: it leaves a debt
    waited = flip(30.0)
    assert waited and waited[0] >= t_paced + 20.0 - 0.2  # the next voluntary change waited for the debt too


def test_a_plan_over_budget_is_left_only_for_one_that_would_save_its_overshoot() -> None:
    """Frames that measure far above their plan's prediction (the machine's load on every stage at once) are as far
    above it on a cheaper plan: leaving for one that saves less than the overshoot only flaps."""

    def run(frame_ms: float) -> list:
        clock = Clock()
        c = CostModel(clock=clock)
        for name, ms in QUIET.items():
            c.calibrate(name, [(ms, ms)] * 3)
        s = Scheduler(QualityTable.from_perception_eval(EVAL), c, Budget(100.0), ("audio", "camera"), 0, dwell=2)
        s.current = Plan(("audio", "camera"), 0, 0.25, "eager", "", 1)  # predicted 22 ms
        out = []
        for _ in range(15):
            clock.t += 0.1
            c.observe("audio", 4.0)
            c.observe("camera@0.25", 18.0)
            c.observe_frame(s.current, frame_ms)
            out.append(s.step(ctx()))
        return out

    assert not any(d.changed for d in run(160.0))  # 138 ms over its prediction: audio alone (4 ms) would be 142
    left = [d for d in run(110.0) if d.changed]  # 88 over: audio alone (4 ms) would be 92, within the budget
    assert left and left[0].reason.startswith("current plan over budget") and left[0].plan.modalities == ("audio",)


def test_a_probe_is_recorded_as_it_would_take_inside_a_frame() -> None:
    c = CostModel(clock=Clock())
    assert c.observe_probe("fisheye", 90.0, 30.0) == 90.0  # no frame timed yet: its wall time as it is
    for _ in range(10):  # frames on 1 thread: stages take 1.5x their CPU time (the load)
        c.observe_inside("audio", 6.0, 4.0)
    assert c.inside_ratio(1) == pytest.approx(1.5) and c.inside_ratio(2) is None
    assert c.observe_probe("fisheye", 90.0, 30.0) == pytest.approx(45.0)  # preempted after the frame: 3x
    assert c.p50("fisheye") == pytest.approx(45.0)
    assert c.observe_probe("fisheye", 30.0, 30.0) == pytest.approx(45.0)  # also when it ran faster than frames do
    assert c.observe_probe("fisheye", 90.0, 30.0, threads=2) == 90.0  # no frame at 2 threads: as measured


def test_contention_leaves_out_the_overhead() -> None:
    # in a run's first frames the overhead is the only key measured 10 times: it alone set the ratio (1.1 on the
    # quiet machine), which lent a probed fisheye a tail as long as itself and kept the 40 ms budget's best plan out
    c = CostModel(clock=Clock())
    for i in range(20):
        c.observe("overhead", 12.0 if i >= 17 else 5.0, threads=0)
    assert c.contention(95) == 0.0
    for ms in (25.0, 26.0, 27.0):
        c.observe("fisheye", ms)
    assert c.plan_latency(Plan(("fisheye",), 0, 1.0)) == pytest.approx(26.0 + 5.0 + math.hypot(1.0, 7.0))


def test_a_plan_over_budget_is_left_for_the_best_plan_that_fits_not_only_for_one_with_headroom() -> None:
    """At 40 ms every plan with a map sits within 10 % of the budget: leaving only for plans with headroom put the
    runtime on the camera and audio, with no map, for the rest of the drive (issue 16)."""
    clock = Clock()
    c = CostModel(clock=clock)
    for name, ms in {"fisheye": 33.0, "audio": 6.0, "camera@1": 12.0, "camera@0.5": 11.0, "camera@0.25": 10.0}.items():
        c.calibrate(name, [(ms, ms)] * 3)
    for _ in range(3):
        c.observe("overhead", 4.0, threads=0)
    s = Scheduler(QualityTable.from_perception_eval(EVAL), c, Budget(40.0), ("fisheye", "audio", "camera"), 0,
                  dwell=2)
    s.current = Plan(("fisheye", "camera"), 0, 1.0, "eager", "", 1)  # predicted 49 ms
    assert s.predicted(Plan(("fisheye",), 0, 1.0, "eager", "", 1)) == pytest.approx(37.0)  # fits, not with 10 %
    decisions = []
    for _ in range(12):
        clock.t += 0.1
        c.observe_frame(s.current, 49.0)
        decisions.append(s.step(ctx()))
    left = [d for d in decisions if d.changed]
    assert left and left[0].reason.startswith("current plan over budget")
    assert left[0].plan.modalities == ("fisheye",)


def test_a_plan_whose_median_is_over_the_budget_is_not_tried() -> None:
    """Only a plan whose tail is in doubt is worth a trial: one whose median is over the budget failed on its first
    two frames and spent the credit the plan that would hold needed (issue 16, 40 ms under a 1-core hog)."""
    clock = Clock()
    c = CostModel(clock=clock)
    for name, ms in QUIET.items():
        c.calibrate(name, [(ms, ms)] * 3)
    s = Scheduler(QualityTable.from_perception_eval(EVAL), c, Budget(100.0), ("fisheye", "audio"), 0, dwell=2,
                  max_changes_per_min=60)
    clock.t = 3.0
    c.observe("fisheye", 20.0)  # fastest ever: the best case fits with headroom ...
    c.observe("fisheye", 150.0)
    c.observe("fisheye", 160.0)  # ... but the median of the recent probes is 150
    plan = Plan(("fisheye",), 0, 1.0, "eager", "", 1)
    assert c.best_case(plan) <= 90.0 and not s.tryable(plan)
    c.observe("fisheye", 30.0)
    c.observe("fisheye", 31.0)  # median 31: only the tail is in doubt
    assert s.tryable(plan) and not s.fits(plan)


def test_a_small_gain_does_not_buy_a_plan_at_the_budgets_edge() -> None:
    """The camera's lighting head (+0.02) put fisheye + camera at 39 of 40 ms, where it measured over the budget
    every few seconds; fisheye alone, with room to spare, is chosen instead (Scheduler.edge_penalty)."""
    c = CostModel(clock=Clock())
    for name, ms in {"fisheye": 30.0, "camera@1": 5.0, "camera@0.5": 5.0, "camera@0.25": 5.0}.items():
        c.calibrate(name, [(ms, ms)] * 3)
    for _ in range(3):
        c.observe("overhead", 4.0, threads=0)
    s = Scheduler(QualityTable.from_perception_eval(EVAL), c, Budget(40.0), ("fisheye", "camera"), 0)
    with_camera, alone = Plan(("fisheye", "camera"), 0, 1.0, "eager", "", 1), Plan(("fisheye",), 0, 1.0, "eager", "", 1)
    assert s.fits(with_camera) and s.edge_penalty(with_camera) == pytest.approx(0.075) and s.edge_penalty(alone) == 0
    assert s.step(ctx()).plan.modalities == ("fisheye",)
    roomy = Scheduler(QualityTable.from_perception_eval(EVAL), c, Budget(100.0), ("fisheye", "camera"), 0)
    assert "camera" in roomy.step(ctx()).plan.modalities  # with room to spare the camera's small gain is taken


def test_a_small_overshoot_is_left_only_for_a_plan_with_headroom() -> None:
    """At 15 ms the camera's keep ratios and thread counts cost the same and all sit at the budget's edge: moving
    among them on every small overshoot only flapped (issue 16; docs/runtime.md has the evaluation)."""

    def run(camera_ms: float, frame_ms: float) -> list:
        clock = Clock()
        c = CostModel(clock=clock)
        for name, ms in {"camera@1": camera_ms, "camera@0.5": 5.0, "camera@0.25": 5.0}.items():
            c.calibrate(name, [(ms, ms)] * 3)
        for _ in range(3):
            c.observe("overhead", 9.0, threads=0)
        s = Scheduler(QualityTable.from_perception_eval(EVAL), c, Budget(15.0), ("camera",), 0, dwell=2)
        s.current = Plan(("camera",), 0, 1.0, "eager", "", 1)
        out = []
        for _ in range(14):
            clock.t += 0.1
            c.observe_frame(s.current, frame_ms)
            out.append(s.step(ctx()))
        return out

    # measured 16 ms (1 over, within the 1.5 ms headroom); keep 0.5 is predicted at 14 ms: fits, no headroom
    assert not any(d.changed for d in run(7.0, 16.0))
    left = [d for d in run(11.0, 20.0) if d.changed]  # 5 ms over: any plan that fits will do
    assert left and left[0].plan.keep != 1.0 and left[0].reason.startswith("current plan over budget")


def test_a_mapless_plan_returns_to_a_roomy_map_without_waiting_for_the_change_credit() -> None:
    """Forced moves (plans left over budget) spent the credit and put the runtime on a plan without a BEV modality:
    paced, the obstacle map stayed off for the last 12 s of a 20 s drive at 40 ms. A roomy plan with a map is taken
    back after the dwell alone; a change between two plans that both map is still paced."""
    clock = Clock()
    c = CostModel(clock=clock)
    for name, ms in QUIET.items():
        c.calibrate(name, [(ms, ms)] * 3)
    s = Scheduler(QualityTable.from_perception_eval(EVAL), c, Budget(100.0), ALL, 0, dwell=2, max_changes_per_min=1)
    s.current = Plan(("audio",), 0, 1.0, "eager", "", 1)
    for _ in range(3):  # three forced changes just happened: a debt of two changes, two minutes at 1 a minute
        s._pacer.spend()
    decisions = []
    for _ in range(4):
        clock.t += 0.1
        decisions.append(s.step(ctx("day")))
    back = [d for d in decisions if d.changed]
    assert back and decisions.index(back[0]) == 1  # after the dwell (2 frames), not after two minutes
    assert {"fisheye", "ultrasonic"} & set(back[0].plan.modalities)
    assert not s._pacer.allows(1.0)  # it spent credit too: the next voluntary change among mapped plans waits
