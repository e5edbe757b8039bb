"""mPnP latent connections on a tiny random Llama (GQA): invariance, masks, padding, cache, runtime switching."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from edge.llm import LLMError, LLMShape, MPnPConnector, ModalityAligner
from edge.llm.attention import LayerPrefix, Link, LINK_ATTR, connection_attention

N_LAYERS = 4


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=N_LAYERS, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


def aligner(model, name: str, d_enc: int = 12, n_blocks: int = 2, gate: float = 0.5) -> ModalityAligner:
    return ModalityAligner.for_llm(name, d_enc, LLMShape.of(model), n_blocks, gate_init=gate)


def greedy(model, ids, mask=None, n=6, use_cache=True):
    return model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, use_cache=use_cache,
                          pad_token_id=0)


# ---------------------------------------------------------------------------------------------------------------
def test_nothing_attached_is_identical_to_plain_sdpa():
    model = tiny_llama()
    ids = torch.randint(3, 97, (2, 9))
    with torch.no_grad():
        ref_logits = model(ids).logits
    ref_gen = greedy(model, ids)
    conn = MPnPConnector(model, 2)
    assert model.config._attn_implementation == "mpnp_sdpa"
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref_logits)
    assert torch.equal(greedy(model, ids), ref_gen)
    conn.attach(aligner(model, "cam", gate=2.0), torch.randn(1, 5, 12))
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, ref_logits)
    conn.detach("cam")
    assert torch.equal(greedy(model, ids), ref_gen)
    conn.close()
    assert model.config._attn_implementation == "sdpa"
    assert all(LINK_ATTR not in m.__dict__ for m in model.modules())
    with pytest.raises(LLMError, match="connector was closed"):
        conn.attach(aligner(model, "cam"))
    MPnPConnector(model, 1).close()  # a closed connector frees the model for a new one


def _hand_attention(q, k, v, pk, pv, bias, text_visible, scale):
    """Reference: softmax over [prefix logits + bias, masked text logits], GQA by repetition."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    b = q.shape[0]
    pk, pv = pk.expand(b, -1, -1, -1).repeat_interleave(rep, 1), pv.expand(b, -1, -1, -1).repeat_interleave(rep, 1)
    s_p = q @ pk.transpose(-1, -2) * scale + bias[:, None, None, :]
    s_t = (q @ k.transpose(-1, -2) * scale).masked_fill(~text_visible, -math.inf)
    w = torch.softmax(torch.cat([s_p, s_t], -1), -1)
    return (w @ torch.cat([pv, v], 2)).transpose(1, 2)


class _FixedSource:
    def __init__(self, prefix: LayerPrefix) -> None:
        self.prefix = prefix

    def layer_prefix(self, depth: int) -> LayerPrefix:
        return self.prefix


@pytest.mark.parametrize("case", ["prefill_mask_none", "prefill_padded", "decode", "chunk_with_cache"])
def test_connection_attention_matches_hand_computation(case):
    torch.manual_seed(1)
    model = tiny_llama()
    module = model.model.layers[-1].self_attn
    b, hq, hkv, d, p = 2, 4, 2, 16, 5
    q_len, kv_len = {"prefill_mask_none": (7, 7), "prefill_padded": (7, 7), "decode": (1, 9), "chunk_with_cache": (3, 8)}[case]
    q, k, v = torch.randn(b, hq, q_len, d), torch.randn(b, hkv, kv_len, d), torch.randn(b, hkv, kv_len, d)
    pk, pv = torch.randn(1, hkv, p, d), torch.randn(1, hkv, p, d)
    bias = torch.tensor([[-0.3, -0.3, -1.2, -1.2, -1.2]]).expand(b, p).clone()
    bias[1, 4] = torch.finfo(torch.float32).min  # sample 1 has one invalid modality token
    q_pos = torch.arange(q_len)[:, None] + kv_len - q_len
    visible = (torch.arange(kv_len)[None, :] <= q_pos)[None, None].expand(b, 1, q_len, kv_len).clone()
    mask = None
    if case == "prefill_padded":
        visible[1, :, :, :3] = False  # left padding of 3 in sample 1
        mask = visible.clone()
    elif case in ("decode", "chunk_with_cache"):
        mask = visible.clone()
        if case == "decode":
            mask = None  # transformers hands decode steps without padding a None mask
    module.__dict__[LINK_ATTR] = Link(_FixedSource(LayerPrefix(pk, pv, bias)), 0)
    try:
        out, _ = connection_attention(module, q, k, v, mask, scaling=module.scaling, dropout=0.0)
    finally:
        module.__dict__.pop(LINK_ATTR)
    ref = _hand_attention(q, k, v, pk, pv, bias, visible, module.scaling)
    rows = slice(None) if case != "prefill_padded" else slice(3, None)  # padded query rows are never read
    torch.testing.assert_close(out[:, rows], ref[:, rows], atol=1e-5, rtol=1e-5)


