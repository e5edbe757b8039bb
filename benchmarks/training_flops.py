"""Executed training FLOPs of mPnP at each N against the full-LLM baseline, from a finished training run.

Why: the mPnP table trains a handful of N (2, 4, 8, 16), each for minutes to hours; the FLOPs ratio it judges
(issue 10: >= 3.7x lower at the chosen N) depends on N and on the run's texts only (sequence length, answer
tokens, the share of samples whose frozen trunk ran), so it is computed here for every N with the same analytic
count the trainer writes into run.json (edge.llm.cost.training_flops, as executed: head on the answer tokens, trunk
once per distinct text). Nothing is trained or timed.

    python benchmarks/training_flops.py models/aligners/composable
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge.llm.cost import CostShape, ModalityCost, training_flops
from edge.llm.loading import load_llm
from edge.modalities.registry import registry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a run directory of edge train aligners (its run.json)")
    p.add_argument("--target", type=float, default=3.7, help="the ratio to meet (issue 10: 3.7)")
    args = p.parse_args(argv)
    rec = json.loads((args.run / "run.json").read_text())
    shape = CostShape.of(load_llm().model)
    reg = registry()
    cfg = rec["config"]
    mods = [ModalityCost(reg[m].tokens.count, cfg["d_enc"]) for m in cfg["modalities"]]
    seq, loss, share = round(rec["mean_seq_len"]), rec["mean_loss_tokens"], rec["trunk_share"]
    kv = bool(cfg.get("lora_rank"))
    full = training_flops(shape, seq, shape.llm.n_layers, mods, train_kv=True, loss_tokens=loss)
    print(f"{args.run}: {', '.join(cfg['modalities'])}; {seq} tokens per sample, {loss:.2f} under the loss, "
          f"trunk run for {100 * share:.2f} % of samples; full LLM {full / 1e9:.2f} GFLOPs/sample")
    print("| N | GFLOPs per sample | full LLM / N | target |")
    print("|---|---|---|---|")
    for n in range(1, shape.llm.n_layers + 1):
        f = training_flops(shape, seq, n, mods, train_kv=kv, loss_tokens=loss, trunk_share=share)
        mark = "met" if full / f >= args.target else "missed"
        print(f"| {n}{' (run)' if n == rec['n_blocks'] else ''} | {f / 1e9:.2f} | {full / f:.2f}x | {mark} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
