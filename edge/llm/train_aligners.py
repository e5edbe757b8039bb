"""`edge train aligners`: offline training of modality aligners (and gates) on QA pairs from drive ground truth.

The LLM and the encoders stay frozen; only the method's parts train (see qa_model.py), and backward runs through
the last N blocks only. Each run writes a directory: `aligner_<modality>.safetensors` (save_aligner format),
`lora.safetensors` / `prefix.safetensors` where the method has them, and `run.json` with the config, the analytic
training FLOPs (edge.llm.cost), the measured wall time and peak memory, and the loss per epoch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edge.llm.cost import CostShape, ModalityCost, training_flops
from edge.llm.errors import LLMError
from edge.llm.prior import BlindPrior
from edge.llm.qa_data import DEFAULT_CACHE, DEFAULT_DRIVES_DIR, TRAIN_DRIVES, QADataset, build_dataset, known_modalities
from edge.llm.qa_model import METHODS, QAConfig, QAModel
from edge.llm.qa_text import QATokenizer



class PeakRSS:
    """Samples this process's resident memory every few ms; `peak - base` is what the training loop added.

    tracemalloc does not see PyTorch's CPU allocations, so RSS is the honest measure; run one training per
    process (the table runner does) so memory freed by an earlier run cannot hide a later run's growth.
    """

    def __init__(self, period_s: float = 0.005) -> None:
        self.period = period_s
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.period)

    def __enter__(self) -> "PeakRSS":
        self.base = self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def flops_per_sample(model: QAModel, seq_len: float, loss_tokens: float | None = None,
                     trunk_share: float = 1.0, n_tokens: dict[str, int] | None = None) -> float:
    """Analytic training FLOPs of one sample for this method (edge.llm.cost; the prefix baseline by the same rules).

    With the defaults this is the paper's accounting (every block forward per sample, head on every token); with
    `loss_tokens` and `trunk_share` it counts what `QAModel.loss` executes."""
    cs = CostShape.of(model.model)
    seq = max(1, round(seq_len))
    mods = [ModalityCost((n_tokens or {}).get(m, 16), model.cfg.d_enc) for m in model.cfg.modalities]
    if model.cfg.method == "prefix":
        p = sum(m.tokens for m in mods)
        proj = sum(2.0 * m.tokens * (m.d_enc * 4 * m.d_enc + 4 * m.d_enc * cs.llm.d_model) for m in mods)
        return training_flops(cs, seq + p, cs.llm.n_layers, [], loss_tokens=loss_tokens) + 3 * proj
    return training_flops(cs, seq, model.n_blocks, mods, train_kv=model.lora is not None, loss_tokens=loss_tokens,
                          trunk_share=trunk_share)


@dataclass(frozen=True)
class SequenceStats:
    """What the FLOPs count needs from the training texts, from one tokenisation pass."""

    mean_len: float  # prompt + answer + EOS tokens per sample
    mean_loss_tokens: float  # tokens the loss (and so the output head) covers: the answer and EOS
    distinct: int  # distinct token sequences: how often the frozen trunk runs per epoch at most


def sequence_stats(text: QATokenizer, data: QADataset) -> SequenceStats:
    seqs = [text.sequence(it.question, it.answer) for it in data.items]
    return SequenceStats(float(np.mean([len(s) for s, _ in seqs])), float(np.mean([len(s) - a for s, a in seqs])),
                         len({s for s, _ in seqs}))


def train(model: QAModel, data: QADataset, out: Path | None, *, epochs: int = 3, batch: int = 16, lr: float = 2e-3,
          seed: int = 0, time_budget_s: float | None = None, progress: bool = True, extra: dict | None = None,
          release_trunk: bool = False) -> dict:
    """Train the model's trainable parts; returns (and, with `out`, saves) the run record.

    `release_trunk`: fill the trunk cache with every training text first, then free the frozen blocks' weights
    (QAModel.release_trunk): the CLI's training processes do, since they exit after saving."""
    if not data.items:
        raise LLMError("no QA items to train on (check --drives / --lighting)")
    params = model.trainable()
    if not params:
        raise LLMError(f"method '{model.cfg.method}' with modalities {list(model.cfg.modalities)} has nothing to train")
    rng = np.random.default_rng(seed)
    steps_per_epoch = math.ceil(len(data.items) / batch)
    total = epochs * steps_per_epoch
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))))
    model.train(True)
    losses: list[float] = []
    seen = 0
    stopped = None
    bar = tqdm(total=total, desc=f"train {model.cfg.method} N={model.n_blocks}", unit="step", disable=not progress)
    t_fill = time.perf_counter()  # the trunk passes are training work: their time counts in train_seconds
    released = model.release_trunk([model.text.sequence(it.question, it.answer)[0] for it in data.items]) \
        if release_trunk else 0
    fill_s = time.perf_counter() - t_fill
    with torch.no_grad():  # touch every weight once (they may be memory-mapped), so RSS counts training only
        model.loss(data, data.items[:2])
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        for epoch in range(epochs):
            order = rng.permutation(len(data.items))
            run = []
            for s in range(steps_per_epoch):
                items = [data.items[i] for i in order[s * batch : (s + 1) * batch]]
                loss = model.loss(data, items)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                seen += len(items)
                run.append(loss.item())
                bar.update()
                bar.set_postfix(loss=f"{np.mean(run[-10:]):.3f}", epoch=epoch + 1)
                if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
                    stopped = f"time budget {time_budget_s:.0f} s reached after {seen} samples"
                    break
            losses.append(float(np.mean(run)))
            if stopped:
                break
    seconds = time.perf_counter() - t0 + fill_s
    bar.close()
    model.train(False)
    stats = sequence_stats(model.text, data)
    seq, answer = stats.mean_len, stats.mean_loss_tokens
    trunk_share = min(1.0, model.trunk.passes / max(1, seen))
    n_tok = data.token_counts()
    executed = flops_per_sample(model, seq, answer, trunk_share, n_tok)
    paper = flops_per_sample(model, seq, n_tokens=n_tok)
    record = {
        "items": len(data.items), "epochs": epochs, "batch": batch, "lr": lr, "seed": seed,
        "samples_seen": seen,
        "mean_seq_len": seq, "mean_loss_tokens": answer, "n_blocks": model.n_blocks, "lora_rank": model.lora_rank,
        "trunk_passes": model.trunk.passes, "trunk_share": trunk_share, "trunk_blocks_released": released,
        # executed: head on the answer tokens, frozen trunk once per distinct text (what QAModel.loss runs)
        "flops_per_sample": executed, "train_flops": executed * seen,
        # the paper's accounting: every block forward for every sample, head on every token
        "flops_per_sample_paper": paper, "train_flops_paper": paper * seen,
        "train_seconds": seconds, "threads": torch.get_num_threads(),
        "peak_rss_mb": mem.peak / 2**20, "train_added_rss_mb": (mem.peak - mem.base) / 2**20,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss_per_epoch": losses, "stopped": stopped,
        "trainable_params": sum(p.numel() for p in params),
        # majority answer per template of the training items: the blind prior every figure stands beside
        "blind_prior": BlindPrior.fit(data).answers, **(extra or {}),
    }
    if out is not None:
        model.save(Path(out), record)
    return record