def test_gate_scales_attention_to_prefix_and_closed_gate_is_text_only():
    model = tiny_llama()
    ids = torch.randint(3, 97, (1, 8))
    with torch.no_grad():
        ref = model(ids).logits
    conn = MPnPConnector(model, 2)
    al = aligner(model, "cam", gate=-60.0)  # sigmoid(-60) ~ 1e-26: prefix gets no attention mass
    conn.attach(al, torch.randn(1, 4, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref, atol=1e-5, rtol=0)
        al.gate_logits.fill_(3.0)
        assert (model(ids).logits - ref).abs().max() > 1e-3


def test_per_block_per_modality_gates_in_bias():
    model = tiny_llama()
    conn = MPnPConnector(model, 3)
    a, c = aligner(model, "a", n_blocks=3), aligner(model, "c", d_enc=8, n_blocks=4)
    with torch.no_grad():
        a.gate_logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
        c.gate_logits.copy_(torch.tensor([-1.0, -2.0, -3.0, -4.0]))
    conn.attach(a, torch.randn(2, 3, 12))
    conn.attach(c, torch.randn(1, 2, 8), mask=torch.tensor([True, False]))
    with torch.no_grad():
        deepest = conn.layer_prefix(2)  # first connected block (layer 1): builds the prefix
        top = conn.layer_prefix(0)
    assert deepest.key.shape == (2, 2, 5, 16) and conn.attached == ("a", "c")
    ls = torch.nn.functional.logsigmoid
    torch.testing.assert_close(top.bias[0, :4], torch.cat([ls(torch.zeros(3)), ls(torch.tensor([-1.0]))]))
    torch.testing.assert_close(deepest.bias[1, :3], ls(torch.full((3,), 2.0)))
    assert deepest.bias[0, 4] < -1e30  # the masked token of modality c
    assert conn.layer_prefix(3) is None  # layer 0 is not connected


def test_early_blocks_untouched_and_connected_blocks_changed():
    model = tiny_llama()
    ids = torch.randint(3, 97, (2, 6))
    outs: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: outs.__setitem__(k, o[0] if isinstance(o, tuple) else o))
             for k, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model(ids)
        plain = dict(outs)
        conn = MPnPConnector(model, 2)
        conn.attach(aligner(model, "cam"), torch.randn(2, 5, 12))
        model(ids)
    for h in hooks:
        h.remove()
    for k in range(N_LAYERS - 2):
        assert torch.equal(outs[k], plain[k]), f"layer {k} before the connected blocks changed"
    assert not torch.allclose(outs[N_LAYERS - 2], plain[N_LAYERS - 2])


def test_batched_left_padding_matches_single_sequences():
    model = tiny_llama()
    conn = MPnPConnector(model, 3)
    conn.attach(aligner(model, "cam", n_blocks=3))
    conn.attach(aligner(model, "mic", d_enc=6, n_blocks=3))
    seqs = [torch.randint(3, 97, (9,)), torch.randint(3, 97, (5,))]
    cam, mic = torch.randn(2, 4, 12), torch.randn(2, 3, 6)
    singles = []
    with torch.no_grad():
        for i, s in enumerate(seqs):
            conn.feed("cam", cam[i : i + 1])
            conn.feed("mic", mic[i : i + 1])
            singles.append(model(s[None]).logits[0])  # no padding: mask arrives as None, explicit mask is built
        ids = torch.zeros(2, 9, dtype=torch.long)
        att = torch.zeros(2, 9, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, 9 - len(s) :], att[i, 9 - len(s) :] = s, 1
        conn.feed("cam", cam)
        conn.feed("mic", mic)
        # padding-aware positions (as generate() builds them): prefix keys sit at RoPE position 0, so text
        # queries must keep their unpadded positions for prefix attention to match
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        batched = model(ids, attention_mask=att, position_ids=pos).logits
    for i, s in enumerate(seqs):
        torch.testing.assert_close(batched[i, 9 - len(s) :], singles[i], atol=1e-5, rtol=1e-5)
    # and generation: batched greedy equals single greedy
    gen = greedy(model, ids, att, n=5)[:, 9:]
    for i, s in enumerate(seqs):
        conn.feed("cam", cam[i : i + 1])
        conn.feed("mic", mic[i : i + 1])
        assert torch.equal(greedy(model, s[None], n=5)[0, len(s) :], gen[i])


