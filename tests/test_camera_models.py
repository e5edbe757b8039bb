"""The rig's camera models agree with OpenCV on random points and random calibrations."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from edge.sensors.camera_models import FisheyeCamera, PinholeCamera, optical_pose
from edge.sensors.rig import load_rig


def random_fisheye(rng: np.random.Generator) -> FisheyeCamera:
    w, h = int(rng.integers(320, 1600)), int(rng.integers(240, 1200))
    f = rng.uniform(0.25, 0.45) * w
    k = [rng.uniform(-0.05, 0.05), rng.uniform(-0.01, 0.01), rng.uniform(-0.002, 0.002), rng.uniform(-1e-4, 1e-4)]
    K = np.array([[f, 0, w / 2 + rng.uniform(-20, 20)], [0, f * rng.uniform(0.98, 1.02), h / 2 + rng.uniform(-20, 20)], [0, 0, 1]])
    pose = optical_pose(rng.uniform(-2, 2, 3), rng.uniform(-math.pi, math.pi, 3))
    return FisheyeCamera("cam", "cam_optical", w, h, K, np.array(k), pose, 10.0, fov=math.radians(rng.uniform(150, 200)))


def random_pinhole(rng: np.random.Generator) -> PinholeCamera:
    w, h = int(rng.integers(320, 1920)), int(rng.integers(240, 1080))
    f = rng.uniform(0.6, 1.5) * w
    K = np.array([[f, 0, w / 2 + rng.uniform(-20, 20)], [0, f * rng.uniform(0.98, 1.02), h / 2 + rng.uniform(-20, 20)], [0, 0, 1]])
    d = np.array([rng.uniform(-0.3, 0.1), rng.uniform(-0.1, 0.1), rng.uniform(-1e-3, 1e-3), rng.uniform(-1e-3, 1e-3), rng.uniform(-0.02, 0.02)])
    pose = optical_pose(rng.uniform(-2, 2, 3), rng.uniform(-math.pi, math.pi, 3))
    return PinholeCamera("cam", "cam_optical", w, h, K, d, pose, 10.0)


def points_in_front(rng: np.random.Generator, n: int, max_angle: float) -> np.ndarray:
    """Random points with angle to the optical axis below max_angle, at 0.3 to 30 m."""
    theta = rng.uniform(0, max_angle, n)
    phi = rng.uniform(-math.pi, math.pi, n)
    r = rng.uniform(0.3, 30, n)
    return np.stack([r * np.sin(theta) * np.cos(phi), r * np.sin(theta) * np.sin(phi), r * np.cos(theta)], axis=1)


@pytest.mark.parametrize("seed", range(10))
def test_fisheye_projection_matches_opencv(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cam = random_fisheye(rng)
    pts = points_in_front(rng, 2000, math.radians(89))
    ours, _ = cam.project(pts)
    ref, _ = cv2.fisheye.projectPoints(pts.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), cam.K, cam.D)
    np.testing.assert_allclose(ours, ref.reshape(-1, 2), atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(10))
def test_fisheye_unprojection_matches_opencv_and_inverts_projection(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    cam = random_fisheye(rng)
    pts = points_in_front(rng, 2000, min(cam.fov / 2, math.radians(89)))
    uv, _ = cam.project(pts)
    rays, valid = cam.unproject(uv)
    assert valid.all()
    np.testing.assert_allclose(rays, pts / np.linalg.norm(pts, axis=1, keepdims=True), atol=1e-9)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-15)
    ref = cv2.fisheye.undistortPoints(uv.reshape(-1, 1, 2), cam.K, cam.D, criteria=criteria).reshape(-1, 2)
    # cv2.fisheye.undistortPoints clamps the distorted angle theta_d to pi/2; compare where it does not.
    theta_d = np.hypot((uv[:, 0] - cam.K[0, 2]) / cam.K[0, 0], (uv[:, 1] - cam.K[1, 2]) / cam.K[1, 1])
    usable = theta_d < math.pi / 2 - 1e-3
    assert usable.mean() > 0.8
    np.testing.assert_allclose((rays[:, :2] / rays[:, 2:])[usable], ref[usable], rtol=1e-6, atol=1e-6)


def test_fisheye_beyond_ninety_degrees_round_trips() -> None:
    """190-degree lenses see behind the image plane, where cv2.fisheye cannot; the model must still invert."""
    rng = np.random.default_rng(7)
    cam = random_fisheye(rng)
    cam = FisheyeCamera(cam.name, cam.frame_id, 4000, 4000, np.array([[600.0, 0, 2000], [0, 600.0, 2000], [0, 0, 1]]), cam.D, cam.T_base_cam, 10.0, fov=math.radians(200))
    pts = points_in_front(rng, 1000, math.radians(99))
    pts = pts[np.degrees(np.arctan2(np.hypot(pts[:, 0], pts[:, 1]), pts[:, 2])) > 90.5]
    assert len(pts) > 0 and (pts[:, 2] < 0).all()
    uv, valid = cam.project(pts)
    assert valid.all()
    rays, rvalid = cam.unproject(uv)
    assert rvalid.all()
    np.testing.assert_allclose(rays, pts / np.linalg.norm(pts, axis=1, keepdims=True), atol=1e-9)


def test_fisheye_rejects_points_outside_field_of_view() -> None:
    cam = load_rig().fisheye["front"]
    behind = np.array([[0.0, 0.0, -1.0], [0.1, 0.0, -1.0]])
    _, valid = cam.project(behind)
    assert not valid.any()


@pytest.mark.parametrize("seed", range(10))
def test_pinhole_matches_opencv(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    cam = random_pinhole(rng)
    pts = points_in_front(rng, 2000, math.radians(30))
    ours, _ = cam.project(pts)
    ref, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), cam.K, cam.D)
    np.testing.assert_allclose(ours, ref.reshape(-1, 2), atol=1e-9)
    rays, valid = cam.unproject(ours)
    assert valid.all()
    np.testing.assert_allclose(rays, pts / np.linalg.norm(pts, axis=1, keepdims=True), atol=1e-6)


def test_project_base_uses_extrinsics() -> None:
    """A point straight along the front fisheye's optical axis lands on the principal point."""
    cam = load_rig().fisheye["front"]
    axis_point = cam.T_base_cam[:3, :3] @ np.array([0.0, 0.0, 4.0]) + cam.position
    uv, valid = cam.project_base(axis_point[None])
    assert valid.all()
    np.testing.assert_allclose(uv[0], cam.K[:2, 2], atol=1e-9)
    # And the ground in front of the bumper is in the lower half of the image (camera looks down).
    uv, valid = cam.project_base(np.array([[5.0, 0.0, 0.0]]))
    assert valid.all() and uv[0, 1] > cam.K[1, 2]
