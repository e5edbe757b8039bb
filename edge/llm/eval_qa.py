"""`edge eval qa`: exact match and token F1 of trained runs on held-out drives, per lighting and question kind.

`edge eval qa RUN [RUN ...]` scores run directories. `edge eval qa --table DIR` reproduces the shape of mPnP's
main table in one command (qa_table.py): it trains every configuration in its own process (so peak memory is
per run), evaluates them here and writes table.md, table.json and table.png.
"""

from __future__ import annotations

import argparse
import json
from itertools import combinations
from pathlib import Path

import torch
from tqdm import tqdm

from edge.llm.prior import BlindPrior
from edge.llm.probe import echo_distance_rule, probe_report
from edge.llm.qa_data import (DEFAULT_CACHE, DEFAULT_DRIVES_DIR, EVAL_DRIVES, TRAIN_DRIVES, QADataset,
                              build_dataset)
from edge.llm.qa_model import QAModel, load_run
from edge.llm.qa_text import score_report


def evaluate(model: QAModel, data: QADataset, batch: int = 32, progress: bool = True) -> dict:
    """Greedy answers for every item; EM/F1 overall, per lighting and per question kind."""
    preds: list[str] = []
    for i in tqdm(range(0, len(data.items), batch), desc="eval", unit="batch", disable=not progress, leave=False):
        preds += model.answer(data, data.items[i : i + batch])
    res = score_report(data.items, preds)
    res["examples"] = [{"q": it.question, "gold": it.answer, "pred": p} for it, p in list(zip(data.items, preds))[:12]]
    return res


