"""The frame: one time-aligned set of sensor data, keyed by modality name, the hand-off from sync to everything else.

Why a mapping and not one field per modality: a modality is a plugin (edge.modalities), so the frame cannot name
them; an installed fifth one (LiDAR) gets its entry without a change here. Each entry is what that modality's
decoder (`ModalityPlugin.decoder`) made of its messages, shaped by its sync kind (docs/plugins.md):
- `nearest` and `latest` modalities: a dict sensor name -> decoded value, None for a sensor missing in this frame
  (fisheye: {"front": image, ...}; ultrasonic: {"<sensor>": reading}; camera: {"front": image});
- `window` modalities: the window's array, None when the window is not covered (audio: (channels, samples) int16).
A modality registered but absent from the drive still has its entry (sensors all None, or None), so consumers read
`frame.data[name]` / `frame.get(name)` and find "missing" the same way as a gap.

This module sits below drives, encoders and the runtime and imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass
class GroundTruth:
    """Ground truth recorded in a generated drive, nearest the frame stamp (docs/drives.md)."""

    bev: dict[str, Any] | None = None            # decode_occupancy_grid()
    objects: list[dict[str, Any]] | None = None  # decode_marker_array_boxes()
    audio_events: list[dict[str, Any]] | None = None
    qa: list[Any] = field(default_factory=list)  # QA JSON objects attached to this frame
    conditions: Any | None = None


@dataclass
class Frame:
    """One time-aligned set. None / absence from a dict value means *missing*; `missing` lists those stream keys."""

    stamp_ns: int
    data: dict[str, Any]                 # modality name -> its entry (see the module docstring)
    odometry: dict[str, Any] | None
    ground_truth: GroundTruth | None
    source_stamps: dict[str, int]        # stream key ("fisheye/front", "ultrasonic/<name>", "audio", ...) -> stamp
    missing: list[str]

    def present(self, key: str) -> bool:
        """Whether the stream `key` contributed data to this frame."""
        return key in self.source_stamps

    def get(self, modality: str, default: Any = None) -> Any:
        """The entry of `modality`, or `default` when no such modality is registered."""
        return self.data.get(modality, default)

    def sensor(self, modality: str, sensor: str) -> Any:
        """One sensor's value of a per-sensor modality (None: missing, or no such modality / sensor)."""
        entry = self.data.get(modality)
        return entry.get(sensor) if isinstance(entry, dict) else None

    def with_data(self, **entries: Any) -> Frame:
        """A copy with these modalities' entries replaced (the others shared)."""
        return replace(self, data={**self.data, **entries})
