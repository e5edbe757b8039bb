"""The scheduler: measured tables in, plans out; budget, hysteresis, silent sensors, static baselines."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.errors import EdgeError
from edge.runtime.context import CameraHealth, Context, StreamHealth
from edge.runtime.scheduler import AlignerSet, Budget, CostModel, Plan, QualityTable, Scheduler

EVAL = Path(__file__).resolve().parents[1] / "models" / "perception" / "eval.json"
ALL = ("fisheye", "ultrasonic", "audio", "camera")


def ctx(lighting: str = "day", silent: tuple[str, ...] = (), audio_db: float = -40.0, glare: bool = False,
        t: int = 0) -> Context:
    ok, dead = StreamHealth(True, 0.0, 0.0), StreamHealth(False, 2.0, 1.0)
    streams = {m: (dead if m in silent else ok) for m in ("fisheye", "ultrasonic", "audio", "camera")}
    cams = {"camera/front": CameraHealth(True, 0.5, 2.0, 0.05 if glare else 0.0)}
    return Context(t, cams, streams, audio_db, 3.0, lighting)


def costs(backend: str = "eager") -> CostModel:
    c = CostModel(backend=backend)
    for name, ms in {"fisheye": 30.0, "ultrasonic": 5.0, "fusion": 10.0, "audio": 4.0, "camera@1": 40.0,
                     "camera@0.5": 25.0, "camera@0.25": 18.0}.items():
        c.observe(name, ms)
    return c


def scheduler(**kw) -> Scheduler:
    args = dict(quality=QualityTable.from_perception_eval(EVAL), costs=costs(), budget=Budget(100.0), available=ALL,
                n_blocks=8)
    args.update(kw)
    return Scheduler(**args)


def test_measured_tables_drive_the_choice() -> None:
    s = scheduler()
    q = s.quality
    assert q.bev_quality(("fisheye", "ultrasonic"), "night") > q.bev_quality(("fisheye",), "night")
    day = s.step(ctx("day")).plan
    assert {"fisheye", "ultrasonic"} <= set(day.modalities)
    assert "camera" in day.modalities  # useful by day and within budget


def test_night_drops_the_camera_after_the_dwell_and_says_why() -> None:
    s = scheduler(dwell=3)
    assert "camera" in s.step(ctx("day")).plan.modalities
    decisions = [s.step(ctx("night", t=i)) for i in range(1, 6)]
    changed = [d for d in decisions if d.changed]
    assert len(changed) == 1 and decisions.index(changed[0]) == 2  # waited `dwell` frames
    assert "camera" not in changed[0].plan.modalities
    assert "lighting night" in changed[0].reason


def test_from_the_empty_plan_the_scheduler_returns_at_once_whatever_the_change_rate() -> None:
    """Every sensor lost (forced changes that spend the change credit), then back: the runtime runs something again
    on the next frame, not when the credit has refilled (with 6 a minute, up to 10 s without a map)."""
    s = scheduler(dwell=5, max_changes_per_min=1)
    assert s.step(ctx("day")).plan.modalities
    gone = s.step(ctx("day", silent=ALL, t=1))
    assert gone.changed and gone.plan.modalities == () and "no healthy sensor" in gone.reason
    back = s.step(ctx("day", t=2))
    assert back.changed and {"fisheye", "ultrasonic"} <= set(back.plan.modalities)
    assert back.reason == "sensors healthy again"


def test_hysteresis_prevents_flapping() -> None:
    s = scheduler(dwell=4)
    s.step(ctx("day"))
    flips = [s.step(ctx("night" if i % 2 else "day", t=i)).changed for i in range(1, 20)]
    assert not any(flips)


def test_silent_sensor_is_detached_at_once_and_reattached_when_healthy() -> None:
    s = scheduler(dwell=5)
    first = s.step(ctx("night"))
    assert "ultrasonic" in first.plan.modalities
    lost = s.step(ctx("night", silent=("ultrasonic",), t=1))
    assert lost.changed and "ultrasonic" not in lost.plan.modalities and "ultrasonic unhealthy" in lost.reason
    back = [s.step(ctx("night", t=2 + i)) for i in range(6)]
    assert "ultrasonic" in back[-1].plan.modalities


def test_audio_attached_when_an_event_is_heard() -> None:
    s = scheduler(costs=costs(), budget=Budget(56.0), dwell=2)  # room for fisheye+ultrasonic+fusion+audio only
    for i in range(5):
        s.step(ctx("night", audio_db=-45.0, t=i))
    loud = [s.step(ctx("night", audio_db=-20.0, t=10 + i)) for i in range(3)]
    assert "audio" in loud[-1].plan.modalities
    assert any("audio level" in d.reason for d in loud if d.changed) or "audio" in s.step(ctx("night")).plan.modalities


def test_budget_is_respected_and_an_impossible_budget_is_reported() -> None:
    s = scheduler(budget=Budget(20.0))
    plan = s.step(ctx("day")).plan
    assert s.costs.plan_latency(plan) <= 20.0
    tight = scheduler(budget=Budget(0.5))
    d = tight.step(ctx("day"))
    assert d.plan.modalities == ("audio",)  # the cheapest plan keeps running
    assert "no plan fits the budget (0.5 ms at p95" in d.reason
    assert "the cheapest is audio, N=8, eager, 1 thread, predicted 4.0 ms" in d.reason
    assert d.budget_miss == {"budget_ms": 0.5, "percentile": 95.0, "memory_mb": 2048.0,
                             "cheapest_plan": "audio, N=8, eager, 1 thread", "cheapest_ms": 4.0,
                             "cheapest_memory_mb": 0.0}
    again = tight.step(ctx("day", t=1))
    assert not again.changed and again.budget_miss is not None  # the miss stays recorded on every frame
    nothing = scheduler().step(ctx("day", silent=("fisheye", "ultrasonic", "audio", "camera")))
    assert nothing.plan.modalities == () and nothing.reason == "no healthy sensor"


def test_static_baselines_and_bad_configuration() -> None:
    s = scheduler(policy="camera")  # the camera setup: every camera
    assert s.step(ctx("night")).plan.modalities == ("fisheye", "camera")
    s = scheduler(policy="all")
    assert s.step(ctx("night", silent=("audio",))).plan.modalities == ("fisheye", "ultrasonic", "camera")
    with pytest.raises(EdgeError, match="unknown scheduling policy"):
        scheduler(policy="sometimes")
    with pytest.raises(EdgeError, match="unknown modalities"):
        scheduler(available=("no_such_modality",))  # "lidar" is installed by make setup (plugins/lidar)
    with pytest.raises(EdgeError, match="not a perception evaluation"):
        QualityTable.from_perception_eval(Path(__file__))


def test_a_fixed_plan_is_held_whatever_the_costs_and_its_lost_sensor_is_dropped() -> None:
    """The evaluation's oracle: a plan held for the whole drive, over budget or not, on its own thread count."""
    fixed = Plan(("fisheye", "ultrasonic", "camera"), 0, 0.5, threads=1)
    s = scheduler(fixed=fixed, budget=Budget(20.0), threads=(1, 2))  # far over a 20 ms budget
    assert not s.adaptive and s.static_threads == 1
    first = s.step(ctx())
    assert (first.plan.modalities, first.plan.keep, first.plan.threads) == (fixed.modalities, 0.5, 1)
    assert first.reason == "fixed plan" and all(not s.step(ctx()).changed for _ in range(10))
    assert s.step(ctx(silent=("ultrasonic",))).plan.modalities == ("fisheye", "camera")
    assert scheduler(threads=(1, 2)).adaptive and scheduler(policy="all", threads=(1, 2)).static_threads == 2


