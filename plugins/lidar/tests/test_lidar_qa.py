"""The LiDAR reaches the LLM through the core's generic QA path (issue 11): a drive on the package's rig, encoded
by the package's model directory, caches a 'lidar' token column beside the built-ins' (under a key of its own),
the LLM side knows the modality from the plugin's declaration (layout, width), and an aligner for it trains beside
frozen ones and round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edge.llm.adapt import kept_config, plan_modalities
from edge.llm.aligner import current_token_layout, load_aligner
from edge.llm.errors import LLMError
from edge.llm.qa_data import MODALITIES, _cache_file, build_dataset, check_modalities, known_modalities, stack_extras
from edge.llm.qa_model import QAConfig, QAModel, token_width
from edge.sensors.rig import load_rig

from edge_lidar.plugin import LIDAR

from test_lidar_simulator import RIG_FILE

PACKAGE_MODELS = Path(__file__).resolve().parents[1] / "models" / "perception"
CORE_MODELS = Path(__file__).resolve().parents[3] / "models" / "perception"


def test_the_llm_knows_the_lidar_from_its_declaration():
    assert "lidar" in known_modalities() and known_modalities()[:4] == MODALITIES
    assert check_modalities(["fisheye", "lidar"]) == ("fisheye", "lidar")
    assert current_token_layout("lidar") == LIDAR.tokens.layout == "sector-posteriors-v3"
    assert token_width("lidar", 0) == LIDAR.tokens.width == 128
    composable = ("fisheye", "ultrasonic", "audio", "camera")
    assert plan_modalities(composable, ["lidar"], None) == ((*composable, "lidar"), ("lidar",))


def test_only_a_stack_with_the_lidar_keys_its_cache_by_it():
    rig = load_rig(RIG_FILE)
    assert stack_extras(PACKAGE_MODELS, rig) == {"lidar": "sector-posteriors-v3"}
    assert stack_extras(PACKAGE_MODELS) == {}  # the default rig has no LiDAR: the stack leaves it out
    assert stack_extras(CORE_MODELS, rig) == {}  # no lidar.safetensors in the core's directory


@pytest.fixture(scope="module")
def lidar_qa(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("qa-lidar")
    data = build_dataset(["yard-night:3:1.5"], perception_dir=PACKAGE_MODELS, drives_dir=root / "drives",
                         cache_dir=root / "cache", rig=RIG_FILE, progress=False)
    return root, data


def test_a_lidar_drive_caches_a_lidar_column(lidar_qa):
    root, data = lidar_qa
    assert data.modalities == (*MODALITIES, "lidar")
    assert data.token_counts()["lidar"] == LIDAR.tokens.count
    drive = "yard-night-s3-d1.5"
    assert bool(data.present[drive]["lidar"].all())
    toks, ok = data.batch_tokens(data.items[:4], "lidar")
    assert toks.shape == (4, 5, 128) and bool(ok.all()) and float(toks.abs().sum()) > 0
    bag = root / "drives" / drive
    assert data.sources[drive] == str(_cache_file(bag, PACKAGE_MODELS, root / "cache", stack_extras(
        PACKAGE_MODELS, load_rig(RIG_FILE))))
    assert data.sources[drive] != str(_cache_file(bag, PACKAGE_MODELS, root / "cache"))
    # the same drive through the core's directory (no LiDAR encoder) has no lidar column: refused by name
    core = build_dataset([str(bag)], perception_dir=CORE_MODELS, cache_dir=root / "core-cache", progress=False)
    assert core.modalities == MODALITIES
    with pytest.raises(LLMError, match=f"drive {drive} .*core-cache.* has no 'lidar' tokens"):
        core.batch_tokens(core.items[:1], "lidar")


def test_a_lidar_aligner_trains_beside_frozen_ones(lidar_qa, tmp_path: Path):
    from edge.llm.loading import load_llm
    from edge.llm.qa_model import load_run
    from edge.llm.train_aligners import train

    _, data = lidar_qa
    torch.manual_seed(0)
    llm = load_llm()
    base = QAModel(llm, QAConfig("mpnp", ("fisheye", "ultrasonic"), n_blocks=2, lora_rank=2, random_subsets=True))
    try:
        base.save(tmp_path / "base", {})
    finally:
        base.close()
    cfg = QAConfig("mpnp", ("fisheye", "ultrasonic", "lidar"), ("lidar",), 2, 2,
                   **kept_config({"lora_rank": 2, "random_subsets": True}, adding=True, lora=2))
    model = QAModel(llm, cfg, init_from=tmp_path / "base")
    try:
        kept = {k: v.clone() for k, v in model.conn.aligners["fisheye"].state_dict().items()}
        rec = train(model, data.subset(16, 0), tmp_path / "run", epochs=1, batch=8, lr=1e-3, progress=False)
        assert rec["loss_per_epoch"][0] > 0
        assert all(torch.equal(v, model.conn.aligners["fisheye"].state_dict()[k]) for k, v in kept.items())
    finally:
        model.close()
    aligner = load_aligner(tmp_path / "run" / "aligner_lidar.safetensors", modality="lidar")
    assert aligner.spec.token_layout == "sector-posteriors-v3" and aligner.spec.d_enc == 128
    again = load_run(llm, tmp_path / "run")
    try:
        again.use_only(("lidar",))
        assert len(again.answer(data, data.items[:2], max_new_tokens=3)) == 2
    finally:
        again.close()


def test_the_shipped_lidar_aligner_set_loads_beside_the_cores_files():
    """models/aligners/composable-lidar: the core's composable four and LoRA (links, unchanged) plus the LiDAR's
    aligner; it loads as a run, and its eval.json is a table the runtime reads, one set per measured subset."""
    from edge.llm.loading import load_llm
    from edge.llm.qa_model import load_run
    from edge.runtime.answerer import _measured_accuracy

    root = Path(__file__).resolve().parents[1] / "models" / "aligners"
    run = root / "composable-lidar"
    core = CORE_MODELS.parents[1] / "models" / "aligners" / "composable"
    for name in ("aligner_fisheye", "aligner_ultrasonic", "aligner_audio", "aligner_camera", "lora"):
        assert (run / f"{name}.safetensors").resolve() == (core / f"{name}.safetensors").resolve()
    model = load_run(load_llm(), run)
    try:
        assert model.cfg.modalities == (*MODALITIES, "lidar") and model.cfg.trained == ("lidar",)
        assert model.n_blocks == 8 and model.conn.aligners["lidar"].spec.token_layout == LIDAR.tokens.layout
    finally:
        model.close()
    acc, subsets = _measured_accuracy(root / "eval.json", {"composable-lidar"})
    assert "lidar" in subsets["composable-lidar"] and "fisheye+ultrasonic+audio+camera+lidar" in subsets["composable-lidar"]
    assert set(acc["composable-lidar:lidar"]) == {"day", "dusk", "night"}
