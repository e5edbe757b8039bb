"""Strict YAML configuration: unknown keys and bad values are errors naming the file and the key.

`RuntimeConfig` holds the runtime's options once for both front ends: the YAML of `edge run --config` and the ROS
parameters of `edge node` (ros_nodes/parameters.py makes the parameter descriptors, the JSON schema and the shipped
`*.param.yaml` from it). A ROS 2 parameters file (`<node>: {ros__parameters: {...}}`) is read as its mapping, so one
file serves both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge.errors import ConfigError
from edge.names import BackendName, Policy

ModelT = TypeVar("ModelT", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every configuration section: unknown keys are rejected, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _key_path(loc: tuple[object, ...]) -> str:
    return ".".join(str(p) for p in loc) or "<root>"


def parse_model(data: object, model: type[ModelT], source: str | Path) -> ModelT:
    """Validate already-parsed YAML data; errors become ConfigError naming `source` and the key path."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        problem = first["msg"]
        if first["type"] == "extra_forbidden":
            problem = "unknown key"
        elif first["type"] == "missing":
            problem = "missing value"
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(source, _key_path(tuple(first["loc"])), problem + more) from None


def load_yaml_model(path: str | Path, model: type[ModelT]) -> ModelT:
    """Read a YAML file and validate it against `model`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "<file>", "file not found") from None
    except OSError as exc:
        raise ConfigError(path, "<file>", f"cannot be read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(path, "<syntax>", f"invalid YAML{where}") from None
    if data is None:
        data = {}  # an empty file (or only comments): every key keeps its default
    if not isinstance(data, dict):
        raise ConfigError(path, "<root>", "expected a mapping at the top level")
    return parse_model(unwrap_ros_parameters(data), model, path)


def unwrap_ros_parameters(data: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a ROS 2 parameters file with one node entry (`/**:` or a node name); other data as is."""
    if len(data) == 1:
        (entry,) = data.values()
        if isinstance(entry, dict) and set(entry) == {"ros__parameters"}:
            return entry["ros__parameters"] or {}
    return data


REPO = Path(__file__).resolve().parents[1]
CHECKOUT_DIRS = {"perception_dir": REPO / "models" / "perception", "aligner_dir": REPO / "models" / "aligners"}
CameraTransport = Literal["auto", "raw", "compressed"]


def _opt(description: str, *, dynamic: bool = False, scope: str = "both") -> dict[str, Any]:
    """Field metadata: `dynamic` options may change while the node runs; `scope` is "both", "run" or "node"."""
    return {"description": description, "json_schema_extra": {"dynamic": dynamic, "scope": scope}}