def test_plan_description() -> None:
    assert Plan(("fisheye", "camera"), 4, 0.5).describe() == "fisheye+camera, N=4, camera keep 0.5, eager"
    assert Plan(("audio",), 8, 1.0, threads=2).describe() == "audio, N=8, eager, 2 threads"
    assert Plan(("audio",), 8, 1.0, aligners="switch").describe() == "audio, N=8, LLM set switch, eager"


# measured held-out exact match of the shipped sets (models/aligners/README.md)
SETS = (AlignerSet("day", ("fisheye", "camera"), {"day": 0.773, "night": 0.128}, ("day",)),
        AlignerSet("switch", ("ultrasonic", "audio"), {"day": 0.720, "night": 0.723}, ("night",)))


def test_llm_set_follows_measured_accuracy_and_its_switch_is_a_logged_plan_change() -> None:
    s = scheduler(aligner_sets=SETS, dwell=2)
    day = s.step(ctx("day")).plan
    assert day.aligners == "day" and {"fisheye", "camera"} <= set(day.modalities)
    night = [s.step(ctx("night", t=1 + i)) for i in range(3)]
    changed = [d for d in night if d.changed]
    assert len(changed) == 1 and changed[0].plan.aligners == "switch"
    assert {"ultrasonic", "audio"} <= set(changed[0].plan.modalities)
    assert "camera" not in changed[0].plan.modalities  # no set reads it at night: its milliseconds buy nothing
    assert "LLM day -> switch" in changed[0].reason and "lighting night" in changed[0].reason
    # a set is only offered when all its encoders run, and its camera as pruned as in training
    assert s.sets_for(("fisheye", "camera", "audio"), 1.0) == ["", "day"]
    assert s.sets_for(("fisheye", "camera", "audio"), 0.5) == [""]
    assert s.sets_for(("ultrasonic",), 1.0) == [""]


def test_losing_a_set_modality_detaches_its_set() -> None:
    s = scheduler(aligner_sets=SETS, dwell=3)
    for i in range(3):
        s.step(ctx("night", t=i))
    assert s.current.aligners == "switch"
    lost = s.step(ctx("night", silent=("audio",), t=5))
    assert lost.changed and lost.plan.aligners != "switch" and "audio unhealthy" in lost.reason


