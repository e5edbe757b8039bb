"""Time-aligned multimodal samples from a drive: approximate-time matching on header stamps.

Policy (what message_filters' ApproximateTimeSynchronizer does, made explicit about missing data):
- One sample per message of the *reference* stream (default: the front fisheye camera; `reference="slowest"` picks
  the camera stream with the fewest messages). The sample's stamp is that message's header stamp.
- Every other camera contributes the image whose header stamp is nearest to the sample stamp, if it is within
  `slop_s`; an image is used by at most one sample (never reused), otherwise the camera is marked missing.
- Ultrasonic: per sensor the latest reading stamped in [t - slop, t] (else the earliest in (t, t + slop], for
  stamp jitter), reused by consecutive samples only within the slop (REP-117 status kept: no echo, NaN, out of
  range are reported, not dropped). Odometry and ground truth: the nearest message within the slop.
  QA pairs: every pair stamped within the slop, each attached to one sample only. Conditions (a state published
  on change / at ~1 Hz): the latest at or before t, if not older than `conditions_max_age_s`.
- Audio: the chunks covering [t - audio_window_s, t) are concatenated and cut to exactly window * rate samples;
  if any part of the window is not covered (gap, start of the drive) audio is missing, never zero-filled.
Messages are matched on header stamps, not bag times; a message may be logged up to `max_delay_s` after its stamp.

Cameras accept sensor_msgs/Image or CompressedImage (image_transport's `<base>/compressed`); if both are recorded
the raw form is used. A topic with an unexpected or unknown type is reported once in `diagnostics`, naming the
topic, and ignored; reading continues with the other topics.
"""

from __future__ import annotations

import bisect
import json
import logging
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from edge.drives import messages as M
from edge.drives import topics as T
from edge.drives.bag import Bag, BagMessage, open_bag
from edge.errors import EdgeError

log = logging.getLogger(__name__)


@dataclass
class SyncConfig:
    slop_s: float = 0.05                 # max |stamp difference| to the sample stamp
    reference: str = "fisheye/front"     # a camera key ("fisheye/<cam>", "front") or "slowest"
    max_delay_s: float = 0.5             # how late (bag time) a message may be logged after its header stamp
    audio_window_s: float = 0.96         # audio context before each sample (24 chunks of 40 ms)
    audio_sample_rate: int = 16000       # the rig's microphones.sample_rate_hz
    audio_gap_tolerance_s: float = 0.002  # stamp jitter tolerated between consecutive chunks
    decode_images: bool = True           # False: images stay as (msgtype, msg) for callers that decode later
    decode_workers: int = 2              # threads for JPEG decoding (cv2 releases the GIL)
    image_reduce: int = 1                # 2, 4, 8: decode images that much smaller (see messages.decode_image)
    ground_truth: bool = True
    conditions_max_age_s: float = 2.0    # conditions are a state published on change / at ~1 Hz, not per frame


@dataclass
class GroundTruth:
    bev: dict[str, Any] | None = None            # decode_occupancy_grid()
    objects: list[dict[str, Any]] | None = None  # decode_marker_array_boxes()
    audio_events: list[dict[str, Any]] | None = None
    qa: list[Any] = field(default_factory=list)  # QA JSON objects attached to this sample
    conditions: Any | None = None


@dataclass
class Sample:
    """One time-aligned set. None / absence from a dict value means *missing*; `missing` lists those keys."""

    stamp_ns: int
    fisheye: dict[str, np.ndarray | None]
    front: np.ndarray | None
    ultrasonic: dict[str, dict[str, Any] | None]
    audio: np.ndarray | None                     # (channels, window samples) int16
    odometry: dict[str, Any] | None
    ground_truth: GroundTruth | None
    source_stamps: dict[str, int]                # key ("fisheye/front", "ultrasonic/<name>", "audio", ...) -> stamp
    missing: list[str]

    def present(self, key: str) -> bool:
        return key in self.source_stamps


class SyncError(EdgeError):
    """The drive cannot be synchronised (e.g. no camera stream to take sample times from)."""


_ITEM = tuple[int, int, str, str, Any]  # (header stamp, seq, topic, msgtype, msg)


def _stamp(msg: Any, msgtype: str, bag_time: int) -> int:
    s = M.header_stamp_ns(msg)
    if s is not None:
        return s
    if msgtype == T.STRING:  # JSON with an explicit stamp (messages.string_json), else the bag time
        try:
            obj = json.loads(msg.data)
            if isinstance(obj, dict) and isinstance(obj.get("stamp_ns"), int):
                return obj["stamp_ns"]
        except (ValueError, TypeError):
            pass
    return bag_time


