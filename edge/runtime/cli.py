"""`edge run BAG [--config FILE] [--report DIR] [--namespace NS] [--remap FROM:=TO]`: the whole runtime over a drive
in one process."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from edge.config import RuntimeConfig, load_yaml_model, options
from edge.errors import EdgeError
from edge.names import BACKENDS, POLICIES, BackendName, Policy

REPO = Path(__file__).resolve().parents[2]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the runtime over a drive and write a report")
    p.add_argument("bag", help="rosbag2 bag directory")
    p.add_argument("--config", help="YAML with edge.config.RuntimeConfig keys, flat or a ROS parameters file "
                                    "(keys only edge node reads are ignored, with a note)")
    p.add_argument("--report", default=None, help="directory for report.json and report.html [reports/<bag name>]")
    p.add_argument("--policy", choices=POLICIES, help="override the config's policy")
    p.add_argument("--backend", choices=BACKENDS,
                   help="run the encoders' network parts on this backend (override the config's) [eager]")
    p.add_argument("--no-llm", action="store_true", help="perception and scheduling only")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    add_topic_options(p)
    p.set_defaults(func=main)


def add_topic_options(p: argparse.ArgumentParser) -> None:
    """`--namespace` and `--remap`: read a bag recorded under a namespace or other topic names as it is, the way
    `edge node --ros-args -r FROM:=TO` (and `__ns`) renames the node's topics (edge.drives.topics.TopicRemap)."""
    p.add_argument("--namespace", metavar="NS",
                   help="read the contract's topics under this namespace, e.g. /vehicle1 (/vehicle1/odom as /odom)")
    p.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                   help="read the contract's topic FROM from the bag's topic TO (repeatable), e.g. "
                        "/fisheye/front/image_raw:=/cam0/image (a camera's /compressed form follows)")


def topic_remap(args: argparse.Namespace) -> Any:
    """The TopicRemap of the command line (checked against the contract here, against the bag when it opens)."""
    from edge.drives.topics import TopicRemap

    return TopicRemap.parse(getattr(args, "remap", None) or (), getattr(args, "namespace", None))


def load_config(args: argparse.Namespace) -> RuntimeConfig:
    cfg = load_yaml_model(args.config, RuntimeConfig) if args.config else RuntimeConfig()
    ignored = [k for k in set(RuntimeConfig.model_fields) - set(options("run"))
               if getattr(cfg, k) != RuntimeConfig.model_fields[k].default]
    if ignored:  # the node's own keys (topics, lifecycle): one file configures both front ends
        print(f"edge run: {args.config}: ignoring {', '.join(sorted(ignored))} (read by edge node only)",
              file=sys.stderr)
    over: dict[str, Any] = {}
    if args.policy:
        over["policy"] = Policy(args.policy)
    if args.no_llm:
        over["use_llm"] = False
    if getattr(args, "backend", None):
        over["backend"] = BackendName(args.backend)
    if args.max_frames:
        over["max_frames"] = args.max_frames
    return cfg.model_copy(update=over)


