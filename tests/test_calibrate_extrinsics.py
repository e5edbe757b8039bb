"""`edge calibrate extrinsics` and `check`: fisheye poses in base_link from boards on the ground (one camera placed
only through a board it shares with another), against the truth they were rendered with; a knocked camera."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import calibrate_scenes as scenes  # noqa: E402

from edge.calibration.check import image_loader  # noqa: E402
from edge.calibration.errors import CalibrationError  # noqa: E402
from edge.calibration.extrinsics import check_against_targets, detect_shots, rotation_deg, solve_extrinsics  # noqa: E402
from edge.calibration.rigio import body_xyz_rpy  # noqa: E402
from edge.cli import main  # noqa: E402
from edge.sensors.rig import load_rig  # noqa: E402


@pytest.fixture(scope="module")
def scene():
    cv2.setNumThreads(1)
    shots = scenes.rendered_shots()
    return shots, detect_shots(shots, image_loader(None)), scenes.true_cameras()


def _nominal() -> dict:
    return {("fisheye", n): c.T_base_cam for n, c in load_rig().fisheye.items()}


def test_poses_within_targets_including_the_chained_camera(scene) -> None:
    shots, dets, truth = scene
    res = solve_extrinsics(truth, shots, dets, _nominal())
    assert set(res) == set(truth)
    assert res[("fisheye", "left")].chained == ["front_left"]
    for ref, p in res.items():
        T = truth[ref].T_base_cam
        assert rotation_deg(p.T_base_cam[:3, :3], T[:3, :3]) < 0.2, ref
        assert np.linalg.norm(p.T_base_cam[:3, 3] - T[:3, 3]) < 0.01, ref
        assert p.rms_px < 0.5
        # and the nominal rig was off by degrees: the solve moved it
        assert rotation_deg(_nominal()[ref][:3, :3], T[:3, :3]) > 0.9


def test_cli_writes_a_validated_rig(tmp_path: Path, scene, capsys) -> None:
    shots, _, truth = scene
    entries = []
    for s in shots:
        images = {}
        for ref, img in s.images.items():
            name = f"{s.name}_{ref[1]}.png"
            cv2.imwrite(str(tmp_path / name), img)
            images[f"{ref[0]}/{ref[1]}"] = name
        entry = {"name": s.name, "images": images}
        if s.T_base_board is not None:
            xyz, rpy = body_xyz_rpy_board(s.T_base_board)
            entry["pose"] = {"xyz": xyz, "rpy_deg": rpy}
        entries.append(entry)
    b = scenes.GROUND_BOARD
    (tmp_path / "targets.yaml").write_text(yaml.safe_dump(
        {"board": {"cols": b.cols, "rows": b.rows, "square": b.square}, "shots": entries}))
    out = tmp_path / "rig.yaml"
    assert main(["calibrate", "extrinsics", "--targets", str(tmp_path / "targets.yaml"), "--out", str(out)]) == 0
    assert "chained through front_left" in capsys.readouterr().out
    rig = load_rig(out)
    for (_, name), cam in truth.items():
        got = rig.fisheye[name].T_base_cam
        assert rotation_deg(got[:3, :3], cam.T_base_cam[:3, :3]) < 0.2
        assert np.linalg.norm(got[:3, 3] - cam.T_base_cam[:3, 3]) < 0.01
    # check: the written rig passes against the same targets; the nominal rig is flagged camera by camera
    assert main(["calibrate", "check", "--rig", str(out), "--targets", str(tmp_path / "targets.yaml")]) == 0
    capsys.readouterr()
    assert main(["calibrate", "check", "--targets", str(tmp_path / "targets.yaml")]) == 1
    assert "OUT OF ALIGNMENT" in capsys.readouterr().out


def body_xyz_rpy_board(T: np.ndarray) -> tuple[list[float], list[float]]:
    """Board poses are plain frames (no optical convention): xyz + fixed-axis roll/pitch/yaw in degrees."""
    from edge.sensors.camera_models import R_BODY_OPTICAL

    T2 = T.copy()
    T2[:3, :3] = T[:3, :3] @ R_BODY_OPTICAL  # body_xyz_rpy undoes this
    return body_xyz_rpy(T2)


def test_check_flags_the_knocked_camera_only(scene) -> None:
    shots, dets, truth = scene
    rig = {ref: cam.T_base_cam.copy() for ref, cam in truth.items()}
    knock = np.eye(4)
    knock[:3, :3] = cv2.Rodrigues(np.radians([0.0, 0.0, 2.0]))[0]
    rig[("fisheye", "rear")] = rig[("fisheye", "rear")] @ knock
    rows = {r["camera"]: r for r in check_against_targets(truth, rig, shots, dets, max_px=2.0)}
    assert not rows["fisheye/rear"]["ok"] and abs(rows["fisheye/rear"]["rotation_deg"] - 2.0) < 0.2
    assert rows["fisheye/front"]["ok"] and rows["fisheye/right"]["ok"]


def test_a_camera_with_no_known_board_is_an_error(scene) -> None:
    shots, dets, truth = scene
    only_chain = [s for s in shots if s.name in ("front_left", "rear")]
    sub = {k: v for k, v in dets.items() if k[0] in ("front_left", "rear")}
    with pytest.raises(CalibrationError, match="fisheye/front, fisheye/left"):
        solve_extrinsics(truth, only_chain, sub, _nominal())
