"""Round trips of every message builder / decoder, through CDR as a bag or DDS would carry them."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from edge.drives import messages as M
from edge.drives import topics as T

STAMP = 1_700_000_123_456_789_012


def cdr(msg, msgtype=None):
    """Serialize and deserialize, as every message does on its way through a bag."""
    msgtype = msgtype or msg.__msgtype__
    return M.deserialize(M.serialize(msg, msgtype), msgtype)


def smooth_image(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(h // 8, 1), max(w // 8, 1), 3)).astype(np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def test_stamp_is_exact_integer_ns():
    msg = cdr(M.range_msg(STAMP, "us", 1.0, 0.5, 0.15, 5.5))
    assert M.header_stamp_ns(msg) == STAMP
    assert msg.header.stamp.sec == STAMP // 10**9 and msg.header.stamp.nanosec == STAMP % 10**9


def test_compressed_image_jpeg_and_png():
    img = smooth_image()
    jpg = cdr(M.compressed_image(STAMP, "cam", img, quality=95))
    assert "jpeg" in jpg.format and jpg.header.frame_id == "cam"
    out = M.decode_image(jpg, T.COMPRESSED_IMAGE)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img.astype(int)).mean() < 4.0
    png = cdr(M.compressed_image(STAMP, "cam", img, fmt="png"))
    assert np.array_equal(M.decode_image(png), img)


@pytest.mark.parametrize("encoding,shape,dtype", [
    ("bgr8", (6, 5, 3), np.uint8), ("mono8", (6, 5), np.uint8), ("mono16", (6, 5), np.uint16),
])
def test_raw_image_round_trip(encoding, shape, dtype):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, np.iinfo(dtype).max, shape).astype(dtype)
    msg = cdr(M.raw_image(STAMP, "cam", arr))
    assert msg.encoding == encoding and msg.step == shape[1] * (3 if len(shape) == 3 else 1) * arr.itemsize
    assert np.array_equal(M.decode_image(msg, T.IMAGE), arr)


def test_rgb8_padded_and_bigendian_images_decode():
    bgr = smooth_image(4, 6)
    msg = M.raw_image(STAMP, "cam", bgr)
    # rgb8 with 2 bytes of row padding, as some drivers send
    rgb = bgr[:, :, ::-1]
    padded = np.zeros((4, 6 * 3 + 2), np.uint8)
    padded[:, :18] = rgb.reshape(4, 18)
    msg.encoding, msg.step, msg.data = "rgb8", 20, padded.reshape(-1)
    assert np.array_equal(M.decode_image(cdr(msg, T.IMAGE), T.IMAGE), bgr)
    mono = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    be = M.raw_image(STAMP, "cam", mono)
    be.is_bigendian, be.data = 1, mono.astype(">u2").view(np.uint8).reshape(-1)
    assert np.array_equal(M.decode_image(cdr(be, T.IMAGE), T.IMAGE), mono)


def test_unsupported_encodings_are_named():
    msg = M.raw_image(STAMP, "cam", smooth_image(4, 4))
    msg.encoding = "bayer_rggb8"
    with pytest.raises(M.MessageError, match="bayer_rggb8"):
        M.decode_image(msg, T.IMAGE)
    c = M.compressed_image(STAMP, "cam", smooth_image(8, 8))
    c.format = "theora"
    with pytest.raises(M.MessageError, match="theora"):
        M.decode_image(c, T.COMPRESSED_IMAGE)
    c.format, c.data = "jpeg", np.frombuffer(b"not a jpeg at all", np.uint8)
    with pytest.raises(M.MessageError, match="could not be decoded"):
        M.decode_image(c, T.COMPRESSED_IMAGE)
    with pytest.raises(M.MessageError, match="Range"):
        M.decode_image(M.range_msg(0, "x", 1, 1, 0, 2), T.RANGE)


def test_audio_chunk_round_trip_planar_16SC1():
    rng = np.random.default_rng(2)
    pcm = rng.integers(-32768, 32767, (4, 640)).astype(np.int16)
    msg = cdr(M.audio_chunk(STAMP, "mic_array", pcm), T.IMAGE)
    assert (msg.height, msg.width, msg.encoding, msg.step) == (4, 640, "16SC1", 1280)
    # planar little-endian: row 0 bytes are microphone 0's samples
    assert np.array_equal(np.asarray(msg.data[:1280]).view("<i2"), pcm[0])
    assert np.array_equal(M.decode_audio(msg), pcm)
    msg.encoding = "32FC1"
    with pytest.raises(M.MessageError, match="32FC1"):
        M.decode_audio(msg)
    with pytest.raises(M.MessageError):
        M.audio_chunk(STAMP, "mic", pcm.astype(np.float32))


def test_camera_info_round_trip():
    K = np.array([[230.0, 0, 320.5], [0, 231.0, 240.5], [0, 0, 1]])
    msg = cdr(M.camera_info(STAMP, "fisheye_front_optical_frame", 640, 480, K, [0.1, -0.02, 0.003, -0.0004],
                            "equidistant"))
    d = M.decode_camera_info(msg)
    assert d["distortion_model"] == "equidistant" and (d["width"], d["height"]) == (640, 480)
    assert np.array_equal(d["K"], K) and d["D"] == [0.1, -0.02, 0.003, -0.0004]
    assert np.array_equal(d["R"], np.eye(3)) and np.array_equal(d["P"][:, :3], K) and d["stamp_ns"] == STAMP


def test_range_statuses_follow_rep117():
    def status(r):
        return M.decode_range(cdr(M.range_msg(STAMP, "us", r, 1.0, 0.15, 5.5)))
    ok = status(1.25)
    assert ok["status"] == "ok" and ok["valid"] and math.isclose(ok["range"], 1.25)
    assert cdr(M.range_msg(STAMP, "us", 1, 1, 0.15, 5.5)).radiation_type == 0  # ULTRASOUND
    assert status(math.inf)["status"] == "no_echo"
    assert status(-math.inf)["status"] == "too_close"
    assert status(float("nan"))["status"] == "invalid"
    assert status(7.0)["status"] == "invalid" and not status(7.0)["valid"]


def test_odometry_round_trip():
    d = M.decode_odometry(cdr(M.odometry(STAMP, "odom", "base_link", 1.5, -2.0, 2.5, 3.0, 0.1, -0.2)))
    assert (d["frame_id"], d["child_frame_id"], d["stamp_ns"]) == ("odom", "base_link", STAMP)
    for k, v in dict(x=1.5, y=-2.0, yaw=2.5, vx=3.0, vy=0.1, yaw_rate=-0.2).items():
        assert math.isclose(d[k], v, abs_tol=1e-9), k


def test_occupancy_grid_round_trip():
    rng = np.random.default_rng(3)
    grid = rng.integers(-1, 101, (30, 40)).astype(np.int8)
    d = M.decode_occupancy_grid(cdr(M.occupancy_grid(STAMP, "base_link", grid, 0.2, (-3.0, -4.0))))
    assert np.array_equal(d["data"], grid) and d["origin_xy"] == (-3.0, -4.0)
    assert math.isclose(d["resolution"], 0.2, rel_tol=1e-6) and d["frame_id"] == "base_link"
    with pytest.raises(M.MessageError):
        M.occupancy_grid(STAMP, "base_link", grid.astype(np.int16), 0.2, (0, 0))


def test_marker_arrays_round_trip():
    objs = [{"class": "pedestrian", "id": 7, "x": 3.0, "y": -1.0, "z": 0.9, "yaw": 0.5, "length": 0.5,
             "width": 0.6, "height": 1.8}]
    out = M.decode_marker_array_boxes(cdr(M.marker_array_boxes(STAMP, "base_link", objs)))
    assert len(out) == 1
    for k, v in objs[0].items():
        assert out[0][k] == pytest.approx(v), k
    ev = M.decode_marker_array_events(cdr(M.marker_array_events(STAMP, "base_link", [
        {"class": "siren", "x": 0.0, "y": 10.0}])))
    assert ev[0]["class"] == "siren" and ev[0]["bearing"] == pytest.approx(math.pi / 2)
    assert cdr(M.marker_array_events(STAMP, "base_link", [])).markers == []


def test_string_json_round_trip():
    msg = cdr(M.string_json({"q": "How far?", "a": 1.5}, stamp_ns=STAMP))
    assert M.decode_json(msg) == {"q": "How far?", "a": 1.5, "stamp_ns": STAMP}
    assert M.header_stamp_ns(msg) is None
    msg.data = "{broken"
    with pytest.raises(M.MessageError, match="JSON"):
        M.decode_json(msg)


@pytest.mark.parametrize("frame", ["", "u", "ultrasonic_front_left_side", "abc"])
@pytest.mark.parametrize("value", [1.23, math.inf, -math.inf, float("nan"), 0.05, 7.0])
def test_range_fast_cdr_decoder_matches_the_generic_one(frame: str, value: float) -> None:
    msg = M.range_msg(1_700_000_000_123_456_789, frame or "f", value, 1.047, 0.15, 5.5)
    data = M.serialize(msg, "sensor_msgs/msg/Range")
    generic = M.decode_range(M.deserialize(data, "sensor_msgs/msg/Range"))
    fast = M.decode_range_cdr(data)
    assert fast.keys() == generic.keys()
    for key, want in generic.items():
        got = fast[key]
        assert (math.isnan(got) and math.isnan(want)) if isinstance(want, float) and math.isnan(want) else got == want
    with pytest.raises(M.MessageError, match="truncated|not a CDR"):
        M.decode_range_cdr(data[:20])
