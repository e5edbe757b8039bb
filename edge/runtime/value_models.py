"""The built-ins' plan-value models (`ModalityPlugin.plan_value`, edge.runtime.plan_value): what audio's event head
and the front camera's lighting head add to a plan's score. The terms the scheduler's score had written out for
them, with the same figures and arithmetic (in the same order: the scores are identical)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge.runtime.plan_value import Scene, ValueSetup

if TYPE_CHECKING:
    from edge.runtime.context import Context

# What audio is worth while an event is likely, and otherwise, times its event and direction accuracy.
EVENT_WEIGHT, QUIET_WEIGHT = 0.6, 0.05
EVENT_RISE_DB = 10.0  # an event is likely when the level is this far above its running background

# What the front camera's own output (its lighting head) is worth without an LLM, against obstacle IoU (0..1): a tie
# breaker (about 20 ms of compute at the default quality_per_ms). At 0.15 it outweighed the difference between the
# BEV modalities (fisheye 0.72 against ultrasonic 0.66 IoU by day), so at 40 ms every plan carried the camera to
# the budget's edge and was left over it, while the evaluation (and a user) judge the map (issue 16: IoU 0.13 of
# the oracle's 0.72, the camera on 82 % of frames); the context reads the lighting from brightness anyway.
CAMERA_ALONE_WEIGHT = 0.02
SIGHT = {"day": 1.0, "dusk": 0.5, "night": 0.05}  # how much of its worth the front camera keeps in each lighting
GLARE_SIGHT = 0.2  # and under glare


class AudioEvents:
    """Audio's event and direction heads, worth most while an event is likely: the level well above its running
    background (`eventful`, updated by `observe`)."""

    def __init__(self, setup: ValueSetup) -> None:
        self.stream = setup.plugin.name
        self.event, self.direction = setup.figure("audio_event"), setup.figure("audio_direction")
        self.baseline_db: float | None = None
        self.eventful = False

    def observe(self, ctx: Context) -> None:
        """Frames without audio (its window still filling, the microphones silent) say nothing about the background:
        taken as its first value, the -120 dB of "no audio" made every later frame an event, for good (the
        background follows quiet frames only), and audio was worth an event's weight all drive long (issue 16's
        40 ms runs)."""
        health = ctx.streams.get(self.stream)
        if health is None or not health.healthy:
            self.eventful = False
            return
        level = ctx.audio_level_db
        if self.baseline_db is None:
            self.baseline_db = level
        self.eventful = level > self.baseline_db + EVENT_RISE_DB
        if not self.eventful:  # the background follows quiet periods only
            self.baseline_db = 0.98 * self.baseline_db + 0.02 * level

    def value(self, keep: float, scene: Scene) -> float:
        return (EVENT_WEIGHT if self.eventful else QUIET_WEIGHT) * self.event * self.direction

    def cue(self, ctx: Context) -> str | None:
        return f"audio level {ctx.audio_level_db:.0f} dB"


class FrontCamera:
    """The front camera's lighting head, worth something only without an LLM: with one, the camera is there for
    its tokens, and what they are worth is the measured accuracy of the aligner sets that read them."""

    def __init__(self, setup: ValueSetup) -> None:
        self.glare_keys = tuple(f"{setup.plugin.name}/{s}" for s in setup.plugin.default_sensors)
        self.lighting = setup.figure("camera_lighting")

    def observe(self, ctx: Context) -> None:
        """Nothing kept between frames."""

    def value(self, keep: float, scene: Scene) -> float:
        if scene.llm:
            return 0.0
        sight = SIGHT[scene.lighting]
        if any(k in scene.ctx.glare_cameras for k in self.glare_keys):
            sight *= GLARE_SIGHT
        return CAMERA_ALONE_WEIGHT * sight * self.lighting * (0.9 + 0.1 * keep)

    def cue(self, ctx: Context) -> str | None:
        return None

