"""What the runtime node reads and writes, kept apart from the lifecycle: its topics (relative names, both image
transports), the worker that turns sensor messages into frames, the question gate, and the output messages."""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from edge.drives import topics as T
from edge.drives.bag import BagMessage
from edge.drives.sync import SampleAssembler, SyncConfig, build_samples, cdr_header_stamp, load_decoder
from edge.modalities import ModalityPlugin
from edge.modalities.registry import registry

log = logging.getLogger(__name__)

# Relative names: they resolve to DESIGN.md's absolute names in the root namespace, move with `__ns`, and are
# remapped with `--ros-args -r FROM:=TO`. /diagnostics stays absolute, as diagnostic aggregators expect.
OUT_BEV, OUT_PLAN, ANSWER, QUESTION = (t.lstrip("/") for t in (T.OUT_BEV, T.OUT_PLAN, T.ANSWER, T.QUESTION))
DIAGNOSTICS = T.DIAGNOSTICS
MESSAGE_CLASSES = {T.COMPRESSED_IMAGE: ("sensor_msgs.msg", "CompressedImage"), T.IMAGE: ("sensor_msgs.msg", "Image"),
                   T.RANGE: ("sensor_msgs.msg", "Range"), T.ODOMETRY: ("nav_msgs.msg", "Odometry")}


@dataclass(frozen=True)
class Input:
    """One subscription: the (relative) name subscribed to, its type, and the stream it feeds."""

    name: str
    msgtype: str
    stream: str  # the drive topic the assembler knows it by (a camera's raw base name for either transport)
    transport: str | None = None  # "raw" / "compressed" for cameras


def _sensor_streams(rig: Any, plugins: Iterable[ModalityPlugin] | None) -> list[tuple[tuple[str, str], ...]]:
    """Per sensor of every plugin on the rig, its data topics in order of preference with the type each carries (a
    camera's raw form before /compressed; camera_info is not data), as the synchroniser plans a drive's topics: the
    topics of its `topics((sensor,))` (of `topics(())` for a modality without sensors) that its decoder takes. A
    plugin whose decoder cannot be imported or whose topics raise is left out (the assembler names it)."""
    out = []
    for p in registry() if plugins is None else plugins:
        try:
            dec = load_decoder(p)
            groups = [p.topics((s,)) for s in p.sensors(rig)] if p.per_sensor else [p.topics(())]
        except Exception as exc:  # a plugin's own code: its data is missing, the others are read
            log.warning("modality '%s': not subscribed (%s: %s)", p.name, type(exc).__name__, exc)
            continue
        for specs in groups:
            data = tuple((t.name, next(ty for ty in t.types if ty in dec.types)) for t in dec.data_topics(specs))
            if data:
                out.append(data)
    return out


def _form(base: str, topic: str) -> str:
    """A topic's image transport among its stream's forms: "raw" (the stream's own name), "compressed"."""
    return "raw" if topic == base else "compressed" if topic == base + T.COMPRESSED_SUFFIX else topic


def camera_bases(rig: Any, plugins: Iterable[ModalityPlugin] | None = None) -> list[str]:
    """The streams with a transport choice (several data topics: the cameras' raw and /compressed forms), by the
    name of their preferred form."""
    return [stream[0][0] for stream in _sensor_streams(rig, plugins) if len(stream) > 1]


def inputs(rig: Any, transports: dict[str, tuple[str, ...]],
           plugins: Iterable[ModalityPlugin] | None = None) -> list[Input]:
    """Subscriptions for the rig, from the plugins' topics (then odometry, the core's); `transports` gives each
    camera base the forms to subscribe to."""
    out = []
    for stream in _sensor_streams(rig, plugins):
        base = stream[0][0]
        if len(stream) == 1:
            out.append(Input(base.lstrip("/"), stream[0][1], base))
            continue
        forms = {_form(base, name): (name, msgtype) for name, msgtype in stream}
        for form in transports[base]:
            if form in forms:
                name, msgtype = forms[form]
                out.append(Input(name.lstrip("/"), msgtype, base, form))
    out.append(Input(T.ODOM.lstrip("/"), T.ODOMETRY, T.ODOM))
    return out


def stream_types(rig: Any, plugins: Iterable[ModalityPlugin] | None = None) -> dict[str, str]:
    """Topic -> type as the assembler plans its streams (cameras under their raw name whichever form arrives: the
    decoder follows each message's own type)."""
    out = {stream[0][0]: stream[0][1] for stream in _sensor_streams(rig, plugins)}
    out[T.ODOM] = T.ODOMETRY
    return out


