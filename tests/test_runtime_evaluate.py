"""Scheduler evaluation helpers: reaction delay, audio scoring, the table."""

from __future__ import annotations

import pytest

from edge.runtime.evaluate import audio_scores, markdown, pooled, pooled_lines, reaction_delays


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
    assert budget_scores(frames, 50.0, wall, None)["recovery_s"] is None
    row = {"drive": "d", "policy": "adaptive", "budget_ms": 50.0, "load": 1, "obstacle_iou_near5m": 0.8,
           "exact_match": None, **s}
    assert "| d | adaptive | 50 | 1 | 0.517 | 50.0 / 80.0 / 500.0 | 0.800 | n/a (n/a) | 2.0 (2.1) | fisheye x1 (0.75) | 0.3 |" \
        in budget_markdown([row])


def test_the_cpu_hog_runs_its_processes_and_stops_them() -> None:
    from edge.runtime.hog import CpuHog

    with CpuHog(1) as hog:
        assert hog.running == 1 and hog.stopped_at is None
    assert hog.running == 0 and hog.stopped_at is not None
    with pytest.raises(ValueError, match="load must be >= 0"):
        CpuHog(-1)
