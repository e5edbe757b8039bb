"""What each modality's tokens mean, slot by slot, as a version name per modality.

The encoders (edge.encoders.scene_tokens) produce tokens in these layouts; an aligner (edge.llm.aligner) records
the layout it was trained on and is refused under another one: the shapes may match while the slots mean something
else. Why a module of its own: it is the contract between the two, so it sits below both and the LLM core does not
import the encoders to read it (tests/test_import_rules.py). Bump a modality's version when its slots change.
"""

from __future__ import annotations

TOKEN_LAYOUTS: dict[str, str] = {"fisheye": "sector-posteriors-v3", "ultrasonic": "sector-posteriors-echoes-v4",
                                 "audio": "event-direction-v2", "camera": "vit-pruned-v1"}
