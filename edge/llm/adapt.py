"""`edge adapt`: runtime adaptation, mPnP style: add modalities or switch to others on a few hundred samples.

`--add ultrasonic audio` keeps the attached aligners of `--from` (frozen) and trains new aligners next to them;
`--switch fisheye,camera ultrasonic,audio` detaches the first set and trains the second. The depth N comes from a
budget: a FLOPs budget divided by the samples to train on gives FLOPs per sample, and `edge.llm.cost.choose_n`
returns the deepest connection within it (FLOPs counted as training executes them). A time budget uses the time
per sample measured on this machine at N=1 and at the deepest allowed N (it is linear in N), and also stops
training when it is spent.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import torch

from edge.llm.cost import CostShape, ModalityCost, choose_n
from edge.llm.errors import LLMError
from edge.llm.qa_data import TRAIN_DRIVES, QADataset, check_modalities, known_modalities
from edge.llm.qa_model import RUN_FILE, QAConfig, QAModel
from edge.llm.qa_text import QATokenizer
from edge.llm.train_aligners import (
    add_data_args, add_train_args, command_line, load_data, perception_fingerprints, sequence_stats, train,
)


def plan_modalities(base: tuple[str, ...], add: list[str] | None, switch: list[str] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(attached, trained) after an --add or a --switch FROM TO (comma-separated modality lists)."""
    if bool(add) == bool(switch):
        raise LLMError("give exactly one of --add MODALITY [...] or --switch FROM TO")
    if add:
        new = check_modalities(add)
        dup = [m for m in new if m in base]
        if dup:
            raise LLMError(f"cannot add {dup}: already attached ({list(base)})")
        return base + new, new
    if len(switch) != 2:
        raise LLMError("--switch takes two comma-separated lists: FROM TO (e.g. fisheye,camera ultrasonic,audio)")
    old, new = (check_modalities(s.split(",")) for s in switch)
    missing = [m for m in old if m not in base]
    if missing:
        raise LLMError(f"cannot switch away from {missing}: not attached in the starting run ({list(base)})")
    kept = tuple(m for m in base if m not in old)
    return kept + tuple(m for m in new if m not in kept), tuple(m for m in new if m not in kept)


def kept_config(base_cfg: dict, adding: bool, lora: int, train_lora: bool = False) -> dict:
    """What the adapted run keeps of the starting run's config: composable aligners stay composable (random subsets
    in training, the frozen ones each fed with probability 1/2 beside the trained ones), and with --add a LoRA
    carried over stays frozen (unless `train_lora`), so with the added modality masked the run answers as before."""
    carried = bool(lora and base_cfg.get("lora_rank", 0) == lora)
    return {"random_subsets": bool(base_cfg.get("random_subsets", False)),
            "lora_trained": not (adding and carried and not train_lora)}


def depth_limit(base_cfg: dict, adding: bool, method: str, lora: bool) -> tuple[int | None, bool]:
    """(deepest N a budget may choose, whether N must equal it) when starting from a run. With --add the kept
    aligners have gates only for the starting run's N blocks; a LoRA carried over from it exists on exactly those
    blocks, so then N is the starting run's."""
    n = base_cfg.get("n_blocks")
    if method != "mpnp" or not n:
        return None, False
    carried = bool(lora and base_cfg.get("lora_rank", 0))
    return (n, carried) if adding or carried else (None, False)


def flops_budget_n(budget_flops: float, samples: int, epochs: int, shape: CostShape, seq_len: float,
                   modalities: tuple[str, ...], d_enc: int, lora: bool, cap: int | None = None,
                   loss_tokens: float | None = None, distinct_texts: int | None = None,
                   n_tokens: dict[str, int] | None = None) -> int:
    """Deepest N whose (samples x epochs) training FLOPs fit the budget (choose_n on the per-sample share).

    With `loss_tokens` and `distinct_texts` the FLOPs are counted as training executes them (head on the answer
    tokens, frozen trunk once per distinct text); without them, by the paper's accounting."""
    seen = max(1, samples * epochs)
    per_sample = budget_flops / seen
    share = 1.0 if distinct_texts is None else min(1.0, distinct_texts / seen)
    mods = [ModalityCost((n_tokens or {}).get(m, 16), d_enc) for m in modalities]
    n = choose_n(per_sample, shape, max(1, round(seq_len)), mods, train_kv=lora, loss_tokens=loss_tokens,
                 trunk_share=share)
    return min(n, cap) if cap else n


def seconds_per_sample(make_model: Callable[[int], QAModel], n: int, data: QADataset, batch: int = 16,
                       steps: int = 2) -> float:
    """Measured training seconds per sample at depth `n` (after a warm-up step that also fills the trunk cache,
    as training does: later epochs reuse the trunk)."""
    model = make_model(n)
    try:
        params = model.trainable()
        items = data.items[:batch]
        model.loss(data, items).backward()
        t0 = time.perf_counter()
        for _ in range(steps):
            model.loss(data, items).backward()
        seconds = time.perf_counter() - t0
        for p in params:
            p.grad = None
        return seconds / (steps * len(items))
    finally:
        model.close()


