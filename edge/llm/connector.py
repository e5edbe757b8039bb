"""Attach, detach and re-depth modality connections on a loaded LLM at runtime, without reloading it.

`MPnPConnector` owns the aligners of the attached modalities (it is an `nn.Module`, so `.parameters()` are
exactly the trainable aligner/gate parameters) and the encoder tokens currently fed for each modality. It
marks the attention modules of the last N blocks with a `Link`; the registered attention function asks the
connector for that block's prefix. Attach/detach/`set_n_blocks` only move these marks: no weights of the
LLM change, nothing is re-created, and the KV cache (text only) stays valid.

Aligner outputs are computed once per forward, at the first connected block, and reused by the deeper
blocks; with gradients off they are also reused across forwards (decode steps) until the fed tokens, the
attached set or the aligner weights change.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from edge.llm.aligner import ModalityAligner
from edge.llm.arch import LLMShape, attention_modules
from edge.llm.attention import LINK_ATTR, LayerPrefix, Link, register
from edge.llm.errors import LLMError

_CONNECTOR_ATTR = "_mpnp_connector"


class _Feed:
    """Encoder tokens fed for one modality: (B, T, d_enc) plus an optional (B, T) validity mask."""

    def __init__(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> None:
        self.tokens, self.mask = tokens, mask


class _Built:
    """Aligned prefix of the whole attached set for one forward (or, without grad, until inputs change)."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor, base_bias: torch.Tensor, spans: list[tuple[str, int]]):
        self.key, self.value, self.base_bias, self.spans = key, value, base_bias, spans


