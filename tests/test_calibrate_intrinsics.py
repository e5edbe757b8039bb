"""`edge calibrate intrinsics` against rendered views with exact truth (issue 15 targets), the view set on which
plain cv2.fisheye.calibrate aborts, robust rejection, and every bad-input case (clear error, no file written)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.calibration.boards import Board, Detection, detect
from edge.calibration.errors import BoardNotFoundError, PoorCoverageError, TooFewViewsError, UnknownModelError
from edge.calibration.intrinsics import calibrate_intrinsics, normalize_model
from edge.calibration.synthetic import fisheye_truth, look_at_pose, pinhole_truth, render_views, write_rendered
from edge.cli import main

BOARD = Board(9, 6, 0.04)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    yield
    cv2.setNumThreads(before)


@pytest.fixture(scope="module")
def fisheye_views():
    rs = render_views(fisheye_truth(), BOARD, 20, seed=3)
    dets = [detect(img, BOARD, f"view_{k:02d}") for k, img in enumerate(rs.images)]
    assert all(d is not None for d in dets)
    return rs, dets


def _rays(max_deg: float) -> np.ndarray:
    th, ph = np.meshgrid(np.radians(np.linspace(0, max_deg, 46)), np.linspace(-math.pi, math.pi, 73))
    return np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1).reshape(-1, 3)


def test_fisheye_meets_the_targets(fisheye_views) -> None:
    rs, dets = fisheye_views
    truth = rs.camera
    r = calibrate_intrinsics(dets, BOARD, "equidistant", 800, 600)
    K = r.K
    assert abs(K[0, 0] / truth.K[0, 0] - 1) < 0.005 and abs(K[1, 1] / truth.K[1, 1] - 1) < 0.005
    assert np.hypot(K[0, 2] - truth.K[0, 2], K[1, 2] - truth.K[1, 2]) < 2.0
    assert r.rms <= 0.3
    est = r.camera()
    for max_deg, limit in ((60, 1.0), (75, 3.0)):
        a, _ = truth.project(_rays(max_deg), within_image=False)
        b, _ = est.project(_rays(max_deg), within_image=False)
        assert np.linalg.norm(a - b, axis=1).max() < limit, max_deg
    assert r.trusted and all(v.used for v in r.views)
    assert r.std["fx"] < 0.2 and r.coverage.max_angle_deg > 75


def test_plain_opencv_aborts_on_this_view_set(fisheye_views) -> None:
    """The same views make plain cv2.fisheye.calibrate raise (the tutorial's flags), where ours succeeds above."""
    _, dets = fisheye_views
    obj = [BOARD.object_points()[d.ids].reshape(1, -1, 3) for d in dets]
    img = [d.corners.reshape(1, -1, 2) for d in dets]
    for flags in (cv2.CALIB_RECOMPUTE_EXTRINSIC | cv2.CALIB_FIX_SKEW,
                  cv2.CALIB_RECOMPUTE_EXTRINSIC | cv2.CALIB_CHECK_COND | cv2.CALIB_FIX_SKEW):
        with pytest.raises(cv2.error, match="InitExtrinsics|CalibrateExtrinsics"):
            cv2.fisheye.calibrate(obj, img, (800, 600), np.eye(3), np.zeros(4), flags=flags,
                                  criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-10))


def test_outlier_view_and_bad_corners_are_dropped_and_named(fisheye_views) -> None:
    rs, dets = fisheye_views
    rng = np.random.default_rng(0)
    shaken = Detection("shaken", dets[0].corners + rng.normal(0, 2.5, dets[0].corners.shape), dets[0].ids)
    one_bad = dets[1].corners.copy()
    one_bad[7] += (6.0, -4.0)
    r = calibrate_intrinsics([*dets[2:], shaken, Detection("one_bad", one_bad, dets[1].ids)], BOARD, "equidistant", 800, 600)
    dropped = {v.name: v.reason for v in r.views if not v.used}
    assert list(dropped) == ["shaken"] and ("RMS" in dropped["shaken"] or "corners" in dropped["shaken"])
    assert r.corners_dropped >= 1 and r.rms <= 0.3
    assert abs(r.K[0, 0] / rs.camera.K[0, 0] - 1) < 0.005


def test_pinhole_meets_the_targets() -> None:
    rs = render_views(pinhole_truth(), BOARD, 20, seed=1)
    dets = [d for d in (detect(img, BOARD, str(k)) for k, img in enumerate(rs.images)) if d is not None]
    r = calibrate_intrinsics(dets, BOARD, "plumb_bob", 800, 600)
    truth, K = rs.camera, r.K
    assert abs(K[0, 0] / truth.K[0, 0] - 1) < 0.005 and abs(K[1, 1] / truth.K[1, 1] - 1) < 0.005
    assert np.hypot(K[0, 2] - truth.K[0, 2], K[1, 2] - truth.K[1, 2]) < 2.0
    assert r.rms <= 0.3 and r.trusted
    rays, _ = truth.unproject(np.stack(np.meshgrid(np.arange(0, 800, 20.0), np.arange(0, 600, 20.0)), -1).reshape(-1, 2))
    a, _ = truth.project(rays, within_image=False)
    b, _ = r.camera().project(rays, within_image=False)
    assert np.linalg.norm(a - b, axis=1).max() < 1.0


