"""The analytic training-cost model used to choose N from a budget."""

from __future__ import annotations

import pytest

from edge.llm import CostShape, LLMError, LLMShape, ModalityCost, choose_n, training_flops

# SmolLM2-135M dimensions
SMOL = CostShape(LLMShape(n_layers=30, d_model=576, n_heads=9, n_kv_heads=3, head_dim=64), d_ff=1536, vocab=49152)
MODS = [ModalityCost(tokens=64, d_enc=256), ModalityCost(tokens=32, d_enc=128)]


def test_cost_grows_with_n_and_full_connection_costs_most():
    costs = [training_flops(SMOL, 96, n, MODS) for n in range(1, 31)]
    assert all(b > a for a, b in zip(costs, costs[1:]))
    full = training_flops(SMOL, 96, 30, MODS, train_kv=True)
    assert full > costs[-1]
    # backward through few blocks: the saving over the full-LLM baseline is large but bounded by forward cost
    assert 1.5 < full / costs[3] < 3.0


def test_cost_matches_hand_count_for_one_block_model():
    shape = CostShape(LLMShape(n_layers=1, d_model=4, n_heads=2, n_kv_heads=1, head_dim=2), d_ff=8, vocab=10)
    seq, mod = 3, ModalityCost(tokens=2, d_enc=3, hidden=5)
    block = 2 * seq * (2 * 4 * 4 + 2 * 4 * 2 + 3 * 4 * 8)
    attn = 2 * 2 * seq * (2 + 2) * 4  # mean causal keys (1+2+3)/3 = 2, plus 2 prefix tokens
    head = 2 * seq * 4 * 10
    aligner = 2 * 2 * 2 * (3 * 5 + 5 * 2)
    expected = (block + attn + head + aligner) + (head + block + attn + 2 * aligner)
    assert training_flops(shape, seq, 1, [mod]) == pytest.approx(expected)


def test_choose_n_fits_budget():
    budget = training_flops(SMOL, 96, 8, MODS)
    assert choose_n(budget, SMOL, 96, MODS) == 8
    assert choose_n(budget * 10, SMOL, 96, MODS) == 30
    with pytest.raises(LLMError, match="below the cheapest connection"):
        choose_n(1.0, SMOL, 96, MODS)


def test_executed_accounting_head_on_answer_and_trunk_once_per_text():
    paper = training_flops(SMOL, 20, 8, MODS)
    head_once = 2.0 * SMOL.llm.d_model * SMOL.vocab
    # the head over 3 answer tokens instead of 20, forward and backward
    assert paper - training_flops(SMOL, 20, 8, MODS, loss_tokens=3) == pytest.approx(2 * 17 * head_once)
    # the 22 frozen blocks run for a tenth of the samples
    plain = SMOL.block_matmul_flops(20) + SMOL.attention_flops(20, 21 / 2)
    assert paper - training_flops(SMOL, 20, 8, MODS, trunk_share=0.1) == pytest.approx(0.9 * 22 * plain)
    # connecting every block leaves no trunk to reuse
    assert training_flops(SMOL, 20, 30, MODS, trunk_share=0.1) == training_flops(SMOL, 20, 30, MODS)
    with pytest.raises(LLMError, match="trunk_share"):
        training_flops(SMOL, 20, 8, MODS, trunk_share=1.5)