def test_kv_cache_holds_text_only_and_matches_full_recompute():
    model = tiny_llama()
    conn = MPnPConnector(model, 2)
    conn.attach(aligner(model, "cam"), torch.randn(1, 5, 12))
    ids = torch.randint(3, 97, (1, 7))
    with torch.no_grad():
        out = model(ids, use_cache=True)
        cache = out.past_key_values
        assert cache.get_seq_length() == 7  # no prefix entries in the cache
        nxt = out.logits[:, -1:].argmax(-1)
        step = model(nxt, past_key_values=cache, use_cache=True).logits[:, -1]
        full = model(torch.cat([ids, nxt], 1)).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)
    assert torch.equal(greedy(model, ids, n=8, use_cache=True), greedy(model, ids, n=8, use_cache=False))


def test_attach_detach_and_change_n_at_runtime():
    model = tiny_llama()
    ids = torch.randint(3, 97, (1, 8))
    conn = MPnPConnector(model, 2)
    cam, mic = aligner(model, "cam", n_blocks=4, gate=2.0), aligner(model, "mic", d_enc=6, n_blocks=2, gate=2.0)
    conn.attach(cam, torch.randn(1, 5, 12))
    with torch.no_grad():
        one = model(ids).logits
        conn.attach(mic, torch.randn(1, 3, 6))
        two = model(ids).logits
        assert not torch.allclose(one, two)
        assert conn.detach("mic") is mic
        torch.testing.assert_close(model(ids).logits, one)
        conn.set_n_blocks(4)
        assert list(conn.connected_layers) == [0, 1, 2, 3]
        assert [LINK_ATTR in l.self_attn.__dict__ for l in model.model.layers] == [True] * 4
        deep = model(ids).logits
        assert not torch.allclose(deep, one)
        conn.set_n_blocks(2)
        torch.testing.assert_close(model(ids).logits, one)
        assert [LINK_ATTR in l.self_attn.__dict__ for l in model.model.layers] == [False, False, True, True]
    conn.set_n_blocks(4)
    with pytest.raises(LLMError, match="'mic' has gates for 2 blocks, N=4"):
        conn.attach(mic)
    with pytest.raises(LLMError, match="N=5 connected blocks requested, but the LLM has 4 layers"):
        conn.set_n_blocks(5)
    with pytest.raises(LLMError, match="already attached"):
        conn.attach(cam)
    with pytest.raises(LLMError, match="already has an mPnP connector"):
        MPnPConnector(model, 1)


def test_token_mask_equals_feeding_only_valid_tokens():
    model = tiny_llama()
    conn = MPnPConnector(model, 2)
    conn.attach(aligner(model, "cam"))
    ids = torch.randint(3, 97, (1, 6))
    toks = torch.randn(1, 6, 12)
    with torch.no_grad():
        conn.feed("cam", toks, mask=torch.tensor([True, True, False, True, False, False]))
        masked = model(ids).logits
        conn.feed("cam", toks[:, [0, 1, 3]])
        kept = model(ids).logits
    torch.testing.assert_close(masked, kept, atol=1e-5, rtol=1e-5)


def test_inference_prefix_cache_follows_weight_and_feed_changes():
    model = tiny_llama()
    conn = MPnPConnector(model, 2)
    al = aligner(model, "cam", gate=2.0)
    conn.attach(al, torch.randn(1, 4, 12))
    ids = torch.randint(3, 97, (1, 6))
    with torch.no_grad():
        a = model(ids).logits
        assert torch.equal(model(ids).logits, a)
        al.key[2].weight.mul_(3.0)  # in-place update, as an optimizer step does
        b = model(ids).logits
        assert not torch.allclose(a, b)
        conn.feed("cam", torch.randn(1, 4, 12))
        assert not torch.allclose(model(ids).logits, b)


def test_gradients_reach_prefix_and_gates():
    model = tiny_llama()
    conn = MPnPConnector(model, 2)
    al = aligner(model, "cam")
    toks = torch.randn(2, 5, 12, requires_grad=True)
    conn.attach(al, toks)
    ids = torch.randint(3, 97, (2, 6))
    model(ids, labels=ids).loss.backward()
    assert toks.grad is not None and toks.grad.abs().sum() > 0
    for name, p in al.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert al.gate_logits.grad[:2].abs().min() > 0
