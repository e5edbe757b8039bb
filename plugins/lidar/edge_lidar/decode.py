"""The plugin's MessageDecoder: how the synchroniser turns one PointCloud2 into the frame's value for a LiDAR,
(N, 4) float32 x, y, z, intensity in the sensor's frame. Imported by the synchroniser only (the plugin names it)."""

from __future__ import annotations

import numpy as np

from edge.modalities import DecodeContext, MessageDecoder

from edge_lidar.messages import POINTCLOUD2, decode_points


def decode_cloud(payload: object, msgtype: str, ctx: DecodeContext) -> np.ndarray:
    return decode_points(ctx.message(payload, msgtype))


POINTS = MessageDecoder(types=(POINTCLOUD2,), decode=decode_cloud, noun="cloud")
