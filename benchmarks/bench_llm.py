"""Latency of mPnP connections on the embedded LLM: prefill and per-token decode with 0-3 modalities
attached versus text only, and attach/detach time versus reloading the model, all measured in one run.

    python benchmarks/bench_llm.py                      # SmolLM2-135M, CPU, float32
    python benchmarks/bench_llm.py --device cuda --dtype bfloat16 --json out.json

Each frame feeds new encoder tokens, so prefill includes the aligner MLPs; decode steps of the same frame
reuse the aligned prefix (it is cached while gradients are off and the inputs are unchanged).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from edge.llm import MPnPConnector, ModalityAligner, load_aligner, load_llm, save_aligner

MODALITIES = ("camera", "ultrasonic", "audio")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _median_ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values)


def one_round(model, conn, ids, feeds, new_tokens: int, device) -> tuple[float, list[float]]:
    """One frame: prefill latency (s) and the per-token decode latencies (s), greedy, with a KV cache."""
    state = {}

    def run_prefill() -> None:
        if conn is not None:
            for name, tokens in feeds.items():
                conn.feed(name, tokens)  # a new frame: the aligners run inside this prefill
        state["out"] = model(ids, use_cache=True)

    with torch.no_grad():
        t_prefill = _timed(run_prefill, device)
        cache, nxt = state["out"].past_key_values, state["out"].logits[:, -1:].argmax(-1)
        steps = []
        for _ in range(new_tokens):
            def step() -> None:
                state["out"] = model(nxt, past_key_values=cache, use_cache=True)
            steps.append(_timed(step, device))
            nxt = state["out"].logits[:, -1:].argmax(-1)
    return t_prefill, steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model directory or .gguf (default: embedded SmolLM2-135M)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--n-blocks", type=int, default=8, help="N: connected last blocks")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--modality-tokens", type=int, default=32, help="tokens per modality")
    ap.add_argument("--d-enc", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--switches", type=int, default=200, help="attach/detach cycles to time")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    llm = load_llm(args.model, dtype=args.dtype, device=args.device)
    first_load = time.perf_counter() - t0
    model, device = llm.model, torch.device(args.device)
    print(f"LLM {llm.source.name}: {llm.shape}, device {device}, dtype {args.dtype}, torch threads {torch.get_num_threads()}",
          file=sys.stderr)
    ids = torch.randint(100, 1000, (1, args.prompt_tokens), device=device)
    feeds = {m: torch.randn(1, args.modality_tokens, args.d_enc, device=device) for m in MODALITIES}
    aligners = {m: ModalityAligner.for_llm(m, args.d_enc, llm.shape, args.n_blocks) for m in MODALITIES}

    # Configurations are measured round-robin, so drifting load on a shared machine hits all of them alike.
    configs = ["text only (plain sdpa)"] + [f"{k} attached ({k * args.modality_tokens} prefix tokens)"
                                            for k in range(len(MODALITIES) + 1)]
    prefill: dict[str, list[float]] = {c: [] for c in configs}
    decode: dict[str, list[float]] = {c: [] for c in configs}
    conn = None
    for rep in range(args.repeats + 1):  # round 0 warms up kernels and allocators
        print(f"round {rep}/{args.repeats} ...", file=sys.stderr)
        for k, name in enumerate(configs):
            if k == 0:
                conn = conn.close() if conn is not None else None
            else:
                if conn is None:
                    conn = MPnPConnector(model, args.n_blocks)
                conn.detach_all()
                for m in MODALITIES[: k - 1]:
                    conn.attach(aligners[m])
            active = {m: feeds[m] for m in conn.attached} if conn is not None else {}
            t_pre, steps = one_round(model, conn, ids, active, args.new_tokens, device)
            if rep:
                prefill[name].append(t_pre)
                decode[name].extend(steps)
    rows = [(c, _median_ms(prefill[c]), 1e3 * min(prefill[c]), _median_ms(decode[c]), 1e3 * min(decode[c]))
            for c in configs]
    conn.detach_all()

    # attach/detach of an aligner already resident on the device, and from a checkpoint on disk
    print("measuring attach/detach ...", file=sys.stderr)
    al = aligners["camera"]
    attach, detach = [], []
    for _ in range(args.switches):
        attach.append(_timed(lambda: conn.attach(al, feeds["camera"]), device))
        detach.append(_timed(lambda: conn.detach("camera"), device))
    with tempfile.TemporaryDirectory() as tmp:
        path = save_aligner(al, Path(tmp) / "camera.safetensors")
        from_disk = [_timed(lambda: (conn.attach(load_aligner(path, modality="camera", shape=llm.shape, device=device)),
                                     conn.detach("camera")), device) for _ in range(20)]
    conn.close()
    reload_s = _timed(lambda: load_llm(args.model, dtype=args.dtype, device=args.device), device)

    base = rows[0]
    print(f"\nmPnP connection latency, N={args.n_blocks} of {llm.shape.n_layers} blocks, prompt {args.prompt_tokens} "
          f"tokens, {args.new_tokens} decode steps, {args.modality_tokens} tokens/modality (d_enc {args.d_enc}), "
          f"{args.repeats} interleaved rounds; ratios against text only (plain sdpa), from medians [best]")
    print(f"{'configuration':36s} {'prefill ms med [best]':>22s} {'x text':>13s} {'decode ms/tok med [best]':>25s} {'x text':>13s}")
    for name, pre, pre_best, dec, dec_best in rows:
        print(f"{name:36s} {pre:12.2f} [{pre_best:7.2f}] {pre / base[1]:5.2f} [{pre_best / base[2]:5.2f}] "
              f"{dec:15.2f} [{dec_best:7.2f}] {dec / base[3]:5.2f} [{dec_best / base[4]:5.2f}]")
    figures = {
        "attach_ms_median": _median_ms(attach), "attach_ms_p95": 1e3 * sorted(attach)[int(0.95 * len(attach))],
        "detach_ms_median": _median_ms(detach), "detach_ms_p95": 1e3 * sorted(detach)[int(0.95 * len(detach))],
        "load_checkpoint_attach_detach_ms_median": _median_ms(from_disk),
        "model_reload_ms": 1e3 * reload_s, "first_load_ms": 1e3 * first_load,
    }
    print(f"\nattach  {figures['attach_ms_median']:.3f} ms median ({figures['attach_ms_p95']:.3f} p95)   "
          f"detach {figures['detach_ms_median']:.3f} ms median ({figures['detach_ms_p95']:.3f} p95)   target < 10 ms")
    print(f"load aligner checkpoint + attach + detach {figures['load_checkpoint_attach_detach_ms_median']:.2f} ms")
    print(f"model reload (safetensors cache) {figures['model_reload_ms']:.0f} ms -> attach is "
          f"{figures['model_reload_ms'] / figures['attach_ms_median']:.0f}x faster; first load this run {first_load:.1f} s")
    if args.json:
        report = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "device": str(device), "threads": torch.get_num_threads(),
                  "rows": [{"config": n, "prefill_ms_median": p, "prefill_ms_best": pb, "decode_ms_per_token_median": d,
                            "decode_ms_per_token_best": db} for n, p, pb, d, db in rows], **figures}
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
