"""Where calibration images come from: a folder of image files, or an image topic of a rosbag2 bag (any
recorder: sensor_msgs/Image or CompressedImage, read through the project's bag reader)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from edge.calibration.errors import CalibrationError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm"}


def read_image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CalibrationError(f"{path}: cannot be read as an image")
    return img


def folder_images(folder: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """(file name, image) for every image file in `folder`, in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    for p in files:
        yield p.name, read_image(p)


def bag_images(bag: str | Path, topic: str, every: int = 1) -> Iterator[tuple[str, np.ndarray]]:
    """(stamp name, image) of every `every`-th message on `topic`; the topic may be raw or compressed."""
    from edge.drives.bag import open_bag
    from edge.drives.messages import decode_image, header_stamp_ns

    with open_bag(bag) as b:
        if topic not in b.topics:
            image_topics = [t for t, info in b.topics.items() if info.msgtype.endswith(("/Image", "/CompressedImage"))]
            raise CalibrationError(f"{bag}: no topic '{topic}'; image topics in the bag: {', '.join(image_topics) or 'none'}")
        for k, m in enumerate(b.messages([topic])):
            if k % max(every, 1):
                continue
            stamp = header_stamp_ns(m.msg) or m.stamp_ns
            yield f"{topic}@{stamp}", decode_image(m.msg, m.msgtype)
