"""The LLM side of the runtime: one loaded LLM, its mPnP connector, and the aligner sets found on disk.

An aligner set is the aligners trained together (one `edge train aligners` / `edge adapt` run: a directory of
`*.safetensors`, e.g. models/aligners/day with fisheye + camera, models/aligners/switch with ultrasonic + audio).
Each frame the set that covers most of the plan's modalities is used: its modalities that the plan runs are
attached (and fed this frame's tokens), everything else is detached. Nothing is reloaded when the plan changes.
"""

from __future__ import annotations

import json
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
        self.sets: dict[str, dict[str, Any]] = {}
        self.set_lighting: dict[str, tuple[str, ...]] = {}  # the conditions each set was trained on (run.json)
        root = Path(aligner_dir) if aligner_dir is not None else None
        if root is not None and root.is_dir():
            for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
                found = {}
                for path in sorted(folder.glob("*.safetensors")):
                    al = load_aligner(path, shape=self.llm.shape)
                    found[al.modality] = al
                if found:
                    self.sets[folder.name] = found
                    self.set_lighting[folder.name] = _run_lighting(folder)
        every = [al for group in self.sets.values() for al in group.values()]
        depth = min((al.spec.n_blocks for al in every), default=min(8, self.llm.shape.n_layers))
        self.connector = MPnPConnector(self.llm.model, depth)
        self.max_new_tokens = max_new_tokens

    @property
    def aligners(self) -> dict[str, Any]:
        """Every modality with an aligner in some set (the first set that has it)."""
        out: dict[str, Any] = {}
        for group in self.sets.values():
            for m, al in group.items():
                out.setdefault(m, al)
        return out

    def best_set(self, modalities: set[str], lighting: str | None = None) -> dict[str, Any]:
        """The aligner set trained for this lighting that covers most of `modalities`: mPnP's runtime switch
        (e.g. the night set on ultrasonic + audio). Sets without recorded conditions count as matching any."""
        def rank(name: str) -> tuple[int, int]:
            trained = self.set_lighting.get(name, ())
            return (int(not trained or lighting in trained), len(modalities & set(self.sets[name])))
        if not self.sets:
            return {}
        return self.sets[max(self.sets, key=rank)]

    @property
    def n_blocks(self) -> int:
        return self.connector.n_blocks

    @property
    def attached(self) -> tuple[str, ...]:
        return self.connector.attached

    def apply(self, plan: Plan, tokens: dict[str, torch.Tensor], lighting: str | None = None) -> None:
        """Attach what the plan runs and has an aligner for (fed this frame's tokens); detach the rest."""
        group = self.best_set({m for m in plan.modalities if m in tokens}, lighting)
        wanted = {m for m in plan.modalities if m in group and m in tokens}
        for m in set(self.connector.attached):
            if m not in wanted or self.connector_aligner(m) is not group[m]:
                self.connector.detach(m)
        if plan.n_blocks and plan.n_blocks != self.connector.n_blocks and plan.n_blocks <= self.n_blocks:
            self.connector.set_n_blocks(plan.n_blocks)
        for m in sorted(wanted):
            if m not in self.connector.attached:
                self.connector.attach(group[m])
            self.connector.feed(m, tokens[m])

    def connector_aligner(self, modality: str) -> Any:
        return self.connector.aligners[modality]

    @torch.no_grad()
    def answer(self, question: str) -> str:
        tok = self.llm.tokenizer
        # The prompt the aligners were trained with (edge.llm.qa_text), so attached modalities are read as trained.
        ids = tok(prompt_text(question), return_tensors="pt", add_special_tokens=False)
        out = self.llm.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=tok.pad_token_id or tok.eos_token_id)
        text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        return text.strip().split("\n")[0]


def _run_lighting(folder: Path) -> tuple[str, ...]:
    """Lighting conditions a set was trained on, from its run.json (empty when unknown)."""
    try:
        return tuple(json.loads((folder / "run.json").read_text()).get("lighting") or ())
    except (OSError, ValueError, AttributeError):
        return ()


def make_answerer(aligner_dir: str | Path | None, llm_source: str | None, max_new_tokens: int) -> Answerer:
    try:
        return Answerer(aligner_dir, llm_source, max_new_tokens)
    except EdgeError:
        raise
    except (OSError, ValueError) as exc:
        raise EdgeError(f"cannot load the LLM ({exc})") from exc
