"""Health models as a plugin hook (issue 11): the context estimator judges every modality by the health model its
plugin names, and a model that raises costs only its own modality (tests/test_plugin_stages.py: the estimator names
no modality).

The fake plugin lives in a module written to a tmp dir and reaches the estimator through an entry point handed to
`edge.modalities.registry.build`, as an installed package's would; nothing is installed.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import numpy as np
import pytest

from edge.errors import PluginError
from edge.frames import Frame
from edge.modalities import GROUP, Registry
from edge.modalities.registry import build, registry
from edge.runtime import context as context_module
from edge.runtime.context import ContextEstimator

MS = 1_000_000
LIDAR = '''
    from edge.drives.topics import TopicSpec
    from edge.modalities import ModalityPlugin, SyncKind, TokenSpec
    from edge.runtime.health import HealthUpdate, Observation

    class Cloud:
        """Delivering with 100 points or more; implausible when every point has the same range; raises on NaN."""

        def __init__(self, setup):
            self.plugin, self.diagnostics, self.seen = setup.plugin, [], 0

        def update(self, stamp_ns, entry, source_stamps, witness):
            cloud = entry.get("roof") if entry else None
            if cloud is not None and np.isnan(cloud).any():
                raise ValueError("NaN in the cloud")
            flat = cloud is not None and len(cloud) > 1 and np.ptp(cloud) == 0
            if flat and not self.diagnostics:
                self.diagnostics.append("lidar/roof: flat")
            seen = Observation(cloud is not None and len(cloud) >= 100, source_stamps.get("lidar/roof"), flat)
            return HealthUpdate({"lidar": seen}, implausible=("lidar/roof",) if flat else ())

        def degradations(self):
            return [{"kind": "implausible", "source": "lidar/roof"}] if self.diagnostics else []

    def cloud(setup):
        return Cloud(setup)

    def topics(sensors):
        return tuple(TopicSpec(f"/lidar/{n}/points", ("sensor_msgs/msg/PointCloud2",), True) for n in sensors)

    LIDAR = ModalityPlugin(name="lidar", sensors=lambda rig: ("roof",), default_sensors=("roof",), topics=topics,
                           sync=SyncKind.NEAREST, bev=False, tokens=TokenSpec(8, 128, "pillars-v1"),
                           weights="lidar.safetensors", health_streams=("lidar",), encoder="fake_lidar_health:build",
                           decoder="fake_lidar_health:POINTS", health="fake_lidar_health:cloud")
    NO_MODEL = ModalityPlugin(name="radar", sensors=lambda rig: ("front",), default_sensors=("front",),
                              topics=lambda s: (TopicSpec("/radar/front", ("radar_msgs/msg/RadarScan",), True),),
                              sync=SyncKind.NEAREST, bev=False, tokens=TokenSpec(4, 128, "radar-v1"),
                              weights="radar.safetensors", health_streams=("radar",),
                              encoder="fake_lidar_health:build", decoder="fake_lidar_health:POINTS",
                              health="fake_lidar_health:not_there")
'''


@pytest.fixture()
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    """The built-ins plus lidar (its own health model) and radar (a health model that does not import), installed as
    the estimator's registry (the built-ins' entry points only: the installed LiDAR package holds the name lidar)."""
    (tmp_path / "fake_lidar_health.py").write_text("import numpy as np\n" + textwrap.dedent(LIDAR))
    monkeypatch.syspath_prepend(str(tmp_path))
    builtins = [ep for ep in entry_points(group=GROUP) if ep.value.startswith("edge.modalities.builtin:")]
    reg = build([*builtins, EntryPoint("lidar", "fake_lidar_health:LIDAR", GROUP),
                 EntryPoint("radar", "fake_lidar_health:NO_MODEL", GROUP)], strict=True)
    monkeypatch.setattr(context_module, "registry", lambda: reg)
    yield reg
    sys.modules.pop("fake_lidar_health", None)


def frame(i: int, cloud: np.ndarray | None) -> Frame:
    """Frame i (10 Hz) with only the lidar's data (and the audio window, a built-in that stays healthy)."""
    t = i * 100 * MS
    return Frame(t, {"fisheye": {}, "ultrasonic": {}, "camera": {}, "audio": np.full((4, 160), 300, np.int16),
                     "lidar": {"roof": cloud}, "radar": {"front": None}},
                 None, None, {"audio": t, **({"lidar/roof": t} if cloud is not None else {})}, [])


