"""Inference backends: ONNX Runtime against eager PyTorch on a real drive sample (every module), engine keys,
tampered cache files, refusal of a wrong engine, TensorRT's clear error where it cannot run, the runtime on
ONNX Runtime. TensorRT itself is not executed here (no GPU); its helpers that run without it are tested."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edge.backends import (BackendError, BackendUnavailable, EngineCache, VerificationError, field_diff,
                           get_backend, key_fields, key_of, prepare_engine)
from edge.backends.ort import OnnxRuntimeBackend
from edge.backends.trt import device_fields, missing_requirements, output_order
from edge.config import RuntimeConfig
from edge.drives.generate import generate_drive
from edge.drives.sync import SyncConfig, Synchronizer
from edge.encoders import PerceptionStack
from edge.encoders.base import image_tensor
from edge.encoders.camera import keep_variant
from edge.runtime.cli import run_drive
from edge.runtime.runtime import Runtime
from edge.runtime.scheduler import Budget

MODEL = Path(__file__).resolve().parents[1] / "models" / "perception"


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_drive(tmp_path_factory.mktemp("bk") / "siren", seed=7, duration=1.5, scenario="siren",
                          progress=False).path


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def stack(engine_dir: Path) -> PerceptionStack:
    """The shipped perception stack with every ONNX Runtime engine built (once for this file) in engine_dir."""
    s = PerceptionStack.load(MODEL)
    s.set_backend("onnxruntime", cache_dir=engine_dir)
    return s


@pytest.fixture(scope="module")
def samples(drive: Path) -> list:
    return list(Synchronizer(drive, SyncConfig(image_reduce=4)))


def full_sample(samples: list):
    return next(s for s in reversed(samples) if s.get("audio") is not None and s.sensor("camera", "front") is not None)


def real_inputs(stack: PerceptionStack, sample) -> dict[tuple[str, str], tuple[torch.Tensor, ...]]:
    """Each network part's inputs computed from a real sample, as the encoders compute them."""
    imgs, present = stack.fisheye.preprocess(sample)
    fe = (image_tensor(imgs)[None], torch.from_numpy(present)[None])
    raster = stack.ultrasonic.raster(torch.from_numpy(stack.ultrasonic.preprocess(sample))[None])
    feats = stack.audio.preprocess(sample)
    front = (image_tensor(stack.camera.preprocess(sample))[None],)
    with torch.no_grad():
        f_bev, _ = stack.fisheye(*fe)
        u_bev, _ = stack.ultrasonic.features(raster)
    on = torch.ones(1, dtype=torch.bool)
    out = {("fisheye", ""): fe, ("ultrasonic", ""): (raster,),
           ("audio", ""): tuple(torch.from_numpy(feats[k])[None] for k in ("logmel", "gcc", "gcc_avg")),
           ("fusion", ""): (f_bev, u_bev, raster, on, on.clone())}
    for keep in (1.0, 0.5, 0.25):
        out[("camera", keep_variant(keep))] = front
    return out


def test_onnxruntime_matches_eager_for_every_module_on_a_real_sample(stack: PerceptionStack, samples: list,
                                                                     engine_dir: Path) -> None:
    import onnx

    inputs = real_inputs(stack, full_sample(samples))
    assert set(inputs) == set(stack.engines.engines)  # every module and every camera keep ratio has an engine
    for (name, variant), args in inputs.items():
        module = getattr(stack, name)
        with torch.no_grad():
            eager = module.network(variant)(*args)
        got = stack.engines.get(name, variant, module)(*args)
        assert len(got) == len(eager)
        for g, e in zip(got, eager):
            assert g.shape == e.shape and g.dtype == e.dtype
            err = float((g - e).abs().max())
            assert err <= 1e-3 * max(1.0, float(e.abs().max())), (name, variant, err)
        engine = stack.engines.get(name, variant, module)
        ops = {(n.domain, n.op_type) for n in onnx.load(str(engine.path)).graph.node}
        assert not any(d.startswith("edge") for d, _ in ops), (name, ops)  # standard ops only: no plugin needed
        manifest = json.loads(engine.path.with_suffix(".json").read_text())
        assert manifest["fields"]["module"] == name and manifest["fields"]["backend"] == "onnxruntime"
        assert manifest["key"] == key_of(manifest["fields"]) and len(manifest["file_sha256"]) == 64
    assert not list(engine_dir.glob("*.tmp*"))


