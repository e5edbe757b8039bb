"""Encoder plugins and the fusion head: shapes, missing modalities, bad input, checkpoints, dependency rule."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edge.encoders import (AUDIO_EVENTS, BEV_CLASSES, CheckpointError, Diagnostics, InputError, PerceptionConfig,
                           PerceptionStack, audio_features)
from edge.encoders.audio import ROTATE_PERM, permute_features
from edge.encoders.base import BevFeatures, EncoderOutput, ModalityEncoder, to_bgr
from edge.frames import Frame
from edge.modalities import TokenSpec
from edge.modalities.builtin import BUILTINS  # the four; an installed package (plugins/lidar) adds its own
from edge.modalities.registry import registry
from edge.sensors.rig import load_rig

CFG = PerceptionConfig()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stack() -> PerceptionStack:
    torch.manual_seed(0)
    return PerceptionStack(CFG, load_rig()).eval()


def make_sample(rng: np.random.Generator, fisheye: bool = True, ultrasonic: bool = True, audio: bool = True,
                front: bool = True, fisheye_size: tuple[int, int] = (120, 160)) -> Frame:
    rig = load_rig()
    fe = {c: rng.integers(0, 255, (*fisheye_size, 3), dtype=np.uint8) if fisheye else None
          for c in ("front", "rear", "left", "right")}
    us = {s.name: ({"range": float(rng.uniform(0.3, 5.0)), "status": "ok"} if ultrasonic else None)
          for s in rig.ultrasonic}
    pcm = rng.integers(-3000, 3000, (4, 15360)).astype(np.int16) if audio else None
    img = rng.integers(0, 255, (96, 160, 3), dtype=np.uint8) if front else None
    return Frame(1, {"fisheye": fe, "ultrasonic": us, "audio": pcm, "camera": {"front": img}}, None, None, {}, [])


def test_module_shapes(stack: PerceptionStack) -> None:
    g = CFG.bev_grid
    imgs = torch.randn(2, 4, 3, *CFG.fisheye_hw)
    fe, ft = stack.fisheye(imgs, torch.ones(2, 4, dtype=torch.bool))
    assert fe.shape == (2, CFG.fisheye_channels, g.nx // 2, g.ny // 2) and ft.shape == (2, 16, CFG.d_enc)
    us, ut, raster = stack.ultrasonic(torch.full((2, 12), 1.5))
    assert us.shape == (2, CFG.ultrasonic_channels, g.nx // 2, g.ny // 2) and ut.shape == (2, 8, CFG.d_enc)
    assert raster.shape == (2, 3, g.nx, g.ny)
    coarse, fine = stack.fusion({"fisheye": fe, "ultrasonic": us}, {"ultrasonic": raster})
    assert coarse.shape == (2, len(BEV_CLASSES), g.nx // 4, g.ny // 4) and fine.shape == (2, len(BEV_CLASSES), g.nx, g.ny)
    f = {k: torch.from_numpy(v)[None].repeat(2, *[1] * v.ndim) for k, v in audio_features(np.zeros((4, 15360))).items()}
    ev, dr, at = stack.audio(f["logmel"], f["gcc"], f["gcc_avg"])
    assert ev.shape == (2, len(AUDIO_EVENTS)) and dr.shape == (2, 4) and at.shape == (2, 8, CFG.d_enc)
    for keep in (1.0, 0.5, 0.25):
        tok, light, fmap = stack.camera(torch.randn(2, 3, *CFG.front_hw), keep)
        assert tok.shape == (2, 16, CFG.d_enc) and light.shape == (2, 3) and fmap.shape == (2, 8, 8)
        assert torch.isfinite(tok).all()


def test_fusion_missing_modalities(stack: PerceptionStack) -> None:
    fe, _ = stack.fisheye(torch.randn(1, 4, 3, *CFG.fisheye_hw))
    us, _, raster = stack.ultrasonic(torch.full((1, 12), 2.0))
    for f, u, r in ((fe, None, None), (None, us, raster), (fe, us, raster)):
        _, fine = stack.fusion({"fisheye": f, "ultrasonic": u}, {"ultrasonic": r})
        assert fine.shape[-2:] == (CFG.bev_grid.nx, CFG.bev_grid.ny) and torch.isfinite(fine).all()
    with pytest.raises(ValueError, match="at least one"):
        stack.fusion({})


@pytest.mark.parametrize("present", [
    dict(), dict(fisheye=False), dict(ultrasonic=False), dict(audio=False, front=False),
    dict(fisheye=False, ultrasonic=False)])
def test_run_any_subset(stack: PerceptionStack, present: dict[str, bool]) -> None:
    out = stack.run(make_sample(np.random.default_rng(1), **present))
    expect_bev = present.get("fisheye", True) or present.get("ultrasonic", True)
    assert (out.bev_classes is not None) == expect_bev
    if expect_bev:
        assert out.bev_classes.shape == (CFG.bev_grid.nx, CFG.bev_grid.ny)
        grid = out.occupancy_grid()
        assert grid.shape == (CFG.bev_grid.ny, CFG.bev_grid.nx) and set(np.unique(grid)) <= {0, 100, 90, 80, -1}
    assert ("audio" in out.tokens) == present.get("audio", True)
    assert ("camera" in out.tokens) == present.get("front", True)
    assert ("fisheye" in out.tokens) == present.get("fisheye", True)
    for tok in out.tokens.values():
        assert tok.ndim == 3 and tok.shape[-1] == CFG.d_enc


def test_single_missing_camera_and_sensor(stack: PerceptionStack) -> None:
    s = make_sample(np.random.default_rng(2))
    s.data["fisheye"]["left"] = None
    s.data["ultrasonic"]["front_left_side"] = None
    out = stack.run(s)
    assert out.modalities == ["fisheye", "ultrasonic"] and out.bev_classes is not None


def test_images_converted_or_rejected() -> None:
    rng = np.random.default_rng(3)
    diag = Diagnostics()
    half = to_bgr(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (96, 128), "cam", diag, (480, 640))
    assert half.shape == (96, 128, 3) and not diag.messages           # a reduced decode of the camera: silent
    odd = to_bgr(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8), (96, 128), "cam", diag, (480, 640))
    assert odd.shape == (96, 128, 3) and any("resized" in m for m in diag.messages)
    mono = to_bgr(rng.integers(0, 255, (120, 160), dtype=np.uint8), (96, 128), "cam", diag, (480, 640))
    assert mono.shape == (96, 128, 3) and any("mono" in m for m in diag.messages)
    deep = to_bgr(rng.integers(0, 65535, (96, 128), dtype=np.uint16), (96, 128), "cam", diag)
    assert deep.dtype == np.uint8
    with pytest.raises(InputError, match="aspect"):
        to_bgr(np.zeros((100, 300, 3), np.uint8), (96, 128), "cam")
    with pytest.raises(InputError, match="channels"):
        to_bgr(np.zeros((96, 128, 5), np.uint8), (96, 128), "cam")
    with pytest.raises(InputError, match="pixel type"):
        to_bgr(np.zeros((96, 128, 3), np.int32), (96, 128), "cam")


def test_bad_ranges_ignored_with_diagnostic(stack: PerceptionStack) -> None:
    s = make_sample(np.random.default_rng(4))
    s.data["ultrasonic"]["front_left_side"] = {"range": float("nan"), "status": "invalid"}
    s.data["ultrasonic"]["rear_left_side"] = {"range": 40.0, "status": "invalid"}
    s.data["ultrasonic"]["rear_right_side"] = {"range": float("inf"), "status": "no_echo"}
    diag = Diagnostics()
    ranges = stack.ultrasonic.preprocess(s, diag)
    names = stack.ultrasonic.sensor_names
    assert np.isnan(ranges[names.index("front_left_side")]) and np.isnan(ranges[names.index("rear_left_side")])
    assert ranges[names.index("rear_right_side")] == np.inf
    assert len(diag.messages) == 2 and all("ignored" in m for m in diag.messages)
    assert stack.run(s).bev_classes is not None


def test_audio_bad_input_and_rotation_equivariance() -> None:
    rng = np.random.default_rng(5)
    pcm = rng.integers(-2000, 2000, (4, 15360)).astype(np.int16)
    with pytest.raises(InputError):
        audio_features(pcm[:3])
    with pytest.raises(InputError, match="NaN"):
        audio_features(np.full((4, 15360), np.nan, np.float32))
    rotated = permute_features(audio_features(pcm), ROTATE_PERM)
    direct = audio_features(pcm[ROTATE_PERM])
    for k in direct:
        np.testing.assert_allclose(rotated[k], direct[k], atol=1e-5)


def test_checkpoint_roundtrip(stack: PerceptionStack, tmp_path: Path) -> None:
    stack.save(tmp_path / "ck", {"note": "\"test\""})
    loaded = PerceptionStack.load(tmp_path / "ck")
    s = make_sample(np.random.default_rng(6))
    a, b = stack.run(s), loaded.run(s)
    np.testing.assert_allclose(a.bev_probs, b.bev_probs, atol=1e-5)
    torch.testing.assert_close(a.tokens["camera"], b.tokens["camera"])
    (tmp_path / "ck" / "audio.safetensors").unlink()
    with pytest.raises(CheckpointError, match="audio"):
        PerceptionStack.load(tmp_path / "ck")
    with pytest.raises(CheckpointError):
        PerceptionStack.load(tmp_path / "nowhere")


def test_cost_figures(stack: PerceptionStack) -> None:
    costs = {n: getattr(stack, n).cost() for n in ("fisheye", "ultrasonic", "audio")}
    assert all(c.params > 0 and c.macs > 0 for c in costs.values())
    assert stack.camera.cost(0.25).macs < stack.camera.cost(1.0).macs


def test_encoders_do_not_import_runtime_or_ros() -> None:
    code = ("import sys, edge.encoders; bad = [m for m in sys.modules if m.split('.')[0] == 'rclpy' or "
            "m.startswith(('edge.runtime', 'edge.scheduler', 'ros_nodes'))]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


class FakeLidar(ModalityEncoder):
    """A fifth BEV modality from outside the core: features made from the stamp, none on odd stamps."""

    name = "lidar"
    bev_channels = 8

    def __init__(self, cfg: PerceptionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.conv = torch.nn.Conv2d(1, self.bev_channels, 1)

    @property
    def n_tokens(self) -> int:
        return 5

    def encode(self, sample: Any, diag: Diagnostics | None = None, setting: float | None = None
               ) -> EncoderOutput | None:
        if sample.stamp_ns % 2:
            return None
        g = self.cfg.bev_grid
        x = torch.rand(1, 1, g.nx // 2, g.ny // 2, generator=torch.Generator().manual_seed(sample.stamp_ns))
        return EncoderOutput(bev=BevFeatures(torch.relu(self.conv(x))))


def build_lidar(cfg: PerceptionConfig, rig: Any, table_cache: str | None = None) -> FakeLidar:
    return FakeLidar(cfg)


LIDAR = dataclasses.replace(registry()["fisheye"], name="lidar", topics=lambda sensors: (), default_sensors=(),
                            tokens=TokenSpec(5, 128, "fake-v1"), weights="lidar.safetensors",
                            health_streams=("lidar",), encoder=f"{__name__}:build_lidar")


def test_a_fifth_bev_plugin_joins_the_stack_and_the_fusion(tmp_path: Path) -> None:
    broken = dataclasses.replace(LIDAR, name="radar", weights="radar.safetensors", health_streams=("radar",),
                                 encoder="no_such_radar_package.encoder:build")
    torch.manual_seed(0)
    squatter = dataclasses.replace(LIDAR, name="sectors", weights="sectors.safetensors", health_streams=("sectors",))
    five = PerceptionStack(CFG, load_rig(), plugins=(*BUILTINS, LIDAR, broken, squatter)).eval()
    assert tuple(five.encoders) == ("fisheye", "ultrasonic", "audio", "camera", "lidar")
    assert len(five.problems) == 2 and "modality 'radar' (encoder no_such_radar_package.encoder:build): failed to " \
        "import: ModuleNotFoundError" in str(five.problems[0])  # named and left out, the others built
    assert "modality 'sectors': its name is taken by the perception stack" in str(five.problems[1])
    assert five.fusion.names == ("fisheye", "ultrasonic", "lidar")
    assert five.fusion.coarse[0][0].weight.shape[1] == CFG.fisheye_channels + CFG.ultrasonic_channels + 8 + 3
    even = dataclasses.replace(make_sample(np.random.default_rng(7)), stamp_ns=2)
    calls: list[str] = []

    def timer(name: str, fn: Any) -> Any:
        calls.append(name)
        return fn()

    out = five.run(even, settings={"camera": 0.5}, timer=timer)
    assert calls == ["fisheye", "ultrasonic", "lidar", "fusion", "audio", "camera@0.5"]
    assert out.modalities == ["fisheye", "ultrasonic", "lidar"] and set(out.alone) == set(out.modalities)
    assert out.tokens["lidar"].shape == (1, 5, CFG.d_enc) and set(out.outputs) == {"audio", "camera"}
    for use in (("lidar",), ("ultrasonic", "lidar"), ("fisheye", "lidar")):  # any subset
        got = five.run(even, use)
        assert got.modalities == list(use) and got.bev_classes is not None
        if len(use) == 1:  # one BEV modality: the map is its own posterior
            np.testing.assert_array_equal(got.bev_probs, got.alone["lidar"])
    odd = dataclasses.replace(even, stamp_ns=3)  # no lidar data: fused from the others, as without the plugin
    assert five.run(odd).modalities == ["fisheye", "ultrasonic"]
    five.save(tmp_path / "five")
    again = PerceptionStack.load(tmp_path / "five", plugins=(*BUILTINS, LIDAR))
    torch.testing.assert_close(again.run(even).tokens["lidar"], out.tokens["lidar"])
    with pytest.raises(CheckpointError, match="lidar.safetensors: missing"):  # the shipped models have no lidar
        PerceptionStack.load(ROOT / "models" / "perception", plugins=(*BUILTINS, LIDAR))
    mixed = tmp_path / "mixed"
    shutil.copytree(ROOT / "models" / "perception", mixed)
    shutil.copy(tmp_path / "five" / "lidar.safetensors", mixed)
    with pytest.raises(CheckpointError, match="fusion.safetensors: does not match the fusion module"):
        PerceptionStack.load(mixed, plugins=(*BUILTINS, LIDAR))  # a fusion head trained for two BEV inputs


def test_fusion_masked_form_checks_its_inputs(stack: PerceptionStack) -> None:
    args = stack.fusion.network_inputs()
    assert len(args) == 5  # fisheye, ultrasonic features; the ultrasonic raster; two presence flags
    with pytest.raises(ValueError, match="5 tensors expected"):
        stack.fusion.forward_masked(*args[:4])
    with pytest.raises(ValueError, match="no input \\['lidar'\\]"):
        stack.fusion({"lidar": args[0]})
