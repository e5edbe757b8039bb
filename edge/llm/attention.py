"""The attention function behind mPnP latent connections, registered with transformers' AttentionInterface.

For a connected layer it prepends the modality key/value prefix to the layer's (already cached, already
rotated) text keys/values and calls the stock SDPA path; every other layer goes straight to stock SDPA, so
early blocks are untouched and, with nothing attached, the model computes exactly what `sdpa` computes.

The prefix never enters the KV cache: transformers updates the cache *before* calling this function, and the
prefix is prepended to what the cache returns. Attach/detach therefore never invalidates a cache, and the
cache holds text only. Modality tokens carry no position: their keys are never rotated.

Gating. A gate g = sigmoid(w) scales the attention *weight* given to the prefix before normalisation:
    softmax over [log g + q.k_p*s , q.k_t*s]  =>  a_p = g e^{s_p} / (g sum e^{s_p} + sum e^{s_t})
i.e. an additive log-sigmoid(w) bias on the prefix columns of the mask. As g -> 0 this is exactly text-only
attention (scaling V instead would still let the prefix steal softmax mass from the text; scaling K changes
the logits multiplicatively and does not switch the prefix off). log-sigmoid keeps a gradient of 1 - g, so
a small gate still learns. The bias lives in the float mask, so one fused SDPA call serves all tokens.

Mask pitfall. In prefill without padding transformers hands over `attention_mask=None` and SDPA falls back to
`is_causal`, which is top-left aligned and would hide text from the prefix-shifted keys. Whenever a prefix is
present we therefore build the explicit mask: prefix visible to every query (subject to the per-sample token
mask), causal and padding-aware over the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from edge.llm.errors import LLMError

ATTN_IMPLEMENTATION = "mpnp_sdpa"
LINK_ATTR = "_mpnp_link"


@dataclass
class LayerPrefix:
    """Prefix for one layer: keys/values (Bp, n_kv, P, D) and an additive column bias (Bp, P)."""

    key: torch.Tensor
    value: torch.Tensor
    bias: torch.Tensor


class PrefixSource(Protocol):
    def layer_prefix(self, depth: int) -> LayerPrefix | None: ...


@dataclass
class Link:
    """Attached to a connected attention module: where its prefix comes from and how deep the block is."""

    source: PrefixSource
    depth: int  # 0 = last block of the LLM


def text_mask_bias(
    attention_mask: torch.Tensor | None,
    batch: int,
    q_len: int,
    kv_len: int,
    dtype: torch.dtype,
    device: torch.device,
    causal: bool,
) -> torch.Tensor:
    """The text part of the mask as an additive float bias (b, 1, q_len, kv_len), b in {1, batch}."""
    neg = torch.finfo(dtype).min
    if attention_mask is None:
        if not causal or q_len == 1:
            return torch.zeros(1, 1, q_len, kv_len, dtype=dtype, device=device)
        # bottom-right aligned: query i sits at absolute position kv_len - q_len + i
        q_pos = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
        visible = torch.arange(kv_len, device=device)[None, :] <= q_pos
        return torch.where(visible, 0.0, neg).to(dtype)[None, None]
    mask = attention_mask[..., :kv_len]  # static caches may hand over a longer mask than the keys
    if mask.shape[-1] != kv_len:
        raise LLMError(f"attention mask covers {mask.shape[-1]} keys, the layer has {kv_len}")
    if mask.dtype == torch.bool:
        return torch.where(mask, 0.0, neg).to(dtype)
    return mask.to(dtype)


def prepend_prefix(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    prefix: LayerPrefix,
    causal: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys/values with the prefix in front and the matching explicit float mask (batch, 1, q, P + kv)."""
    batch, q_len, kv_len = query.shape[0], query.shape[2], key.shape[2]
    pb = prefix.key.shape[0]
    if pb not in (1, batch):
        raise LLMError(
            f"modality tokens were fed with batch {pb} but the text batch is {batch} "
            "(feed batch 1 to share them, e.g. with beam search, or one row per sequence)"
        )
    pk = prefix.key.to(key.dtype).expand(batch, -1, -1, -1)
    pv = prefix.value.to(value.dtype).expand(batch, -1, -1, -1)
    text = text_mask_bias(attention_mask, batch, q_len, kv_len, query.dtype, query.device, causal)
    n_prefix = prefix.bias.shape[-1]
    neg = torch.finfo(query.dtype).min  # fp32 masking bias must not become -inf in fp16
    head = prefix.bias.clamp_min(neg).to(query.dtype)[:, None, None, :].expand(batch, 1, q_len, n_prefix)
    mask = torch.cat([head, text.expand(batch, 1, q_len, kv_len)], dim=-1)
    return torch.cat([pk, key], dim=2), torch.cat([pv, value], dim=2), mask


def connection_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """AttentionInterface entry: stock SDPA, with the modality prefix prepended on connected layers."""
    link: Link | None = module.__dict__.get(LINK_ATTR)
    prefix = link.source.layer_prefix(link.depth) if link is not None else None
    if prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    is_causal = kwargs.get("is_causal")
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    key, value, mask = prepend_prefix(query, key, value, attention_mask, prefix, causal)
    return sdpa_attention_forward(module, query, key, value, mask, **kwargs)


def register() -> str:
    """Register the attention function and its mask builder (stock SDPA masks) once; return the name."""
    if ATTN_IMPLEMENTATION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTN_IMPLEMENTATION, connection_attention)
    if ATTN_IMPLEMENTATION not in AttentionMaskInterface._global_mapping:
        # Same masks as `sdpa`: without this, transformers would build no mask at all for an unknown name.
        AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION
