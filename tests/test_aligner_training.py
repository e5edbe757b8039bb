"""Aligner training on the real SmolLM2 with real aligner shapes: the tail shortcut is exact, loss falls, only the
trained parts change, adapt picks N within its budget, and checkpoints that do not fit are refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edge.llm import CostShape, LLMError, ModalityAligner, load_llm, save_aligner, training_flops
from edge.llm.adapt import depth_limit, flops_budget_n, kept_config, plan_modalities, seconds_budget_n
from edge.llm.arch import LLMShape
from edge.llm.qa_data import QADataset, QAItem
from edge.llm.qa_model import QAConfig, QAModel, load_run
from edge.llm.train_aligners import train


@pytest.fixture(scope="module")
def llm():
    return load_llm()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def scenes() -> QADataset:
    """Two scenes that differ only in their encoder tokens; the same question has a different answer in each."""
    g = torch.Generator().manual_seed(0)
    tokens = {m: torch.randn(2, t, 128, generator=g) for m, t in (("fisheye", 16), ("ultrasonic", 8), ("audio", 8),
                                                                    ("camera", 16))}
    present = {m: torch.ones(2, dtype=torch.bool) for m in tokens}
    q = "Is it safe to reverse?"
    items = [QAItem(q, "yes", "reverse_safe", "day", "d", 0), QAItem(q, "no", "reverse_safe", "day", "d", 1)] * 4
    return QADataset(items, {"d": tokens}, {"d": present})


def full_forward_loss(model: QAModel, data: QADataset, items: list[QAItem]) -> torch.Tensor:
    """The same loss computed the ordinary way: whole model forward, logits of the answer positions."""
    ids, starts = zip(*(model.text.sequence(it.question, it.answer) for it in items))
    assert len(set(map(len, ids))) == 1
    model._feed(data, items)
    logits = model.model(input_ids=torch.tensor(ids)).logits
    tgt = [(b, j) for b, (s, a) in enumerate(zip(ids, starts)) for j in range(a, len(s))]
    return F.cross_entropy(logits[[b for b, _ in tgt], [j - 1 for _, j in tgt]], torch.tensor([ids[b][j] for b, j in tgt]))


@pytest.mark.parametrize("method", ["mpnp", "full", "text"])
def test_tail_loss_equals_full_forward(llm, method):
    data = scenes()
    model = QAModel(llm, QAConfig(method, ("fisheye", "camera"), n_blocks=2, lora_rank=2 if method == "mpnp" else 0))
    try:
        with torch.no_grad():
            for p in model.trainable():  # non-trivial LoRA/aligners so the comparison means something
                p.add_(0.05 * torch.randn_like(p))
            items = [data.items[0], data.items[2]]  # same length ("yes" twice)
            assert model.loss(data, items).item() == pytest.approx(full_forward_loss(model, data, items).item(), rel=1e-4)
    finally:
        model.close()


def test_few_steps_reduce_loss_only_aligners_change(llm, tmp_path: Path):
    torch.manual_seed(0)
    data = scenes()
    before = {k: v.clone() for k, v in llm.model.state_dict().items() if "layers.29" in k or "embed" in k}
    model = QAModel(llm, QAConfig("mpnp", ("fisheye", "camera"), n_blocks=2))
    try:
        first = model.loss(data, data.items).item()
        rec = train(model, data, tmp_path / "run", epochs=6, batch=8, lr=3e-3, progress=False)
        last = model.loss(data, data.items).item()
        assert last < first - 0.3, (first, last, rec["loss_per_epoch"])
        assert rec["train_flops"] > 0 and rec["train_seconds"] > 0 and rec["peak_rss_mb"] > 0
        # two distinct texts ("yes"/"no" answers) ran through the frozen trunk once each, not once per sample
        assert rec["trunk_passes"] == 2 and rec["trunk_share"] == pytest.approx(2 / rec["samples_seen"])
        assert rec["train_flops"] < rec["train_flops_paper"]
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
            "aligner_camera.safetensors", "aligner_fisheye.safetensors", "run.json"]
        after = llm.model.state_dict()
        assert all(torch.equal(v, after[k]) for k, v in before.items())  # the LLM is untouched
        answers = model.answer(data, data.items[:2], max_new_tokens=3)
        assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    finally:
        model.close()
    again = load_run(llm, tmp_path / "run")  # checkpoints round-trip
    try:
        assert again.loss(data, data.items).item() == pytest.approx(last, rel=1e-4)
    finally:
        again.close()


def weight_mappings(llm) -> int:
    """How many memory mappings of the LLM's safetensors file this process has (Linux /proc/self/maps)."""
    files = {str(p) for p in Path(llm.weights_dir).glob("*.safetensors")}
    with open("/proc/self/maps") as maps:
        return sum(line.split()[-1] in files for line in maps if len(line.split()) >= 6)


