"""Modalities as plugins: the interface a modality declares and the registry of installed ones (docs/plugins.md).

`edge.modalities.registry.registry()` is the cached registry of the installed plugins.
"""

from edge.modalities.interface import DecodeContext, MessageDecoder, ModalityPlugin, Scorer, SyncKind, TokenSpec
from edge.modalities.registry import GROUP, Registry

__all__ = ["GROUP", "DecodeContext", "MessageDecoder", "ModalityPlugin", "Registry", "Scorer", "SyncKind", "TokenSpec"]
