"""Errors of the LLM layer: one clear line naming the file, modality or setting at fault."""

from __future__ import annotations

from edge.errors import EdgeError


class LLMError(EdgeError):
    """The LLM, an aligner checkpoint or a connection request cannot be used as asked."""
