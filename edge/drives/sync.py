"""Time-aligned multimodal frames (edge.frames.Frame) from a drive: a frame clock no single sensor owns, matching on header stamps.

Policy:
- Frames come from a clock at `rate_hz` (default: the reference camera's rate, measured from its first stamps;
  10 Hz until it can be measured). The clock is phase-locked to the *reference* camera (default the front fisheye;
  `reference="slowest"` picks the camera stream with the fewest messages): a tick takes the stamp of the reference
  image within half a period of it, else it keeps its own. So a gap, duplicates, reordering or backwards stamps in
  the reference, or in any other sensor, never drops or multiplies the others' frames, and frame stamps strictly
  increase. The clock starts at the reference's first image, or at the first data when the reference starts more
  than `start_grace_s` later (a gap in it). A tick where no sensor has data yields no sample.
- Every camera contributes the image whose header stamp is nearest to the sample stamp, if it is within `slop_s`;
  an image is used by at most one sample (never reused), otherwise the camera is marked missing.
- Ultrasonic: per sensor the latest reading stamped in [t - slop, t] (else the earliest in (t, t + slop], for
  stamp jitter), reused by consecutive samples only within the slop (REP-117 status kept: no echo, NaN, out of
  range are reported, not dropped). Odometry and ground truth: the nearest message within the slop.
  QA pairs: every pair stamped within the slop, each attached to one sample only. Conditions (a state published
  on change / at ~1 Hz): the latest at or before t, if not older than `conditions_max_age_s`.
- Audio: the chunks covering [t - audio_window_s, t) are concatenated and cut to exactly window * rate samples;
  if any part of the window is not covered (gap, start of the drive, chunks of another channel count than the
  stream's) audio is missing, never zero-filled.
- A stream's format is that of its first message, and a change is named once per topic with its span. Images of
  another resolution with the same aspect ratio (binning: the same field of view) or another encoding (bgr8 ->
  mono8, 16 bit) are still used, as the encoders convert them (kind `converted`); images of another aspect ratio
  (a crop, another camera: the calibration no longer holds), Range / Odometry messages of another CDR size than
  the topic's first (another distribution's layout, another frame_id) and audio chunks of another channel count
  are skipped (kind `format`), the stream missing until its data has its first format again.
- Per topic, a message with the stamp of one already received is a duplicate: dropped and counted. Messages out of
  stamp order are reordered within `max_delay_s` (how late, in bag time, a message may be logged after its stamp);
  one stamped before frames already produced (stamps went backwards, or logged too late) is dropped and counted.
  When *every* sensor message for `restart_after_s` of their own stamps is such a one, from at least half the sensor
  topics that had data, the reference camera's among them (not one sensor group's late batch), the source itself
  went back in time (a replay started again from the start or looping, a simulator reset, a recorder restarted):
  the old time's last frames are finished and the clock restarts at the new time with those messages (kind
  `restarted`, counted), instead of dropping everything until the old time comes back.
  Each kind of degradation is reported once per topic in `diagnostics` and recorded with its count and time span
  in `degradations` (for the run's report), as are spans where a sensor that had data went missing.

The topic plan comes from the modality plugins (edge.modalities): each plugin's sensors (its recorded sensors, found
from the topic names, or its default ones), its data topics (those of its topics whose type its decoder takes, in
its order of preference), its sync kind (`nearest`: cameras above; `latest`: range sensors; `window`: audio) and
its decoder (`ModalityPlugin.decoder`, edge/drives/decoders.py for the built-ins), which makes each message its
frame entry. A plugin whose decoder cannot be imported is named once in `diagnostics`; its data is missing.

Cameras accept sensor_msgs/Image or CompressedImage (image_transport's `<base>/compressed`); if both are recorded
the raw form is used. A topic with an unexpected or unknown type is reported once in `diagnostics`, naming the
topic, and ignored; reading continues with the other topics. Messages are decoded by the bag's own definitions
(`Bag.typestore`: e.g. a Humble Range without `variance`). An exception while decoding one message, whatever it
is, loses that message only: it is counted as `undecodable` on its topic (one diagnostic naming the first stamp
and the exception) and the frame goes on with the other sensors.
"""

from __future__ import annotations

import bisect
import json
import logging
import struct
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from rosbags.typesys.store import Typestore

from edge.drives import messages as M
from edge.drives import topics as T
from edge.drives.bag import Bag, BagMessage, open_bag
from edge.errors import EdgeError
from edge.frames import Frame, GroundTruth
from edge.modalities import ModalityPlugin, SyncKind
from edge.modalities.interface import MessageDecoder, lookup
from edge.modalities.registry import registry

log = logging.getLogger(__name__)

DEFAULT_RATE_HZ = 10.0  # the frame clock's rate until the reference camera's can be measured