def subsets_of(modalities: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every non-empty subset, in the run's modality order, smallest first."""
    return [c for k in range(1, len(modalities) + 1) for c in combinations(modalities, k)]


def subset_name(modalities: tuple[str, ...]) -> str:
    return "+".join(modalities)


def evaluate_subsets(model: QAModel, data: QADataset, progress: bool = True,
                     only: list[tuple[str, ...]] | None = None) -> dict[str, dict]:
    """The run evaluated with each non-empty subset of its modalities fed (the others masked, as detached)."""
    out = {}
    for sub in only or subsets_of(model.cfg.modalities):
        model.use_only(sub)
        out[subset_name(sub)] = evaluate(model, data, progress=progress)
    model.use_only(None)
    return out


def baselines(train: QADataset, test: QADataset, probe_modalities: list[tuple[str, ...]]) -> dict:
    """The blind prior (majority per template of the training items) and token probes, on the test items."""
    prior = BlindPrior.fit(train)
    out = {"prior": prior.report(test), "probe": {}}
    for mods in probe_modalities:
        out["probe"][subset_name(mods)] = probe_report(train, test, mods)
    if any("ultrasonic" in mods for mods in probe_modalities):
        items = [it for it in test.items if it.kind.startswith("distance_")]
        out["echo_rule"] = score_report(items, echo_distance_rule(test, items))
        out["echo_rule_prior"] = prior.report(QADataset(items, test.tokens, test.present))
    return out


def print_report(name: str, res: dict, prior: dict | None = None) -> None:
    """One line overall and per lighting, with the blind prior on the same items beside each figure."""
    def fig(r: dict, p: dict | None) -> str:
        return f"EM {r['em']:.1f}" + (f" (prior {p['em']:.1f}, {r['em'] - p['em']:+.1f})" if p else "") + f" n={r['n']}"

    parts = [f"all {fig(res['all'], prior['all'] if prior else None)}"]
    parts += [f"{k} {fig(v, prior['lighting'].get(k) if prior else None)}" for k, v in res["lighting"].items()]
    print(f"{name}: " + "; ".join(parts))
    print("  per template: " + ", ".join(
        f"{k} {v['em']:.0f}" + (f"/{prior['kind'][k]['em']:.0f}" if prior and k in prior["kind"] else "")
        for k, v in res["kind"].items()))


def eval_data(args: argparse.Namespace) -> QADataset:
    return build_dataset(args.drives, perception_dir=args.perception, drives_dir=args.drives_dir,
                         cache_dir=args.cache_dir, progress=not args.quiet, rig=args.rig)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("qa", help="QA exact match / token F1 per condition; --table DIR: the whole mPnP-style table")
    p.add_argument("runs", nargs="*", type=Path, help="run directories (edge train aligners / edge adapt)")
    p.add_argument("--table", type=Path, default=None, help="train + evaluate the full grid into this directory")
    p.add_argument("--n", nargs="+", type=int, default=[2, 4, 8, 16],
                   help="mPnP N grid for --table (N = all is the full-LLM row)")
    p.add_argument("--epochs", type=int, default=3, help="--table: epochs of each training")
    p.add_argument("--adapt-epochs", type=int, default=4, help="--table: epochs of each adaptation (add/switch)")
    p.add_argument("--adapt-samples", type=int, default=300, help="--table: night samples for add/switch")
    p.add_argument("--day-items", type=int, default=600, help="--table: day QA items for the day training")
    p.add_argument("--eval-items", type=int, default=10**6, help="--table: at most this many held-out items per lighting")
    p.add_argument("--skip", nargs="*", default=[], help="--table: run dirs to leave out, e.g. input_prefix/add")
    p.add_argument("--report-only", action="store_true", help="--table: rewrite table.md/png from table.json")
    p.add_argument("--chosen-n", type=int, default=8, help="--table: the N whose targets are checked")
    p.add_argument("--mpnp-lora-rank", type=int, default=0,
                   help="--table: LoRA rank on k/v of the connected blocks in the mPnP rows (0 = aligners and gates only)")
    p.add_argument("--seed", type=int, default=0, help="item sampling (--eval-items) and, for --table, the first training seed")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="--table: training seeds of the chosen N and the full LLM (default: --seed only)")
    p.add_argument("--jobs", type=int, default=1, help="--table: trainings and evaluations run this many at a time")
    p.add_argument("--drives", nargs="+", default=list(EVAL_DRIVES), help="held-out drives (specs or bag dirs)")
    p.add_argument("--train-drives", nargs="+", default=list(TRAIN_DRIVES),
                   help="drives the blind prior (majority answer per template) and the probes are fitted on")
    p.add_argument("--prior", action="store_true", help="print the blind prior per template and overall (no LLM)")
    p.add_argument("--probe", nargs="*", default=None, metavar="MODS",
                   help="also fit token probes, one per item (e.g. fisheye ultrasonic fisheye+ultrasonic); "
                        "no item: each modality alone and all together")
    p.add_argument("--subsets", nargs="*", default=None, metavar="SUBSET",
                   help="evaluate each run with subsets of its modalities fed (composable aligners): the named ones "
                        "(e.g. ultrasonic+audio), or every non-empty subset when none is named")
    p.add_argument("--drives-dir", type=Path, default=DEFAULT_DRIVES_DIR)
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--perception", type=Path, default=Path("models/perception"))
    p.add_argument("--rig", type=Path, default=None,
                   help="rig YAML the drives are generated on and encoded for (a plugin's rig adds its modality)")
    p.add_argument("--lighting", nargs="+", default=["day", "night"], help="subsets to score (or 'all')")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    p.add_argument("--llm", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from edge.llm.errors import LLMError
    from edge.llm.loading import load_llm

    torch.set_num_threads(args.threads)
    if args.table is not None:
        from edge.llm.qa_table import report, run_table

        if args.report_only:
            return report(args.table, args.chosen_n)
        return run_table(args)
    if not args.runs and not args.prior and args.probe is None:
        raise LLMError("give run directories to evaluate, --prior, --probe, or --table DIR")
    data = eval_data(args)
    if "all" not in args.lighting:
        data = data.filter(lighting=args.lighting)
    if args.eval_items < len(data.items):
        data = data.subset(args.eval_items, args.seed)
    results: dict = {}
    prior = None
    if args.prior or args.probe is not None or args.runs:
        train = build_dataset(args.train_drives, perception_dir=args.perception, drives_dir=args.drives_dir,
                              cache_dir=args.cache_dir, progress=not args.quiet, rig=args.rig)
        have = tuple(m for m in data.modalities if m in train.modalities)  # the columns both sets of drives hold
        probes = [tuple(m.split("+")) for m in args.probe] if args.probe else \
            ([(m,) for m in have] + [have] if args.probe is not None else [])
        unseen = sorted({it.kind for it in data.items} - {it.kind for it in train.items})
        if unseen:  # scored as wrong for every method, and said so: no silent change of what is measured
            print(f"note: templates absent from the training drives (no prior, probe or aligner learnt them): "
                  f"{', '.join(unseen)}")
        base = baselines(train, data, probes)
        prior = base["prior"]
        results["baselines"] = base
        print_report("blind prior", prior)
        for name, res in base["probe"].items():
            print_report(f"probe {name}", res, prior)
        if "echo_rule" in base:
            print_report("echo rule (distance questions read off the ultrasonic echo slots, no training)",
                         base["echo_rule"], base["echo_rule_prior"])
    llm = load_llm(args.llm) if args.runs else None
    for run in args.runs:
        model = load_run(llm, run)
        data.require(model.cfg.modalities)
        if args.subsets is not None:
            named = [tuple(x.split("+")) for x in args.subsets] or None
            subs = evaluate_subsets(model, data, progress=not args.quiet, only=named)
            results[str(run)] = {"subsets": subs}
            for name, res in subs.items():
                print_report(f"{run} [{name}]", res, prior)
        else:
            res = evaluate(model, data, progress=not args.quiet)
            results[str(run)] = res
            print_report(str(run), res, prior)
        model.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0
