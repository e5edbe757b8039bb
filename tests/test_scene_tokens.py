"""Scene tokens: the slots the QA templates read (side, ring, class, counts, echoes) hold what the geometry says."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.drives.qa import DISTANCE_BINS, distance_answer, side_of
from edge.encoders.config import BEV_CLASSES, PerceptionConfig
from edge.encoders.scene_tokens import (BEV_TOKENS, ECHO_OFFSET, ECHO_WIDTH, N_RINGS, SIDE_ID_OFFSET, SIDES,
                                        EchoFeatures, SectorPooling, side_of_points)
from edge.sensors.rig import load_rig

RIG = load_rig()
FOOTPRINT = RIG.footprint()
CFG = PerceptionConfig()


def echoes() -> EchoFeatures:
    return EchoFeatures(np.array([s.position[:2] for s in RIG.ultrasonic]), np.array([s.yaw for s in RIG.ultrasonic]),
                        FOOTPRINT)


def ranges(**by_name: float) -> np.ndarray:
    """Every sensor hears nothing (+inf) except those named."""
    return np.array([by_name.get(s.name, math.inf) for s in RIG.ultrasonic])


def ring_of(features: np.ndarray, side: str) -> int | None:
    row = features[SIDES.index(side)]
    return int(row[:N_RINGS].argmax()) if row[2 * N_RINGS] else None


def test_sides_match_the_qa_generator() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(-8, 10, (500, 2))
    got = side_of_points(pts[:, 0], pts[:, 1], FOOTPRINT)
    assert [SIDES[i] for i in got] == [side_of(float(x), float(y), FOOTPRINT) for x, y in pts]


@pytest.mark.parametrize("distance", [0.5, 1.0, 2.5, 4.0, 5.0])
def test_front_echo_lands_in_the_qa_distance_bin(distance: float) -> None:
    # front centre sensors sit on the bumper (x = 3.70 = body front): range = distance from the body straight ahead
    f = echoes()(ranges(front_left_center=distance / math.cos(math.radians(8))))
    k = ring_of(f, "front")
    assert k is not None and DISTANCE_BINS[k - 1] == distance_answer(distance)
    assert f[SIDES.index("front"), N_RINGS + k:2 * N_RINGS].all() and not f[SIDES.index("front"), N_RINGS:N_RINGS + k].any()
    for side in ("left", "rear", "right"):  # nothing heard there: no echo, every facing sensor silent
        assert ring_of(f, side) is None and f[SIDES.index(side), 2 * N_RINGS + 1] == 1.0
    assert f[SIDES.index("front"), 2 * N_RINGS + 1] == 0.0  # the front heard something


def test_side_sensor_echo_counts_for_its_side_and_nearest_wins() -> None:
    f = echoes()(ranges(rear_right_side=1.5, rear_right_corner=3.0))
    assert ring_of(f, "right") == 3  # 1.5 m beside the body
    f2 = echoes()(ranges(rear_left_center=4.0, rear_right_center=1.0))
    assert ring_of(f2, "rear") == 2


def test_too_close_and_missing_readings() -> None:
    f = echoes()(ranges(front_right_center=-math.inf, rear_left_center=math.nan))
    assert ring_of(f, "front") == 0  # below min_range: touching
    rear = f[SIDES.index("rear")]
    assert rear[2 * N_RINGS + 2] == 1.0 and rear[2 * N_RINGS + 1] == 0.0  # silence there is not evidence
    assert f.shape == (len(SIDES), ECHO_WIDTH)


def test_sector_pooling_places_a_vehicle_and_counts_it() -> None:
    grid = CFG.bev_grid
    pool = SectorPooling(grid, FOOTPRINT, CFG.d_enc)
    nx, ny = round((grid.x_max - grid.x_min) / grid.resolution), round((grid.y_max - grid.y_min) / grid.resolution)
    probs = np.zeros((len(BEV_CLASSES), nx, ny), np.float32)
    probs[BEV_CLASSES.index("free")] = 1.0
    # a 1 m x 2 m vehicle 1.5 m left of the body, beside the middle of the car
    centres = grid.cell_centres()
    box = (np.abs(centres[..., 0] - 1.35) < 1.0) & (centres[..., 1] > 0.925 + 1.5) & (centres[..., 1] < 0.925 + 2.5)
    probs[:, box] = 0.0
    probs[BEV_CLASSES.index("vehicle"), box] = 1.0
    tok = pool(probs).numpy()
    left = tok[SIDES.index("left")]
    obstacle = left[:N_RINGS]
    assert int(np.flatnonzero(obstacle > 0.5)[0]) == 3  # first obstacle ring: 1.5 m
    vehicle = left[2 * N_RINGS:3 * N_RINGS]
    assert vehicle.max() == 1.0 and tok[SIDES.index("front"), 2 * N_RINGS:3 * N_RINGS].max() == 0.0
    surround = tok[len(SIDES)]
    assert surround[1] == 1.0 and surround[0] == 0.0  # one vehicle within 5 m
    assert tok[SIDES.index("left"), ECHO_OFFSET:SIDE_ID_OFFSET].max() == 0.0  # echo slots: the ultrasonic tokens'


def test_every_token_says_which_side_it_describes() -> None:
    """Modality keys carry no position, so the same scene on two sides must give two different tokens: each token
    carries a one-hot identity (front, left, rear, right, surround) after the echo slots, and nothing else there."""
    grid = CFG.bev_grid
    nx, ny = round((grid.x_max - grid.x_min) / grid.resolution), round((grid.y_max - grid.y_min) / grid.resolution)
    probs = np.zeros((len(BEV_CLASSES), nx, ny), np.float32)
    probs[BEV_CLASSES.index("free")] = 1.0  # an empty yard: every side's posteriors alike
    tok = SectorPooling(grid, FOOTPRINT, CFG.d_enc)(probs).numpy()
    assert SIDE_ID_OFFSET >= ECHO_OFFSET + ECHO_WIDTH and SIDE_ID_OFFSET + BEV_TOKENS <= CFG.d_enc
    np.testing.assert_array_equal(tok[:, SIDE_ID_OFFSET:SIDE_ID_OFFSET + BEV_TOKENS], np.eye(BEV_TOKENS))
    assert tok[:, SIDE_ID_OFFSET + BEV_TOKENS:].max(initial=0.0) == 0.0
    assert len({row.tobytes() for row in tok[:len(SIDES)]}) == len(SIDES)


def test_echo_rule_reads_the_distance_bins_back() -> None:
    import torch

    from edge.llm.probe import echo_distance_rule
    from edge.llm.qa_data import QADataset, QAItem

    feats = echoes()(ranges(rear_left_center=2.0, rear_right_side=1.5))
    tok = torch.zeros(3, 5, CFG.d_enc)
    tok[:2, :len(SIDES), ECHO_OFFSET:ECHO_OFFSET + ECHO_WIDTH] = torch.from_numpy(feats)
    items = [QAItem("q", "", f"distance_{side}", "day", "d", row) for row in (0, 2) for side in ("rear", "right", "left")]
    data = QADataset(items, {"d": {"ultrasonic": tok}}, {"d": {"ultrasonic": torch.tensor([True, True, False])}})
    assert echo_distance_rule(data, items) == ["2.0 meters", "1.5 meters", "none", "none", "none", "none"]
