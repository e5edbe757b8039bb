"""The rig's camera models agree with OpenCV on random points and random calibrations."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from edge.sensors.camera_models import (
    FisheyeCamera,
    PinholeCamera,
    fisheye_inversion_problem,
    optical_pose,
    pinhole_inversion_problem,
)
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


# --- Unprojection for every calibration the rig validator accepts (issue 12, item 8) ---------------------------

def strong_fisheye(rng: np.random.Generator) -> FisheyeCamera:
    """A random lens with strong distortion that the rig validator accepts (drawn again until it does)."""
    while True:
        k = [rng.uniform(-0.4, 0.4), rng.uniform(-0.2, 0.2), rng.uniform(-0.05, 0.05), rng.uniform(-0.01, 0.01)]
        fov = math.radians(rng.uniform(120, 230))
        if fisheye_inversion_problem(k, fov) is None:
            break
    w, h = int(rng.integers(320, 1000)), int(rng.integers(240, 800))
    f = rng.uniform(0.15, 0.3) * w
    K = np.array([[f, 0, w / 2 + rng.uniform(-20, 20)], [0, f * rng.uniform(0.98, 1.02), h / 2 + rng.uniform(-20, 20)], [0, 0, 1]])
    return FisheyeCamera("cam", "cam_optical", w, h, K, np.array(k), np.eye(4), 10.0, fov=fov)


def ray_fan(max_angle: float, n_theta: int = 60, n_phi: int = 36) -> np.ndarray:
    """Unit rays on a polar grid from the optical axis out to max_angle (included)."""
    theta, phi = np.meshgrid(np.linspace(0, max_angle, n_theta), np.linspace(-math.pi, math.pi, n_phi, endpoint=False))
    theta, phi = theta.ravel(), phi.ravel()
    return np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], axis=1)


def pixel_grid(width: int, height: int, step: float) -> np.ndarray:
    return np.stack(np.meshgrid(np.arange(0, width, step), np.arange(0, height, step)), -1).reshape(-1, 2).astype(np.float64)


def check_fisheye_inverts(cam: FisheyeCamera) -> None:
    """Rays of the field of view round-trip; pixels marked valid reproject onto themselves inside the field of
    view, pixels marked invalid lie beyond the image of the field of view's edge; OpenCV agrees where it can."""
    rays = ray_fan(cam.fov / 2)
    uv, _ = cam.project(rays, within_image=False)
    back, valid = cam.unproject(uv)
    assert valid.all()
    np.testing.assert_allclose(back, rays, atol=1e-9)

    px = pixel_grid(cam.width, cam.height, 7.0)
    rays, valid = cam.unproject(px)
    reproj, inside = cam.project(rays[valid], within_image=False)
    assert inside.all()
    np.testing.assert_allclose(reproj, px[valid], atol=1e-6)
    theta_d = np.hypot((px[:, 0] - cam.K[0, 2]) / cam.K[0, 0], (px[:, 1] - cam.K[1, 2]) / cam.K[1, 1])
    edge = float(cam._theta_d(np.array(cam.fov / 2)))
    assert (theta_d[~valid] > edge * (1 - 1e-12)).all()
    assert (theta_d[valid] <= edge * (1 + 1e-12)).all()

    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-15)
    ref = cv2.fisheye.undistortPoints(px.reshape(-1, 1, 2), cam.K, cam.D, criteria=criteria).reshape(-1, 2)
    ref_px, _ = cv2.fisheye.projectPoints(np.c_[ref, np.ones(len(ref))].reshape(-1, 1, 3), np.zeros(3), np.zeros(3), cam.K, cam.D)
    # OpenCV clamps theta_d at pi/2 and stops early on hard lenses: compare where its answer lands on the pixel.
    usable = valid & (theta_d < math.pi / 2 - 1e-3) & (np.linalg.norm(ref_px.reshape(-1, 2) - px, axis=1) < 1e-6)
    assert usable.sum() >= 50
    np.testing.assert_allclose((rays[:, :2] / rays[:, 2:])[usable], ref[usable], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", range(12))
def test_fisheye_strong_accepted_distortions_invert(seed: int) -> None:
    check_fisheye_inverts(strong_fisheye(np.random.default_rng(300 + seed)))


def test_fisheye_hard_lens_that_twenty_newton_steps_left_invalid() -> None:
    """Accepted by the validator; the former fixed 20 Newton steps from theta_d left 94 of 400 angles on the fan
    invalid (strong k, 200-degree field of view)."""
    k = np.array([0.18758686, 0.08445715, 0.04320597, -0.00770135])
    assert fisheye_inversion_problem(k, math.radians(200.19)) is None
    K = np.array([[200.0, 0, 500], [0, 200.0, 500], [0, 0, 1]])
    check_fisheye_inverts(FisheyeCamera("cam", "cam_optical", 1000, 1000, K, k, np.eye(4), 10.0, fov=math.radians(200.19)))


@pytest.mark.parametrize("seed", range(6))
def test_fisheye_validator_rejects_only_lenses_that_fold(seed: int) -> None:
    """A rejected lens really maps two angles of its field of view onto one radius (or nearly stops growing)."""
    rng = np.random.default_rng(400 + seed)
    while True:
        k = [rng.uniform(-0.4, 0.4), rng.uniform(-0.2, 0.2), rng.uniform(-0.05, 0.05), rng.uniform(-0.01, 0.01)]
        fov = math.radians(rng.uniform(120, 230))
        problem = fisheye_inversion_problem(k, fov)
        if problem:
            break
    assert "not monotonic over the field of view" in problem
    cam = FisheyeCamera("cam", "cam_optical", 100, 100, np.eye(3), np.array(k), np.eye(4), 10.0, fov=fov)
    slope = np.diff(cam._theta_d(np.linspace(0, fov / 2, 200_001))) / (fov / 2 / 200_000)
    assert slope.min() < 2e-3


def random_wide_pinhole(rng: np.random.Generator) -> PinholeCamera:
    """A random pinhole from normal to wide (fx 0.4-1.2 image widths) with strong radial-tangential distortion."""
    w, h = int(rng.integers(320, 1280)), int(rng.integers(240, 960))
    f = rng.uniform(0.4, 1.2) * w
    K = np.array([[f, 0, w / 2 + rng.uniform(-20, 20)], [0, f * rng.uniform(0.98, 1.02), h / 2 + rng.uniform(-20, 20)], [0, 0, 1]])
    d = np.array([rng.uniform(-0.4, 0.3), rng.uniform(-0.15, 0.15), rng.uniform(-2e-3, 2e-3), rng.uniform(-2e-3, 2e-3), rng.uniform(-0.05, 0.05)])
    return PinholeCamera("cam", "cam_optical", w, h, K, d, np.eye(4), 10.0)


def opencv_undistort(cam: PinholeCamera, px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cv2.undistortPoints (50 iterations) and whether its answer reprojects onto the pixel (1e-6 px)."""
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12)
    ref = cv2.undistortPoints(px.reshape(-1, 1, 2), cam.K, cam.D, R=np.eye(3), P=np.eye(3), criteria=criteria).reshape(-1, 2)
    back, _ = cv2.projectPoints(np.c_[ref, np.ones(len(ref))], np.zeros(3), np.zeros(3), cam.K, cam.D)
    return ref, np.linalg.norm(back.reshape(-1, 2) - px, axis=1) < 1e-6


def check_pinhole_inverts(cam: PinholeCamera) -> None:
    """Every pixel of an accepted calibration unprojects to a ray that cv2.projectPoints puts back on it, and the
    ray agrees with cv2.undistortPoints wherever OpenCV's iteration converged."""
    px = pixel_grid(cam.width, cam.height, 9.0)
    px = np.concatenate([px, [[0, 0], [cam.width - 1, 0], [0, cam.height - 1], [cam.width - 1, cam.height - 1]]])
    rays, valid = cam.unproject(px)
    assert valid.all()
    back, _ = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), cam.K, cam.D)
    np.testing.assert_allclose(back.reshape(-1, 2), px, atol=1e-6)
    ref, ok = opencv_undistort(cam, px)
    np.testing.assert_allclose((rays[:, :2] / rays[:, 2:])[ok], ref[ok], atol=1e-8)
    pts = ray_fan(math.radians(20), 10, 12) * 5.0
    uv, _ = cam.project(pts, within_image=False)
    rays, valid = cam.unproject(uv)
    assert valid.all()
    np.testing.assert_allclose(rays, pts / 5.0, atol=1e-9)


