"""Templated question-answer pairs about the near field, answered from exact ground truth.

Answers are short canonical strings (a number of metres rounded to 0.5, a side, a count, yes/no) so that exact
match and token F1 are meaningful. Each pair records the modalities that can answer it, which the scheduler and
the evaluations use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge.drives.groundtruth import ActorState, object_distance

SIDES = ("front", "left", "rear", "right")


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


def _metres(d: float) -> str:
    return f"{round(d * 2) / 2:.1f} meters"


def make_qa(states: list[ActorState], footprint: tuple[float, float, float, float],
            audio: list[tuple[str, float, float]], index: int) -> list[QAPair]:
    """Three questions for this instant, rotating through the templates with `index`."""
    x0, x1, y0, y1 = footprint
    dist = {id(s): object_distance(s, footprint) for s in states}
    out: list[QAPair] = []

    ahead = [dist[id(s)] for s in states if s.corners[:, 0].max() > x1 and abs(s.y) < 1.6 and s.kind != "curb"
             and dist[id(s)] <= 10.0]
    out.append(QAPair("distance_ahead", "How far is the nearest obstacle ahead?",
                      _metres(min(ahead)) if ahead else "none", ("fisheye", "ultrasonic", "camera")))

    behind = [s for s in states if s.corners[:, 0].min() < x0 and s.corners[:, 1].max() > y0 - 0.3
              and s.corners[:, 1].min() < y1 + 0.3 and s.kind != "curb"]
    blocked = any(dist[id(s)] < 2.0 for s in behind) or any(s.cls == "vru" and dist[id(s)] < 4.0 for s in behind)
    out.append(QAPair("reverse_safe", "Is it safe to reverse?", "no" if blocked else "yes", ("fisheye", "ultrasonic")))

    rotating = [
        lambda: QAPair("count_pedestrians", "How many pedestrians are within 10 meters?",
                       str(sum(1 for s in states if s.kind == "pedestrian" and dist[id(s)] <= 10.0)), ("fisheye", "camera")),
        lambda: _closest_vru(states, dist, footprint),
        lambda: _siren(audio, footprint),
        lambda: QAPair("count_vehicles", "How many vehicles are within 5 meters?",
                       str(sum(1 for s in states if s.cls == "vehicle" and dist[id(s)] <= 5.0)), ("fisheye", "ultrasonic")),
        lambda: _closest_left(states, dist, footprint),
        lambda: QAPair("horn", "Is a car horn sounding?", "yes" if any(k == "horn" for k, _, _ in audio) else "no", ("audio",)),
    ]
    out.append(rotating[index % len(rotating)]())
    return out


def _closest_vru(states: list[ActorState], dist: dict, footprint: tuple[float, float, float, float]) -> QAPair:
    vrus = [s for s in states if s.cls == "vru" and dist[id(s)] <= 10.0]
    nearest = min(vrus, key=lambda s: dist[id(s)]) if vrus else None
    answer = side_of(nearest.x, nearest.y, footprint) if nearest else "none"
    return QAPair("closest_vru_side", "On which side is the closest pedestrian or cyclist?", answer, ("fisheye", "camera"))


def _closest_left(states: list[ActorState], dist: dict, footprint: tuple[float, float, float, float]) -> QAPair:
    left = [s for s in states if side_of(s.x, s.y, footprint) == "left" and dist[id(s)] <= 3.0]
    names = {"car": "vehicle", "pedestrian": "pedestrian", "cyclist": "cyclist"}
    answer = names.get(min(left, key=lambda s: dist[id(s)]).kind, "static obstacle") if left else "nothing"
    return QAPair("closest_left", "What is the closest object on the left within 3 meters?", answer, ("fisheye", "ultrasonic"))


def _siren(audio: list[tuple[str, float, float]], footprint: tuple[float, float, float, float]) -> QAPair:
    sirens = [(x, y) for k, x, y in audio if k == "siren"]
    answer = side_of(*sirens[0], footprint) if sirens else "no siren"
    return QAPair("siren_direction", "Where is the siren coming from?", answer, ("audio",))
