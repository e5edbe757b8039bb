"""Analytic training cost of mPnP connections (FLOPs per training sample), to pick N from a budget.

The mPnP-LLM argument: with the LLM frozen, a training step needs the forward pass through all L blocks but
the backward pass only through the last N (activation gradients; no weight gradients for frozen weights),
plus forward and backward of the aligners. Connecting to every block (the full-LLM baseline, k/v trained)
pays backward through all L blocks and the weight gradients of every k/v projection. Matmul FLOPs are
counted as 2 per multiply-add; element-wise work (norms, activations, softmax) is ignored, as is usual.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from edge.llm.arch import LLMShape
from edge.llm.errors import LLMError


@dataclass(frozen=True)
class CostShape:
    """LLM dimensions that set the FLOPs of one block and of the output head."""

    llm: LLMShape
    d_ff: int
    vocab: int
    mlp_matrices: int = 3  # gated MLP (Llama family); 2 for a plain MLP

    @classmethod
    def of(cls, model: nn.Module) -> "CostShape":
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        return cls(LLMShape.of(model), int(cfg.intermediate_size), int(cfg.vocab_size))

    def block_matmul_flops(self, tokens: int) -> float:
        """Forward projections + MLP of one block for `tokens` tokens (context-independent part)."""
        s = self.llm
        q_o = 2 * s.d_model * s.n_heads * s.head_dim
        k_v = 2 * s.d_model * s.kv_dim
        mlp = self.mlp_matrices * s.d_model * self.d_ff
        return 2.0 * tokens * (q_o + k_v + mlp)

    def attention_flops(self, queries: int, keys: int) -> float:
        """Scores and weighted sum: 2 matmuls of queries x keys x (n_heads * head_dim)."""
        return 2.0 * 2 * queries * keys * self.llm.n_heads * self.llm.head_dim


@dataclass(frozen=True)
class ModalityCost:
    tokens: int
    d_enc: int
    hidden: int | None = None  # default 4 d_enc, as in mPnP

    def aligner_flops(self, kv_dim: int) -> float:
        hidden = self.hidden or 4 * self.d_enc
        return 2.0 * 2 * self.tokens * (self.d_enc * hidden + hidden * kv_dim)  # K and V aligners


def training_flops(
    shape: CostShape, seq_len: int, n_blocks: int, modalities: list[ModalityCost], train_kv: bool = False,
    loss_tokens: float | None = None, trunk_share: float = 1.0,
) -> float:
    """FLOPs of one training sample (forward + backward) with connections into the last `n_blocks` blocks.

    `train_kv` adds weight gradients of the k/v projections of the connected blocks (full-LLM baseline, or
    full-rank stand-in for LoRA). Two properties of how training is executed, both off by default (the paper's
    accounting):
    - `loss_tokens`: the output head runs only where the loss is taken (the answer tokens), not on every token;
      this is the same for every method, so it removes a shared cost.
    - `trunk_share`: the share of samples for which the frozen blocks below the first connected one run. They see
      only text, so their output is computed once per distinct text and reused (edge.llm.qa_model.TrunkCache);
      this is the structural saving of connecting to the last N blocks only (0 frozen blocks at N = L).
    """
    s = shape.llm
    if not 1 <= n_blocks <= s.n_layers:
        raise LLMError(f"N={n_blocks} outside 1..{s.n_layers}")
    prefix = sum(m.tokens for m in modalities)
    causal_keys = seq_len * (seq_len + 1) / 2 / seq_len  # mean keys per query under a causal mask
    plain = shape.block_matmul_flops(seq_len) + shape.attention_flops(seq_len, causal_keys)
    connected = shape.block_matmul_flops(seq_len) + shape.attention_flops(seq_len, causal_keys + prefix)
    if not 0.0 <= trunk_share <= 1.0:
        raise LLMError(f"trunk_share {trunk_share} outside 0..1")
    head = 2.0 * (seq_len if loss_tokens is None else loss_tokens) * s.d_model * shape.vocab
    aligners = sum(m.aligner_flops(s.kv_dim) for m in modalities)
    forward = trunk_share * (s.n_layers - n_blocks) * plain + n_blocks * connected + head + aligners
    # backward: activation gradients through the head and the N connected blocks; weight grads of aligners
    backward = head + n_blocks * connected + 2 * aligners
    if train_kv:
        backward += n_blocks * 2.0 * seq_len * 2 * s.d_model * s.kv_dim
    return forward + backward


def choose_n(
    budget_flops: float, shape: CostShape, seq_len: int, modalities: list[ModalityCost], train_kv: bool = False,
    loss_tokens: float | None = None, trunk_share: float = 1.0,
) -> int:
    """The deepest connection (largest N) whose training FLOPs per sample fit the budget."""
    best = 0
    for n in range(1, shape.llm.n_layers + 1):
        if training_flops(shape, seq_len, n, modalities, train_kv, loss_tokens, trunk_share) <= budget_flops:
            best = n
    if best == 0:
        need = training_flops(shape, seq_len, 1, modalities, train_kv, loss_tokens, trunk_share)
        raise LLMError(f"budget {budget_flops:.3g} FLOPs/sample is below the cheapest connection (N=1 needs {need:.3g})")
    return best
