"""The contract between the split graph's perception node and its LLM node: modality tokens on DDS.

One topic per modality, `perception/tokens/<modality>` (relative, remappable), each message a sensor_msgs/Image
with encoding `32FC1`: height = tokens, width = features (the encoder's (1, T, d) tokens without the batch axis),
header.stamp = the frame's stamp (the rule of the occupancy grid: the front fisheye image it was computed from),
header.frame_id = base_link. A standard message that carries a float tensor, its shape and the stamp
(std_msgs/Float32MultiArray has no header). A frame publishes the tokens of the modalities its plan ran, back to
back; the LLM node groups them by stamp (TokenFrames). Reliable, keep last 10 (8 KB a message).

Plain Python (no rclpy at import): the grouping and the aligner-set choice are tested without DDS.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are made: `edge node --help` does not pay for it
    import torch

TOKENS_PREFIX = "perception/tokens/"
ENCODING = "32FC1"


def token_topic(modality: str) -> str:
    return TOKENS_PREFIX + modality


def token_msg(stamp: Any, tokens: torch.Tensor) -> Any:
    """(1, T, d) or (T, d) float tokens -> sensor_msgs/Image 32FC1, T x d."""
    import torch
    from sensor_msgs.msg import Image

    rows = tokens.detach().to(torch.float32).reshape(-1, tokens.shape[-1]).contiguous().numpy()
    msg = Image(height=rows.shape[0], width=rows.shape[1], encoding=ENCODING, is_bigendian=0, step=4 * rows.shape[1])
    msg.header.stamp, msg.header.frame_id = stamp, "base_link"
    msg.data = rows.astype("<f4").tobytes()
    return msg


def tokens_from_msg(msg: Any) -> torch.Tensor:
    """sensor_msgs/Image 32FC1 -> (1, T, d) float32; ValueError naming what is wrong."""
    import torch

    if msg.encoding != ENCODING:
        raise ValueError(f"encoding {msg.encoding!r}, expected {ENCODING}")
    if msg.step != 4 * msg.width or len(msg.data) != msg.step * msg.height:
        raise ValueError(f"{len(msg.data)} bytes for {msg.height} x {msg.width} floats (step {msg.step})")
    dtype = ">f4" if msg.is_bigendian else "<f4"
    rows = np.frombuffer(bytes(msg.data), dtype=dtype).astype(np.float32).reshape(msg.height, msg.width)
    return torch.from_numpy(rows.copy())[None]


class TokenFrames:
    """Tokens grouped by frame stamp. The newest frame counts as complete once `settle_s` has passed since its
    first message (a frame's messages leave back to back, frames 100 ms apart), or once a newer frame began.
    Thread-safe: the node's executor runs token and question callbacks on two threads."""

    def __init__(self, settle_s: float = 0.03, keep: int = 4, clock: Callable[[], float] = time.monotonic) -> None:
        self.settle_s, self.keep, self.clock = settle_s, keep, clock
        self._frames: OrderedDict[int, tuple[float, dict[str, torch.Tensor]]] = OrderedDict()
        self.received = 0
        self._lock = threading.Lock()

    def add(self, modality: str, stamp_ns: int, tokens: torch.Tensor) -> None:
        with self._lock:
            self._add(modality, stamp_ns, tokens)

    def _add(self, modality: str, stamp_ns: int, tokens: torch.Tensor) -> None:
        self.received += 1
        if stamp_ns not in self._frames:
            if self._frames and stamp_ns < next(reversed(self._frames)):
                return  # older than the newest frame: never the one answered from
            self._frames[stamp_ns] = (self.clock(), {})
            while len(self._frames) > self.keep:
                self._frames.popitem(last=False)
        self._frames[stamp_ns][1][modality] = tokens

    def latest(self) -> tuple[int, dict[str, torch.Tensor]] | None:
        """(stamp, {modality: tokens}) of the newest complete frame; None before any."""
        with self._lock:
            items = [(stamp, (first, dict(tokens))) for stamp, (first, tokens) in self._frames.items()]
        if not items:
            return None
        stamp, (first, tokens) = items[-1]
        if self.clock() - first >= self.settle_s or len(items) == 1:
            return stamp, tokens
        stamp, (_, tokens) = items[-2]
        return stamp, tokens


def choose_aligner_set(sets: Iterable[Any], modalities: Iterable[str], camera_keep: float) -> Any | None:
    """The aligner set (edge.runtime.scheduler.AlignerSet) the LLM node attaches for these tokens: among those all
    of whose modalities arrived (and camera pruned as in training), the most modalities, then the best measured
    accuracy (mean over lightings: the LLM node does not know the frame's lighting). None: no set fits."""
    have = tuple(modalities)
    usable = [s for s in sets if s.modalities and s.usable_with(have, camera_keep)]
    if not usable:
        return None
    return max(usable, key=lambda s: (len(s.modalities),
                                      sum(s.accuracy.values()) / len(s.accuracy) if s.accuracy else 0.0))