# Types whose CDR starts with a std_msgs/Header: their stamp is read from the bytes, the rest decoded only if used.
_HEADER_FIRST = {T.IMAGE, T.COMPRESSED_IMAGE, T.CAMERA_INFO, T.RANGE, T.ODOMETRY, T.OCCUPANCY_GRID}


def cdr_header_stamp(data: bytes | memoryview) -> int | None:
    """header.stamp of a header-first CDR message (4-byte encapsulation, then int32 sec, uint32 nanosec)."""
    if len(data) < 12 or data[1] not in (0, 1):
        return None
    sec, nanosec = struct.unpack_from("<iI" if data[1] == 1 else ">iI", data, 4)
    return sec * 1_000_000_000 + nanosec


def _msg(it: _ITEM) -> Any:
    """The message object of an item, deserialising CDR bytes kept raw until a sample needed them."""
    msg = it[4]
    return M.deserialize(msg, it[3]) if isinstance(msg, (bytes, bytearray, memoryview)) else msg


class _Stream:
    """Messages of one role, ordered by header stamp, pruned once no future sample can use them."""

    def __init__(self, key: str, reuse: bool) -> None:
        self.key, self.reuse = key, reuse
        self.items: list[_ITEM] = []

    def add(self, item: _ITEM) -> None:
        if self.items and item[0] < self.items[-1][0]:
            bisect.insort(self.items, item)
        else:
            self.items.append(item)

    def prune(self, before_ns: int) -> None:
        i = bisect.bisect_left(self.items, (before_ns,))
        if i:
            del self.items[:i]

    def nearest(self, t: int, slop: int) -> _ITEM | None:
        best: _ITEM | None = None
        for it in self.items:
            if it[0] > t + slop:
                break
            if it[0] >= t - slop and (best is None or abs(it[0] - t) < abs(best[0] - t)):
                best = it
        if best is not None and not self.reuse:
            self.items.remove(best)
        return best

    def take_all(self, t: int, slop: int) -> list[_ITEM]:
        """Every unconsumed message stamped within the slop of t, consumed (events such as QA pairs)."""
        out = [it for it in self.items if t - slop <= it[0] <= t + slop]
        for it in out:
            self.items.remove(it)
        return out

    def latest(self, t: int, slop: int, ahead: int | None = None) -> _ITEM | None:
        """Latest message stamped in [t - slop, t]; failing that the earliest in (t, t + ahead] (stamp jitter)."""
        before = after = None
        ahead = slop if ahead is None else ahead
        for it in self.items:
            if it[0] > t + ahead:
                break
            if it[0] > t:
                after = after or it
            elif it[0] >= t - slop:
                before = it
        return before or after


