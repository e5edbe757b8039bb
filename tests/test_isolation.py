"""Crash isolation bookkeeping (edge.runtime.isolation.Detacher): back-off, retry, spans, one diagnostic."""

from __future__ import annotations

import dataclasses

import pytest

from edge.modalities import Registry
from edge.modalities.registry import registry
from edge.runtime import stages
from edge.runtime.isolation import Detacher

ALL = ("fisheye", "ultrasonic", "audio")


def test_permanent_failure_backs_off_and_transient_one_recovers() -> None:
    d = Detacher(max_backoff=4)
    tried = []
    for t in range(20):  # audio raises on every try until frame 12
        use = d.allowed(ALL, t)
        tried.append("audio" in use)
        d.observe(t, use, {"audio": "ValueError: bad"} if "audio" in use and t < 12 else {})
    # tries at 0, then after back-offs of 1, 2, 4, 4 frames: 2, 5, 10, 15 (works from then on)
    assert [t for t, x in enumerate(tried) if x] == [0, 2, 5, 10, 15, 16, 17, 18, 19]
    assert d.open_records() == [{"kind": "detached", "source": "audio", "count": 15, "first_ns": 0, "last_ns": 14,
                                 "detail": "left out after an exception (ValueError: bad); retried with back-off"}]
    assert len(d.diagnostics) == 1 and d.diagnostics[0].startswith("audio: detached at 0 ns")


def test_fusion_failure_closes_when_fusion_runs_again() -> None:
    d = Detacher()
    d.observe(0, ALL, {"fusion": "RuntimeError: x"})
    assert d.allowed(ALL, 1) == ALL  # the fusion head is never held out, only reported
    d.observe(1, ("fisheye", "audio"), {})
    assert d.records == []  # no fusion without ultrasonic: still open
    d.observe(2, ALL, {})
    assert [(r["source"], r["first_ns"], r["last_ns"]) for r in d.records] == [("fusion", 0, 0)]


def test_fusion_of_a_plugin_bev_modality_closes_the_fusion_span(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether the fusion head ran comes from the declarations (edge.runtime.stages): fisheye with a fake BEV
    plugin fuses, without ultrasonic."""
    base = registry()
    lidar = dataclasses.replace(base["ultrasonic"], name="lidar", health_streams=("lidar",))
    reg = Registry((*base.plugins, lidar), (*base.sources, "lidar = fake"))
    monkeypatch.setattr(stages, "registry", lambda: reg)
    d = Detacher()
    d.observe(0, ("fisheye", "lidar"), {"fusion": "RuntimeError: x"})
    d.observe(1, ("lidar", "audio"), {})
    assert d.records == []  # one BEV modality: no fusion
    d.observe(2, ("fisheye", "lidar"), {})
    assert [(r["source"], r["first_ns"], r["last_ns"]) for r in d.records] == [("fusion", 0, 0)]
