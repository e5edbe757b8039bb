"""`edge run` / `edge bench` --namespace and --remap: a drive rewritten under a namespace and with other topic names
reads as the original (the same samples, the same report frames), and a remap that cannot apply is one clear error
naming the rule and the topic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from conftest import bench_read
from edge.drives import topics as T
from edge.drives.bag import BagWriter, open_bag
from edge.drives.sync import Synchronizer
from edge.drives.topics import RemapError, TopicRemap

FRONT = T.fisheye_image_topic("front")
NS = "/vehicle1"
# The front fisheye recorded as /vehicle1/cam0/compressed, everything else under /vehicle1, and a second vehicle's
# odometry beside it (must not be read).
RULES = [f"{FRONT}:=cam0"]


def _rewrite(src: Path, dst: Path, rename: Callable[[str], str], extra: dict[str, str] | None = None) -> Path:
    """Copy `src` message by message under new topic names (definitions kept); `extra`: new topic -> copied topic."""
    with open_bag(src) as bag, BagWriter(dst, typestore=bag.typestore) as w:
        for m in bag.messages(raw=True):
            w.write_raw(rename(m.topic), m.msgtype, m.stamp_ns, m.msg)
            for new, old in (extra or {}).items():
                if m.topic == old:
                    w.write_raw(new, m.msgtype, m.stamp_ns, m.msg)
    return dst


def _vehicle1(topic: str) -> str:
    return NS + ("/cam0/compressed" if topic == FRONT + T.COMPRESSED_SUFFIX else topic)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The synthetic 2 s drive (each image carries its frame index) and its namespaced, renamed copy."""
    d = tmp_path_factory.mktemp("remap")
    src = bench_read.build_synthetic_bag(d / "src", 2.0, fisheye_size=(128, 96), front_size=(128, 80))
    return src, _rewrite(src, d / "ns", _vehicle1, extra={"/vehicle2/odom": T.ODOM})


def _marker(img: np.ndarray | None) -> int | None:
    return None if img is None else bench_read.frame_marker(img)


def _digest(s: Any) -> tuple[Any, ...]:
    audio = s.get("audio")
    return (s.stamp_ns, {k: _marker(v) for k, v in s.get("fisheye", {}).items()}, _marker(s.sensor("camera", "front")),
            {k: (v or {}).get("range") for k, v in s.get("ultrasonic", {}).items()}, None if audio is None else audio.shape,
            s.odometry is not None, s.source_stamps, sorted(s.missing))


def test_namespaced_renamed_drive_gives_the_same_samples(small: tuple[Path, Path]) -> None:
    src, ns = small
    clean = [_digest(s) for s in Synchronizer(src)]
    bag = open_bag(ns, TopicRemap.parse(RULES, NS))
    assert FRONT + T.COMPRESSED_SUFFIX in bag.topics and "/odom" in bag.topics  # the contract's names
    assert "/vehicle2/odom" in bag.recorded and not any(t.startswith("/vehicle") for t in bag.topics)
    sync = Synchronizer(bag)
    assert [_digest(s) for s in sync] == clean and len(clean) == 20
    note = [d for d in sync.diagnostics if "topic names" in d]  # what was read under which name, and what was not
    assert len(note) == 1 and "/vehicle1/cam0/compressed read as /fisheye/front/image_raw/compressed" in note[0] \
        and "not read: /vehicle2/odom" in note[0]
    # Without the remap the bag's own names are read: no contract camera at all.
    assert not any(t.startswith("/fisheye") for t in open_bag(ns).topics)


def test_a_remap_takes_the_name_from_the_topic_under_it(small: tuple[Path, Path]) -> None:
    """Swapping two sensors: each rule's bag topic is read under its rule's name only; a rule for one side alone
    leaves the other side's contract topic unread (never one bag topic read twice)."""
    src, _ = small
    left, right = (T.fisheye_image_topic(c) for c in ("left", "right"))
    both = open_bag(src, TopicRemap.parse([f"{left}:={right}", f"{right}:={left}"]))
    assert {m.topic for m in both.messages([left + T.COMPRESSED_SUFFIX])} == {left + T.COMPRESSED_SUFFIX}
    counts = {t: i.count for t, i in both.topics.items()}
    assert counts[left + T.COMPRESSED_SUFFIX] == counts[right + T.COMPRESSED_SUFFIX] == 20
    one = open_bag(src, TopicRemap.parse([f"{left}:={right}"]))
    assert left + T.COMPRESSED_SUFFIX in one.topics and right + T.COMPRESSED_SUFFIX not in one.topics
    assert not list(one.messages([right + T.COMPRESSED_SUFFIX]))  # its bag topic is read as the left one only


