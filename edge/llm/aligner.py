"""Per-modality key/value aligners (mPnP-LLM) and their gates, saved as safetensors with metadata.

An aligner turns encoder tokens (B, T, d_enc) into a key prefix and a value prefix in the LLM's key/value
head space (B, n_kv_heads, T, head_dim): one MLP Linear(d_enc, 4 d_enc) - GELU - Linear(4 d_enc, kv_dim) for K,
one for V. The same prefix serves every connected block (as in mPnP); what differs per block is the gate.

Gates live with the aligner (one logit per connected block for this modality), so an aligner checkpoint is a
self-contained plug-in: attaching it needs nothing trained jointly with other modalities. Gate logits are
indexed from the top of the LLM: `gate_logits[0]` belongs to the last block, `gate_logits[k]` to block
L-1-k. Connecting at N smaller than the aligner was trained for therefore reuses exactly the gates of the
blocks it was trained on.
"""

from __future__ import annotations

import logging
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from edge.llm.arch import LLMShape
from edge.llm.errors import LLMError
from edge.token_layouts import TOKEN_LAYOUTS

if TYPE_CHECKING:
    from edge.modalities.interface import TokenSpec

log = logging.getLogger(__name__)

FORMAT = "mpnp-edge-aligner"
FORMAT_VERSION = "1"
# sigmoid(-2) ~ 0.12: the prefix starts with a small share of attention, so an untrained aligner barely
# perturbs the LLM (the role LLaMA-Adapter's zero-init gate plays), while log-sigmoid keeps a gradient of ~1.
GATE_INIT = -2.0


@dataclass(frozen=True)
class AlignerSpec:
    """Everything that decides whether an aligner fits an LLM and an encoder."""

    modality: str
    d_enc: int
    d_model: int
    n_kv_heads: int
    head_dim: int
    n_blocks: int
    hidden: int
    token_layout: str = "unversioned"  # edge.token_layouts.TOKEN_LAYOUTS; absent in files before it existed

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def to_metadata(self) -> dict[str, str]:
        meta = {k: str(v) for k, v in asdict(self).items()}
        meta.update(format=FORMAT, format_version=FORMAT_VERSION)
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str) -> "AlignerSpec":
        if meta.get("format") != FORMAT:
            raise LLMError(f"{source}: not an mpnp-edge aligner checkpoint (metadata 'format' is {meta.get('format')!r})")
        values: dict[str, object] = {}
        optional = {f.name for f in fields(cls) if f.default is not MISSING}  # keys added later; older files lack them
        for name, kind in cls.__annotations__.items():
            if name not in meta:
                if name in optional:
                    continue
                raise LLMError(f"{source}: aligner metadata lacks key '{name}'")
            if kind == "str":
                values[name] = meta[name]
                continue
            try:
                values[name] = int(meta[name])
            except ValueError:
                raise LLMError(f"{source}: aligner metadata key '{name}' is {meta[name]!r}, expected an integer") from None
        return cls(**values)  # type: ignore[arg-type]

    def check_fits(self, shape: LLMShape, source: str = "aligner") -> None:
        """Raise if this aligner cannot feed the LLM of `shape`, naming each mismatching dimension."""
        wrong = [
            f"{name} {mine} != LLM {theirs}"
            for name, mine, theirs in (
                ("d_model", self.d_model, shape.d_model),
                ("n_kv_heads", self.n_kv_heads, shape.n_kv_heads),
                ("head_dim", self.head_dim, shape.head_dim),
            )
            if mine != theirs
        ]
        if wrong:
            raise LLMError(f"{source} (modality '{self.modality}') does not fit this LLM: " + ", ".join(wrong))
        if self.n_blocks > shape.n_layers:
            raise LLMError(
                f"{source} (modality '{self.modality}') has gates for {self.n_blocks} blocks but the LLM has only "
                f"{shape.n_layers} layers"
            )


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class ModalityAligner(nn.Module):
    """Key and value aligners plus per-block gate logits for one modality."""

    def __init__(self, spec: AlignerSpec, gate_init: float = GATE_INIT) -> None:
        super().__init__()
        if spec.n_blocks < 1 or spec.d_enc < 1 or spec.hidden < 1:
            raise LLMError(f"aligner '{spec.modality}': n_blocks, d_enc and hidden must be positive ({spec})")
        self.spec = spec
        self.key = _mlp(spec.d_enc, spec.hidden, spec.kv_dim)
        self.value = _mlp(spec.d_enc, spec.hidden, spec.kv_dim)
        self.gate_logits = nn.Parameter(torch.full((spec.n_blocks,), float(gate_init)))

    @classmethod
    def for_llm(
        cls, modality: str, d_enc: int, shape: LLMShape, n_blocks: int, gate_init: float = GATE_INIT
    ) -> "ModalityAligner":
        """A freshly initialised aligner shaped for `shape` (hidden width 4 d_enc, as in mPnP)."""
        if not 1 <= n_blocks <= shape.n_layers:
            raise LLMError(f"aligner '{modality}': n_blocks={n_blocks} must be within 1..{shape.n_layers} (the LLM's layers)")
        spec = AlignerSpec(modality, d_enc, shape.d_model, shape.n_kv_heads, shape.head_dim, n_blocks, 4 * d_enc,
                           current_token_layout(modality))
        return cls(spec, gate_init)

    @property
    def modality(self) -> str:
        return self.spec.modality

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, d_enc) encoder tokens -> key and value prefixes, each (B, n_kv_heads, T, head_dim)."""
        if tokens.ndim != 3 or tokens.shape[-1] != self.spec.d_enc:
            raise LLMError(
                f"modality '{self.modality}': tokens of shape {tuple(tokens.shape)}, expected (batch, tokens, {self.spec.d_enc})"
            )
        b, t, _ = tokens.shape
        split = (b, t, self.spec.n_kv_heads, self.spec.head_dim)
        k = self.key(tokens).view(split).transpose(1, 2)
        v = self.value(tokens).view(split).transpose(1, 2)
        return k, v

    def gate_logit(self, depth: int) -> torch.Tensor:
        """Gate logit of the block `depth` levels below the top (0 = last block)."""
        return self.gate_logits[depth]

    def extend_gates(self, n_blocks: int, gate_init: float = GATE_INIT) -> None:
        """Grow the gate vector (keeping trained gates) so the aligner can be trained at a deeper N."""
        if n_blocks <= self.spec.n_blocks:
            return
        extra = torch.full((n_blocks - self.spec.n_blocks,), float(gate_init), dtype=self.gate_logits.dtype,
                           device=self.gate_logits.device)
        self.gate_logits = nn.Parameter(torch.cat([self.gate_logits.detach(), extra]))
        self.spec = AlignerSpec(**{**asdict(self.spec), "n_blocks": n_blocks})


def current_token_layout(modality: str) -> str:
    """The layout the encoders give `modality`'s tokens in now: the built-ins' from edge.token_layouts, an installed
    plugin's from its declaration (`ModalityPlugin.tokens.layout`, e.g. plugins/lidar's), "unversioned" otherwise."""
    if modality in TOKEN_LAYOUTS:
        return TOKEN_LAYOUTS[modality]
    spec = plugin_token_spec(modality)
    return spec.layout if spec is not None else "unversioned"


def plugin_token_spec(modality: str) -> TokenSpec | None:
    """The installed plugin's TokenSpec (count, width, layout) of `modality`, None where no plugin declares it."""
    from edge.modalities.registry import registry  # late: the declarations, read only for a modality not built in

    try:
        return registry()[modality].tokens
    except KeyError:
        return None


