"""Approximate-time synchronisation: present / missing, slop respected, stale data never reused."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from conftest import bench_read
from edge.drives import messages as M
from edge.drives import topics as T
from edge.drives.bag import BagWriter
from edge.drives.sync import SyncConfig, SyncError, Synchronizer, synchronized_samples

S = 1_700_000_000_000_000_000
MS = 1_000_000
frame_marker = bench_read.frame_marker


def img(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    a = np.full((h, w, 3), 128, np.uint8)
    a[:16, :16] = (0, (i % 32) * 8, 0)
    return a


def test_full_drive_every_modality_present_and_aligned(drive_bag: Path):
    sync = Synchronizer(drive_bag)
    samples = list(sync)
    assert not sync.diagnostics
    assert len(samples) == 20 and sync.assembler.reference_key == "fisheye/front"
    for i, s in enumerate(samples):
        assert s.stamp_ns == S + i * 100 * MS
        assert {cam: frame_marker(im) for cam, im in s.data["fisheye"].items()} == {c: i for c in T.FISHEYE_CAMERAS}
        assert s.data["fisheye"]["left"].shape == (480, 640, 3) and s.sensor("camera", "front").shape == (384, 640, 3)
        assert frame_marker(s.sensor("camera", "front")) == i
        assert len(s.data["ultrasonic"]) == 12
        us = s.data["ultrasonic"]["front_left_corner"]
        assert us["status"] == "ok" and us["stamp_ns"] == s.stamp_ns  # the reading at t, not the one at t + 50 ms
        assert math.isclose(us["range"], 1.0 + 0.01 * (2 * i), rel_tol=1e-6)
        assert s.odometry["x"] == pytest.approx(0.1 * 5 * i)
        gt = s.ground_truth
        assert gt.conditions["frame"] == i and gt.bev["data"][i % 40].min() == 100
        assert gt.objects[0]["class"] == "car" and (gt.audio_events != []) == bool(i % 2)
        assert [q["frame"] for q in gt.qa] == ([i] if i % 5 == 0 else [])
        for key, stamp in s.source_stamps.items():
            assert abs(stamp - s.stamp_ns) <= 50 * MS or key == "audio", key
    # no echo on sensor 0 every 10th reading is reported as such, not dropped
    assert samples[5].data["ultrasonic"]["front_left_side"]["status"] == "no_echo"


def test_audio_window_exact_or_missing(drive_bag: Path):
    cfg = SyncConfig(audio_window_s=0.4)
    samples = list(synchronized_samples(drive_bag, cfg))
    for s in samples:
        covered = s.stamp_ns - S >= 400 * MS
        assert ("audio" in s.missing) == (not covered) and (s.data["audio"] is not None) == covered
        if covered:
            # 40 ms chunks hold their chunk index: sample j of the window lies in chunk (start + j / rate) // 40 ms
            start = s.stamp_ns - S - 400 * MS
            assert s.data["audio"].shape == (4, 6400) and s.data["audio"].dtype == np.int16
            expected = ((start + np.arange(6400) * 62_500) // (40 * MS)).astype(np.int16)
            assert np.array_equal(s.data["audio"][2], expected)
            assert s.source_stamps["audio"] == S + (start // (40 * MS)) * 40 * MS


def _write(path: Path, items: list[tuple[str, str, int, object]]) -> Path:
    with BagWriter(path) as w:
        for topic, mt, t, msg in sorted(items, key=lambda x: x[2]):
            w.write(topic, mt, t, msg)
    return path


def _cam(cam: str, i: int, t: int) -> tuple[str, str, int, object]:
    return (T.fisheye_image_topic(cam) + "/compressed", T.COMPRESSED_IMAGE, t, M.compressed_image(t, cam, img(i)))


def test_slop_is_respected_and_images_never_reused(tmp_path: Path):
    items = []
    for i in range(6):
        items.append(_cam("front", i, S + i * 100 * MS))
    # left: on time for 0, 30 ms late for 1, 70 ms late for 2 (beyond 50 ms slop), dropped for 3, 4, 5 only
    items += [_cam("left", 0, S), _cam("left", 1, S + 130 * MS), _cam("left", 2, S + 270 * MS)]
    # right: a single frame between samples 4 and 5 (45 ms from both): usable once, never twice
    items.append(_cam("right", 9, S + 455 * MS))
    # rear: one stale frame long before; never used later
    items.append(_cam("rear", 7, S - 300 * MS))
    bag = _write(tmp_path / "b", items)
    samples = list(synchronized_samples(bag, SyncConfig(slop_s=0.05)))
    assert [s.stamp_ns for s in samples] == [S + i * 100 * MS for i in range(6)]
    left = [None if s.data["fisheye"]["left"] is None else frame_marker(s.data["fisheye"]["left"]) for s in samples]
    assert left == [0, 1, None, 2, None, None]  # frame 2 (270 ms) is 70 ms from sample 2, 30 ms from sample 3
    assert samples[1].source_stamps["fisheye/left"] == S + 130 * MS
    right = [None if s.data["fisheye"]["right"] is None else frame_marker(s.data["fisheye"]["right"]) for s in samples]
    assert right.count(9) == 1
    assert all(s.data["fisheye"]["rear"] is None and "fisheye/rear" in s.missing for s in samples)
    assert all("front" in s.missing and s.sensor("camera", "front") is None for s in samples)  # front camera not in this bag
    assert all(s.data["audio"] is None and "audio" in s.missing for s in samples)


def test_ultrasonic_latest_within_slop_never_stale(tmp_path: Path):
    items = [_cam("front", i, S + i * 100 * MS) for i in range(5)]
    # sensor "a" stops after 120 ms; "b" reads NaN; "c" reads out of range
    for k, t in enumerate([S, S + 50 * MS, S + 100 * MS, S + 120 * MS]):
        items.append(("/ultrasonic/a", T.RANGE, t, M.range_msg(t, "a", 1.0 + k, 1.0, 0.15, 5.5)))
    for i in range(5):
        t = S + i * 100 * MS + 3 * MS
        items.append(("/ultrasonic/b", T.RANGE, t, M.range_msg(t, "b", float("nan"), 1.0, 0.15, 5.5)))
        items.append(("/ultrasonic/c", T.RANGE, t, M.range_msg(t, "c", 9.0, 1.0, 0.15, 5.5)))
    bag = _write(tmp_path / "b", items)
    samples = list(synchronized_samples(bag))
    a = [None if s.data["ultrasonic"]["a"] is None else s.data["ultrasonic"]["a"]["range"] for s in samples]
    assert a == [1.0, 3.0, None, None, None]  # at t=100: the reading at 100 (latest <= t); 120 is stale at 200
    assert "ultrasonic/a" in samples[2].missing and "ultrasonic/a" not in samples[1].missing
    assert all(s.data["ultrasonic"]["b"]["status"] == "invalid" and math.isnan(s.data["ultrasonic"]["b"]["range"]) for s in samples)
    assert all(s.data["ultrasonic"]["c"]["status"] == "invalid" and not s.data["ultrasonic"]["c"]["valid"] for s in samples)


def test_raw_and_compressed_forms_and_slowest_reference(tmp_path: Path):
    items = []
    for i in range(4):  # front fisheye raw Image at 10 Hz, rear compressed at 5 Hz (the slowest)
        t = S + i * 100 * MS
        items.append((T.fisheye_image_topic("front"), T.IMAGE, t, M.raw_image(t, "f", img(i))))
        if i % 2 == 0:
            items.append(_cam("rear", i, t + 10 * MS))
    bag = _write(tmp_path / "b", items)
    s = list(synchronized_samples(bag, SyncConfig(reference="slowest")))
    assert [x.stamp_ns for x in s] == [S + 10 * MS, S + 210 * MS]
    assert [frame_marker(x.data["fisheye"]["front"]) for x in s] == [0, 2]
    assert np.array_equal(s[0].data["fisheye"]["front"], img(0))  # the raw form is lossless
    with pytest.raises(SyncError, match="fisheye/left"):
        Synchronizer(bag, SyncConfig(reference="fisheye/left"))


def test_edge_run_counts_the_reference_stream_raw_or_compressed(tmp_path: Path):
    """`edge run`'s frame total is the message count of the topic the clock's reference is read from: the front
    fisheye recorded raw (sensor_msgs/Image) counts, as does another reference or the compressed form."""
    from edge.runtime.cli import reference_count

    items = []
    for i in range(6):  # front fisheye raw at 10 Hz, rear compressed at 5 Hz
        t = S + i * 100 * MS
        items.append((T.fisheye_image_topic("front"), T.IMAGE, t, M.raw_image(t, "f", img(i))))
        if i % 2 == 0:
            items.append(_cam("rear", i, t + 10 * MS))
    bag = _write(tmp_path / "b", items)
    assert reference_count(Synchronizer(bag)) == 6
    assert reference_count(Synchronizer(bag, SyncConfig(reference="slowest"))) == 3
    assert reference_count(Synchronizer(bag, SyncConfig(reference="fisheye/rear"))) == 3
    compressed = _write(tmp_path / "c", [_cam("front", i, S + i * 100 * MS) for i in range(4)])
    assert reference_count(Synchronizer(compressed)) == 4
    odometry_only = _write(tmp_path / "o", [(T.ODOM, T.ODOMETRY, S, M.odometry(S, "odom", "base_link", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))])
    assert reference_count(Synchronizer(odometry_only)) is None  # no camera: a free-running clock


def test_wrong_type_topic_is_named_and_skipped_rest_read(tmp_path: Path):
    items = [_cam("front", i, S + i * 100 * MS) for i in range(3)]
    for i in range(3):  # a tool recorded Range on the left camera's topic, and String on the audio topic
        t = S + i * 100 * MS
        items.append((T.fisheye_image_topic("left"), T.RANGE, t, M.range_msg(t, "x", 1, 1, 0, 2)))
        items.append(("/ultrasonic/a", T.RANGE, t, M.range_msg(t, "a", 1.0, 1.0, 0.15, 5.5)))
    bag = tmp_path / "b"
    with BagWriter(bag) as w:
        for topic, mt, t, msg in sorted(items, key=lambda x: x[2]):
            if topic == T.fisheye_image_topic("left"):
                w.add_topic(topic, T.IMAGE)  # would refuse Range on a contract topic ...
            w.write_raw(topic, mt, t, M.serialize(msg, mt)) if topic != T.fisheye_image_topic("left") else None
        # ... so write the wrong type the way a foreign tool would: a separate rosbags connection
        from edge.drives.messages import typestore
        conn = w._writer.add_connection("/audio/raw", T.STRING, typestore=typestore())
        w._writer.write(conn, S, M.serialize(M.string_json({"x": 1}), T.STRING))
    sync = Synchronizer(bag)
    samples = list(sync)
    assert len(samples) == 3 and all(s.data["ultrasonic"]["a"]["valid"] for s in samples)
    assert any("'/audio/raw'" in d and "std_msgs/msg/String" in d for d in sync.diagnostics), sync.diagnostics


def test_wrong_type_on_camera_topic_from_foreign_bag(tmp_path: Path):
    """A foreign bag (written with plain rosbags) carries Range on an image topic: named, camera missing."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from edge.drives.messages import typestore

    ts = typestore()
    path = tmp_path / "foreign"
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        cf = w.add_connection(T.fisheye_image_topic("front"), T.IMAGE, typestore=ts)
        cl = w.add_connection(T.fisheye_image_topic("left"), T.RANGE, typestore=ts)
        for i in range(3):
            t = S + i * 100 * MS
            w.write(cf, t, M.serialize(M.raw_image(t, "f", img(i)), T.IMAGE))
            w.write(cl, t, M.serialize(M.range_msg(t, "x", 1, 1, 0, 2), T.RANGE))
    sync = Synchronizer(path)
    samples = list(sync)
    assert len(samples) == 3 and all("fisheye/left" in s.missing for s in samples)
    assert [d for d in sync.diagnostics if "'/fisheye/left/image_raw'" in d and "sensor_msgs/msg/Range" in d]