def test_static_policies_switch_llm_sets_by_hand_on_their_fixed_encoders() -> None:
    cam = scheduler(policy="camera", aligner_sets=SETS)
    assert cam.step(ctx("day")).plan.aligners == "day"
    assert cam.step(ctx("night", t=1)).plan.aligners == "day"  # its encoders allow no other set
    full = scheduler(policy="all", aligner_sets=SETS)
    assert full.step(ctx("day")).plan.aligners == "day"
    d = full.step(ctx("night", t=1))
    assert d.changed and d.plan.aligners == "switch" and d.plan.modalities == ALL
    unmeasured = AlignerSet("x", ("audio",), {}, ("night",))
    assert unmeasured.expected("night") == 0.01 and unmeasured.expected("day") == 0.0


def test_one_slow_frame_does_not_switch_but_a_sustained_overrun_does() -> None:
    s = scheduler(dwell=3)
    first = s.step(ctx("day")).plan
    assert "fisheye" in first.modalities
    for _ in range(19):
        s.costs.observe("fisheye", 30.0)
    s.costs.observe("fisheye", 500.0)  # one preempted frame in 20: p95 ignores it
    assert not any(s.step(ctx("day", t=1 + i)).changed for i in range(5))
    for _ in range(5):
        s.costs.observe("fisheye", 500.0)  # sustained: the plan is over budget at p95
    decisions = [s.step(ctx("day", t=10 + i)) for i in range(3)]
    assert [d.changed for d in decisions] == [False, False, True]
    assert decisions[-1].reason.startswith("current plan over budget (predicted")
    assert "fisheye" not in decisions[-1].plan.modalities


def test_cost_distribution_ignores_one_preempted_frame_but_follows_a_sustained_slowdown() -> None:
    c = CostModel(window=20)
    for ms in [10.0] * 18 + [1500.0, 10.0]:
        c.observe("fisheye", ms)
    assert c.p50("fisheye") == 10.0 and c.quantile("fisheye", 95) == 10.0
    for _ in range(3):
        c.observe("fisheye", 40.0)
    assert c.p50("fisheye") == 10.0 and c.quantile("fisheye", 95) == 40.0  # the tail moves first
    for _ in range(10):
        c.observe("fisheye", 40.0)
    assert c.p50("fisheye") == 40.0


def test_plans_name_the_backend_the_encoders_run_on() -> None:
    ort = costs("onnxruntime")
    d = scheduler(backend="onnxruntime", costs=ort).step(ctx("day"))
    assert d.plan.backend == "onnxruntime" and d.plan.modalities and d.predicted_ms is not None
    assert "onnxruntime, 1 thread" in scheduler(policy="all", backend="onnxruntime").step(ctx("day")).plan.describe()
    # costs measured on another backend are not this one's: nothing is known, nothing is claimed to fit
    blind = scheduler(backend="onnxruntime").step(ctx("day"))
    assert blind.plan.modalities == () and "measured yet" in blind.reason


def test_the_llm_is_left_blind_only_when_nothing_an_aligner_set_reads_fits() -> None:
    # answers weighted at nothing: on score alone fisheye+ultrasonic (best BEV, no set reads it) would win
    s = scheduler(aligner_sets=SETS, answer_weight=0.0, quality_per_ms=0.0, budget=Budget(47.0))
    d = s.step(ctx("night"))
    assert d.plan.aligners == "switch" and {"ultrasonic", "audio"} <= set(d.plan.modalities)
    only_fisheye = scheduler(aligner_sets=SETS, budget=Budget(60.0))
    d = only_fisheye.step(ctx("night", silent=("ultrasonic", "audio", "camera")))
    assert d.plan.modalities == ("fisheye",) and d.plan.aligners == ""
    assert "the LLM answers from text alone" in d.reason


def test_a_better_plan_is_taken_after_the_dwell_even_when_near_equal_ones_trade_the_lead() -> None:
    s = scheduler(dwell=3)
    s.step(ctx("day"))
    s.current = Plan(("audio",), 8, 1.0, "eager", "", 1)  # far worse than what fits
    base, tick = s.score, {"n": 0}
    # the estimates' noise: the camera's keep 0.5 and 0.25 variants of the best plan swap places every frame
    s.score = lambda plan, c: base(plan, c) + (0.01 if plan.keep == 0.5 and tick["n"] % 2 == 0 else 0.0)
    changed = []
    for i in range(1, 8):
        tick["n"] = i
        changed.append(s.step(ctx("day", t=i)).changed)
    assert changed.index(True) == 2  # after `dwell` frames with a better plan, whichever leads
    assert "fisheye" in s.current.modalities


def test_frames_without_audio_do_not_set_the_audio_background() -> None:
    # the first frames of a drive carry no audio (its window is filling): their -120 dB taken as the background made
    # every later frame an "event", for good, and audio was worth an event's weight all drive long
    s = scheduler()
    s.step(ctx("day", silent=("audio",), audio_db=-120.0))
    s.step(ctx("day", audio_db=-40.0, t=1))
    assert not s.values["audio"].eventful
    s.step(ctx("day", audio_db=-20.0, t=2))
    assert s.values["audio"].eventful