def save_aligner(aligner: ModalityAligner, path: str | Path) -> Path:
    """Write an aligner as safetensors; the metadata carries its spec so a misfit is caught on load."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in aligner.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=aligner.spec.to_metadata())
    tmp.replace(path)
    return path


def load_aligner(
    path: str | Path,
    *,
    modality: str | None = None,
    shape: LLMShape | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    relayout: bool = False,
) -> ModalityAligner:
    """Read an aligner checkpoint; with `modality`/`shape`, refuse one made for another modality or LLM.

    `relayout`: accept one trained on another token layout of `modality`, relabelled to the current one (a warm
    start only, when a layout gained slots the old tokens left at zero; never for inference)."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise LLMError(f"{source}: aligner checkpoint not found")
    try:
        from safetensors import safe_open

        with safe_open(source, framework="pt") as handle:
            meta = handle.metadata() or {}
        tensors = load_file(source)
    except (SafetensorError, OSError, ValueError) as exc:
        raise LLMError(f"{source}: not a readable safetensors file ({exc})") from None
    spec = AlignerSpec.from_metadata(meta, source)
    if modality is not None and spec.modality != modality:
        raise LLMError(f"{source}: aligner is for modality '{spec.modality}', expected '{modality}'")
    if modality is not None and relayout and spec.token_layout != current_token_layout(modality):
        log.warning("%s: trained on '%s' tokens of layout '%s'; warm start under layout '%s'", source, modality,
                    spec.token_layout, current_token_layout(modality))
        spec = replace(spec, token_layout=current_token_layout(modality))
    if modality is not None and spec.token_layout != current_token_layout(modality):
        raise LLMError(f"{source}: aligner was trained on '{modality}' tokens of layout '{spec.token_layout}', the "
                       f"encoders now give layout '{current_token_layout(modality)}'; retrain it (edge train aligners)")
    if shape is not None:
        spec.check_fits(shape, source)
    aligner = ModalityAligner(spec)
    expected = {k: tuple(v.shape) for k, v in aligner.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))
        raise LLMError(f"{source}: tensors do not match the metadata {spec}: differing entries {diff[:4]}")
    aligner.load_state_dict(tensors)
    return aligner.to(device=device, dtype=dtype)