def add_data_args(p: argparse.ArgumentParser, drives: tuple[str, ...], lighting: str) -> None:
    p.add_argument("--drives", nargs="+", default=list(drives), help="bag dirs or scenario:seed:duration specs")
    p.add_argument("--drives-dir", type=Path, default=DEFAULT_DRIVES_DIR, help="where specs are generated/found")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="encoder-token cache (one file per drive)")
    p.add_argument("--perception", type=Path, default=Path("models/perception"), help="frozen encoder checkpoints")
    p.add_argument("--rig", type=Path, default=None,
                   help="rig YAML the drives are generated on and encoded for (default: the core's default rig); a "
                        "plugin's rig adds its modality (e.g. the LiDAR package's rig, plugins/lidar)")
    p.add_argument("--lighting", nargs="+", default=[lighting], help="day / dusk / night, or 'all'")


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for SmolLM2 on a shared CPU)")
    p.add_argument("--max-items", type=int, default=None, help="train on a seeded random subset of the QA items")
    p.add_argument("--llm", default=None, help="LLM directory or GGUF (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def load_data(args: argparse.Namespace) -> QADataset:
    data = build_dataset(args.drives, perception_dir=args.perception, drives_dir=args.drives_dir,
                         cache_dir=args.cache_dir, progress=not args.quiet, rig=args.rig)
    if "all" not in args.lighting:
        data = data.filter(lighting=args.lighting)
    if args.max_items:
        data = data.subset(args.max_items, args.seed)
    return data


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("aligners", help="train mPnP aligners (and gates) on drive QA; LLM and encoders frozen")
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoints as safetensors + run.json)")
    p.add_argument("--method", choices=METHODS, default="mpnp")
    p.add_argument("--modalities", nargs="+", default=["fisheye", "camera"], help=f"of {', '.join(known_modalities())}")
    p.add_argument("--n-blocks", type=int, default=8, help="connect into the last N blocks (mpnp, text)")
    p.add_argument("--lora-rank", type=int, default=0, help="LoRA on k/v of the connected blocks (0 = aligners only)")
    p.add_argument("--init", type=Path, default=None, help="warm start from a run directory")
    p.add_argument("--init-relayout", action="store_true",
                   help="--init's aligners may be of an older token layout (one that gained slots): warm start anyway")
    p.add_argument("--random-subsets", action="store_true",
                   help="composable aligners: every item sees a random non-empty subset of --modalities")
    add_data_args(p, TRAIN_DRIVES, "day")
    add_train_args(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from edge.llm.loading import load_llm

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = QAConfig(method=args.method, modalities=tuple(args.modalities), n_blocks=args.n_blocks,
                   lora_rank=args.lora_rank, random_subsets=args.random_subsets)
    data = load_data(args)
    data.require(cfg.modalities)
    llm = load_llm(args.llm)
    model = QAModel(llm, cfg, init_from=args.init, init_relayout=args.init_relayout)
    rec = train(model, data, args.out, epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed,
                progress=not args.quiet, release_trunk=True, extra={"drives": args.drives, "lighting": args.lighting,
                                                "command": command_line(),
                                                "perception_weights": perception_fingerprints(args.perception)})
    print(json.dumps({k: rec[k] for k in ("items", "samples_seen", "train_flops", "train_seconds", "peak_rss_mb",
                                          "train_added_rss_mb", "loss_per_epoch")}))
    return 0


def perception_fingerprints(perception_dir: Path) -> dict[str, str]:
    """Hashes of the encoder weights whose tokens the aligners learn to read (checked by the runtime)."""
    from edge.encoders.fingerprint import token_fingerprints

    return token_fingerprints(perception_dir)


def command_line() -> str:
    """The `edge ...` command this process runs, for run.json (how a run was made, to rerun it)."""
    import shlex
    import sys

    return "edge " + shlex.join(sys.argv[1:])