def test_released_trunk_trains_the_same_and_refuses_new_text(llm, tmp_path: Path):
    """Freeing the frozen blocks after the trunk cache is filled changes no loss, drops their weights, and a text
    the cache lacks is refused by name rather than run through missing blocks."""
    data = scenes()
    records = []
    for release, source in ((False, llm), (True, load_llm())):  # the release cuts its LLM: a private copy
        torch.manual_seed(0)
        model = QAModel(source, QAConfig("mpnp", ("fisheye", "camera"), n_blocks=2))
        try:
            before = sum(p.numel() for p in source.model.parameters())
            mapped = weight_mappings(source)
            records.append(train(model, data, None, epochs=2, batch=8, lr=3e-3, progress=False, release_trunk=release))
            if release:
                # the kept weights were copied out of the memory-mapped file, so its mapping (and the freed blocks'
                # resident pages) is gone: that is what lowers training's RSS
                assert weight_mappings(source) == mapped - 1
                kept = sum(p.numel() for p in source.model.parameters())
                per_block = sum(p.numel() for p in llm.model.model.layers[0].parameters())
                assert before - kept == 28 * per_block  # 30 blocks, the last 2 train
                with pytest.raises(LLMError, match="block 0 was released"):
                    model.answer(data, data.items[:1], max_new_tokens=2)
        finally:
            model.close()
    kept, released = records
    assert (kept["trunk_blocks_released"], released["trunk_blocks_released"]) == (0, 28)
    assert released["loss_per_epoch"] == pytest.approx(kept["loss_per_epoch"], rel=1e-5)
    assert released["trunk_passes"] == kept["trunk_passes"] == 2


def test_adapt_chooses_n_within_budget(llm):
    shape = CostShape.of(llm.model)
    from edge.llm.cost import ModalityCost

    mods = [ModalityCost(16, 128), ModalityCost(16, 128), ModalityCost(8, 128), ModalityCost(8, 128)]
    per = training_flops(shape, 17, 6, mods)
    samples, epochs = 200, 2
    n = flops_budget_n(per * samples * epochs * 1.0001, samples, epochs, shape, 17.0,
                       ("fisheye", "camera", "ultrasonic", "audio"), 128, lora=False,
                       n_tokens={"fisheye": 16, "camera": 16, "ultrasonic": 8, "audio": 8})
    assert n == 6
    assert training_flops(shape, 17, n, mods) * samples * epochs <= per * samples * epochs * 1.0001
    assert flops_budget_n(per * samples * epochs, samples, epochs, shape, 17.0,
                          ("fisheye", "camera", "ultrasonic", "audio"), 128, lora=False, cap=4,
                          n_tokens={"fisheye": 16, "camera": 16, "ultrasonic": 8, "audio": 8}) == 4
    with pytest.raises(LLMError, match="below the cheapest"):
        flops_budget_n(1e6, samples, epochs, shape, 17.0, ("camera",), 128, lora=False)


def test_time_budget_uses_time_measured_at_depth():
    """Time per sample is measured at N=1 and the deepest N and interpolated; the chosen N fits the budget."""
    measured = []

    def measure(n: int) -> float:  # a machine where every block costs 2 ms per sample on top of 10 ms
        measured.append(n)
        return 0.010 + 0.002 * n

    samples, epochs = 100, 2
    n, why = seconds_budget_n(10.0, samples, epochs, measure, 30)
    assert measured == [1, 30]
    assert n == 17  # 0.9 x 10 s / 200 samples = 45 ms per sample -> 10 + 2N <= 45 ms
    assert (0.010 + 0.002 * n) * samples * epochs <= 9.0 < (0.010 + 0.002 * (n + 1)) * samples * epochs
    assert "N=17" in why
    assert seconds_budget_n(1000.0, samples, epochs, measure, 8)[0] == 8  # capped
    with pytest.raises(LLMError, match="below the cheapest"):
        seconds_budget_n(1.0, samples, epochs, measure, 30)


