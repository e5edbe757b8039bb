"""A probe on the frozen modality tokens: how much of each template's answer the tokens carry at all.

A small classifier (one hidden layer) reads one modality's tokens (or several, concatenated) plus the template,
and picks an answer within that template's answer set. Its held-out exact match per template and lighting is the
ceiling the aligners aim at: an aligner feeding a frozen LLM cannot answer what the tokens do not carry.
Trained here in seconds on the cached tokens (edge/llm/qa_data.py); `edge eval qa --probe` prints it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edge.llm.qa_data import QADataset, QAItem
from edge.llm.qa_text import score_report


class TokenProbe:
    """One MLP over the concatenated tokens of `modalities`, the template one-hot, answers restricted per template."""

    def __init__(self, modalities: tuple[str, ...], kinds: list[str], answers: dict[str, list[str]],
                 hidden: int = 256, seed: int = 0) -> None:
        self.modalities, self.kinds = modalities, kinds
        self.vocab = sorted({a for v in answers.values() for a in v})
        self.allowed = {k: torch.tensor([a in answers[k] for a in self.vocab]) for k in kinds}
        self.hidden, self.seed = hidden, seed
        self.net: nn.Module | None = None

    def _inputs(self, data: QADataset, items: list[QAItem]) -> torch.Tensor:
        parts = []
        for m in self.modalities:
            toks, ok = data.batch_tokens(items, m)
            parts.append((toks * ok[..., None]).flatten(1))
        onehot = torch.zeros(len(items), len(self.kinds))
        onehot[torch.arange(len(items)), torch.tensor([self.kinds.index(it.kind) for it in items])] = 1.0
        return torch.cat(parts + [onehot], 1)

    def fit(self, data: QADataset, epochs: int = 60, lr: float = 2e-3) -> "TokenProbe":
        torch.manual_seed(self.seed)
        x = self._inputs(data, data.items)
        y = torch.tensor([self.vocab.index(it.answer) for it in data.items])
        mask = torch.stack([self.allowed[it.kind] for it in data.items])
        self.net = nn.Sequential(nn.Linear(x.shape[1], self.hidden), nn.GELU(), nn.Linear(self.hidden, len(self.vocab)))
        opt = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=1e-3)
        rng = np.random.default_rng(self.seed)
        for _ in range(epochs):
            for idx in np.array_split(rng.permutation(len(y)), max(1, len(y) // 256)):
                logits = self.net(x[idx]).masked_fill(~mask[idx], -1e9)
                loss = nn.functional.cross_entropy(logits, y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return self

    @torch.no_grad()
    def predict(self, data: QADataset, items: list[QAItem]) -> list[str]:
        assert self.net is not None, "fit first"
        logits = self.net(self._inputs(data, items))
        mask = torch.stack([self.allowed.get(it.kind, torch.zeros(len(self.vocab), dtype=torch.bool)) for it in items])
        best = logits.masked_fill(~mask, -1e9).argmax(1).tolist()
        return [self.vocab[b] if mask[i].any() else "" for i, b in enumerate(best)]


def probe_report(train: QADataset, test: QADataset, modalities: tuple[str, ...], seed: int = 0) -> dict:
    """Fit a probe on `train`'s tokens of `modalities`, report held-out EM overall / per lighting / per template."""
    answers: dict[str, set[str]] = {}
    for it in train.items:
        answers.setdefault(it.kind, set()).add(it.answer)
    kinds = sorted(answers)
    probe = TokenProbe(modalities, kinds, {k: sorted(v) for k, v in answers.items()}, seed=seed).fit(train)
    items = [it for it in test.items if it.kind in answers]
    return score_report(items, probe.predict(test, items))


def echo_distance_rule(data: QADataset, items: list[QAItem]) -> list[str]:
    """The distance questions answered by reading the ultrasonic echo slots with a fixed rule (no training): the
    ring of the side's nearest echo as its bin, "none" without an echo. A yardstick for what the tokens carry when
    the probe, trained on the same few hundred scenes, reads less than that."""
    from edge.drives.qa import DISTANCE_BINS
    from edge.encoders.scene_tokens import ECHO_OFFSET, N_RINGS, SIDES

    out = []
    for it in items:
        toks, ok = data.batch_tokens([it], "ultrasonic")
        echo = toks[0, SIDES.index(it.kind.removeprefix("distance_")), ECHO_OFFSET:ECHO_OFFSET + N_RINGS]
        if not bool(ok.all()) or not bool(echo.any()):
            out.append("none")
            continue
        ring = int(echo.argmax())
        out.append(DISTANCE_BINS[min(max(ring, 1), len(DISTANCE_BINS)) - 1] if ring <= len(DISTANCE_BINS) else "none")
    return out
