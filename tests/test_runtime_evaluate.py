"""Scheduler evaluation helpers: reaction delay, audio scoring, the table."""

from __future__ import annotations

from edge.runtime.evaluate import audio_scores, markdown, reaction_delays


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
