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

    def __init__(self, shapes: dict[str, int] = SHAPES) -> None:
        self.shapes = shapes
        self.encoders = dict.fromkeys(shapes)  # the stack's modalities: the cache's columns

    def run(self, sample):
        shapes = self.shapes

        class Out:
            tokens = {m: torch.full((1, t, 128), float(sample.stamp_ns % 997)) for m, t in shapes.items()}

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
    with pytest.raises(LLMError, match="drive d has no 'radar' tokens: the perception stack that encoded it gave "
                                       "fisheye, ultrasonic, audio, camera"):
        data.batch_tokens(data.items[:1], "radar")


def test_a_stack_with_another_modality_caches_its_column(tiny_qa, tmp_path: Path):
    """The cache's columns are the stack's modalities: a fifth one (a plugin's) is stored and read back with its
    mask, and data without it refuses it by name, naming the drive and the cache file."""
    from edge.llm.qa_data import QAItem

    bag, builtin_file = tiny_qa
    path = encode_drive(bag, _StubStack({**SHAPES, "radar": 5}), tmp_path / "radar.safetensors", progress=False)
    tokens, present, qa = load_drive(path)
    assert tuple(tokens) == (*MODALITIES, "radar") and tuple(present) == tuple(tokens)
    assert tokens["radar"].shape == (tokens["fisheye"].shape[0], 5, 128) and bool(present["radar"].all())
    torch.testing.assert_close(tokens["radar"][:, 0, 0], tokens["camera"][:, 0, 0])  # each row its sample's tokens
    items = [QAItem(q["question"], q["answer"], q["kind"], q["lighting"], "with", q["row"]) for q in qa]
    old_tok, old_pres, old_qa = load_drive(builtin_file)
    assert tuple(old_tok) == MODALITIES  # a file of the built-in stack reads as before: its four columns
    items += [QAItem(q["question"], q["answer"], q["kind"], q["lighting"], "without", q["row"]) for q in old_qa]
    data = QADataset(items, {"with": tokens, "without": old_tok}, {"with": present, "without": old_pres},
                     {"with": str(path), "without": str(builtin_file)})
    with_radar = [it for it in items if it.drive == "with"][:3]
    toks, ok = data.batch_tokens(with_radar, "radar")
    assert toks.shape == (3, 5, 128) and bool(ok.all())
    assert data.modalities == MODALITIES  # the columns every drive has
    assert data.filter(lighting=["night"]).sources == data.sources
    data.require(("radar",), with_radar)
    with pytest.raises(LLMError, match=rf"drive without \({builtin_file}\) has no 'radar' tokens"):
        data.batch_tokens(items[-2:], "radar")
    with pytest.raises(LLMError, match="no 'radar' tokens"):
        data.require(("fisheye", "radar"))


def test_the_builtin_stack_keeps_its_cache_key(tmp_path: Path):
    """The key of a drive encoded by the built-in stack is the one it always had (the .cache/qa files stay valid);
    a stack with a plugin's modality gets its own."""
    import hashlib
    import os

    from edge.llm.qa_data import CACHE_VERSION, _cache_file, stack_extras
    from edge.token_layouts import TOKEN_LAYOUTS

    bag, perc = tmp_path / "yard-day-s1-d30", tmp_path / "perception"
    bag.mkdir()
    perc.mkdir()
    (bag / "metadata.yaml").write_text("12345")
    for name in ("fisheye.safetensors", "fusion.safetensors"):
        (perc / name).write_bytes(b"12345")
    for f in (bag / "metadata.yaml", perc / "fisheye.safetensors", perc / "fusion.safetensors"):
        os.utime(f, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    # the key as it was written before a stack's modalities could differ (edge/llm/qa_data.py of issue 10)
    stamp = "|".join(f"{p.name}:5:1700000000000000000" for p in (bag / "metadata.yaml", perc / "fisheye.safetensors",
                                                                 perc / "fusion.safetensors"))
    layouts = ",".join(f"{m}={v}" for m, v in sorted(TOKEN_LAYOUTS.items()))
    old = hashlib.sha256(f"{CACHE_VERSION}|{layouts}|{bag.resolve()}|{stamp}".encode()).hexdigest()[:12]
    assert _cache_file(bag, perc, tmp_path) == tmp_path / f"yard-day-s1-d30-{old}.safetensors"
    assert stack_extras(perc) == {}  # no plugin's weights here: the built-in stack
    assert _cache_file(bag, perc, tmp_path, stack_extras(perc)) == _cache_file(bag, perc, tmp_path)
    assert _cache_file(bag, perc, tmp_path, {"radar": "v1"}) != _cache_file(bag, perc, tmp_path)


def test_the_shipped_qa_cache_files_keep_their_keys():
    """The held-out drives' token files of this checkout (31 files, 40 min to rebuild) are found under their keys."""
    from edge.llm.qa_data import DEFAULT_CACHE, DEFAULT_DRIVES_DIR, EVAL_DRIVES, _cache_file, stack_extras
    from edge.perception.data import DriveSpec

    root = Path(__file__).resolve().parents[1]
    bags, cache = [root / DEFAULT_DRIVES_DIR / DriveSpec.parse(d).dirname for d in EVAL_DRIVES], root / DEFAULT_CACHE
    if not all((b / "metadata.yaml").exists() for b in bags) or not any(cache.glob("*.safetensors")):
        pytest.skip("no QA drives and token cache in this checkout")
    perc = root / "models/perception"
    assert stack_extras(perc) == {}
    missing = [b.name for b in bags if not _cache_file(b, perc, cache, stack_extras(perc)).exists()]
    if len(missing) == len(bags):
        pytest.skip("the cache was built from other weights or drives")
    assert not missing


def test_unknown_modality_is_a_clear_error():
    with pytest.raises(LLMError, match=r"unknown modality \['radar'\]"):
        check_modalities(["camera", "radar"])
    assert check_modalities(["camera", "radar"], known=(*MODALITIES, "radar")) == ("camera", "radar")
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
