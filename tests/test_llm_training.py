"""Training only aligners/gates (optionally LoRA on connected k/v): loss falls, grads stay N blocks deep."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from edge.llm import LLMError, LLMShape, MPnPConnector, ModalityAligner, lora_for_connected, trainable_parameters
from edge.llm.training import KVLoRA

N_LAYERS, N_CONNECTED = 4, 2


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=N_LAYERS,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def _setup(lora: bool):
    model = tiny_llama()
    conn = MPnPConnector(model, N_CONNECTED)
    shape = LLMShape.of(model)
    conn.attach(ModalityAligner.for_llm("cam", 16, shape, N_CONNECTED))
    conn.attach(ModalityAligner.for_llm("mic", 8, shape, N_CONNECTED))
    adapter = lora_for_connected(conn, rank=4) if lora else None
    params = trainable_parameters(conn, adapter)
    return model, conn, adapter, params


def _batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    # two "scenes": the answer token depends only on the modality tokens, never on the (shared) question
    cam, mic = torch.randn(2, 6, 16, generator=g), torch.randn(2, 3, 8, generator=g)
    question = torch.randint(3, 97, (1, 5), generator=g).expand(2, 5)
    answers = torch.tensor([[11], [42]])
    ids = torch.cat([question, answers], 1)
    labels = torch.full_like(ids, -100)
    labels[:, -1] = answers[:, 0]
    return cam, mic, ids, labels


@pytest.mark.parametrize("lora", [False, True])
def test_few_steps_reduce_loss_and_only_aligners_gates_lora_learn(lora):
    model, conn, adapter, params = _setup(lora)
    model.train()
    cam, mic, ids, labels = _batch()
    conn.feed("cam", cam)
    conn.feed("mic", mic)
    llm_before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(params, lr=2e-2)
    losses = []
    for _ in range(15):
        opt.zero_grad(set_to_none=True)
        loss = model(ids, labels=labels).loss
        loss.backward()
        if not losses:
            assert all(p.grad is None for p in model.parameters()), "a frozen LLM weight received a gradient"
            assert all(p.grad is not None for p in conn.trainable_parameters())
            if adapter is not None:
                assert all(p.grad is not None for p in adapter.parameters())
        opt.step()
        losses.append(loss.item())
    # a random tiny LLM has near-uniform logits (loss ~ ln 97); only the prefix can tell the two scenes apart
    assert losses[-1] < losses[0] - 0.5, losses
    for k, v in model.state_dict().items():
        assert torch.equal(v, llm_before[k]), f"LLM weight {k} changed"
    # gates of the connected blocks moved; untrained entries would not exist (gates sized to N)
    assert conn.aligners["cam"].gate_logits.shape == (N_CONNECTED,)


def test_autograd_graph_starts_at_first_connected_block():
    model, conn, _, _ = _setup(lora=True)
    cam, mic, ids, labels = _batch()
    conn.feed("cam", cam)
    conn.feed("mic", mic)
    seen: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, o[0] if isinstance(o, tuple) else o))
             for k, layer in enumerate(model.model.layers)]
    model(ids, labels=labels).loss.backward()
    for h in hooks:
        h.remove()
    first = conn.connected_layers.start
    for k in range(first):
        assert not seen[k].requires_grad and seen[k].grad_fn is None, f"block {k} is in the autograd graph"
    for k in range(first, N_LAYERS):
        assert seen[k].requires_grad


def test_lora_below_connected_blocks_is_refused_and_removal_restores_llm():
    model = tiny_llama().eval()
    conn = MPnPConnector(model, N_CONNECTED)
    deep = KVLoRA(model, [0, 3], rank=2)
    with pytest.raises(LLMError, match="below the first connected block 2"):
        trainable_parameters(conn, deep)
    ids = torch.randint(3, 97, (1, 6))
    with torch.no_grad():
        for p in deep.parameters():
            p.normal_()
        changed = model(ids).logits
        deep.remove()
        plain = model(ids).logits
        conn.close()
        assert torch.equal(model(ids).logits, plain)
    assert not torch.allclose(changed, plain)