def test_stack_outputs_contract_is_the_same_on_onnxruntime(stack: PerceptionStack, samples: list) -> None:
    sample = full_sample(samples)
    calls: list[str] = []

    def timer(name, fn):
        calls.append(name)
        return fn()

    got = stack.run(sample, settings={"camera": 0.5}, timer=timer)
    assert calls == ["fisheye", "ultrasonic", "fusion", "audio", "camera@0.5"]
    assert stack.backend == "onnxruntime"
    stack.set_backend("eager")
    try:
        assert stack.backend == "eager" and stack.fusion.engine_for is None
        ref = stack.run(sample, settings={"camera": 0.5})
    finally:
        stack.set_backend("onnxruntime")  # engines are kept by the stack: no rebuild
    assert got.modalities == ref.modalities and set(got.tokens) == set(ref.tokens)
    for k in ref.tokens:
        assert got.tokens[k].shape == ref.tokens[k].shape and got.tokens[k].dtype == ref.tokens[k].dtype
        torch.testing.assert_close(got.tokens[k], ref.tokens[k], atol=1e-4, rtol=1e-4)
    assert got.bev_classes.dtype == ref.bev_classes.dtype and float((got.bev_classes == ref.bev_classes).mean()) > 0.999
    assert got.outputs["audio"]["event"] == ref.outputs["audio"]["event"]
    assert got.outputs["camera"]["lighting"] == ref.outputs["camera"]["lighting"]
    assert {m: set(o) for m, o in got.outputs.items()} == {m: set(o) for m, o in ref.outputs.items()}


# ---------------------------------------------------------------- keys and the cache, on a small module
class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.relu(self.conv(x))
        return y, self.head(y.mean((2, 3)))


@pytest.fixture()
def small() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    return Small().eval(), (torch.randn(1, 3, 16, 16),)


def test_cache_key_changes_with_weights_shapes_and_versions(small) -> None:
    module, args = small
    ort_fields = OnnxRuntimeBackend().key_fields()
    base = key_fields("small", "", module, args, ort_fields)
    assert key_of(base) == key_of(key_fields("small", "", module, args, ort_fields))  # deterministic
    changed = {}
    with torch.no_grad():
        module.head.bias[0] += 1e-3
    changed["weights"] = key_fields("small", "", module, args, ort_fields)
    with torch.no_grad():
        module.head.bias[0] -= 1e-3
    changed["inputs"] = key_fields("small", "", module, (torch.randn(1, 3, 16, 32),), ort_fields)
    changed["backend_version"] = key_fields("small", "", module, args, {**ort_fields, "backend_version": "0.0.1"})
    changed["opset"] = key_fields("small", "", module, args, OnnxRuntimeBackend(opset=17).key_fields())
    changed["variant"] = key_fields("small", "keep0.5", module, args, ort_fields)
    for what, fields in changed.items():
        assert key_of(fields) != key_of(base), what
        assert [d.split()[0] for d in field_diff(base, fields)] == [what]
    # TensorRT engines are also keyed by the GPU: the same fields on another device give another key.
    trt = {"backend": "tensorrt", "backend_version": "10.3.0", "torch_tensorrt": "2.5.0", "precision": "fp32"}
    orin = key_fields("small", "", module, args, {**trt, **device_fields("Orin", (8, 7))})
    h100 = key_fields("small", "", module, args, {**trt, **device_fields("NVIDIA H100", (9, 0))})
    assert key_of(orin) != key_of(h100)
    assert {d.split()[0] for d in field_diff(orin, h100)} == {"gpu", "compute_capability"}


