"""Templated questions about the near field that only the sensors can answer, answered from exact ground truth.

Every template has a closed answer set (`TEMPLATES`), so exact match is meaningful and a blind prior (the most
frequent answer of a template) is well defined; the scenarios are built so that those answers are spread (docs/
drives.md lists the measured shares). Each pair records the modalities that can answer it, which the scheduler
and the evaluations use. Sides are seen from the body centre: front within +-45 degrees of x, left, rear, right.

Distances are from the vehicle body to the closest point of an object's footprint, in 0.5 m bins up to the
ultrasonic range (5.5 m), "none" beyond.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge.drives.groundtruth import ActorState, distance_to_ego, footprint_samples, object_distance

SIDES = ("front", "left", "rear", "right")
DISTANCE_BINS = tuple(f"{0.5 * k:.1f} meters" for k in range(1, 12))  # 0.5 .. 5.5 m
MAX_DISTANCE = 5.5
CLEAR_RADIUS = 3.0    # "is the <side> clear" looks this far
COUNT_RADIUS = 5.0    # counts look this far
CLASS_RADIUS = 5.0    # "what is closest on the <side>" looks this far
CLASSES = ("vehicle", "pedestrian or cyclist", "static obstacle", "nothing")
COUNTS = ("0", "1", "2", "3 or more")
BEV_MODALITIES = ("fisheye", "ultrasonic")


@dataclass(frozen=True)
class Template:
    """One question template: its closed answer set and the modalities that can answer it."""

    kind: str
    question: str
    answers: tuple[str, ...]
    modalities: tuple[str, ...]


def _side_templates() -> list[Template]:
    out = []
    for side in SIDES:
        cams = ("fisheye", "camera") if side == "front" else ("fisheye",)
        out.append(Template(f"distance_{side}", f"How far is the nearest obstacle on the {side}?",
                            DISTANCE_BINS + ("none",), BEV_MODALITIES + cams[1:]))
        out.append(Template(f"clear_{side}", f"Is the {side} clear within {CLEAR_RADIUS:g} meters?", ("yes", "no"),
                            BEV_MODALITIES + cams[1:]))
        out.append(Template(f"closest_{side}", f"What is the closest object on the {side}?", CLASSES, cams))
    return out


TEMPLATES: dict[str, Template] = {t.kind: t for t in [
    *_side_templates(),
    Template("reverse_safe", "Is it safe to reverse?", ("yes", "no"), BEV_MODALITIES),
    Template("count_vehicles", f"How many vehicles are within {COUNT_RADIUS:g} meters?", COUNTS,
             ("fisheye", "ultrasonic")),
    Template("count_people", f"How many pedestrians or cyclists are within {COUNT_RADIUS:g} meters?", COUNTS,
             ("fisheye", "camera")),
    Template("siren", "Is a siren sounding?", ("yes", "no"), ("audio",)),
    # direction templates are asked only while that sound is audible (a question about a siren presupposes one)
    Template("siren_direction", "Where is the siren coming from?", SIDES, ("audio",)),
    Template("horn", "Is a car horn sounding?", ("yes", "no"), ("audio",)),
    Template("horn_direction", "Where is the horn coming from?", SIDES, ("audio",)),
]}


@dataclass(frozen=True)
class QAPair:
    kind: str
    question: str
    answer: str
    modalities: tuple[str, ...]

    def as_dict(self) -> dict:
        return {"kind": self.kind, "question": self.question, "answer": self.answer, "modalities": list(self.modalities)}


def side_of(x: float, y: float, footprint: tuple[float, float, float, float]) -> str:
    """Side of the vehicle a point lies on, seen from the body centre."""
    x0, x1, _, _ = footprint
    bearing = math.degrees(math.atan2(y, x - (x0 + x1) / 2))
    if -45 <= bearing <= 45:
        return "front"
    if 45 < bearing < 135:
        return "left"
    if -135 < bearing < -45:
        return "right"
    return "rear"


def distance_answer(d: float | None) -> str:
    """A distance in metres as its 0.5 m bin ("0.5 meters" .. "5.5 meters"), "none" beyond the ultrasonic range."""
    if d is None or d > MAX_DISTANCE + 0.25:
        return "none"
    return DISTANCE_BINS[min(max(int(round(d * 2)), 1), len(DISTANCE_BINS)) - 1]


def count_answer(n: int) -> str:
    return COUNTS[min(n, len(COUNTS) - 1)]


def class_name(state: ActorState) -> str:
    return {"vehicle": "vehicle", "vru": "pedestrian or cyclist"}.get(state.cls, "static obstacle")


def _pair(kind: str, answer: str) -> QAPair:
    t = TEMPLATES[kind]
    if answer not in t.answers:
        raise ValueError(f"template {kind}: answer {answer!r} is not in its answer set {t.answers}")
    return QAPair(kind, t.question, answer, t.modalities)


def make_qa(states: list[ActorState], footprint: tuple[float, float, float, float],
            audio: list[tuple[str, float, float]]) -> list[QAPair]:
    """Every template for this instant (direction templates only while their sound is audible)."""
    obstacles = [s for s in states if s.kind != "curb"]  # curbs are 15 cm high: no obstacle to a car body
    dist = {id(s): object_distance(s, footprint) for s in obstacles}
    out: list[QAPair] = []
    for side in SIDES:
        here = [s for s in obstacles if _touches_side(s, side, footprint)]
        nearest = min(here, key=lambda s: dist[id(s)]) if here else None
        d = dist[id(nearest)] if nearest is not None else None
        out.append(_pair(f"distance_{side}", distance_answer(d)))
        out.append(_pair(f"clear_{side}", "no" if d is not None and d <= CLEAR_RADIUS else "yes"))
        out.append(_pair(f"closest_{side}", class_name(nearest) if d is not None and d <= CLASS_RADIUS else "nothing"))
    x0, _, y0, y1 = footprint
    behind = [s for s in obstacles if s.corners[:, 0].min() < x0 and s.corners[:, 1].max() > y0 - 0.3
              and s.corners[:, 1].min() < y1 + 0.3]
    blocked = any(dist[id(s)] < 2.5 for s in behind) or any(s.cls == "vru" and dist[id(s)] < 4.0 for s in behind)
    out.append(_pair("reverse_safe", "no" if blocked else "yes"))
    out.append(_pair("count_vehicles", count_answer(sum(1 for s in obstacles if s.cls == "vehicle"
                                                        and dist[id(s)] <= COUNT_RADIUS))))
    out.append(_pair("count_people", count_answer(sum(1 for s in obstacles if s.cls == "vru"
                                                      and dist[id(s)] <= COUNT_RADIUS))))
    for sound in ("siren", "horn"):
        sources = [(x, y) for k, x, y in audio if k == sound]
        out.append(_pair(sound, "yes" if sources else "no"))
        if sources:
            nearest_src = min(sources, key=lambda p: math.hypot(*p))
            out.append(_pair(f"{sound}_direction", side_of(*nearest_src, footprint)))
    return out


def _touches_side(state: ActorState, side: str, footprint: tuple[float, float, float, float]) -> bool:
    """Whether the point of the object's footprint closest to the body lies on `side` (what a driver would say)."""
    pts = footprint_samples(state.corners)
    p = pts[int(distance_to_ego(pts, footprint).argmin())]
    return side_of(float(p[0]), float(p[1]), footprint) == side


# The order the demo and `edge run` ask one question at a time in: families interleaved (distances, sounds,
# classes, clear, counts), so a 60 s demo's 12 questions cover all of them instead of the first dozen templates in
# list order, which never reached the sound questions.
ROTATION = ("distance_front", "siren", "closest_left", "clear_rear", "count_vehicles", "horn", "distance_right",
            "closest_front", "siren_direction", "clear_left", "count_people", "horn_direction", "reverse_safe",
            "distance_rear", "closest_right", "clear_front", "distance_left", "closest_rear", "clear_right")


def pick_rotating(items: list[dict], asked: int) -> tuple[dict, int]:
    """The QA item of this instant to ask next and the rotation index after it: the rotation's next kind present
    now (direction questions exist only while a sound is audible, so absent kinds are skipped)."""
    by_kind = {q.get("kind"): q for q in items}
    for k in range(len(ROTATION)):
        kind = ROTATION[(asked + k) % len(ROTATION)]
        if kind in by_kind:
            return by_kind[kind], asked + k + 1
    return items[asked % len(items)], asked + 1
