"""rosbag2 bag I/O: a writer for the project's drives and a reader for any rosbag2 bag.

Writing goes through `rosbags.rosbag2.Writer` with the MCAP storage plugin and zstd *chunk* compression (the
`CompressionMode.STORAGE` mode, what `ros2 bag record -s mcap --storage-preset-profile zstd_fast` produces), so the
bag is a plain rosbag2 directory that rosbags' AnyReader, the `mcap` library / CLI and `ros2 bag` all open; the
offered QoS of each topic is recorded as rosbag2 does (sensor topics best effort, keep last 5; others reliable).

Reading goes through `rosbags.highlevel.AnyReader` (MCAP or sqlite3, any writer). Messages are decoded by the
bag's own definitions (MCAP schema records, the sqlite3 `message_definitions` table): a bag written with ROS 2
Humble's sensor_msgs/Range (no `variance`) decodes as such. Types the bag carries no definition for use the
typestore of the bag's `ros_distro` where rosbags has one, else ROS 2 Jazzy's; `Bag.definitions` says which.
A recording cut short (no metadata.yaml, MCAP without summary or footer, damaged chunk) is read record by record with
the `mcap` library's stream reader: every message outside the damage is still yielded, and the damage (a chunk whose
CRC fails: its bag-time span and topics) is reported in `Bag.diagnostics` and `Bag.damaged`, naming the file. A
damaged sqlite3 file is read up to the damage (edge.drives.sqlite_salvage).
"""

from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Iterable, Iterator, NamedTuple

import yaml
from rosbags.highlevel import AnyReader
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from edge.drives import topics as T
from edge.drives.mcap_chunks import chunk_topics, write_chunk_crcs
from edge.drives.messages import typestore as jazzy_typestore
from edge.drives.sqlite_salvage import SqliteSalvage
from edge.drives.topics import TopicRemap, TopicView
from edge.errors import BagError

# libyaml's safe loader where PyYAML has it: metadata.yaml of a long bag is tens of kB.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
log = logging.getLogger(__name__)

SENSOR_DEPTH = 5
DEFAULT_DEPTH = 10


def sensor_prefixes() -> tuple[str, ...]:
    """The namespaces of the installed modality plugins' sensor topics ("/fisheye/", "/camera/", "/ultrasonic/",
    "/audio/" for the built-ins; "/lidar/" with the LiDAR package), from their declarations
    (edge.modalities.registry.Registry.topic_namespaces)."""
    from edge.modalities.registry import registry  # here: the plugins' declarations import edge.drives.topics

    return registry().topic_namespaces()


def is_sensor_topic(topic: str) -> bool:
    """Sensor data (best-effort QoS per DESIGN.md): contract sensor topics, and any topic under a plugin's sensor
    namespace (`sensor_prefixes`: every `/ultrasonic/*` sensor, a rig's other cameras, ...), odometry."""
    spec = T.known_topics(()).get(topic)
    if spec is not None:
        return spec.sensor
    return topic.startswith(sensor_prefixes()) or topic == T.ODOM


def offered_qos(sensor: bool) -> Qos:
    """The QoS a publisher of this kind of topic offers: sensor = best effort / keep last 5, else reliable / 10."""
    zero = QosTime(0, 0)
    return Qos(
        history=QosHistory.KEEP_LAST, depth=SENSOR_DEPTH if sensor else DEFAULT_DEPTH,
        reliability=QosReliability.BEST_EFFORT if sensor else QosReliability.RELIABLE,
        durability=QosDurability.VOLATILE, deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False,
    )


# ====================================================================== writing