def seconds_budget_n(budget_s: float, samples: int, epochs: int, measure: Callable[[int], float], n_max: int,
                     reserve: float = 0.1) -> tuple[int, str]:
    """Deepest N whose training fits a wall-time budget.

    The time per sample is linear in N (the last N blocks run forward and backward every step; the frozen trunk
    runs once per distinct text), so it is measured at N=1 and N=n_max on this machine, now, and interpolated.
    `reserve` keeps a share of the budget for the trunk passes and set-up; training also stops when it is spent."""
    t1 = measure(1)
    tmax = measure(n_max) if n_max > 1 else t1
    slope = max(0.0, (tmax - t1) / max(1, n_max - 1))
    usable = budget_s * (1 - reserve) / max(1, samples * epochs)
    if usable < t1:
        raise LLMError(f"budget {budget_s:.0f} s is below the cheapest connection: N=1 needs about "
                       f"{t1 * samples * epochs / (1 - reserve):.0f} s for {samples} samples x {epochs} epochs")
    n = n_max if slope == 0 else min(n_max, 1 + int((usable - t1) / slope))
    return n, (f"{budget_s:.0f} s: measured {1e3 * t1:.1f} ms/sample at N=1 and {1e3 * tmax:.1f} ms/sample at "
               f"N={n_max}, so N={n} needs about {(t1 + slope * (n - 1)) * samples * epochs:.0f} s")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt", help="runtime adaptation: add or switch modalities, N chosen from a budget")
    p.add_argument("--from", dest="base", type=Path, default=None,
                   help="run directory whose aligners are attached now (default: none attached)")
    p.add_argument("--add", nargs="+", metavar="MODALITY",
                   help=f"modalities to add, of the installed plugins ({', '.join(known_modalities())}); the data "
                        "must hold their tokens (a plugin's modality: --rig and --perception of a stack with it)")
    p.add_argument("--switch", nargs=2, metavar=("FROM", "TO"), help="comma-separated lists, e.g. fisheye,camera ultrasonic,audio")
    p.add_argument("--out", type=Path, required=True, help="run directory for the adapted aligners")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-flops", type=float, default=None, help="total training FLOPs allowed")
    budget.add_argument("--budget-seconds", type=float, default=None, help="wall time allowed for training")
    p.add_argument("--n-blocks", type=int, default=None, help="force N (otherwise chosen from the budget)")
    p.add_argument("--method", choices=("mpnp", "full", "prefix"), default=None, help="default: the starting run's")
    p.add_argument("--lora-rank", type=int, default=None)
    p.add_argument("--samples", type=int, default=300, help="QA items to adapt on (seeded subset)")
    p.add_argument("--train-lora", action="store_true",
                   help="--add: train the LoRA carried over from --from too (default: frozen with its aligners)")
    add_data_args(p, TRAIN_DRIVES, "night")
    add_train_args(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from edge.llm.loading import load_llm

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    base_cfg: dict = {"method": "mpnp", "modalities": [], "n_blocks": None, "lora_rank": 0}
    if args.base is not None:
        path = args.base / RUN_FILE
        if not path.exists():
            raise LLMError(f"{args.base}: no {RUN_FILE} (give a directory written by `edge train aligners`)")
        base_cfg = json.loads(path.read_text())["config"]
    attached, trained = plan_modalities(tuple(base_cfg["modalities"]), args.add, args.switch)
    method = args.method or base_cfg["method"]
    lora = base_cfg.get("lora_rank", 0) if args.lora_rank is None else args.lora_rank
    kept = kept_config(base_cfg, bool(args.add), lora, args.train_lora)
    args.max_items = args.max_items or args.samples
    data = load_data(args)
    data.require(attached)  # a modality the drives' stack did not encode: named with the drive and its cache file
    llm = load_llm(args.llm)
    cap, exact = depth_limit(base_cfg, bool(args.add), method, bool(lora))
    n, reason = args.n_blocks, "forced by --n-blocks"
    if n is None and method == "mpnp":
        if args.budget_flops is None and args.budget_seconds is None:
            raise LLMError("give --budget-flops, --budget-seconds or --n-blocks")
        n_max = cap or llm.shape.n_layers
        if args.budget_seconds is not None:
            def at_depth(d: int) -> QAModel:
                return QAModel(llm, QAConfig(method, attached, trained, d, lora, **kept))

            n, reason = seconds_budget_n(args.budget_seconds, len(data.items), args.epochs,
                                         lambda k: seconds_per_sample(at_depth, k, data, args.batch), n_max)
        else:
            stats = sequence_stats(QATokenizer(llm.tokenizer), data)
            n = flops_budget_n(args.budget_flops, len(data.items), args.epochs, CostShape.of(llm.model), stats.mean_len,
                               attached, 128, bool(lora), cap, loss_tokens=stats.mean_loss_tokens,
                               distinct_texts=stats.distinct, n_tokens=data.token_counts())
            reason = f"{args.budget_flops:.3g} FLOPs as executed ({stats.distinct} distinct texts)"
        reason = f"N={n} chosen from {reason}, over {len(data.items)} samples x {args.epochs} epochs" + (
            f" (capped at the starting run's N={cap})" if cap and n == cap else "")
        if exact and n != cap:
            raise LLMError(f"the budget allows N={n}, but the LoRA of {args.base} exists on its last {cap} blocks only: "
                           f"give a budget for N={cap}, --n-blocks {cap}, or --lora-rank 0 to adapt without it")
    n = n or (base_cfg.get("n_blocks") or 8)
    print(f"adapt: attached {list(attached)}, training {list(trained)}, method {method}, {reason}")
    model = QAModel(llm, QAConfig(method, attached, trained, n, lora, **kept), init_from=args.base)
    rec = train(model, data, args.out, epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed,
                time_budget_s=args.budget_seconds, progress=not args.quiet, release_trunk=True,
                extra={"drives": args.drives, "lighting": args.lighting, "adapt_from": str(args.base),
                       "command": command_line(),
                       "n_reason": reason, "budget_flops": args.budget_flops, "budget_seconds": args.budget_seconds,
                       "perception_weights": perception_fingerprints(args.perception)})
    print(json.dumps({k: rec[k] for k in ("n_blocks", "items", "train_flops", "train_seconds", "peak_rss_mb",
                                          "train_added_rss_mb", "loss_per_epoch", "stopped")}))
    return 0