class MPnPConnector(nn.Module):
    """Latent connections of modality aligners into the last `n_blocks` blocks of one LLM."""

    def __init__(self, model: nn.Module, n_blocks: int) -> None:
        super().__init__()
        if getattr(model, _CONNECTOR_ATTR, None) is not None:
            raise LLMError("this LLM already has an mPnP connector; use it (or close() it) instead of making a second")
        self.shape = LLMShape.of(model)
        self.aligners = nn.ModuleDict()
        # Plain attributes (not submodules): the connector must not adopt the LLM's parameters.
        self.__dict__["_model"] = model
        self.__dict__["_attn"] = attention_modules(model)
        self._check_n(n_blocks)
        self._n_blocks = n_blocks
        self._feeds: dict[str, _Feed] = {}
        self._feed_version = 0
        self._cache_key: tuple | None = None
        self._cached: _Built | None = None
        self._step: _Built | None = None
        self._previous_impl = model.config._attn_implementation
        self._closed = False
        model.set_attn_implementation(register())
        object.__setattr__(model, _CONNECTOR_ATTR, self)
        self._relink()

    # ---- runtime API -------------------------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        return self.__dict__["_model"]

    @property
    def n_blocks(self) -> int:
        return self._n_blocks

    @property
    def connected_layers(self) -> range:
        """Layer indices that receive the prefix (the last N)."""
        return range(self.shape.n_layers - self._n_blocks, self.shape.n_layers)

    @property
    def attached(self) -> tuple[str, ...]:
        """Attached modalities, in prefix order."""
        return tuple(self.aligners.keys())

    def attach(
        self,
        aligner: ModalityAligner,
        tokens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Connect a modality (its prefix goes after those already attached); optionally feed tokens now.

        The aligner is moved to the LLM's device and to `dtype` (default: the LLM's dtype).
        """
        self._check_open()
        name = aligner.modality
        if name in self.aligners:
            raise LLMError(f"modality '{name}' is already attached; detach it first to replace its aligner")
        aligner.spec.check_fits(self.shape, f"aligner '{name}'")
        self._check_gates(aligner, self._n_blocks)
        param = next(self.model.parameters())
        self.aligners[name] = aligner.to(device=param.device, dtype=dtype or param.dtype)
        if tokens is not None:
            self.feed(name, tokens, mask)
        self._invalidate()

    def detach(self, modality: str) -> ModalityAligner:
        """Disconnect a modality and drop its fed tokens; returns its aligner (still usable elsewhere)."""
        if modality not in self.aligners:
            raise LLMError(f"modality '{modality}' is not attached (attached: {list(self.attached) or 'none'})")
        aligner = self.aligners.pop(modality)
        self._feeds.pop(modality, None)
        self._invalidate()
        return aligner

    def detach_all(self) -> None:
        for name in list(self.aligners):
            self.detach(name)

    def set_n_blocks(self, n_blocks: int) -> None:
        """Change how many of the last blocks receive the prefix."""
        self._check_open()
        self._check_n(n_blocks)
        for aligner in self.aligners.values():
            self._check_gates(aligner, n_blocks)
        self._n_blocks = n_blocks
        self._relink()
        self._invalidate()

    def feed(self, modality: str, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Set the encoder tokens of an attached modality: (T, d_enc), (1, T, d_enc) or (B, T, d_enc).

        `mask` (B, T) or (T,) marks valid tokens (e.g. a pruned camera keeping fewer tokens in some samples).
        """
        if modality not in self.aligners:
            raise LLMError(f"cannot feed modality '{modality}': not attached (attached: {list(self.attached) or 'none'})")
        spec = self.aligners[modality].spec
        if tokens.ndim == 2:
            tokens = tokens[None]
        if tokens.ndim != 3 or tokens.shape[-1] != spec.d_enc:
            raise LLMError(
                f"modality '{modality}': tokens of shape {tuple(tokens.shape)}, expected (batch, tokens, {spec.d_enc})"
            )
        if mask is not None:
            mask = mask.to(torch.bool)
            if mask.ndim == 1:
                mask = mask[None]
            if mask.shape[-1] != tokens.shape[1] or mask.shape[0] not in (1, tokens.shape[0]):
                raise LLMError(f"modality '{modality}': mask {tuple(mask.shape)} does not match tokens {tuple(tokens.shape)}")
        self._feeds[modality] = _Feed(tokens, mask)
        self._invalidate()

    def close(self) -> None:
        """Remove every connection and give the LLM back its previous attention implementation."""
        if self._closed:
            return
        self._closed = True
        self.aligners.clear()
        self._feeds.clear()
        for module in self.__dict__["_attn"]:
            module.__dict__.pop(LINK_ATTR, None)
        self.model.set_attn_implementation(self._previous_impl)
        object.__setattr__(self.model, _CONNECTOR_ATTR, None)
        self._invalidate()

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Aligner and gate parameters of the attached modalities: what runtime adaptation trains."""
        return self.aligners.parameters()

    # ---- called by the attention function ----------------------------------------------------------------
    def layer_prefix(self, depth: int) -> LayerPrefix | None:
        """Prefix for the block `depth` levels below the top, or None when nothing is attached."""
        if not self.aligners or depth >= self._n_blocks:
            return None
        if depth == self._n_blocks - 1 or self._step is None:  # first connected block of this forward
            self._step = self._build()
        built = self._step
        gates = [F.logsigmoid(self.aligners[name].gate_logit(depth)).expand(n) for name, n in built.spans]
        bias = built.base_bias + torch.cat(gates).to(built.base_bias.dtype)
        return LayerPrefix(built.key, built.value, bias)

    # ---- internals ---------------------------------------------------------------------------------------
    def _build(self) -> _Built:
        grad = torch.is_grad_enabled()
        if not grad:
            key = (self._feed_version, tuple((id(p), p._version) for p in self.aligners.parameters()))
            if self._cached is not None and self._cache_key == key:
                return self._cached
        missing = [name for name in self.aligners if name not in self._feeds]
        if missing:
            raise LLMError(f"modalities {missing} are attached but no tokens were fed (call feed() each frame)")
        batches = {self._feeds[name].tokens.shape[0] for name in self.aligners} - {1}
        if len(batches) > 1:
            raise LLMError(f"modalities were fed with different batch sizes {sorted(batches)}")
        batch = batches.pop() if batches else 1
        keys, values, biases, spans = [], [], [], []
        for name, aligner in self.aligners.items():
            feed = self._feeds[name]
            p = next(aligner.parameters())
            k, v = aligner(feed.tokens.to(device=p.device, dtype=p.dtype))
            keys.append(k.expand(batch, -1, -1, -1))
            values.append(v.expand(batch, -1, -1, -1))
            t = feed.tokens.shape[1]
            valid = feed.mask.to(p.device) if feed.mask is not None else torch.ones(1, t, dtype=torch.bool, device=p.device)
            biases.append(torch.where(valid, 0.0, torch.finfo(torch.float32).min).expand(batch, t))
            spans.append((name, t))
        built = _Built(torch.cat(keys, 2), torch.cat(values, 2), torch.cat(biases, 1), spans)
        if not grad:
            self._cache_key, self._cached = key, built
        return built

    def _invalidate(self) -> None:
        self._feed_version += 1
        self._cached = self._step = None
        self._cache_key = None

    def _relink(self) -> None:
        first = self.shape.n_layers - self._n_blocks
        for idx, module in enumerate(self.__dict__["_attn"]):
            if idx >= first:
                module.__dict__[LINK_ATTR] = Link(self, self.shape.n_layers - 1 - idx)
            else:
                module.__dict__.pop(LINK_ATTR, None)

    def _check_open(self) -> None:
        if self._closed:
            raise LLMError("this mPnP connector was closed; make a new MPnPConnector(model, n_blocks)")

    def _check_n(self, n_blocks: int) -> None:
        if not isinstance(n_blocks, int) or not 1 <= n_blocks <= self.shape.n_layers:
            raise LLMError(f"N={n_blocks} connected blocks requested, but the LLM has {self.shape.n_layers} layers (1..{self.shape.n_layers})")

    @staticmethod
    def _check_gates(aligner: ModalityAligner, n_blocks: int) -> None:
        if aligner.spec.n_blocks < n_blocks:
            raise LLMError(
                f"aligner '{aligner.modality}' has gates for {aligner.spec.n_blocks} blocks, N={n_blocks} requested; "
                "train it at that depth (ModalityAligner.extend_gates) or choose a smaller N"
            )


def connector_of(model: nn.Module) -> MPnPConnector | None:
    """The connector installed on `model`, if any."""
    return getattr(model, _CONNECTOR_ATTR, None)
