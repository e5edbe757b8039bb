"""In-process replay of a bag, paced like `ros2 bag play` (no ROS needed): the runtime's and `edge replay`'s player.

A `Player` yields the bag's messages in time order, releasing each when its bag time is due on the injected
clock (`rate` x real time), or as fast as possible (`rate=None`). It can loop, start at an offset into the drive
and filter topics. `Player.sim_time_ns()` maps the clock to bag time, which `edge replay` publishes on /clock.
Clocks are injectable so tests and simulations pace without sleeping. With `raw=True` messages are CDR, forwarded
untouched, except those of a type the bag defines unlike ROS 2 Jazzy (a bag recorded on Humble: its Range has no
`variance`): those are re-encoded with Jazzy's definition, so that Jazzy subscribers decode them (`transcode`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Protocol

from edge.drives import messages as M
from edge.drives.bag import Bag, open_bag
from edge.errors import BagError


class Clock(Protocol):
    """Wall clock seen by the player: monotonic seconds, and a way to wait."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class ManualClock:
    """A clock that only moves when slept on: deterministic pacing for tests and offline simulation."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.sleeps.append(seconds)
            self.t += seconds


class ReplayMessage(NamedTuple):
    topic: str
    msgtype: str
    stamp_ns: int      # bag time
    msg: Any           # rosbags message object, or CDR bytes when raw=True
    loop: int          # 0 for the first pass, 1 for the second, ...


@dataclass
class ReplayConfig:
    rate: float | None = 1.0            # x real time; None = as fast as possible
    loop: bool = False
    start_offset_s: float = 0.0         # seconds into the drive (from its first message)
    topics: list[str] | None = None     # None = all
    raw: bool = False                   # yield CDR bytes (for republishing) instead of message objects
    transcode: bool = True              # raw: re-encode types the bag defines unlike ROS 2 Jazzy (Humble's Range)


class Player:
    """Paced iteration over a bag; create one per replay. See the module docstring."""

    def __init__(self, bag: str | Path | Bag, config: ReplayConfig | None = None, clock: Clock | None = None) -> None:
        self.cfg = config or ReplayConfig()
        if self.cfg.rate is not None and not self.cfg.rate > 0:
            raise BagError(f"replay rate must be > 0 (or None for as fast as possible), not {self.cfg.rate}")
        if self.cfg.start_offset_s < 0:
            raise BagError(f"replay start offset must be >= 0 s, not {self.cfg.start_offset_s}")
        self.bag = bag if isinstance(bag, Bag) else open_bag(bag)
        self.clock = clock or RealClock()
        if self.bag.start_ns is None and self.bag.topics and all(t.count is None for t in self.bag.topics.values()):
            # damaged bag without index: find the first message time by reading
            first = next(self.bag.messages(raw=True), None)
            self.bag.start_ns = first.stamp_ns if first else None
        self.topics = None if self.cfg.topics is None else list(self.cfg.topics)
        if self.topics is not None:
            unknown = sorted(set(self.topics) - set(self.bag.topics))
            if unknown:
                raise BagError(f"{self.bag.path}: topics not in the bag: {', '.join(unknown)}")
        self._origin_wall: float | None = None
        self._origin_bag: int = 0
        self.published = 0
        self._foreign: dict[str, bool] = {}  # msgtype -> the bag's definition differs from Jazzy's

    @property
    def start_ns(self) -> int | None:
        if self.bag.start_ns is None:
            return None
        return self.bag.start_ns + int(round(self.cfg.start_offset_s * 1e9))

    def topic_types(self) -> dict[str, str]:
        names: Iterable[str] = self.topics if self.topics is not None else self.bag.topics
        return {n: self.bag.topics[n].msgtype for n in names}

    def _cdr(self, msgtype: str, msg: Any) -> Any:
        """CDR for Jazzy subscribers: a message of a type the bag defines otherwise (recorded on Humble, say) is
        re-encoded with Jazzy's definition, so that the subscribers decode it; others are forwarded untouched."""
        if not (self.cfg.raw and self.cfg.transcode):
            return msg
        jazzy = M.typestore()
        foreign = self._foreign.get(msgtype)
        if foreign is None:
            foreign = self._foreign[msgtype] = self.bag.typestore is not jazzy and msgtype in jazzy.fielddefs \
                and not M.same_definition(msgtype, self.bag.typestore, jazzy)
        if not foreign:
            return msg
        return M.serialize(M.convert_message(self.bag.deserialize(msg, msgtype), msgtype, jazzy), msgtype)

    def sim_time_ns(self) -> int | None:
        """Bag time corresponding to the clock's now (None before the first message)."""
        if self._origin_wall is None:
            return None
        if self.cfg.rate is None:
            return self._origin_bag
        return self._origin_bag + int((self.clock.now() - self._origin_wall) * self.cfg.rate * 1e9)

    def __iter__(self) -> Iterator[ReplayMessage]:
        start = self.start_ns
        if start is None:
            return
        n_loop = 0
        while True:
            self._origin_wall, self._origin_bag = self.clock.now(), start
            count = 0
            for m in self.bag.messages(self.topics, start_ns=start, raw=self.cfg.raw):
                if self.cfg.rate is not None:
                    due = self._origin_wall + (m.stamp_ns - start) / 1e9 / self.cfg.rate
                    wait = due - self.clock.now()
                    if wait > 0:
                        self.clock.sleep(wait)
                else:
                    self._origin_bag = m.stamp_ns
                count += 1
                self.published += 1
                yield ReplayMessage(m.topic, m.msgtype, m.stamp_ns, self._cdr(m.msgtype, m.msg), n_loop)
            if not self.cfg.loop or count == 0:
                return
            n_loop += 1


def replay(
    bag: str | Path | Bag, rate: float | None = 1.0, loop: bool = False, start_offset_s: float = 0.0,
    topics: list[str] | None = None, raw: bool = False, clock: Clock | None = None,
) -> Iterator[ReplayMessage]:
    """Convenience wrapper around `Player`."""
    yield from Player(bag, ReplayConfig(rate, loop, start_offset_s, topics, raw), clock)
