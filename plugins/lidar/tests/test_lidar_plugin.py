"""The plugin as the core finds it: through its entry point, validated by the registry; its encoder in the
perception stack beside the built-ins; and the core naming neither the package nor the modality."""

from __future__ import annotations

import ast
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import numpy as np
import pytest
import torch

import edge
from edge.encoders.config import PerceptionConfig
from edge.encoders.scene_tokens import BEV_TOKENS
from edge.encoders.stack import PerceptionStack
from edge.errors import PluginError
from edge.frames import Frame
from edge.modalities import MessageDecoder
from edge.modalities.builtin import BUILTINS, ULTRASONIC
from edge.modalities.interface import lookup
from edge.modalities.registry import GROUP, build, discover
from edge.sensors.rig import load_rig

import edge_lidar
from edge_lidar.encoder import FEATURES, LidarEncoder
from edge_lidar.encoder import build as build_encoder
from edge_lidar.plugin import LIDAR
from edge_lidar.simulator import build as build_simulator

from test_lidar_simulator import RIG_FILE, box_world

CFG = PerceptionConfig()
ROOT = Path(edge.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rig():
    return load_rig(RIG_FILE)


def cloud_frame(rig, stamp_ns: int = 0, ultrasonic: bool = False) -> Frame:
    from edge.drives.sim_hooks import SimSetup
    from edge_lidar.messages import decode_points

    msg = build_simulator(SimSetup(box_world(6.0, -2.0), rig, 1, ("roof",))).messages(0.0, 0.1)[0][3]
    data = {"lidar": {"roof": decode_points(msg)}}
    if ultrasonic:
        data["ultrasonic"] = {s.name: {"range": 2.0, "status": "ok"} for s in rig.ultrasonic}
    return Frame(stamp_ns, data, None, None, {}, [])


def test_the_entry_point_is_installed_and_valid():
    (ep,) = [ep for ep in entry_points(group=GROUP) if ep.name == "lidar"]
    assert ep.value == "edge_lidar.plugin:LIDAR"
    reg = build([ep], strict=True)
    assert reg.names == ("lidar",) and reg["lidar"] is LIDAR
    installed = discover(strict=True)
    assert installed.names == (*(p.name for p in BUILTINS), "lidar") and not installed.problems


def test_the_declaration():
    assert LIDAR.bev and LIDAR.sync == "nearest" and LIDAR.weights == "lidar.safetensors"
    assert LIDAR.tokens.count == BEV_TOKENS  # the stack's scene tokens of a BEV modality
    assert LIDAR.topics_for() == ()  # optional on a vehicle: a bag read without its rig expects no LiDAR ...
    assert LIDAR.recorded_sensors(("/lidar/roof/points", "/fisheye/front/image_raw", "/lidar/a/b/points")) == ("roof",)
    assert [t.name for t in LIDAR.topics(("roof",))] == ["/lidar/roof/points"]  # ... and reads those it holds
    assert LIDAR.topics(("roof",))[0].types == ("sensor_msgs/msg/PointCloud2",) and LIDAR.key("roof") == "lidar/roof"
    assert isinstance(lookup(LIDAR.decoder), MessageDecoder)
    assert lookup(LIDAR.encoder) is build_encoder and lookup(LIDAR.simulator) is build_simulator


def test_a_registry_refuses_a_second_lidar():
    twin = EntryPoint("lidar", "edge_lidar.plugin:LIDAR", GROUP)
    other = EntryPoint("lidar2", "edge_lidar.plugin:LIDAR", GROUP)
    reg = build([twin, other])
    assert reg.names == ("lidar",) and len(reg.problems) == 1
    assert "declares modality 'lidar' under the entry point name 'lidar2'" in str(reg.problems[0])
    with pytest.raises(PluginError):
        build([twin, other], strict=True)


def test_encoder_gives_bev_features_of_the_fusion_shape(rig):
    enc = build_encoder(CFG, rig).eval()
    assert isinstance(enc, LidarEncoder) and enc.bev_channels == FEATURES and enc.n_tokens == BEV_TOKENS
    out = enc.encode(cloud_frame(rig))
    g = CFG.bev_grid
    assert out.bev.features.shape == (1, FEATURES, g.nx // 2, g.ny // 2) and out.tokens is None
    assert enc.encode(Frame(0, {"lidar": {"roof": None}}, None, None, {}, [])) is None
    assert enc.encode(Frame(0, {}, None, None, {}, [])) is None
    raster = enc.pillars(enc.preprocess(cloud_frame(rig)))
    i, j = round((5.0 - g.x_min) / g.resolution), round((-2.0 - g.y_min) / g.resolution)
    face = raster[0, :, i - 1: i + 1, j - 2: j + 2]  # the box's near face: x = 5 m, y = -3 .. -1 m
    assert face[0].sum() > 10 and face[1].max() > 1.5  # many returns, standing well above the ground
    assert raster[0, 1, i + 2: i + 10, j - 2: j + 2].max() == 0  # nothing seen behind the face


def test_encoder_refuses_a_rig_without_lidar():
    with pytest.raises(ValueError, match="no LiDAR"):
        build_encoder(CFG, load_rig())


def test_stack_fuses_it_with_a_builtin(rig, caplog):
    torch.manual_seed(0)
    stack = PerceptionStack(CFG, rig, plugins=(ULTRASONIC, LIDAR)).eval()
    assert tuple(stack.encoders) == ("ultrasonic", "lidar") and stack.fusion.names == ("ultrasonic", "lidar")
    out = stack.run(cloud_frame(rig, ultrasonic=True))
    assert out.modalities == ["ultrasonic", "lidar"] and out.tokens["lidar"].shape == (1, BEV_TOKENS, 128)
    alone = stack.run(cloud_frame(rig), use=("lidar",))
    assert alone.modalities == ["lidar"] and alone.bev_probs.shape[1:] == (CFG.bev_grid.nx, CFG.bev_grid.ny)
    with caplog.at_level("INFO", logger="edge.encoders.stack"):
        default = PerceptionStack(CFG, load_rig(), plugins=(ULTRASONIC, LIDAR))  # no LiDAR on the rig: left out
    assert tuple(default.encoders) == ("ultrasonic",) and "no LiDAR" in str(default.problems[0])
    # a rig without the sensor is the normal case: logged at INFO, not a warning on every default-rig run
    assert [r.levelname for r in caplog.records if "no LiDAR" in r.getMessage()] == ["INFO"]


def test_encoder_network_runs_on_onnxruntime(rig, tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    stack = PerceptionStack(CFG, rig, plugins=(LIDAR,)).eval()
    frame = cloud_frame(rig)
    eager = stack.encoders["lidar"].encode(frame).bev.features
    stack.set_backend("onnxruntime", modules=("lidar",), cache_dir=tmp_path)
    got = stack.encoders["lidar"].encode(frame).bev.features
    torch.testing.assert_close(got, eager, rtol=1e-4, atol=1e-4)


def _names_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) for a in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    names |= {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return names


def test_the_core_imports_nothing_of_the_package():
    files = [*(ROOT / "edge").rglob("*.py"), *(ROOT / "ros_nodes").rglob("*.py")]
    assert len(files) > 50
    offenders = [str(f.relative_to(ROOT)) for f in files if any("edge_lidar" in n for n in _names_in(f))]
    assert offenders == []
    assert Path(edge_lidar.__file__).resolve().parents[1] == ROOT / "plugins" / "lidar"


def test_training_hooks_give_the_features_encode_gives(rig):
    """The core's perception training reads the encoder through training_sample / bev_training."""
    enc = build_encoder(CFG, rig).eval()
    frame = cloud_frame(rig)
    row = enc.training_sample(frame)
    g = CFG.bev_grid
    assert row["pillars"].shape == (4, g.nx, g.ny) and row["pillars"].dtype == np.float16 and bool(row["present"])
    empty = enc.training_sample(Frame(0, {}, None, None, {}, []))
    assert not bool(empty["present"]) and empty["pillars"].shape == row["pillars"].shape and not empty["pillars"].any()
    with torch.no_grad():
        bev, detail = enc.bev_training({"pillars": row["pillars"][None]}, None)
    assert detail is None
    torch.testing.assert_close(bev, enc.encode(frame).bev.features, rtol=2e-3, atol=2e-3)  # float16 raster
