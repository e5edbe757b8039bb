"""Perception training and evaluation: targets, metrics, a short training run, resume, the shipped checkpoints;
the built-ins' training as before the training iterated the registry, and a fifth BEV plugin trained with them.

One short drive is generated per session (a few seconds of the siren scenario with a seed not used for the
shipped models), cached once and shared by the tests below.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from edge.encoders import LIGHTING, CheckpointError, PerceptionConfig, PerceptionStack
from edge.encoders.audio import event_targets
from edge.encoders.base import (BevFeatures, ClassScores, Columns, Diagnostics, EncoderOutput, ModalityEncoder,
                                TrainingRows)
from edge.encoders.camera import front_map_targets
from edge.encoders.config import OBSTACLE_CLASSES
from edge.errors import EdgeError
from edge.frames import Frame
from edge.modalities import TokenSpec
from edge.modalities.builtin import BUILTINS
from edge.perception.batches import columns
from edge.perception.data import CachedDrives, DriveSpec
from edge.perception.evaluate import evaluate
from edge.perception.labels import IGNORE, bev_targets, coarsen
from edge.perception.metrics import BevMetrics, Confusion, near_mask
from edge.perception.train import Trainer, TrainConfig, load_initial
from edge.sensors.rig import load_rig

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "perception"
CFG = PerceptionConfig()
FRESH = DriveSpec("siren", 4242, 8.0)   # seed not used by the shipped models (their card lists seeds 1, 2, 101)

# Tolerances of the shipped-checkpoint test (also stated in models/perception/README.md): one 8 s drive is a far
# smaller and more variable sample than the held-out set, so figures may fall this far below the card's.
TOL_BEV = 0.15
TOL_AUDIO = 0.15


@pytest.fixture(scope="session")
def fresh_drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edge.drives.generate import generate_drive
    out = tmp_path_factory.mktemp("perception") / FRESH.dirname
    generate_drive(out, FRESH.seed, FRESH.duration, FRESH.scenario, progress=False)
    return out


@pytest.fixture(scope="session")
def fresh_data(fresh_drive: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    stack = PerceptionStack(CFG, load_rig())
    return CachedDrives([fresh_drive], stack, 1, tmp_path_factory.mktemp("cache"), progress=False).arrays


def test_bev_targets_vote_and_layout() -> None:
    data = np.zeros((200, 200), np.int8)         # row = y, column = x (OccupancyGrid)
    data[100:102, 150:152] = 80                  # a pedestrian filling one 0.2 m cell at x = 7.0 m, y = 0.0 m
    data[50, 40] = 100                           # a lone 0.1 m static cell: one vote of four
    data[60:62, 40:42] = [[100, 100], [0, 0]]    # a tie: obstacle wins
    data[0:2, 0:2] = -1
    t = bev_targets({"data": data, "resolution": 0.1, "origin_xy": (-8.0, -10.0)}, CFG)
    assert t.shape == (100, 100)
    assert t[75, 50] == 3 and t[20, 25] == 0 and t[20, 30] == 1 and t[0, 0] == 4
    with pytest.raises(ValueError):
        bev_targets({"data": data, "resolution": 0.1, "origin_xy": (-10.0, -10.0)}, CFG)
    assert (bev_targets(None, CFG) == IGNORE).all()
    assert coarsen(t[None], 4).shape == (1, 25, 25)


def test_audio_targets_side() -> None:
    fp = load_rig().footprint()
    assert event_targets([], fp) == (0, -1)
    assert event_targets([{"class": "horn", "x": -20.0, "y": 1.0}], fp) == (2, 2)
    assert event_targets([{"class": "horn", "x": 1.0, "y": -9.0}, {"class": "siren", "x": 30.0, "y": 0.0}], fp) == (1, 0)


def test_metrics() -> None:
    c = Confusion(2)
    c.add(np.array([0, 0, 1, 1, IGNORE]), np.array([0, 1, 1, 1, 0]))
    np.testing.assert_allclose(c.iou(), [0.5, 2 / 3])
    near = near_mask(CFG, load_rig().footprint())
    assert near.any() and not near[40, 50]      # x = 0.1 m, y = 0.1 m is inside the body
    m = BevMetrics(near)
    gt = np.zeros((1, 100, 100), np.uint8)
    gt[0, 60:62, 48:52] = 2
    m.add(gt, gt.copy())
    s = m.summary()
    assert s["near5m_obstacle_iou"] == 1.0 and s["iou"]["vehicle"] == 1.0


def test_cache_contents(fresh_data: dict[str, np.ndarray]) -> None:
    n = len(fresh_data["stamp_ns"])
    assert n >= 70
    assert fresh_data["fisheye.images"].shape == (n, 4, *CFG.fisheye_hw, 3)
    assert fresh_data["fisheye.present"].all() and fresh_data["ultrasonic.ranges"].shape == (n, 12)
    assert fresh_data["bev"].shape == (n, 100, 100) and (fresh_data["bev"] != IGNORE).any()
    assert (fresh_data["audio.event"] == 1).any()     # the siren starts at 20 % of the drive
    fmap, valid = front_map_targets(fresh_data["bev"][:2], CFG)
    assert fmap.shape == (2, 8, 8) and valid.all()
    stack = PerceptionStack(CFG, load_rig())
    a = stack.audio.training_batch(columns(fresh_data, "audio"), np.arange(4), np.random.default_rng(0))
    assert a["logmel"].shape[1:] == (4, 32, 47)


def test_few_steps_loss_decreases(fresh_data: dict[str, np.ndarray], tmp_path: Path) -> None:
    torch.manual_seed(0)
    stack = PerceptionStack(CFG, load_rig())
    cfg = TrainConfig(steps=12, batch=4, head_batches={"audio": 16, "camera": 4}, lr=3e-3, warmup=1, seed=0)
    trainer = Trainer(stack, fresh_data, cfg)
    trainer.init_from_data()
    losses = [trainer.train_step()["loss"] for _ in range(10)]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2, losses
    # resumable: the saved state restores the step and the optimizer, and training continues
    trainer.save_state(tmp_path, {"seed": 0})
    again = Trainer(PerceptionStack.load(tmp_path), fresh_data, cfg)
    again.load_state(tmp_path)
    assert again.step == 10 and len(again.opt.state) == len(trainer.opt.state)
    assert np.isfinite(again.train_step()["loss"])


def test_init_fine_tunes_from_shipped_weights(fresh_drive: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`edge train perception --init DIR`: starts from DIR's weights and audio normalisation, not from scratch."""
    from edge.cli import main

    args = ["train", "perception", "--drives", str(fresh_drive), "--cache-dir", str(tmp_path / "cache"),
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--steps", "1", "--batch", "2",
            "--audio-batch", "8", "--lr", "1e-6", "--threads", "1", "--quiet"]
    assert main(args + ["--init", str(MODEL), "--resume"]) == 2
    assert "--resume and --init exclude each other" in capsys.readouterr().err
    assert main(args + ["--init", str(MODEL)]) == 0
    shipped, tuned = PerceptionStack.load(MODEL), PerceptionStack.load(tmp_path / "out")
    assert torch.equal(tuned.audio.mean, shipped.audio.mean) and torch.equal(tuned.audio.std, shipped.audio.std)
    w0, w1 = dict(shipped.named_parameters()), dict(tuned.named_parameters())  # (BatchNorm statistics move more)
    assert max(float((w0[k] - w1[k]).abs().max()) for k in w0) < 1e-3  # one step at lr 1e-6 from the shipped


