"""The default rig loads; bad rig files give errors naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import Field

from edge.config import StrictModel
from edge.errors import ConfigError
from edge.sensors.rig import DEFAULT_RIG, PoseSpec, load_rig


def test_default_rig_contents() -> None:
    rig = load_rig()
    assert set(rig.fisheye) == {"front", "rear", "left", "right"}
    assert all(abs(np.degrees(c.fov) - 190) < 1e-9 for c in rig.fisheye.values())
    assert len(rig.ultrasonic) == 12
    assert sum(s.position[0] > 0 for s in rig.ultrasonic) == 6
    assert rig.microphones.positions.shape == (4, 3)
    assert "front" in rig.cameras
    x0, x1, y0, y1 = rig.footprint()
    assert x0 < 0 < x1 and y0 < 0 < y1
    # Every ultrasonic sensor sits on the body outline, within 10 cm.
    for s in rig.ultrasonic:
        x, y = s.position[:2]
        on_x = min(abs(x - x0), abs(x - x1)) < 0.1 or min(abs(y - y0), abs(y - y1)) < 0.1
        assert on_x, s.name


def _write_modified(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(DEFAULT_RIG.read_text())
    edit(data)
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("edit", "key", "words"),
    [
        (lambda d: d["fisheye"]["front"]["intrinsics"].pop("fx"), "fisheye.front.intrinsics.fx", "missing"),
        (lambda d: d["fisheye"]["left"]["intrinsics"].update(k=[0.1, 0.2]), "fisheye.left.intrinsics.k", "at least 4"),
        (lambda d: d["fisheye"]["rear"]["intrinsics"].update(k=[-0.5, 0.0, 0.0, 0.0]), "fisheye.rear", "not monotonic"),
        (lambda d: d["fisheye"]["front"]["intrinsics"].update(cx=9000), "fisheye.front", "principal point"),
        # fx 300 at 640 px with strong barrel distortion folds back at 60 degrees, before the image corners.
        (lambda d: d["camera"]["front"]["intrinsics"].update(fx=300.0, fy=300.0, d=[-0.3, 0.08, 0.0, 0.0, -0.01]),
         "camera.front", "not monotonic within the image"),
        (lambda d: d["ultrasonic"].update(min_range=6.0), "ultrasonic", "min_range"),
        (lambda d: d["ultrasonic"]["sensors"][0].update(name="front_left_corner"), "ultrasonic", "unique"),
        (lambda d: d["vehicle"].update(wheelbase=-1), "vehicle.wheelbase", "greater than 0"),
        (lambda d: d["microphones"].update(sample_rate="fast"), "microphones.sample_rate", "unknown key"),
        (lambda d: d["camera"]["front"]["extrinsics"].update(xyz=[1.0, float("nan"), 1.0]), "camera.front.extrinsics.xyz.1", "finite"),
        (lambda d: d["fisheye"].update(top=d["fisheye"]["front"]), "fisheye", "unknown fisheye camera"),
    ],
)
def test_bad_rig_names_file_and_key(tmp_path: Path, edit, key: str, words: str) -> None:
    path = _write_modified(tmp_path, edit)
    with pytest.raises(ConfigError) as info:
        load_rig(path)
    message = str(info.value)
    assert str(path) in message
    assert f"key '{key}" in message
    assert words in message


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_rig(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("vehicle: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_rig(bad)


def test_fingerprint_changes_with_calibration(tmp_path: Path) -> None:
    path = _write_modified(tmp_path, lambda d: d["fisheye"]["front"]["intrinsics"].update(fx=173.0))
    assert load_rig(path).fingerprint() != load_rig().fingerprint()
    assert load_rig().fingerprint() == load_rig(DEFAULT_RIG).fingerprint()


LIDAR_SECTION = {"lidar": {"roof": {"xyz": [1.2, 0.0, 1.9], "rpy_deg": [0.0, 0.0, 0.0]}, "rate_hz": 10}}


class _RoofSpec(StrictModel):
    """What a LiDAR plugin might validate its section with (its own model; the core knows none of these keys)."""

    roof: PoseSpec
    rate_hz: float = Field(gt=0)


def test_plugin_section_absent_is_empty_and_leaves_the_fingerprint(tmp_path: Path) -> None:
    rig = load_rig()
    assert rig.spec.plugins == {} and rig.plugin_section("lidar") == {}
    # rigs written before the section existed keep their fingerprint, and so do the drives that recorded it: this
    # is the default rig's, in the metadata of every drive generated on it (drives/qa/*/metadata.yaml,
    # mpnp_edge.rig); only a change to calibration/default_rig.yaml may change it
    assert rig.fingerprint() == "f7baee2d1e8db6f5"
    same = load_rig(_write_modified(tmp_path, lambda d: None)).fingerprint()  # safe_dump orders the keys
    assert load_rig(_write_modified(tmp_path, lambda d: d.update(plugins=None))).fingerprint() == same


def test_plugin_section_is_exposed_and_fingerprinted(tmp_path: Path) -> None:
    rig = load_rig(_write_modified(tmp_path, lambda d: d.update(plugins=LIDAR_SECTION)))
    assert rig.plugin_section("lidar") == LIDAR_SECTION["lidar"] and rig.plugin_section("radar") == {}
    rig.plugin_section("lidar")["rate_hz"] = 20  # a copy: a plugin cannot change the rig (nor its fingerprint)
    assert rig.plugin_section("lidar")["rate_hz"] == 10
    assert rig.fingerprint() != load_rig().fingerprint()
    other = load_rig(_write_modified(tmp_path, lambda d: d.update(plugins={"lidar": {**LIDAR_SECTION["lidar"],
                                                                                       "rate_hz": 20}})))
    assert other.fingerprint() != rig.fingerprint()
    spec = rig.plugin_spec("lidar", _RoofSpec)
    assert spec.roof.xyz == [1.2, 0.0, 1.9] and spec.rate_hz == 10


@pytest.mark.parametrize(("plugins", "key", "words"), [
    ([{"lidar": {}}], "plugins", "valid dictionary"),
    ({"lidar": [1.2, 0.0, 1.9]}, "plugins.lidar", "valid dictionary"),
    ({"Roof LiDAR": {}}, "plugins.Roof LiDAR", "should match pattern"),
])
def test_malformed_plugin_section_names_the_key(tmp_path: Path, plugins: object, key: str, words: str) -> None:
    path = _write_modified(tmp_path, lambda d: d.update(plugins=plugins))
    with pytest.raises(ConfigError) as info:
        load_rig(path)
    assert f"{path}: key '{key}" in str(info.value) and words in str(info.value)


def test_plugin_spec_errors_name_the_plugin_key(tmp_path: Path) -> None:
    bad = {"lidar": {**LIDAR_SECTION["lidar"], "rate_hz": -1, "beams": 64}}
    rig = load_rig(_write_modified(tmp_path, lambda d: d.update(plugins=bad)))
    with pytest.raises(ConfigError, match=r"rig.yaml: key 'plugins\.lidar\.rate_hz': .*greater than 0"):
        rig.plugin_spec("lidar", _RoofSpec)
