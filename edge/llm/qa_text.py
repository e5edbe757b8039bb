"""How a QA pair becomes tokens, and how answers are scored (exact match and token F1).

Prompt choice: a plain `Question: ...\\nAnswer:` prompt, not the chat template. SmolLM2's chat template adds a
system turn and role markers (~30 extra tokens) to every training sample; with frozen early blocks the short
prompt carries the same information, keeps sequences ~14 tokens and so training cost down. The target is
` <answer>` followed by the tokenizer's EOS, so generation stops by itself.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Any


def prompt_text(question: str) -> str:
    return f"Question: {question}\nAnswer:"


class QATokenizer:
    """Memoised prompt/answer tokenisation (only a few dozen distinct strings occur in templated QA)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.eos = int(tokenizer.eos_token_id)
        self.pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        self._prompt = lru_cache(maxsize=None)(self._encode_prompt)
        self._answer = lru_cache(maxsize=None)(self._encode_answer)

    def _encode_prompt(self, question: str) -> tuple[int, ...]:
        return tuple(self.tok(prompt_text(question), add_special_tokens=False).input_ids)

    def _encode_answer(self, answer: str) -> tuple[int, ...]:
        return tuple(self.tok(" " + answer, add_special_tokens=False).input_ids) + (self.eos,)

    def prompt(self, question: str) -> tuple[int, ...]:
        return self._prompt(question)

    def sequence(self, question: str, answer: str) -> tuple[tuple[int, ...], int]:
        """Prompt + answer + EOS token ids, and where the answer starts (the loss covers answer and EOS)."""
        p = self._prompt(question)
        return p + self._answer(answer), len(p)

    def decode(self, ids: list[int]) -> str:
        if self.eos in ids:
            ids = ids[: ids.index(self.eos)]
        return self.tok.decode(ids, skip_special_tokens=True).strip()


def normalize(text: str) -> str:
    """Lower-case, drop punctuation other than the decimal point, squeeze spaces."""
    text = re.sub(r"[^0-9a-z. ]+", " ", text.lower())
    text = re.sub(r"(?<![0-9])\.|\.(?![0-9])", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answer: str) -> float:
    return float(normalize(prediction) == normalize(answer))


def token_f1(prediction: str, answer: str) -> float:
    """SQuAD-style F1 over whitespace tokens of the normalised strings."""
    pred, gold = normalize(prediction).split(), normalize(answer).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def score(predictions: list[str], answers: list[str]) -> dict[str, float]:
    """Mean exact match and token F1, in percent."""
    n = max(1, len(answers))
    return {"em": 100.0 * sum(exact_match(p, a) for p, a in zip(predictions, answers)) / n,
            "f1": 100.0 * sum(token_f1(p, a) for p, a in zip(predictions, answers)) / n, "n": len(answers)}


def score_report(items: list[Any], predictions: list[str]) -> dict:
    """`score` overall, per lighting and per template (`kind`) of QA items (anything with answer, lighting, kind):
    the one shape every QA figure is reported in (runs, the blind prior, probes)."""
    res: dict = {"all": score(predictions, [it.answer for it in items]), "lighting": {}, "kind": {}}
    for key in ("lighting", "kind"):
        for value in sorted({getattr(it, key) for it in items}):
            idx = [j for j, it in enumerate(items) if getattr(it, key) == value]
            res[key][value] = score([predictions[j] for j in idx], [items[j].answer for j in idx])
    return res