@dataclass
class SyncConfig:
    slop_s: float = 0.05                 # max |stamp difference| to the sample stamp
    reference: str = "fisheye/front"     # camera the clock is phase-locked to ("fisheye/<cam>", "front", "slowest")
    rate_hz: float | None = None         # frame clock; None: the reference camera's rate measured from its stamps
    start_grace_s: float = 1.0           # the clock waits this long after the first data for the reference camera
    max_delay_s: float = 0.5             # how late (bag time) a message may be logged after its header stamp
    audio_window_s: float = 0.96         # audio context before each sample (24 chunks of 40 ms)
    audio_sample_rate: int = 16000       # the rig's microphones.sample_rate_hz
    audio_channels: int | None = None    # microphones; None: the first chunk's channel count
    audio_gap_tolerance_s: float = 0.002  # stamp jitter tolerated between consecutive chunks
    decode_images: bool = True           # False: images stay as (msgtype, msg) for callers that decode later
    decode_workers: int = 2              # threads for JPEG decoding (cv2 releases the GIL)
    image_reduce: int = 1                # 2, 4, 8: decode images that much smaller (see messages.decode_image)
    ground_truth: bool = True
    conditions_max_age_s: float = 2.0    # conditions are a state published on change / at ~1 Hz, not per frame
    restart_after_s: float = 1.0         # every sensor message this long (their stamps) before frames produced: the
                                         # source went back in time, the clock restarts there (module docstring)


class SyncError(EdgeError):
    """The drive cannot be synchronised (e.g. the configured reference camera is not in it)."""


@dataclass
class Degradation:
    """One kind of bad data on one topic / stream: how many messages or frames, over which header-stamp span."""

    kind: str      # duplicate, late, reordered, undecodable, format, converted, missing
    source: str    # topic, or stream key for missing spans
    count: int
    first_ns: int
    last_ns: int
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "count": self.count, "first_ns": self.first_ns,
                "last_ns": self.last_ns, "detail": self.detail}


class DegradationLog:
    """Counts bad data by (kind, source); the first occurrence of each becomes one diagnostic line, not thousands."""

    MAX_SPANS = 50

    def __init__(self, source: str) -> None:
        self.source = source
        self.diagnostics: list[str] = []
        self.records: dict[tuple[str, str], Degradation] = {}
        self.spans: list[Degradation] = []  # closed missing spans, one record each
        self._lock = threading.Lock()  # images are decoded (and their failures noted) in worker threads

    def note(self, kind: str, source: str, stamp_ns: int, detail: str) -> None:
        with self._lock:
            rec = self.records.get((kind, source))
            if rec is None:
                self.records[(kind, source)] = Degradation(kind, source, 1, stamp_ns, stamp_ns, detail)
                text = f"{self.source}: '{source}': {detail} (first at {stamp_ns} ns; further ones are counted)"
                self.diagnostics.append(text)
                log.warning("%s", text)
            else:
                rec.count += 1
                rec.first_ns, rec.last_ns = min(rec.first_ns, stamp_ns), max(rec.last_ns, stamp_ns)

    def span(self, source: str, first_ns: int, last_ns: int, frames: int, detail: str) -> None:
        """A span of frames without `source`; past MAX_SPANS per source they are only summed (a flickering
        stream would otherwise list thousands)."""
        if sum(x.source == source for x in self.spans) < self.MAX_SPANS:
            self.spans.append(Degradation("missing", source, frames, first_ns, last_ns, detail))
            return
        rec = self.records.get(("missing", source))
        if rec is None:
            self.records[("missing", source)] = Degradation(
                "missing", source, frames, first_ns, last_ns, f"further spans without data after the first "
                                                              f"{self.MAX_SPANS}: frames summed")
        else:
            rec.count, rec.last_ns = rec.count + frames, last_ns

    def all(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in [*self.records.values(), *self.spans]]


_ITEM = tuple[int, int, str, str, Any]  # (header stamp, seq, topic, msgtype, msg)
_SENSOR_KINDS = (*SyncKind, "odom")  # the plugins' streams and odometry; ground truth is not sensor data


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


class _Stream:
    """Messages of one role, ordered by header stamp, pruned once no future sample can use them."""

    def __init__(self, key: str, kind: str, reuse: bool) -> None:
        self.key, self.kind, self.reuse = key, kind, reuse
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

    def first_from(self, t: int) -> int | None:
        """Stamp of the first message stamped at or after t."""
        i = bisect.bisect_left(self.items, (t,))
        return self.items[i][0] if i < len(self.items) else None

    def nearest(self, t: int, slop: int, after: int | None = None, consume: bool = True) -> _ITEM | None:
        """The message stamped nearest t within the slop (and after `after`); consumed unless the stream reuses."""
        best: _ITEM | None = None
        for it in self.items:
            if it[0] > t + slop:
                break
            if it[0] < t - slop or (after is not None and it[0] <= after):
                continue
            if best is None or abs(it[0] - t) < abs(best[0] - t):
                best = it
        if best is not None and consume and not self.reuse:
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


@dataclass
class _Modality:
    """One plugin as the synchroniser plans it on a drive: its decoder and its streams (sensor, stream key)."""

    plugin: ModalityPlugin
    decoder: MessageDecoder | None  # None: not importable (named in diagnostics); its data is missing
    streams: list[tuple[str | None, str]]