class BagWriter:
    """Writes a rosbag2 bag directory (metadata.yaml + MCAP, zstd chunks) one message at a time.

    `compression`: "zstd" (MCAP chunk compression, default) or "none"; with storage="sqlite3", "zstd" means
    rosbag2's per-message zstd (`--compression-mode message`), the only compression sqlite3 bags have.
    `typestore`: the definitions written into the bag and used to serialise (default ROS 2 Jazzy; another
    distro's to write a bag as that distro would, see edge.drives.faults).
    """

    def __init__(
        self, out_dir: str | Path, compression: str = "zstd", *, storage: str = "mcap",
        custom_data: dict[str, str] | None = None, typestore: Typestore | None = None,
    ) -> None:
        self.path = Path(out_dir)
        if compression not in ("zstd", "none"):
            raise BagError(f"{self.path}: unsupported compression '{compression}' (zstd or none)")
        if storage not in ("mcap", "sqlite3"):
            raise BagError(f"{self.path}: unsupported storage '{storage}' (mcap or sqlite3)")
        if self.path.exists():
            if not self.path.is_dir() or any(self.path.iterdir()):
                raise BagError(f"{self.path}: exists and is not an empty directory; refusing to overwrite a bag")
            self.path.rmdir()  # rosbags creates the directory itself
        self._writer = Writer(
            self.path, version=Writer.VERSION_LATEST,
            storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3,
        )
        if compression == "zstd":
            mode = CompressionMode.STORAGE if storage == "mcap" else CompressionMode.MESSAGE
            self._writer.set_compression(mode, CompressionFormat.ZSTD)
        for k, v in (custom_data or {}).items():
            self._writer.set_custom_data(k, v)
        self.compression, self.storage = compression, storage
        self._ts = typestore or jazzy_typestore()
        self._connections: dict[str, Any] = {}
        self._types: dict[str, str] = {}
        self._open = False
        self.count = 0

    def open(self) -> "BagWriter":
        try:
            self._writer.open()
        except Exception as exc:
            raise BagError(f"{self.path}: cannot create bag: {exc}") from exc
        self._open = True
        return self

    def add_topic(self, topic: str, msgtype: str, *, sensor: bool | None = None) -> None:
        """Register a topic up front (write() does it on first use); the contract's type is enforced."""
        if topic in self._connections:
            if self._types[topic] != msgtype:
                raise BagError(f"{self.path}: topic '{topic}' already has type {self._types[topic]}, not {msgtype}")
            return
        spec = T.known_topics(()).get(topic)
        if spec is not None and msgtype not in spec.types:
            raise BagError(f"{self.path}: topic '{topic}' must carry {' or '.join(spec.types)}, not {msgtype}")
        ts = self._ts
        if msgtype not in ts.types:
            raise BagError(f"{self.path}: topic '{topic}': unknown message type '{msgtype}' (not in the typestore)")
        qos = offered_qos(is_sensor_topic(topic) if sensor is None else sensor)
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=ts, offered_qos_profiles=[qos]
        )
        self._types[topic] = msgtype

    def write(self, topic: str, msgtype: str, stamp_ns: int, msg: Any) -> None:
        """Serialize `msg` (a rosbags message object) to CDR and store it with bag time `stamp_ns`."""
        try:
            data = self._ts.serialize_cdr(msg, msgtype)
        except Exception as exc:
            raise BagError(f"{self.path}: topic '{topic}': cannot serialize message as {msgtype}: {exc}") from exc
        self.write_raw(topic, msgtype, stamp_ns, data)

    def write_raw(self, topic: str, msgtype: str, stamp_ns: int, data: bytes | memoryview) -> None:
        """Store already serialized CDR (e.g. copied from another bag)."""
        if not self._open:
            raise BagError(f"{self.path}: BagWriter used outside its `with` block")
        if self._types.get(topic) != msgtype:
            self.add_topic(topic, msgtype)
        self._writer.write(self._connections[topic], int(stamp_ns), data)
        self.count += 1

    def close(self) -> None:
        """Finish the MCAP summary (with chunk CRCs, which rosbags leaves 0) and write metadata.yaml."""
        if self._open:
            self._open = False
            self._writer.close()
            if self.storage == "mcap":
                for f in sorted(self.path.glob("*.mcap")):
                    write_chunk_crcs(f)

    def __enter__(self) -> "BagWriter":
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        # Close properly even when the producer failed: what was written so far stays a readable bag.
        if exc is not None and self._open:
            log.warning("%s: closing bag after error (%s); %d messages kept", self.path, exc, self.count)
        self.close()


