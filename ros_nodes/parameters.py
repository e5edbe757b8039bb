"""The runtime node's ROS parameters, all made from edge.config.RuntimeConfig (the one source of the options).

From each field that the node reads: a declared parameter with type, description and range (ParameterDescriptor),
the shipped parameters file `config/runtime.param.yaml` (defaults) and its JSON schema `config/runtime.schema.json`
(Autoware's layout: the file's `/**: ros__parameters:` block refers to a definition), and the table of docs/ros.md.
Regenerate them after changing RuntimeConfig with `python -m ros_nodes.parameters`; tests/test_ros_parameters.py
fails while they are stale.

ROS parameters cannot be null: an optional text option (llm, rig, engine_cache) is an empty string when unset.
"""

from __future__ import annotations

import json
import sys
import typing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from edge.config import RuntimeConfig, options, parse_model

NODE_NAME = "mpnp_edge_runtime"
CONFIG_DIR = Path(__file__).resolve().parent / "config"
PARAM_FILE = CONFIG_DIR / "runtime.param.yaml"
SCHEMA_FILE = CONFIG_DIR / "runtime.schema.json"
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


@dataclass(frozen=True)
class Option:
    name: str
    kind: type  # bool, int, float or str: the ROS parameter type
    default: Any  # as a ROS parameter holds it ("" for None)
    description: str
    minimum: float | None
    maximum: float | None
    choices: tuple[str, ...] | None
    dynamic: bool  # may change while the node is active; the others only while it is unconfigured


def node_options() -> list[Option]:
    out = []
    for name, f in options("node").items():
        args = [a for a in typing.get_args(f.annotation) if a is not type(None)]
        choices = tuple(args) if typing.get_origin(f.annotation) is typing.Literal else None
        if isinstance(f.annotation, type) and issubclass(f.annotation, Enum):  # edge.names: a string parameter
            choices = tuple(m.value for m in f.annotation)
        kind = str if choices or f.annotation in (str, str | None) else f.annotation
        default = f.default.value if isinstance(f.default, Enum) else f.default
        lo = next((m.ge for m in f.metadata if hasattr(m, "ge")), None)  # pydantic's Field(ge=..., le=...)
        hi = next((m.le for m in f.metadata if hasattr(m, "le")), None)
        out.append(Option(name, kind, "" if default is None else default, f.description or "", lo, hi, choices,
                          bool((f.json_schema_extra or {}).get("dynamic"))))
    return out


def validate(values: dict[str, Any], source: str) -> RuntimeConfig:
    """The parameters as a RuntimeConfig; ConfigError names the key at fault."""
    return parse_model(values, RuntimeConfig, source)


# ---------------------------------------------------------------- generated files
def json_schema() -> dict[str, Any]:
    props: dict[str, Any] = {}
    for o in node_options():
        p: dict[str, Any] = {"type": _JSON_TYPES[o.kind], "description": o.description, "default": o.default}
        if o.choices:
            p["enum"] = list(o.choices)
        if o.minimum is not None:
            p["minimum"] = o.minimum
        if o.maximum is not None:
            p["maximum"] = o.maximum
        props[o.name] = p
    block = {"type": "object", "properties": props, "additionalProperties": False}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": f"Parameters of {NODE_NAME} (edge node); generated from edge.config.RuntimeConfig",
        "type": "object",
        "definitions": {NODE_NAME: block},
        "properties": {"/**": {"type": "object", "properties": {"ros__parameters": {"$ref": f"#/definitions/{NODE_NAME}"}},
                               "required": ["ros__parameters"], "additionalProperties": False}},
        "required": ["/**"],
        "additionalProperties": False,
    }


def param_yaml() -> str:
    head = ("# Parameters of the mpnp_edge runtime node (edge node), with their defaults; schema: runtime.schema.json.\n"
            "# Generated from edge.config.RuntimeConfig by `python -m ros_nodes.parameters`. Every key is optional.\n")
    body = yaml.safe_dump({"/**": {"ros__parameters": {o.name: o.default for o in node_options()}}},
                          sort_keys=False, default_flow_style=False)
    return head + body


DOCS = Path(__file__).resolve().parents[1] / "docs" / "ros.md"
TABLE_START, TABLE_END = "<!-- parameters: python -m ros_nodes.parameters -->", "<!-- end of parameters -->"


def write_files() -> None:
    """The parameters file, the schema and the table of docs/ros.md (between its markers)."""
    CONFIG_DIR.mkdir(exist_ok=True)
    SCHEMA_FILE.write_text(json.dumps(json_schema(), indent=2) + "\n")
    PARAM_FILE.write_text(param_yaml())
    doc = DOCS.read_text()
    head, rest = doc.split(TABLE_START)
    DOCS.write_text(f"{head}{TABLE_START}\n{markdown_table()}\n{TABLE_END}{rest.split(TABLE_END)[1]}")


def markdown_table() -> str:
    """The parameter table of docs/ros.md."""
    rows = ["| parameter | type | default | range / values | changes at runtime | description |",
            "|---|---|---|---|---|---|"]
    for o in node_options():
        rng = ", ".join(o.choices) if o.choices else (
            f"[{o.minimum:g}, {o.maximum:g}]" if o.minimum is not None and o.maximum is not None else "")
        default = json.dumps(o.default)
        rows.append(f"| `{o.name}` | {o.kind.__name__} | `{default}` | {rng} | {'yes' if o.dynamic else 'no'} "
                    f"| {o.description} |")
    return "\n".join(rows)


# ---------------------------------------------------------------- rclpy
def descriptor(o: Option) -> Any:
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

    types = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
             float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
    d = ParameterDescriptor(name=o.name, type=types[o.kind], description=o.description)
    d.additional_constraints = ("one of: " + ", ".join(o.choices) if o.choices else "") + (
        "" if o.dynamic else ("; " if o.choices else "") + "read at configure: set it while unconfigured")
    if o.kind is int and o.minimum is not None:
        d.integer_range = [IntegerRange(from_value=int(o.minimum), to_value=int(o.maximum), step=1)]
    elif o.kind is float and o.minimum is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(o.minimum), to_value=float(o.maximum), step=0.0)]
    return d


def declare(node: Any) -> dict[str, str]:
    """Declare every option on `node`, taking the values of --params-file / -p; returns {key: problem} for the
    values that could not be taken (wrong type, out of range, unknown key), so configure can fail naming them."""
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    overrides = getattr(node, "_parameter_overrides", {})  # rclpy's store of the given values (no public getter)
    problems: dict[str, str] = {}
    for o in node_options():
        given = overrides.get(o.name)
        try:
            if o.kind is float and given is not None and type(given.value) is int:  # YAML's `100` for 100.0
                node.declare_parameter(o.name, float(given.value), descriptor(o), ignore_override=True)
            else:
                node.declare_parameter(o.name, o.default, descriptor(o))
        except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
            problems[o.name] = f"{given.value!r} not accepted ({exc})"
            node.declare_parameter(o.name, o.default, descriptor(o), ignore_override=True)
    for name in overrides:
        if not node.has_parameter(name):
            problems[name] = "unknown key (not a parameter of this node; see config/runtime.schema.json)"
    return problems


def current_values(node: Any) -> dict[str, Any]:
    return {o.name: node.get_parameter(o.name).value for o in node_options()}


if __name__ == "__main__":
    write_files()
    print(f"wrote {PARAM_FILE}, {SCHEMA_FILE} and the table in {DOCS}", file=sys.stderr)