def run_drive(bag: str | Path, cfg: RuntimeConfig, report_dir: str | Path | None, progress: bool = True,
              on_frame: Callable[[int, Any], bool | None] | None = None, fixed_plan: Any = None,
              remap: Any = None) -> dict[str, Any]:
    """Run the runtime over `bag`; returns the report summary (and writes the report). `on_frame(i, result)` is
    called after each frame and ends the drive there when it returns True (the scheduler evaluation times frames
    against its CPU hog with it, and stops a fixed plan once it can no longer hold the budget); `fixed_plan` (a
    scheduler Plan) is held for the whole drive instead of the policy's choice (the evaluation's oracle). Frames
    stream to the report directory as they are made; an exception or an interrupt (SIGINT, SIGTERM) still writes
    the report, marked partial with the reason, and is then raised again. `remap` (edge.drives.topics.TopicRemap)
    reads a bag recorded under other topic names or a namespace; the bag is checked against it before the models
    load."""
    from edge.drives.bag import open_bag
    from edge.drives.qa import pick_rotating
    from edge.drives.sync import SyncConfig, Synchronizer
    from edge.runtime.report import ReportBuilder
    from edge.runtime.runtime import Runtime
    from edge.runtime.scheduler import Budget
    from edge.sensors.rig import load_rig

    bag_handle = open_bag(bag, remap)  # first: a bad remap is an error before minutes of model loading
    answerer = None
    if cfg.use_llm:
        from edge.runtime.answerer import make_answerer

        answerer = make_answerer(cfg.aligner_dir, cfg.llm, cfg.max_new_tokens)
        if not answerer.aligners:
            print(f"edge run: no aligners in {cfg.aligner_dir}: the LLM answers without modality context",
                  file=sys.stderr)
    budget = Budget(cfg.budget_ms, cfg.budget_mb, cfg.budget_percentile, cfg.answer_budget_ms)
    runtime = Runtime(cfg.perception_dir, cfg.policy, budget, answerer, rig=load_rig(cfg.rig),
                      dwell=cfg.dwell_frames, quality_per_ms=cfg.quality_per_ms, backend=cfg.backend,
                      engine_cache=cfg.engine_cache, progress=progress, max_estimate_age_s=cfg.max_estimate_age_s,
                      max_changes_per_min=cfg.max_plan_changes_per_min, adapt_threads=cfg.adapt_threads,
                      fixed_plan=fixed_plan, answer_nice=cfg.answer_nice)
    sync = Synchronizer(bag_handle, SyncConfig(image_reduce=runtime.stack.cfg.image_reduce))
    report = ReportBuilder(runtime.stack.cfg, runtime.stack.footprint,
                           {"bag": str(bag), "topic_names": topic_names(remap), "config": run_options(cfg),
                            "policy": cfg.policy,
                            "backend": runtime.stack.backend,
                            "aligners": sorted(answerer.aligners) if answerer else []},
                           runtime.stack.plugins.values())
    out = report.start(report_dir or REPO / "reports" / Path(bag).name)  # frames stream to disk from here on
    total = cfg.max_frames or reference_count(sync)
    bar = _bar(total, progress)
    next_question = None
    asked = 0
    started = time.perf_counter()
    stopped: str | None = None  # why the run ended early: the report is then marked partial with it
    try:
        with _sigterm_as_interrupt():
            for i, sample in enumerate(sync):
                if cfg.max_frames and i >= cfg.max_frames:
                    break
                gt = sample.ground_truth
                if answerer is not None and gt is not None and gt.qa:
                    t = sample.stamp_ns / 1e9
                    if cfg.ask_all_questions:
                        for qa in gt.qa:
                            runtime.ask(qa["question"], answer=qa["answer"], kind=qa.get("kind"))
                    elif next_question is None or t >= next_question:
                        qa, asked = pick_rotating(gt.qa, asked)  # every template family in turn (edge/drives/qa.py)
                        runtime.ask(qa["question"], answer=qa["answer"], kind=qa.get("kind"))
                        next_question = t + cfg.questions_every_s
                result = runtime.step(sample)
                stop = on_frame is not None and on_frame(i, result)
                report.add(result, gt)
                if result.decision.changed:
                    bar.write(f"  {report.frames[-1]['t']:6.1f} s  plan: {result.plan.describe()}  "
                              f"({result.decision.reason})")
                bar.update(1)
                if stop:
                    break
    except KeyboardInterrupt as exc:
        stopped = f"interrupted by {exc.args[0] if exc.args else 'SIGINT'} after {len(report.frames)} frames"
        raise
    except BaseException as exc:
        stopped = f"stopped by an error after {len(report.frames)} frames: {type(exc).__name__}: {exc}"
        raise
    finally:
        bar.close()
        _finish_report(report, runtime, sync, out, stopped)
    summary = report.summary()
    summary.update({"report": str(out), "wall_s": time.perf_counter() - started, "dropped": runtime.dropped,
                    "backend": runtime.stack.backend})
    return summary


def topic_names(remap: Any) -> dict[str, Any] | None:
    """The remap as report.json records it (meta.topic_names; null when the bag's own names were read)."""
    return {"namespace": remap.namespace, "remap": [f"{a}:={b}" for a, b in remap.rules]} if remap else None