def test_tampered_engine_or_manifest_is_detected_and_rebuilt(small, tmp_path: Path, caplog) -> None:
    module, args = small
    backend, cache = get_backend("onnxruntime"), EngineCache(tmp_path)
    first = prepare_engine("small", "", module, args, backend, cache)
    assert first.built and first.path == tmp_path / "small.onnxruntime.onnx"
    manifest_path = tmp_path / "small.onnxruntime.json"
    again = prepare_engine("small", "", module, args, backend, cache)
    assert not again.built  # valid: taken from the cache

    def rebuilt_because(expected: str) -> None:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="edge.backends"):
            engine = prepare_engine("small", "", module, args, backend, cache)
        assert engine.built, expected
        text = caplog.text
        assert str(first.path) in text and expected in text and "rebuilding" in text, text
        out = engine(*args)
        torch.testing.assert_close(out[1], module(*args)[1], atol=1e-5, rtol=1e-5)

    data = bytearray(first.path.read_bytes())  # a flipped byte inside the weights
    data[len(data) // 2] ^= 0xFF
    first.path.write_bytes(bytes(data))
    rebuilt_because("differs from the manifest's")

    m = json.loads(manifest_path.read_text())  # a field edited without its key
    m["fields"]["backend_version"] = "9.9.9"
    manifest_path.write_text(json.dumps(m))
    rebuilt_because("altered")

    m = json.loads(manifest_path.read_text())  # edited consistently (key recomputed): stale for this runtime
    m["fields"]["backend_version"] = "9.9.9"
    m["key"] = key_of(m["fields"])
    manifest_path.write_text(json.dumps(m))
    rebuilt_because("stale: backend_version 9.9.9 ->")

    manifest_path.write_text("{not json")
    rebuilt_because("unreadable")


class ExportsDifferently(nn.Module):
    """Behaves differently under export than eagerly: the engine cannot match eager PyTorch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 if torch.compiler.is_exporting() else x + 1.0


def test_engine_that_disagrees_with_eager_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match=r"wrong_module: onnxruntime engine refused: output 0 differs"):
        prepare_engine("wrong_module", "", ExportsDifferently().eval(), (torch.randn(1, 8),),
                       get_backend("onnxruntime"), EngineCache(tmp_path))
    assert not list(tmp_path.iterdir())  # nothing cached
    with pytest.raises(BackendError, match="training mode"):
        prepare_engine("small", "", Small().train(), (torch.randn(1, 3, 8, 8),), get_backend("onnxruntime"),
                       EngineCache(tmp_path))


def test_engine_with_fixed_shapes_says_so(small, tmp_path: Path) -> None:
    module, args = small
    engine = prepare_engine("small", "", module, args, get_backend("onnxruntime"), EngineCache(tmp_path))
    with pytest.raises(BackendError, match=r"small: the onnxruntime engine small.onnxruntime.onnx has fixed inputs"):
        engine(torch.randn(1, 3, 8, 8))


# ---------------------------------------------------------------- TensorRT: what runs without it
@pytest.mark.skipif(not missing_requirements(), reason="TensorRT can run here: the unavailable path does not apply")
def test_tensorrt_unavailable_is_a_clear_error(stack: PerceptionStack) -> None:
    with pytest.raises(BackendUnavailable, match=r"backend 'tensorrt' cannot run on this machine: missing") as err:
        stack.set_backend("tensorrt", modules=("fusion",))
    msg = str(err.value)
    assert ("torch_tensorrt" in msg) or ("CUDA" in msg)
    assert stack.backends["fusion"] == "onnxruntime"  # nothing changed
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        Runtime(backend="tensorrt")
    with pytest.raises(BackendError, match="unknown backend 'fast'"):
        get_backend("fast")


def test_tensorrt_output_order() -> None:
    assert output_order(["output1", "output0", "output2"]) == ["output0", "output1", "output2"]
    assert output_order(["fine", "coarse"]) == ["fine", "coarse"]


def test_run_config_backend_is_validated(tmp_path: Path) -> None:
    from edge.config import load_yaml_model
    from edge.errors import ConfigError

    cfg = tmp_path / "run.yaml"
    cfg.write_text("backend: onnxruntime\n")
    assert load_yaml_model(cfg, RuntimeConfig).backend == "onnxruntime"
    cfg.write_text("backend: fast\n")
    with pytest.raises(ConfigError, match="key 'backend'"):
        load_yaml_model(cfg, RuntimeConfig)


# ---------------------------------------------------------------- the runtime on ONNX Runtime
def test_runtime_on_onnxruntime_agrees_with_eager(drive: Path, stack: PerceptionStack, samples: list,
                                                  engine_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Frames through the runtime on ONNX Runtime against eager PyTorch on the same plans; then `edge run`'s
    report names the backend. The runtime gets the stack built above (loading its seven engines again from the
    cache costs ~10 s here; loading from the cache is tested on the small module), so this file stays fast."""
    monkeypatch.setattr(PerceptionStack, "load", classmethod(lambda cls, *a, **kw: stack))
    ort = Runtime(policy="all", budget=Budget(latency_ms=1e9), backend="onnxruntime", engine_cache=engine_dir)
    assert ort.stack.backend == "onnxruntime" and ort.backend == "onnxruntime"
    assert ort.stack.engines.cache.root == engine_dir and len(ort.stack.engines.engines) == 7
    agree = []
    for s in samples[-4:]:
        r = ort.step(s)
        stack.set_backend("eager")
        try:
            ref = stack.run(s, r.plan.modalities, {"camera": r.plan.keep})
        finally:
            stack.set_backend("onnxruntime", cache_dir=engine_dir)  # the engines are kept: nothing is rebuilt
        assert r.modalities_used == ref.modalities and (r.extras["audio"] or {}).get("event") == ref.outputs.get("audio", {}).get("event")
        agree.append(float((r.bev_classes == ref.bev_classes).mean()))
    assert min(agree) >= 0.99, agree
    assert set(r.plan.modalities) == {"fisheye", "ultrasonic", "audio", "camera"}
    on_ort = {key.split("/")[0] for key in ort.costs.stats() if key.split("/")[1] == "onnxruntime"}
    assert {"fisheye", "ultrasonic", "fusion", "audio", "camera@1"} <= on_ort  # costs measured on the engines

    made: dict = {}

    def reuse(*args, **kw):  # the runtime above (engines loaded, costs calibrated) instead of a second one
        made.update(kw)
        return ort

    monkeypatch.setattr("edge.runtime.runtime.Runtime", reuse)
    summary = run_drive(drive, RuntimeConfig(use_llm=False, backend="onnxruntime", engine_cache=str(engine_dir),
                                         max_frames=2), tmp_path / "rep", progress=False)
    assert made["backend"] == "onnxruntime" and made["engine_cache"] == str(engine_dir)
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert summary["backend"] == "onnxruntime" and doc["meta"]["backend"] == "onnxruntime"
    assert np.isfinite(summary["latency_ms"]["p50"])
