"""Inference backends for the perception network parts: eager PyTorch (default), ONNX Runtime, TensorRT.

Each encoder keeps its numpy / kernel preprocessing and output decoding; only its network part (tensors in,
tensors out, fixed shapes) is exported and run by the chosen backend. Engines are cached in `.cache/engines/`,
keyed by sha256 over weights, code, input shapes, opset, backend version (and GPU for TensorRT), each with a JSON
manifest carrying the key fields and the engine file's sha256; every engine is compared with eager PyTorch on a
probe input before it is used. See docs/runtime.md, section Backends.

    stack.set_backend("onnxruntime")                      # edge.encoders.PerceptionStack
"""

from edge.backends.base import Backend, BackendError, BackendUnavailable, Tolerance, VerificationError, signature
from edge.backends.cache import DEFAULT_CACHE_DIR, EngineCache, sha256_file
from edge.backends.engine import Engine, EngineSet, get_backend, prepare_engine
from edge.backends.key import code_digest, field_diff, key_fields, key_of, weights_digest
from edge.names import BACKENDS, BackendName  # defined below torch, where the configuration reads them

__all__ = [
    "BACKENDS", "DEFAULT_CACHE_DIR", "Backend", "BackendError", "BackendName", "BackendUnavailable", "Engine",
    "EngineCache", "EngineSet", "Tolerance", "VerificationError", "code_digest", "field_diff", "get_backend",
    "key_fields", "key_of", "prepare_engine", "sha256_file", "signature", "weights_digest",
]
