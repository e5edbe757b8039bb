"""The runtime's LLM side: the shipped aligner sets, chosen per lighting and plan, attached without reloading."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from edge.errors import EdgeError

from edge.runtime.answerer import Answerer
from edge.runtime.scheduler import Plan

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ALIGNERS = Path(__file__).resolve().parents[1] / "models" / "aligners"


def test_sets_follow_lighting_and_plan_and_answers_come_back() -> None:
    torch.set_num_threads(1)
    a = Answerer(ALIGNERS, max_new_tokens=4)
    assert set(a.sets) == {"day", "switch"} and a.n_blocks == 8
    sets = {s.name: s for s in a.aligner_sets()}
    # the measured accuracy of the shipped sets (models/aligners/eval.json) says which set serves which lighting
    assert sets["day"].expected("day") > sets["day"].expected("night")
    assert sets["switch"].expected("night") > sets["day"].expected("night")
    assert set(sets["switch"].modalities) == {"ultrasonic", "audio"}
    tokens = {m: torch.zeros(1, n, 128) for m, n in (("fisheye", 16), ("camera", 16), ("ultrasonic", 8), ("audio", 8))}
    model_before = a.llm.model
    everything = ("fisheye", "ultrasonic", "audio", "camera")
    a.apply(Plan(everything, 8, 1.0, aligners="day"), tokens)
    assert set(a.attached) == {"fisheye", "camera"}
    a.apply(Plan(everything, 8, 1.0, aligners="switch"), tokens)
    assert set(a.attached) == {"ultrasonic", "audio"}
    a.apply(Plan(("ultrasonic",), 8, 1.0, aligners="switch"), tokens)  # audio not running: not attached
    assert a.attached == ("ultrasonic",)
    a.apply(Plan(everything, 8, 1.0), tokens)  # no set: text only
    assert a.attached == ()
    with pytest.raises(EdgeError, match="aligner set 'dusk'"):
        a.apply(Plan(everything, 8, 1.0, aligners="dusk"), tokens)
    assert isinstance(a.answer("Is it safe to reverse?"), str)
    assert a.llm.model is model_before  # switching never reloads the LLM


def test_a_set_with_lora_is_active_only_while_attached(tmp_path: Path) -> None:
    """A set trained with LoRA on k/v: attached, the LLM computes something else; detached, exactly the plain LLM."""
    from edge.llm import load_llm
    from edge.llm.qa_model import QAConfig, QAModel

    torch.set_num_threads(1)
    torch.manual_seed(0)
    llm = load_llm()
    model = QAModel(llm, QAConfig("mpnp", ("audio",), n_blocks=2, lora_rank=2))
    with torch.no_grad():
        for p in model.trainable():
            p.add_(0.2 * torch.randn_like(p))
    model.save(tmp_path / "night", {"lighting": ["night"]})
    model.close()
    a = Answerer(tmp_path, max_new_tokens=3)
    assert set(a.set_lora) == {"night"} and a.set_lora["night"].layers == [28, 29]
    ids = a.llm.tokenizer("Question: Is it safe to reverse?\nAnswer:", return_tensors="pt").input_ids

    def logits() -> torch.Tensor:
        with torch.no_grad():
            return a.llm.model(input_ids=ids).logits[0, -1]

    plain = logits()
    tokens = {"audio": torch.randn(1, 8, 128)}
    a.apply(Plan(("audio",), 2, 1.0, aligners="night"), tokens)
    attached = logits()
    a.apply(Plan(("audio",), 2, 1.0), tokens)  # nothing attached: LoRA off, prefix gone
    assert not torch.allclose(attached, plain)
    assert torch.equal(logits(), plain)
