"""The blind prior: for each question template, always give its most frequent answer in the training drives.

No sensor, no LLM. Every QA accuracy the project reports stands next to this figure on the same items
(docs/qa.md), because a benchmark that a constant answer per template passes measures nothing about the sensors.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from edge.llm.qa_data import QADataset, QAItem
from edge.llm.qa_text import score_report


@dataclass(frozen=True)
class BlindPrior:
    """Majority answer per template, learnt from training items; templates never seen get no answer ("")."""

    answers: dict[str, str]

    @classmethod
    def fit(cls, train: QADataset) -> "BlindPrior":
        counts: dict[str, Counter[str]] = {}
        for it in train.items:
            counts.setdefault(it.kind, Counter())[it.answer] += 1
        return cls({k: c.most_common(1)[0][0] for k, c in sorted(counts.items())})

    def predict(self, items: list[QAItem]) -> list[str]:
        return [self.answers.get(it.kind, "") for it in items]

    def report(self, data: QADataset) -> dict:
        """EM / F1 (percent) overall, per lighting and per template, in the shape `eval_qa.evaluate` returns."""
        return score_report(data.items, self.predict(data.items))
