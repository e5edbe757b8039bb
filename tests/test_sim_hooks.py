"""The simulator hook (issue 11): a modality plugin adds its sensor to generated drives through
`ModalityPlugin.simulator`, without changing a byte of what the built-ins generate."""

from __future__ import annotations

import dataclasses

import pytest

from edge.drives.sim_hooks import START_NS, SimSetup, to_ns
from edge.errors import PluginError
from edge.modalities.registry import registry


def test_simulator_is_declared_as_a_factory_reference() -> None:
    audio = registry()["audio"]
    assert all(p.simulator is None for p in registry())  # the built-ins simulate in the generator itself
    assert dataclasses.replace(audio, simulator="edge_lidar.sim:build").simulator == "edge_lidar.sim:build"
    for bad in ("edge_lidar.sim.build", "edge_lidar.sim:", 3):
        with pytest.raises(PluginError, match=r"simulator .* must be 'module:callable' \(its simulator factory\)"):
            dataclasses.replace(audio, simulator=bad)


def test_setup_gives_each_stream_its_own_reproducible_rng() -> None:
    a = SimSetup(world=None, rig=None, seed=3, sensors=("roof",))  # type: ignore[arg-type]
    b = dataclasses.replace(a, seed=4)
    draw = lambda s, name: s.rng(name).integers(0, 2**62, 4).tolist()  # noqa: E731
    assert draw(a, "lidar") == draw(a, "lidar") != draw(a, "lidar/roof")
    assert draw(a, "lidar") != draw(b, "lidar")
    assert to_ns(0.0) == START_NS and to_ns(0.1) == START_NS + 100_000_000
