"""The built-ins' scores in `edge eval scheduler` (ModalityPlugin.scores): audio event accuracy.

Read from frame records (frames.jsonl): the audio plugin's record fields under "audio" when it ran, its ground truth
"gt"."audio_events" (the classes sounding at the frame) on recorded drives. Numpy only: no encoder, no runtime.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.modalities.interface import Scorer


def audio_scores(frames: list[dict[str, Any]]) -> tuple[float | None, float]:
    """(event accuracy over frames where audio ran, share of event frames where audio did not run)."""
    ran = [f for f in frames if "audio" in f and f.get("gt") is not None]
    correct = [f["audio"]["event"] == (f["gt"]["audio_events"][0] if f["gt"]["audio_events"] else "none") for f in ran]
    events = [f for f in frames if (f.get("gt") or {}).get("audio_events")]
    missed = [f for f in events if "audio" not in f]
    return (float(np.mean(correct)) if correct else None), (len(missed) / len(events) if events else 0.0)


def _audio(frames: list[dict[str, Any]]) -> dict[str, Any]:
    acc, missed = audio_scores(frames)
    return {"audio_event_accuracy": acc, "audio_event_frames_missed": missed}


AUDIO = Scorer(_audio, (("audio_event_accuracy", "audio event acc.", 3),
                        ("audio_event_frames_missed", "event frames without audio", 2)))
