"""What a modality plugin declares, so that the core can iterate modalities instead of naming them.

A plugin is one `ModalityPlugin` object that a package exposes as an entry point of the group `edge.modalities`
(see edge.modalities.registry and docs/plugins.md). It holds what the core's declarative lists need (topics,
synchronisation kind, BEV fusion, LLM tokens, weights file, health streams, keep ratios, the health models'
witness), where its encoder comes from and how its messages become its frame entry (its decoder) and how the
context estimator judges its health (its health model), what of its output and ground truth frame records hold and
how the evaluation scores it (record, truth, scores), and how `edge drive generate` simulates its sensors (simulator,
edge.drives.sim_hooks), and what the scheduler needs of it (the static policies that run it, what its own output
adds to a plan's score: plan_value, imported by the scheduler only).

Why the encoder is a "module:callable" string and not the factory itself: declaring a plugin (the registry, read
by bag I/O for the topic contract) must stay light, without torch or the encoders; the perception stack imports
the factory only when it builds the encoders (edge.encoders.stack.build_encoder). The decoder is a string for the
same reason: the synchroniser (edge.drives.sync) imports it when it plans a drive's topics, and so is the health
model: the context estimator (edge.runtime.health) imports it when it is built, and the simulator: only the generator
(edge.drives.generate) imports it.

Why callables for topics: topic names depend on the rig (one topic per ultrasonic sensor, one per fisheye camera),
while a bag read without a rig still needs the contract; `sensors(rig)` names a plugin's sensors on a rig and
`default_sensors` stands in when the rig is not known.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from edge.drives.topics import TopicSpec
from edge.errors import PluginError
from edge.names import Policy, StrEnum

if TYPE_CHECKING:  # the rig pulls in pydantic models and camera maths; declarations only need its type
    from edge.sensors.rig import Rig

NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a modality name is also a file stem, a report key and a CLI word
FACTORY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")  # "package.module:callable"


def lookup(ref: str) -> object:
    """The object a "package.module:attr.path" reference names, imported now (whatever the import raises)."""
    module, _, attr = ref.partition(":")
    obj: object = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def import_ref(ref: str, where: str) -> object:
    """`lookup`, with any failure (a third-party import may raise anything) as a PluginError naming `where`, so the
    caller can leave that plugin out and keep the others."""
    try:
        return lookup(ref)
    except Exception as exc:
        raise PluginError(where, f"failed to import: {type(exc).__name__}: {exc}") from None


class SyncKind(StrEnum):
    """How the frame clock (edge.drives.sync) takes a modality's messages for one frame."""

    NEAREST = "nearest"  # one message per frame: the one nearest the frame stamp within the slop, never reused
    WINDOW = "window"  # the messages covering a window before the frame stamp, concatenated (audio chunks)
    LATEST = "latest"  # latest value within the slop, reused by consecutive frames (range sensors)


class DecodeContext(Protocol):
    """What the synchroniser gives a decoder: its configuration and the drive's message definitions."""

    cfg: Any  # edge.drives.sync.SyncConfig (image_reduce, audio_window_s, ...)
    range_floats: int | None  # floats before Range.range in this drive's CDR (edge.drives.messages.range_cdr_floats)

    def message(self, payload: Any, msgtype: str) -> Any:
        """The message object: CDR bytes deserialised by the drive's own definitions, a message as it is."""


@dataclass(frozen=True)
class MessageDecoder:
    """How one modality's messages become its frame entry (edge.frames.Frame.data); what `ModalityPlugin.decoder`
    names. `decode(payload, msgtype, ctx)` turns one message (CDR bytes until needed, or a message object: use
    `ctx.message`) into its value; any exception loses that message only (counted as `undecodable`). The sync kind
    decides when it runs: `nearest` once per frame for the message used (in the image thread pool), `latest` per
    frame, `window` once per message as it arrives (the values, (rows, samples) arrays, are then joined).

    `types`: the message types it decodes; among the plugin's topics those with one of these types carry its data,
    in order of preference (image_raw before its /compressed form; camera_info is not data).
    `check(value, key, topic, stamp, ctx)`: optional, run in frame order after `decode` (formats: a stream's format
    is its first message's); returns the value to use or None to skip it, noting why on `ctx.log`.
    `fixed_size`: the topic's CDR has one size (a Range); a message of another size is another layout, skipped as
    `format`. `noun`: what a diagnostic calls one message ("image", "chunk")."""

    types: tuple[str, ...]
    decode: Callable[[Any, str, Any], Any]
    check: Callable[[Any, str, str, int, Any], Any] | None = None
    fixed_size: bool = False
    noun: str = "message"

    def data_topics(self, specs: tuple[TopicSpec, ...]) -> list[TopicSpec]:
        """The topics among `specs` that carry data it decodes, in the plugin's order of preference."""
        return [t for t in specs if set(t.types) & set(self.types)]


