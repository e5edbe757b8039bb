"""PointCloud2 round trip through CDR, clouds written by other tools (extra fields, another order, padded rows),
and malformed clouds rejected with a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from edge.drives.messages import MessageError, deserialize, serialize, typestore

from edge_lidar.decode import POINTS
from edge_lidar.messages import FLOAT32, POINTCLOUD2, decode_points, point_cloud

PointField = typestore().types["sensor_msgs/msg/PointField"]


def cloud(n: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 10, (n, 4)).astype(np.float32)


def foreign(points: np.ndarray, layout: list[tuple[str, int, int]], step: int, height: int = 1,
            row_pad: int = 0, bigendian: bool = False) -> object:
    """A cloud as another tool writes it: `layout` (name, offset, datatype); x, y, z, intensity from `points`,
    other float32 fields filled with 7, other types left zero."""
    n = points.shape[0]
    width = n // height
    buf = np.zeros((height, width * step + row_pad), np.uint8)
    pts = buf[:, : width * step].reshape(height, width, step)
    for name, offset, dtype in layout:
        if dtype != FLOAT32 or offset + 4 > step:  # other types and fields past the point are left zero
            continue
        col = points[:, "xyzi".index(name[0])] if name in ("x", "y", "z", "intensity") else np.full(n, 7, np.float32)
        pts[:, :, offset: offset + 4] = col.astype("<f4").view(np.uint8).reshape(height, width, 4)
    fields = [PointField(name=name, offset=offset, datatype=dtype, count=1) for name, offset, dtype in layout]
    msg = point_cloud(5, "lidar_roof", points)
    return type(msg)(header=msg.header, height=height, width=width, fields=fields, is_bigendian=bigendian,
                     point_step=step, row_step=width * step + row_pad, data=buf.reshape(-1), is_dense=True)


def test_round_trip_through_cdr():
    pts = cloud()
    msg = point_cloud(1_700_000_000_123_456_789, "lidar_roof", pts)
    back = deserialize(serialize(msg), POINTCLOUD2)
    assert back.header.frame_id == "lidar_roof" and back.header.stamp.nanosec == 123_456_789
    assert back.point_step == 16 and back.row_step == 16 * 50 and back.width == 50 and not back.is_bigendian
    np.testing.assert_array_equal(decode_points(back), pts)
    assert decode_points(point_cloud(0, "l", np.zeros((0, 4)))).shape == (0, 4)


def test_decoder_of_the_synchroniser_decodes_cdr():
    class Ctx:
        cfg, range_floats = None, None

        def message(self, payload, msgtype):
            return deserialize(payload, msgtype)

    pts = cloud(10, 1)
    np.testing.assert_array_equal(POINTS.decode(serialize(point_cloud(0, "l", pts)), POINTCLOUD2, Ctx()), pts)
    assert POINTS.types == (POINTCLOUD2,)


def test_other_field_order_extra_fields_and_padded_rows_are_read():
    pts = cloud(60, 2)
    # an Ouster-like layout: intensity first, then a uint16 ring, x, y, z, a float time, 32-byte points
    layout = [("intensity", 0, FLOAT32), ("ring", 4, 4), ("x", 8, FLOAT32), ("y", 12, FLOAT32), ("z", 16, FLOAT32),
              ("t", 20, FLOAT32)]
    np.testing.assert_array_equal(decode_points(foreign(pts, layout, 32)), pts)
    # two rows (an organised cloud) with 8 padding bytes each
    np.testing.assert_array_equal(decode_points(foreign(pts, layout, 24, height=2, row_pad=8)), pts)
    back = deserialize(serialize(foreign(pts, layout, 32)), POINTCLOUD2)
    np.testing.assert_array_equal(decode_points(back), pts)


XYZI = [("x", 0, FLOAT32), ("y", 4, FLOAT32), ("z", 8, FLOAT32), ("intensity", 12, FLOAT32)]


@pytest.mark.parametrize("make, match", [
    (lambda p: foreign(p, XYZI[:3], 16), "no field intensity"),
    (lambda p: foreign(p, [("x", 0, FLOAT32), ("y", 4, FLOAT32), ("z", 8, 8), ("intensity", 12, FLOAT32)], 16),
     "field z is datatype 8"),
    (lambda p: foreign(p, XYZI, 12), "field intensity at offset 12 does not fit point_step 12"),
    (lambda p: foreign(p, XYZI, 16, bigendian=True), "big-endian"),
])
def test_malformed_clouds_are_rejected_by_name(make, match):
    with pytest.raises(MessageError, match=match):
        decode_points(make(cloud(8, 3)))


def test_wrong_data_length_and_row_step_are_rejected():
    msg = point_cloud(0, "l", cloud(8, 4))
    short = type(msg)(header=msg.header, height=1, width=8, fields=msg.fields, is_bigendian=False, point_step=16,
                      row_step=128, data=msg.data[:-4], is_dense=True)
    with pytest.raises(MessageError, match="data holds 124 bytes"):
        decode_points(short)
    narrow = type(msg)(header=msg.header, height=1, width=8, fields=msg.fields, is_bigendian=False, point_step=16,
                       row_step=64, data=msg.data, is_dense=True)
    with pytest.raises(MessageError, match="row_step 64 is less than width 8"):
        decode_points(narrow)
    with pytest.raises(MessageError, match=r"\(N, 4\)"):
        point_cloud(0, "l", np.zeros((3, 3)))


def test_the_synchroniser_puts_the_installed_plugins_clouds_in_the_frame(tmp_path):
    """A bag with the front fisheye and the roof LiDAR, read with the installed registry (no plugins= given)."""
    from edge.drives import messages as M
    from edge.drives import topics as T
    from edge.drives.bag import BagWriter
    from edge.drives.sync import Synchronizer

    s, ms = 1_700_000_000_000_000_000, 1_000_000
    img = np.full((48, 64, 3), 128, np.uint8)
    clouds = [cloud(30 + i, i) for i in range(4)]
    with BagWriter(tmp_path / "bag") as w:
        for i, pts in enumerate(clouds):
            t = s + i * 100 * ms
            w.write(T.fisheye_image_topic("front") + T.COMPRESSED_SUFFIX, T.COMPRESSED_IMAGE, t,
                    M.compressed_image(t, "front", img))
            w.write("/lidar/roof/points", POINTCLOUD2, t + 5 * ms, point_cloud(t + 5 * ms, "lidar_roof", pts))
    sync = Synchronizer(tmp_path / "bag")
    frames = list(sync)
    assert len(frames) == 4 and not sync.diagnostics
    for f, pts in zip(frames, clouds):
        np.testing.assert_array_equal(f.sensor("lidar", "roof"), pts)
        assert f.source_stamps["lidar/roof"] == f.stamp_ns + 5 * ms
