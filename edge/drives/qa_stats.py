"""How spread each QA template's answers are over a set of worlds, without rendering a single image.

The balance rule of the QA benchmark (docs/drives.md): a template's most frequent answer holds at most
1.5 / (number of answers) of its items, and at most 60 % for yes/no. Worlds are simulated at the QA rate only
(ground truth needs no images), so hundreds of drive-seconds are checked in seconds; `edge drive qa-stats`
prints the table.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from edge.drives.generate import FRAME_PERIOD, QA_RATE
from edge.drives.groundtruth import actor_states, audio_sources
from edge.drives.qa import TEMPLATES, QAPair, make_qa
from edge.drives.scenarios import get_scenario
from edge.drives.world import build_world
from edge.sensors.rig import Rig, load_rig


def answer_limit(kind: str) -> float:
    """The largest share the most frequent answer of a template may hold."""
    n = len(TEMPLATES[kind].answers)
    return 0.6 if n == 2 else 1.5 / n


def world_answers(scenario: str, seed: int, duration: float, rig: Rig | None = None) -> list[QAPair]:
    """The QA pairs a generated drive of (scenario, seed, duration) would carry, from the world alone."""
    rig = rig or load_rig()
    footprint = rig.footprint()
    world = build_world(get_scenario(scenario), seed, duration, footprint)
    step = int(round(1.0 / (QA_RATE * FRAME_PERIOD)))
    out: list[QAPair] = []
    for k in range(0, int(round(duration / FRAME_PERIOD)), step):
        t = k * FRAME_PERIOD
        pose = world.ego.pose(t)
        audio = [(a["class"], a["x"], a["y"]) for a in audio_sources(world, t, pose)]
        out += make_qa(actor_states(world.actors, t, pose, 30.0), footprint, audio)
    return out


@dataclass(frozen=True)
class Balance:
    kind: str
    items: int
    top_answer: str
    top_share: float
    limit: float
    answers: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.top_share <= self.limit + 1e-9


def balance(pairs: list[QAPair]) -> list[Balance]:
    """Per template: items, most frequent answer and its share against the limit."""
    by_kind: dict[str, Counter[str]] = {}
    for p in pairs:
        by_kind.setdefault(p.kind, Counter())[p.answer] += 1
    out = []
    for kind in TEMPLATES:
        counts = by_kind.get(kind)
        if not counts:
            continue
        top, n = counts.most_common(1)[0]
        total = sum(counts.values())
        out.append(Balance(kind, total, top, n / total, answer_limit(kind), dict(counts)))
    return out


def format_balance(rows: list[Balance]) -> str:
    lines = ["| template | items | answers | most frequent | share | limit | ok |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.kind} | {r.items} | {len(r.answers)}/{len(TEMPLATES[r.kind].answers)} | {r.top_answer} | "
                     f"{100 * r.top_share:.1f} % | {100 * r.limit:.1f} % | {'yes' if r.ok else 'NO'} |")
    return "\n".join(lines)