def load_decoder(plugin: ModalityPlugin) -> MessageDecoder:
    """The plugin's MessageDecoder, imported from its dotted path; EdgeError naming the plugin if unusable."""
    try:
        obj = lookup(plugin.decoder)
    except Exception as exc:  # a third-party import: any error is that plugin's, the others go on
        raise EdgeError(f"modality '{plugin.name}': decoder {plugin.decoder} failed to import "
                        f"({_why(exc)})") from None
    if not isinstance(obj, MessageDecoder):
        raise EdgeError(f"modality '{plugin.name}': decoder {plugin.decoder} is a {type(obj).__name__}, not an "
                        "edge.modalities.MessageDecoder")
    return obj


class SampleAssembler:
    """Turns a time-ordered message stream (bag or in-process replay) into `Frame`s; see the module docstring.

    `typestore` decodes CDR messages (a bag's own definitions, `Bag.typestore`); default ROS 2 Jazzy. `plugins`:
    the modalities to read (default: the installed ones, `edge.modalities.registry.registry()`).
    """

    def __init__(self, topic_types: dict[str, str], config: SyncConfig | None = None,
                 counts: dict[str, int] | None = None, source: str = "drive",
                 typestore: Typestore | None = None, plugins: Iterable[ModalityPlugin] | None = None) -> None:
        self.cfg = config or SyncConfig()
        self.source = source
        self.typestore = typestore or M.typestore()
        self.range_floats = M.range_cdr_floats(self.typestore)  # None: decode Range generically
        self.log = DegradationLog(source)
        self.routes: dict[str, tuple[str, str]] = {}  # topic -> (stream key, kind)
        self.modalities: list[_Modality] = []
        self.decoders: dict[str, MessageDecoder] = {}  # stream key -> its plugin's decoder
        self._plan(topic_types, counts or {}, registry() if plugins is None else plugins)
        self.streams: dict[str, _Stream] = {
            key: _Stream(key, kind, reuse=kind not in (SyncKind.NEAREST, "qa"))
            for key, kind in set(self.routes.values())
        }
        self.topic_of = {key: topic for topic, (key, _) in self.routes.items()}
        self.nearest_keys = [k for k, kind in set(self.routes.values()) if kind == SyncKind.NEAREST]
        self._sensor_streams = [s for s in self.streams.values() if s.kind in _SENSOR_KINDS]
        self._seq = 0
        self._seen: dict[str, set[int]] = {}      # topic -> stamps received (duplicates), pruned as frames pass
        self._newest: dict[str, int] = {}         # topic -> newest stamp received (reordering)
        # consecutive sensor messages stamped before frames produced: (item, stream key, kind, note if dropped),
        # their lowest and highest stamps, and whether they span restart_after_s (the clock restarts with them)
        self._behind: list[tuple[_ITEM, str, str, str]] = []
        self._behind_span: tuple[int, int] | None = None
        self._behind_topics: set[str] = set()
        self._restart_due = False
        self._ref_stamps: list[int] = []          # first reference stamps, for the clock rate
        self._period: int | None = None if self.cfg.rate_hz is None else int(round(1e9 / self.cfg.rate_hz))
        self._next: int | None = None             # nominal stamp of the next tick
        self.last_stamp: int | None = None        # stamp of the last frame produced
        self._rows: dict[str, int] = {}           # window stream key -> rows (audio channels) of its first message
        self._sizes: dict[str, int] = {}          # topic -> CDR size of its first message (fixed-size kinds)
        self.formats: dict[str, Any] = {}         # stream key -> its first message's format (decoders' checks)

    @property
    def diagnostics(self) -> list[str]:
        return self.log.diagnostics

    def deserialize(self, data: bytes | bytearray | memoryview, msgtype: str) -> Any:
        return self.typestore.deserialize_cdr(data, msgtype)

    def message(self, payload: Any, msgtype: str) -> Any:
        """The message object of a payload, deserialising CDR bytes kept raw until a frame needed them."""
        return self.deserialize(payload, msgtype) if isinstance(payload, (bytes, bytearray, memoryview)) else payload

    def msg(self, it: _ITEM) -> Any:
        """The message object of an item."""
        return self.message(it[4], it[3])

    def decode(self, key: str, it: _ITEM) -> Any:
        """The value of an item of stream `key`, by its plugin's decoder (exceptions are the caller's)."""
        return self.decoders[key].decode(it[4], it[3], self)

    # ------------------------------------------------------------------ topic plan
    def _diag(self, text: str) -> None:
        if text not in self.log.diagnostics:
            self.log.diagnostics.append(text)
            log.warning("%s", text)

    def _plan(self, topic_types: dict[str, str], counts: dict[str, int], plugins: Iterable[ModalityPlugin]) -> None:
        def accept(topic: str, key: str, kind: str, types: Sequence[str]) -> bool:
            msgtype = topic_types.get(topic)
            if msgtype is None:
                return False
            if msgtype not in types:
                self._diag(f"{self.source}: topic '{topic}' has type {msgtype}, expected "
                                            f"{' or '.join(types)}; ignored ({key} will be missing)")
                return False
            self.routes[topic] = (key, kind)
            return True

        names = tuple(topic_types)
        cams: dict[str, str] = {}  # nearest stream key -> its preferred topic (the clock's reference candidates)
        cam_counts: dict[str, int] = {}
        for p in plugins:
            streams: list[tuple[str | None, str]] = []
            topics: dict[str, tuple[T.TopicSpec, ...]] = {}
            dec: MessageDecoder | None = None
            try:
                sensors = p.default_sensors if p.recorded_sensors is None else tuple(sorted(p.recorded_sensors(names)))
                streams = [(s, p.key(s)) for s in sensors] if p.per_sensor else [(None, p.name)]
                topics = {key: p.topics(() if sensor is None else (sensor,)) for sensor, key in streams}
                dec = load_decoder(p)
            except EdgeError as exc:
                self._diag(f"{self.source}: {exc}; its data will be missing")
            except Exception as exc:  # the plugin's own sensors / topics code: name it, read the others
                self._diag(f"{self.source}: modality '{p.name}': its sensors or topics raised ({_why(exc)}); its "
                           "data will be missing")
                streams = []
            self.modalities.append(_Modality(p, dec, streams))
            if dec is None:
                continue
            for sensor, key in streams:
                self.decoders[key] = dec
                # its data topics in order of preference: a camera's raw form (lossless) before /compressed
                specs = dec.data_topics(topics[key])
                if p.sync == SyncKind.NEAREST and specs:
                    cams[key] = specs[0].name
                for spec in specs:
                    if accept(spec.name, key, p.sync, spec.types):
                        if p.sync == SyncKind.NEAREST:
                            cam_counts[key] = counts.get(spec.name, 0)
                        break
        accept(T.ODOM, "odometry", "odom", (T.ODOMETRY,))
        if self.cfg.ground_truth:
            accept(T.GT_BEV, "gt/bev", "grid", (T.OCCUPANCY_GRID,))
            accept(T.GT_OBJECTS, "gt/objects", "boxes", (T.MARKER_ARRAY,))
            accept(T.GT_AUDIO_EVENTS, "gt/audio_events", "events", (T.MARKER_ARRAY,))
            accept(T.GT_QA, "gt/qa", "qa", (T.STRING,))
            accept(T.GT_CONDITIONS, "gt/conditions", "state", (T.STRING,))
        ref = self.cfg.reference
        if ref == "slowest":
            ref = min(sorted(cam_counts), key=lambda k: cam_counts[k]) if cam_counts else ""
        elif ref != SyncConfig.reference and ref not in cam_counts:
            raise SyncError(f"{self.source}: reference camera '{ref}' has no usable topic "
                            f"(looked for {cams.get(ref, ref)} and its /compressed form)")
        elif ref not in cam_counts:  # the default reference is absent: lock to the first camera there is, if any
            ref = next(iter(sorted(cam_counts)), "")
        self.reference_key = ref  # "" : a free-running clock (no camera in the drive)

    # ------------------------------------------------------------------ streaming
    def horizon_s(self) -> float:
        """How far behind the newest stamp a tick waits before no message can still change its selection."""
        return self.cfg.slop_s + self.cfg.max_delay_s

    def idle_after_s(self) -> float:
        """Wall seconds of silence after which a live source tells `feed` nothing more is coming (None): twice the
        horizon, and at least 0.5 s, so that a loaded machine's pause in delivery does not cut frames short of a
        sensor whose message was merely late."""
        return max(0.5, 2.0 * self.horizon_s())

    def feed(self, messages: Iterable[BagMessage | None]
             ) -> Iterator[tuple[int, dict[str, _ITEM | list[_ITEM] | None]]]:
        """Yield (stamp, selection) per clock tick as soon as no later message can change its selection.

        A live source yields None when it has been silent for `idle_after_s`: the ticks up to the last stamp then
        come out at once. Why: they waited for a later message, and when every sensor stops (the end of a replay, a
        driver stack going down) none comes; the node soak lost the last frames of its run that way."""
        horizon = int(self.horizon_s() * 1e9)
        watermark: int | None = None
        for m in messages:
            if m is None:
                if watermark is not None:
                    yield from self._ticks(watermark, final=True)
                continue
            route = self.routes.get(m.topic)
            if route is None:
                continue
            watermark = m.stamp_ns if watermark is None else max(watermark, m.stamp_ns)
            try:
                item = self._item(m, route[1])
            except Exception as exc:  # a decoder's bug or a message it cannot take: that message only is lost
                self.log.note("undecodable", m.topic, m.stamp_ns, f"message not decoded ({_why(exc)}); skipped")
                item = None
            if item is not None:
                self._admit(item, *route)
            if self._restart_due:  # the source went back in time: the old time's frames first, then the new time
                yield from self._ticks(watermark, final=True)
                watermark = self._restart()
            yield from self._ticks(watermark - horizon)
        self._drop_behind()
        if watermark is not None:  # the recording ends at its last bag time: the clock ticks up to there
            yield from self._ticks(watermark, final=True)

    def _item(self, m: BagMessage, kind: str) -> _ITEM | None:
        self._seq += 1
        msg = m.msg
        stamp = None
        if isinstance(msg, (bytes, bytearray, memoryview)):
            stamp = cdr_header_stamp(msg) if m.msgtype in _HEADER_FIRST else None
            dec = self.decoders.get(self.routes[m.topic][0])
            if kind == "odom" or dec is not None and dec.fixed_size:
                first = self._sizes.setdefault(m.topic, len(msg))
                if len(msg) != first:
                    self.log.note("format", m.topic, stamp or m.stamp_ns,
                                  f"{m.msgtype} of {len(msg)} bytes, the stream's {first}: its layout changed (another "
                                  f"ROS distribution's definition, or another frame_id); skipped until messages have "
                                  f"the stream's layout again")
                    return None
            if stamp is None or kind == SyncKind.WINDOW:
                try:
                    msg = self.deserialize(msg, m.msgtype)
                except Exception as exc:
                    self.log.note("undecodable", m.topic, m.stamp_ns, f"message not deserialised as {m.msgtype} "
                                                                      f"({exc}); skipped")
                    return None
        if kind == SyncKind.WINDOW:  # decoded once here: every chunk serves ~window/chunk consecutive frames
            key = self.routes[m.topic][0]
            try:
                pcm = self.decode(key, (0, 0, m.topic, m.msgtype, msg))
            except M.MessageError as exc:  # an encoding or layout the reader does not take
                self.log.note("format", m.topic, m.stamp_ns, f"{key} chunk not decoded ({exc}); skipped, {key} "
                                                             "missing until chunks decode again")
                return None
            expected = self._rows.setdefault(key, self.cfg.audio_channels or pcm.shape[0])
            if pcm.shape[0] != expected:
                self.log.note("format", m.topic, m.stamp_ns, f"{key} chunk has {pcm.shape[0]} channels, the stream "
                                                             f"{expected}; skipped, {key} missing until it has "
                                                             f"{expected} again")
                return None
            return (M.header_stamp_ns(msg) or m.stamp_ns, self._seq, m.topic, m.msgtype, pcm)
        if isinstance(msg, (bytes, bytearray, memoryview)):
            assert stamp is not None
            return (stamp, self._seq, m.topic, m.msgtype, msg)
        return (_stamp(msg, m.msgtype, m.stamp_ns), self._seq, m.topic, m.msgtype, msg)

    def _admit(self, item: _ITEM, key: str, kind: str) -> None:
        """Drop duplicates and messages too late for any future frame; count reordering; buffer the rest."""
        t, topic = item[0], item[2]
        if kind not in _SENSOR_KINDS:  # ground truth: events may share a stamp (several QA pairs at one instant)
            self.streams[key].add(item)
            return
        seen = self._seen.setdefault(topic, set())
        if self.last_stamp is not None and t < self._usable_from(kind):  # dropped, unless the source restarted
            self._behind.append((item, key, kind, "duplicate" if t in seen else "late"))
            self._check_restart(t)
            return
        self._drop_behind()
        if t in seen:
            self._note_dropped("duplicate", topic, t)
            return
        newest = self._newest.get(topic)
        if newest is not None and t < newest:
            self.log.note("reordered", topic, t, "message out of stamp order; reordered")
        self._newest[topic] = t if newest is None else max(newest, t)
        seen.add(t)
        if key == self.reference_key and self.cfg.rate_hz is None and len(self._ref_stamps) < 16:
            bisect.insort(self._ref_stamps, t)
        self.streams[key].add(item)

    def _drop_behind(self) -> None:
        """Sensor data on the clock's time again (or the end): the messages stamped before it are dropped, counted."""
        for item, _, _, why in self._behind:
            self._note_dropped(why, item[2], item[0])
        self._behind.clear()
        self._behind_span = None
        self._behind_topics.clear()

    def _note_dropped(self, why: str, topic: str, t: int) -> None:
        """A sensor message dropped as a `duplicate` or as `late`, noted with the reason a user reads."""
        if why == "duplicate":
            self.log.note("duplicate", topic, t, "message with the stamp of one already received; dropped")
        else:
            self.log.note("late", topic, t, "message stamped before frames already produced (stamps went backwards, "
                                            f"or logged more than max_delay_s={self.cfg.max_delay_s} s late); dropped")

    def _check_restart(self, t: int) -> None:
        """Every sensor message for restart_after_s of stamps was behind the clock: the clock is to restart."""
        lo, hi = (t, t) if self._behind_span is None else self._behind_span
        lo, hi = self._behind_span = min(lo, t), max(hi, t)
        self._behind_topics.add(self._behind[-1][0][2])
        ref = self.topic_of.get(self.reference_key)  # a whole source going back includes the clock's camera
        whole = 2 * len(self._behind_topics) >= len(self._newest) and (
            ref not in self._newest or ref in self._behind_topics)
        if hi - lo >= self.cfg.restart_after_s * 1e9 and whole:
            self._restart_due = True
        elif len(self._behind) > 10_000:  # stamps crawling back within a sub-second span: not a restart
            self._drop_behind()

    def _restart(self) -> int:
        """Start the clock again at the time the sensors went back to, with their messages; the new watermark."""
        assert self.last_stamp is not None and self._behind_span is not None
        lo, hi = self._behind_span
        behind, back = self._behind, self.last_stamp - lo
        self.log.note("restarted", "sensor stamps", lo,
                      f"every sensor message for {(hi - lo) / 1e9:.1f} s was stamped up to "
                      f"{back / 1e9:.1f} s before frames already produced (a publisher restarted from an earlier "
                      "time: a replay started again or looping, a simulator reset); the frame clock restarts there")
        self._behind, self._behind_span, self._restart_due = [], None, False
        self._behind_topics = set()
        self._seen.clear()
        self._newest.clear()
        for s in self.streams.values():  # what the old time's last frames left
            s.items.clear()
        self._next = self.last_stamp = None
        for item, key, kind, _ in behind:
            self._admit(item, key, kind)
        return hi

    def _usable_from(self, kind: str) -> int:
        assert self.last_stamp is not None
        slop = int(self.cfg.slop_s * 1e9)
        if kind == SyncKind.WINDOW:
            return self.last_stamp - int(self.cfg.audio_window_s * 1e9) - slop - int(1e9)
        return self.last_stamp - slop

    def period_ns(self) -> int:
        """The clock period: configured, else the median step of the reference camera's first stamps."""
        if self._period is not None:
            return self._period
        steps = [b - a for a, b in zip(self._ref_stamps, self._ref_stamps[1:]) if b > a]
        if len(self._ref_stamps) >= 16 and steps:
            self._period = int(np.median(steps))
            return self._period
        return int(np.median(steps)) if steps else int(round(1e9 / DEFAULT_RATE_HZ))

    def _earliest(self, since: int) -> int | None:
        firsts = [f for s in self._sensor_streams if (f := s.first_from(since)) is not None]
        return min(firsts, default=None)

    def _ticks(self, until: int, final: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
        """Run the clock up to `until`: the stamp up to which all data has arrived, or (final) the end of the data."""
        slop = int(self.cfg.slop_s * 1e9)
        while True:
            period = self.period_ns()
            half = period // 2
            if self._next is None:
                first = self._earliest(-(2**62))
                ref = self.streams.get(self.reference_key)
                grace = int(self.cfg.start_grace_s * 1e9)
                if first is None or (not final and until < first + (half if ref is not None and ref.items else grace)):
                    return
                anchor = ref.items[0][0] if ref is not None and ref.items else first
                # Sensors starting up to start_grace_s before the reference make no frames of their own; a reference
                # that starts later than that is a gap in it: the clock starts with the data, in its phase.
                lead = anchor - first if anchor - first > grace else 0
                self._next = anchor - period * -(-lead // period)
            n = self._next
            if until < (n if final else n + half):
                return
            ahead = self._earliest(n - slop)
            if ahead is None:
                if final:
                    return
                if until - half - n >= period:  # nothing buffered: skip the empty ticks at once
                    self._next = n + period * ((until - half - n) // period)
                    continue
            elif ahead > n + period + slop:  # a gap in every sensor: skip to the tick before the next data
                self._next = n + period * ((ahead - slop - n) // period)
                continue
            t = n
            ref = self.streams.get(self.reference_key)
            if ref is not None:
                it = ref.nearest(n, half, after=self.last_stamp, consume=False)  # selected below with the rest
                if it is not None:
                    t = it[0]
            self._next = t + period  # ticks are at least half a period apart: time never goes backwards
            sel = self._select(t)
            self.last_stamp = t
            self._prune_seen(t - slop)
            if any(sel.get(s.key) for s in self._sensor_streams):
                yield t, sel

    def _prune_seen(self, before: int) -> None:
        for topic, seen in self._seen.items():
            if len(seen) > 256:
                self._seen[topic] = {x for x in seen if x >= before - int(2e9)}

    def _select(self, t: int) -> dict[str, Any]:
        slop = int(self.cfg.slop_s * 1e9)
        window = int(self.cfg.audio_window_s * 1e9)
        sel: dict[str, Any] = {}
        for key, stream in self.streams.items():
            kind = stream.kind
            if kind == SyncKind.WINDOW:
                sel[key] = [it for it in stream.items if it[0] < t]
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
                sel[key] = stream.latest(t, slop) if kind == SyncKind.LATEST else stream.nearest(t, slop)
            stream.prune(t - slop)
        return sel


class Synchronizer:
    """Iterate a bag as `Frame`s. `diagnostics` collects the bag's and the synchroniser's warnings once each;
    `degradations` lists every kind of bad data with its count and span (for the run's report)."""

    def __init__(self, bag: str | Path | Bag, config: SyncConfig | None = None,
                 plugins: Iterable[ModalityPlugin] | None = None) -> None:
        self.cfg = config or SyncConfig()
        self.bag = bag if isinstance(bag, Bag) else open_bag(bag)
        types = {name: info.msgtype for name, info in self.bag.topics.items()}
        counts = {name: info.count or 0 for name, info in self.bag.topics.items()}
        self.assembler = SampleAssembler(types, self.cfg, counts, source=str(self.bag.path),
                                         typestore=self.bag.typestore, plugins=plugins)
        self._own_diag: list[str] = []
        self.frames = 0

    @property
    def diagnostics(self) -> list[str]:
        return self.bag.diagnostics + self.assembler.diagnostics + self._own_diag

    @property
    def degradations(self) -> list[dict[str, Any]]:
        """Damaged bag spans, undecodable messages, dropped / duplicate / reordered messages and missing spans."""
        out = [{"kind": "damaged", "source": str(self.bag.path), "count": 1, "first_ns": a, "last_ns": b,
                "detail": "data lost to damage in the storage file" + (f" ({', '.join(t)})" if t else "")}
               for a, b, t in self.bag.damaged]
        out += [{"kind": "undecodable", "source": t, "count": n, "first_ns": None, "last_ns": None,
                 "detail": "messages not decodable by the bag's definition; skipped"}
                for t, n in self.bag.undecoded.items()]
        return out + self.assembler.log.all()

    def decode_deferred(self, frame: Frame) -> None:
        """Decode, in place, the (msgtype, msg) pairs that SyncConfig(decode_images=False) left in the `nearest`
        modalities' entries, by their plugins' decoders (and format checks); one that fails is missing, counted as
        undecodable on its topic like any other."""
        asm = self.assembler
        for mod in asm.modalities:
            entry = frame.data.get(mod.plugin.name)
            if mod.plugin.sync != SyncKind.NEAREST or mod.decoder is None or not isinstance(entry, dict):
                continue
            for sensor, key in mod.streams:
                item = entry.get(sensor)
                if item is None:
                    continue
                msgtype, msg = item
                it = (frame.source_stamps.get(key, frame.stamp_ns), 0, asm.topic_of.get(key, key), msgtype, msg)
                try:
                    value = mod.decoder.decode(msg, msgtype, asm)
                    entry[sensor] = value if mod.decoder.check is None else \
                        mod.decoder.check(value, key, it[2], it[0], asm)
                except Exception as exc:
                    asm.log.note("undecodable", it[2], it[0], f"{mod.decoder.noun} not decoded ({_why(exc)}); {key} "
                                                              "missing for that frame")
                    entry[sensor] = None

    def __iter__(self) -> Iterator[Frame]:
        topics = list(self.assembler.routes)
        self.assembler.typestore = self.bag.typestore  # a damaged MCAP's definitions are known once read
        # Raw CDR: stamps come from the bytes and only messages a sample uses are deserialised.
        selections = self.assembler.feed(self.bag.messages(topics=topics, raw=True))
        for s in build_samples(selections, self.assembler, self.cfg, self._own_diag):
            self.frames += 1
            yield s


def build_samples(
    selections: Iterable[tuple[int, dict[str, Any]]], asm: SampleAssembler, cfg: SyncConfig, diag: list[str],
) -> Iterator[Frame]:
    """Decode selections into Samples; image decoding runs in a thread pool, several samples in flight.

    Undecodable messages are reported once per topic (in asm.log); `diag` is kept for callers' own lines."""
    pool = ThreadPoolExecutor(max(1, cfg.decode_workers)) if cfg.decode_images and cfg.decode_workers > 0 else None
    pending: deque[tuple[int, dict[str, Any], dict[str, Future[Any] | Any]]] = deque()
    depth = 2 * max(1, cfg.decode_workers) + 1  # samples in flight: reading overlaps decoding (cv2 drops the GIL)
    gaps = _GapTracker(asm)

    def note(topic: str, stamp: int, text: str) -> None:
        asm.log.note("undecodable", topic, stamp, text)

    def decode(key: str, it: _ITEM) -> Any:
        try:
            return asm.decode(key, it)
        except Exception as exc:
            note(it[2], it[0], f"{asm.decoders[key].noun} not decoded ({_why(exc)}); {key} missing for that frame")
            return None

    def message(key: str, it: _ITEM) -> tuple[str, Any] | None:
        try:
            return it[3], asm.msg(it)
        except Exception as exc:
            note(it[2], it[0], f"message not deserialised ({_why(exc)}); {key} missing for that frame")
            return None

    def checked(key: str, it: _ITEM, value: Any) -> Any:  # in frame order: a stream's format is its first message's
        check = asm.decoders[key].check
        return value if value is None or check is None else check(value, key, it[2], it[0], asm)

    def start(t: int, sel: dict[str, Any]) -> None:
        values: dict[str, Any] = {}
        for key in asm.nearest_keys:
            it = sel.get(key)
            if it is None:
                continue
            if not cfg.decode_images:
                values[key] = message(key, it)
            elif pool is not None:
                values[key] = pool.submit(decode, key, it)
            else:
                values[key] = decode(key, it)
        pending.append((t, sel, values))

    def finish() -> Frame:
        t, sel, values = pending.popleft()
        done = {k: (v.result() if isinstance(v, Future) else v) for k, v in values.items()}
        if cfg.decode_images:
            done = {k: checked(k, sel[k], v) for k, v in done.items()}
        return _make_frame(t, sel, done, asm, cfg, note)

    def useful(sample: Frame) -> bool:  # a tick where no sensor had valid data is no frame
        if any(not k.startswith("gt/") for k in sample.source_stamps):
            gaps.update(sample)
            return True
        return False

    try:
        for t, sel in selections:
            start(t, sel)
            if len(pending) > depth and useful(sample := finish()):
                yield sample
        while pending:
            if useful(sample := finish()):
                yield sample
        gaps.close()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class _GapTracker:
    """Spans of frames in which a sensor stream that had delivered data was missing (recorded in asm.log)."""

    def __init__(self, asm: SampleAssembler) -> None:
        self.asm = asm
        self.keys = [s.key for s in asm._sensor_streams]
        self.seen: set[str] = set()
        self.open: dict[str, tuple[int, int, int]] = {}  # key -> (first missing stamp, last, frames)

    def update(self, s: Frame) -> None:
        for key in self.keys:
            if key in s.source_stamps:
                self.seen.add(key)
                if key in self.open:
                    self._close(key)
            elif key in self.seen:
                first, _, n = self.open.get(key, (s.stamp_ns, s.stamp_ns, 0))
                self.open[key] = (first, s.stamp_ns, n + 1)

    def _close(self, key: str) -> None:
        first, last, n = self.open.pop(key)
        self.asm.log.span(key, first, last, n, f"no valid data for {n} frames ({(last - first) / 1e9:.2f} s)")

    def close(self) -> None:
        for key in list(self.open):
            self._close(key)


def _make_frame(
    t: int, sel: dict[str, Any], nearest: dict[str, Any], asm: SampleAssembler, cfg: SyncConfig,
    note: Callable[[str, int, str], None],
) -> Frame:
    """The frame at t: each plugin's entry from its streams' selections (`nearest`: those already decoded)."""
    stamps: dict[str, int] = {}
    missing: list[str] = []

    def decoded(key: str, fn: Callable[[_ITEM], Any]) -> Any:
        it = sel.get(key)
        if it is None:
            if key in asm.streams:
                missing.append(key)
            return None
        try:
            val = fn(it)
        except Exception as exc:
            note(it[2], it[0], f"message not decoded ({_why(exc)}); {key} missing for that frame")
            missing.append(key)
            return None
        stamps[key] = it[0]
        return val

    def window(key: str) -> Any:
        if key not in asm.streams:
            missing.append(key)
            return None
        chunks = sel.get(key) or []
        try:
            pcm = _window(t, chunks, cfg, key, stamps)
        except Exception as exc:  # chunks that decoded but do not join (e.g. a sample type of their own)
            note(asm.topic_of[key], chunks[-1][0] if chunks else t, f"{key} window not assembled ({_why(exc)}); "
                                                                    f"{key} missing for that frame")
            stamps.pop(key, None)
            pcm = None
        if pcm is None:
            missing.append(key)
        return pcm

    data: dict[str, Any] = {}
    for mod in asm.modalities:
        values: dict[str | None, Any] = {}
        for sensor, key in mod.streams:
            if mod.plugin.sync == SyncKind.NEAREST:
                values[sensor] = nearest.get(key)
                if values[sensor] is None:
                    missing.append(key)
                else:
                    stamps[key] = sel[key][0]
            elif mod.plugin.sync == SyncKind.LATEST:
                values[sensor] = decoded(key, lambda it, k=key: asm.decode(k, it))
            else:
                values[sensor] = window(key)
        data[mod.plugin.name] = values if mod.plugin.per_sensor else values.get(None)
    odom = decoded("odometry", lambda it: M.decode_odometry(asm.msg(it)))

    gt = None
    if cfg.ground_truth and any(k.startswith("gt/") for k in asm.streams):
        qa_items = sel.get("gt/qa") or []
        gt = GroundTruth(
            bev=decoded("gt/bev", lambda it: M.decode_occupancy_grid(asm.msg(it))),
            objects=decoded("gt/objects", lambda it: M.decode_marker_array_boxes(asm.msg(it))),
            audio_events=decoded("gt/audio_events", lambda it: M.decode_marker_array_events(asm.msg(it))),
            conditions=decoded("gt/conditions", lambda it: M.decode_json(asm.msg(it))),
            qa=[qa for it in qa_items if (qa := _decode_qa(it, asm, note)) is not None],
        )
        if qa_items:
            stamps["gt/qa"] = qa_items[0][0]
    return Frame(t, data, odom, gt, stamps, missing)


def _why(exc: BaseException) -> str:
    """An exception as a diagnostic names it: its type, and its message if it has one."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _decode_qa(it: _ITEM, asm: SampleAssembler, note: Callable[[str, int, str], None]) -> Any:
    try:
        return M.decode_json(asm.msg(it))
    except Exception as exc:
        note(it[2], it[0], f"QA pair not decoded ({_why(exc)}); dropped")
        return None


def _window(t: int, chunks: list[_ITEM], cfg: SyncConfig, key: str, stamps: dict[str, int]) -> np.ndarray | None:
    """Exactly window * rate samples ending at t, from contiguous (rows, samples) chunks; None if any part is not
    covered. The window and rate are SyncConfig's audio_window_s and audio_sample_rate."""
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
    stamps[key] = first_stamp
    return np.ascontiguousarray(pcm[:, offset: offset + n_win])


def synchronized_samples(bag: str | Path | Bag, config: SyncConfig | None = None) -> Iterator[Frame]:
    """Convenience: iterate the `Frame`s of a bag (see `Synchronizer` for diagnostics)."""
    yield from Synchronizer(bag, config)
