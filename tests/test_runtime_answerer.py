"""The runtime's LLM side: the shipped aligner sets, chosen per lighting and plan, attached without reloading."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from edge.runtime.answerer import Answerer
from edge.runtime.scheduler import Plan

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ALIGNERS = Path(__file__).resolve().parents[1] / "models" / "aligners"


def test_sets_follow_lighting_and_plan_and_answers_come_back() -> None:
    torch.set_num_threads(1)
    a = Answerer(ALIGNERS, max_new_tokens=4)
    assert set(a.sets) == {"day", "switch"} and a.n_blocks == 8
    assert set(a.best_set({"fisheye", "camera", "ultrasonic", "audio"}, "day")) == {"fisheye", "camera"}
    assert set(a.best_set({"fisheye", "camera", "ultrasonic", "audio"}, "night")) == {"ultrasonic", "audio"}
    tokens = {m: torch.zeros(1, n, 128) for m, n in (("fisheye", 16), ("camera", 16), ("ultrasonic", 8), ("audio", 8))}
    model_before = a.llm.model
    a.apply(Plan(("fisheye", "ultrasonic", "audio", "camera"), 8, 1.0), tokens, "day")
    assert set(a.attached) == {"fisheye", "camera"}
    a.apply(Plan(("fisheye", "ultrasonic", "audio", "camera"), 8, 1.0), tokens, "night")
    assert set(a.attached) == {"ultrasonic", "audio"}
    a.apply(Plan(("ultrasonic",), 8, 1.0), tokens, "night")
    assert a.attached == ("ultrasonic",)
    assert isinstance(a.answer("Is it safe to reverse?"), str)
    assert a.llm.model is model_before  # switching never reloads the LLM
