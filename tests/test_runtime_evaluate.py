"""Scheduler evaluation helpers: reaction delay, audio scoring, the table."""

from __future__ import annotations

import pytest

from edge.modalities.scoring import audio_scores
from edge.runtime.evaluate import markdown, pooled, pooled_lines, reaction_delays


def frame(t: float, lighting: str, events: list[str], audio: str | None = None) -> dict:
    f = {"t": t, "gt": {"lighting": lighting, "audio_events": events}}
    if audio is not None:
        f["audio"] = {"event": audio}
    return f


def test_reaction_delay_from_context_change_to_next_switch() -> None:
    frames = [frame(0.0, "day", []), frame(0.1, "day", []), frame(0.2, "night", []), frame(0.3, "night", []),
              frame(0.4, "night", ["siren"]), frame(0.5, "night", ["siren"])]
    switches = [{"t": 0.0}, {"t": 0.7}, {"t": 0.9}]
    assert reaction_delays(frames, switches) == [0.7 - 0.2, 0.7 - 0.4]


def test_audio_scores_count_misses_when_audio_was_off() -> None:
    frames = [frame(0, "day", [], "none"), frame(1, "day", ["siren"], "siren"), frame(2, "day", ["siren"], "none"),
              frame(3, "day", ["siren"])]
    accuracy, missed = audio_scores(frames)
    assert accuracy == 2 / 3 and missed == 1 / 3


def test_markdown_table_has_a_row_per_run() -> None:
    row = {"drive": "d", "policy": "adaptive", "obstacle_iou_near5m": 0.7, "audio_event_accuracy": None,
           "audio_event_frames_missed": 0.0, "exact_match": None, "mean_compute_ms": 12.0, "switches": 3,
           "reaction_s_mean": 0.5}
    table = markdown([row, {**row, "policy": "all"}])
    assert table.count("\n") == 4 and "| d | adaptive | 0.700 | n/a |" in table


def test_pooled_policies_and_the_target_line() -> None:
    def row(drive: str, policy: str, correct: int, questions: int, ms: float, frames: int = 100) -> dict:
        return {"drive": drive, "policy": policy, "frames": frames, "questions": questions, "correct": correct,
                "obstacle_iou_near5m": 0.8, "mean_compute_ms": ms, "switches": 1}

    rows = [row("a", "adaptive", 8, 10, 20.0), row("b", "adaptive", 9, 10, 30.0),
            row("a", "all", 9, 10, 30.0), row("b", "all", 8, 10, 30.0),
            row("a", "camera", 5, 10, 10.0), row("b", "camera", 4, 10, 10.0)]
    p = pooled(rows)
    assert p["adaptive"]["exact_match"] == 17 / 20 and p["adaptive"]["mean_compute_ms"] == 25.0
    assert p["camera"]["exact_match"] == 9 / 20
    assert "best static 'all' EM 0.850 at 30.0 ms: met" in pooled_lines(p)[-1]
    rows[1]["correct"] = 7  # adaptive now answers worse than `all`
    assert pooled_lines(pooled(rows))[-1].endswith("MISSED")
    assert p["adaptive"]["blind_prior_exact_match"] is None  # not measured: never shown as a figure
    rows[0]["blind_prior_exact_match"], rows[1]["blind_prior_exact_match"] = 0.5, 0.3
    assert abs(pooled(rows)["adaptive"]["blind_prior_exact_match"] - 0.4) < 1e-9  # pooled over the questions
    assert "| adaptive | 20 | 0.750 (0.400) |" in "\n".join(pooled_lines(pooled(rows)))