def test_corrupt_jpeg_marks_camera_missing_for_that_sample(tmp_path: Path):
    items = [_cam("front", i, S + i * 100 * MS) for i in range(3)]
    for i in range(3):
        topic, mt, t, msg = _cam("left", i, S + i * 100 * MS)
        if i == 1:
            msg.data = np.frombuffer(b"\xff\xd8 broken jpeg", np.uint8)
        items.append((topic, mt, t, msg))
    sync = Synchronizer(_write(tmp_path / "b", items))
    samples = list(sync)
    assert [s.data["fisheye"]["left"] is None for s in samples] == [False, True, False]
    assert any("/fisheye/left/image_raw/compressed" in d for d in sync.diagnostics)


def test_reduced_decode_and_no_decode(drive_bag: Path):
    s = next(iter(synchronized_samples(drive_bag, SyncConfig(image_reduce=2))))
    assert s.data["fisheye"]["front"].shape == (240, 320, 3) and s.sensor("camera", "front").shape == (192, 320, 3)
    s = next(iter(synchronized_samples(drive_bag, SyncConfig(decode_images=False))))
    mt, msg = s.data["fisheye"]["rear"]
    assert mt == T.COMPRESSED_IMAGE and M.decode_image(msg, mt).shape == (480, 640, 3)