@dataclass(frozen=True)
class TokenSpec:
    """The tokens a modality hands the LLM per frame: (count, width), their slot meaning as a layout version
    (edge.token_layouts; an aligner trained on one layout is refused under another)."""

    count: int
    width: int
    layout: str


@dataclass(frozen=True)
class Scorer:
    """What one modality scores in `edge eval scheduler`; what `ModalityPlugin.scores` names. `score(frames)` takes
    a drive's frame records (frames.jsonl's, its `record` fields under its record key, its `truth` fields in "gt")
    and returns the result row's fields; `columns` are those the markdown table shows, (field, header, digits)."""

    score: Callable[[list[dict[str, Any]]], dict[str, Any]]
    columns: tuple[tuple[str, str, int], ...] = ()


@dataclass(frozen=True)
class ModalityPlugin:
    """One modality, as the core sees it. Validated on construction: a malformed declaration raises PluginError."""

    name: str  # modality name: Plan.modalities, report keys, tokens dict keys, aligner names
    sensors: Callable[[Rig], tuple[str, ...]]  # names of its sensors on a rig (() when topics do not depend on it)
    default_sensors: tuple[str, ...]  # its sensors when the rig is not known (a bag's contract read without one)
    topics: Callable[[tuple[str, ...]], tuple[TopicSpec, ...]]  # sensor names -> the topics it reads, with types
    sync: SyncKind
    bev: bool  # produces BEV features for fusion
    tokens: TokenSpec
    weights: str  # file name of its perception weights in a model directory (models/perception/<file>)
    health_streams: tuple[str, ...]  # keys of edge.runtime.context.Context.streams it is judged by
    # "module:callable" of its encoder factory, (cfg: PerceptionConfig, rig: Rig, table_cache: str | None) ->
    # edge.encoders.base.ModalityEncoder; imported by the perception stack, never at declaration
    encoder: str
    # "module:attribute" of its MessageDecoder (above); imported by the synchroniser, never at declaration
    decoder: str
    # its sensors in a recording, from the recording's topic names (range sensors named by their topics); None:
    # default_sensors
    recorded_sensors: Callable[[tuple[str, ...]], tuple[str, ...]] | None = None
    # the stream key of one sensor (Frame.source_stamps, missing, degradation spans, SyncConfig.reference); None:
    # "<name>/<sensor>"; a modality without sensors has the key "<name>"
    stream_key: Callable[[str], str] | None = None
    # "module:callable" of its health model factory, (edge.runtime.health.HealthSetup) -> HealthModel; imported by
    # the context estimator, never at declaration. None: present while its entry holds data
    health: str | None = None
    # the keep ratios its encoder runs at (its run-time setting, the camera's token pruning), the first its default;
    # with several, each is a stage of its own ("camera@0.5"), measured and planned (edge.runtime.stages)
    keep_ratios: tuple[float, ...] = (1.0,)
    # a BEV modality whose own BEV (what it alone sees) is the previous frame's witness handed to the health models
    # (edge.runtime.health: what range readings are checked against); the first that ran, in registry order
    witness: bool = False
    # the extras of its encoder's output (ModalityEncoder.run's, e.g. the audio event) written to each frame record
    # (frames.jsonl) under `record_key` (None: its name) when it ran, in this order; () writes none
    record: tuple[str, ...] = ()
    record_key: str | None = None
    # extras the runtime drops before handing its output on (FrameResult.extras): large maps made for training
    transient: tuple[str, ...] = ()
    # its fields of a frame record's ground truth ("gt"), from the frame's edge.frames.GroundTruth (recorded drives
    # only); None: none
    truth: Callable[[Any], dict[str, Any]] | None = None
    # "module:attribute" of its Scorer (above): what `edge eval scheduler` scores of its record fields against the
    # ground truth; imported by the evaluation, never at declaration. None: nothing scored
    scores: str | None = None
    # the static scheduling policies (edge.names.Policy, besides "all", which runs every modality) that run it: the
    # "camera" setup is every camera
    policies: tuple[str, ...] = ()
    # "module:callable" of its plan-value factory, (edge.runtime.plan_value.ValueSetup) -> PlanValue: what its own
    # output adds to a plan's score beyond the BEV map and the aligner sets' answers; imported by the scheduler,
    # never at declaration. None: nothing beyond those
    plan_value: str | None = None
    # "module:callable" of its simulator factory, (edge.drives.sim_hooks.SimSetup) -> SensorSimulator: its sensors
    # (and ground truth of its own) in the drives `edge drive generate` writes; imported by the generator, never at
    # declaration. None: its sensors are not simulated
    simulator: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.name, str) or not NAME.match(self.name):
            problems.append(f"name {self.name!r} is not a lower-case identifier")
        if not callable(self.sensors) or not callable(self.topics):
            problems.append("sensors and topics must be callables")
        if not isinstance(self.default_sensors, tuple) or not all(isinstance(s, str) for s in self.default_sensors):
            problems.append("default_sensors must be a tuple of str")
        if not isinstance(self.sync, SyncKind):
            problems.append(f"sync {self.sync!r} is not one of {', '.join(SyncKind)}")
        if not isinstance(self.bev, bool):
            problems.append("bev must be a bool")
        t = self.tokens
        if not isinstance(t, TokenSpec) or not (isinstance(t.count, int) and t.count > 0 and isinstance(t.width, int)
                                                 and t.width > 0 and isinstance(t.layout, str) and t.layout):
            problems.append(f"tokens {t!r} must be a TokenSpec with count > 0, width > 0 and a layout name")
        if not isinstance(self.weights, str) or not self.weights.endswith(".safetensors") or "/" in self.weights:
            problems.append(f"weights {self.weights!r} must be a file name ending in .safetensors")
        if not isinstance(self.health_streams, tuple) or not self.health_streams or \
                not all(isinstance(s, str) and s for s in self.health_streams):
            problems.append("health_streams must be a non-empty tuple of str")
        if not isinstance(self.encoder, str) or not FACTORY.match(self.encoder):
            problems.append(f"encoder {self.encoder!r} must be 'module:callable' (its encoder factory)")
        if not isinstance(self.decoder, str) or not FACTORY.match(self.decoder):
            problems.append(f"decoder {self.decoder!r} must be 'module:attribute' (its MessageDecoder)")
        if self.health is not None and (not isinstance(self.health, str) or not FACTORY.match(self.health)):
            problems.append(f"health {self.health!r} must be 'module:callable' (its health model factory) or None")
        if not isinstance(self.keep_ratios, tuple) or not self.keep_ratios or len(set(self.keep_ratios)) != len(
                self.keep_ratios) or not all(isinstance(k, float) and 0.0 < k <= 1.0 for k in self.keep_ratios):
            problems.append(f"keep_ratios {self.keep_ratios!r} must be a non-empty tuple of distinct floats in (0, 1]")
        if not isinstance(self.witness, bool) or self.witness and self.bev is not True:
            problems.append(f"witness {self.witness!r} must be a bool, True only for a BEV modality")
        for field_name in ("record", "transient"):
            value = getattr(self, field_name)
            if not isinstance(value, tuple) or not all(isinstance(k, str) and k for k in value) or \
                    len(set(value)) != len(value):
                problems.append(f"{field_name} {value!r} must be a tuple of distinct extra names")
        if set(self.record) & set(self.transient):
            problems.append("an extra in record cannot be transient")
        if self.record_key is not None and (not isinstance(self.record_key, str) or not NAME.match(self.record_key)):
            problems.append(f"record_key {self.record_key!r} must be a lower-case identifier or None")
        if self.truth is not None and not callable(self.truth):
            problems.append("truth must be a callable or None")
        if self.scores is not None and (not isinstance(self.scores, str) or not FACTORY.match(self.scores)):
            problems.append(f"scores {self.scores!r} must be 'module:attribute' (its Scorer) or None")
        if self.simulator is not None and (not isinstance(self.simulator, str) or not FACTORY.match(self.simulator)):
            problems.append(f"simulator {self.simulator!r} must be 'module:callable' (its simulator factory) or None")
        static = sorted(set(Policy) - {Policy.ADAPTIVE, Policy.ALL})
        if not isinstance(self.policies, tuple) or not all(p in static for p in self.policies):
            problems.append(f"policies {self.policies!r} must be a tuple of static policies ({', '.join(static)})")
        if self.plan_value is not None and (not isinstance(self.plan_value, str) or not FACTORY.match(self.plan_value)):
            problems.append(f"plan_value {self.plan_value!r} must be 'module:callable' (its plan-value factory) "
                            "or None")
        if self.recorded_sensors is not None and not callable(self.recorded_sensors) or \
                self.stream_key is not None and not callable(self.stream_key):
            problems.append("recorded_sensors and stream_key must be callables or None")
        if problems:
            raise PluginError(f"modality {self.name!r}", "; ".join(problems))

    @property
    def per_sensor(self) -> bool:
        """Its frame entry is a dict sensor -> value (one stream per sensor), else the one stream's value."""
        return self.recorded_sensors is not None or bool(self.default_sensors)

    def topics_for(self, rig: Rig | None = None) -> tuple[TopicSpec, ...]:
        """The topics it reads on this rig (None: the rig is not known, its default sensors)."""
        return self.topics(self.default_sensors if rig is None else self.sensors(rig))

    @property
    def record_name(self) -> str:
        """The frame record's key its `record` fields go under."""
        return self.record_key or self.name

    def key(self, sensor: str | None) -> str:
        """The stream key of one of its sensors (None: a modality without sensors)."""
        if sensor is None:
            return self.name
        return self.stream_key(sensor) if self.stream_key is not None else f"{self.name}/{sensor}"
