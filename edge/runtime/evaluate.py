"""The scheduler evaluated on drives it has not seen: adaptive against the static baselines.

For each policy and drive: obstacle IoU within 5 m (the BEV output), audio event accuracy when the audio encoder
ran (and misses when it did not run during an event), answer exact match where an LLM answered (with --llm, every
question recorded in the drive is asked), mean compute per frame, number of plan changes, and the delay from a
context change in the ground truth (lighting class, start of an audio event) to the next plan change. Then per
policy over all drives (questions pooled), and the issue's target: the adaptive policy's answer accuracy at least
that of the best static policy, at lower mean compute.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edge.runtime.cli import RunConfig, run_drive

POLICIES = ("adaptive", "camera", "all")


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


def evaluate(bags: list[Path], out: Path, use_llm: bool, budget_ms: float, policies: tuple[str, ...] = POLICIES
             ) -> dict[str, Any]:
    rows = []
    for bag in bags:
        for policy in policies:
            cfg = RunConfig(policy=policy, use_llm=use_llm, budget_ms=budget_ms, ask_all_questions=True)
            summary = run_drive(bag, cfg, out / f"{Path(bag).name}-{policy}", progress=False)
            doc = json.loads((Path(summary["report"]) / "report.json").read_text())
            acc, missed = audio_scores(doc["frames"])
            delays = reaction_delays(doc["frames"], doc["switches"])
            rows.append({"drive": Path(bag).name, "policy": policy, "frames": summary["frames"],
                         "obstacle_iou_near5m": summary["obstacle_iou_near5m_mean"], "audio_event_accuracy": acc,
                         "audio_event_frames_missed": missed, "exact_match": summary["exact_match"],
                         "questions": summary["questions"], "mean_compute_ms": summary["mean_compute_ms"],
                         "correct": _correct(doc["frames"]),
                         "switches": summary["switches"],
                         "reaction_s_mean": float(np.mean(delays)) if delays else None,
                         "latency_p99_ms": summary["latency_ms"]["p99"]})
            print(f"{rows[-1]['drive']:>24} {policy:>9}: IoU {_f(rows[-1]['obstacle_iou_near5m'])}, "
                  f"compute {_f(rows[-1]['mean_compute_ms'], 1)} ms, switches {rows[-1]['switches']}")
    table = markdown(rows) + "\n" + "\n".join(pooled_lines(pooled(rows)))+ "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scheduler_eval.json").write_text(json.dumps(rows, indent=1))
    (out / "scheduler_eval.md").write_text(table)
    return {"rows": rows, "table": table}


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
            "obstacle_iou_near5m": sum(v * n for v, n in ious) / sum(n for _, n in ious) if ious else None,
            "mean_compute_ms": sum(r["mean_compute_ms"] * r["frames"] for r in rs) / frames if frames else None,
            "switches": sum(r["switches"] for r in rs)}
    return out


def pooled_lines(p: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| policy (all drives) | questions | exact match | obstacle IoU 5 m | compute ms/frame | plan changes |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {v['questions']} | {_f(v['exact_match'])} | {_f(v['obstacle_iou_near5m'])} | "
              f"{_f(v['mean_compute_ms'], 1)} | {v['switches']} |" for k, v in p.items()]
    ad = p.get("adaptive")
    static = {k: v for k, v in p.items() if k != "adaptive" and v["exact_match"] is not None}
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
    head = ("| drive | policy | obstacle IoU 5 m | audio event acc. | event frames without audio | exact match | "
            "compute ms/frame | plan changes | reaction s |\n|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['drive']} | {r['policy']} | {_f(r['obstacle_iou_near5m'])} | {_f(r['audio_event_accuracy'])} | "
        f"{_f(r['audio_event_frames_missed'], 2)} | {_f(r['exact_match'], 2)} | {_f(r['mean_compute_ms'], 1)} | "
        f"{r['switches']} | {_f(r['reaction_s_mean'], 2)} |\n" for r in rows)
    return head + body


def add_parser(sub: Any) -> None:
    p = sub.add_parser("scheduler", help="adaptive scheduling against static baselines on unseen drives")
    p.add_argument("bags", nargs="+", help="drives not used in training (e.g. edge drive generate ... --seed 900)")
    p.add_argument("--out", default="reports/scheduler-eval", help="[reports/scheduler-eval]")
    p.add_argument("--llm", action="store_true", help="also answer the drives' questions with the LLM")
    p.add_argument("--budget-ms", type=float, default=100.0, help="latency budget per frame [100]")
    p.set_defaults(func=lambda a: _main(a))


def _main(args: Any) -> int:
    result = evaluate([Path(b) for b in args.bags], Path(args.out), args.llm, args.budget_ms)
    print(result["table"])
    return 0
