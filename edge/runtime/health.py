"""The health-model hook: how a modality plugin tells the context estimator what its data looked like this frame.

A plugin names the factory of its health model (`ModalityPlugin.health`, "module:callable", imported here, never
when the plugin is declared); the factory gets a `HealthSetup` (its plugin, the rig, the BEV grid) and returns a
`HealthModel`. Each frame, `edge.runtime.context.ContextEstimator` hands every model its frame entry, the frame's
source stamps and the witness (the previous frame's BEV obstacles), and counts staleness and dropout of the streams
from what the models observed: the same windows for every stream, as the scheduler's notion of healthy is one rule.
The built-ins' models are in edge.runtime.health_models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from edge.errors import PluginError
from edge.modalities.interface import import_ref

if TYPE_CHECKING:  # annotations only: edge.runtime.context imports this module
    from edge.kernels.grid import BevGrid
    from edge.modalities.interface import ModalityPlugin
    from edge.runtime.context import CameraHealth
    from edge.runtime.plausibility import ObstacleView
    from edge.sensors.rig import Rig

PRESENCE = "edge.runtime.health_models:presence"  # the model of a plugin that names none


@dataclass(frozen=True)
class Observation:
    """What one health stream delivered this frame: valid data (and its header stamp), and whether it lies."""

    valid: bool
    stamp_ns: int | None = None  # the newest valid data's stamp; None: none this frame
    implausible: bool = False  # delivers, but most of it is implausible: unhealthy while it lasts


@dataclass(frozen=True)
class HealthUpdate:
    """One model's result for one frame."""

    streams: dict[str, Observation]  # its health streams (ModalityPlugin.health_streams) -> this frame's observation
    images: dict[str, CameraHealth] = field(default_factory=dict)  # "<name>/<sensor>" -> its image (Context.cameras)
    implausible: tuple[str, ...] = ()  # "<name>/<sensor>" whose data to treat as missing now (Context.implausible)
    level_db: float | None = None  # a sound level, dB full scale (Context.audio_level_db: the loudest reported)


class HealthModel(Protocol):
    """A modality's health model; it may keep state across frames (frames come in time order)."""

    @property
    def diagnostics(self) -> list[str]:
        """One line per sensor that went implausible, first occurrence each."""

    def update(self, stamp_ns: int, entry: object, source_stamps: Mapping[str, int],
               witness: ObstacleView | None) -> HealthUpdate:
        """`entry`: its frame entry (edge.frames.Frame.data[name]); `witness`: what the BEV saw on the previous
        frame (None: nothing yet)."""

    def degradations(self) -> list[dict[str, Any]]:
        """Its implausible spans so far, open ones included, as the report's degradation records."""


@dataclass(frozen=True)
class HealthSetup:
    """What a health model factory gets."""

    plugin: ModalityPlugin
    rig: Rig | None = None  # None: not known (a throwaway estimator, a test)
    grid: BevGrid | None = None  # the grid witnesses come on (None: not known yet)


HealthFactory = Callable[[HealthSetup], HealthModel]


def build_health_model(setup: HealthSetup) -> HealthModel:
    """The model the plugin's `health` names (PRESENCE when it names none); PluginError naming the plugin when it
    cannot be imported or built."""
    ref = setup.plugin.health or PRESENCE
    where = f"'{setup.plugin.name}' (health {ref})"
    factory: Any = import_ref(ref, where)
    try:
        return factory(setup)
    except Exception as exc:
        raise PluginError(where, f"failed to build: {type(exc).__name__}: {exc}") from None
