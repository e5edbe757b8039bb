"""Named drive scenarios: layout, lighting over time, sun glare, audio events, manoeuvres.

A scenario is pure data; `edge.drives.world.build_world` turns it and a seed into a concrete scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge.errors import EdgeError


@dataclass(frozen=True)
class Scenario:
    name: str
    layout: str  # "parking", "street" or "yard"
    description: str
    # Daylight level keyframes (fraction of the drive, level): 1 = day, ~0.35 = dusk, 0 = night.
    daylight: tuple[tuple[float, float], ...] = ((0.0, 1.0), (1.0, 1.0))
    # Low sun: (azimuth relative to the route direction, elevation), radians; None = sun high, no glare.
    glare_sun: tuple[float, float] | None = None
    # Siren events as (start fraction, duration seconds); the source is an emergency vehicle.
    sirens: tuple[tuple[float, float], ...] = ()
    # Horn events as start fractions (each a short burst from a nearby vehicle).
    horns: tuple[float, ...] = ()
    # Reverse manoeuvres as start fractions (stop, reverse a few metres, go on).
    reversals: tuple[float, ...] = ()
    cruise_speed: float = 2.5  # m/s


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("parking-day", "parking", "Parking lot by day: parked cars, pillars, pedestrians; reverses once.",
                 reversals=(0.45,), horns=(0.7,)),
        Scenario("parking-night", "parking", "The parking lot at night: headlights, sensor noise.",
                 daylight=((0.0, 0.0), (1.0, 0.0)), reversals=(0.5,)),
        Scenario("street-day", "street", "Urban street by day: parked and moving cars, cyclists, crossings.",
                 cruise_speed=6.0, horns=(0.6,)),
        Scenario("street-night", "street", "The urban street at night.", daylight=((0.0, 0.0), (1.0, 0.0)),
                 cruise_speed=6.0),
        Scenario("day-to-night", "street", "Street drive through dusk into night, a siren approaches at night.",
                 daylight=((0.0, 1.0), (0.25, 1.0), (0.5, 0.35), (0.75, 0.0), (1.0, 0.0)),
                 sirens=((0.78, 8.0),), horns=(0.3,), cruise_speed=5.0),
        Scenario("glare", "street", "Low sun ahead-left: glare on the front cameras.",
                 glare_sun=(math.radians(20.0), math.radians(6.0)), cruise_speed=5.0),
        Scenario("siren", "street", "Daytime street with an emergency vehicle siren and horn bursts.",
                 sirens=((0.2, 12.0),), horns=(0.55, 0.8), cruise_speed=5.0),
        # The QA benchmark's yard (edge/drives/world.py): every side busy, sirens and horns from every side.
        Scenario("yard-day", "yard", "Manoeuvring yard by day: road users ahead, behind and alongside at "
                 "varied gaps, sirens and horns from every side.", cruise_speed=2.2),
        Scenario("yard-dusk", "yard", "The yard at dusk.", daylight=((0.0, 0.35), (1.0, 0.35)), cruise_speed=2.2),
        Scenario("yard-night", "yard", "The yard at night.", daylight=((0.0, 0.0), (1.0, 0.0)), cruise_speed=2.2),
        Scenario("yard-glare", "yard", "The yard with a low sun ahead-left: glare on the front cameras.",
                 glare_sun=(math.radians(20.0), math.radians(6.0)), cruise_speed=2.2),
        Scenario("yard-day-to-night", "yard", "The yard from day through dusk into night.",
                 daylight=((0.0, 1.0), (0.3, 1.0), (0.5, 0.35), (0.7, 0.0), (1.0, 0.0)), cruise_speed=2.2),
    )
}


def get_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise EdgeError(f"unknown scenario '{name}'; choose one of: {', '.join(SCENARIOS)}") from None


def daylight_at(scenario: Scenario, fraction: float) -> float:
    """Daylight level at a fraction of the drive, linearly interpolated between keyframes."""
    keys = scenario.daylight
    if fraction <= keys[0][0]:
        return keys[0][1]
    for (f0, l0), (f1, l1) in zip(keys, keys[1:]):
        if fraction <= f1:
            return l0 + (l1 - l0) * (fraction - f0) / max(f1 - f0, 1e-9)
    return keys[-1][1]


def lighting_label(daylight: float) -> str:
    """The condition name used by evaluations and the scheduler."""
    if daylight >= 0.7:
        return "day"
    if daylight >= 0.2:
        return "dusk"
    return "night"
