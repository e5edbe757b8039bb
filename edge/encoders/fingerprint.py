"""Which perception weights made a modality's tokens: a short content hash per modality.

Why: aligners learn to read the tokens of one set of encoder weights. Retraining the encoders keeps the token
shapes and layouts (so every shape check passes) but changes what the numbers mean, and aligners trained on the
old tokens then answer worse without any error. Aligner runs record these hashes (run.json,
`perception_weights`), and the runtime names every set whose hashes differ from the encoders it loaded.

A BEV modality's tokens are the fusion head's class posteriors of what that modality alone sees, so its hash also
covers the fusion weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from edge.encoders.stack import weights_file
from edge.modalities.registry import registry

HASH_CHARS = 16


def token_fingerprints(model_dir: str | Path) -> dict[str, str]:
    """{modality: hash of the weight files its tokens depend on}; a modality with a missing file is left out."""
    model_dir = Path(model_dir)
    out: dict[str, str] = {}
    for plugin in registry():
        files = [weights_file(plugin.name)] + ([weights_file("fusion")] if plugin.bev else [])
        paths = [model_dir / f for f in files]
        if not all(p.is_file() for p in paths):
            continue
        digest = hashlib.sha256()
        for p in paths:
            digest.update(p.name.encode())
            digest.update(p.read_bytes())
        out[plugin.name] = digest.hexdigest()[:HASH_CHARS]
    return out


def mismatched(recorded: dict[str, str], current: dict[str, str], modalities: tuple[str, ...]) -> list[str]:
    """The modalities of `modalities` whose recorded hash differs from the current one (unrecorded ones pass:
    runs from before hashes were recorded cannot be checked)."""
    return [m for m in modalities if m in recorded and recorded[m] != current.get(m)]