def message_class(msgtype: str) -> tuple[str, str]:
    """The rclpy message class of a type, as (module, class name): "pkg/msg/Name" -> ("pkg.msg", "Name")."""
    if msgtype in MESSAGE_CLASSES:
        return MESSAGE_CLASSES[msgtype]
    package, _, name = msgtype.rpartition("/")
    return package.replace("/", "."), name


class TransportChoice:
    """Per camera, the image form in use: fixed by parameter or discovery, else the first form to deliver."""

    def __init__(self, chosen: dict[str, str | None]) -> None:
        self.chosen, self.ignored = dict(chosen), 0
        self._lock = threading.Lock()

    def accept(self, base: str, form: str) -> bool:
        with self._lock:
            if self.chosen.get(base) is None:
                self.chosen[base] = form
            if self.chosen[base] != form:
                self.ignored += 1
                return False
            return True


class LagBound:
    """Keeps a node that falls behind working on the present (parameter max_input_lag_s).

    Per stream, the stamp of the latest message received is that stream's present; the worker skips (and counts) a
    message stamped more than `max_lag_s` before it, so its backlog is worked through only as far as the newest
    `max_lag_s` of data. Per stream, so one sensor stamping in the future starves only itself; the latest received,
    not the largest stamp ever seen, so a stream whose clock jumps back (a replay looping without moving its stamps
    on, a sensor's clock reset) or one future-stamped message costs at most what was queued at that moment. 0 never
    skips. Without the bound a node behind by a full inbox (2,000 messages, ~8 s of data) published frames 38-46 s
    after their stamps under load (benchmarks/soak.py node)."""

    def __init__(self, max_lag_s: float) -> None:
        self.max_lag_s = max_lag_s  # may change between frames (a dynamic parameter): read at every message
        self.latest_ns: dict[str, int] = {}
        self.skipped: dict[str, int] = {}  # per stream, since activate

    def received(self, stream: str, stamp_ns: int) -> None:
        """On arrival (executor thread), before the message is queued."""
        self.latest_ns[stream] = stamp_ns

    def stale(self, stream: str, stamp_ns: int) -> bool:
        """On the worker, as it takes the message: True = skip it (counted)."""
        lag_ns = self.max_lag_s * 1e9
        if lag_ns <= 0 or self.latest_ns.get(stream, stamp_ns) - stamp_ns <= lag_ns:
            return False
        self.skipped[stream] = self.skipped.get(stream, 0) + 1
        return True

    @property
    def total(self) -> int:
        return sum(self.skipped.values())


