"""Shared scenes for the calibrate tests: a rig whose true extrinsics differ from the nominal ones, and boards on
the ground rendered through its cameras (front, rear, right with measured poses; left chained via front)."""

from __future__ import annotations

import dataclasses

import numpy as np

from edge.calibration.boards import Board
from edge.calibration.extrinsics import Shot
from edge.calibration.synthetic import BoardRenderer
from edge.sensors.camera_models import pose_matrix
from edge.sensors.rig import load_rig

GROUND_BOARD = Board(7, 5, 0.25)
# Boards: on the ground, printed side up (board z points down), given as (x, y, yaw_deg) of the board origin; the
# shot between front and left is a board standing on a stand at the car's front-left corner, facing it (the
# fisheyes' overlap there is too oblique for a board on the ground). known = its pose is measured.
SHOTS = {
    "front": (("ground", 4.1, 0.5, 0.0), True, ["front"]),
    "rear": (("ground", -1.5, -0.5, 180.0), True, ["rear"]),
    "right": (("ground", 1.0, -1.6, 0.0), True, ["right"]),
    "front_left": (("standing", 4.25, 2.25, 45.0), False, ["front", "left"]),
}
# True pose errors of the nominal rig: (droll, dpitch, dyaw) degrees, (dx, dy, dz) metres, per fisheye.
ERRORS = {
    "front": ((0.4, -0.8, 1.2), (0.02, -0.01, 0.015)),
    "rear": ((-0.6, 0.5, -0.9), (-0.015, 0.02, 0.01)),
    "left": ((0.7, 1.0, -1.5), (0.01, 0.025, -0.02)),
    "right": ((-0.5, -0.7, 0.8), (-0.02, -0.01, 0.02)),
}


def board_pose(kind: str, x: float, y: float, angle_deg: float) -> np.ndarray:
    """T_base_board: flat on the ground (yaw angle_deg), or standing with its centre column at (x, y), its top
    row 1.45 m high, facing the direction angle_deg (board y pointing down)."""
    if kind == "ground":
        return pose_matrix([x, y, 0.0], np.radians([180.0, 0.0, angle_deg]))
    az = np.radians(angle_deg)
    z = np.array([np.cos(az), np.sin(az), 0.0])
    yv = np.array([0.0, 0.0, -1.0])
    xv = np.cross(yv, z)
    T = np.eye(4)
    T[:3, :3] = np.stack([xv, yv, z], axis=1)
    T[:3, 3] = np.array([x, y, 1.45]) - xv * (GROUND_BOARD.cols - 1) * GROUND_BOARD.square / 2
    return T


def true_cameras() -> dict:
    """The default rig's fisheyes with the ERRORS applied to their poses (the truth the solve must find)."""
    rig = load_rig()
    out = {}
    for name, cam in rig.fisheye.items():
        (dr, dp, dy), dt = ERRORS[name]
        delta = pose_matrix(dt, np.radians([dr, dp, dy]))
        T = cam.T_base_cam.copy()
        T[:3, :3] = delta[:3, :3] @ T[:3, :3]
        T[:3, 3] = T[:3, 3] + delta[:3, 3]
        out[("fisheye", name)] = dataclasses.replace(cam, T_base_cam=T)
    return out


def rendered_shots(seed: int = 0) -> list[Shot]:
    cams = true_cameras()
    rng = np.random.default_rng(seed)
    shots = []
    for name, (where, known, seen_by) in SHOTS.items():
        T_base_board = board_pose(*where)
        images = {}
        for cam_name in seen_by:
            cam = cams[("fisheye", cam_name)]
            images[("fisheye", cam_name)] = BoardRenderer(cam, GROUND_BOARD).render(cam.T_cam_base @ T_base_board, rng)
        shots.append(Shot(name, GROUND_BOARD, T_base_board if known else None, images))
    return shots
