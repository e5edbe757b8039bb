"""The engine cache: one engine file per (module, variant, backend) slot, with a JSON manifest beside it.

    .cache/engines/fisheye.onnxruntime.onnx        the engine (ONNX protobuf / raw TensorRT plan: no pickle)
    .cache/engines/fisheye.onnxruntime.json        {"key", "fields", "file", "file_sha256", "file_bytes", ...}

A cached engine is used only when its manifest parses, the manifest's key is the hash of its own fields, those
fields equal the ones computed now, and the engine file's sha256 equals the manifest's. Anything else is logged
(naming the file and what differed) and the engine is rebuilt; a damaged or stale engine is never used.

Why one slot per (module, variant, backend) rather than one file per key: a key change then replaces the old
engine (the cache does not grow with every retraining), and the log can say which field changed.
Writes go to a temporary file renamed into place, the manifest last, so a reader never sees a half-written engine
with a valid manifest (a crash in between leaves a hash mismatch, which is rebuilt).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.backends.key import field_diff, key_of

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "engines"
MANIFEST_KEYS = ("key", "fields", "file", "file_sha256")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Slot:
    """Where one engine and its manifest live."""

    engine: Path
    manifest: Path

    @property
    def tmp(self) -> Path:
        return self.engine.with_name(self.engine.name + f".tmp{os.getpid()}")


class EngineCache:
    """Directory of engines with manifests (default `.cache/engines/` at the repository root)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else DEFAULT_CACHE_DIR

    def slot(self, module: str, variant: str, backend: str, suffix: str) -> Slot:
        stem = f"{module}-{variant}" if variant else module
        return Slot(self.root / f"{stem}.{backend}{suffix}", self.root / f"{stem}.{backend}.json")

    def lookup(self, slot: Slot, fields: dict[str, Any]) -> dict[str, Any] | None:
        """The manifest if the cached engine in `slot` is valid for `fields`; None (after logging why) if not."""
        if not slot.manifest.exists() and not slot.engine.exists():
            return None
        problem = self._problem(slot, fields)
        if problem is None:
            return json.loads(slot.manifest.read_text())
        log.warning("engine cache: %s: %s; rebuilding", slot.engine, problem)
        return None

    def _problem(self, slot: Slot, fields: dict[str, Any]) -> str | None:
        if not slot.manifest.exists():
            return f"no manifest {slot.manifest.name} beside it"
        try:
            manifest = json.loads(slot.manifest.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return f"manifest {slot.manifest.name} unreadable ({exc.__class__.__name__}: {exc})"
        if not isinstance(manifest, dict) or any(k not in manifest for k in MANIFEST_KEYS) \
                or not isinstance(manifest["fields"], dict):
            return f"manifest {slot.manifest.name} lacks one of {', '.join(MANIFEST_KEYS)}"
        if key_of(manifest["fields"]) != manifest["key"]:
            return f"manifest {slot.manifest.name} was altered (its key is not the hash of its fields)"
        if manifest["file"] != slot.engine.name:
            return f"manifest {slot.manifest.name} describes {manifest['file']!r}, not this file"
        diff = field_diff(manifest["fields"], fields)
        if diff:
            return "stale: " + "; ".join(diff)
        if not slot.engine.exists():
            return "engine file missing"
        actual = sha256_file(slot.engine)
        if actual != manifest["file_sha256"]:
            return (f"file sha256 {actual[:12]}.. differs from the manifest's {str(manifest['file_sha256'])[:12]}.. "
                    f"(damaged or replaced)")
        return None

    def commit(self, slot: Slot, built: Path, fields: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        """Move a built (and verified) engine into its slot and write its manifest; returns the manifest."""
        self.root.mkdir(parents=True, exist_ok=True)
        digest = sha256_file(built)
        manifest = {"key": key_of(fields), "fields": fields, "file": slot.engine.name, "file_sha256": digest,
                    "file_bytes": built.stat().st_size,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **extra}
        slot.manifest.unlink(missing_ok=True)  # never a new engine beside an old manifest that still matches
        os.replace(built, slot.engine)
        tmp = slot.manifest.with_name(slot.manifest.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(tmp, slot.manifest)
        return manifest

    def remove(self, slot: Slot) -> None:
        for p in (slot.engine, slot.manifest, slot.tmp):
            p.unlink(missing_ok=True)
