"""Fault injection: rewrite a bag with one named fault, to see what the runtime does with bad data.

`inject(src, dst, fault, ...)` copies the bag `src` to `dst` with the fault applied to `topic` over the span
[start_s, start_s + duration_s) of bag time (seconds from the bag's start); randomness comes from `seed` only, so
a fault is reproducible. Works on any rosbag2 bag (MCAP or sqlite3), users' own recordings included:

    from edge.drives.faults import inject
    inject("drives/day", "/tmp/day-gap", "gap", topic="/fisheye/front/image_raw/compressed", start_s=2, duration_s=1)

Message faults (the bag is re-written message by message, definitions kept):
  gap, duplicate, reorder (stamps out of order within blocks), backwards (header stamps shifted back),
  audio_channels (chunks with fewer microphones), audio_format (chunks in an encoding the reader rejects),
  foreign_definitions (every message re-encoded with another ROS 2 distro's definitions, e.g. Humble's Range),
  ultrasonic_stuck (Range readings of `topic`, or of every ultrasonic sensor, replaced by `value`: default +inf,
  "no echo"; NaN or a constant in metres also work), camera_frozen (every image of `topic` in the span is the
  span's first image again, with its own header stamp: a driver re-sending its last buffer), camera_format (the
  images of `topic` re-encoded as `encoding` "mono8" and/or resized to `size` (width, height): a driver
  reconfigured mid-drive), range_layout (the Range messages of `topic`, or of every ultrasonic sensor, written in
  another distribution's layout, `distro` default "humble", while the bag keeps its own definition).
Container faults (the files are damaged in place on a copy):
  truncate (storage file cut at `fraction`), corrupt_chunk (bytes overwritten inside an MCAP chunk).
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.store import Typestore

from edge.drives import messages as M
from edge.drives import topics as T
from edge.drives.bag import BagMessage, BagWriter, open_bag
from edge.errors import EdgeError

_Out = tuple[str, str, int, bytes]  # topic, msgtype, bag time, CDR
MESSAGE_FAULTS = ("gap", "duplicate", "reorder", "backwards", "audio_channels", "audio_format", "foreign_definitions",
                  "ultrasonic_stuck", "camera_frozen", "camera_format", "range_layout")
CONTAINER_FAULTS = ("truncate", "corrupt_chunk")
FAULTS = MESSAGE_FAULTS + CONTAINER_FAULTS


class FaultError(EdgeError):
    """A fault cannot be applied as asked (unknown fault, topic not in the bag, wrong storage)."""


def inject(
    src: str | Path, dst: str | Path, fault: str, *, topic: str | None = None, start_s: float = 1.0,
    duration_s: float = 1.0, seed: int = 0, **params: Any,
) -> Path:
    """Write `src` with `fault` applied to `dst` (a new directory); returns `dst`. See the module docstring."""
    src, dst = Path(src), Path(dst)
    if fault not in FAULTS:
        raise FaultError(f"unknown fault '{fault}' (one of {', '.join(FAULTS)})")
    if fault in CONTAINER_FAULTS:
        return _container_fault(src, dst, fault, start_s, seed, **params)
    rng = np.random.default_rng(seed)
    with open_bag(src) as bag:
        if topic is not None and topic not in bag.topics:
            raise FaultError(f"{src}: topic '{topic}' is not in the bag (has {', '.join(sorted(bag.topics))})")
        t0 = bag.start_ns or 0
        span = (t0 + int(start_s * 1e9), t0 + int((start_s + duration_s) * 1e9))
        target = topic or (T.AUDIO if fault.startswith("audio_") else None)

        def hit(m: BagMessage) -> bool:
            return (target is None or m.topic == target) and span[0] <= m.stamp_ns < span[1]

        typestore, transform = _message_fault(fault, hit, bag.typestore, rng, **params)
        storage = params.get("storage", bag.storage if bag.storage in ("mcap", "sqlite3") else "mcap")
        with BagWriter(dst, storage=storage, typestore=typestore) as w:
            for out in transform(bag.messages(raw=True)):
                w.write_raw(*out)
    return dst


def _message_fault(
    fault: str, hit: Callable[[BagMessage], bool], ts: Typestore, rng: np.random.Generator, **params: Any,
) -> tuple[Typestore, Callable[[Iterator[BagMessage]], Iterator[_Out]]]:
    def each(fn: Callable[[BagMessage], list[_Out]]) -> Callable[[Iterator[BagMessage]], Iterator[_Out]]:
        def run(msgs: Iterator[BagMessage]) -> Iterator[_Out]:
            for m in msgs:
                yield from (fn(m) if hit(m) else [(m.topic, m.msgtype, m.stamp_ns, m.msg)])
        return run

    def plain(m: BagMessage) -> _Out:
        return (m.topic, m.msgtype, m.stamp_ns, m.msg)

    if fault == "gap":
        return ts, each(lambda m: [])
    if fault == "duplicate":
        return ts, each(lambda m: [plain(m), plain(m)])
    if fault == "backwards":
        shift = int(params.get("shift_s", 2.0) * 1e9)
        return ts, each(lambda m: [(m.topic, m.msgtype, m.stamp_ns, restamp(m.msg, -shift))])
    if fault == "reorder":
        block = int(params.get("block", 4))

        def reorder(msgs: Iterator[BagMessage]) -> Iterator[_Out]:
            held: list[BagMessage] = []

            def flush() -> Iterator[_Out]:  # payloads permuted, bag times kept: stamps arrive out of order
                order = rng.permutation(len(held))
                for m, k in zip(held, order):
                    yield (m.topic, m.msgtype, m.stamp_ns, held[k].msg)
                held.clear()

            for m in msgs:
                if hit(m):
                    held.append(m)
                    if len(held) == block:
                        yield from flush()
                else:
                    yield plain(m)
            yield from flush()
        return ts, reorder
    if fault == "audio_channels":
        keep = int(params.get("channels", 2))

        def fewer(m: BagMessage) -> list[_Out]:
            msg = ts.deserialize_cdr(m.msg, m.msgtype)
            pcm = M.decode_audio(msg)[:keep]
            out = M.audio_chunk(M.header_stamp_ns(msg) or m.stamp_ns, msg.header.frame_id, pcm)
            return [(m.topic, m.msgtype, m.stamp_ns, M.serialize(out, m.msgtype))]
        return ts, each(fewer)
    if fault == "audio_format":
        def float_pcm(m: BagMessage) -> list[_Out]:
            msg = ts.deserialize_cdr(m.msg, m.msgtype)
            pcm = M.decode_audio(msg).astype("<f4") / 32768.0
            msg.encoding, msg.step = "32FC1", pcm.shape[1] * 4
            msg.data = np.ascontiguousarray(pcm).view(np.uint8).reshape(-1)
            return [(m.topic, m.msgtype, m.stamp_ns, M.serialize(msg, m.msgtype))]
        return ts, each(float_pcm)
    if fault == "ultrasonic_stuck":
        value = float(params.get("value", float("inf")))

        def stuck(m: BagMessage) -> list[_Out]:
            if m.msgtype != T.RANGE:
                return [plain(m)]
            msg = ts.deserialize_cdr(m.msg, m.msgtype)
            msg.range = value
            return [(m.topic, m.msgtype, m.stamp_ns, bytes(ts.serialize_cdr(msg, m.msgtype)))]
        return ts, each(stuck)
    if fault == "camera_frozen":
        first: dict[str, bytes] = {}

        def frozen(m: BagMessage) -> list[_Out]:
            if m.msgtype not in (T.COMPRESSED_IMAGE, T.IMAGE):
                return [plain(m)]
            held = first.setdefault(m.topic, m.msg)
            return [(m.topic, m.msgtype, m.stamp_ns, restamp(held, _stamp_ns(m.msg) - _stamp_ns(held)))]
        return ts, each(frozen)
    if fault == "camera_format":
        encoding, size = params.get("encoding"), params.get("size")
        if encoding not in (None, "mono8") or (size is not None and len(size) != 2):
            raise FaultError(f"camera_format: encoding must be 'mono8' (got {encoding!r}) and size (width, height) "
                             f"(got {size!r})")

        def reformat(m: BagMessage) -> list[_Out]:
            if m.msgtype not in (T.COMPRESSED_IMAGE, T.IMAGE):
                return [plain(m)]
            msg = ts.deserialize_cdr(m.msg, m.msgtype)
            img = M.decode_image(msg, m.msgtype)
            if encoding == "mono8" and img.ndim == 3:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            if size is not None:
                img = cv2.resize(img, (int(size[0]), int(size[1])), interpolation=cv2.INTER_AREA)
            stamp, frame = M.header_stamp_ns(msg) or m.stamp_ns, msg.header.frame_id
            out = M.compressed_image(stamp, frame, img) if m.msgtype == T.COMPRESSED_IMAGE else \
                M.raw_image(stamp, frame, img)
            return [(m.topic, m.msgtype, m.stamp_ns, M.serialize(out, m.msgtype))]
        return ts, each(reformat)
    if fault == "range_layout":
        other = _distro_store(params.get("distro", "humble"))

        def relayout(m: BagMessage) -> list[_Out]:
            if m.msgtype != T.RANGE:
                return [plain(m)]
            obj = M.convert_message(ts.deserialize_cdr(m.msg, m.msgtype), m.msgtype, other)
            return [(m.topic, m.msgtype, m.stamp_ns, bytes(other.serialize_cdr(obj, m.msgtype)))]
        return ts, each(relayout)
    if fault == "foreign_definitions":
        dst = _distro_store(params.get("distro", "humble"))

        def convert(msgs: Iterator[BagMessage]) -> Iterator[_Out]:
            same: dict[str, bool] = {}
            for m in msgs:
                if m.msgtype not in same:
                    same[m.msgtype] = M.same_definition(m.msgtype, ts, dst)
                if same[m.msgtype]:
                    yield plain(m)
                else:
                    obj = M.convert_message(ts.deserialize_cdr(m.msg, m.msgtype), m.msgtype, dst)
                    yield (m.topic, m.msgtype, m.stamp_ns, bytes(dst.serialize_cdr(obj, m.msgtype)))
        return dst, convert
    raise FaultError(f"unknown message fault '{fault}'")


def _distro_store(name: Any) -> Typestore:
    """The rosbags typestore of a ROS 2 distribution named as users write it ("humble", "ROS2_JAZZY")."""
    distro = str(name).upper()
    if distro not in Stores.__members__ and f"ROS2_{distro}" not in Stores.__members__:
        raise FaultError(f"unknown ROS distribution '{name}'")
    return get_typestore(Stores[distro if distro in Stores.__members__ else f"ROS2_{distro}"])


def _stamp_ns(data: bytes) -> int:
    """header.stamp of a header-first message's CDR, in ns."""
    sec, nsec = struct.unpack_from(("<" if data[1] == 1 else ">") + "iI", data, 4)
    return sec * 1_000_000_000 + nsec