def _finish_report(report: Any, runtime: Any, sync: Any, out: Path, stopped: str | None) -> None:
    """Answers still being generated (waited for only on a complete run), diagnostics, degradation spans, then
    the report: complete, or partial with the reason it stopped. Runs on every exit of the frame loop."""
    try:
        if stopped is None:
            report.add_answers(runtime.finish())
        elif runtime.answers is not None:
            report.add_answers(runtime.answers.collect())  # those already done; the rest are not waited for
    except KeyboardInterrupt:  # Ctrl-C while the last answers were awaited: every frame is in, answers are not
        stopped = f"interrupted by SIGINT while waiting for the last answers, after {len(report.frames)} frames"
        raise
    finally:
        runtime.close()
        for d in sync.diagnostics + runtime.diagnostics:
            print(f"edge run: diagnostic: {d}", file=sys.stderr)
        report.add_degradations(sync.degradations, sync.diagnostics)
        report.add_degradations(runtime.degradations, runtime.diagnostics)  # implausible, detached modalities
        report.write(out, partial_reason=stopped)
        if stopped is not None:
            print(f"edge run: {stopped}; partial report in {out} (report.json, frames.jsonl)", file=sys.stderr)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a service manager, `timeout`, a ROS launch shutting down) ends the run as SIGINT does, with a
    partial report, instead of killing the process outright. Only the main thread can take signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_options(cfg: RuntimeConfig) -> dict[str, Any]:
    """The options edge run reads, as report.json records them (plain JSON values; node-only keys left out)."""
    return cfg.model_dump(mode="json", include=set(options("run")))


def reference_count(sync: Any) -> int | None:
    """Messages on the topic the frame clock's reference stream is read from (edge.drives.sync.Synchronizer: the
    SyncConfig.reference resolved through the plugins' topics, raw or /compressed as the bag has it): about the
    number of frames, for the progress bar; None without a reference."""
    asm = sync.assembler
    info = sync.bag.topics.get(asm.topic_of.get(asm.reference_key, ""))
    return info.count if info is not None else None


def _bar(total: int | None, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="edge run", unit="frame", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def print_summary(s: dict[str, Any]) -> None:
    lat = s["latency_ms"]
    fmt = lambda v, d=1: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    print(f"{s['frames']} frames ({s.get('backend', BackendName.EAGER)} backend), {s['switches']} plan changes; "
          f"end-to-end latency p50 {fmt(lat['p50'])} ms, "
          f"p99 {fmt(lat['p99'])} ms; peak memory {fmt(s['peak_rss_mb'], 0)} MB")
    print("per stage (p50 / p99 ms): " + ", ".join(f"{k} {fmt(v['p50'])}/{fmt(v['p99'])}"
                                                    for k, v in s["stages_ms"].items()))
    print(f"obstacle IoU within 5 m (mean over frames): {fmt(s['obstacle_iou_near5m_mean'], 3)}; "
          f"modality duty: " + ", ".join(f"{m} {100 * v:.0f}%" for m, v in s["modality_duty"].items()))
    if s["questions"]:
        print(f"questions answered: {s['questions']}, exact match {fmt(s['exact_match'], 2)} "
              f"(blind prior on the same questions {fmt(s.get('blind_prior_exact_match'), 2)})")
    b = s.get("budget")
    if b:
        print(f"budget {b['latency_ms']:g} ms at p{b['percentile']:g} end to end: {100 * b['share_within']:.1f} % of "
              f"frames within ({100 * b['share_within_after_2s']:.1f} % after the first 2 s)"
              + (f"; NOT MET by any plan: the cheapest, {b['unmet']['cheapest_plan']}, was predicted at "
                 f"{b['unmet']['cheapest_ms']:.1f} ms" if b.get("unmet") else ""))
    if s.get("answer_latency_ms"):
        a = s["answer_latency_ms"]
        print(f"answers (off the frame path): latency p50 {fmt(a['p50'])} ms, max {fmt(a['max'])} ms; "
              f"{100 * s['answers_within_budget']:.0f} % within the answer budget")
    print(f"report: {s['report']}/report.html")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    remap = topic_remap(args)
    if not Path(args.bag).exists():
        raise EdgeError(f"{args.bag}: no such bag")
    print_summary(run_drive(args.bag, cfg, args.report, remap=remap))
    return 0