def test_budget_scores_settle_changes_top_plan_and_recovery() -> None:
    from edge.runtime.evaluate import budget_markdown, budget_scores

    def f(t: float, ms: float, mods: list[str]) -> dict:
        return {"t": t, "timings_ms": {"total": ms}, "plan": {"modalities": mods, "camera_keep": 1.0, "threads": 1}}

    # 60 s: a slow start (excluded), a stretch over budget while the hog runs, then back within budget
    frames = [f(i * 0.5, 500.0 if i < 4 else (80.0 if i < 60 else 20.0), ["audio"] if 30 <= i < 60 else ["fisheye"])
              for i in range(120)]
    wall = [100.0 + i * 0.5 for i in range(120)]
    s = budget_scores(frames, 50.0, wall, hog_stopped_at=100.0 + 29.7)
    assert s["within_budget"] == 60 / 116  # the first 2 s left out
    assert s["changes_per_min"] == 2 / (59.5 / 60) and s["changes_per_min_after_2s"] == 2 / (57.5 / 60)
    assert s["top_plan"] == "fisheye x1" and s["top_plan_share"] == 0.75
    assert s["recovery_s"] == pytest.approx(0.3)  # the first frame after the stop opens 10 within budget
    # steady: after 2 s, without the pair that spans the hog's stop (the change it caused): 1 change in 57 s
    assert s["changes_per_min_steady"] == pytest.approx(1 / (57.0 / 60))
    assert budget_scores(frames, 50.0, wall, None)["recovery_s"] is None
    row = {"drive": "d", "policy": "adaptive", "budget_ms": 50.0, "load": 1, "obstacle_iou_near5m": 0.8,
           "iou_all_frames": 0.6, "mapped_share": 0.75, "oracle_share": 0.9, "recovery_plan_s": 0.3,
           "exact_match": None, **s}
    assert ("| d | adaptive | 50 | 1 | 1 | 0.517 | 50.0 / 80.0 / 500.0 | 0.600 (0.800, 0.75) | n/a (n/a) | 0.90 | "
            "1.1 (2.0) | fisheye x1 (0.75) | 0.3 / 0.3 |") in budget_markdown([row])


def test_the_cpu_hog_runs_its_processes_and_stops_them() -> None:
    from edge.runtime.hog import CpuHog

    with CpuHog(1) as hog:
        assert hog.running == 1 and hog.stopped_at is None
    assert hog.running == 0 and hog.stopped_at is not None
    with pytest.raises(ValueError, match="load must be >= 0"):
        CpuHog(-1)