@pytest.mark.parametrize("rules,ns,match", [
    ([f"{FRONT}:=/nowhere/cam"], None, "has no topic '/nowhere/cam'"),              # source not in the bag
    (["/fisheye/front/img:=/vehicle1/cam0/compressed"], None, "'/fisheye/front/img' is not a topic the runtime reads"),
    ([f"{FRONT}:=/vehicle1/cam0", f"{T.fisheye_image_topic('rear')}:=/vehicle1/cam0"], None,
     "'/vehicle1/cam0' is already read as '/fisheye/front/image_raw'"),             # two remaps to one topic
    ([f"{FRONT}:=/a", f"{FRONT}:=/b"], None, "'/fisheye/front/image_raw' is already remapped to '/a'"),
    (["/odom"], None, "expected FROM:=TO"),
    (["/odom:=bad name"], None, "'/bad name' is not a valid ROS topic name"),
    ([], "/vehicle3", "has no topic under it (its namespaces: /vehicle1, /vehicle2)"),
    ([], "vehicle 1", "not a ROS namespace"),
])
def test_bad_remaps_are_one_clear_error(small: tuple[Path, Path], rules: list[str], ns: str | None,
                                        match: str) -> None:
    with pytest.raises(RemapError, match=match.replace("(", r"\(").replace(")", r"\)")):
        open_bag(small[1], TopicRemap.parse(rules, ns))


@pytest.mark.parametrize("command", [["run", "--no-llm"], ["bench", "--no-peak"]])
def test_edge_run_and_bench_refuse_a_bad_remap_before_loading_anything(small: tuple[Path, Path], command: list[str],
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli import main

    rc = main([command[0], str(small[1]), "--namespace", NS, "--remap", f"{FRONT}:=cam9", command[1]])
    err = capsys.readouterr().err
    assert rc != 0 and "--remap /fisheye/front/image_raw:=/vehicle1/cam9" in err and "has no topic" in err


@pytest.mark.usefixtures("one_thread")
def test_edge_run_with_the_prefix_gives_the_original_report(tmp_path: Path) -> None:
    """A generated drive recorded under /vehicle1 with its front fisheye renamed: `edge run --namespace --remap`
    writes the same frames (stamps, plans, occupancy, IoU, answers) as the original."""
    from edge.config import RuntimeConfig
    from edge.drives.generate import generate_drive
    from edge.runtime.cli import run_drive

    src = generate_drive(tmp_path / "drive", seed=5, duration=2.0, scenario="siren", progress=False).path
    ns = _rewrite(src, tmp_path / "ns", _vehicle1)
    cfg = RuntimeConfig(use_llm=False, policy="all", budget_ms=10_000.0, quality_per_ms=0.0)
    docs = []
    for bag, remap in ((src, None), (ns, TopicRemap.parse(RULES, NS))):
        run_drive(bag, cfg, tmp_path / f"rep-{bag.name}", progress=False, remap=remap)
        docs.append(json.loads((tmp_path / f"rep-{bag.name}" / "report.json").read_text()))
    keep = ("stamp_ns", "t", "plan", "modalities_used", "occupancy_near5m", "obstacle_iou_near5m", "audio", "answers",
            "source_stamps")
    frames = [[{k: f.get(k) for k in keep} for f in d["frames"]] for d in docs]
    assert len(frames[0]) == 20 and frames[0] == frames[1]
    assert docs[1]["meta"]["topic_names"] == {"namespace": NS, "remap": [f"{FRONT}:=/vehicle1/cam0"]}
    assert docs[0]["meta"]["topic_names"] is None and not docs[1]["degradations"]
