"""The LLM side of the runtime: one loaded LLM, its mPnP connector, and the aligner sets found on disk.

An aligner set is the aligners trained together (one `edge train aligners` / `edge adapt` run: a directory of
`*.safetensors`, e.g. models/aligners/day with fisheye + camera, models/aligners/switch with ultrasonic + audio).
Its measured answer accuracy per lighting comes from `eval.json` beside the sets (written by
`edge eval qa <sets> --lighting day night --json <dir>/eval.json`); the scheduler reads it to choose the set, and
the plan names it. Each frame the plan's set is attached (and fed this frame's tokens), everything else is
detached. Nothing is reloaded when the plan changes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from edge.encoders.fingerprint import mismatched
from edge.errors import EdgeError
from edge.llm import MPnPConnector, load_aligner, load_llm
from edge.llm.qa_text import prompt_text
from edge.llm.training import KVLoRA, load_kv_lora
from edge.runtime.scheduler import AlignerSet, Plan

EVAL_FILE = "eval.json"
log = logging.getLogger(__name__)


class Answerer:
    def __init__(self, aligner_dir: str | Path | None, llm_source: str | None = None, max_new_tokens: int = 8) -> None:
        self.llm = load_llm(llm_source)
        self.sets: dict[str, dict[str, Any]] = {}
        self.set_lora: dict[str, KVLoRA] = {}  # LoRA on k/v trained with a set, active only while it is attached
        self.prior: dict[str, str] = {}  # majority answer per template of the training drives (run.json)
        trained_for: dict[str, tuple[str, ...]] = {}  # the conditions each set was trained on (run.json)
        # hashes of the encoder weights each set learnt to read (run.json `perception_weights`; {} before they were
        # recorded): the runtime names the sets whose encoders have changed since
        self.trained_on: dict[str, dict[str, str]] = {}
        accuracy: dict[str, dict[str, float]] = {}  # measured exact match (0..1) per lighting (eval.json)
        root = Path(aligner_dir) if aligner_dir is not None else None
        if root is not None and root.is_dir():
            for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
                found = {}
                for path in sorted(folder.glob("aligner_*.safetensors")):
                    # the file name says which modality it serves: a file holding another's is refused, not re-routed
                    al = load_aligner(path, modality=path.stem.removeprefix("aligner_"), shape=self.llm.shape)
                    found[al.modality] = al
                if found:
                    self.sets[folder.name] = found
                    record = _run_record(folder)
                    trained_for[folder.name] = _run_lighting(record)
                    self.trained_on[folder.name] = dict(record.get("perception_weights") or {})
                    self.prior.update(record.get("blind_prior") or {})
                    if (folder / "lora.safetensors").exists():
                        self.set_lora[folder.name] = load_kv_lora(self.llm.model, folder / "lora.safetensors")
                        self.set_lora[folder.name].enabled = False
            accuracy, subsets = _measured_accuracy(root / EVAL_FILE, set(self.sets))
            # Composable aligners (trained with random modality subsets): each measured subset is a set of its own,
            # named "<run>:<modality>+<modality>", sharing the run's aligners and LoRA.
            for run, names in subsets.items():
                for sub in names:
                    mods = tuple(sub.split("+"))
                    missing = [m for m in mods if m not in self.sets[run]]
                    if missing:
                        raise EdgeError(f"{root / EVAL_FILE}: subset '{sub}' of '{run}' names modalities {missing} "
                                        f"that {root / run} has no aligner for")
                    name = f"{run}:{sub}"
                    self.sets[name] = {m: self.sets[run][m] for m in mods}
                    trained_for[name] = trained_for[run]
                    self.trained_on[name] = self.trained_on[run]
                    if run in self.set_lora:
                        self.set_lora[name] = self.set_lora[run]
        self._aligner_sets = tuple(AlignerSet(name, tuple(group), accuracy.get(name, {}), trained_for[name])
                                   for name, group in self.sets.items())
        every = [al for group in self.sets.values() for al in group.values()]
        depth = min((al.spec.n_blocks for al in every), default=min(8, self.llm.shape.n_layers))
        self.connector = MPnPConnector(self.llm.model, depth)
        self.max_new_tokens = max_new_tokens

    def stale_sets(self, current: dict[str, str]) -> list[str]:
        """One line per aligner set trained on tokens of other encoder weights than `current` (token_fingerprints
        of the loaded perception directory): its shapes fit, but its answers were measured on other tokens."""
        out = []
        for name, group in self.sets.items():
            stale = mismatched(self.trained_on.get(name, {}), current, tuple(group))
            if stale and ":" not in name:  # composable subsets share their run's record: named once
                out.append(f"aligner set '{name}' was trained on tokens of other perception weights for "
                           f"{', '.join(stale)} (run.json perception_weights differ from the loaded encoders): its "
                           f"answers may be worse than its measured accuracy; retrain it (edge train aligners)")
        return out

    @property
    def aligners(self) -> dict[str, Any]:
        """Every modality with an aligner in some set (the first set that has it)."""
        out: dict[str, Any] = {}
        for group in self.sets.values():
            for m, al in group.items():
                out.setdefault(m, al)
        return out

    def aligner_sets(self) -> tuple[AlignerSet, ...]:
        """What the scheduler needs to choose a set: modalities, measured accuracy, trained conditions."""
        return self._aligner_sets

    @property
    def n_blocks(self) -> int:
        return self.connector.n_blocks

    @property
    def attached(self) -> tuple[str, ...]:
        return self.connector.attached

    def apply(self, plan: Plan, tokens: dict[str, torch.Tensor]) -> None:
        """Attach the plan's aligner set (each modality fed this frame's tokens); detach everything else."""
        if plan.aligners and plan.aligners not in self.sets:
            raise EdgeError(f"plan names aligner set '{plan.aligners}', loaded sets: {sorted(self.sets)}")
        group = self.sets.get(plan.aligners, {})
        active = self.set_lora.get(plan.aligners)
        for lora in self.set_lora.values():
            lora.enabled = lora is active
        wanted = {m for m in group if m in plan.modalities and m in tokens}
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


def _run_record(folder: Path) -> dict:
    """A set's run.json ({} when absent or unreadable: the set still loads, unranked)."""
    try:
        doc = json.loads((folder / "run.json").read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _run_lighting(record: dict) -> tuple[str, ...]:
    """Lighting conditions a set was trained on, from its run.json record (empty when unknown)."""
    lighting = record.get("lighting") or ()
    return tuple(lighting) if isinstance(lighting, (list, tuple)) else ()


def _measured_accuracy(path: Path, names: set[str]) -> tuple[dict[str, dict[str, float]], dict[str, list[str]]]:
    """From `edge eval qa ... --json` output keyed by run directory: ({set name: {lighting: exact match 0..1}},
    {run: [measured subsets]}); a run evaluated with --subsets gives one entry per subset, "<run>:<subset>"."""
    if not path.exists():
        if names:
            log.warning("%s: missing; aligner sets are ranked by the conditions they were trained for only", path)
        return {}, {}
    acc: dict[str, dict[str, float]] = {}
    subsets: dict[str, list[str]] = {}
    try:
        doc = json.loads(path.read_text())
        for run, res in doc.items():
            name = Path(run).name
            if name not in names:
                continue
            if "subsets" in res:
                subsets[name] = list(res["subsets"])
                for sub, r in res["subsets"].items():
                    acc[f"{name}:{sub}"] = {lt: float(v["em"]) / 100.0 for lt, v in r["lighting"].items()}
            else:
                acc[name] = {lt: float(v["em"]) / 100.0 for lt, v in res["lighting"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EdgeError(f"{path}: not an `edge eval qa --json` result ({exc.__class__.__name__}: {exc})") from None
    return acc, subsets


def make_answerer(aligner_dir: str | Path | None, llm_source: str | None, max_new_tokens: int) -> Answerer:
    try:
        return Answerer(aligner_dir, llm_source, max_new_tokens)
    except EdgeError:
        raise
    except (OSError, ValueError) as exc:
        raise EdgeError(f"cannot load the LLM ({exc})") from exc
