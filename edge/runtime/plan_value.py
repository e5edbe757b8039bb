"""What a modality's own output adds to a plan's score, as its plugin declares it (`ModalityPlugin.plan_value`).

The scheduler scores a plan by the obstacle map its BEV modalities make (the perception evaluation's IoU per
subset), the answers of the aligner set it attaches, less its compute. A modality whose output is worth something
of its own (an audio event, the front camera's lighting head) says how much through its plan-value model, built once
per scheduler from the factory its plugin names. Why a model and not a declared weight: the built-ins' worth
depends on the context (an event heard, the lighting, glare on the lens) and, for audio, on what it heard before
(its running background level).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from edge.errors import EdgeError, PluginError
from edge.modalities.interface import ModalityPlugin, import_ref

if TYPE_CHECKING:  # annotations only: the context pulls in OpenCV
    from edge.runtime.context import Context

LIGHTINGS = ("day", "dusk", "night")  # the lightings the measured tables have; any other is scored as night


@dataclass(frozen=True)
class Scene:
    """What a plan is scored in: the context, its lighting as one of LIGHTINGS, and whether an LLM's aligner sets
    read the tokens (then what tokens are worth is the sets' measured accuracy, not the model's)."""

    ctx: Context
    lighting: str
    llm: bool


@dataclass(frozen=True)
class ValueSetup:
    """What a plan-value factory is given: its plugin, and the perception evaluation's accuracy of each output
    (`QualityTable.figures`: "audio_event", "camera_lighting", ...) read from `source`."""

    plugin: ModalityPlugin
    figures: Mapping[str, float]
    source: str = ""

    def figure(self, key: str) -> float:
        """One measured accuracy; missing, the table was not made for this plugin: said at start-up, not guessed."""
        if key not in self.figures:
            raise EdgeError(f"{self.source or 'the quality table'}: not a perception evaluation with '{key}' "
                            f"(what modality '{self.plugin.name}' is scored by)")
        return self.figures[key]


class PlanValue(Protocol):
    """A modality's worth in a plan (quality units: IoU, exact match, 0..1), built by its plugin's factory."""

    def observe(self, ctx: Context) -> None:
        """Once per scheduler step, before any plan is scored (what the model keeps of the contexts it saw)."""

    def value(self, keep: float, scene: Scene) -> float:
        """What its output adds to a plan that runs it at this keep ratio."""

    def cue(self, ctx: Context) -> str | None:
        """What the reason of a change that adds it says of the context (None: nothing)."""


def build_values(plugins: Iterable[ModalityPlugin], figures: Mapping[str, float],
                 source: str = "") -> dict[str, PlanValue]:
    """One model per plugin declaring `plan_value`, in the plugins' order (the order the scheduler adds the terms
    in). A factory that cannot be imported or built stops the scheduler's construction: a term left out silently
    would change every choice."""
    models: dict[str, PlanValue] = {}
    for p in plugins:
        if p.plan_value is None:
            continue
        factory = import_ref(p.plan_value, f"modality {p.name!r}")
        if not callable(factory):
            raise PluginError(f"modality {p.name!r}", f"plan_value {p.plan_value} is not callable")
        models[p.name] = factory(ValueSetup(p, figures, source))
    return models
