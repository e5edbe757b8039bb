"""What runtime adaptation trains, and how backpropagation is kept N blocks deep.

mPnP trains only the aligners and gates (optionally LoRA on the key/value projections of the connected
blocks). With the LLM frozen, the only tensors that require grad enter at the first connected block, so
autograd never records the earlier blocks: backward stops N blocks deep by construction, with no
detach()/no_grad bookkeeping. `frozen_llm` enforces the freeze; `KVLoRA` adds the optional low-rank
updates through forward hooks, so the LLM's modules are neither replaced nor re-created.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from edge.llm.arch import attention_modules
from edge.llm.connector import MPnPConnector
from edge.llm.errors import LLMError

PART_FORMAT = "mpnp-edge-qa-part"  # metadata "format" of the LoRA / prefix files a training run writes


def freeze_llm(model: nn.Module) -> None:
    """Make every LLM parameter a constant for autograd."""
    for param in model.parameters():
        param.requires_grad_(False)


class _LowRank(nn.Module):
    def __init__(self, d_in: int, d_out: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.down = nn.Linear(d_in, rank, bias=False)
        self.up = nn.Linear(rank, d_out, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.up.weight)  # starts as the identity update: the LLM is unchanged until trained
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x.to(self.down.weight.dtype))) * self.scale


class KVLoRA(nn.Module):
    """LoRA on k_proj/v_proj of chosen layers, applied through removable forward hooks."""

    def __init__(self, model: nn.Module, layers: Iterable[int], rank: int = 8, alpha: float = 16.0) -> None:
        super().__init__()
        attn = attention_modules(model)
        self.layers = sorted(set(layers))
        bad = [i for i in self.layers if not 0 <= i < len(attn)]
        if bad:
            raise LLMError(f"LoRA layers {bad} outside the LLM's 0..{len(attn) - 1}")
        self.adapters = nn.ModuleDict()
        self.enabled = True  # off: the hooks pass the projections through unchanged (a set not attached now)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for i in self.layers:
            for name in ("k_proj", "v_proj"):
                proj: nn.Linear = getattr(attn[i], name)
                adapter = _LowRank(proj.in_features, proj.out_features, rank, alpha).to(proj.weight.device)
                self.adapters[f"{i}_{name}"] = adapter
                self._handles.append(proj.register_forward_hook(self._hook(adapter)))

    def _hook(self, adapter: _LowRank):
        def add_update(_module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
            if not self.enabled:
                return None  # keep the projection's own output
            return output + adapter(inputs[0]).to(output.dtype)

        return add_update

    def remove(self) -> None:
        """Take the hooks off; the LLM computes exactly what it did before."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def lora_for_connected(connector: MPnPConnector, rank: int = 8, alpha: float = 16.0) -> KVLoRA:
    """LoRA on k/v of exactly the connected blocks (so backward still stops N blocks deep)."""
    return KVLoRA(connector.model, connector.connected_layers, rank, alpha)


def trainable_parameters(connector: MPnPConnector, lora: KVLoRA | None = None) -> list[nn.Parameter]:
    """Aligners and gates of the attached modalities, plus LoRA if given; freezes the LLM first."""
    freeze_llm(connector.model)
    params = list(connector.trainable_parameters())
    if lora is not None:
        first = connector.connected_layers.start
        if lora.layers and lora.layers[0] < first:
            raise LLMError(
                f"LoRA on layer {lora.layers[0]} lies below the first connected block {first}: "
                "backward would no longer stop N blocks deep"
            )
        params += list(lora.parameters())
    return params


def load_kv_lora(model: nn.Module, path: str | Path, layers: list[int] | None = None,
                 rank: int | None = None) -> KVLoRA:
    """A LoRA saved by a training run (lora.safetensors: layers, rank, alpha in its metadata) on `model`'s k/v.

    `layers` / `rank`, when given, are what the caller needs (a warm start must fit the run it starts). `layers` may
    be a subset of the saved ones: a run connected to fewer blocks (N=6 warm-started from N=8) takes those blocks'
    adapters and leaves the others. Hooks are installed enabled; a runtime that holds several sets turns each on
    only while its set is attached."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != PART_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {PART_FORMAT!r}")
        saved_layers, saved_rank = json.loads(meta["layers"]), int(meta["rank"])
        alpha = float(meta.get("alpha", 2.0 * saved_rank))  # runs saved before alpha was recorded used 2 x rank
        tensors = load_file(str(path))
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise LLMError(f"{path}: not a LoRA checkpoint of a training run ({exc.__class__.__name__}: {exc})") from None
    if layers is not None and not set(layers) <= set(saved_layers):
        raise LLMError(f"{path}: LoRA for layers {saved_layers}, this run needs {list(layers)}")
    if rank is not None and rank != saved_rank:
        raise LLMError(f"{path}: LoRA of rank {saved_rank}, this run needs rank {rank}")
    kept = saved_layers if layers is None else sorted(layers)
    lora = KVLoRA(model, kept, saved_rank, alpha)
    prefixes = tuple(f"adapters.{i}_" for i in kept)
    tensors = {k: v for k, v in tensors.items() if k.startswith(prefixes) or k.split(".")[0] != "adapters"}
    want = {k: tuple(v.shape) for k, v in lora.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if want != got:
        lora.remove()
        diff = sorted(set(want.items()) ^ set(got.items()))[:3]
        raise LLMError(f"{path}: LoRA tensors do not fit this LLM (first differences: {diff})")
    lora.load_state_dict(tensors)
    return lora
