"""sensor_msgs/PointCloud2 <-> (N, 4) float32 x, y, z, intensity, with the core's typestore (ROS 2 Jazzy).

The builder writes the layout most drivers publish: one row (height 1), fields x, y, z, intensity FLOAT32 at
offsets 0, 4, 8, 12, point_step 16, little-endian. The decoder reads any cloud that carries those four fields as
FLOAT32, whatever their order and whatever other fields sit between them (ring, time, return type: as other tools
and drivers write them), and raises MessageError naming what is wrong for a cloud it cannot read correctly (a missing
or non-float32 field, a field past point_step, big-endian data, a data length that does not match the declared
size) instead of returning misread points.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from edge.drives.messages import MessageError, header, typestore

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
FIELDS = ("x", "y", "z", "intensity")
FLOAT32 = 7  # sensor_msgs/msg/PointField.FLOAT32
POINT_STEP = 4 * len(FIELDS)


class PointFieldLike(Protocol):
    name: str
    offset: int
    datatype: int
    count: int


class PointCloud2Like(Protocol):
    """What the decoder reads of a message: our builder's, rosbags' deserialiser's or rclpy's class."""

    height: int
    width: int
    fields: list[PointFieldLike]
    is_bigendian: bool
    point_step: int
    row_step: int
    data: np.ndarray | bytes


def point_cloud(stamp_ns: int, frame_id: str, points: np.ndarray) -> object:
    """A PointCloud2 of (N, 4) x, y, z, intensity points (converted to float32)."""
    pts = np.ascontiguousarray(points, dtype="<f4")
    if pts.ndim != 2 or pts.shape[1] != len(FIELDS):
        raise MessageError(f"PointCloud2: points must be (N, 4) x, y, z, intensity, got shape {pts.shape}")
    ts = typestore()
    field_cls = ts.types["sensor_msgs/msg/PointField"]
    fields = [field_cls(name=n, offset=4 * i, datatype=FLOAT32, count=1) for i, n in enumerate(FIELDS)]
    n = pts.shape[0]
    return ts.types[POINTCLOUD2](
        header=header(stamp_ns, frame_id), height=1, width=n, fields=fields, is_bigendian=False,
        point_step=POINT_STEP, row_step=POINT_STEP * n, data=pts.view(np.uint8).reshape(-1),
        is_dense=bool(np.isfinite(pts).all()))


def _offsets(msg: PointCloud2Like) -> list[int]:
    """The byte offsets of x, y, z, intensity in a point, checked."""
    by_name = {f.name: f for f in msg.fields}
    missing = [n for n in FIELDS if n not in by_name]
    if missing:
        have = ", ".join(f.name for f in msg.fields) or "none"
        raise MessageError(f"PointCloud2: no field {', '.join(missing)} (fields: {have}); x, y, z, intensity needed")
    offsets = []
    for n in FIELDS:
        f = by_name[n]
        if f.datatype != FLOAT32 or f.count != 1:
            raise MessageError(f"PointCloud2: field {n} is datatype {f.datatype} count {f.count}, FLOAT32 (7) count 1 "
                               f"expected")
        if f.offset < 0 or f.offset + 4 > msg.point_step:
            raise MessageError(f"PointCloud2: field {n} at offset {f.offset} does not fit point_step {msg.point_step}")
        offsets.append(int(f.offset))
    return offsets


def decode_points(msg: PointCloud2Like) -> np.ndarray:
    """A PointCloud2 -> (N, 4) float32 x, y, z, intensity (N = height * width), a copy."""
    if msg.is_bigendian:
        raise MessageError("PointCloud2: big-endian data is not supported (is_bigendian is true)")
    offsets = _offsets(msg)
    height, width, step, row = int(msg.height), int(msg.width), int(msg.point_step), int(msg.row_step)
    if row < width * step:
        raise MessageError(f"PointCloud2: row_step {row} is less than width {width} x point_step {step}")
    data = np.frombuffer(msg.data, np.uint8) if isinstance(msg.data, (bytes, bytearray, memoryview)) else \
        np.asarray(msg.data, np.uint8)
    if data.size != height * row:
        raise MessageError(f"PointCloud2: data holds {data.size} bytes, height {height} x row_step {row} = "
                           f"{height * row} declared")
    if height * width == 0:
        return np.zeros((0, len(FIELDS)), np.float32)
    rows = data.reshape(height, row)[:, : width * step].reshape(height * width, step)
    layout = np.dtype({"names": list(FIELDS), "formats": ["<f4"] * len(FIELDS), "offsets": offsets, "itemsize": step})
    points = np.ascontiguousarray(rows).view(layout).reshape(-1)
    return np.stack([points[n] for n in FIELDS], axis=1).astype(np.float32)
