"""The LLM side of mpnp-edge: loading, mPnP latent connections (attach/detach at runtime), training helpers.

Typical runtime use::

    llm = load_llm()                                  # embedded SmolLM2 (GGUF, dequantised once, cached)
    conn = MPnPConnector(llm.model, n_blocks=8)       # connections into the last 8 blocks
    conn.attach(load_aligner("camera.safetensors", modality="camera", shape=llm.shape))
    conn.feed("camera", camera_tokens)                # every frame: (B, T, d_enc) encoder tokens
    llm.model.generate(...)                           # answers see the camera; conn.detach("camera") to drop it
"""

from edge.llm.aligner import AlignerSpec, ModalityAligner, load_aligner, save_aligner
from edge.llm.arch import LLMShape
from edge.llm.connector import MPnPConnector, connector_of
from edge.llm.cost import CostShape, ModalityCost, choose_n, training_flops
from edge.llm.errors import LLMError
from edge.llm.loading import LoadedLLM, default_gguf, load_llm
from edge.llm.training import KVLoRA, freeze_llm, lora_for_connected, trainable_parameters

__all__ = [
    "AlignerSpec", "CostShape", "KVLoRA", "LLMError", "LLMShape", "LoadedLLM", "MPnPConnector", "ModalityAligner",
    "ModalityCost", "choose_n", "connector_of", "default_gguf", "freeze_llm", "load_aligner", "load_llm",
    "lora_for_connected", "save_aligner", "trainable_parameters", "training_flops",
]
