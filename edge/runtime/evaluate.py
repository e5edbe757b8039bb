"""The scheduler evaluated on drives it has not seen: adaptive against the static baselines.

For each policy and drive: obstacle IoU within 5 m (the BEV output), audio event accuracy when the audio encoder
ran (and misses when it did not run during an event), answer exact match where an LLM answered (with --llm, every
question recorded in the drive is asked), mean compute per frame, number of plan changes, and the delay from a
context change in the ground truth (lighting class, start of an audio event) to the next plan change. Then per
policy over all drives (questions pooled), and the issue's target: the adaptive policy's answer accuracy at least
that of the best static policy, at lower mean compute.

Under budgets and loads (`--budget-ms B [B ...] --load K [K ...]`: K busy processes started before the runtime
and stopped at the end, or when the drive reaches `--load-stop-s S` to time the recovery), each policy run
`--repeat` times: per run the share of frames within the budget end to end after the first 2 s, p50 / p95 / p99
against the budget, obstacle IoU over every scorable frame (no map scores 0), plan changes per minute in steady
conditions (after the first 2 s, leaving out the span from the hog's stop to the recovery), the plan most frames
ran, and the seconds from the hog's stop to the first frame that opens 10 in a row within budget and to the first
frame back on the plan the unloaded runs ran most; the agreement of the repeated runs on that plan.

The hindsight oracle: for each drive, budget and load, every fixed plan of `oracle_plans` (the quality-cost
front of the scheduler's static candidates) is run once, held whatever happens; the oracle is the best quality
(IoU, plus exact match with the LLM) among the fixed runs, static policies included, that hold the budget (>= 95 %
of frames within it after the first 2 s); each policy run's quality is printed as a share of it.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import RuntimeConfig, parse_model
from edge.modalities.interface import ModalityPlugin, Scorer, import_ref
from edge.modalities.registry import registry
from edge.names import POLICIES, BackendName, Policy
from edge.runtime.cli import run_drive
from edge.runtime.hog import CpuHog
from edge.runtime.scheduler import BEV_MODALITIES, MODALITIES, AlignerSet, Plan
from edge.runtime.stages import settings

SETTLE_S = 2.0  # the first seconds of a drive (calibration, first plans) are not judged against the budget
HOLD_SHARE = 0.95  # a plan holds the budget when this share of its frames after SETTLE_S is within it



def reaction_delays(frames: list[dict[str, Any]], switches: list[dict[str, Any]]) -> list[float]:
    """Seconds from each ground-truth context change to the first plan change at or after it."""
    changes = []
    for a, b in zip(frames, frames[1:]):
        ga, gb = a.get("gt") or {}, b.get("gt") or {}
        # lighting changed, or a modality's ground truth (its `truth` fields: audio events sounding) started
        if ga.get("lighting") != gb.get("lighting") or any(not ga.get(k) and gb[k] for k in gb if k != "lighting"):
            changes.append(b["t"])
    delays = []
    for t in changes:
        later = [s["t"] for s in switches if s["t"] >= t]
        if later:
            delays.append(later[0] - t)
    return delays


def scorers(plugins: Iterable[ModalityPlugin] | None = None) -> list[Scorer]:
    """The Scorers the modalities declare (ModalityPlugin.scores), in registry order (None: the registry's)."""
    out = []
    for p in registry() if plugins is None else plugins:
        if p.scores is not None:
            out.append(import_ref(p.scores, f"'{p.name}' (scores {p.scores})"))  # type: ignore[arg-type]
    return out


def budget_scores(frames: list[dict[str, Any]], budget_ms: float, frame_wall: list[float],
                  hog_stopped_at: float | None, settle_s: float = SETTLE_S) -> dict[str, Any]:
    """End-to-end latency against the budget after the first `settle_s` of drive time; plan changes per minute of
    `frame_wall` (the first plan is not a change), after `settle_s`, and in steady conditions (after `settle_s`, leaving out
    the span from the hog's stop to the recovery); the plan most frames ran; recovery after the hog stopped (wall
    seconds to the first frame that opens 10 in a row within budget)."""
    total = [f["timings_ms"]["total"] for f in frames]
    settled = [ms for ms, f in zip(total, frames) if f["t"] >= settle_s] or total
    keys = [_plan_key(f["plan"]) for f in frames]
    plans = Counter(keys)
    top, top_n = plans.most_common(1)[0] if plans else ("", 0)
    recovery, stop_i, back_i = None, len(frames), len(frames)
    if hog_stopped_at is not None:
        ok = [ms <= budget_ms for ms in total]
        after = [i for i, w in enumerate(frame_wall) if w >= hog_stopped_at]
        stop_i = after[0] if after else len(frames)
        for i in after:
            if all(ok[i:i + 10]) and len(ok[i:i + 10]) == 10:
                recovery, back_i = frame_wall[i] - hog_stopped_at, i
                break

    # Per minute of the wall clock, the scheduler's: a run that falls behind the drive's stamps (slow frames, long
    # probes) spends more wall time than drive time, and the change rate it is held to is per wall minute.
    drive = [f["t"] for f in frames]
    clock = frame_wall if len(frame_wall) == len(frames) else drive

    def per_min(pairs: list[int], clock: list[float] = clock) -> float | None:
        minutes = sum(clock[i + 1] - clock[i] for i in pairs) / 60.0
        return sum(keys[i] != keys[i + 1] for i in pairs) / minutes if minutes else None

    pairs = range(len(frames) - 1)
    late = [i for i in pairs if frames[i]["t"] >= settle_s]
    steady = [i for i in late if not stop_i - 1 <= i < back_i]
    return {"within_budget": float(np.mean([ms <= budget_ms for ms in settled])) if settled else None,
            "latency_p50_ms": float(np.percentile(total, 50)) if total else None,
            "latency_p95_ms": float(np.percentile(total, 95)) if total else None,
            "latency_p99_ms": float(np.percentile(total, 99)) if total else None,
            "changes_per_min": per_min(list(pairs)), "changes_per_min_after_2s": per_min(late),
            "changes_per_min_steady": per_min(steady), "changes_per_min_steady_drive_time": per_min(steady, drive),
            "top_plan": top, "top_plan_share": top_n / len(frames) if frames else None, "recovery_s": recovery}


def prediction_ratios(frames: list[dict[str, Any]], min_frames: int = 5) -> list[float]:
    """Per plan segment (a run of `min_frames` or more consecutive frames on one plan): what the scheduler predicted
    for it (median `predicted_ms` over its first `min_frames` frames) over the p95 its frames then measured (end to
    end). Above 1 the cost model was pessimistic and kept plans that fit out of the choice; below 1, optimistic."""
    out: list[float] = []
    start = 0
    for i in range(1, len(frames) + 1):
        if i < len(frames) and frames[i]["plan"] == frames[start]["plan"]:
            continue
        seg = frames[start:i]
        start = i
        predicted = [f["predicted_ms"] for f in seg[:min_frames] if f.get("predicted_ms") is not None]
        if len(seg) >= min_frames and len(predicted) == min_frames:
            out.append(float(np.median(predicted)) / float(np.percentile([f["timings_ms"]["total"] for f in seg], 95)))
    return out


def _plan_key(plan: dict[str, Any]) -> str:
    """A frame record's plan as a short key: its keep ratio (the record's `camera_keep`) shown when one of its
    modalities declares several."""
    keep = f"@{plan['camera_keep']:g}" if settings(plan["modalities"], 1.0) else ""
    return "+".join(plan["modalities"]) + keep + (f" x{plan['threads']}" if plan.get("threads") else "")


def evaluate(bags: list[Path], out: Path, use_llm: bool, budgets: Iterable[float],
             policies: tuple[str, ...] = POLICIES, loads: Iterable[int] = (0,), load_stop_s: float | None = None,
             repeat: int = 1, oracle: bool = True, oracle_max_plans: int = 12, paced: bool = True) -> dict[str, Any]:
    """Every policy `repeat` times per drive, budget and load, then (with `oracle`) every fixed plan of
    `oracle_plans` once; the rows are scored against each other (quality over the drive's scorable frames, the
    oracle, shares, recovery to the unloaded plan, agreement of repeats) and written as JSON and markdown.
    `paced`: samples are taken no faster than their stamps, as live (see `_run`)."""
    budgets, loads = tuple(budgets), tuple(loads)
    runs: list[dict[str, Any]] = []
    fixed: list[dict[str, Any]] = []
    base = parse_model({"use_llm": use_llm, "ask_all_questions": True}, RuntimeConfig, "edge eval scheduler")
    plans = _oracle_candidates(base, oracle_max_plans) if oracle else []
    for bag in bags:
        for budget_ms in budgets:
            for load in loads:
                for rep in range(repeat):
                    for policy in policies:
                        runs.append(_run(bag, base, policy, budget_ms, load, load_stop_s, out, rep, paced=paced))
                if plans:
                    expected = max(r["frames"] for r in runs if r["drive"] == Path(bag).name)
                    for plan in plans:
                        fixed.append(_run(bag, base, "fixed", budget_ms, load, load_stop_s, out, 0, plan, expected,
                                          paced))
    result = score_runs(runs, fixed, use_llm)
    out.mkdir(parents=True, exist_ok=True)
    tag = "-b" + "-".join(f"{b:g}" for b in budgets) + "-k" + "-".join(str(k) for k in loads)
    doc = {"runs": _public(result["runs"]), "fixed_plans": _public(result["fixed"]), "oracle": result["oracle"],
           "agreement": result["agreement"],
           "definitions": {"settle_s": SETTLE_S, "hold_share": HOLD_SHARE, "repeat": repeat, "paced": paced,
                           "load_stop_s (drive time)": load_stop_s,
                           "oracle_candidates": [_plan_key(_plan_dict(p)) for p in plans]}}
    table = report_markdown(result, budgets, loads)
    (out / f"scheduler_eval{tag}.json").write_text(json.dumps(doc, indent=1))
    (out / f"scheduler_eval{tag}.md").write_text(table)
    return {**result, "table": table}


def _run(bag: Path, base: RuntimeConfig, policy: str, budget_ms: float, load: int, load_stop_s: float | None,
         out: Path, rep: int, plan: Plan | None = None, expected_frames: int | None = None,
         paced: bool = True) -> dict[str, Any]:
    """One drive under one policy (or one fixed `plan`), budget and load: the run's row. A fixed plan is stopped
    as soon as its frames over budget exceed what `HOLD_SHARE` of `expected_frames` allows (it can no longer
    hold the budget, and under a hog a 2-thread plan can take seconds per frame). `paced`: after a frame, wait
    until the next sample's time (the last frame period on), as a live sensor feed would; the scheduler's clock
    (estimate ageing, change rate) and the recovery are wall time, which unpaced replay would compress. A run
    that falls behind is not paced (nothing is dropped: every run sees every sample)."""
    cfg = base.model_copy(update={"policy": Policy.ALL if plan is not None else Policy(policy), "budget_ms": budget_ms})
    name = _plan_key(_plan_dict(plan)).replace("+", "_").replace(" ", "") if plan is not None else policy
    wall: list[float] = []
    first: dict[str, Any] = {}  # the first frame's stamp and wall time; the last frame's drive time
    # over-budget frames after SETTLE_S beyond this many: the plan cannot reach HOLD_SHARE of the frames
    allowed = math.floor((1.0 - HOLD_SHARE) * expected_frames + 1e-9) if expected_frames else None
    misses = {"n": 0}

    with CpuHog(load) as hog:
        def on_frame(i: int, r: Any) -> bool:
            now = time.monotonic()
            wall.append(now)
            t = (r.stamp_ns - first.setdefault("stamp_ns", r.stamp_ns)) / 1e9
            if paced:
                start = first.setdefault("wall", now)  # the first frame ends at drive time 0
                period = t - first.get("t", t)
                first["t"] = t
                time.sleep(max(0.0, start + t + period - now))
            if load_stop_s is not None and t >= load_stop_s:
                hog.stop()  # on drive time, so that every policy and plan is loaded over the same frames
            if t >= SETTLE_S and r.timings_ms["total"] > budget_ms:
                misses["n"] += 1
            return allowed is not None and misses["n"] > allowed

        summary = run_drive(bag, cfg, out / f"{Path(bag).name}-{name}-b{budget_ms:g}-k{load}-r{rep}",
                            progress=False, on_frame=on_frame, fixed_plan=plan)
    doc = json.loads((Path(summary["report"]) / "report.json").read_text())
    frames = doc["frames"]
    stopped = allowed is not None and misses["n"] > allowed
    row = {"drive": Path(bag).name, "policy": policy, "run": rep + 1, "budget_ms": budget_ms, "load": load,
           "fixed_plan": _plan_key(_plan_dict(plan)) if plan is not None else None,
           "frames": summary["frames"], "stopped_at_s": frames[-1]["t"] if stopped else None,
           "obstacle_iou_near5m": summary["obstacle_iou_near5m_mean"],
           "mapped_share": float(np.mean(["occupancy_near5m" in f for f in frames])) if frames else None,
           **{k: v for scorer in scorers() for k, v in scorer.score(frames).items()},
           "exact_match": summary["exact_match"],
           "blind_prior_exact_match": summary.get("blind_prior_exact_match"), "questions": summary["questions"],
           "mean_compute_ms": summary["mean_compute_ms"], "correct": _correct(frames), "switches": summary["switches"],
           "latency_p99_ms": summary["latency_ms"]["p99"],
           **budget_scores(frames, budget_ms, wall, hog.stopped_at),
           "prediction_ratios": [round(x, 3) for x in prediction_ratios(frames)] if plan is None else [],
           "_frames": [(f["stamp_ns"], f.get("obstacle_iou_near5m"), "occupancy_near5m" in f) for f in frames],
           "_plans": [_plan_key(f["plan"]) for f in frames], "_wall": wall, "_hog_stopped_at": hog.stopped_at}
    if plan is None:
        delays = reaction_delays(frames, doc["switches"])
        row["reaction_s_mean"] = float(np.mean(delays)) if delays else None
    row["holds_budget"] = not stopped and row["within_budget"] is not None and row["within_budget"] >= HOLD_SHARE
    what = row["fixed_plan"] or policy
    print(f"{row['drive']:>24} {what:>32} budget {budget_ms:g} ms load {load} run {rep + 1}: "
          + (f"stopped at {row['stopped_at_s']:.1f} s ({misses['n']} frames over budget)" if stopped else
             f"within {_f(row['within_budget'], 3)}, p95 {_f(row['latency_p95_ms'], 1)} ms, "
             f"IoU {_f(row['obstacle_iou_near5m'])}, mostly {row['top_plan']}"), flush=True)
    return row


def _oracle_candidates(cfg: RuntimeConfig, max_plans: int) -> list[Plan]:
    """The fixed plans the oracle tries, for this machine's thread options and (with the LLM) the aligner sets
    on disk; at most `max_plans`, keeping those the measured tables expect most of (`oracle_plans`)."""
    import torch

    from edge.runtime.scheduler import QualityTable

    n = torch.get_num_threads()
    threads = tuple(sorted({1, n})) if cfg.backend == BackendName.EAGER and cfg.adapt_threads else (n,)
    sets: tuple[AlignerSet, ...] = ()
    if cfg.use_llm:
        from edge.runtime.answerer import make_answerer

        sets = make_answerer(cfg.aligner_dir, cfg.llm, cfg.max_new_tokens).aligner_sets()
    table = QualityTable.from_perception_eval(Path(cfg.perception_dir) / "eval.json")
    return oracle_plans(sets, threads, table, max_plans, cfg.backend)


def oracle_plans(aligner_sets: Iterable[AlignerSet], threads: tuple[int, ...], quality: Any = None,
                 max_plans: int = 12, backend: str = BackendName.EAGER) -> list[Plan]:
    """The fixed plans the hindsight oracle tries: the Pareto candidates among the scheduler's static plans.

    The evaluation's quality is obstacle IoU, which only the subset of BEV modalities running decides, plus (with
    the LLM) exact match, which the aligner set attached decides; the set needs its modalities running (its camera
    pruned as in training). Every further encoder, or a camera keep ratio above the set's, costs time and adds no
    quality, so of the scheduler's candidates (modality subsets x camera keep x threads) only the plans whose
    encoders are exactly a BEV subset joined with one set's modalities can be on the quality-cost front; plans of
    no BEV and no set (quality 0) are left out. The thread count changes only the cost, and which count is faster
    depends on the load, so each is tried. With more than `max_plans` (several aligner sets), the encoder sets
    the measured tables (`quality`, a QualityTable; the sets' own accuracy) expect most of are kept. With a
    table, only the BEV subsets its perception evaluation measured are tried: an installed BEV plugin the perception
    models were not trained with (a LiDAR on a rig without one) has no map to add, so no plan of it is fixed."""
    bev_subsets = [c for r in range(len(BEV_MODALITIES) + 1) for c in itertools.combinations(BEV_MODALITIES, r)
                   if quality is None or not c or "+".join(c) in quality.bev]
    found: dict[tuple[tuple[str, ...], float], float] = {}
    for aset in (None, *aligner_sets):
        for bev in bev_subsets:
            if not bev and aset is None:
                continue
            mods = set(bev) | set(aset.modalities if aset is not None else ())
            keep = aset.keep if aset is not None and settings(aset.modalities, aset.keep) else 1.0
            key = (tuple(m for m in MODALITIES if m in mods), keep)
            lights = ("day", "dusk", "night")
            bev_iou = float(np.mean([quality.bev_quality(key[0], x) for x in lights])) if quality is not None else 0.0
            em = float(np.mean([aset.expected(x) for x in lights])) if aset is not None else 0.0
            found[key] = max(found.get(key, -math.inf), bev_iou + em)
    per = max(1, max_plans // max(1, len(threads)))
    keys = sorted(found, key=lambda k: -found[k])[:per]
    return [Plan(mods, 0, keep, backend, "", t) for mods, keep in keys for t in threads]


def score_runs(runs: list[dict[str, Any]], fixed: list[dict[str, Any]], use_llm: bool) -> dict[str, Any]:
    """Quality of every row over its drive's scorable frames; per drive, budget and load the oracle (the best
    fixed run that holds the budget, static policies' runs included); each policy run's share of it; recovery to
    the unloaded plan; agreement of repeated runs."""
    for drive in {r["drive"] for r in runs + fixed}:
        rows = [r for r in runs + fixed if r["drive"] == drive]
        scorable = {s for r in rows for s, iou, _ in r["_frames"] if iou is not None}
        for r in rows:
            r["iou_all_frames"] = iou_all_frames(r["_frames"], scorable)
            r["quality"] = None if r["iou_all_frames"] is None else \
                r["iou_all_frames"] + ((r["exact_match"] or 0.0) if use_llm else 0.0)
    oracles = []
    for key in dict.fromkeys((r["drive"], r["budget_ms"], r["load"]) for r in runs + fixed):
        same = [r for r in runs + fixed if (r["drive"], r["budget_ms"], r["load"]) == key]
        tried = [r for r in same if r["policy"] != Policy.ADAPTIVE]  # fixed plans and static policies
        held = [r for r in tried if r["holds_budget"] and r["quality"] is not None]
        best = max(held, key=lambda r: r["quality"]) if held else {}
        oracles.append({"drive": key[0], "budget_ms": key[1], "load": key[2], "tried": len(tried), "held": len(held),
                        "plan": (best["fixed_plan"] or f"static {best['policy']}: {best['top_plan']}")
                        if best else None,
                        **{k: best.get(k) for k in ("within_budget", "iou_all_frames", "exact_match", "quality")}})
        for r in same:
            q = oracles[-1]["quality"]
            r["oracle_share"] = r["quality"] / q if q and r["quality"] is not None else None
    for r in runs:
        unloaded = [x["top_plan"] for x in runs if x["load"] == 0
                    and (x["drive"], x["policy"], x["budget_ms"]) == (r["drive"], r["policy"], r["budget_ms"])]
        home = Counter(unloaded).most_common(1)[0][0] if unloaded else None
        r["unloaded_plan"] = home
        r["recovery_plan_s"] = recovery_to_plan(r["_plans"], r["_wall"], r["_hog_stopped_at"], home)
    agreement = []
    for key in dict.fromkeys((r["drive"], r["policy"], r["budget_ms"], r["load"]) for r in runs):
        tops = [r["top_plan"] for r in runs if (r["drive"], r["policy"], r["budget_ms"], r["load"]) == key]
        top, n = Counter(tops).most_common(1)[0]
        agreement.append({"drive": key[0], "policy": key[1], "budget_ms": key[2], "load": key[3], "runs": len(tops),
                          "top_plans": tops, "agreement": n / len(tops) if len(tops) > 1 else None})
    return {"runs": runs, "fixed": fixed, "oracle": oracles, "agreement": agreement}


def iou_all_frames(frames: list[tuple[int, float | None, bool]], scorable: set[int]) -> float | None:
    """Obstacle IoU over every scorable frame (one where some run of the drive had a defined IoU, i.e. near
    obstacles were there to find), a frame without a map scoring 0: what a policy that often runs no BEV gives
    the vehicle, where the mean over mapped frames alone would flatter it."""
    vals = [iou or 0.0 for s, iou, mapped in frames if s in scorable and (iou is not None or not mapped)]
    return float(np.mean(vals)) if vals else None


def recovery_to_plan(plans: list[str], wall: list[float], stopped_at: float | None, home: str | None) -> float | None:
    """Wall seconds from the hog's stop to the first frame that runs the unloaded choice `home` (0 when the plan
    at the stop already was it); None without a stop, or when the drive ended first."""
    if stopped_at is None or home is None:
        return None
    after = [i for i, w in enumerate(wall) if w >= stopped_at]
    if not after:
        return None
    if after[0] > 0 and plans[after[0] - 1] == home:
        return 0.0
    return next((wall[i] - stopped_at for i in after if plans[i] == home), None)


def _public(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without their per-frame working fields."""
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def _plan_dict(plan: Plan | None) -> dict[str, Any]:
    if plan is None:
        return {"modalities": [], "camera_keep": 1.0, "threads": 0}
    return {"modalities": list(plan.modalities), "camera_keep": plan.keep, "threads": plan.threads}


def report_markdown(result: dict[str, Any], budgets: tuple[float, ...], loads: tuple[int, ...]) -> str:
    """Per budget and load the per-drive and pooled quality tables; then the budget table of every run, the
    oracle, the fixed plans tried and the agreement of repeated runs."""
    runs = result["runs"]
    parts = []
    for b in budgets:
        for k in loads:
            rows = [r for r in runs if r["budget_ms"] == b and r["load"] == k]
            parts.append(f"### Budget {b:g} ms, load {k}\n\n" + markdown(rows) + "\n"
                         + "\n".join(pooled_lines(pooled(rows))) + "\n")
    parts.append("### Under the budget and the load\n\n" + budget_markdown(runs))
    if result["oracle"]:
        parts.append("### Hindsight oracle (the best fixed plan holding the budget)\n\n"
                     + oracle_markdown(result["oracle"]) + "\n" + fixed_markdown(result["fixed"]))
    parts.append("### Agreement of repeated runs (the plan each run spent most frames in)\n\n"
                 + agreement_markdown(result["agreement"]))
    return "\n".join(parts)


def budget_markdown(rows: list[dict[str, Any]]) -> str:
    return _table(["drive", "policy", "budget ms", "load", "run", "within budget (after 2 s)", "p50 / p95 / p99 ms",
                   "obstacle IoU 5 m: all frames (mapped frames, share mapped)", "EM (prior)", "share of oracle",
                   "changes/min: steady (all)", "plan most run (share)", "recovery s: budget / plan",
                   "predicted / measured p95: median (segments)"],
                  ([r["drive"], r["policy"], f"{r['budget_ms']:g}", str(r["load"]), str(r.get("run", 1)),
                    _f(r["within_budget"]),
                    f"{_f(r['latency_p50_ms'], 1)} / {_f(r['latency_p95_ms'], 1)} / {_f(r['latency_p99_ms'], 1)}",
                    f"{_f(r.get('iou_all_frames'))} ({_f(r['obstacle_iou_near5m'])}, {_f(r.get('mapped_share'), 2)})",
                    f"{_f(r['exact_match'], 2)} ({_f(r.get('blind_prior_exact_match'), 2)})",
                    _f(r.get("oracle_share"), 2),
                    f"{_f(r.get('changes_per_min_steady'), 1)} ({_f(r['changes_per_min'], 1)})",
                    f"{r['top_plan'] or 'none'} ({_f(r['top_plan_share'], 2)})",
                    f"{_f(r['recovery_s'], 1)} / {_f(r.get('recovery_plan_s'), 1)}",
                    f"{_f(float(np.median(r['prediction_ratios'])) if r.get('prediction_ratios') else None, 2)} "
                    f"({len(r.get('prediction_ratios') or [])})"]
                   for r in rows))


def oracle_markdown(oracles: list[dict[str, Any]]) -> str:
    return _table(["drive", "budget ms", "load", "fixed plans tried (holding)", "best fixed plan",
                   "within budget (after 2 s)", "obstacle IoU 5 m, all frames", "EM", "quality"],
                  ([o["drive"], f"{o['budget_ms']:g}", str(o["load"]), f"{o['tried']} ({o['held']})",
                    o["plan"] or "none holds the budget", _f(o["within_budget"]), _f(o["iou_all_frames"]),
                    _f(o["exact_match"], 2), _f(o["quality"])] for o in oracles))


def fixed_markdown(rows: list[dict[str, Any]]) -> str:
    return _table(["drive", "budget ms", "load", "fixed plan", "within budget (after 2 s)", "p95 ms",
                   "obstacle IoU 5 m, all frames", "EM", "holds"],
                  ([r["drive"], f"{r['budget_ms']:g}", str(r["load"]), r["fixed_plan"],
                    _f(r["within_budget"]) if r["stopped_at_s"] is None else f"stopped at {r['stopped_at_s']:.1f} s",
                    _f(r["latency_p95_ms"], 1), _f(r.get("iou_all_frames")) if r["stopped_at_s"] is None else "n/a",
                    _f(r["exact_match"], 2), "yes" if r["holds_budget"] else "no"] for r in rows))


def agreement_markdown(rows: list[dict[str, Any]]) -> str:
    return _table(["drive", "policy", "budget ms", "load", "runs", "plan most run, per run", "agreement"],
                  ([a["drive"], a["policy"], f"{a['budget_ms']:g}", str(a["load"]), str(a["runs"]),
                    "; ".join(p or "none" for p in a["top_plans"]), _f(a["agreement"], 2)] for a in rows))


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


def markdown(rows: list[dict[str, Any]], plugins: Iterable[ModalityPlugin] | None = None) -> str:
    """The per-drive table; each modality's scores (its Scorer's columns) after the obstacle IoU."""
    columns = [c for scorer in scorers(plugins) for c in scorer.columns]
    return _table(["drive", "policy", "obstacle IoU 5 m", *(header for _, header, _ in columns),
                   "exact match (blind prior)", "compute ms/frame", "plan changes", "reaction s"],
                  ([r["drive"], r["policy"], _f(r["obstacle_iou_near5m"]),
                    *(_f(r.get(key), digits) for key, _, digits in columns),
                    f"{_f(r['exact_match'], 2)} ({_f(r.get('blind_prior_exact_match'), 2)})", _f(r["mean_compute_ms"], 1),
                    str(r["switches"]), _f(r["reaction_s_mean"], 2)] for r in rows))


def add_parser(sub: Any) -> None:
    p = sub.add_parser("scheduler", help="adaptive scheduling against static baselines and a hindsight oracle")
    p.add_argument("bags", nargs="+", help="drives not used in training (e.g. edge drive generate ... --seed 900)")
    p.add_argument("--out", default="reports/scheduler-eval", help="[reports/scheduler-eval]")
    p.add_argument("--llm", action="store_true", help="also answer the drives' questions with the LLM")
    p.add_argument("--budget-ms", type=float, nargs="+", default=[100.0],
                   help="latency budgets per frame, end to end, at p95; each is evaluated [100]")
    p.add_argument("--load", type=int, nargs="+", default=[0],
                   help="busy processes (a CPU hog) beside the runtime; each count is evaluated [0]")
    p.add_argument("--load-stop-s", type=float, default=None,
                   help="stop the hog when the drive reaches this time (s), to time the recovery [at the end]")
    p.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES), help="[all three]")
    p.add_argument("--repeat", type=int, default=1, help="runs of each policy, to see whether they agree [1]")
    p.add_argument("--no-oracle", action="store_true", help="skip the hindsight oracle (the fixed plans' runs)")
    p.add_argument("--oracle-max-plans", type=int, default=12, help="fixed plans the oracle tries at most [12]")
    p.add_argument("--unpaced", action="store_true",
                   help="replay as fast as the runtime goes (default: no faster than the drive's stamps, as live)")
    p.set_defaults(func=lambda a: _main(a))


def _main(args: Any) -> int:
    from edge.errors import EdgeError
    from edge.runtime.scheduler import Budget

    for b in args.budget_ms:  # a bad budget is a configuration error naming the key, before any run
        Budget(latency_ms=b)
        parse_model({"budget_ms": b}, RuntimeConfig, "edge eval scheduler --budget-ms")  # and its range
    if any(k < 0 for k in args.load):
        raise EdgeError(f"--load: {min(args.load)} busy processes; give 0 or more")
    if args.repeat < 1 or args.oracle_max_plans < 1:
        raise EdgeError(f"--repeat {args.repeat}, --oracle-max-plans {args.oracle_max_plans}: give 1 or more")
    missing = [b for b in args.bags if not Path(b).exists()]
    if missing:
        raise EdgeError(f"{', '.join(missing)}: no such bag")
    result = evaluate([Path(b) for b in args.bags], Path(args.out), args.llm, tuple(args.budget_ms),
                      tuple(args.policies), tuple(args.load), args.load_stop_s, args.repeat,
                      not args.no_oracle, args.oracle_max_plans, not args.unpaced)
    print(result["table"])
    return 0
