"""`edge calibrate import / export`: camera_info (plumb_bob, equidistant, older 'fisheye') and Kalibr camchain
(pinhole-equi, pinhole-radtan, chained T_cn_cnm1) into a validated rig and back, losslessly; bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from edge.calibration import rigio
from edge.calibration.errors import FormatError, InvalidOutputError, UnknownModelError
from edge.calibration.formats import read_camchain, read_camera_info
from edge.cli import main
from edge.sensors.rig import DEFAULT_RIG, load_rig


def _rig_data(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_camera_info_round_trip_is_lossless(tmp_path: Path) -> None:
    exported = tmp_path / "exported"
    assert main(["calibrate", "export", "--out", str(exported)]) == 0
    files = sorted(exported.glob("*.yaml"))
    assert [f.name for f in files] == ["camera_front.yaml", "fisheye_front.yaml", "fisheye_left.yaml",
                                      "fisheye_rear.yaml", "fisheye_right.yaml"]
    assert read_camera_info(exported / "camera_front.yaml").model == "plumb_bob"
    assert yaml.safe_load((exported / "fisheye_left.yaml").read_text())["distortion_model"] == "equidistant"
    rig1 = tmp_path / "rig1.yaml"
    assert main(["calibrate", "import", *map(str, files), "--out", str(rig1)]) == 0
    again = tmp_path / "again"
    assert main(["calibrate", "export", "--rig", str(rig1), "--out", str(again)]) == 0
    rig2 = tmp_path / "rig2.yaml"
    assert main(["calibrate", "import", *map(str, sorted(again.glob("*.yaml"))), "--rig", str(rig1), "--out", str(rig2)]) == 0
    for f in files:
        assert (again / f.name).read_text() == f.read_text()
    assert _rig_data(rig1) == _rig_data(rig2)
    assert load_rig(rig2).fingerprint() == load_rig(DEFAULT_RIG).fingerprint()


def test_older_fisheye_name_is_read_as_equidistant(tmp_path: Path) -> None:
    main(["calibrate", "export", "--cameras", "fisheye/rear", "--out", str(tmp_path / "e")])
    doc = yaml.safe_load((tmp_path / "e" / "fisheye_rear.yaml").read_text())
    doc["distortion_model"] = "fisheye"
    doc["camera_name"] = "rear_cam"
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(doc))
    k = doc["camera_matrix"]["data"]
    doc_k = [k[0] + 1.5, *k[1:]]
    doc["camera_matrix"]["data"] = doc_k
    old.write_text(yaml.safe_dump(doc))
    assert read_camera_info(old).model == "equidistant"
    out = tmp_path / "rig.yaml"
    assert main(["calibrate", "import", str(old), "--as", "fisheye/rear", "--out", str(out)]) == 0
    assert load_rig(out).fisheye["rear"].K[0, 0] == doc_k[0]
    main(["calibrate", "export", "--rig", str(out), "--cameras", "fisheye/rear", "--out", str(tmp_path / "e2")])
    assert yaml.safe_load((tmp_path / "e2" / "fisheye_rear.yaml").read_text())["distortion_model"] == "equidistant"


def test_kalibr_camchain_round_trip(tmp_path: Path) -> None:
    chain = tmp_path / "camchain.yaml"
    assert main(["calibrate", "export", "--format", "kalibr", "--out", str(chain)]) == 0
    cams = read_camchain(chain)
    doc = yaml.safe_load(chain.read_text())
    assert doc["cam0"]["distortion_model"] == "equidistant" and doc["cam4"]["distortion_model"] == "radtan"
    assert len(doc["cam4"]["distortion_coeffs"]) == 4 and "T_cn_cnm1" in doc["cam1"] and "T_cn_cnm1" not in doc["cam0"]
    assert [c.model for c in cams] == ["equidistant"] * 4 + ["plumb_bob"]
    # Move the base rig's non-anchor cameras away: the chain alone must put them back.
    base = _rig_data(DEFAULT_RIG)
    for name in ("rear", "left", "right"):
        base["fisheye"][name]["extrinsics"] = {"xyz": [0.0, 0.0, 1.0], "rpy_deg": [0.0, 0.0, 0.0]}
    base["camera"]["front"]["extrinsics"] = {"xyz": [0.0, 0.0, 1.0], "rpy_deg": [0.0, 0.0, 0.0]}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    out = tmp_path / "rig.yaml"
    assert main(["calibrate", "import", str(chain), "--rig", str(tmp_path / "base.yaml"), "--out", str(out)]) == 0
    want, got = load_rig(DEFAULT_RIG), load_rig(out)
    for name, cam in want.fisheye.items():
        np.testing.assert_allclose(got.fisheye[name].T_base_cam, cam.T_base_cam, atol=1e-12)
        assert np.array_equal(got.fisheye[name].K, cam.K) and np.array_equal(got.fisheye[name].D, cam.D)
    np.testing.assert_allclose(got.cameras["front"].T_base_cam, want.cameras["front"].T_base_cam, atol=1e-12)
    chain2 = tmp_path / "camchain2.yaml"
    assert main(["calibrate", "export", "--rig", str(out), "--format", "kalibr", "--out", str(chain2)]) == 0
    first, second = read_camchain(chain), {c.topic: c for c in read_camchain(chain2)}
    for a in first:  # camera order follows the rig file; compare camera by camera
        b = second[a.topic]
        assert np.array_equal(a.K, b.K) and np.array_equal(a.D, b.D) and a.model == b.model


def test_kalibr_radtan_without_k3(tmp_path: Path) -> None:
    f = tmp_path / "chain.yaml"
    f.write_text(yaml.safe_dump({"cam0": {
        "camera_model": "pinhole", "intrinsics": [561.0, 560.5, 321.0, 190.0], "distortion_model": "radtan",
        "distortion_coeffs": [-0.1, 0.04, 0.001, -0.0002], "resolution": [640, 384],
        "rostopic": "/camera/front/image_raw"}}))
    out = tmp_path / "rig.yaml"
    assert main(["calibrate", "import", str(f), "--out", str(out)]) == 0
    assert load_rig(out).cameras["front"].D.tolist() == [-0.1, 0.04, 0.001, -0.0002, 0.0]


def test_output_that_fails_the_rig_validator_writes_nothing(tmp_path: Path, capsys) -> None:
    main(["calibrate", "export", "--cameras", "fisheye/front", "--out", str(tmp_path / "e")])
    doc = yaml.safe_load((tmp_path / "e" / "fisheye_front.yaml").read_text())
    doc["camera_matrix"]["data"][2] = 900.0  # principal point outside the 640-wide image
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    out = tmp_path / "rig.yaml"
    assert main(["calibrate", "import", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "rig validator" in err and "nothing was written" in err and not out.exists()
    data, _ = rigio.load_rig_data(None)
    rigio.set_intrinsics(data, "fisheye", "front", read_camera_info(bad))
    with pytest.raises(InvalidOutputError):
        rigio.write_rig(data, out)
    assert not out.exists()


def test_malformed_files_name_the_key(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"image_width": 640, "image_height": 480, "distortion_model": "plumb_bob",
                                 "distortion_coefficients": {"rows": 1, "cols": 5, "data": [0, 0, 0, 0, 0]}}))
    with pytest.raises(FormatError, match="camera_matrix"):
        read_camera_info(f)
    f.write_text(yaml.safe_dump({"image_width": 640, "image_height": 480, "distortion_model": "rational_polynomial"}))
    with pytest.raises(UnknownModelError, match="distortion_model"):
        read_camera_info(f)
    f.write_text(yaml.safe_dump({"cam0": {"camera_model": "omni", "intrinsics": [1, 1, 1, 1, 1],
                                          "distortion_model": "radtan", "distortion_coeffs": [0, 0, 0, 0],
                                          "resolution": [640, 480]}}))
    with pytest.raises(UnknownModelError, match="cam0.camera_model"):
        read_camchain(f)
