"""The LLM side of the runtime: one loaded LLM, its mPnP connector, and the aligners found on disk.

Modalities of the plan that have an aligner are attached (and fed this frame's tokens); the others are detached.
Nothing is reloaded when the plan changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edge.errors import EdgeError
from edge.llm import MPnPConnector, load_aligner, load_llm
from edge.llm.qa_text import prompt_text
from edge.runtime.scheduler import Plan


class Answerer:
    def __init__(self, aligner_dir: str | Path | None, llm_source: str | None = None, max_new_tokens: int = 8) -> None:
        self.llm = load_llm(llm_source)
        self.aligners: dict[str, Any] = {}
        if aligner_dir is not None and Path(aligner_dir).is_dir():
            for path in sorted(Path(aligner_dir).glob("*.safetensors")):
                al = load_aligner(path, shape=self.llm.shape)
                self.aligners[al.modality] = al
        depth = min((al.spec.n_blocks for al in self.aligners.values()), default=min(8, self.llm.shape.n_layers))
        self.connector = MPnPConnector(self.llm.model, depth)
        self.max_new_tokens = max_new_tokens

    @property
    def n_blocks(self) -> int:
        return self.connector.n_blocks

    @property
    def attached(self) -> tuple[str, ...]:
        return self.connector.attached

    def apply(self, plan: Plan, tokens: dict[str, torch.Tensor]) -> None:
        """Attach what the plan runs and has an aligner for (fed this frame's tokens); detach the rest."""
        wanted = {m for m in plan.modalities if m in self.aligners and m in tokens}
        for m in set(self.connector.attached) - wanted:
            self.connector.detach(m)
        if plan.n_blocks and plan.n_blocks != self.connector.n_blocks and plan.n_blocks <= self.n_blocks:
            self.connector.set_n_blocks(plan.n_blocks)
        for m in sorted(wanted):
            if m not in self.connector.attached:
                self.connector.attach(self.aligners[m])
            self.connector.feed(m, tokens[m])

    @torch.no_grad()
    def answer(self, question: str) -> str:
        tok = self.llm.tokenizer
        # The prompt the aligners were trained with (edge.llm.qa_text), so attached modalities are read as trained.
        ids = tok(prompt_text(question), return_tensors="pt", add_special_tokens=False)
        out = self.llm.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=tok.pad_token_id or tok.eos_token_id)
        text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        return text.strip().split("\n")[0]


def make_answerer(aligner_dir: str | Path | None, llm_source: str | None, max_new_tokens: int) -> Answerer:
    try:
        return Answerer(aligner_dir, llm_source, max_new_tokens)
    except EdgeError:
        raise
    except (OSError, ValueError) as exc:
        raise EdgeError(f"cannot load the LLM ({exc})") from exc