# ====================================================================== reading

class BagMessage(NamedTuple):
    """One message in bag-time order. `msg` is a rosbags message object, or CDR bytes when read raw."""

    topic: str
    msgtype: str
    stamp_ns: int
    msg: Any


@dataclass
class TopicInfo:
    name: str
    msgtype: str
    count: int | None  # None where the bag's index is missing (damaged recording) until it has been read
    qos: list[dict[str, Any]] = field(default_factory=list)


_DISTRO_STORES = {s.name.split("_", 1)[1].lower(): s for s in Stores if s.name.startswith("ROS2_")}


def default_typestore(ros_distro: str | None) -> Typestore:
    """Types for a bag that carries no definitions: its recorded `ros_distro` if rosbags knows it, else Jazzy."""
    store = _DISTRO_STORES.get(str(ros_distro or "").lower())
    return get_typestore(store) if store is not None and store != Stores.ROS2_JAZZY else jazzy_typestore()


def _merged_typestore(from_bag: dict[str, Any], default: Typestore) -> Typestore:
    """`default`'s types, overridden by the definitions a bag carries (e.g. Humble's Range without variance).
    `default` itself when the bag defines nothing differently (registering a store costs ~0.25 s)."""
    if all(default.fielddefs.get(k) == v for k, v in from_bag.items()):
        return default
    ts = get_typestore(Stores.EMPTY)
    ts.register({k: v for k, v in default.fielddefs.items() if k not in from_bag})
    ts.register(from_bag)
    return ts