class RuntimeConfig(StrictModel):
    """Every option of the runtime; each key is optional. Read by `edge run --config` and `edge node`.

    A field's `scope` says which front end reads it. `edge run` accepts a node-only key (so that one parameters
    file serves both) and says on stderr that it ignores it when it is set; the node refuses run-only keys."""

    model_config = ConfigDict(allow_inf_nan=False)  # every number is bounded: NaN is named as such, not as a bound

    perception_dir: str = Field("", **_opt("perception checkpoints; empty = models/perception of the checkout"))
    aligner_dir: str = Field("", **_opt("aligner checkpoints; empty = models/aligners of the checkout"))
    llm: str | None = Field(None, **_opt("LLM: a Hugging Face directory or a GGUF file; empty = the embedded SmolLM2"))
    use_llm: bool = Field(True, **_opt("load the LLM and answer questions; false = perception and scheduling only"))
    policy: Policy = Field(
        Policy.ADAPTIVE, **_opt("modality policy: adaptive (the scheduler) or a static baseline", dynamic=True))
    backend: BackendName = Field(BackendName.EAGER, **_opt(
        "encoders' network parts on eager PyTorch, ONNX Runtime or TensorRT (engines built at start)"))
    engine_cache: str | None = Field(None, **_opt("compiled engines with manifests; empty = .cache/engines of the checkout"))
    budget_ms: float = Field(100.0, ge=1.0, le=10000.0, **_opt("latency budget per frame, ms", dynamic=True))
    budget_percentile: float = Field(95.0, ge=50.0, le=100.0, **_opt("percentile of frame latency held to budget_ms"))
    budget_mb: float = Field(2048.0, ge=1.0, le=1_000_000.0, **_opt("memory budget of the encoders, MB", dynamic=True))
    answer_budget_ms: float = Field(1000.0, ge=1.0, le=600_000.0, **_opt(
        "answering budget, question asked to answer ready, ms"))
    answer_nice: int = Field(10, ge=0, le=19, **_opt(
        "how much lower the LLM thread's OS priority is than the frames' (Linux nice); 0 = the same"))
    max_estimate_age_s: float = Field(5.0, ge=0.1, le=60.0, **_opt(
        "no plan rests longer on a cost estimate nobody re-measured, s"))
    max_plan_changes_per_min: int = Field(6, ge=1, le=600, **_opt(
        "plan changes per minute, paced: a voluntary one waits for the rate; forced ones happen at once and count"))
    adapt_threads: bool = Field(True, **_opt("eager encoders: a plan may choose 1 thread (under contention) or all"))
    dwell_frames: int = Field(5, ge=1, le=1000, **_opt(
        "frames a better plan must stay better before the scheduler switches to it", dynamic=True))
    quality_per_ms: float = Field(1e-3, ge=0.0, le=1.0, **_opt(
        "what a millisecond of compute is worth in quality (IoU) units; 0 = quality only", dynamic=True))
    answer_weight: float = Field(1.0, ge=0.0, le=10.0, **_opt(
        "weight of expected answer accuracy against obstacle IoU in the scheduler's score", dynamic=True,
        scope="node"))
    questions_every_s: float = Field(5.0, ge=0.01, le=3600.0, **_opt(
        "question rate: edge run asks a recorded question this often; the node answers at most one question this "
        "often and refuses the others with a reason", dynamic=True))
    ask_all_questions: bool = Field(False, **_opt(
        "ask every recorded QA item (evaluation) instead of one every questions_every_s", scope="run"))
    max_new_tokens: int = Field(8, ge=1, le=256, **_opt("most tokens generated per answer"))
    max_frames: int | None = Field(None, ge=1, **_opt("stop after this many frames", scope="run"))
    rig: str | None = Field(None, **_opt("rig calibration YAML; empty = calibration/default_rig.yaml"))
    max_input_delay_s: float = Field(0.1, ge=0.0, le=2.0, **_opt(
        "how long a frame waits for sensor messages stamped before it that are still on their way (reordering "
        "window, s): frames leave this much after their stamp; later messages are dropped and counted", scope="node"))
    max_input_lag_s: float = Field(1.0, ge=0.0, le=60.0, **_opt(
        "how far behind the present the node may work (s of stamp time): a sensor message stamped more than this "
        "before the latest one received on its stream is skipped and counted; 0 = never skip, every message in "
        "order (evaluation replays)", dynamic=True, scope="node"))
    camera_transport: CameraTransport = Field("auto", **_opt(
        "camera topics: raw sensor_msgs/Image on <base>, CompressedImage on <base>/compressed (image_transport), or "
        "auto: the form that is published (raw preferred), else the first to deliver", scope="node"))
    autostart: bool = Field(True, **_opt(
        "configure and activate at start; false = wait for the lifecycle services (managed)", scope="node"))

    @field_validator("perception_dir", "aligner_dir")
    @classmethod
    def _checkout_default(cls, value: str, info: Any) -> str:
        """Empty means the directory of the checkout, not of the working directory (ros2 launch runs anywhere)."""
        return value or str(CHECKOUT_DIRS[info.field_name])

    @field_validator("llm", "engine_cache", "rig", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


def options(scope: str) -> dict[str, Any]:
    """RuntimeConfig's fields that `scope` ("run" or "node") reads, in declaration order."""
    return {name: f for name, f in RuntimeConfig.model_fields.items()
            if (f.json_schema_extra or {}).get("scope", "both") in ("both", scope)}