def test_the_oracle_tries_the_cheapest_encoders_of_each_quality_class_at_every_thread_count(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.runtime import evaluate
    from edge.runtime.evaluate import oracle_plans
    from edge.runtime.scheduler import AlignerSet

    # the oracle's logic on the built-ins: an installed plugin (make setup installs plugins/lidar) adds its modality
    # to the registry's lists, and with it BEV subsets to try
    monkeypatch.setattr(evaluate, "BEV_MODALITIES", ("fisheye", "ultrasonic"))
    monkeypatch.setattr(evaluate, "MODALITIES", ("fisheye", "ultrasonic", "audio", "camera"))

    plans = oracle_plans((), (1, 2))
    assert {(p.modalities, p.threads) for p in plans} == {
        (m, t) for m in (("fisheye",), ("ultrasonic",), ("fisheye", "ultrasonic")) for t in (1, 2)}
    # with an aligner set: its modalities joined to each BEV subset, its camera pruned as trained; no other keep
    cam = AlignerSet("day", ("fisheye", "camera"), {"day": 0.6}, keep=0.5)
    mods = {(p.modalities, p.keep) for p in oracle_plans((cam,), (2,), max_plans=20)}
    assert (("fisheye", "camera"), 0.5) in mods and (("fisheye", "ultrasonic", "camera"), 0.5) in mods
    assert not any(keep != 1.0 and "camera" not in m for m, keep in mods) and len(mods) == 5
    assert len(oracle_plans((cam,), (1, 2), max_plans=4)) == 4  # bounded: 2 encoder sets x 2 thread counts


def test_the_oracle_fixes_no_plan_of_a_bev_modality_the_perception_evaluation_did_not_measure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed BEV plugin (a LiDAR) that the shipped perception models were not trained with adds no subset."""
    from edge.runtime import evaluate
    from edge.runtime.evaluate import oracle_plans
    from edge.runtime.scheduler import QualityTable

    monkeypatch.setattr(evaluate, "BEV_MODALITIES", ("fisheye", "ultrasonic", "lidar"))
    monkeypatch.setattr(evaluate, "MODALITIES", ("fisheye", "ultrasonic", "audio", "camera", "lidar"))
    table = QualityTable({s: {"day": 0.7, "dusk": 0.6, "night": 0.5} for s in ("fisheye+ultrasonic", "fisheye", "ultrasonic")},
                         {}, "eval.json")
    plans = oracle_plans((), (1,), table, max_plans=20)
    assert {p.modalities for p in plans} == {("fisheye",), ("ultrasonic",), ("fisheye", "ultrasonic")}


def test_iou_over_all_scorable_frames_counts_a_frame_without_a_map_as_zero() -> None:
    from edge.runtime.evaluate import iou_all_frames

    frames = [(1, 0.8, True), (2, None, False), (3, None, True), (4, None, False)]
    # frame 2 had obstacles (another run scored it), frame 3 was mapped but undefined, frame 4 had nothing to find
    assert iou_all_frames(frames, {1, 2, 3}) == pytest.approx(0.4)
    assert iou_all_frames([(4, None, False)], {1}) is None


def test_recovery_to_the_unloaded_plan() -> None:
    from edge.runtime.evaluate import recovery_to_plan

    plans, wall = ["a", "b", "b", "b", "a", "a"], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert recovery_to_plan(plans, wall, 2.5, "a") == pytest.approx(2.5)
    assert recovery_to_plan(["a"] * 6, wall, 2.5, "a") == 0.0  # never left it
    assert recovery_to_plan(plans, wall, 2.5, "c") is None and recovery_to_plan(plans, wall, None, "a") is None


def _row(policy: str, iou: list[float | None], within: float, top: str, load: int = 0, run: int = 1,
         fixed: str | None = None, plans: list[str] | None = None) -> dict:
    return {"drive": "d", "policy": policy, "budget_ms": 40.0, "load": load, "run": run, "fixed_plan": fixed,
            "within_budget": within, "holds_budget": within >= 0.95, "exact_match": None, "top_plan": top,
            "_frames": [(i, v, v is not None) for i, v in enumerate(iou)], "_plans": plans or [top] * len(iou),
            "_wall": [float(i) for i in range(len(iou))], "_hog_stopped_at": 1.5 if load else None}


def test_oracle_is_the_best_fixed_run_that_holds_the_budget_and_shares_follow() -> None:
    from edge.runtime.evaluate import oracle_markdown, score_runs

    runs = [_row("adaptive", [0.6, None, 0.6, 0.6], 0.97, "ultrasonic x1"),
            _row("all", [0.9, 0.9, 0.9, 0.9], 0.10, "fisheye+ultrasonic x2"),  # best IoU, but misses the budget
            _row("adaptive", [0.6, 0.6, 0.6, 0.6], 1.0, "fisheye x1", load=1,
                 plans=["fisheye x1", "fisheye x1", "fisheye x1", "ultrasonic x1"]),
            _row("adaptive", [0.6, 0.6, 0.6, 0.6], 1.0, "ultrasonic x1", run=2)]
    fixed = [_row("fixed", [0.7, 0.7, 0.7, 0.7], 0.96, "fisheye x1", fixed="fisheye x1"),
             _row("fixed", [0.8, 0.8, 0.8, 0.8], 0.50, "fisheye+ultrasonic x1", fixed="fisheye+ultrasonic x1")]
    out = score_runs(runs, fixed, use_llm=False)
    oracle = out["oracle"][0]
    assert oracle["plan"] == "fisheye x1" and oracle["quality"] == pytest.approx(0.7)
    assert oracle["tried"] == 3 and oracle["held"] == 1  # `all` is a fixed plan too, tried, not holding
    assert runs[0]["iou_all_frames"] == pytest.approx(0.45) and runs[0]["oracle_share"] == pytest.approx(0.45 / 0.7)
    for r in runs + fixed:  # by construction: no fixed run that holds the budget beats the oracle
        if r["policy"] != "adaptive" and r["holds_budget"] and r["budget_ms"] == 40.0 and r["load"] == 0:
            assert r["quality"] <= oracle["quality"]
    assert out["oracle"][1]["plan"] is None and "none holds the budget" in oracle_markdown(out["oracle"])
    # the unloaded adaptive runs ran ultrasonic mostly: the loaded one is back on it 1.5 s after the stop at 1.5 s
    assert runs[2]["unloaded_plan"] == "ultrasonic x1" and runs[2]["recovery_plan_s"] == pytest.approx(1.5)
    agree = {(a["policy"], a["load"]): a for a in out["agreement"]}
    assert agree[("adaptive", 0)]["top_plans"] == ["ultrasonic x1", "ultrasonic x1"]
    assert agree[("adaptive", 0)]["agreement"] == 1.0 and agree[("adaptive", 1)]["agreement"] is None


@pytest.mark.usefixtures("one_thread")
def test_the_evaluation_runs_the_oracle_and_prints_every_figure(tmp_path) -> None:
    """A 3 s drive, one budget, a 1-core hog stopped at 2 s: the adaptive policy, a static one and the oracle's
    fixed plan are run; every figure is in the JSON and the markdown, and no static or fixed run that holds the
    budget scores above the oracle."""
    import json

    from edge.drives.generate import generate_drive
    from edge.runtime.evaluate import evaluate

    bag = generate_drive(tmp_path / "drive", seed=5, duration=3.0, scenario="parking-day", progress=False).path
    out = evaluate([bag], tmp_path / "eval", False, (100.0,), ("adaptive", "camera"), (1,), load_stop_s=2.0,
                   oracle_max_plans=1)
    doc = json.loads((tmp_path / "eval" / "scheduler_eval-b100-k1.json").read_text())
    assert len(doc["runs"]) == 2 and len(doc["fixed_plans"]) == 1 and len(doc["oracle"]) == 1
    assert doc["definitions"]["oracle_candidates"] == ["fisheye+ultrasonic x1"]  # the front's best, 1 thread here
    for r in doc["runs"]:
        for key in ("within_budget", "iou_all_frames", "oracle_share", "changes_per_min_steady", "top_plan",
                    "recovery_s", "recovery_plan_s", "latency_p95_ms", "unloaded_plan"):
            assert key in r, key
        assert 0.0 <= r["within_budget"] <= 1.0 and r["top_plan"] and 0.0 <= r["iou_all_frames"] <= 1.0
        assert r["frames"] == 30 and r["unloaded_plan"] is None  # no unloaded run to return to
    o = doc["oracle"][0]
    assert o["tried"] == 2  # the fixed plan and the static policy `camera`
    held = [r for r in doc["runs"] + doc["fixed_plans"] if r["policy"] != "adaptive" and r["holds_budget"]]
    assert o["held"] == len(held) and all(r["quality"] <= o["quality"] + 1e-12 for r in held)
    assert all(r["oracle_share"] <= 1.0 + 1e-12 for r in held)
    assert {a["policy"] for a in doc["agreement"]} == {"adaptive", "camera"}
    for heading in ("Hindsight oracle", "share of oracle", "changes/min: steady", "recovery s: budget / plan",
                    "Agreement of repeated runs"):
        assert heading in out["table"]


def test_prediction_ratio_per_plan_segment() -> None:
    from edge.runtime.evaluate import budget_markdown, prediction_ratios

    def f(mods: list[str], predicted: float | None, ms: float) -> dict:
        return {"plan": {"modalities": mods, "camera_keep": 1.0, "threads": 1}, "predicted_ms": predicted,
                "timings_ms": {"total": ms}}

    frames = ([f(["fisheye"], 120.0, 50.0)] * 3 + [f(["fisheye"], 100.0, 60.0)] * 5  # predicted 120, p95 60: 2.0
              + [f(["audio"], 10.0, 10.0)] * 4  # under 5 frames: no segment
              + [f(["camera"], None, 5.0)] + [f(["camera"], 5.0, 5.0)] * 5)  # no prediction on its first frame
    assert prediction_ratios(frames) == [2.0]
    row = {"drive": "d", "policy": "adaptive", "budget_ms": 50.0, "load": 0, "within_budget": 1.0,
           "latency_p50_ms": 1.0, "latency_p95_ms": 1.0, "latency_p99_ms": 1.0, "obstacle_iou_near5m": None,
           "exact_match": None, "changes_per_min": 0.0, "top_plan": "fisheye x1", "top_plan_share": 1.0,
           "recovery_s": None, "prediction_ratios": [2.0, 1.0, 0.5]}
    assert budget_markdown([row]).splitlines()[-1].endswith("| 1.00 (3) |")


def test_changes_per_minute_are_counted_on_the_wall_clock_the_scheduler_paces_them_on() -> None:
    from edge.runtime.evaluate import budget_scores

    def f(t: float, mods: list[str]) -> dict:
        return {"t": t, "timings_ms": {"total": 10.0}, "plan": {"modalities": mods, "camera_keep": 1.0, "threads": 1}}

    # 30 s of drive, 3 changes after 2 s; the run fell behind: every frame took 0.2 s of wall time, not 0.1
    frames = [f(i * 0.1, ["audio"] if (i // 75) % 2 else ["fisheye"]) for i in range(300)]
    wall = [i * 0.2 for i in range(300)]
    s = budget_scores(frames, 50.0, wall, None)
    assert s["changes_per_min_steady"] == pytest.approx(3 / (2 * 27.9 / 60))  # per wall minute
    assert s["changes_per_min_steady_drive_time"] == pytest.approx(3 / (27.9 / 60))
