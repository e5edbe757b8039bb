"""The runtime's LLM side: the shipped composable aligners, any measured subset attached without reloading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from edge.errors import EdgeError

from edge.runtime.answerer import Answerer
from edge.runtime.scheduler import Plan

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ALIGNERS = Path(__file__).resolve().parents[1] / "models" / "aligners"


def test_composable_subsets_follow_the_plan_and_answers_come_back() -> None:
    """The shipped composable aligners: every measured subset is a set the scheduler can pick, sharing one run."""
    torch.set_num_threads(1)
    a = Answerer(ALIGNERS, max_new_tokens=4)
    run = "composable"
    assert set(a.sets[run]) == {"fisheye", "ultrasonic", "audio", "camera"} and a.n_blocks == 8
    sets = {s.name: s for s in a.aligner_sets()}
    assert {f"{run}:ultrasonic+audio", f"{run}:fisheye+ultrasonic+audio+camera", f"{run}:fisheye+camera"} <= set(sets)
    assert set(sets[f"{run}:ultrasonic+audio"].modalities) == {"ultrasonic", "audio"}
    # measured accuracy (models/aligners/eval.json) per subset and lighting
    assert all(0.0 <= s.expected("day") <= 1.0 for s in sets.values())
    assert a.prior and all(isinstance(v, str) for v in a.prior.values())  # the blind prior from run.json
    tokens = {m: torch.zeros(1, n, 128) for m, n in (("fisheye", 5), ("camera", 16), ("ultrasonic", 5), ("audio", 1))}
    model_before = a.llm.model
    everything = ("fisheye", "ultrasonic", "audio", "camera")
    a.apply(Plan(everything, 8, 1.0, aligners=f"{run}:fisheye+ultrasonic+audio+camera"), tokens)
    assert set(a.attached) == set(everything)
    a.apply(Plan(everything, 8, 1.0, aligners=f"{run}:ultrasonic+audio"), tokens)
    assert set(a.attached) == {"ultrasonic", "audio"}
    a.apply(Plan(("ultrasonic",), 8, 1.0, aligners=f"{run}:ultrasonic+audio"), tokens)  # audio not running
    assert a.attached == ("ultrasonic",)
    a.apply(Plan(everything, 8, 1.0), tokens)  # no set: text only
    assert a.attached == ()
    with pytest.raises(EdgeError, match="aligner set 'dusk'"):
        a.apply(Plan(everything, 8, 1.0, aligners="dusk"), tokens)
    assert isinstance(a.answer("Is it safe to reverse?"), str)
    assert a.llm.model is model_before  # switching never reloads the LLM


def test_eval_subset_naming_a_missing_aligner_is_a_clear_error(tmp_path: Path) -> None:
    from edge.llm import load_llm
    from edge.llm.qa_model import QAConfig, QAModel

    torch.set_num_threads(1)
    model = QAModel(load_llm(), QAConfig("mpnp", ("audio",), n_blocks=2))
    model.save(tmp_path / "run", {"lighting": ["night"]})
    model.close()
    res = {"lighting": {"night": {"em": 50.0}}}
    (tmp_path / "eval.json").write_text(json.dumps({"x/run": {"subsets": {"audio": res, "audio+lidar": res}}}))
    with pytest.raises(EdgeError, match=r"audio\+lidar.*lidar"):
        Answerer(tmp_path, max_new_tokens=2)


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


def test_aligner_file_named_for_another_modality_is_refused(tmp_path: Path) -> None:
    """An audio aligner saved as aligner_camera.safetensors must not silently attach as audio."""
    from edge.llm import load_llm
    from edge.llm.qa_model import QAConfig, QAModel

    torch.set_num_threads(1)
    model = QAModel(load_llm(), QAConfig("mpnp", ("audio",), n_blocks=2))
    model.save(tmp_path / "run", {"lighting": ["night"]})
    model.close()
    (tmp_path / "run" / "aligner_audio.safetensors").rename(tmp_path / "run" / "aligner_camera.safetensors")
    with pytest.raises(EdgeError, match="aligner_camera.safetensors.*audio"):
        Answerer(tmp_path, max_new_tokens=2)


def test_a_failing_answer_is_reported_and_the_worker_goes_on() -> None:
    from edge.runtime.answer_worker import AnswerWorker

    class Flaky:
        attached: tuple[str, ...] = ()
        prior: dict[str, str] = {}

        def apply(self, plan: Plan, tokens: dict[str, torch.Tensor]) -> None:
            self.attached = tuple(sorted(tokens))

        def answer(self, question: str) -> str:
            if "fail" in question:
                raise RuntimeError("out of memory")
            return "2.0 meters"

    w = AnswerWorker(Flaky(), budget_ms=60_000.0)
    plan = Plan(("audio",), 8, 1.0)
    w.submit([{"question": "please fail"}, {"question": "how far?", "answer": "2.0 meters"}], plan,
             {"audio": torch.zeros(1, 1, 4)}, stamp_ns=42)
    first, second = w.finish(timeout_s=60)
    assert first["response"] == "" and first["error"] == "RuntimeError: out of memory"
    assert second["response"] == "2.0 meters" and second["data_stamp_ns"] == 42 and second["modalities"] == ["audio"]
    assert second["within_budget"] and second["answer"] == "2.0 meters"
    w.close()


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread nice is Linux's")
def test_answers_run_at_a_lower_os_priority_than_the_frames() -> None:
    """An LLM always busy at the frames' priority made 2-thread frames 6x slower at p95 (docs/runtime.md): the
    answer thread lowers its own nice value, and only its own."""
    import threading

    from edge.runtime.answer_worker import AnswerWorker

    def nice_here() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    class Recorder:
        attached: tuple[str, ...] = ()
        prior: dict[str, str] = {}

        def apply(self, plan: Plan, tokens: dict[str, torch.Tensor]) -> None:
            pass

        def answer(self, question: str) -> str:
            return str(nice_here())

    before = nice_here()
    for nice, expected in ((10, min(19, before + 10)), (0, before)):
        w = AnswerWorker(Recorder(), budget_ms=60_000.0, nice=nice)
        w.submit([{"question": "nice?"}], Plan(("audio",), 8, 1.0), {}, stamp_ns=1)
        (answer,) = w.finish(timeout_s=60)
        w.close()
        assert answer["response"] == str(expected) and w.nice_applied
    assert nice_here() == before  # the frames' thread keeps its priority
    with pytest.raises(ValueError, match="answer_nice"):
        AnswerWorker(Recorder(), budget_ms=1.0, nice=20)


def test_aligners_trained_on_other_encoder_weights_are_named(tmp_path: Path) -> None:
    """Retrained encoders keep token shapes and layouts, so only the recorded weight hashes show the aligners
    learnt other tokens: the set is named once, and only for the modalities whose weights changed."""
    import shutil

    from edge.encoders.fingerprint import token_fingerprints
    from edge.llm import load_llm
    from edge.llm.qa_model import QAConfig, QAModel

    perception = Path(__file__).resolve().parents[1] / "models" / "perception"
    before = token_fingerprints(perception)
    assert set(before) == {"fisheye", "ultrasonic", "audio", "camera"}
    changed = tmp_path / "perception"
    shutil.copytree(perception, changed)
    fusion = changed / "fusion.safetensors"
    fusion.write_bytes(fusion.read_bytes()[:-1] + b"\x01")  # the fusion head makes both BEV modalities' tokens
    after = token_fingerprints(changed)
    assert {m for m in before if before[m] != after[m]} == {"fisheye", "ultrasonic"}

    torch.set_num_threads(1)
    model = QAModel(load_llm(), QAConfig("mpnp", ("ultrasonic", "audio"), n_blocks=2))
    model.save(tmp_path / "aligners" / "yard", {"perception_weights": before})
    model.close()
    a = Answerer(tmp_path / "aligners", max_new_tokens=2)
    assert a.stale_sets(before) == []
    notes = a.stale_sets(after)
    assert len(notes) == 1 and "'yard'" in notes[0] and "ultrasonic" in notes[0] and "audio" not in notes[0]