def test_adapt_plans_add_and_switch():
    assert plan_modalities(("fisheye", "camera"), ["ultrasonic", "audio"], None) == (
        ("fisheye", "camera", "ultrasonic", "audio"), ("ultrasonic", "audio"))
    assert plan_modalities(("fisheye", "camera"), None, ["fisheye,camera", "ultrasonic,audio"]) == (
        ("ultrasonic", "audio"), ("ultrasonic", "audio"))
    with pytest.raises(LLMError, match="already attached"):
        plan_modalities(("camera",), ["camera"], None)
    with pytest.raises(LLMError, match="not attached"):
        plan_modalities(("camera",), None, ["fisheye", "audio"])
    with pytest.raises(LLMError, match="unknown modality"):
        plan_modalities(("camera",), ["no_such_modality"], None)


def test_checkpoint_that_does_not_fit_is_refused(llm, tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"config": {"method": "mpnp", "modalities": ["camera"], "trained": ["camera"], '
                                  '"n_blocks": 2, "lora_rank": 0, "d_enc": 128, "extra": {}}}')
    other = LLMShape(n_layers=30, d_model=960, n_heads=15, n_kv_heads=5, head_dim=64)  # a bigger LLM
    save_aligner(ModalityAligner.for_llm("camera", 128, other, 2), run / "aligner_camera.safetensors")
    with pytest.raises(LLMError, match="does not fit this LLM: d_model 960 != LLM 576"):
        load_run(llm, run)
    save_aligner(ModalityAligner.for_llm("camera", 64, llm.shape, 2), run / "aligner_camera.safetensors")
    with pytest.raises(LLMError, match="d_enc 64"):
        load_run(llm, run)
    with pytest.raises(LLMError, match="no run.json"):
        load_run(llm, tmp_path)


def test_lora_warm_start_must_fit_the_run(llm, tmp_path: Path):
    """A run's LoRA loads into a run of the same depth and rank; another depth, rank or file is refused by name."""
    model = QAModel(llm, QAConfig("mpnp", ("camera",), n_blocks=2, lora_rank=2))
    model.save(tmp_path / "run", {})
    model.close()
    again = QAModel(llm, QAConfig("mpnp", ("camera",), n_blocks=2, lora_rank=2), init_from=tmp_path / "run")
    assert again.lora.layers == [28, 29]
    top = again.lora.adapters["29_k_proj"].down.weight.detach().clone()
    again.close()
    shallower = QAModel(llm, QAConfig("mpnp", ("camera",), n_blocks=1, lora_rank=2), init_from=tmp_path / "run")
    assert shallower.lora.layers == [29]  # a run on fewer blocks takes the top blocks' adapters
    assert torch.equal(shallower.lora.adapters["29_k_proj"].down.weight, top)
    shallower.close()
    with pytest.raises(LLMError, match=r"LoRA for layers \[28, 29\], this run needs \[27, 28, 29\]"):
        QAModel(llm, QAConfig("mpnp", ("camera",), n_blocks=3, lora_rank=2), init_from=tmp_path / "run")
    with pytest.raises(LLMError, match="LoRA of rank 2, this run needs rank 4"):
        QAModel(llm, QAConfig("mpnp", ("camera",), n_blocks=2, lora_rank=4), init_from=tmp_path / "run")
    save_aligner(ModalityAligner.for_llm("camera", 128, llm.shape, 2), tmp_path / "run" / "lora.safetensors")
    with pytest.raises(LLMError, match="not a LoRA checkpoint"):
        QAModel(llm, QAConfig("mpnp", ("camera",), n_blocks=2, lora_rank=2), init_from=tmp_path / "run")
    assert not any(getattr(m, "_forward_hooks", None) for m in llm.model.modules())  # nothing left on the LLM


def test_adapt_depth_limits_from_the_starting_run():
    day = {"n_blocks": 8, "lora_rank": 8}
    assert depth_limit(day, adding=True, method="mpnp", lora=False) == (8, False)  # gates exist on 8 blocks only
    assert depth_limit(day, adding=False, method="mpnp", lora=True) == (8, True)  # its LoRA: exactly those blocks
    assert depth_limit(day, adding=False, method="mpnp", lora=False) == (None, False)
    assert depth_limit({"n_blocks": 8, "lora_rank": 0}, adding=False, method="mpnp", lora=True) == (None, False)
    assert depth_limit(day, adding=True, method="full", lora=True) == (None, False)


def test_adapt_keeps_composable_runs_composable_and_a_carried_lora_frozen():
    composable = {"n_blocks": 8, "lora_rank": 8, "random_subsets": True}
    assert kept_config(composable, adding=True, lora=8) == {"random_subsets": True, "lora_trained": False}
    assert kept_config(composable, adding=True, lora=8, train_lora=True)["lora_trained"]
    assert kept_config(composable, adding=False, lora=8)["lora_trained"]  # --switch trains it, as before
    assert kept_config({"n_blocks": 8, "lora_rank": 0}, adding=True, lora=0) == {"random_subsets": False,
                                                                               "lora_trained": True}


def test_adding_beside_frozen_aligners_trains_only_the_new_one(llm, tmp_path: Path):
    """edge adapt --add from a composable run with a LoRA: the carried LoRA and the kept aligners do not move, the
    added modality is fed on every training item and each kept one on about half, and the saved run loads."""
    torch.manual_seed(0)
    data = scenes()
    base = QAModel(llm, QAConfig("mpnp", ("fisheye",), n_blocks=2, lora_rank=2, random_subsets=True))
    try:
        base.save(tmp_path / "base", {})
    finally:
        base.close()
    cfg = QAConfig("mpnp", ("fisheye", "camera"), ("camera",), 2, 2,
                   **kept_config({"lora_rank": 2, "random_subsets": True}, adding=True, lora=2))
    model = QAModel(llm, cfg, init_from=tmp_path / "base")
    fed: dict[str, list[torch.Tensor]] = {"fisheye": [], "camera": []}
    feed = model.conn.feed
    model.conn.feed = lambda m, toks, mask=None: (fed[m].append(mask[:, 0].clone()), feed(m, toks, mask))[1]
    try:
        lora0 = {k: v.clone() for k, v in model.lora.state_dict().items()}
        fish0 = {k: v.clone() for k, v in model.conn.aligners["fisheye"].state_dict().items()}
        cam0 = {k: v.clone() for k, v in model.conn.aligners["camera"].state_dict().items()}
        params = model.trainable()
        assert {id(p) for p in params} == {id(p) for p in model.conn.aligners["camera"].parameters()}
        train(model, data, tmp_path / "run", epochs=3, batch=8, lr=3e-3, progress=False)
        assert all(torch.equal(v, model.lora.state_dict()[k]) for k, v in lora0.items())
        assert all(torch.equal(v, model.conn.aligners["fisheye"].state_dict()[k]) for k, v in fish0.items())
        assert any(not torch.equal(v, model.conn.aligners["camera"].state_dict()[k]) for k, v in cam0.items())
        assert bool(torch.cat(fed["camera"]).all())
        share = torch.cat(fed["fisheye"]).float().mean().item()
        assert 0.2 < share < 0.8
    finally:
        model.close()
    again = load_run(llm, tmp_path / "run")
    try:
        assert again.cfg.lora_trained is False and again.cfg.random_subsets
    finally:
        again.close()


def test_run_records_the_command_that_made_it(monkeypatch):
    """run.json's `command` is the process's own command line, quoted so that it reruns as written (edge adapt
    recorded none before)."""
    from edge.llm.train_aligners import command_line

    monkeypatch.setattr("sys.argv", ["/x/edge/cli.py", "adapt", "--from", "models/aligners/composable", "--add",
                                     "lidar", "--rig", "my rig.yaml"])
    assert command_line() == "edge adapt --from models/aligners/composable --add lidar --rig 'my rig.yaml'"