REFERENCE = json.loads((ROOT / "tests" / "data" / "perception_training_reference.json").read_text())


@pytest.mark.usefixtures("one_thread")  # as recorded: another thread count sums gradients in another order
@pytest.mark.parametrize("plugins", ["registry", "builtins"])
def test_the_builtins_train_and_evaluate_as_before(fresh_data: dict[str, np.ndarray], plugins: str) -> None:
    """Three training steps and the evaluation after them give the figures the training gave before it iterated the
    registry (recorded by that code: tests/data/perception_training_reference.json), whether the stack is built
    from the registry or from the built-ins alone. Same batches, dropout, augmentation and losses in the same order
    (here identical to the last bit). Tolerances for another CPU's kernels: float32 noise on the first step's
    losses (the batches and the forward pass); Adam turns gradient noise into larger steps, so later ones get 1 %."""
    torch.manual_seed(0)
    stack = PerceptionStack(CFG, load_rig(), plugins=None if plugins == "registry" else BUILTINS)
    assert tuple(stack.encoders) == ("fisheye", "ultrasonic", "audio", "camera")
    cfg = TrainConfig(steps=12, batch=2, head_batches={"audio": 8, "camera": 2}, lr=3e-3, warmup=1, seed=0)
    trainer = Trainer(stack, fresh_data, cfg)
    trainer.init_from_data()
    for step, want in enumerate(REFERENCE["losses"]):
        got = trainer.train_step()
        assert list(got) == list(want)  # the same losses, summed in the same order
        assert got == (pytest.approx(want, rel=1e-4, abs=1e-5) if step == 0 else pytest.approx(want, rel=1e-2))
    res = evaluate(stack, {k: v[:24] for k, v in fresh_data.items()}, progress=False)
    want = REFERENCE["result"]
    assert list(res) == list(want) and list(res["bev"]) == ["fisheye+ultrasonic", "fisheye", "ultrasonic"]
    for subset, per in want["bev"].items():
        for light, s in per.items():
            assert res["bev"][subset][light]["samples"] == s["samples"]
            assert res["bev"][subset][light]["near5m_obstacle_iou"] == pytest.approx(s["near5m_obstacle_iou"], abs=0.01)
    for key in ("audio_event", "audio_direction", "camera_lighting"):
        assert res[key]["samples"] == want[key]["samples"]
        assert res[key]["accuracy"] == pytest.approx(want[key]["accuracy"], abs=0.01)
    assert res["camera_keep"] == want["camera_keep"]


