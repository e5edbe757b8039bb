"""`edge calibrate check`: is the rig still right? Boards of known pose are reprojected through the rig as it is,
per camera, next to the pose a fresh solve would give; a camera knocked out of alignment shows a large RMS and a
rotation of degrees. Images come from the targets file, or from a drive: each shot may name a bag time instead of
a file (`images: {fisheye/front: {bag_time_s: 12.3}}`), and the frame of that camera's topic nearest that time
is used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge.calibration.errors import CalibrationError
from edge.calibration.sources import read_image


def image_loader(bag: str | Path | None) -> Any:
    """A loader for shot images: file paths, or {bag_time_s: T} entries resolved against `bag`'s topics."""

    def load(src: Any) -> np.ndarray:
        if isinstance(src, np.ndarray):
            return src
        if isinstance(src, tuple):  # (ref, bag time) from a drive
            if bag is None:
                raise CalibrationError("a shot names a bag time; pass --bag DRIVE")
            (kind, name), t = src
            return _frame_at(Path(bag), kind, name, float(t))
        return read_image(Path(src))

    return load


def _frame_at(bag: Path, kind: str, name: str, t: float) -> np.ndarray:
    """The frame of that camera's image topic nearest `t` seconds after the bag's start."""
    from edge.drives.bag import open_bag
    from edge.drives.messages import decode_image

    base = f"/{kind}/{name}/image_raw"
    with open_bag(bag) as b:
        topic = base + "/compressed" if base + "/compressed" in b.topics else base
        if topic not in b.topics:
            raise CalibrationError(f"{bag}: no image topic for {kind}/{name} ({base}[/compressed])")
        start = b.start_ns or 0
        target = start + int(t * 1e9)
        best = None
        for m in b.messages([topic]):
            if best is None or abs(m.stamp_ns - target) < abs(best.stamp_ns - target):
                best = m
            elif m.stamp_ns > target:
                break
        if best is None:
            raise CalibrationError(f"{bag}: topic {topic} has no messages")
        return decode_image(best.msg, best.msgtype)