class SampleAssembler:
    """Turns a time-ordered message stream (bag or in-process replay) into `Sample`s; see the module docstring."""

    def __init__(self, topic_types: dict[str, str], config: SyncConfig | None = None,
                 counts: dict[str, int] | None = None, source: str = "drive") -> None:
        self.cfg = config or SyncConfig()
        self.source = source
        self.diagnostics: list[str] = []
        self._reported: set[str] = set()
        self.routes: dict[str, tuple[str, str]] = {}  # topic -> (stream key, kind)
        self._plan(topic_types, counts or {})
        self.streams: dict[str, _Stream] = {
            key: _Stream(key, reuse=kind not in ("image", "qa")) for key, kind in set(self.routes.values())
        }
        if self.reference_key not in self.streams:
            raise SyncError(f"{source}: reference stream '{self.reference_key}' is not in the drive")
        self.camera_keys = [k for k, kind in set(self.routes.values()) if kind == "image"]
        self.ultrasonic_names = sorted(k.split("/", 1)[1] for k, kind in set(self.routes.values()) if kind == "range")
        self._seq = 0

    # ------------------------------------------------------------------ topic plan
    def _diag(self, key: str, text: str) -> None:
        if key not in self._reported:
            self._reported.add(key)
            self.diagnostics.append(text)
            log.warning("%s", text)

    def _plan(self, topic_types: dict[str, str], counts: dict[str, int]) -> None:
        def accept(topic: str, key: str, kind: str, types: tuple[str, ...]) -> bool:
            msgtype = topic_types.get(topic)
            if msgtype is None:
                return False
            if msgtype not in types:
                self._diag(f"type:{topic}", f"{self.source}: topic '{topic}' has type {msgtype}, expected "
                                            f"{' or '.join(types)}; ignored ({key} will be missing)")
                return False
            self.routes[topic] = (key, kind)
            return True

        cams = {f"fisheye/{c}": T.fisheye_image_topic(c) for c in T.FISHEYE_CAMERAS}
        cams["front"] = T.FRONT_CAMERA_IMAGE
        cam_counts: dict[str, int] = {}
        for key, base in cams.items():
            # raw form preferred (lossless); the compressed form is used only when the raw one is absent
            if not accept(base, key, "image", (T.IMAGE,)):
                if accept(base + T.COMPRESSED_SUFFIX, key, "image", (T.COMPRESSED_IMAGE,)):
                    cam_counts[key] = counts.get(base + T.COMPRESSED_SUFFIX, 0)
            else:
                cam_counts[key] = counts.get(base, 0)
        for topic in topic_types:
            if topic.startswith("/ultrasonic/"):
                accept(topic, "ultrasonic/" + topic[len("/ultrasonic/"):], "range", (T.RANGE,))
        accept(T.AUDIO, "audio", "audio", (T.IMAGE,))
        accept(T.ODOM, "odometry", "odom", (T.ODOMETRY,))
        if self.cfg.ground_truth:
            accept(T.GT_BEV, "gt/bev", "grid", (T.OCCUPANCY_GRID,))
            accept(T.GT_OBJECTS, "gt/objects", "boxes", (T.MARKER_ARRAY,))
            accept(T.GT_AUDIO_EVENTS, "gt/audio_events", "events", (T.MARKER_ARRAY,))
            accept(T.GT_QA, "gt/qa", "qa", (T.STRING,))
            accept(T.GT_CONDITIONS, "gt/conditions", "state", (T.STRING,))
        ref = self.cfg.reference
        if ref == "slowest":
            if not cam_counts:
                raise SyncError(f"{self.source}: no camera stream to take sample times from")
            ref = min(sorted(cam_counts), key=lambda k: cam_counts[k])
        elif ref not in cam_counts:
            raise SyncError(f"{self.source}: reference camera '{ref}' has no usable topic "
                            f"(looked for {cams.get(ref, ref)} and its /compressed form)")
        self.reference_key = ref
        self.reference_topics = {t for t, (k, _) in self.routes.items() if k == ref}

    # ------------------------------------------------------------------ streaming
    def feed(self, messages: Iterable[BagMessage]) -> Iterator[tuple[int, dict[str, _ITEM | list[_ITEM] | None]]]:
        """Yield (stamp, selection) as soon as no later message can change a sample's selection."""
        slop = int(self.cfg.slop_s * 1e9)
        horizon = slop + int(self.cfg.max_delay_s * 1e9)
        refs: deque[_ITEM] = deque()
        for m in messages:
            route = self.routes.get(m.topic)
            if route is None:
                continue
            key, _kind = route
            self._seq += 1
            msg = m.msg
            if isinstance(msg, (bytes, bytearray, memoryview)):
                stamp = cdr_header_stamp(msg) if m.msgtype in _HEADER_FIRST else None
                if stamp is None or _kind == "audio":
                    try:
                        msg = M.deserialize(msg, m.msgtype)
                    except Exception as exc:
                        self._diag(f"cdr:{m.topic}:{m.stamp_ns}", f"{self.source}: topic '{m.topic}': message at "
                                                                  f"{m.stamp_ns} ns not deserialised ({exc}); skipped")
                        continue
            if _kind == "audio":  # decoded once here: every chunk serves ~window/chunk consecutive samples
                try:
                    pcm = M.decode_audio(msg)
                except Exception as exc:
                    self._diag(f"aud:{m.topic}:{m.stamp_ns}", f"{self.source}: topic '{m.topic}': audio chunk at "
                                                              f"{m.stamp_ns} ns not decoded ({exc}); skipped")
                    continue
                item = (M.header_stamp_ns(msg) or m.stamp_ns, self._seq, m.topic, m.msgtype, pcm)
            elif isinstance(msg, (bytes, bytearray, memoryview)):
                item = (stamp, self._seq, m.topic, m.msgtype, msg)
            else:
                item = (_stamp(msg, m.msgtype, m.stamp_ns), self._seq, m.topic, m.msgtype, msg)
            if m.topic in self.reference_topics:
                refs.append(item)
            else:
                self.streams[key].add(item)
            while refs and refs[0][0] + horizon < m.stamp_ns:
                yield self._select(refs.popleft())
        while refs:
            yield self._select(refs.popleft())

    def _select(self, ref: _ITEM) -> tuple[int, dict[str, Any]]:
        t = ref[0]
        slop = int(self.cfg.slop_s * 1e9)
        window = int(self.cfg.audio_window_s * 1e9)
        sel: dict[str, Any] = {self.reference_key: ref}
        for key, stream in self.streams.items():
            kind = next(k for kk, k in self.routes.values() if kk == key)
            if key == self.reference_key:
                continue
            if kind == "audio":
                sel[key] = [it for it in stream.items if it[0] < t] if stream.items else []
                stream.prune(t - window - int(1e9))  # keep a margin for chunks longer than a second
                continue
            if kind == "qa":
                sel[key] = stream.take_all(t, slop)
            elif kind == "state":  # conditions: the state in force at t, if refreshed within conditions_max_age_s
                age = int(self.cfg.conditions_max_age_s * 1e9)
                stream.prune(t - age)
                sel[key] = stream.latest(t, age, ahead=slop)
                continue
            else:
                sel[key] = stream.latest(t, slop) if kind == "range" else stream.nearest(t, slop)
            stream.prune(t - slop)
        return t, sel


