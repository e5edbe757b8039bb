"""What every modality encoder plugin shares: a config, input checks, token output and cost figures.

A modality's encoder (DESIGN.md: one modality = one plugin; its plugin names the factory that builds it,
`ModalityPlugin.encoder`) turns a synchronised `Frame` (edge.frames) into model inputs (`preprocess`), runs its network
(`forward`) and hands back one `EncoderOutput`: a fixed number of `n_tokens` tokens of width `d_enc` for the LLM
connections, or `BevFeatures` for the fusion head, and the decoded outputs it has. Encoders never import the runtime.
The perception training (edge.perception) trains it through its training hooks (`ModalityEncoder.training_sample`
and the others below): a BEV encoder through the fusion head, another through its own head's losses.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from edge.errors import EdgeError
from edge.frames import Frame

log = logging.getLogger(__name__)

D_ENC = 128  # token width shared by all encoders, so one aligner shape serves every modality
Columns = Mapping[str, np.ndarray]  # training-cache columns by key, one row per sample (edge.perception.cache)


class InputError(EdgeError):
    """A sensor input that cannot be used as it is and cannot be converted (wrong channels, dtype, empty)."""


@dataclass
class Diagnostics:
    """Per-call notes about converted or ignored input (shown once per distinct message)."""

    messages: list[str]

    def __init__(self) -> None:
        self.messages = []
        self._seen: set[str] = set()

    def note(self, key: str, text: str) -> None:
        if key not in self._seen:
            self._seen.add(key)
            self.messages.append(text)
            log.warning("%s", text)


def to_bgr(img: Any, size_hw: tuple[int, int], what: str, diag: Diagnostics | None = None,
           native_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Any decoded image -> uint8 BGR of exactly size_hw; convert what can be converted, reject the rest.

    Why: drives may come from real cameras with other resolutions or encodings (mono, 16-bit, BGRA); the
    networks have a fixed input size, so we resize (noting it once) rather than crash or silently misread.
    """
    if img is None:
        raise InputError(f"{what}: no image")
    arr = np.asarray(img)
    if arr.size == 0 or arr.ndim not in (2, 3):
        raise InputError(f"{what}: image of shape {arr.shape} is not HxW or HxWxC")
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
        _note(diag, f"{what}:u16", f"{what}: 16-bit image scaled to 8 bits")
    elif arr.dtype in (np.float32, np.float64):
        if not np.isfinite(arr).all():
            raise InputError(f"{what}: floating-point image contains NaN or inf")
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        arr = np.clip(arr * scale, 0, 255).astype(np.uint8)
        _note(diag, f"{what}:float", f"{what}: floating-point image converted to 8 bits")
    elif arr.dtype != np.uint8:
        raise InputError(f"{what}: unsupported pixel type {arr.dtype} (uint8, uint16 or float expected)")
    if arr.ndim == 2 or arr.shape[2] == 1:
        arr = cv2.cvtColor(arr.reshape(arr.shape[0], arr.shape[1]), cv2.COLOR_GRAY2BGR)
        _note(diag, f"{what}:mono", f"{what}: mono image replicated to 3 channels")
    elif arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2BGR)
    elif arr.shape[2] != 3:
        raise InputError(f"{what}: image with {arr.shape[2]} channels (1, 3 or 4 expected)")
    h, w = size_hw
    if arr.shape[:2] != (h, w):
        src = arr.shape[:2]
        if abs(src[1] / src[0] - w / h) > 0.02:
            raise InputError(f"{what}: image {src[1]}x{src[0]} has aspect {src[1] / src[0]:.3f}, the encoder expects "
                             f"{w}x{h} ({w / h:.3f}); a different aspect means a different camera model")
        arr = cv2.resize(arr, (w, h), interpolation=cv2.INTER_AREA)
        decoded = native_hw is not None and any(src == (native_hw[0] // r, native_hw[1] // r) for r in (1, 2, 4, 8))
        if not decoded:  # the camera's own size (or a reduced JPEG decode of it) is the expected path: no note
            _note(diag, f"{what}:size", f"{what}: image {src[1]}x{src[0]} resized to {w}x{h}")
    return np.ascontiguousarray(arr)


def _note(diag: Diagnostics | None, key: str, text: str) -> None:
    if diag is not None:
        diag.note(key, text)


def image_batch(imgs: np.ndarray, rng: np.random.Generator | None) -> Tensor:
    """Training form of `image_tensor`: uint8 (B, ..., H, W, 3) -> float (B, ..., 3, H, W) in [-1, 1], with a
    per-sample gain/offset jitter when `rng` is given, so night frames are not out of distribution."""
    x = torch.from_numpy(imgs).movedim(-1, -3).float() / 127.5 - 1.0
    if rng is not None:
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        gain = torch.from_numpy(rng.uniform(0.6, 1.3, shape[0]).astype(np.float32)).reshape(shape)
        offset = torch.from_numpy(rng.uniform(-0.15, 0.15, shape[0]).astype(np.float32)).reshape(shape)
        x = ((x + 1.0) * gain - 1.0 + offset).clamp(-1.0, 1.0)
    return x


def image_tensor(imgs: np.ndarray) -> Tensor:
    """uint8 (..., H, W, 3) BGR -> float (..., 3, H, W) in [-1, 1]; the normalisation every image encoder uses."""
    t = torch.from_numpy(np.ascontiguousarray(imgs))
    t = t.movedim(-1, -3).float()
    return t / 127.5 - 1.0


class TokenPool(nn.Module):
    """(B, C, *spatial) features -> (B, n_tokens, d_enc): adaptive average pooling to a fixed layout, a linear map
    and a learned position embedding, so the LLM always sees the same number of tokens per modality."""

    def __init__(self, channels: int, layout: tuple[int, ...], d_enc: int = D_ENC) -> None:
        super().__init__()
        self.layout = tuple(layout)
        n = int(np.prod(layout))
        self.proj = nn.Linear(channels, d_enc)
        self.pos = nn.Parameter(torch.zeros(1, n, d_enc))
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, feat: Tensor) -> Tensor:
        if feat.dim() == 4:
            pooled = nn.functional.adaptive_avg_pool2d(feat, self.layout)
        else:
            pooled = nn.functional.adaptive_avg_pool1d(feat, self.layout[0])
        return self.proj(pooled.flatten(2).transpose(1, 2)) + self.pos


class BoundMethod(nn.Module):
    """One method of a module (with constant keyword arguments) as `forward`: how a network part that is not the
    module's own forward (the fusion head's masked form, the camera ViT at one keep ratio) is exported."""

    def __init__(self, owner: nn.Module, method: str, **constants: Any) -> None:
        super().__init__()
        self.owner = owner
        self.method = method
        self.constants = constants
        self.train(owner.training)  # a new module starts in training mode; follow the owner's

    def forward(self, *args: Tensor) -> Any:
        return getattr(self.owner, self.method)(*args, **self.constants)


class NetworkPart:
    """Mixin for an encoder whose network part (tensors in, tuple of tensors out, fixed shapes) may run on a
    compiled engine instead of eager PyTorch.

    Why a mixin and not a wrapper: preprocessing (numpy, kernels) and output decoding stay in the plugin, so the
    outputs contract is one whatever the backend; the plugin says what its network part is (`network`), which
    inputs it takes (`network_inputs`, also the probe the engine is verified on) and which variants exist.
    `engine_for` is installed by `PerceptionStack.set_backend` (variant -> engine); None means eager."""

    engine_for: Callable[[str], Callable[..., tuple[Tensor, ...]]] | None = None

    def variants(self) -> tuple[str, ...]:
        """Engines to build up front (others are built on first use)."""
        return ("",)

    def network(self, variant: str = "") -> nn.Module:
        return self  # type: ignore[return-value]

    def network_inputs(self, variant: str = "", seed: int = 0) -> tuple[Tensor, ...]:
        """Batch-1 inputs with the engine's fixed shapes, plausible values (seeded): trace and probe input."""
        raise NotImplementedError

    def run_network(self, variant: str, eager: Callable[..., Any], *args: Tensor) -> Any:
        """The network part on `args`: eager, or the engine installed for `variant`."""
        if self.engine_for is None:
            return eager(*args)
        return self.engine_for(variant)(*args)


@dataclass
class BevFeatures:
    """What a BEV-producing encoder hands the fusion head (edge.encoders.fusion) and the stack's scene tokens."""

    features: Tensor  # (1, bev_channels, nx/2, ny/2): the grid at half its resolution
    detail: Tensor | None = None  # (1, detail_channels, nx, ny): full-resolution evidence for the fusion's last layer
    # (sides, w) per-side measurements the stack writes into this modality's side tokens after the pooled posteriors
    # (edge.encoders.scene_tokens: ECHO_OFFSET; the ultrasonic echoes), or None
    side_features: np.ndarray | None = None


@dataclass
class EncoderOutput:
    """One encoder's result for one sample, whatever the modality.

    A BEV modality gives `bev` and no tokens: its LLM tokens are the scene tokens the stack pools from the posterior
    it alone gives through the fusion head (edge.encoders.scene_tokens), so that they mean the same for every BEV
    modality. Any other gives `tokens`. `extras` holds its decoded outputs, as the report and the runtime read them
    (audio: event, event_prob, direction, direction_prob; camera: lighting, lighting_prob, front_map)."""

    tokens: Tensor | None = None  # (1, n_tokens, d_enc)
    bev: BevFeatures | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingRows:
    """What the perception training hands an encoder's head: its own cached columns and, for the same samples, the
    core's targets (a head may learn from the BEV ground truth, as the camera's front map does)."""

    columns: Columns
    bev: np.ndarray  # (N, nx, ny) uint8 BEV classes on the model grid (config.BEV_CLASSES), IGNORE where unknown
    lighting: np.ndarray  # (N,) int64 index in config.LIGHTING, -1 unknown


@dataclass(frozen=True)
class ClassScores:
    """A classification head's answers on the evaluation rows; the evaluation scores them (accuracy, recall)."""

    labels: tuple[str, ...]
    truth: np.ndarray  # (N,) class index, < 0 unknown (not scored)
    predicted: np.ndarray  # (N,) class index


class ModalityEncoder(nn.Module, NetworkPart):
    """The base of every modality's encoder: what the perception stack calls, whatever the modality.

    `bev_channels` / `detail_channels` size its inputs to the fusion head (0: no BEV features / no full-resolution
    detail). `setting` is the one run-time knob the scheduler may turn per frame (the front camera's token keep
    ratio); an encoder without one ignores it. `stage(setting)` names the stage the runtime times and costs.

    Training hooks (edge.perception: `edge train perception`, `edge eval perception`): `training_sample` (the
    cache; every trainable encoder), then a BEV encoder's `drop_inputs` and `bev_training` (trained through the
    fusion head), or another's `head_losses` and `head_scores` (its own head, `head_batch` samples per step);
    `init_from_data` for statistics kept from the training data."""

    name: str = ""
    bev_channels: int = 0
    detail_channels: int = 0
    head_batch: int = 0  # samples per training step of its own head; 0: none (a BEV modality's is the fusion head)

    @property
    def n_tokens(self) -> int:
        raise NotImplementedError

    def encode(self, sample: Frame, diag: Diagnostics | None = None, setting: float | None = None
               ) -> EncoderOutput | None:
        """One sample -> its output, or None when the sample holds none of this modality's data."""
        raise NotImplementedError

    def stage(self, setting: float | None = None) -> str:
        return self.name

    def cost(self) -> Cost:
        raise NotImplementedError

    # ------------------------------------------------------------------ training hooks (edge.perception)
    def training_sample(self, sample: Frame, diag: Diagnostics | None = None) -> dict[str, np.ndarray]:
        """One frame as fixed-shape arrays for the training cache, the same shapes whatever the frame holds: its
        preprocessed inputs, its own head's targets (from `sample.ground_truth`), and `present`, a bool: whether
        the frame holds its data (when `encode` would give None, its fusion input is off)."""
        raise NotImplementedError(f"{type(self).__name__} has no training_sample")

    def init_from_data(self, rows: TrainingRows) -> None:
        """Keep statistics of the training data (the audio's log-mel normalisation), before training from scratch."""

    def drop_inputs(self, columns: Columns, rng: np.random.Generator) -> Columns:
        """BEV training: a batch's columns with its own sensor dropout (a missing camera, a missing reading), drawn
        after the core's whole-modality dropout and before any encoder's `bev_training`; by default none."""
        return columns

    def bev_training(self, columns: Columns, rng: np.random.Generator | None) -> tuple[Tensor, Tensor | None]:
        """BEV training and evaluation: its BEV features (B, bev_channels, nx/2, ny/2) and detail (B,
        detail_channels, nx, ny) or None, from a batch of its cached columns; `rng`: its signal augmentation
        (photometric jitter), None in evaluation."""
        raise NotImplementedError(f"{type(self).__name__} has no bev_training")

    def head_losses(self, rows: TrainingRows, batch: int, rng: np.random.Generator) -> dict[str, Tensor]:
        """Its own head's losses on `batch` rows it draws with `rng` (with its augmentation), by a name unique in
        the stack (`<name>_...`); {} when no row serves. Added to the step's total as they are."""
        return {}

    def head_scores(self, rows: TrainingRows) -> dict[str, ClassScores | float]:
        """Its own head on every row that serves, by result key (`<name>_...`), plus settings it ran at (floats)."""
        return {}


@dataclass
class Cost:
    """Cost figures the scheduler plans with: parameters, multiply-accumulates per sample, tokens."""

    params: int
    macs: int
    n_tokens: int
    d_enc: int

    def as_dict(self) -> dict[str, int]:
        return {"params": self.params, "macs": self.macs, "n_tokens": self.n_tokens, "d_enc": self.d_enc}


def count_macs(module: nn.Module, run: Callable[[], Any]) -> int:
    """Multiply-accumulates of conv and linear layers during one call of `run` (batch size 1 expected)."""
    total = [0]

    def conv_hook(m: nn.Conv2d | nn.Conv1d, _inp: Any, out: Tensor) -> None:
        k = int(np.prod(m.kernel_size)) * (m.in_channels // m.groups)
        total[0] += int(out.numel()) * k

    def linear_hook(m: nn.Linear, _inp: Any, out: Tensor) -> None:
        total[0] += int(out.numel()) * m.in_features

    hooks = []
    for mod in module.modules():
        if isinstance(mod, (nn.Conv2d, nn.Conv1d)):
            hooks.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
