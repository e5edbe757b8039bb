"""The scheduler evaluated on drives it has not seen: adaptive against the static baselines.

For each policy and drive: obstacle IoU within 5 m (the BEV output), audio event accuracy when the audio encoder
ran (and misses when it did not run during an event), answer exact match where an LLM answered (with --llm, every
question recorded in the drive is asked), mean compute per frame, number of plan changes, and the delay from a
context change in the ground truth (lighting class, start of an audio event) to the next plan change. Then per
policy over all drives (questions pooled), and the issue's target: the adaptive policy's answer accuracy at least
that of the best static policy, at lower mean compute.

Under a budget and a load (`--budget-ms B --load K`: K busy processes started before the runtime and stopped at
the end, or after `--load-stop-s S` to time the recovery): per policy and drive, the share of frames within the
budget end to end after the first 2 s, p50 / p95 / p99 against the budget, plan changes per minute (the first plan
not counted), the plan most frames ran (to compare repeated runs), and the seconds from the hog's stop to the first
frame that opens 10 in a row within budget.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import RuntimeConfig, parse_model
from edge.names import POLICIES, Policy
from edge.runtime.cli import run_drive
from edge.runtime.hog import CpuHog


def reaction_delays(frames: list[dict[str, Any]], switches: list[dict[str, Any]]) -> list[float]:
    """Seconds from each ground-truth context change to the first plan change at or after it."""
    changes = []
    for a, b in zip(frames, frames[1:]):
        ga, gb = a.get("gt") or {}, b.get("gt") or {}
        if ga.get("lighting") != gb.get("lighting") or (not ga.get("audio_events") and gb.get("audio_events")):
            changes.append(b["t"])
    delays = []
    for t in changes:
        later = [s["t"] for s in switches if s["t"] >= t]
        if later:
            delays.append(later[0] - t)
    return delays


def audio_scores(frames: list[dict[str, Any]]) -> tuple[float | None, float]:
    """(event accuracy over frames where audio ran, share of event frames where audio did not run)."""
    ran = [f for f in frames if "audio" in f and f.get("gt") is not None]
    correct = [f["audio"]["event"] == (f["gt"]["audio_events"][0] if f["gt"]["audio_events"] else "none") for f in ran]
    events = [f for f in frames if (f.get("gt") or {}).get("audio_events")]
    missed = [f for f in events if "audio" not in f]
    return (float(np.mean(correct)) if correct else None), (len(missed) / len(events) if events else 0.0)


def budget_scores(frames: list[dict[str, Any]], budget_ms: float, frame_wall: list[float],
                  hog_stopped_at: float | None, settle_s: float = 2.0) -> dict[str, Any]:
    """End-to-end latency against the budget after the first `settle_s` of drive time; plan changes per minute
    (the first plan is not a change); the plan most frames ran; recovery after the hog stopped (wall seconds to
    the first frame that opens 10 in a row within budget)."""
    total = [f["timings_ms"]["total"] for f in frames]
    settled = [ms for ms, f in zip(total, frames) if f["t"] >= settle_s] or total
    plans = Counter(_plan_key(f["plan"]) for f in frames)
    top, top_n = plans.most_common(1)[0] if plans else ("", 0)
    changes = sum(1 for a, b in zip(frames, frames[1:]) if _plan_key(a["plan"]) != _plan_key(b["plan"]))
    minutes = (frames[-1]["t"] - frames[0]["t"]) / 60.0 if len(frames) > 1 else 0.0
    late = [f for f in frames if f["t"] >= settle_s]
    late_changes = sum(1 for a, b in zip(late, late[1:]) if _plan_key(a["plan"]) != _plan_key(b["plan"]))
    late_minutes = (late[-1]["t"] - late[0]["t"]) / 60.0 if len(late) > 1 else 0.0
    recovery = None
    if hog_stopped_at is not None:
        ok = [ms <= budget_ms for ms in total]
        after = [i for i, w in enumerate(frame_wall) if w >= hog_stopped_at]
        for i in after:
            if all(ok[i:i + 10]) and len(ok[i:i + 10]) == 10:
                recovery = frame_wall[i] - hog_stopped_at
                break
    return {"within_budget": float(np.mean([ms <= budget_ms for ms in settled])) if settled else None,
            "latency_p50_ms": float(np.percentile(total, 50)) if total else None,
            "latency_p95_ms": float(np.percentile(total, 95)) if total else None,
            "latency_p99_ms": float(np.percentile(total, 99)) if total else None,
            "changes_per_min": changes / minutes if minutes else None,
            "changes_per_min_after_2s": late_changes / late_minutes if late_minutes else None,
            "top_plan": top, "top_plan_share": top_n / len(frames) if frames else None, "recovery_s": recovery}


def _plan_key(plan: dict[str, Any]) -> str:
    keep = f"@{plan['camera_keep']:g}" if "camera" in plan["modalities"] else ""
    return "+".join(plan["modalities"]) + keep + (f" x{plan['threads']}" if plan.get("threads") else "")


def evaluate(bags: list[Path], out: Path, use_llm: bool, budget_ms: float, policies: tuple[str, ...] = POLICIES,
             load: int = 0, load_stop_s: float | None = None) -> dict[str, Any]:
    rows = []
    for bag in bags:
        for policy in policies:
            cfg = parse_model({"policy": policy, "use_llm": use_llm, "budget_ms": budget_ms, "ask_all_questions": True},
                              RuntimeConfig, "edge eval scheduler")
            wall: list[float] = []
            with CpuHog(load, load_stop_s) as hog:
                summary = run_drive(bag, cfg, out / f"{Path(bag).name}-{policy}-b{budget_ms:g}-k{load}",
                                    progress=False, on_frame=lambda i, r: wall.append(time.monotonic()))
            doc = json.loads((Path(summary["report"]) / "report.json").read_text())
            acc, missed = audio_scores(doc["frames"])
            delays = reaction_delays(doc["frames"], doc["switches"])
            rows.append({"drive": Path(bag).name, "policy": policy, "budget_ms": budget_ms, "load": load,
                         "frames": summary["frames"],
                         "obstacle_iou_near5m": summary["obstacle_iou_near5m_mean"], "audio_event_accuracy": acc,
                         "audio_event_frames_missed": missed, "exact_match": summary["exact_match"],
                         "blind_prior_exact_match": summary.get("blind_prior_exact_match"),
                         "questions": summary["questions"], "mean_compute_ms": summary["mean_compute_ms"],
                         "correct": _correct(doc["frames"]),
                         "switches": summary["switches"],
                         "reaction_s_mean": float(np.mean(delays)) if delays else None,
                         "latency_p99_ms": summary["latency_ms"]["p99"],
                         **budget_scores(doc["frames"], budget_ms, wall, hog.stopped_at)})
            r = rows[-1]
            print(f"{r['drive']:>24} {policy:>9} budget {budget_ms:g} ms load {load}: within "
                  f"{_f(r['within_budget'], 3)}, p95 {_f(r['latency_p95_ms'], 1)} ms, IoU {_f(r['obstacle_iou_near5m'])}, "
                  f"{_f(r['changes_per_min'], 1)} changes/min, mostly {r['top_plan']}")
    table = markdown(rows) + "\n" + budget_markdown(rows) + "\n" + "\n".join(pooled_lines(pooled(rows))) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    tag = f"-b{budget_ms:g}-k{load}"
    (out / f"scheduler_eval{tag}.json").write_text(json.dumps(rows, indent=1))
    (out / f"scheduler_eval{tag}.md").write_text(table)
    return {"rows": rows, "table": table}


def budget_markdown(rows: list[dict[str, Any]]) -> str:
    return _table(["drive", "policy", "budget ms", "load", "within budget (after 2 s)", "p50 / p95 / p99 ms",
                   "obstacle IoU 5 m", "EM (prior)", "changes/min (after 2 s)", "plan most run (share)", "recovery s"],
                  ([r["drive"], r["policy"], f"{r['budget_ms']:g}", str(r["load"]), _f(r["within_budget"]),
                    f"{_f(r['latency_p50_ms'], 1)} / {_f(r['latency_p95_ms'], 1)} / {_f(r['latency_p99_ms'], 1)}",
                    _f(r["obstacle_iou_near5m"]),
                    f"{_f(r['exact_match'], 2)} ({_f(r.get('blind_prior_exact_match'), 2)})",
                    f"{_f(r['changes_per_min'], 1)} ({_f(r.get('changes_per_min_after_2s'), 1)})",
                    f"{r['top_plan'] or 'none'} ({_f(r['top_plan_share'], 2)})", _f(r["recovery_s"], 1)]
                   for r in rows))


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    """A markdown table, every line ending in a newline."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |\n"

    return line(header) + "|" + "---|" * len(header) + "\n" + "".join(line(cells) for cells in rows)