@pytest.fixture(scope="module")
def shipped_results(fresh_data: dict[str, np.ndarray]) -> tuple[dict, dict]:
    card = json.loads((MODEL / "eval.json").read_text())
    return card, evaluate(PerceptionStack.load(MODEL), fresh_data, progress=False)


def test_shipped_checkpoints_reach_card(shipped_results: tuple[dict, dict]) -> None:
    card, res = shipped_results
    both, fe, us = (res["bev"][k]["all"] for k in ("fisheye+ultrasonic", "fisheye", "ultrasonic"))
    ref = card["bev"]["fisheye+ultrasonic"]["day"]
    assert both["near5m_obstacle_iou"] >= ref["near5m_obstacle_iou"] - TOL_BEV, (both, ref)
    assert both["miou"] >= card["bev"]["fisheye+ultrasonic"]["all"]["miou"] - TOL_BEV
    assert both["near5m_obstacle_iou"] >= max(fe["near5m_obstacle_iou"], us["near5m_obstacle_iou"]) - 0.05
    assert res["audio_event"]["accuracy"] >= card["audio_event"]["accuracy"] - TOL_AUDIO


@pytest.mark.xfail(reason="known miss, see models/perception/README.md: on this 8 s drive the siren is first heard "
                          "40-50 m ahead (weak) and later a closer horn ahead-right overlaps it while the label is the "
                          "siren behind; direction accuracy measured 0.47 here vs 0.854 on the held-out set",
                   strict=False)
def test_shipped_audio_direction_reaches_card(shipped_results: tuple[dict, dict]) -> None:
    card, res = shipped_results
    assert res["audio_direction"]["accuracy"] >= card["audio_direction"]["accuracy"] - TOL_AUDIO