def test_cli_writes_camera_info_and_picture(tmp_path: Path, capsys) -> None:
    rs = render_views(fisheye_truth(), BOARD, 12, seed=5)
    write_rendered(rs, tmp_path / "views")
    out = tmp_path / "front.yaml"
    rc = main(["calibrate", "intrinsics", "--images", str(tmp_path / "views"), "--board", "9x6", "--square", "0.04",
               "--model", "fisheye", "--out", str(out), "--name", "fisheye_front"])
    text = capsys.readouterr().out
    assert rc == 0 and "verdict: TRUSTED" in text
    assert out.exists() and out.with_suffix(".coverage.png").exists()
    from edge.calibration.formats import read_camera_info

    cal = read_camera_info(out)
    assert cal.model == "equidistant" and cal.name == "fisheye_front" and (cal.width, cal.height) == (800, 600)
    assert abs(cal.K[0, 0] / rs.camera.K[0, 0] - 1) < 0.005


# ---------------------------------------------------------------- bad input: clear error, nothing written

def _run_bad(argv: list[str], out: Path, capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("edge: error: ") and len(err.strip().splitlines()) == 1
    assert not out.exists() and not out.with_suffix(".coverage.png").exists()
    return err


def test_too_few_views(tmp_path: Path, capsys) -> None:
    write_rendered(render_views(fisheye_truth(), BOARD, 4, seed=2), tmp_path / "v")
    out = tmp_path / "c.yaml"
    err = _run_bad(["calibrate", "intrinsics", "--images", str(tmp_path / "v"), "--board", "9x6", "--square", "0.04",
                    "--model", "equidistant", "--out", str(out)], out, capsys)
    assert "found in 4 of 4 images" in err and "at least 8" in err


def test_board_never_found(tmp_path: Path, capsys) -> None:
    (tmp_path / "v").mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        cv2.imwrite(str(tmp_path / "v" / f"{k}.png"), rng.integers(0, 255, (300, 400), dtype=np.uint8))
    out = tmp_path / "c.yaml"
    err = _run_bad(["calibrate", "intrinsics", "--images", str(tmp_path / "v"), "--board", "9x6", "--square", "0.04",
                    "--model", "plumb_bob", "--out", str(out)], out, capsys)
    assert "found in none of the 3 images" in err and "INNER" in err


def test_unknown_model(tmp_path: Path, capsys) -> None:
    out = tmp_path / "c.yaml"
    err = _run_bad(["calibrate", "intrinsics", "--images", str(tmp_path), "--board", "9x6", "--square", "0.04",
                    "--model", "rational_polynomial", "--out", str(out)], out, capsys)
    assert "unknown camera model 'rational_polynomial'" in err and "equidistant" in err
    with pytest.raises(UnknownModelError):
        normalize_model("omni")
    assert normalize_model("fisheye") == normalize_model("pinhole-equi") == "equidistant"


def test_views_in_one_corner_only() -> None:
    """Twelve good views, all in the top-left of the image: refused, naming the regions to cover."""
    cam, rng = fisheye_truth(), np.random.default_rng(1)
    dets = []
    while len(dets) < 12:
        th, ph = math.radians(rng.uniform(45, 60)), math.radians(rng.uniform(-150, -120))
        d = np.array([math.sin(th) * math.cos(ph), math.sin(th) * math.sin(ph), math.cos(th)])
        T = look_at_pose(d, rng.uniform(0.35, 0.5), BOARD, tuple(rng.uniform(-0.3, 0.3, 3)))
        uv, ok = cam.project(BOARD.object_points() @ T[:3, :3].T + T[:3, 3])
        if ok.all():
            dets.append(Detection(str(len(dets)), uv + rng.normal(0, 0.05, uv.shape), np.arange(len(uv))))
    with pytest.raises(PoorCoverageError, match="bottom-right"):
        calibrate_intrinsics(dets, BOARD, "equidistant", 800, 600)


def test_error_types_for_empty_and_short_input() -> None:
    with pytest.raises(BoardNotFoundError):
        calibrate_intrinsics([], BOARD, "plumb_bob", 640, 480, images_total=5)
    d = Detection("a", np.zeros((54, 2)), np.arange(54))
    with pytest.raises(TooFewViewsError, match="more views|at least"):
        calibrate_intrinsics([d] * 3, BOARD, "plumb_bob", 640, 480)


def test_images_from_a_bag_topic(tmp_path: Path, capsys) -> None:
    """--bag/--topic reads the camera's frames through the project's bag reader (CompressedImage here)."""
    from edge.drives.bag import BagWriter
    from edge.drives.messages import compressed_image

    rs = render_views(fisheye_truth(), BOARD, 10, seed=7)
    topic = "/fisheye/front/image_raw/compressed"
    with BagWriter(tmp_path / "bag") as w:
        for k, img in enumerate(rs.images):
            bgr = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
            w.write(topic, "sensor_msgs/msg/CompressedImage", (k + 1) * 10**8,
                    compressed_image((k + 1) * 10**8, "fisheye_front_optical_frame", bgr, fmt="png"))
    out = tmp_path / "c.yaml"
    assert main(["calibrate", "intrinsics", "--bag", str(tmp_path / "bag"), "--topic", topic, "--board", "9x6",
                 "--square", "0.04", "--model", "equidistant", "--out", str(out)]) == 0
    assert "board found in 10 of 10 images" in capsys.readouterr().out
    from edge.calibration.formats import read_camera_info

    assert abs(read_camera_info(out).K[0, 0] / rs.camera.K[0, 0] - 1) < 0.005
