"""Range plausibility (edge.runtime.plausibility): stuck values, "no echo" against an obstacle view, recovery,
one diagnostic per sensor and one degradation record per span."""

from __future__ import annotations

import math

import numpy as np

from edge.kernels.grid import BevGrid
from edge.runtime.plausibility import Beam, ObstacleView, RangePlausibility

GRID = BevGrid(-5.0, 5.0, -5.0, 5.0, 0.2)
FRONT = Beam("front", 1.0, 0.0, 0.0, math.radians(60), 0.2, 4.0)  # at x = 1 m, looking along +x
MS = 1_000_000


def _reading(value: float, stamp_ns: int) -> dict:
    return {"range": value, "stamp_ns": stamp_ns}


def _view(obstacle_at: tuple[float, float] | None) -> ObstacleView:
    occ = np.zeros((50, 50), bool)
    if obstacle_at is not None:
        i, j = int((obstacle_at[0] + 5.0) / 0.2), int((obstacle_at[1] + 5.0) / 0.2)
        occ[i - 1: i + 2, j - 1: j + 2] = True
    return ObstacleView(occ, GRID, 0)


def test_beam_mask_covers_the_axis_not_behind_or_beyond() -> None:
    m = FRONT.mask(GRID)
    cell = lambda x, y: m[int((x + 5.0) / 0.2), int((y + 5.0) / 0.2)]  # noqa: E731
    assert cell(3.0, 0.0) and cell(4.0, 0.3) and not cell(-1.0, 0.0) and not cell(4.9, 0.0) and not cell(2.0, 2.0)


def test_no_echo_in_open_space_is_plausible_against_an_obstacle_is_not() -> None:
    p = RangePlausibility([FRONT])
    for k in range(40):  # +inf for 4 s with nothing in the beam: the normal state, never "stuck"
        assert p.update(k * 100 * MS, {"front": _reading(math.inf, k * 100 * MS)}, _view(None)) == ()
    flags = [p.update(k * 100 * MS, {"front": _reading(math.inf, k * 100 * MS)}, _view((3.0, 0.0)))
             for k in range(40, 50)]
    assert flags[0] == () and all(f == ("front",) for f in flags[1:])  # confirmed on the second reading
    # an echo again: plausible at once; the span is one record, the sensor named in one diagnostic
    assert p.update(50 * 100 * MS, {"front": _reading(2.0, 50 * 100 * MS)}, _view((3.0, 0.0))) == ()
    assert p.records == [{"kind": "implausible", "source": "ultrasonic/front", "count": 9, "first_ns": 4100 * MS,
                          "last_ns": 4900 * MS, "detail": p.records[0]["detail"]}]
    assert len(p.diagnostics) == 1 and "ultrasonic/front" in p.diagnostics[0]


def test_stuck_value_and_nan_are_implausible_until_the_value_changes() -> None:
    p = RangePlausibility([FRONT], stuck_frames=10)
    values = [1.5] * 15 + [1.52] + [math.nan] * 12
    out = [p.update(k * 100 * MS, {"front": _reading(v, k * 100 * MS)}) for k, v in enumerate(values)]
    assert [bool(o) for o in out] == [k >= 9 for k in range(15)] + [False] + [k >= 9 for k in range(12)]
    assert [(r["count"], r["first_ns"]) for r in p.open_records()] == [(6, 900 * MS), (3, 2500 * MS)]
    assert len(p.diagnostics) == 1  # once per sensor per run


def test_a_reading_serving_two_frames_is_not_a_stuck_repeat() -> None:
    p = RangePlausibility([FRONT], stuck_frames=3)
    for k in range(10):  # the same message (same stamp) at every frame: the sensor is slow, not stuck
        assert p.update(k * 100 * MS, {"front": _reading(1.5, 0)}) == ()


def test_beam_masks_can_be_made_before_the_first_frame() -> None:
    # made lazily, the first frame with a fisheye view paid ~16 ms for 12 beams, and that frame set every plan's
    # predicted tail (issue 16); the runtime prepares them on its BEV grid at start-up
    rear = Beam("rear", -1.0, 0.0, math.pi, math.radians(60), 0.2, 4.0)
    p = RangePlausibility([FRONT, rear])
    assert not p._masks
    p.prepare(GRID)
    assert set(p._masks) == {(GRID, "front"), (GRID, "rear")}
    assert np.array_equal(p._masks[GRID, "front"], FRONT.mask(GRID))