class ObstacleSensor(ModalityEncoder):
    """A fifth BEV modality from outside the core: it 'sees' the ground truth's obstacles (so it has something to
    teach the fusion head) and sends nothing on every third millisecond stamp."""

    name = "radar"
    bev_channels = 8

    def __init__(self, cfg: PerceptionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.conv = nn.Conv2d(1, self.bev_channels, 3, stride=2, padding=1)

    @property
    def n_tokens(self) -> int:
        return 5

    def _map(self, sample: Frame) -> np.ndarray | None:
        gt = sample.ground_truth
        if gt is None or gt.bev is None or (sample.stamp_ns // 1_000_000) % 3 == 0:
            return None
        return np.isin(bev_targets(gt.bev, self.cfg), OBSTACLE_CLASSES).astype(np.float32)[None]

    def encode(self, sample: Frame, diag: Diagnostics | None = None, setting: float | None = None
               ) -> EncoderOutput | None:
        m = self._map(sample)
        return None if m is None else EncoderOutput(bev=BevFeatures(self.bev_training({"map": m[None]}, None)[0]))

    def training_sample(self, sample: Frame, diag: Diagnostics | None = None) -> dict[str, np.ndarray]:
        m = self._map(sample)
        g = self.cfg.bev_grid
        return {"map": m if m is not None else np.zeros((1, g.nx, g.ny), np.float32),
                "present": np.asarray(m is not None)}

    def bev_training(self, columns: Columns, rng: np.random.Generator | None) -> tuple[Tensor, None]:
        return torch.relu(self.conv(torch.from_numpy(columns["map"]))), None


class Brightness(ModalityEncoder):
    """A non-BEV plugin with a head of its own: the lighting from the front fisheye's mean brightness."""

    name = "thermal"
    head_batch = 4

    def __init__(self, cfg: PerceptionConfig) -> None:
        super().__init__()
        self.head = nn.Linear(1, len(LIGHTING))

    @property
    def n_tokens(self) -> int:
        return 1

    def training_sample(self, sample: Frame, diag: Diagnostics | None = None) -> dict[str, np.ndarray]:
        img = sample.sensor("fisheye", "front")
        level = np.float32(np.mean(img) / 255.0) if img is not None else np.float32(0.0)
        return {"level": np.asarray([level]), "present": np.asarray(img is not None)}

    def head_losses(self, rows: TrainingRows, batch: int, rng: np.random.Generator) -> dict[str, Tensor]:
        idx = rng.choice(np.flatnonzero(rows.columns["present"] & (rows.lighting >= 0)), batch)
        logits = self.head(torch.from_numpy(rows.columns["level"][idx]))
        return {"thermal_light": nn.functional.cross_entropy(logits, torch.from_numpy(rows.lighting[idx]))}

    def head_scores(self, rows: TrainingRows) -> dict[str, ClassScores | float]:
        served = np.flatnonzero(rows.columns["present"] & (rows.lighting >= 0))
        predicted = self.head(torch.from_numpy(rows.columns["level"][served])).argmax(1).numpy()
        return {"thermal_lighting": ClassScores(LIGHTING, rows.lighting[served], predicted)}


def build_radar(cfg: PerceptionConfig, rig: Any, table_cache: str | None = None) -> ObstacleSensor:
    return ObstacleSensor(cfg)


def build_thermal(cfg: PerceptionConfig, rig: Any, table_cache: str | None = None) -> Brightness:
    return Brightness(cfg)


def _fake(name: str, bev: bool) -> Any:
    return dataclasses.replace(BUILTINS[0], name=name, sensors=lambda rig: (), default_sensors=(),
                               topics=lambda sensors: (), bev=bev, tokens=TokenSpec(5 if bev else 1, 128, "fake-v1"),
                               weights=f"{name}.safetensors", health_streams=(name,),
                               encoder=f"{__name__}:build_{name}", witness=False, policies=())


RADAR, THERMAL = _fake("radar", True), _fake("thermal", False)


def test_a_fifth_bev_plugin_is_cached_trained_and_evaluated(fresh_drive: Path, fresh_data: dict[str, np.ndarray],
                                                            tmp_path: Path) -> None:
    """Its encoder is trained with the fusion head (off where a frame holds none of its data), every subset of the
    BEV modalities is evaluated, and a non-BEV plugin's own head trains and scores beside the built-ins'."""
    torch.manual_seed(0)
    stack = PerceptionStack(CFG, load_rig(), plugins=(*BUILTINS, RADAR, THERMAL))
    assert stack.bev_names == ("fisheye", "ultrasonic", "radar") and not stack.problems
    data = CachedDrives([fresh_drive], stack, 2, tmp_path / "cache", progress=False).arrays
    present = data["radar.present"]
    assert present.any() and not present.all()
    for key in ("fisheye.images", "ultrasonic.ranges", "audio.logmel", "camera.image", "bev", "lighting"):
        np.testing.assert_array_equal(data[key], fresh_data[key][::2])  # the built-ins' columns as without them
    with pytest.raises(EdgeError, match=r"head batch for radar: not a modality with its own head in the stack "
                                        r"\(audio, camera, thermal\)"):
        Trainer(stack, data, TrainConfig(head_batches={"radar": 2}))
    cfg = TrainConfig(steps=20, batch=4, head_batches={"audio": 0, "camera": 0}, lr=3e-3, warmup=1, seed=0)
    trainer = Trainer(stack, data, cfg)
    before = stack.radar.conv.weight.detach().clone()
    logs = [trainer.train_step() for _ in range(12)]
    assert list(logs[0]) == ["loss", "bev", "bev_coarse", "thermal_light"]  # the built-ins' heads switched off
    bev = [step["bev"] for step in logs]
    assert np.mean(bev[-3:]) < np.mean(bev[:3]) - 0.1, bev
    assert not torch.equal(stack.radar.conv.weight, before)  # the plugin's encoder learns through the fusion head
    res = evaluate(stack, data, progress=False)
    assert list(res["bev"]) == ["fisheye+ultrasonic+radar", "fisheye+ultrasonic", "fisheye+radar", "ultrasonic+radar",
                                "fisheye", "ultrasonic", "radar"]
    rows = (data["bev"] != IGNORE).any((1, 2))
    assert res["bev"]["fisheye+ultrasonic"]["all"]["samples"] == rows.sum()
    with_radar = (rows & present).sum()  # a subset is scored where all its modalities have data
    assert res["bev"]["radar"]["all"]["samples"] == res["bev"]["fisheye+radar"]["all"]["samples"] == with_radar
    assert res["thermal_lighting"]["samples"] == len(data["stamp_ns"]) and "audio_event" in res
    stack.save(tmp_path / "model")
    again = PerceptionStack.load(tmp_path / "model", plugins=(*BUILTINS, RADAR, THERMAL))
    torch.testing.assert_close(again.radar.conv.weight, stack.radar.conv.weight)


def test_init_widens_the_fusion_head_for_a_new_bev_plugin(tmp_path: Path) -> None:
    """Fine-tuning from weights without the plugin's: its encoder starts fresh and the trained fusion head is widened
    for it, giving the trained head's outputs whatever the new input holds, present or not, until trained."""
    torch.manual_seed(0)
    stack = PerceptionStack(CFG, load_rig(), plugins=(*BUILTINS, RADAR)).eval()
    assert load_initial(stack, MODEL) == ("radar",)
    shipped = PerceptionStack.load(MODEL, plugins=BUILTINS)
    fe, us, raster, on, _ = shipped.fusion.network_inputs()
    radar = torch.rand(1, ObstacleSensor.bev_channels, *fe.shape[-2:])
    for radar_on in (on, ~on):
        for flags in ((on, on), (on, ~on), (~on, on)):
            got = stack.fusion.forward_masked(fe, us, radar, raster, *flags, radar_on)
            want = shipped.fusion.forward_masked(fe, us, raster, *flags)
            torch.testing.assert_close(got, want)
    torch.testing.assert_close(stack.fisheye.backbone.stem[0][0].weight, shipped.fisheye.backbone.stem[0][0].weight)
    with pytest.raises(CheckpointError, match="no weights of any modality"):  # a mistyped --init DIR
        load_initial(stack, tmp_path)



def test_a_plugin_without_training_hooks_is_named(fresh_drive: Path, tmp_path: Path) -> None:
    class Untrainable(ObstacleSensor):
        training_sample = ModalityEncoder.training_sample
        bev_training = ModalityEncoder.bev_training

    stack = PerceptionStack(CFG, load_rig(), plugins=(*BUILTINS, RADAR))
    stack.encoders["radar"].__class__ = Untrainable
    with pytest.raises(EdgeError, match=r"cannot train modality 'radar' \(Untrainable\): no training_sample, "
                                        r"bev_training"):
        CachedDrives([fresh_drive], stack, 4, tmp_path / "cache", progress=False)

