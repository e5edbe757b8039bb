"""BEV fusion and the two-stage semantic occupancy decoder (arXiv 2402.00637 style), over any number of BEV inputs.

The BEV features of every BEV-producing modality (its plugin says `bev=True`; at half the grid resolution, 0.4 m
by default) are concatenated in registry order with one presence channel each (so the decoder knows which
modality is speaking). The coarse stage predicts classes at a quarter resolution (0.8 m) with a wide receptive
field; the refine stage combines those coarse logits with the half-resolution features, and a last light layer
brings the result to the grid resolution (0.2 m) using the full-resolution detail maps some modalities give (the
ultrasonic raster) for sharp near-range edges. A missing modality is fed as zeros with its presence flag off:
trained that way (modality dropout), absence degrades the map and never breaks it, and any subset may be present.

Why one concatenation in registry order (and not one input projection per modality): with the built-ins
(fisheye, ultrasonic) it is exactly the layout of the shipped weights, keys and shapes unchanged, so every trained
fusion.safetensors loads as it is and gives the same outputs. A new BEV modality widens the input: its fusion head
is trained again (a checkpoint of another width is refused by name, edge.encoders.stack.CheckpointError), starting
from the narrower head's weights (`widened`: the new inputs' weights zero, so it begins as the trained head).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from edge.encoders.base import BoundMethod, NetworkPart
from edge.encoders.config import BEV_CLASSES, PerceptionConfig


@dataclass(frozen=True)
class BevInput:
    """One BEV modality as the fusion head takes it: its name, feature channels and detail channels (0: none)."""

    name: str
    channels: int
    detail_channels: int = 0


def _cbr(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Res(nn.Module):
    def __init__(self, c: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(c, c, dilation=dilation),
                                  nn.Conv2d(c, c, 3, 1, dilation, dilation=dilation, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.body(x))


class BevFusionHead(nn.Module, NetworkPart):
    """({modality: BEV features}, {modality: detail}) -> (coarse logits (B, K, nx/4, ny/4), fine logits (B, K, nx, ny)).

    `inputs` fixes the modalities and their order (the stack gives its BEV modalities in registry order); any
    non-empty subset may be present per call. Network part for engines: `forward_masked` (absent inputs are zeros
    with their flag off), so one fixed-shape engine serves every combination of present modalities."""

    def __init__(self, cfg: PerceptionConfig, inputs: Sequence[BevInput], width: int = 48, refine: int = 24) -> None:
        super().__init__()
        self.cfg = cfg
        self.inputs = tuple(inputs)
        names = [i.name for i in self.inputs]
        if not self.inputs or len(set(names)) != len(names) or any(i.channels <= 0 for i in self.inputs):
            raise ValueError(f"BevFusionHead: inputs must be one or more distinct modalities with channels > 0, "
                             f"got {self.inputs}")
        self.detailed = tuple(i for i in self.inputs if i.detail_channels > 0)
        cin = sum(i.channels for i in self.inputs) + len(self.inputs)
        k = len(BEV_CLASSES)
        self.coarse = nn.Sequential(_cbr(cin, width, stride=2), _Res(width, 1), _Res(width, 2))
        self.coarse_out = nn.Conv2d(width, k, 1)
        self.refine = nn.Sequential(_cbr(cin + width + k, refine), _cbr(refine, refine))
        self.up_feat = nn.Conv2d(refine, 16, 1)
        # the detail maps' layer keeps the name of the weights trained when the ultrasonic raster was the only one
        detail = sum(i.detail_channels for i in self.detailed)
        self.up_raster = nn.Conv2d(detail, 16, 3, padding=1) if detail else None
        self.fine_out = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(16, k, 1))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    def forward(self, features: Mapping[str, Tensor | None], details: Mapping[str, Tensor | None] | None = None
                ) -> tuple[Tensor, Tensor]:
        """Features (B, C, nx/2, ny/2) and details (B, D, nx, ny) by modality name; those absent or None are off."""
        details = details or {}
        unknown = sorted(set(features) - set(self.names))
        if unknown:
            raise ValueError(f"BevFusionHead: no input {unknown}; its inputs are {list(self.names)}")
        present = [i for i in self.inputs if features.get(i.name) is not None]
        if not present:
            raise ValueError(f"BevFusionHead: at least one of {', '.join(self.names)} BEV features is needed")
        ref = features[present[0].name]
        assert ref is not None
        b, _, nx, ny = ref.shape
        on = {i.name for i in present}
        feats = [features[i.name] if i.name in on else ref.new_zeros(b, i.channels, nx, ny)  # type: ignore[misc]
                 for i in self.inputs]
        dets = [details[i.name] if (i.name in on and details.get(i.name) is not None)  # type: ignore[misc]
                else ref.new_zeros(b, i.detail_channels, 2 * nx, 2 * ny) for i in self.detailed]
        flag = torch.ones(b, dtype=torch.bool, device=ref.device)
        return self.run_network("", self.forward_masked, *feats, *dets, *(flag & (i.name in on) for i in self.inputs))

    def network(self, variant: str = "") -> nn.Module:
        return BoundMethod(self, "forward_masked")

    def network_inputs(self, variant: str = "", seed: int = 0) -> tuple[Tensor, ...]:
        """ReLU-like features, one-hot details, every modality present."""
        g = torch.Generator().manual_seed(seed)
        grid = self.cfg.bev_grid
        nx, ny = grid.nx // 2, grid.ny // 2
        feats = [torch.randn((1, i.channels, nx, ny), generator=g).clamp(min=0) for i in self.inputs]
        dets = []
        for i in self.detailed:
            cls = torch.randint(0, i.detail_channels, (1, grid.nx, grid.ny), generator=g)
            dets.append(nn.functional.one_hot(cls, i.detail_channels).permute(0, 3, 1, 2).float())
        on = torch.ones(1, dtype=torch.bool)
        return (*feats, *dets, *(on.clone() for _ in self.inputs))

    def widened(self, state: Mapping[str, Tensor], trained: Collection[str]) -> dict[str, Tensor]:
        """A state for this head from `state`, that of a head over only the `trained` ones of its inputs (same
        channels and order): the layers reading the inputs (and details) get zero weights for the others, every other
        tensor is copied, so the widened head gives the old head's outputs whatever the new inputs hold until
        training moves those weights. ValueError when `state` is not such a head's."""
        old = [i for i in self.inputs if i.name in trained]
        if len(old) != len(set(trained)):
            raise ValueError(f"widened: {sorted(set(trained) - set(self.names))} are not inputs of this head")
        offsets = _offsets(self.inputs)
        feats = [offsets[i.name] + c for i in old for c in range(i.channels)]
        flags = [sum(i.channels for i in self.inputs) + self.names.index(i.name) for i in old]
        cin = sum(i.channels for i in self.inputs) + len(self.inputs)
        inner = list(range(cin, self.refine[0][0].in_channels))  # coarse features and logits after the inputs
        detail_offsets = _offsets(self.detailed, detail=True)
        details = [detail_offsets[i.name] + c for i in old if i.detail_channels for c in range(i.detail_channels)]
        columns = {"coarse.0.0.weight": feats + flags, "refine.0.0.weight": feats + flags + inner,
                   "up_raster.weight": details}
        out = {}
        for key, target in self.state_dict().items():
            if key not in state and key.startswith("up_raster."):  # the old head took no detail map
                out[key] = torch.zeros_like(target)
            elif key in columns and key in state and state[key].shape != target.shape:
                out[key] = _spread(state[key], target, columns[key], key)
            elif key in state:
                out[key] = state[key]
        return out

    def forward_masked(self, *args: Tensor) -> tuple[Tensor, Tensor]:
        """Training form: the features of every input in order, then the details of those that have one, then a
        (B,) bool presence per input; absent features and details are zeroed and flagged (modality dropout)."""
        n, d = len(self.inputs), len(self.detailed)
        if len(args) != 2 * n + d:
            raise ValueError(f"BevFusionHead.forward_masked: {2 * n + d} tensors expected (features of "
                             f"{', '.join(self.names)}, details, presence flags), got {len(args)}")
        feats, dets, flags = args[:n], args[n:n + d], args[n + d:]
        b, _, nx, ny = feats[0].shape
        masks = {i.name: f.to(feats[0].dtype)[:, None, None, None] for i, f in zip(self.inputs, flags)}
        x = torch.cat([f * masks[i.name] for i, f in zip(self.inputs, feats)]
                      + [masks[i.name].expand(b, 1, nx, ny) for i in self.inputs], 1)
        h = self.coarse(x)
        coarse = self.coarse_out(h)
        up = nn.functional.interpolate(torch.cat([h, coarse], 1), size=(nx, ny), mode="bilinear", align_corners=False)
        r = self.refine(torch.cat([x, up], 1))
        full = nn.functional.interpolate(self.up_feat(r), scale_factor=2, mode="bilinear", align_corners=False)
        if self.up_raster is not None:
            full = full + self.up_raster(torch.cat([t * masks[i.name] for i, t in zip(self.detailed, dets)], 1))
        return coarse, self.fine_out(full)


def _offsets(inputs: Sequence[BevInput], detail: bool = False) -> dict[str, int]:
    """Where each input's feature (or detail) channels start in the concatenation."""
    out, at = {}, 0
    for i in inputs:
        out[i.name] = at
        at += i.detail_channels if detail else i.channels
    return out


def _spread(old: Tensor, like: Tensor, columns: list[int], key: str) -> Tensor:
    """`old`'s input channels placed at `columns` of a zero tensor shaped `like` (dim 1: input channels)."""
    if old.shape[1] != len(columns) or old.shape[0] != like.shape[0] or old.shape[2:] != like.shape[2:]:
        raise ValueError(f"{key}: shape {tuple(old.shape)} is not that of a head over the trained inputs "
                         f"({len(columns)} input channels)")
    out = torch.zeros_like(like)
    out[:, columns] = old
    return out
