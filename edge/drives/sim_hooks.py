"""The simulator hook: how a modality plugin adds its sensor to the drives `edge drive generate` writes (issue 11).

A plugin names a factory in `ModalityPlugin.simulator` ("module:callable"); the generator (edge.drives.generate)
imports it only when it generates a drive on a rig where the plugin has sensors, builds one simulator per drive
from a `SimSetup`, and asks it, frame by frame, for everything it stamps in that frame's window. Its messages go
into the bag beside the built-ins' (sorted by stamp); ground truth of its own rides the same way, on topics under
`/ground_truth/<name>/`.

Why a pull per frame window rather than a callback per message: the generator writes frames in order, and a
simulator that owns its rate and its trigger offsets (a LiDAR at 10 Hz, a radar at 13 Hz) fits any window. Why
its own seed from the drive's: the built-ins' random streams are shared between their sensors, and a plugin drawing
from them would change every drive generated before it; `SimSetup.rng(name)` gives it a stream of its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edge.drives.world import World
from edge.sensors.rig import Rig

START_NS = 1_700_000_000 * 10**9  # drives start at a fixed epoch so that bags are reproducible

# (stamp_ns, topic, msgtype, message): the message built with edge.drives.messages' typestore (its builders, or
# edge.drives.messages.typestore().types[msgtype](...)), stamped with `to_ns` of its simulated second
SimMessage = tuple[int, str, str, object]


def to_ns(t: float) -> int:
    """The bag stamp (ns) of simulated second `t`: the clock every stream of a generated drive is stamped on."""
    return START_NS + int(round(t * 1e9))


@dataclass(frozen=True)
class SimSetup:
    """What a plugin's simulator factory is handed, once per drive."""

    world: World  # actors over time, ego pose / twist, the scenario (lighting, weather, glare sun)
    rig: Rig  # the rig; the plugin's own section is rig.plugin_section(<its name>)
    seed: int  # the drive's seed: the same (scenario, seed, duration, rig) gives the same bag
    sensors: tuple[str, ...]  # the plugin's sensors on this rig: plugin.sensors(rig), never empty

    def rng(self, stream: str) -> np.random.Generator:
        """A random stream of its own, from the drive's seed and a name (the plugin's, or '<name>/<sensor>'); the
        name is hashed with sha256, as Python's hash() changes between processes."""
        salt = int.from_bytes(hashlib.sha256(stream.encode()).digest()[:8], "little")
        return np.random.default_rng((self.seed, salt))


class SensorSimulator(Protocol):
    """One plugin's simulation of its sensors over one drive (what its factory returns)."""

    def messages(self, t0: float, t1: float) -> list[SimMessage]:
        """Everything it stamps in [t0, t1) simulated seconds, any order; called for consecutive windows."""
        ...

    def close(self) -> None:
        """Release what it holds (threads, files); called once, after the last window."""
        ...