def _parse_defs(defs: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Field definitions from (encoding, text) message definitions as MCAP schemas / rosbag2 store them."""
    from_bag: dict[str, Any] = {}
    for msgtype, (fmt, text) in defs.items():
        if not text:
            continue
        try:
            if fmt == "ros2idl":
                sep = "=" * 80 + "\n"
                parts = text.split(sep)[1:] if text.startswith(sep + "IDL: ") else [text]
                for part in parts:
                    from_bag.update(get_types_from_idl(part.split("\n", 1)[1] if part.startswith("IDL: ") else part))
            else:
                from_bag.update(get_types_from_msg(text, msgtype))
        except Exception as exc:  # a broken definition only costs that type
            log.warning("cannot parse message definition of %s: %s", msgtype, exc)
    return from_bag


def _summary_channels(f: Path) -> tuple[dict[int, Any], dict[int, Any]]:
    """(schemas, channels) by id from an MCAP file's summary section; empty where it has none or it is damaged."""
    from mcap.reader import make_reader

    try:
        with f.open("rb") as fh:
            summary = make_reader(fh).get_summary()
    except Exception:
        return {}, {}
    if summary is None:
        return {}, {}
    return dict(summary.schemas), dict(summary.channels)


class Bag:
    """An open rosbag2 bag: topic table, diagnostics about damage or bad topics, and time-ordered messages.

    `remap`: read the bag's topics under the contract's names (a namespace prefix, FROM:=TO rules: edge run and
    edge bench's `--namespace`, `--remap`); `topics` and `messages()` then use those names, `recorded` keeps the
    bag's own, and diagnostics about the bag's contents name its own topics."""

    def __init__(self, path: str | Path, remap: TopicRemap | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"{self.path}: no such bag")
        self.diagnostics: list[str] = []
        self.metadata: dict[str, Any] = {}
        self.storage = "unknown"
        self.recorded: dict[str, TopicInfo] = {}  # every topic under the name the bag records it by
        self.view: TopicView | None = None  # the names `topics` and `messages` use: set_names()
        self.start_ns: int | None = None
        self.end_ns: int | None = None
        self._reader: AnyReader | None = None
        self._salvage: SqliteSalvage | None = None
        self._stream_defs: tuple[Any, ...] | None = None
        self._reported: set[str] = set()
        self.undecoded: dict[str, int] = {}  # topic -> messages skipped because they did not decode
        # (first, last bag time or None: to the end, topics or [] if unknown) of data lost to damage
        self.damaged: list[tuple[int | None, int | None, list[str]]] = []
        self._load_metadata()
        self._default_ts = default_typestore(self.metadata.get("ros_distro"))
        # Decoding types: the bag's definitions over the default ones; `definitions` says per type where from.
        self.typestore: Typestore = self._default_ts
        self.definitions: dict[str, str] = {}
        try:
            self._reader = AnyReader([self.path], default_typestore=self._default_ts)
            self._reader.open()
        except Exception as exc:  # damaged or incomplete recording: fall back where the storage allows
            self._reader = None
            self._mcap_files = self._find_mcap_files()
            if not self._mcap_files:
                dbs = sorted(self.path.glob("*.db3")) if self.path.is_dir() else []
                if not dbs:
                    raise BagError(f"{self.path}: cannot open bag: {exc}") from None
                self._open_salvage(dbs[0], exc)
                self.set_names(remap)
                return
            self.diagnostics.append(
                f"{self.path}: bag index unreadable ({exc}); reading {', '.join(f.name for f in self._mcap_files)} "
                "record by record"
            )
            self.storage = "mcap"
            self._scan_mcap_headers()
        else:
            self._from_reader()
        self.set_names(remap)

    def set_names(self, remap: TopicRemap | None) -> None:
        """Read the bag under `remap`'s names (None or empty: its own); a bad rule raises RemapError naming it."""
        self.view = remap.view(list(self.recorded), str(self.path)) if remap else None
        if self.view is not None:
            self.diagnostics.append(f"{self.path}: {self.view.describe(self.recorded)}")

    @property
    def topics(self) -> dict[str, TopicInfo]:
        """The topics as the runtime reads them: the bag's own names, or the contract's under a remap."""
        if self.view is None:
            return self.recorded
        out = {}
        for name, info in self.recorded.items():
            as_read = self.view.contract_name(name)
            if as_read is not None:
                out[as_read] = replace(info, name=as_read)
        return out

    # ---------------------------------------------------------------- opening
    def _load_metadata(self) -> None:
        meta = self.path / "metadata.yaml" if self.path.is_dir() else None
        if meta is not None and meta.exists():
            try:
                doc = yaml.load(meta.read_text(), Loader=_YAML_LOADER) or {}
                self.metadata = doc.get("rosbag2_bagfile_information", {}) or {}
                self.storage = str(self.metadata.get("storage_identifier", "unknown"))
            except Exception as exc:
                self.diagnostics.append(f"{meta}: unreadable metadata ({exc})")

    def _open_salvage(self, db: Path, exc: BaseException) -> None:
        """A damaged sqlite3 bag: topics and definitions from what is readable, messages up to the damage."""
        zstd = str(self.metadata.get("compression_mode", "")).lower() == "message"
        self._salvage = SqliteSalvage(db, message_zstd=zstd)
        self.storage = "sqlite3"
        self.diagnostics.append(f"{self.path}: bag unreadable as a whole ({exc}); reading {db.name} up to the damage")
        log.warning("%s", self.diagnostics[-1])
        for name, msgtype, qos in self._salvage.topics.values():
            try:
                q = yaml.load(qos, Loader=_YAML_LOADER) if qos else []
            except yaml.YAMLError:
                q = []
            self.recorded[name] = TopicInfo(name, msgtype, None, q if isinstance(q, list) else [])
        from_bag = _parse_defs(self._salvage.definitions)
        if from_bag:
            self.typestore = _merged_typestore(from_bag, self._default_ts)
        self._note_definitions(set(from_bag))

    def _salvage_messages(
        self, wanted: set[str] | None, start_ns: int | None, stop_ns: int | None, raw: bool,
        after: tuple[int, int] | None,
    ) -> Iterator[BagMessage]:
        sal = self._salvage
        skip = after[1] if after else 0
        counts: dict[str, int] = {}
        last_t: int | None = None
        for topic_id, t, data in sal.messages():
            last_t = t
            topic, msgtype, _ = sal.topics.get(topic_id, ("", "", ""))
            counts[topic] = counts.get(topic, 0) + 1
            if after is not None and (t < after[0] or (t == after[0] and skip > 0)):
                skip -= t == after[0]
                continue
            if (wanted is not None and topic not in wanted) or (start_ns is not None and t < start_ns) \
                    or (stop_ns is not None and t >= stop_ns):
                continue
            out = self._decode(topic, msgtype, t, data, raw, self.typestore)
            if out is not None:
                yield out
        for topic, n in counts.items():
            if topic in self.recorded and self.recorded[topic].count is None:
                self.recorded[topic].count = n
        if sal.error:
            self.damaged.append((last_t, None, []))
            self.diagnostics.append(sal.error)
            log.warning("%s", sal.error)

    def _find_mcap_files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path] if self.path.suffix == ".mcap" else []
        listed = [self.path / p for p in self.metadata.get("relative_file_paths", []) or []]
        files = [p for p in listed if p.suffix == ".mcap" and p.exists()]
        return files or sorted(self.path.glob("*.mcap"))

    def _from_reader(self) -> None:
        r = self._reader
        assert r is not None
        self.storage = self.storage if self.storage != "unknown" else "mcap"
        qos_meta = {
            t["topic_metadata"]["name"]: t["topic_metadata"].get("offered_qos_profiles")
            for t in self.metadata.get("topics_with_message_count", []) or []
        }
        for name, info in r.topics.items():
            types = {c.msgtype for c in info.connections}
            if len(types) > 1:
                self._diag(name, f"topic '{name}' has several types {sorted(types)}; using {sorted(types)[0]}")
            qos = qos_meta.get(name)
            if isinstance(qos, str):  # older metadata stores QoS as a YAML string
                qos = yaml.load(qos, Loader=_YAML_LOADER) if qos else []
            self.recorded[name] = TopicInfo(name, sorted(types)[0], int(info.msgcount), list(qos or []))
        from_bag = {c.msgtype for c in r.connections if c.msgdef.format.name != "NONE"}
        if from_bag:  # AnyReader's typestore then holds only what the bag defines: add the defaults under it
            self.typestore = _merged_typestore(dict(r.typestore.fielddefs), self._default_ts)
        self._note_definitions(from_bag)
        if r.message_count:
            self.start_ns, self.end_ns = r.start_time, r.end_time - 1 if r.end_time > r.start_time else r.end_time
        else:
            self.start_ns = self.end_ns = None

    def _note_definitions(self, from_bag: set[str]) -> None:
        default = "ros_distro " + str(self.metadata.get("ros_distro")) if self._default_ts is not jazzy_typestore() \
            else "built-in Jazzy"
        for info in self.recorded.values():
            self.definitions[info.msgtype] = "bag" if info.msgtype in from_bag else default

    def deserialize(self, data: bytes | memoryview, msgtype: str) -> Any:
        """A message object from CDR bytes of this bag, by the bag's own definition of `msgtype`."""
        return self.typestore.deserialize_cdr(data, msgtype)

    def _scan_mcap_headers(self) -> None:
        """Topic table of a damaged MCAP from its channel records (counts unknown until read)."""
        for f in self._mcap_files:
            for _schema, channel in self._stream_channels(f):
                if channel.topic not in self.recorded:
                    try:  # the channel record keeps the offered QoS, as rosbag2's MCAP plugin writes it
                        qos = yaml.safe_load(channel.metadata.get("offered_qos_profiles", "") or "[]") or []
                    except yaml.YAMLError:
                        qos = []
                    self.recorded[channel.topic] = TopicInfo(
                        channel.topic, _schema.name if _schema else "", None, qos if isinstance(qos, list) else []
                    )

    @staticmethod
    def _stream_channels(f: Path) -> Iterator[tuple[Any, Any]]:
        from mcap.records import Channel, Chunk, Schema
        from mcap.stream_reader import StreamReader, breakup_chunk

        schemas: dict[int, Any] = {}
        with f.open("rb") as fh:
            try:
                for rec in StreamReader(fh, emit_chunks=True).records:
                    subs = [rec]
                    if isinstance(rec, Chunk):
                        try:
                            subs = breakup_chunk(rec, validate_crc=False)
                        except Exception:
                            continue
                    for s in subs:
                        if isinstance(s, Schema):
                            schemas[s.id] = s
                        elif isinstance(s, Channel):
                            yield schemas.get(s.schema_id), s
            except Exception:
                return

    def _diag(self, key: str, text: str) -> None:
        if key not in self._reported:
            self._reported.add(key)
            self.diagnostics.append(text)
            log.warning("%s", text)

    # ---------------------------------------------------------------- reading
    def messages(
        self, topics: Iterable[str] | None = None, start_ns: int | None = None, stop_ns: int | None = None,
        raw: bool = False,
    ) -> Iterator[BagMessage]:
        """Messages of `topics` (all if None) with start_ns <= bag time < stop_ns, in bag-time order.

        A message that cannot be decoded is skipped with a diagnostic naming its topic; an unknown type skips
        its topic. With raw=True `msg` is the CDR bytes (used by replay, which forwards them untouched).
        """
        wanted = None if topics is None else set(topics)
        if wanted is not None:
            visible = set(self.topics)
            for t in sorted(wanted - visible):
                read = "" if self.view is None or self.view.recorded_name(t) == t else \
                    f" (read from '{self.view.recorded_name(t)}')"
                self._diag(f"missing:{t}", f"{self.path}: topic '{t}'{read} is not in the bag")
            if self.view is not None:  # a name the view does not read (its bag topic went to another) reads nothing
                wanted = {self.view.recorded_name(t) for t in wanted if t in visible}
        if self._reader is None:
            if self._salvage is not None:
                yield from self._salvage_messages(wanted, start_ns, stop_ns, raw, after=None)
            else:
                yield from self._stream_messages(wanted, start_ns, stop_ns, raw, after=None)
            return
        r = self._reader
        conns = [c for c in r.connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        ts = self.typestore
        last: tuple[int, int] | None = None  # (time, messages yielded at that time) to resume after damage
        try:
            for conn, t, data in r.messages(connections=conns, start=start_ns, stop=stop_ns):
                out = self._decode(conn.topic, conn.msgtype, t, data, raw, ts)
                last = (t, last[1] + 1 if last and last[0] == t else 1)
                if out is not None:
                    yield out
        except Exception as exc:
            files = self._find_mcap_files() if self.storage == "mcap" else []
            where = ", ".join(str(f) for f in files) or str(self.path)
            self.diagnostics.append(f"{where}: damaged after bag time {last[0] if last else 'start'} ns ({exc})")
            log.warning("%s", self.diagnostics[-1])
            if files:
                self._mcap_files = files
                yield from self._stream_messages(wanted, start_ns, stop_ns, raw, after=last)
            elif self.storage == "sqlite3" and (dbs := sorted(self.path.glob("*.db3"))):
                self._open_salvage(dbs[0], exc)
                yield from self._salvage_messages(wanted, start_ns, stop_ns, raw, after=last)

    def _decode(
        self, topic: str, msgtype: str, t: int, data: bytes | memoryview, raw: bool, ts: Typestore
    ) -> BagMessage | None:
        name = topic if self.view is None else self.view.contract_name(topic)
        if name is None:  # outside the namespace, or its name taken by a remap: not read
            return None
        if raw:
            return BagMessage(name, msgtype, t, bytes(data))
        if f"type:{topic}" in self._reported:
            return None
        try:
            if msgtype in ts.types:
                return BagMessage(name, msgtype, t, ts.deserialize_cdr(data, msgtype))
        except Exception as exc:
            self.undecoded[topic] = self.undecoded.get(topic, 0) + 1
            self._diag(f"msg:{topic}", f"{self.path}: topic '{topic}': message at {t} ns does not decode as "
                                       f"{msgtype} by the {self.definitions.get(msgtype, 'bag')} definition ({exc}); "
                                       "skipped (reported once per topic, counted in Bag.undecoded)")
            return None
        self._diag(f"type:{topic}", f"{self.path}: topic '{topic}': unknown message type '{msgtype}' "
                                    "(no definition in the bag or in ROS 2 Jazzy); topic skipped")
        return None

    def _stream_messages(
        self, wanted: set[str] | None, start_ns: int | None, stop_ns: int | None, raw: bool,
        after: tuple[int, int] | None, reorder_window_ns: int = 2_000_000_000,
    ) -> Iterator[BagMessage]:
        """Messages of MCAP files read record by record (no index needed), re-sorted within a time window.

        Chunks that fail to decompress or checksum are skipped with a diagnostic; a cut file ends the read
        with one. `after` skips what the indexed reader already yielded before it hit damage.
        """
        from mcap.records import Channel, Chunk, Message, Schema
        from mcap.stream_reader import StreamReader, breakup_chunk

        heap: list[tuple[int, int, str, str, bytes]] = []
        seq = 0
        emitted_until = -1
        max_seen = -1
        late = 0
        ts: Typestore | None = None
        counts: dict[str, int] = {}
        skip_at_after = after[1] if after else 0

        def release(limit: float) -> Iterator[BagMessage]:
            nonlocal emitted_until, skip_at_after, ts
            while heap and heap[0][0] <= limit:
                t, _, topic, msgtype, data = heapq.heappop(heap)
                if after is not None and (t < after[0] or (t == after[0] and skip_at_after > 0)):
                    if t == after[0]:
                        skip_at_after -= 1
                    continue
                emitted_until = max(emitted_until, t)
                assert ts is not None
                out = self._decode(topic, msgtype, t, data, raw, ts)
                if out is not None:
                    yield out

        for f in self._mcap_files:
            # Channels and schemas from the summary where it survived: rosbags writes them inside the first chunk,
            # so losing that chunk would otherwise orphan every later message.
            schemas, channels = _summary_channels(f)
            defs: dict[str, tuple[str, str]] = {
                sch.name: (sch.encoding, sch.data.decode("utf-8", "replace")) for sch in schemas.values()}
            n_file = 0
            ts = None
            index: dict[tuple[int, int], list[str]] | None = None
            try:
                fh = f.open("rb")
            except OSError as exc:
                self.diagnostics.append(f"{f}: cannot open ({exc})")
                continue
            with fh:
                reader = StreamReader(fh, emit_chunks=True, validate_crcs=True)
                recs = iter(reader.records)
                while True:
                    try:
                        rec = next(recs)
                    except StopIteration:
                        break
                    except Exception as exc:
                        self.damaged.append((max_seen if max_seen >= 0 else None, None, []))
                        self.diagnostics.append(
                            f"{f}: file is truncated or damaged near byte {fh.tell()} ({type(exc).__name__}: {exc}); "
                            f"{n_file} messages before the damage (bag time {max_seen} ns) were read, the rest is lost"
                        )
                        log.warning("%s", self.diagnostics[-1])
                        break
                    subs: Iterable[Any] = (rec,)
                    if isinstance(rec, Chunk):
                        try:
                            subs = breakup_chunk(rec, validate_crc=True)
                        except Exception as exc:
                            span = (rec.message_start_time, rec.message_end_time)
                            if index is None:
                                index = chunk_topics(f)
                            names = index.get(span, [])
                            topics = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "") \
                                if names else "topics unknown (no summary)"
                            self.damaged.append((span[0], span[1], index.get(span, [])))
                            self.diagnostics.append(
                                f"{f}: chunk at bag time {span[0]}..{span[1]} ns is damaged "
                                f"({type(exc).__name__}: {exc}); its messages are lost ({topics})"
                            )
                            log.warning("%s", self.diagnostics[-1])
                            continue
                    for s in subs:
                        if isinstance(s, Schema):
                            schemas[s.id] = s
                        elif isinstance(s, Channel):
                            channels[s.id] = s
                            sch = schemas.get(s.schema_id)
                            if sch is not None:
                                defs[sch.name] = (sch.encoding, sch.data.decode("utf-8", "replace"))
                            ts = None
                            if s.topic not in self.recorded:
                                self.recorded[s.topic] = TopicInfo(s.topic, sch.name if sch else "", None)
                        elif isinstance(s, Message):
                            ch = channels.get(s.channel_id)
                            if ch is None:
                                self._diag(f"chan:{f}:{s.channel_id}", f"{f}: message on unknown channel "
                                                                       f"{s.channel_id}; skipped")
                                continue
                            n_file += 1
                            counts[ch.topic] = counts.get(ch.topic, 0) + 1
                            t = s.log_time
                            if (wanted is not None and ch.topic not in wanted) or (start_ns is not None and t < start_ns) \
                                    or (stop_ns is not None and t >= stop_ns):
                                continue
                            sch = schemas.get(ch.schema_id)
                            if t < emitted_until:
                                late += 1
                            max_seen = max(max_seen, t)
                            seq += 1
                            heapq.heappush(heap, (t, seq, ch.topic, sch.name if sch else "", bytes(s.data)))
                    if ts is None:
                        ts = self._stream_typestore(defs)
                    if heap:
                        yield from release(max_seen - reorder_window_ns)
            if ts is None:
                ts = self._stream_typestore(defs)
            yield from release(math.inf)
        for topic, n in counts.items():
            if topic in self.recorded and self.recorded[topic].count is None:
                self.recorded[topic].count = n
        if late:
            self.diagnostics.append(
                f"{self.path}: {late} messages were more than {reorder_window_ns / 1e9:.1f} s out of order in the "
                "damaged file and were yielded late"
            )

    def _stream_typestore(self, defs: dict[str, tuple[str, str]]) -> Typestore:
        """Decoding types of a file read record by record: its schema records over the defaults (kept on self)."""
        key = tuple(sorted(defs.items()))
        if key == self._stream_defs:
            return self.typestore
        self._stream_defs = key
        from_bag = _parse_defs(defs)
        self.typestore = _merged_typestore(from_bag, self._default_ts) if from_bag else self._default_ts
        self._note_definitions(set(from_bag))
        return self.typestore

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._salvage is not None:
            self._salvage.close()
            self._salvage = None

    def __enter__(self) -> "Bag":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_bag(path: str | Path, remap: TopicRemap | None = None) -> Bag:
    """Open any rosbag2 bag directory (MCAP or sqlite3), or a bare .mcap file, optionally read under the contract's
    names (`remap`); see `Bag`."""
    return Bag(path, remap)


def read_messages(
    path: str | Path, topics: Iterable[str] | None = None, raw: bool = False
) -> Iterator[BagMessage]:
    """Convenience: (topic, msgtype, stamp_ns, msg) of one bag in time order."""
    with open_bag(path) as bag:
        yield from bag.messages(topics, raw=raw)
