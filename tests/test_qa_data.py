"""QA data from drive ground truth (tokens cached per drive), EM/F1 scoring, and clear errors on bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from edge.drives.bag import read_messages
from edge.drives.generate import generate_drive
from edge.drives.topics import GT_QA
from edge.llm.errors import LLMError
from edge.llm.qa_data import MODALITIES, QADataset, check_modalities, encode_drive, load_drive
from edge.llm.qa_text import exact_match, normalize, token_f1

SHAPES = {"fisheye": 16, "ultrasonic": 8, "audio": 8, "camera": 16}


class _StubStack:
    """Stands in for the perception stack: tokens that encode the sample stamp, with the real shapes."""

    class cfg:  # noqa: N801
        image_reduce = 4

    def run(self, sample):
        class Out:
            tokens = {m: torch.full((1, t, 128), float(sample.stamp_ns % 997)) for m, t in SHAPES.items()}

        assert all(v is None or hasattr(v, "shape") for v in sample.data["fisheye"].values())  # images were decoded
        return Out()


@pytest.fixture(scope="module")
def tiny_qa(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("qa")
    bag = generate_drive(root / "night", seed=3, duration=2.5, scenario="parking-night", progress=False).path
    return bag, encode_drive(bag, _StubStack(), root / "cache" / "night.safetensors", progress=False)


def test_items_match_ground_truth_and_carry_conditions(tiny_qa):
    bag, path = tiny_qa
    tokens, present, qa = load_drive(path)
    truth = [json.loads(m.msg.data) for m in read_messages(bag, [GT_QA])]
    assert len(qa) == len(truth) >= 6
    key = lambda d: (d["question"], d["answer"], d["kind"])  # noqa: E731
    assert Counter(map(key, qa)) == Counter(map(key, truth))
    assert {q["lighting"] for q in qa} == {"night"}
    rows = sorted({q["row"] for q in qa})
    assert rows == list(range(tokens["fisheye"].shape[0]))  # one token row per instant with QA
    for m in MODALITIES:
        assert tokens[m].shape == (len(rows), SHAPES[m], 128) and bool(present[m].all())
    # each row holds the tokens of its own sample (stub tokens encode the stamp): rows differ
    assert len({float(tokens["camera"][r, 0, 0]) for r in rows}) == len(rows)


def test_dataset_batches_and_filters(tiny_qa):
    from edge.llm.qa_data import QAItem

    _, path = tiny_qa
    tokens, present, qa = load_drive(path)
    present["audio"][0] = False
    data = QADataset([QAItem(q["question"], q["answer"], q["kind"], q["lighting"], "d", q["row"]) for q in qa],
                     {"d": tokens}, {"d": present})
    later = next(it for it in data.items if it.sample != 0)  # every template is asked at each instant: many per row
    toks, ok = data.batch_tokens([data.items[0], data.items[1], later], "audio")
    assert toks.shape == (3, 8, 128) and ok.shape == (3, 8)
    assert not bool(ok[0].any()) and not bool(ok[1].any()) and bool(ok[2].all())  # a missing sensor masks its tokens
    assert data.filter(lighting=["day"]).items == []
    assert len(data.subset(3, seed=0).items) == 3
    with pytest.raises(LLMError, match="unknown modality 'lidar'"):
        data.batch_tokens(data.items[:1], "lidar")


def test_unknown_modality_is_a_clear_error():
    with pytest.raises(LLMError, match=r"unknown modality \['radar'\]"):
        check_modalities(["camera", "radar"])
    with pytest.raises(LLMError, match="twice"):
        check_modalities(["camera", "camera"])


@pytest.mark.parametrize("pred,gold,em,f1", [
    ("3.5 meters", "3.5 meters", 1.0, 1.0),
    ("3.5 Meters.", "3.5 meters", 1.0, 1.0),
    ("3.0 meters", "3.5 meters", 0.0, 0.5),
    ("no siren", "no", 0.0, 2 / 3),
    ("", "yes", 0.0, 0.0),
    ("static obstacle", "static obstacle", 1.0, 1.0),
    ("left", "right", 0.0, 0.0),
])
def test_exact_match_and_token_f1(pred, gold, em, f1):
    assert exact_match(pred, gold) == em
    assert token_f1(pred, gold) == pytest.approx(f1)


def test_normalize_keeps_decimals_drops_punctuation():
    assert normalize(" 12.5  Meters! ") == "12.5 meters"
    assert normalize("yes.") == "yes"


def test_question_rotation_walks_every_template_and_skips_absent_ones():
    from edge.drives.qa import ROTATION, TEMPLATES, pick_rotating

    assert sorted(ROTATION) == sorted(TEMPLATES)  # every template once

    items = [{"kind": k, "question": k} for k in TEMPLATES if not k.endswith("_direction")]  # no sound audible
    asked, seen = 0, []
    for _ in range(len(items)):
        q, asked = pick_rotating(items, asked)
        seen.append(q["kind"])
    assert sorted(seen) == sorted(q["kind"] for q in items)  # each present template once before any repeats
    assert {"siren", "horn"} <= set(seen[:12])  # the sounds come up within a 60 s demo's 12 questions
