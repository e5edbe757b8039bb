"""The mPnP table's plan and report (edge/llm/qa_table.py), on made-up rows: no training, no LLM.

The table is the issue-10 deliverable whose figures the docs quote, so what it claims must follow from its rows:
baselines in every block, seeds averaged, targets judged against the prior and the full LLM as written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from edge.llm.qa_table import CONDITIONS, markdown, plan, targets


def _args(tmp_path: Path, **kw: object) -> argparse.Namespace:
    base = dict(table=tmp_path, n=[2, 8], chosen_n=8, seed=0, seeds=[0, 1], mpnp_lora_rank=8, epochs=1,
                adapt_epochs=1, day_items=100, adapt_samples=50, threads=1, perception="models/perception",
                cache_dir=".cache/qa", drives_dir="drives/qa", skip=[])
    base.update(kw)
    return argparse.Namespace(**base)


def test_plan_trains_every_seed_only_for_chosen_n_and_full_llm(tmp_path: Path) -> None:
    cells = plan(_args(tmp_path))
    seeds = {(c["method"], c["seed"]) for c in cells}
    assert ("mPnP+LoRA N=8", 1) in seeds and ("full LLM", 1) in seeds
    assert ("mPnP+LoRA N=2", 1) not in seeds and ("input prefix", 1) not in seeds
    # adaptations start from their own seed's day run, and every condition has a text-only cell
    for c in cells:
        if c["condition"] in ("Night + add", "Night switch") and c["method"] != "text only":
            assert c["after"] == Path(c["run"]).parent / "day"
    assert {c["condition"] for c in cells if c["method"] == "text only"} == set(CONDITIONS)


def _row(cond: str, method: str, em: float, kinds: dict[str, float], n: int = 8, seed: int | None = 0,
         flops: float = 1e12, added: float = 100.0, peak: float = 1000.0) -> dict:
    return dict(condition=cond, method=method, n_blocks=n, seed=seed, em=em, f1=em, trained=cond != "Night",
                kinds=kinds, flops=flops, flops_paper=flops, seconds=10.0, added_mb=added, peak_mb=peak)


def _rows(day_em: tuple[float, float], day_kinds: dict[str, float]) -> list[dict]:
    prior_kinds = {"distance_front": 10.0, "siren": 50.0}
    rows = []
    for cond in CONDITIONS:
        rows.append(_row(cond, "blind prior", 30.0, prior_kinds, n=0, seed=None))
        rows.append(_row(cond, "text only", 29.0, prior_kinds))
        for seed, em in enumerate(day_em):
            rows.append(_row(cond, "mPnP+LoRA N=8", em, day_kinds, seed=seed))
            rows.append(_row(cond, "full LLM", em + 1.0, day_kinds, n=30, seed=seed, flops=5e12, added=400.0,
                             peak=2000.0))
    return rows


def test_targets_average_seeds_and_judge_against_prior() -> None:
    lines = "\n".join(targets(_rows((58.0, 64.0), {"distance_front": 40.0, "siren": 90.0}), 8))
    assert "Day: EM 61.0 vs blind prior 30.0 (+31.0 points; target >= +30: met)" in lines
    assert "templates at or below their prior: none (met)" in lines
    assert "training FLOPs 5.00x lower as executed (target >= 3.7x: met)" in lines


def test_targets_name_templates_at_or_below_prior() -> None:
    lines = "\n".join(targets(_rows((40.0, 40.0), {"distance_front": 10.0, "siren": 90.0}), 8))
    assert "+10.0 points; target >= +30: MISSED" in lines
    assert "at or below their prior: distance_front (MISSED)" in lines


def test_markdown_puts_baselines_first_in_every_block() -> None:
    md = markdown(_rows((50.0, 52.0), {"distance_front": 40.0, "siren": 90.0}), {"n": [8]}, 8)
    table = [line for line in md.splitlines() if any(line.startswith(f"| {c} | blind prior |") for c in CONDITIONS)]
    assert len(table) == len(CONDITIONS)
    first_rows = [line for line in md.splitlines() if line.startswith(("| Day |", "| Night switch |"))]
    assert " blind prior " in first_rows[0] and " text only " in first_rows[1]
    assert "| Day | mPnP+LoRA N=8 | 8 | 1 | 52.0 | +22.0 |" in md


@pytest.mark.parametrize("seeds", [None, [3]])
def test_plan_without_extra_seeds_trains_each_method_once(tmp_path: Path, seeds: list[int] | None) -> None:
    cells = plan(_args(tmp_path, seeds=seeds, seed=3))
    runs = {str(c["run"]) for c in cells}
    assert not any("seed" in Path(r).parent.name for r in runs)
    assert {c["seed"] for c in cells} == {3}
