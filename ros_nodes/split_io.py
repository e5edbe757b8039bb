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
        self.last_arrival: dict[str, float] = {}  # per modality, clock time of its latest message (diagnostics)
        self._lock = threading.Lock()

    def add(self, modality: str, stamp_ns: int, tokens: torch.Tensor) -> None:
        with self._lock:
            self._add(modality, stamp_ns, tokens)

    def _add(self, modality: str, stamp_ns: int, tokens: torch.Tensor) -> None:
        self.received += 1
        self.last_arrival[modality] = self.clock()
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


def token_ages(frames: TokenFrames, modalities: Iterable[str]) -> dict[str, float]:
    """Seconds since each modality's latest token message (inf: none yet)."""
    now = frames.clock()
    return {m: now - frames.last_arrival[m] if m in frames.last_arrival else float("inf") for m in modalities}


def llm_diagnostics_msg(stamp: Any, ages: dict[str, float], counts: dict[str, int], pending: int,
                        answer: dict[str, Any] | None = None, stale_s: float = 1.0) -> Any:
    """The LLM node's /diagnostics (the composite's shape, ros_nodes/node_io.diagnostics_msg): per modality the age
    of its latest tokens (WARN past `stale_s`: the perception node stopped running it, or stopped), and with an
    answer its processing time (Autoware's processing_time_ms, as values): question to answer, generation alone,
    and the wait before it (queue and frame choice)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    diag = DiagnosticArray()
    diag.header.stamp = stamp
    fresh = {m for m, age in ages.items() if age <= stale_s}
    tokens = DiagnosticStatus(name="mpnp_edge/llm/tokens", hardware_id="llm",
                              level=DiagnosticStatus.OK if fresh else DiagnosticStatus.WARN,
                              message=f"tokens of {', '.join(sorted(fresh))}" if fresh else
                              f"no tokens within {stale_s:g} s: is the perception node running?")
    tokens.values = [KeyValue(key=f"{m}_age_s", value=f"{age:.3f}") for m, age in sorted(ages.items())]
    tokens.values += [KeyValue(key=k, value=str(v)) for k, v in sorted(counts.items())]
    tokens.values.append(KeyValue(key="pending", value=str(pending)))
    diag.status.append(tokens)
    if answer is not None:
        late = not answer.get("within_budget", True)
        timing = DiagnosticStatus(name="mpnp_edge/llm/processing_time", hardware_id="llm",
                                  level=DiagnosticStatus.WARN if answer.get("error") or late else DiagnosticStatus.OK,
                                  message=answer.get("error") or ("over answer_budget_ms" if late else "ok"))
        total, generate = float(answer["latency_ms"]), float(answer["generate_ms"])
        timing.values = [KeyValue(key="total_ms", value=f"{total:.2f}"),
                         KeyValue(key="generate_ms", value=f"{generate:.2f}"),
                         KeyValue(key="wait_ms", value=f"{max(0.0, total - generate):.2f}"),
                         KeyValue(key="stamp_ns", value=str(answer["data_stamp_ns"]))]
        diag.status.append(timing)
    return diag


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
