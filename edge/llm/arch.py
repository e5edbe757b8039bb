"""Shape facts about a Hugging Face decoder LLM that the mPnP connections depend on.

Aligners emit keys/values in the LLM's *key/value head* space (grouped-query aware), so everything that
builds, validates or checks an aligner goes through `LLMShape` rather than reading config fields ad hoc.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from edge.llm.errors import LLMError


@dataclass(frozen=True)
class LLMShape:
    """Dimensions of a decoder LLM relevant to key/value prefixes."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int

    @property
    def kv_dim(self) -> int:
        """Width of one token's key (or value) over all key/value heads."""
        return self.n_kv_heads * self.head_dim

    @classmethod
    def of(cls, model: nn.Module) -> "LLMShape":
        """Read the shape from a model's config (text config for multimodal wrappers)."""
        config = getattr(model, "config", None)
        if config is None:
            raise LLMError(f"{type(model).__name__} has no `config`; expected a Hugging Face causal LM")
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        try:
            n_heads = int(config.num_attention_heads)
            d_model = int(config.hidden_size)
            n_layers = int(config.num_hidden_layers)
        except AttributeError as exc:
            raise LLMError(f"model config {type(config).__name__} lacks a decoder field: {exc}") from None
        n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
        head_dim = int(getattr(config, "head_dim", None) or d_model // n_heads)
        return cls(n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Self-attention modules ordered by `layer_idx`, one per decoder layer.

    Found by the attribute every AttentionInterface-based attention carries (`layer_idx`) plus a `k_proj`,
    so Llama, Mistral, Qwen2, Phi-3 and similar families work without a per-family table.
    """
    found: dict[int, nn.Module] = {}
    for module in model.modules():
        idx = getattr(module, "layer_idx", None)
        if isinstance(idx, int) and hasattr(module, "k_proj") and hasattr(module, "v_proj"):
            found.setdefault(idx, module)
    n_layers = LLMShape.of(model).n_layers
    if sorted(found) != list(range(n_layers)):
        raise LLMError(
            f"{type(model).__name__}: found attention modules for layers {sorted(found)}, expected 0..{n_layers - 1}; "
            "mPnP connections need a decoder whose attention modules have `layer_idx`, `k_proj` and `v_proj`"
        )
    return [found[i] for i in range(n_layers)]