def restamp(data: bytes, delta_ns: int) -> bytes:
    """CDR of a header-first message with header.stamp moved by delta_ns."""
    end = "<" if data[1] == 1 else ">"
    sec, nsec = struct.unpack_from(end + "iI", data, 4)
    sec, nsec = divmod(sec * 1_000_000_000 + nsec + delta_ns, 1_000_000_000)
    out = bytearray(data)
    struct.pack_into(end + "iI", out, 4, sec, nsec)
    return bytes(out)


# ---------------------------------------------------------------- damaged containers

def _storage_file(bag: Path) -> Path:
    files = sorted(bag.glob("*.mcap")) + sorted(bag.glob("*.db3"))
    if not files:
        raise FaultError(f"{bag}: no .mcap or .db3 storage file")
    return files[0]


def _container_fault(src: Path, dst: Path, fault: str, start_s: float, seed: int, **params: Any) -> Path:
    if dst.exists():
        raise FaultError(f"{dst}: exists; refusing to overwrite")
    shutil.copytree(src, dst)
    f = _storage_file(dst)
    data = bytearray(f.read_bytes())
    if fault == "truncate":
        f.write_bytes(bytes(data[: int(len(data) * float(params.get("fraction", 0.6)))]))
        return dst
    if f.suffix != ".mcap":
        raise FaultError(f"{f}: corrupt_chunk needs an MCAP bag")
    from mcap.reader import make_reader

    with f.open("rb") as fh:
        summary = make_reader(fh).get_summary()
    if summary is None or not summary.chunk_indexes:
        raise FaultError(f"{f}: no chunk index to find a chunk in")
    with open_bag(src) as bag:
        t = (bag.start_ns or 0) + int(start_s * 1e9)
    chunks = sorted(summary.chunk_indexes, key=lambda c: c.message_start_time)
    chunk = next((c for c in chunks if c.message_end_time >= t), chunks[-1])
    n = int(params.get("nbytes", 64))
    head = 1 + 8 + 8 + 8 + 8 + 4 + 4 + len(chunk.compression) + 8  # records start after the chunk header
    lo, hi = chunk.chunk_start_offset + head, chunk.chunk_start_offset + chunk.chunk_length - n
    at = int(np.random.default_rng(seed).integers(lo, max(lo + 1, hi)))
    data[at: at + n] = np.random.default_rng(seed + 1).integers(0, 256, n, dtype=np.uint8).tobytes()
    f.write_bytes(bytes(data))
    return dst
