"""Bags: written through rosbags (MCAP, zstd chunks), opened by AnyReader, the mcap reader, and our reader;
sqlite3 bags, damaged bags, unknown types."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import yaml
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from conftest import bench_read
from edge.drives import messages as M
from edge.drives import topics as T
from edge.drives.bag import BagWriter, open_bag
from edge.errors import BagError

CONTRACT = T.known_topics(bench_read.ULTRASONIC_NAMES)


def expected_topics() -> dict[str, str]:
    """What a synthetic drive holds: compressed images, camera infos, 12 ultrasonic, audio, odom, ground truth."""
    out = {}
    for name, spec in CONTRACT.items():
        if spec.types == (T.IMAGE,) and name != T.AUDIO:
            continue  # raw image form not written (compressed=True)
        out[name] = spec.types[0]
    return out


def test_drive_bag_opens_in_anyreader_with_contract_types(drive_bag: Path):
    with AnyReader([drive_bag], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as r:
        topics = {name: info.msgtype for name, info in r.topics.items()}
        assert topics == expected_topics()
        conn = next(c for c in r.connections if c.topic == T.fisheye_image_topic("left") + "/compressed")
        _, _, raw = next(r.messages(connections=[conn]))
        img = M.decode_image(r.deserialize(raw, conn.msgtype), conn.msgtype)
        assert img.shape == (480, 640, 3) and bench_read.frame_marker(img) == 0


def test_drive_bag_opens_in_mcap_reader_with_ros2_decoder(drive_bag: Path):
    files = list(drive_bag.glob("*.mcap"))
    assert len(files) == 1
    with files[0].open("rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        summary = reader.get_summary()
        assert summary is not None and {c.compression for c in summary.chunk_indexes} == {"zstd"}
        topics = {ch.topic: summary.schemas[ch.schema_id].name for ch in summary.channels.values()}
        assert topics == expected_topics()
        seen: dict[str, int] = {}
        for _schema, channel, message, decoded in reader.iter_decoded_messages():
            seen[channel.topic] = seen.get(channel.topic, 0) + 1
            if channel.topic == T.AUDIO:
                assert decoded.encoding == "16SC1" and decoded.height == 4 and decoded.width == 640
            if channel.topic.startswith("/ultrasonic/") and hasattr(decoded, "header"):
                assert decoded.header.stamp.sec * 10**9 + decoded.header.stamp.nanosec == message.log_time
    assert seen[T.AUDIO] == 50 and seen[T.ultrasonic_topic("rear_left_side")] == 40
    assert seen[T.fisheye_image_topic("rear") + "/compressed"] == 20


def test_metadata_records_offered_qos_and_counts(drive_bag: Path):
    meta = yaml.safe_load((drive_bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == "mcap" and meta["version"] == 9
    by_topic = {t["topic_metadata"]["name"]: t for t in meta["topics_with_message_count"]}
    cam = by_topic[T.FRONT_CAMERA_IMAGE + "/compressed"]["topic_metadata"]["offered_qos_profiles"][0]
    assert (cam["reliability"], cam["history"], cam["depth"]) == ("best_effort", "keep_last", 5)
    gt = by_topic[T.GT_QA]["topic_metadata"]["offered_qos_profiles"][0]
    assert gt["reliability"] == "reliable"
    assert by_topic[T.ODOM]["message_count"] == 100
    bag = open_bag(drive_bag)
    assert bag.topics[T.AUDIO].qos[0]["depth"] == 5 and bag.topics[T.AUDIO].count == 50


def test_reader_yields_time_order_topic_filter_and_raw(drive_bag: Path):
    with open_bag(drive_bag) as bag:
        assert not bag.diagnostics
        msgs = list(bag.messages())
        assert len(msgs) == sum(i.count for i in bag.topics.values())
        stamps = [m.stamp_ns for m in msgs]
        assert stamps == sorted(stamps) and stamps[0] == bag.start_ns and stamps[-1] == bag.end_ns
        us = [m for m in bag.messages(topics=[T.ultrasonic_topic("front_left_corner")])]
        assert len(us) == 40 and {m.msgtype for m in us} == {T.RANGE}
        assert [M.header_stamp_ns(m.msg) for m in us] == [m.stamp_ns for m in us]
        raw = next(bag.messages(topics=[T.ODOM], raw=True))
        assert isinstance(raw.msg, bytes) and M.decode_odometry(M.deserialize(raw.msg, T.ODOMETRY))["x"] == 0.0
        window = list(bag.messages(topics=[T.ODOM], start_ns=bag.start_ns + 10**9))
        assert len(window) == 50
        list(bag.messages(topics=["/not/there"]))
        assert any("/not/there" in d for d in bag.diagnostics)


def test_sqlite3_bag_reads_the_same(drive_bag: Path, make_bag):
    sq = make_bag("sq", duration_s=2.0, storage="sqlite3")
    assert (sq / "sq.db3").exists()
    with open_bag(sq) as a, open_bag(drive_bag) as b:
        assert a.storage == "sqlite3" and b.storage == "mcap"
        assert {k: (v.msgtype, v.count) for k, v in a.topics.items()} == \
               {k: (v.msgtype, v.count) for k, v in b.topics.items()}
        for ma, mb in zip(a.messages(raw=True), b.messages(raw=True), strict=True):
            assert (ma.topic, ma.stamp_ns, ma.msg) == (mb.topic, mb.stamp_ns, mb.msg)


def test_writer_refuses_existing_bag_and_wrong_types(tmp_path: Path, drive_bag: Path):
    with pytest.raises(BagError, match=str(drive_bag)):
        BagWriter(drive_bag)
    empty = tmp_path / "empty"
    empty.mkdir()
    with BagWriter(empty) as w:  # an empty directory is fine
        w.write(T.ODOM, T.ODOMETRY, 1, M.odometry(1, "odom", "base_link", 0, 0, 0, 0, 0, 0))
        with pytest.raises(BagError, match=r"/fisheye/front/image_raw/compressed.*CompressedImage"):
            w.write(T.fisheye_image_topic("front") + "/compressed", T.RANGE, 2, M.range_msg(2, "x", 1, 1, 0, 2))
        with pytest.raises(BagError, match="acme_msgs/msg/Blob"):
            w.write("/acme", "acme_msgs/msg/Blob", 3, None)
    with open_bag(empty) as bag:
        assert [m.topic for m in bag.messages()] == [T.ODOM]


def test_writer_keeps_what_was_written_when_the_producer_fails(tmp_path: Path):
    with pytest.raises(RuntimeError):
        with BagWriter(tmp_path / "b") as w:
            for i in range(5):
                w.write(T.ODOM, T.ODOMETRY, i, M.odometry(i, "odom", "base_link", i, 0, 0, 0, 0, 0))
            raise RuntimeError("generator crashed")
    with open_bag(tmp_path / "b") as bag:
        assert len(list(bag.messages())) == 5 and not bag.diagnostics


def _copy_bag(src: Path, dst: Path) -> Path:
    """Copy a bag under a new name (rosbag2 names the storage file after the directory)."""
    dst.mkdir()
    meta = (src / "metadata.yaml").read_text().replace(f"{src.name}.mcap", f"{dst.name}.mcap")
    (dst / "metadata.yaml").write_text(meta)
    (dst / f"{dst.name}.mcap").write_bytes((src / f"{src.name}.mcap").read_bytes())
    return dst


def test_truncated_mcap_yields_messages_before_the_cut(drive_bag: Path, tmp_path: Path):
    full = list(open_bag(drive_bag).messages(raw=True))
    cut = _copy_bag(drive_bag, tmp_path / "cut")
    mcap_file = cut / "cut.mcap"
    os.truncate(mcap_file, mcap_file.stat().st_size // 2)
    with open_bag(cut) as bag:
        got = list(bag.messages(raw=True))
        assert 0.2 * len(full) < len(got) < 0.8 * len(full)
        assert got == full[: len(got)]  # exactly the valid prefix, in time order, unchanged
        assert any(str(mcap_file) in d and "truncated" in d for d in bag.diagnostics), bag.diagnostics
        # decoded reading works too
        assert all(m.msg is not None for m in bag.messages(topics=[T.AUDIO]))


def test_recording_cut_before_metadata_was_written(drive_bag: Path, tmp_path: Path):
    """A recorder killed mid-run leaves no metadata.yaml and an MCAP without summary or footer."""
    cut = _copy_bag(drive_bag, tmp_path / "crash")
    (cut / "metadata.yaml").unlink()
    os.truncate(cut / "crash.mcap", int((cut / "crash.mcap").stat().st_size * 0.7))
    with open_bag(cut) as bag:
        odom = list(bag.messages(topics=[T.ODOM]))
        assert len(odom) > 30 and all(M.decode_odometry(m.msg)["x"] == pytest.approx(0.1 * i)
                                      for i, m in enumerate(odom))
        assert bag.topics[T.ODOM].msgtype == T.ODOMETRY
        assert any("crash.mcap" in d for d in bag.diagnostics)


def test_corrupted_chunk_in_the_middle_is_skipped_rest_is_read(drive_bag: Path, tmp_path: Path):
    bad = _copy_bag(drive_bag, tmp_path / "bad")
    f = bad / "bad.mcap"
    with f.open("rb") as fh:
        chunks = sorted(make_reader(fh).get_summary().chunk_indexes, key=lambda c: c.chunk_start_offset)
    assert len(chunks) >= 3
    victim = chunks[1]
    data = bytearray(f.read_bytes())
    mid = victim.chunk_start_offset + victim.chunk_length // 2
    data[mid: mid + 4096] = b"\x00" * 4096
    f.write_bytes(bytes(data))
    full = list(open_bag(drive_bag).messages(raw=True))
    with open_bag(bad) as bag:
        got = list(bag.messages(raw=True))
        assert any("damaged" in d and "bad.mcap" in d for d in bag.diagnostics), bag.diagnostics
    lost = [m for m in full if victim.message_start_time <= m.stamp_ns <= victim.message_end_time]
    assert len(got) >= len(full) - len(lost) - 5 and len(got) < len(full)
    assert got[-1] == full[-1]  # messages after the damaged chunk are still read


def test_garbage_file_is_a_clear_error(tmp_path: Path):
    d = tmp_path / "junk"
    d.mkdir()
    (d / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 9, storage_identifier: sqlite3, "
                                     "relative_file_paths: [junk.db3]}\n")
    (d / "junk.db3").write_bytes(b"this is not sqlite" * 10)
    with pytest.raises(BagError, match="junk"):
        open_bag(d)
    with pytest.raises(BagError, match="no such bag"):
        open_bag(tmp_path / "missing")


def test_unknown_message_type_skips_that_topic_names_it(make_bag):
    """A bag from another tool with a custom type and no definition: that topic is skipped, the rest read."""
    bag_path = make_bag("custom", duration_s=0.5, storage="sqlite3", ground_truth=False)
    db = sqlite3.connect(bag_path / "custom.db3")
    db.execute("UPDATE topics SET type='acme_msgs/msg/Blob', type_description_hash='' WHERE name=?", (T.ODOM,))
    db.execute("DELETE FROM message_definitions WHERE topic_type='nav_msgs/msg/Odometry'")
    db.commit()
    db.close()
    meta = bag_path / "metadata.yaml"
    meta.write_text(meta.read_text().replace("nav_msgs/msg/Odometry", "acme_msgs/msg/Blob"))
    with open_bag(bag_path) as bag:
        msgs = list(bag.messages())
        assert T.ODOM not in {m.topic for m in msgs} and T.AUDIO in {m.topic for m in msgs}
        assert len([m for m in msgs if m.topic == T.AUDIO]) == 12
        diag = [d for d in bag.diagnostics if "acme_msgs/msg/Blob" in d]
        assert len(diag) == 1 and "'/odom'" in diag[0] and "custom" in diag[0]


def test_undecodable_message_is_skipped_with_diagnostic(tmp_path: Path):
    with BagWriter(tmp_path / "b") as w:
        w.write(T.ODOM, T.ODOMETRY, 1, M.odometry(1, "odom", "base_link", 1, 0, 0, 0, 0, 0))
        w.write_raw(T.ODOM, T.ODOMETRY, 2, b"\x00\x01\x00\x00garbage")
        w.write(T.ODOM, T.ODOMETRY, 3, M.odometry(3, "odom", "base_link", 3, 0, 0, 0, 0, 0))
    with open_bag(tmp_path / "b") as bag:
        xs = [M.decode_odometry(m.msg)["x"] for m in bag.messages()]
        assert xs == [1.0, 3.0]
        assert any("'/odom'" in d and "2 ns" in d for d in bag.diagnostics)


def test_raw_images_and_uncompressed_bag(make_bag):
    p = make_bag("raw", duration_s=0.3, compressed=False, compression="none", ground_truth=False)
    with p.joinpath("raw.mcap").open("rb") as fh:
        assert {c.compression for c in make_reader(fh).get_summary().chunk_indexes} == {""}
    with open_bag(p) as bag:
        m = next(bag.messages(topics=[T.fisheye_image_topic("right")]))
        img = M.decode_image(m.msg, m.msgtype)
        assert m.msgtype == T.IMAGE and img.shape == (480, 640, 3) and bench_read.frame_marker(img) == 0
        assert np.array_equal(img[:16, :16, 1], np.zeros((16, 16), np.uint8))