def test_jittered_stamps_pair_by_header_stamp(make_bag):
    bag = make_bag("jit", duration_s=1.0, jitter_ms=20.0, ground_truth=False)
    for s in synchronized_samples(bag):
        assert not s.missing or s.missing == ["audio"]
        for key, st in s.source_stamps.items():
            if key != "audio":
                assert abs(st - s.stamp_ns) <= 50 * MS
        assert len({frame_marker(im) for im in s.data["fisheye"].values()}) == 1


def test_qa_pairs_all_attached_once_and_conditions_state_age(tmp_path: Path):
    items = [_cam("front", i, S + i * 100 * MS) for i in range(30)]
    for k in range(3):  # three QA pairs at 1.0 s
        items.append((T.GT_QA, T.STRING, S + 10**9, M.string_json({"q": k}, stamp_ns=S + 10**9)))
    items.append((T.GT_CONDITIONS, T.STRING, S, M.string_json({"light": "day"}, stamp_ns=S)))
    items.append((T.GT_CONDITIONS, T.STRING, S + 5 * 10**8, M.string_json({"light": "dusk"}, stamp_ns=S + 5 * 10**8)))
    samples = list(synchronized_samples(_write(tmp_path / "b", items), SyncConfig(conditions_max_age_s=1.0)))
    assert [len(s.ground_truth.qa) for s in samples] == [3 if i == 10 else 0 for i in range(30)]
    assert [q["q"] for q in samples[10].ground_truth.qa] == [0, 1, 2]
    light = [None if s.ground_truth.conditions is None else s.ground_truth.conditions["light"] for s in samples]
    # the state in force at t; expires 1 s after its last refresh (no stale state beyond the configured age)
    assert light[:5] == ["day"] * 5 and light[5:16] == ["dusk"] * 11 and light[16:] == [None] * 14
    assert "gt/conditions" in samples[16].missing