@pytest.mark.parametrize("seed", range(12))
def test_pinhole_accepted_calibrations_invert(seed: int) -> None:
    rng = np.random.default_rng(500 + seed)
    while True:
        cam = random_wide_pinhole(rng)
        if pinhole_inversion_problem(cam) is None:
            break
    check_pinhole_inverts(cam)


def test_pinhole_wide_lens_where_opencv_does_not_converge() -> None:
    """fx 296 at 640x480, strong barrel distortion, accepted: cv2.undistortPoints' fixed-point iteration misses
    pixels near the corners by pixels (the model used to return its guess as a valid ray); ours inverts them all."""
    K = np.array([[296.0, 0, 320], [0, 296.0, 240], [0, 0, 1]])
    cam = PinholeCamera("cam", "cam_optical", 640, 480, K, np.array([-0.3033, 0.0751, 0.00082, -0.00126, 0.0327]), np.eye(4), 10.0)
    assert pinhole_inversion_problem(cam) is None
    _, ok = opencv_undistort(cam, pixel_grid(640, 480, 16.0))
    assert not ok.all()
    check_pinhole_inverts(cam)


def test_pinhole_rays_past_the_fold_are_invalid_and_rejected() -> None:
    """fx 300 at 640x480 with k1 -0.3: the image radius stops growing at 60 degrees, before the corners. Pixels
    the lens cannot produce from its monotonic branch are invalid (not a non-converged guess marked valid), the
    others round-trip, and the rig validator refuses the calibration."""
    K = np.array([[300.0, 0, 320], [0, 300.0, 240], [0, 0, 1]])
    cam = PinholeCamera("cam", "cam_optical", 640, 480, K, np.array([-0.3, 0.08, 0.0, 0.0, -0.01]), np.eye(4), 10.0)
    px = pixel_grid(640, 480, 8.0)
    rays, valid = cam.unproject(px)
    assert 0 < valid.sum() < len(px)
    back, _ = cv2.projectPoints(rays[valid], np.zeros(3), np.zeros(3), K, cam.D)
    np.testing.assert_allclose(back.reshape(-1, 2), px[valid], atol=1e-6)
    turn = cam.turning_radius()
    reach = float(cam._radial(np.array(turn)))
    rd = np.hypot(px[:, 0] - 320, px[:, 1] - 240) / 300.0
    assert (rd[~valid] > reach * (1 - 1e-9)).all() and (rd[valid] <= reach * (1 + 1e-9)).all()
    assert (np.hypot(rays[valid, 0], rays[valid, 1]) / rays[valid, 2] < turn).all()
    problem = pinhole_inversion_problem(cam)
    assert problem and "not monotonic within the image" in problem and "60.1 degrees" in problem


def test_default_rig_unprojects_every_pixel_of_its_pinhole() -> None:
    cam = load_rig().cameras["front"]
    _, valid = cam.pixel_rays(stride=4)
    assert valid.all()