class Synchronizer:
    """Iterate a bag as `Sample`s. `diagnostics` collects the bag's and the synchroniser's warnings."""

    def __init__(self, bag: str | Path | Bag, config: SyncConfig | None = None) -> None:
        self.cfg = config or SyncConfig()
        self.bag = bag if isinstance(bag, Bag) else open_bag(bag)
        types = {name: info.msgtype for name, info in self.bag.topics.items()}
        counts = {name: info.count or 0 for name, info in self.bag.topics.items()}
        self.assembler = SampleAssembler(types, self.cfg, counts, source=str(self.bag.path))
        self._own_diag: list[str] = []

    @property
    def diagnostics(self) -> list[str]:
        return self.bag.diagnostics + self.assembler.diagnostics + self._own_diag

    def __iter__(self) -> Iterator[Sample]:
        topics = list(self.assembler.routes)
        # Raw CDR: stamps come from the bytes and only messages a sample uses are deserialised.
        selections = self.assembler.feed(self.bag.messages(topics=topics, raw=True))
        yield from build_samples(selections, self.assembler, self.cfg, self._own_diag)


def build_samples(
    selections: Iterable[tuple[int, dict[str, Any]]], asm: SampleAssembler, cfg: SyncConfig, diag: list[str],
) -> Iterator[Sample]:
    """Decode selections into Samples; image decoding runs in a thread pool, several samples in flight."""
    pool = ThreadPoolExecutor(max(1, cfg.decode_workers)) if cfg.decode_images and cfg.decode_workers > 0 else None
    pending: deque[tuple[int, dict[str, Any], dict[str, Future[Any] | Any]]] = deque()
    reported: set[str] = set()
    depth = 2 * max(1, cfg.decode_workers) + 1  # samples in flight: reading overlaps decoding (cv2 drops the GIL)

    def note(key: str, text: str) -> None:
        if key not in reported:
            reported.add(key)
            diag.append(text)
            log.warning("%s", text)

    def decode_image(it: _ITEM) -> np.ndarray | None:
        try:
            return M.decode_image(_msg(it), it[3], reduce=cfg.image_reduce)
        except Exception as exc:
            note(f"img:{it[2]}:{it[0]}", f"topic '{it[2]}': image at {it[0]} ns not decoded ({exc}); missing")
            return None

    def start(t: int, sel: dict[str, Any]) -> None:
        imgs: dict[str, Any] = {}
        for key in asm.camera_keys:
            it = sel.get(key)
            if it is None:
                continue
            if not cfg.decode_images:
                imgs[key] = (it[3], _msg(it))
            elif pool is not None:
                imgs[key] = pool.submit(decode_image, it)
            else:
                imgs[key] = decode_image(it)
        pending.append((t, sel, imgs))

    def finish() -> Sample:
        t, sel, imgs = pending.popleft()
        return _make_sample(t, sel, {k: (v.result() if isinstance(v, Future) else v) for k, v in imgs.items()},
                            asm, cfg, note)

    try:
        for t, sel in selections:
            start(t, sel)
            if len(pending) > depth:
                yield finish()
        while pending:
            yield finish()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _make_sample(
    t: int, sel: dict[str, Any], imgs: dict[str, Any], asm: SampleAssembler, cfg: SyncConfig,
    note: Callable[[str, str], None],
) -> Sample:
    stamps: dict[str, int] = {}
    missing: list[str] = []

    def decoded(key: str, fn: Callable[[Any], Any], from_cdr: Callable[[Any], Any] | None = None) -> Any:
        it = sel.get(key)
        if it is None:
            if key in asm.streams:
                missing.append(key)
            return None
        try:
            raw = isinstance(it[4], (bytes, bytearray, memoryview))
            val = from_cdr(it[4]) if raw and from_cdr is not None else fn(_msg(it))
        except Exception as exc:
            note(f"dec:{it[2]}:{it[0]}", f"topic '{it[2]}': message at {it[0]} ns not decoded ({exc}); missing")
            missing.append(key)
            return None
        stamps[key] = it[0]
        return val

    fisheye: dict[str, np.ndarray | None] = {}
    front = None
    for cam in T.FISHEYE_CAMERAS:
        key = f"fisheye/{cam}"
        fisheye[cam] = imgs.get(key)
        if fisheye[cam] is None:
            missing.append(key)
        else:
            stamps[key] = sel[key][0]
    front = imgs.get("front")
    if front is None:
        missing.append("front")
    else:
        stamps["front"] = sel["front"][0]

    ultrasonic = {name: decoded(f"ultrasonic/{name}", M.decode_range, M.decode_range_cdr) for name in asm.ultrasonic_names}
    odom = decoded("odometry", M.decode_odometry)
    audio = _audio_window(t, sel.get("audio") or [], cfg, stamps, note) if "audio" in asm.streams else None
    if audio is None:
        missing.append("audio")

    gt = None
    if cfg.ground_truth and any(k.startswith("gt/") for k in asm.streams):
        qa_items = sel.get("gt/qa") or []
        gt = GroundTruth(
            bev=decoded("gt/bev", M.decode_occupancy_grid),
            objects=decoded("gt/objects", M.decode_marker_array_boxes),
            audio_events=decoded("gt/audio_events", M.decode_marker_array_events),
            conditions=decoded("gt/conditions", M.decode_json),
            qa=[M.decode_json(_msg(it)) for it in qa_items],
        )
        if qa_items:
            stamps["gt/qa"] = qa_items[0][0]
    return Sample(t, fisheye, front, ultrasonic, audio, odom, gt, stamps, missing)


