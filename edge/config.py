"""Strict YAML configuration loading: unknown keys and bad values are errors naming the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from edge.errors import ConfigError

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
    if not isinstance(data, dict):
        raise ConfigError(path, "<root>", "expected a mapping at the top level")
    return parse_model(data, model, path)
