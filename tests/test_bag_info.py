"""`bag_info` / `format_info`: topics, types, counts, rates, duration, storage, compression."""

from __future__ import annotations

import json
import os
from pathlib import Path

from edge.drives import topics as T
from edge.drives.info import bag_info, format_info


def test_info_of_a_drive(drive_bag: Path):
    info = bag_info(drive_bag)
    json.dumps(info)  # JSON-ready for --json
    assert info["storage"] == "mcap" and info["compression"] == "zstd (mcap chunks)"
    assert info["duration_s"] == 1.98 and info["message_count"] == sum(t["count"] for t in info["topics"])
    by = {t["name"]: t for t in info["topics"]}
    assert by[T.AUDIO]["rate_hz"] == 25.0 and by[T.AUDIO]["count"] == 50
    assert by[T.ultrasonic_topic("rear_right_side")]["rate_hz"] == 20.0
    assert by[T.FRONT_CAMERA_IMAGE + "/compressed"]["type"] == T.COMPRESSED_IMAGE
    assert by[T.ODOM]["qos"] == {"reliability": "best_effort", "depth": 5}
    assert info["size_bytes"] == sum(p.stat().st_size for p in drive_bag.iterdir())
    text = format_info(info)
    assert "/fisheye/left/image_raw/compressed" in text and "25.00 Hz" in text and "warning" not in text


def test_info_flags_damage_and_sqlite(make_bag, tmp_path: Path):
    sq = bag_info(make_bag("sq", duration_s=0.5, storage="sqlite3"))
    assert sq["storage"] == "sqlite3" and sq["compression"] == "zstd (message)"
    p = make_bag("cut", duration_s=1.0)
    f = p / "cut.mcap"
    os.truncate(f, f.stat().st_size // 2)
    info = bag_info(p)
    assert info["message_count"] > 0 and info["diagnostics"]
    assert "warning:" in format_info(info) and "cut.mcap" in format_info(info)