def test_an_installed_plugin_is_judged_by_its_own_health_model(plugins: Registry,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    est = ContextEstimator(window=10)
    assert set(est.trackers) == {"fisheye", "ultrasonic", "audio", "camera", "lidar", "radar"}
    rng = np.random.default_rng(0)
    ctx = [est.update(frame(i, rng.uniform(1, 50, 200))) for i in range(4)]
    assert all(c.streams["lidar"].healthy for c in ctx) and ctx[-1].streams["lidar"].present
    sparse = est.update(frame(4, rng.uniform(1, 50, 20)))  # its model: under 100 points is not valid data
    assert not sparse.streams["lidar"].present and sparse.streams["lidar"].dropout_rate == pytest.approx(0.2)
    flat = est.update(frame(5, np.full(200, 7.0)))  # delivering, but its model calls it implausible
    assert flat.streams["lidar"].present and not flat.streams["lidar"].healthy
    assert flat.implausible == ("lidar/roof",)
    assert est.degradations == [{"kind": "implausible", "source": "lidar/roof"}]
    assert est.update(frame(6, rng.uniform(1, 50, 200))).streams["lidar"].healthy
    silent = [est.update(frame(i, None)) for i in range(7, 13)]  # silent 0.6 s: stale, whatever the model says
    assert silent[-1].streams["lidar"].staleness_s >= 0.5 and not silent[-1].streams["lidar"].healthy
    # a model that does not import leaves its modality unhealthy, named once; the others are judged as ever
    assert all(not c.streams["radar"].healthy and c.streams["audio"].healthy for c in ctx + silent)
    radar = [d for d in est.diagnostics if "radar" in d]
    assert len(radar) == 1 and "modality plugin 'radar' (health fake_lidar_health:not_there): failed to import" in radar[0]
    assert "lidar/roof: flat" in est.diagnostics
    assert any("fake_lidar_health:not_there" in r.getMessage() for r in caplog.records)


def test_a_health_model_that_raises_costs_its_modality_only(plugins: Registry,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    est, ref = ContextEstimator(window=10), ContextEstimator(window=10, plugins=plugins.plugins[:4])
    rng = np.random.default_rng(1)
    clouds = [rng.uniform(1, 50, 200) for _ in range(8)]
    clouds[3] = clouds[4] = np.full(200, np.nan)  # the model raises on these two frames
    with caplog.at_level(logging.WARNING):
        ctx = [est.update(frame(i, c)) for i, c in enumerate(clouds)]
    others = [ref.update(frame(i, c)) for i, c in enumerate(clouds)]
    assert [c.streams["lidar"].healthy for c in ctx] == [True, True, True, False, False, True, True, True]
    for c, r in zip(ctx, others):  # every built-in's health as without the plugin
        assert {k: v for k, v in c.streams.items() if k in r.streams} == r.streams
        assert (c.cameras, c.audio_level_db, c.lighting, c.implausible) == (r.cameras, r.audio_level_db, r.lighting,
                                                                              r.implausible)
    why = [d for d in est.diagnostics if "'lidar'" in d]
    assert len(why) == 1 and "modality 'lidar': health model raised ValueError: NaN in the cloud at 300000000 ns" \
        in why[0]
    assert sum("health model raised ValueError" in r.getMessage() for r in caplog.records) == 1


def test_a_malformed_health_reference_is_refused() -> None:
    with pytest.raises(PluginError, match="health 'edge_radar.health' must be 'module:callable'"):
        dataclasses.replace(registry()["audio"], health="edge_radar.health")