def _audio_window(
    t: int, chunks: list[_ITEM], cfg: SyncConfig, stamps: dict[str, int], note: Callable[[str, str], None],
) -> np.ndarray | None:
    """Exactly window * rate samples ending at t, from contiguous chunks; None if any part is not covered."""
    rate = cfg.audio_sample_rate
    n_win = int(round(cfg.audio_window_s * rate))
    start = t - int(round(n_win * 1e9 / rate))
    tol = int(cfg.audio_gap_tolerance_s * 1e9)
    parts: list[np.ndarray] = []
    first_stamp = None
    cursor = None  # end time of what has been collected
    for it in chunks:  # already in stamp order, PCM decoded by the assembler
        pcm = it[4]
        end = it[0] + int(round(pcm.shape[1] * 1e9 / rate))
        if end <= start:
            continue
        if cursor is None:
            if it[0] > start + tol:
                return None  # the window starts before the first chunk we have: not covered
            first_stamp = it[0]
        elif abs(it[0] - cursor) > tol:
            if it[0] < cursor:  # overlapping duplicate: skip what is already covered
                continue
            return None  # gap
        parts.append(pcm)
        cursor = end
        if cursor >= t - tol:
            break
    if cursor is None or cursor < t - tol or first_stamp is None:
        return None
    pcm = np.concatenate(parts, axis=1)
    offset = int(round((start - first_stamp) * rate / 1e9))
    offset = max(0, offset)
    if pcm.shape[1] - offset < n_win:
        if pcm.shape[1] - offset < n_win - int(tol * rate / 1e9) - 1:
            return None
        offset = pcm.shape[1] - n_win
        if offset < 0:
            return None
    stamps["audio"] = first_stamp
    return np.ascontiguousarray(pcm[:, offset: offset + n_win])


def synchronized_samples(bag: str | Path | Bag, config: SyncConfig | None = None) -> Iterator[Sample]:
    """Convenience: iterate `Sample`s of a bag (see `Synchronizer` for diagnostics)."""
    yield from Synchronizer(bag, config)