def _correct(frames: list[dict[str, Any]]) -> int:
    """Exactly matching answers in a report (the report's own normalisation, see edge.runtime.report)."""
    return sum(int(bool(a.get("correct"))) for f in frames for a in f.get("answers", []))


def pooled(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per policy over all drives: questions pooled for exact match; IoU and compute weighted by frames."""
    out: dict[str, dict[str, Any]] = {}
    for policy in dict.fromkeys(r["policy"] for r in rows):
        rs = [r for r in rows if r["policy"] == policy]
        frames = sum(r["frames"] for r in rs)
        q = sum(r["questions"] for r in rs)
        ious = [(r["obstacle_iou_near5m"], r["frames"]) for r in rs if r["obstacle_iou_near5m"] is not None]
        out[policy] = {
            "questions": q, "exact_match": sum(r["correct"] for r in rs) / q if q else None,
            # the blind prior on the same questions (majority answer per template): what no sensor scores
            "blind_prior_exact_match": sum((r.get("blind_prior_exact_match") or 0.0) * r["questions"] for r in rs) / q
            if q and all(r.get("blind_prior_exact_match") is not None for r in rs if r["questions"]) else None,
            "obstacle_iou_near5m": sum(v * n for v, n in ious) / sum(n for _, n in ious) if ious else None,
            "mean_compute_ms": sum(r["mean_compute_ms"] * r["frames"] for r in rs) / frames if frames else None,
            "switches": sum(r["switches"] for r in rs)}
    return out


def pooled_lines(p: dict[str, dict[str, Any]]) -> list[str]:
    lines = _table(["policy (all drives)", "questions", "exact match (blind prior)", "obstacle IoU 5 m",
                    "compute ms/frame", "plan changes"],
                   ([k, str(v["questions"]), f"{_f(v['exact_match'])} ({_f(v.get('blind_prior_exact_match'))})",
                     _f(v["obstacle_iou_near5m"]), _f(v["mean_compute_ms"], 1), str(v["switches"])]
                    for k, v in p.items())).splitlines()
    ad = p.get(Policy.ADAPTIVE)
    static = {k: v for k, v in p.items() if k != Policy.ADAPTIVE and v["exact_match"] is not None}
    if ad and ad["exact_match"] is not None and static:
        name, best = max(static.items(), key=lambda kv: (kv[1]["exact_match"], -kv[1]["mean_compute_ms"]))
        ok = ad["exact_match"] >= best["exact_match"] and ad["mean_compute_ms"] < best["mean_compute_ms"]
        lines += ["", f"Target (adaptive answer accuracy >= best static, at lower mean compute): adaptive EM "
                      f"{ad['exact_match']:.3f} at {ad['mean_compute_ms']:.1f} ms vs best static '{name}' EM "
                      f"{best['exact_match']:.3f} at {best['mean_compute_ms']:.1f} ms: {'met' if ok else 'MISSED'}"]
    return lines


def _f(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    return _table(["drive", "policy", "obstacle IoU 5 m", "audio event acc.", "event frames without audio",
                   "exact match (blind prior)", "compute ms/frame", "plan changes", "reaction s"],
                  ([r["drive"], r["policy"], _f(r["obstacle_iou_near5m"]), _f(r["audio_event_accuracy"]),
                    _f(r["audio_event_frames_missed"], 2),
                    f"{_f(r['exact_match'], 2)} ({_f(r.get('blind_prior_exact_match'), 2)})", _f(r["mean_compute_ms"], 1),
                    str(r["switches"]), _f(r["reaction_s_mean"], 2)] for r in rows))


def add_parser(sub: Any) -> None:
    p = sub.add_parser("scheduler", help="adaptive scheduling against static baselines on unseen drives")
    p.add_argument("bags", nargs="+", help="drives not used in training (e.g. edge drive generate ... --seed 900)")
    p.add_argument("--out", default="reports/scheduler-eval", help="[reports/scheduler-eval]")
    p.add_argument("--llm", action="store_true", help="also answer the drives' questions with the LLM")
    p.add_argument("--budget-ms", type=float, default=100.0, help="latency budget per frame, end to end, at p95 [100]")
    p.add_argument("--load", type=int, default=0, help="busy processes (a CPU hog) beside the runtime [0]")
    p.add_argument("--load-stop-s", type=float, default=None,
                   help="stop the hog after this many seconds of each run, to time the recovery [at the end]")
    p.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES), help="[all three]")
    p.set_defaults(func=lambda a: _main(a))


def _main(args: Any) -> int:
    from edge.errors import EdgeError
    from edge.runtime.scheduler import Budget

    Budget(latency_ms=args.budget_ms)  # a bad budget is a configuration error naming the key, before any run
    parse_model({"budget_ms": args.budget_ms}, RuntimeConfig, "edge eval scheduler --budget-ms")  # and its range
    if args.load < 0:
        raise EdgeError(f"--load: {args.load} busy processes; give 0 or more")
    result = evaluate([Path(b) for b in args.bags], Path(args.out), args.llm, args.budget_ms,
                      tuple(args.policies), args.load, args.load_stop_s)
    print(result["table"])
    return 0
