"""Bad input and persistence: aligner checkpoints (safetensors + metadata), model directories, N, feeds."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from edge.errors import EdgeError
from edge.llm import LLMError, LLMShape, MPnPConnector, ModalityAligner, load_aligner, load_llm, save_aligner


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_llama(hidden: int = 64, kv_heads: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=hidden, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_aligner_roundtrip_keeps_weights_and_metadata(tmp_path):
    shape = LLMShape.of(tiny_llama())
    al = ModalityAligner.for_llm("ultrasonic", 10, shape, 2)
    path = save_aligner(al, tmp_path / "us.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["modality"] == "ultrasonic" and meta["d_enc"] == "10" and meta["d_model"] == "64"
    assert meta["n_kv_heads"] == "2" and meta["head_dim"] == "16" and meta["n_blocks"] == "2"
    back = load_aligner(path, modality="ultrasonic", shape=shape)
    assert back.spec == al.spec
    for k, v in al.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    assert back.key[0].weight.shape == (40, 10) and back.key[2].weight.shape == (32, 40)  # 4 d_enc, n_kv*head_dim


def test_aligner_for_other_llm_or_modality_is_refused(tmp_path):
    path = save_aligner(ModalityAligner.for_llm("camera", 8, LLMShape.of(tiny_llama()), 2), tmp_path / "cam.safetensors")
    with pytest.raises(LLMError, match=r"modality 'camera'.*does not fit this LLM: d_model 64 != LLM 96"):
        load_aligner(path, shape=LLMShape.of(tiny_llama(hidden=96)))
    with pytest.raises(LLMError, match=r"n_kv_heads 2 != LLM 4"):
        load_aligner(path, shape=LLMShape.of(tiny_llama(kv_heads=4)))
    with pytest.raises(LLMError, match=r"aligner is for modality 'camera', expected 'audio'"):
        load_aligner(path, modality="audio")
    # attaching directly checks the same
    conn = MPnPConnector(tiny_llama(hidden=96), 1)
    with pytest.raises(LLMError, match="d_model 64 != LLM 96"):
        conn.attach(load_aligner(path))


def test_aligner_trained_on_another_token_layout_is_refused(tmp_path):
    """Same shapes, other slot meanings (the ultrasonic tokens before the echo features): refused, naming both."""
    al = ModalityAligner.for_llm("ultrasonic", 8, LLMShape.of(tiny_llama()), 2)
    assert al.spec.token_layout == "sector-posteriors-echoes-v4"
    path = save_aligner(al, tmp_path / "aligner_ultrasonic.safetensors")
    meta_old = {k: v for k, v in al.spec.to_metadata().items() if k != "token_layout"}  # a file from before layouts
    save_file({k: v.contiguous() for k, v in al.state_dict().items()}, str(tmp_path / "old.safetensors"), metadata=meta_old)
    assert load_aligner(path, modality="ultrasonic").spec == al.spec
    with pytest.raises(LLMError, match=r"old.safetensors: aligner was trained on 'ultrasonic' tokens of layout "
                                       r"'unversioned', the encoders now give layout 'sector-posteriors-echoes-v4'"):
        load_aligner(tmp_path / "old.safetensors", modality="ultrasonic")
    # a warm start for training may take it (edge train aligners --init-relayout), relabelled to today's layout
    warm = load_aligner(tmp_path / "old.safetensors", modality="ultrasonic", relayout=True)
    assert warm.spec == al.spec
    assert all(torch.equal(a, b) for a, b in zip(warm.state_dict().values(), al.state_dict().values()))


def test_damaged_or_foreign_checkpoints_are_named(tmp_path):
    good = save_aligner(ModalityAligner.for_llm("camera", 8, LLMShape.of(tiny_llama()), 2), tmp_path / "a.safetensors")
    tensors = load_file(str(good))
    save_file(tensors, str(tmp_path / "nometa.safetensors"))
    with pytest.raises(LLMError, match="not an mpnp-edge aligner checkpoint"):
        load_aligner(tmp_path / "nometa.safetensors")
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
    tensors["key.2.weight"] = torch.zeros(7, 32)
    save_file(tensors, str(tmp_path / "shapes.safetensors"), metadata=meta)
    with pytest.raises(LLMError, match="tensors do not match the metadata"):
        load_aligner(tmp_path / "shapes.safetensors")
    save_file(load_file(str(good)), str(tmp_path / "badmeta.safetensors"), metadata={**meta, "d_enc": "eight"})
    with pytest.raises(LLMError, match="'d_enc' is 'eight', expected an integer"):
        load_aligner(tmp_path / "badmeta.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(LLMError, match="junk.safetensors: not a readable safetensors file"):
        load_aligner(tmp_path / "junk.safetensors")
    with pytest.raises(LLMError, match="missing.safetensors: aligner checkpoint not found"):
        load_aligner(tmp_path / "missing.safetensors")


def test_n_larger_than_the_model_is_refused():
    model = tiny_llama()
    with pytest.raises(LLMError, match="N=4 connected blocks requested, but the LLM has 3 layers"):
        MPnPConnector(model, 4)
    with pytest.raises(LLMError, match="n_blocks=5 must be within 1..3"):
        ModalityAligner.for_llm("camera", 8, LLMShape.of(model), 5)
    conn = MPnPConnector(model, 3)
    with pytest.raises(LLMError, match="N=0 connected blocks requested"):
        conn.set_n_blocks(0)
    assert issubclass(LLMError, EdgeError)  # the CLI prints these as one line


def test_feed_errors_name_the_modality():
    model = tiny_llama()
    conn = MPnPConnector(model, 2)
    conn.attach(ModalityAligner.for_llm("camera", 8, LLMShape.of(model), 2))
    with pytest.raises(LLMError, match=r"modality 'camera': tokens of shape \(1, 5, 9\), expected \(batch, tokens, 8\)"):
        conn.feed("camera", torch.randn(1, 5, 9))
    with pytest.raises(LLMError, match="cannot feed modality 'audio': not attached"):
        conn.feed("audio", torch.randn(1, 5, 8))
    with pytest.raises(LLMError, match=r"\['camera'\] are attached but no tokens were fed"):
        model(torch.randint(0, 97, (1, 4)))
    with pytest.raises(LLMError, match="'audio' is not attached"):
        conn.detach("audio")


def test_load_model_directory_with_dtype(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path / "m")
    loaded = load_llm(tmp_path / "m", dtype="bfloat16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.shape == LLMShape.of(model) and loaded.tokenizer is None and not loaded.model.training
    ids = torch.randint(0, 97, (1, 5))
    with torch.no_grad():
        ref = model(ids).logits
        got = load_llm(tmp_path / "m").model(ids).logits
    torch.testing.assert_close(got, ref)


def test_model_directories_without_usable_weights_are_refused(tmp_path):
    tiny_llama().config.save_pretrained(tmp_path / "noweights")
    with pytest.raises(LLMError, match="noweights: model directory has config.json but no weights"):
        load_llm(tmp_path / "noweights")
    pickled = tmp_path / "pickled"
    tiny_llama().config.save_pretrained(pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04 pretend pickle")
    with pytest.raises(LLMError, match="only pickled weights \\(pytorch_model.bin\\); mpnp-edge never unpickles"):
        load_llm(pickled)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LLMError, match="empty: not a model directory: no config.json"):
        load_llm(tmp_path / "empty")
    with pytest.raises(LLMError, match="no such model file or directory"):
        load_llm(tmp_path / "nope")
    (tmp_path / "weights.txt").write_text(json.dumps({}))
    with pytest.raises(LLMError, match="expected a model directory or a .gguf file"):
        load_llm(tmp_path / "weights.txt")
    with pytest.raises(LLMError, match="unknown dtype 'float8'"):
        load_llm(tmp_path / "nope", dtype="float8")


def test_text_batch_not_matching_fed_batch_is_named():
    model = tiny_llama()
    conn = MPnPConnector(model, 2)
    conn.attach(ModalityAligner.for_llm("camera", 8, LLMShape.of(model), 2), torch.randn(3, 4, 8))
    with pytest.raises(LLMError, match="fed with batch 3 but the text batch is 2"):
        model(torch.randint(0, 97, (2, 4)))