class Pipeline:
    """Sensor messages -> time-aligned samples -> runtime frames -> `publish`, on one worker thread.

    The executor's callbacks only enqueue (bounded: a full inbox drops and counts, never blocks DDS); the worker
    skips what is more than `max_lag_s` behind its stream (LagBound), so a node that cannot keep up publishes late
    by about that much, not by its whole inbox. `before_frame` runs on the worker between frames (parameter changes
    take effect there, never mid-frame)."""

    def __init__(self, runtime: Any, topic_types: dict[str, str], publish: Callable[[Any], None],
                 before_frame: Callable[[], None], max_delay_s: float, max_lag_s: float = 0.0) -> None:
        self.runtime, self.publish, self.before_frame = runtime, publish, before_frame
        cfg = SyncConfig(image_reduce=runtime.stack.cfg.image_reduce, ground_truth=False, max_delay_s=max_delay_s)
        self.assembler = SampleAssembler(topic_types, cfg, source="ros")
        self.inbox: queue.Queue[BagMessage | None] = queue.Queue(maxsize=2000)  # None: wake up and stop
        self.dropped = 0  # the inbox was full (the runtime is far behind)
        self.lag = LagBound(max_lag_s)
        self.failed_frames = 0
        self.received: dict[str, int] = {}  # messages per stream since activate
        self.decode_notes: list[str] = []  # images that could not be decoded (build_samples reports each once)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="edge-runtime", daemon=True)

    def put(self, stream: str, msgtype: str, data: bytes) -> None:
        stamp = cdr_header_stamp(data)  # the header stamp orders the stream (replayed drives keep their time)
        if stamp is None:
            return
        self.received[stream] = self.received.get(stream, 0) + 1
        self.lag.received(stream, stamp)
        try:
            self.inbox.put_nowait(BagMessage(stream, msgtype, stamp, data))
        except queue.Full:  # the runtime is far behind: drop, never block the executor
            self.dropped += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the frame in hand and return; what is still queued is dropped."""
        self._stop.set()
        try:
            self.inbox.put_nowait(None)
        except queue.Full:
            pass  # the worker is busy and finds the flag at its next message
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def _incoming(self) -> Iterator[BagMessage | None]:
        """Messages in arrival order; None after `idle_after_s` without one, so that the last frames before the
        sensors fall silent are made now rather than when (if ever) the next message comes."""
        idle_s = self.assembler.idle_after_s()
        while not self._stop.is_set():
            try:
                msg = self.inbox.get(timeout=idle_s)
            except queue.Empty:
                yield None
                continue
            if msg is not None and not self.lag.stale(msg.topic, msg.stamp_ns):
                yield msg

    def losses(self) -> dict[str, int]:
        """Messages that never reached a frame, by cause (the node's tally and stop line)."""
        return {"skipped as behind (max_input_lag_s)": self.lag.total, "dropped (inbox full)": self.dropped}

    def input_problems(self) -> list[str]:
        """Bad input seen so far, one line per kind and topic (wrong encodings, duplicates, late stamps...)."""
        return self.assembler.diagnostics + self.decode_notes

    def _work(self) -> None:
        for selection in self.assembler.feed(self._incoming()):
            # One selection at a time: build_samples keeps several samples in flight to overlap reading a bag with
            # decoding, which live would hold each frame until the next few had arrived (0.5 s at 10 Hz).
            for sample in build_samples([selection], self.assembler, self.assembler.cfg, self.decode_notes):
                if self._stop.is_set():
                    return
                try:
                    self.before_frame()
                    self.runtime.submit(sample)
                    for result in self.runtime.drain():
                        if self._stop.is_set():
                            return
                        self.publish(result)
                except Exception:  # noqa: BLE001 - one bad frame must not stop the node: logged, counted
                    self.failed_frames += 1
                    log.exception("frame at %d ns failed; the node goes on with the next", sample.stamp_ns)


class QuestionGate:
    """Every question gets a reply: queued for the LLM, or refused now with the reason (no LLM, or faster than
    `every_s` after the last one accepted, which bounds the LLM's share of the machine)."""

    def __init__(self, has_llm: bool, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.has_llm, self.every_s, self.clock = has_llm, every_s, clock
        self._last: float | None = None

    def refusal(self, question: str) -> str | None:
        if not question.strip():
            return "empty question"
        if not self.has_llm:
            return "no LLM loaded (parameter use_llm is false): perception and scheduling only"
        now = self.clock()
        if self._last is not None and now - self._last < self.every_s:
            return (f"questions are answered at most one every {self.every_s:g} s (parameter questions_every_s); "
                    f"ask again in {self.every_s - (now - self._last):.1f} s")
        self._last = now
        return None


class Tally:
    """What the node produced, printed every `every_s` (wall) and when it stops: a CLI user sees it working, and
    the input messages it lost (`losses`: cause -> count so far, e.g. Pipeline.losses) when it falls behind."""

    def __init__(self, every_s: float = 10.0, out: Any = sys.stderr,
                 losses: Callable[[], dict[str, int]] = dict) -> None:
        self.every_s, self.out, self.losses = every_s, out, losses
        self.total = {"frames": 0, "grids": 0, "plan changes": 0, "answers": 0}
        self._lost_before: dict[str, int] = {}
        self._reset()

    def _reset(self) -> None:
        self.since, self.frames, self.grids, self.plans, self.answers = time.monotonic(), 0, 0, [], 0

    def add(self, result: Any, grid: bool) -> None:
        self.frames += 1
        self.grids += grid
        self.answers += len(result.answers)
        if result.decision.changed:
            self.plans.append(f"{'+'.join(result.plan.modalities) or 'nothing'} ({result.decision.reason})")
        if time.monotonic() - self.since >= self.every_s:
            self.flush()

    def flush(self, final: bool = False) -> None:
        for key, n in zip(self.total, (self.frames, self.grids, len(self.plans), self.answers)):
            self.total[key] += n
        span = time.monotonic() - self.since
        lost = self.losses()
        new_losses = "".join(f"; {n - self._lost_before.get(k, 0)} messages {k}" for k, n in lost.items()
                             if n > self._lost_before.get(k, 0))
        self._lost_before = lost
        if self.frames or self.plans or new_losses:
            print(f"edge node: {span:.1f} s: {self.frames} frames, {self.grids} occupancy grids, {self.answers} "
                  f"answers" + "".join(f"; plan {p}" for p in self.plans) + new_losses, file=self.out, flush=True)
        if final:
            print("edge node: while active: " + ", ".join(f"{n} {k}" for k, n in self.total.items())
                  + "".join(f"; {n} messages {k}" for k, n in lost.items()), file=self.out, flush=True)
        self._reset()


# ---------------------------------------------------------------- output messages
def stamp_msg(ns: int) -> Any:
    from builtin_interfaces.msg import Time

    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def grid_msg(result: Any, grid_cfg: Any) -> Any | None:
    from nav_msgs.msg import OccupancyGrid

    grid = result.occupancy_grid()
    if grid is None:
        return None
    msg = OccupancyGrid()
    msg.header.stamp, msg.header.frame_id = stamp_msg(result.stamp_ns), "base_link"
    msg.info.resolution, msg.info.width, msg.info.height = float(grid_cfg.resolution), grid_cfg.nx, grid_cfg.ny
    msg.info.origin.position.x, msg.info.origin.position.y = float(grid_cfg.x_min), float(grid_cfg.y_min)
    msg.info.origin.orientation.w = 1.0
    msg.data = grid.ravel().tolist()
    return msg


def plan_json(result: Any) -> str:
    """The plan message (/mpnp/plan). `camera_keep` is the plan's keep ratio (Plan.keep) under its historic name:
    readers (the LLM node, docs/topics) take it as the pruning the aligner sets must match."""
    plan = result.plan
    return json.dumps({"stamp_ns": result.stamp_ns, "modalities": list(plan.modalities), "n_blocks": plan.n_blocks,
                       "camera_keep": plan.keep, "backend": plan.backend, "aligners": plan.aligners,
                       "reason": result.decision.reason})


def answer_json(stamp_ns: int, question: str, answer: str, modalities: list[str], refused: str | None = None,
                error: str | None = None) -> str:
    """`refused`: why the question was not put to the LLM; `error`: why answering failed; `note`: an answer given
    with no modality aligner attached, so from no sensor data."""
    out: dict[str, Any] = {"stamp_ns": stamp_ns, "question": question, "answer": answer, "modalities": modalities}
    if refused is not None:
        out["refused"] = refused
    elif error is not None:
        out["error"] = error
    elif not modalities:
        out["note"] = "no modality aligner was attached: the answer uses no sensor data"
    return json.dumps(out)


def diagnostics_msg(result: Any, pipeline: Pipeline, runtime_dropped: int, ignored_images: int) -> Any:
    """Per-stream health, bad input (WARN with the latest problem), and the frame's per-stage processing times
    (Autoware's processing_time_ms, as values)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    dropped, input_problems = pipeline.dropped + runtime_dropped, pipeline.input_problems()
    diag = DiagnosticArray()
    diag.header.stamp = stamp_msg(result.stamp_ns)
    for name, h in result.context.streams.items():
        status = DiagnosticStatus(name=f"mpnp_edge/{name}", hardware_id=name,
                                  level=DiagnosticStatus.OK if h.healthy else DiagnosticStatus.WARN,
                                  message="healthy" if h.healthy else "silent or dropping")
        status.values = [KeyValue(key="staleness_s", value=f"{h.staleness_s:.3f}"),
                         KeyValue(key="dropout_rate", value=f"{h.dropout_rate:.3f}"),
                         KeyValue(key="input_drops", value=str(dropped))]
        diag.status.append(status)
    inputs = DiagnosticStatus(name="mpnp_edge/input", hardware_id="sensors",
                              level=DiagnosticStatus.WARN if input_problems else DiagnosticStatus.OK,
                              message=input_problems[-1] if input_problems else "ok")
    inputs.values = [KeyValue(key="problems", value=str(len(input_problems))),
                     KeyValue(key="ignored_images_other_transport", value=str(ignored_images))]
    inputs.values += [KeyValue(key=f"received {topic}", value=str(n)) for topic, n in sorted(pipeline.received.items())]
    # Lost on the node's side, apart from input_drops (inbox or runtime queue full): skipped as more than
    # max_input_lag_s behind their stream, in all and per topic.
    inputs.values.append(KeyValue(key="lag_skips", value=str(pipeline.lag.total)))
    inputs.values += [KeyValue(key=f"lag_skipped {topic}", value=str(n))
                      for topic, n in sorted(pipeline.lag.skipped.items())]
    diag.status.append(inputs)
    timing = DiagnosticStatus(name="mpnp_edge/processing_time", hardware_id="runtime", level=DiagnosticStatus.OK,
                              message="; ".join(result.diagnostics) or "ok")
    timing.values = [KeyValue(key=f"{stage}_ms", value=f"{ms:.2f}") for stage, ms in result.timings_ms.items()]
    timing.values.append(KeyValue(key="failed_frames", value=str(pipeline.failed_frames)))
    diag.status.append(timing)
    return diag
