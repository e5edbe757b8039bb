"""Soak: many frames through the runtime with the LLM, and the ROS node under a long replay with faults; memory and
latency over time, and every frame lost accounted for (issue 12, item 7). Not part of `make test`.

  python benchmarks/soak.py runtime [--frames 10000] [--drive BAG] [--rate 10] [--json soak-runtime.json]
      A drive's samples, preloaded, are played in a loop (stamps moved on each pass, so time only goes forward) at
      `--rate` Hz by a producer thread into the runtime's bounded drop-oldest queue (queue depth 4, as a live
      source), while the runtime consumes them with the LLM attached; the drive's questions are asked at the
      demo's rate (RuntimeConfig.questions_every_s of drive time, every template in turn). Per frame: latency from
      submit to result (queueing included), RSS. Lost = submitted - processed; the queue's drops are counted by
      the runtime (Runtime.dropped): lost frames not among them are unaccounted.

  python benchmarks/soak.py node [--minutes 30] [--fault-every-s 60] [--drive BAG] [--json soak-node.json]
                                 [--ros-args -p max_input_lag_s:=0.0 ...]
      `edge node` (LLM on, default parameters unless --ros-args sets some) in its own process; this process
      publishes the drive's sensor topics in real time over DDS, looping with stamps moved on, and every
      `--fault-every-s` plays the next fault once: bag faults of edge.drives.faults (a topic silent and back,
      duplicates, reordering, backwards stamps, a stuck range sensor, a frozen camera, an audio channel change), a
      publisher destroyed and made again, and a question flood on /mpnp/question. Questions at the demo's rate
      otherwise. Per frame (the node's /diagnostics, one per frame after its grid, stamped as it): latency from
      publishing the front fisheye image to the frame's /diagnostics arriving, the node's RSS (/proc) every second.
      Lost = front images published in clean passes without a frame of that stamp; accounted for by DDS (images the
      node did not receive, from its `received` counters), the node's input drops, its lag skips (max_input_lag_s)
      and failed frames.

Figures are printed beside the targets: RSS growth <= 2 % after the first minute; latency flat over time
(last-minute p95 / first-minute p95 <= 1.2); every frame lost accounted for. `--frames` / `--minutes` shorten a run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RSS_GROWTH_MAX = 0.02
FLAT_P95_MAX = 1.2
FRONT = "/fisheye/front/image_raw/compressed"
AUDIO = "/audio/raw"


# ---------------------------------------------------------------- shared

def ensure_drive(path: str | None, seconds: float) -> Path:
    """The drive to loop: `path`, else drives/soak-<seconds>s generated once (seed 0, day-to-night, with QA)."""
    if path:
        return Path(path)
    from edge.drives.generate import generate_drive

    out = ROOT / "drives" / f"soak-{seconds:g}s"
    if not (out / "metadata.yaml").exists():
        print(f"generating {out} ...", file=sys.stderr)
        generate_drive(out, seed=0, duration=seconds, scenario="day-to-night", progress=True)
    return out


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def windows(frames: list[dict[str, Any]], key: str, size: float) -> list[dict[str, Any]]:
    """Per window of `size` (seconds of wall time for key "t", frames for key "i"): frames, latency p50/p95/p99,
    RSS at its end and its largest, frames lost in it."""
    out: dict[int, dict[str, Any]] = {}
    for f in frames:
        w = out.setdefault(int(f[key] // size), {"lat": [], "rss": [], "lost": 0, "frames": 0, "span": [f[key]] * 2})
        w["frames"] += 1
        w["span"] = [min(w["span"][0], f[key]), max(w["span"][1], f[key])]
        if f.get("latency_ms") is not None:
            w["lat"].append(f["latency_ms"])
        if f.get("rss_mb") is not None:
            w["rss"].append(f["rss_mb"])
        w["lost"] += f.get("lost", 0)
    return [{"window": k, "frames": w["frames"], "p50_ms": pct(w["lat"], 50), "p95_ms": pct(w["lat"], 95),
             "p99_ms": pct(w["lat"], 99), "rss_mb_end": w["rss"][-1] if w["rss"] else None,
             "rss_mb_max": max(w["rss"]) if w["rss"] else None, "lost": w["lost"],
             "full": w["span"][1] - w["span"][0] >= 0.8 * size} for k, w in sorted(out.items())]


def targets(per_minute: list[dict[str, Any]], rss: list[tuple[float, float]], lost: int, accounted: int) -> dict:
    """The issue's targets beside the figures: RSS growth after the first minute, p95 drift, lost frames."""
    after = [m for t, m in rss if t >= 60.0]
    base = next((m for t, m in rss if t >= 60.0), None)
    growth = (max(after) - base) / base if after and base else None
    full = [w for w in per_minute if w["p95_ms"] is not None and w["full"]]  # a run's last minute is partial
    drift = full[-1]["p95_ms"] / full[0]["p95_ms"] if len(full) >= 2 and full[0]["p95_ms"] else None
    return {
        "rss_growth_after_first_minute": growth, "rss_growth_target": RSS_GROWTH_MAX,
        "rss_ok": None if growth is None else growth <= RSS_GROWTH_MAX,
        "p95_last_over_first_minute": drift, "p95_drift_target": FLAT_P95_MAX,
        "latency_flat_ok": None if drift is None else drift <= FLAT_P95_MAX,
        "frames_lost": lost, "frames_lost_accounted": accounted, "frames_lost_unaccounted": lost - accounted,
        "lost_ok": lost - accounted <= 0,
    }


def print_report(name: str, doc: dict[str, Any]) -> None:
    fmt = lambda v, d=1: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    print(f"\n{name}: {doc['frames']} frames in {doc['wall_s']:.0f} s ({doc.get('note', '')})")
    print(f"{'minute':>6} {'frames':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'RSS MB':>8} {'lost':>5}")
    for w in doc["per_minute"]:
        print(f"{w['window']:>6} {w['frames']:>6} {fmt(w['p50_ms']):>8} {fmt(w['p95_ms']):>8} {fmt(w['p99_ms']):>8} "
              f"{fmt(w['rss_mb_end'], 0):>8} {w['lost']:>5}")
    t = doc["targets"]
    ok = lambda v: "n/a (run shorter than 2 minutes)" if v is None else ("met" if v else "NOT MET")  # noqa: E731
    growth = t["rss_growth_after_first_minute"]
    print(f"RSS growth after the first minute: {fmt(None if growth is None else 100 * growth, 2)} % "
          f"(target <= {100 * RSS_GROWTH_MAX:g} %): {ok(t['rss_ok'])}")
    print(f"latency p95 last minute / first minute: {fmt(t['p95_last_over_first_minute'], 2)} "
          f"(target <= {FLAT_P95_MAX:g}, flat): {ok(t['latency_flat_ok'])}")
    print(f"frames lost: {t['frames_lost']}, accounted for: {t['frames_lost_accounted']} "
          f"({doc['lost_causes']}); unaccounted {t['frames_lost_unaccounted']} (target 0): {ok(t['lost_ok'])}")
    for k, v in doc.get("extra", {}).items():
        print(f"{k}: {v}")


# ---------------------------------------------------------------- runtime soak

def soak_runtime(args: argparse.Namespace) -> dict[str, Any]:
    from edge.config import RuntimeConfig
    from edge.drives.qa import pick_rotating
    from edge.drives.sync import SyncConfig, Synchronizer
    from edge.runtime.answerer import make_answerer
    from edge.runtime.runtime import Runtime
    from edge.runtime.scheduler import Budget

    cfg = RuntimeConfig()  # the demo's: adaptive policy, default budgets, LLM with the shipped aligners
    drive = ensure_drive(args.drive, args.drive_seconds)
    answerer = make_answerer(cfg.aligner_dir, cfg.llm, cfg.max_new_tokens)
    runtime = Runtime(cfg.perception_dir, cfg.policy, Budget(cfg.budget_ms, cfg.budget_mb, cfg.budget_percentile,
                                                             cfg.answer_budget_ms),
                      answerer, dwell=cfg.dwell_frames, quality_per_ms=cfg.quality_per_ms, backend=cfg.backend,
                      max_estimate_age_s=cfg.max_estimate_age_s, max_changes_per_min=cfg.max_plan_changes_per_min,
                      adapt_threads=cfg.adapt_threads)
    samples = list(Synchronizer(drive, SyncConfig(image_reduce=runtime.stack.cfg.image_reduce)))
    if len(samples) < 2:
        raise SystemExit(f"{drive}: {len(samples)} samples; need a drive of a few seconds")
    runtime.calibrate(samples[0])  # measured costs before the first plan, outside the timed frames (as edge bench)
    period = (samples[-1].stamp_ns - samples[0].stamp_ns) // (len(samples) - 1)
    span = samples[-1].stamp_ns - samples[0].stamp_ns + period
    print(f"{drive}: {len(samples)} samples per pass; {args.frames} frames at {args.rate:g} Hz "
          f"(~{args.frames / args.rate / 60:.1f} min)", file=sys.stderr)

    submitted: dict[int, float] = {}
    done = threading.Event()

    def produce() -> None:
        start = time.perf_counter()
        for i in range(args.frames):
            s = samples[i % len(samples)]
            shift = (i // len(samples)) * span
            s = replace(s, stamp_ns=s.stamp_ns + shift,
                        source_stamps={k: v + shift for k, v in s.source_stamps.items()})
            delay = start + i / args.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            submitted[s.stamp_ns] = time.perf_counter()
            runtime.submit(s)
        done.set()

    frames: list[dict[str, Any]] = []
    answers: list[dict[str, Any]] = []
    asked, rotation, next_q, dropped_before = 0, 0, None, 0
    t0 = time.perf_counter()
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    last_print = t0
    while not (done.is_set() and not runtime.queue):
        if not runtime.queue:
            time.sleep(0.0005)
            continue
        s = runtime.queue.popleft()
        gt = s.ground_truth
        t_drive = s.stamp_ns / 1e9
        if gt is not None and gt.qa and (next_q is None or t_drive >= next_q):
            qa, rotation = pick_rotating(gt.qa, rotation)
            runtime.ask(qa["question"], answer=qa["answer"], kind=qa.get("kind"))
            asked += 1
            next_q = t_drive + cfg.questions_every_s
        r = runtime.step(s)
        now = time.perf_counter()
        answers += r.answers
        frames.append({"i": len(frames), "t": now - t0, "latency_ms": (now - submitted[s.stamp_ns]) * 1e3,
                       "rss_mb": r.rss_mb, "plan": "+".join(r.plan.modalities),
                       "lost": runtime.dropped - dropped_before})  # dropped by the queue since the last frame
        dropped_before = runtime.dropped
        if now - last_print >= 30:
            last_print = now
            w = frames[-300:]
            print(f"  {now - t0:6.0f} s: {len(frames)} frames, dropped {runtime.dropped}, p95 "
                  f"{pct([f['latency_ms'] for f in w], 95):.0f} ms, RSS {r.rss_mb:.0f} MB, answers {len(answers)}",
                  file=sys.stderr, flush=True)
    answers += runtime.finish()
    runtime.close()
    wall = time.perf_counter() - t0
    lost = args.frames - len(frames)
    per_minute = windows(frames, "t", 60.0)
    return {
        "mode": "runtime", "drive": str(drive), "rate_hz": args.rate, "frames_submitted": args.frames,
        "frames": len(frames), "wall_s": wall, "per_minute": per_minute, "per_1000_frames": windows(frames, "i", 1000),
        "rss_mb": [(f["t"], f["rss_mb"]) for f in frames[:: max(1, len(frames) // 600)]],
        "lost_causes": f"runtime queue drops (drop-oldest, depth {runtime.queue.maxlen}): {runtime.dropped}",
        "targets": targets(per_minute, [(f["t"], f["rss_mb"]) for f in frames], lost, runtime.dropped),
        "extra": {"questions asked / answered / failed": f"{asked} / {len(answers)} / "
                                                         f"{sum(1 for a in answers if a.get('error'))}",
                  "answer latency p50 / max ms": f"{pct([a['latency_ms'] for a in answers], 50) or 0:.0f} / "
                                                 f"{max([a['latency_ms'] for a in answers], default=0):.0f}",
                  "plans used (share of frames)": _shares([f["plan"] for f in frames])},
    }


def _shares(items: list[str]) -> str:
    from collections import Counter

    c = Counter(items)
    return ", ".join(f"{k or 'nothing'} {100 * n / len(items):.0f}%" for k, n in c.most_common(4))


# ---------------------------------------------------------------- node soak

BAG_FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("gap", {"topic": FRONT, "start_s": 2.0, "duration_s": 3.0}),                      # a topic silent and back
    ("duplicate", {"topic": "/fisheye/left/image_raw/compressed", "start_s": 1.0, "duration_s": 2.0}),
    ("reorder", {"topic": FRONT, "start_s": 1.0, "duration_s": 2.0}),
    ("backwards", {"topic": "/odom", "start_s": 2.0, "duration_s": 2.0}),
    ("ultrasonic_stuck", {"start_s": 1.0, "duration_s": 3.0}),
    ("camera_frozen", {"topic": "/fisheye/rear/image_raw/compressed", "start_s": 1.0, "duration_s": 3.0}),
    ("audio_channels", {"start_s": 1.0, "duration_s": 2.0}),
    ("gap", {"topic": "/audio/raw", "start_s": 1.0, "duration_s": 3.0}),
]
ROS_FAULTS = ("publisher_restart", "question_flood")


def _load(bag: Path) -> list[tuple[str, str, int, bytes]]:
    """A pass of the drive as published: sensor topics only (no ground truth, no camera_info), bag-time order."""
    from edge.drives.bag import is_sensor_topic, open_bag

    with open_bag(bag) as b:
        return [(m.topic, m.msgtype, m.stamp_ns, m.msg) for m in b.messages(raw=True)
                if is_sensor_topic(m.topic) and not m.topic.endswith("camera_info")]


def _rss_mb(pid: int) -> float | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def soak_node(args: argparse.Namespace) -> dict[str, Any]:
    from edge.drives.faults import inject

    drive = ensure_drive(args.drive, args.drive_seconds)
    work = ROOT / "drives" / f"soak-faults-{drive.name}"
    clean = _load(drive)
    variants: list[tuple[str, list[tuple[str, str, int, bytes]]]] = []
    for k, (fault, kw) in enumerate(BAG_FAULTS):
        out = work / f"{k}-{fault}"
        if not (out / "metadata.yaml").exists():
            print(f"injecting {fault} {kw} -> {out}", file=sys.stderr)
            out.parent.mkdir(parents=True, exist_ok=True)
            inject(drive, out, fault, seed=k, **kw)
        variants.append((f"{fault} {kw.get('topic', '')}".strip(), _load(out)))
    variants += [(f, clean) for f in ROS_FAULTS]
    questions = _questions(drive)
    start_ns, end_ns = clean[0][2], clean[-1][2]
    span = end_ns - start_ns + 100_000_000

    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(101, 200)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               RMW_IMPLEMENTATION="rmw_fastrtps_cpp", PYTHONUNBUFFERED="1")
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "RMW_IMPLEMENTATION")})
    node_log = open(work / "node.log", "w")
    node_args = ["--ros-args", *args.ros_args] if args.ros_args else []
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "node", *node_args], cwd=ROOT, env=env,
                            stderr=subprocess.STDOUT, stdout=node_log, text=True)
    try:
        return _drive_node(args, proc, work, clean, variants, questions, span, start_ns)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        node_log.close()


def _questions(drive: Path) -> list[str]:
    """The drive's recorded questions (asked in turn at the demo's rate)."""
    from edge.drives import messages as M
    from edge.drives import topics as T
    from edge.drives.bag import open_bag

    out: list[str] = []
    with open_bag(drive) as b:
        for m in b.messages([T.GT_QA]):
            q = M.decode_json(m.msg).get("question")
            if q and q not in out:
                out.append(q)
    if not out:
        raise SystemExit(f"{drive}: no recorded questions (/ground_truth/qa); use a generated drive")
    return out


def _drive_node(args: argparse.Namespace, proc: subprocess.Popen, work: Path, clean: list, variants: list,
                questions: list[str], span: int, start_ns: int) -> dict[str, Any]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import OccupancyGrid
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String

    from edge.config import RuntimeConfig
    from edge.drives.faults import restamp
    from edge.drives.sync import cdr_header_stamp
    from ros_nodes.node_io import MESSAGE_CLASSES
    from ros_nodes.qos import reliable_qos, sensor_qos

    log = work / "node.log"
    deadline = time.monotonic() + 900
    while "edge node: subscribed" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"edge node did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    rclpy.init()
    node = rclpy.create_node("mpnp_soak")
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    lock = threading.Lock()
    published: dict[int, tuple[float, bool]] = {}  # front stamp -> (wall time published, in a clean pass)
    grids: dict[int, float] = {}
    diag: dict[int, tuple[float, dict[str, str]]] = {}
    answers: list[dict[str, Any]] = []

    def on_grid(msg: Any) -> None:
        with lock:
            grids[msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec] = time.monotonic()

    def on_diag(msg: Any) -> None:
        values = {f"{s.name}/{kv.key}": kv.value for s in msg.status for kv in s.values}
        with lock:
            diag[msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec] = (time.monotonic(), values)

    def on_answer(msg: Any) -> None:
        with lock:
            answers.append(json.loads(msg.data))

    node.create_subscription(OccupancyGrid, "/perception/bev_occupancy", on_grid, reliable_qos())
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, reliable_qos())
    node.create_subscription(String, "/mpnp/answer", on_answer, reliable_qos(50))
    qpub = node.create_publisher(String, "/mpnp/question", reliable_qos(50))

    def make_pub(topic: str, msgtype: str) -> Any:
        mod, cls = MESSAGE_CLASSES[msgtype]
        return node.create_publisher(getattr(importlib.import_module(mod), cls), topic, sensor_qos())

    types = {t: ty for t, ty, _, _ in clean}
    pubs = {t: make_pub(t, ty) for t, ty in types.items()}
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    time.sleep(2.0)  # discovery

    rss: list[tuple[float, float]] = []
    cfg = RuntimeConfig()
    t0 = time.monotonic()
    stop_at = t0 + args.minutes * 60
    next_fault = t0 + args.fault_every_s
    faults_played: list[dict[str, Any]] = []
    k_fault, n_pass, n_q, next_q = 0, 0, 0, t0 + 2.0
    while time.monotonic() < stop_at and proc.poll() is None:
        kind, msgs = "clean", clean
        if time.monotonic() >= next_fault:
            kind, msgs = variants[k_fault % len(variants)]
            k_fault += 1
            next_fault += args.fault_every_s
        shift = n_pass * span
        pass_start = time.monotonic()
        faults_played.append({"pass": n_pass, "fault": kind, "t": pass_start - t0})
        restart_at = len(msgs) // 2 if kind == "publisher_restart" else -1
        audio_back = 0.0
        for j, (topic, msgtype, t_bag, data) in enumerate(msgs):
            delay = pass_start + (t_bag - start_ns) / 1e9 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = time.monotonic()
            if now >= next_q:
                flood = 30 if kind == "question_flood" and now - pass_start > 2 else 1
                for _ in range(flood):
                    qpub.publish(String(data=questions[n_q % len(questions)]))
                    n_q += 1
                next_q = now + cfg.questions_every_s * 1.05  # the node's gate refuses faster ones (jitter)
            if j == restart_at:  # the audio publisher goes away for 1 s and comes back (a driver restarting)
                node.destroy_publisher(pubs.pop(AUDIO))
                audio_back = now + 1.0
            if topic == AUDIO and AUDIO not in pubs:
                if now < audio_back:
                    continue
                pubs[AUDIO] = make_pub(AUDIO, types[AUDIO])
            out = restamp(data, shift)
            if topic == FRONT:
                with lock:
                    published[cdr_header_stamp(out)] = (time.monotonic(), kind == "clean")
            pubs[topic].publish(out)
            if not rss or now - t0 - rss[-1][0] >= 1.0:
                m = _rss_mb(proc.pid)
                if m is not None:
                    rss.append((now - t0, m))
        n_pass += 1
        if n_pass % 6 == 0:
            with lock:
                print(f"  {time.monotonic() - t0:6.0f} s: pass {n_pass}, {len(diag)} frames, {len(grids)} grids, "
                      f"RSS {rss[-1][1] if rss else 0:.0f} MB", file=sys.stderr, flush=True)
    tail_end, seen, quiet_since = time.monotonic() + 300, -1, time.monotonic()
    while time.monotonic() < tail_end and time.monotonic() - quiet_since < 15 and proc.poll() is None:
        time.sleep(1.0)  # the node works off what it has queued: those frames are late, not lost
        with lock:
            if len(diag) != seen:
                seen, quiet_since = len(diag), time.monotonic()
    wall = time.monotonic() - t0
    with lock:
        published_c, grids_c, diag_c, answers_c = dict(published), dict(grids), dict(diag), list(answers)
    ex.shutdown()
    node.destroy_node()
    rclpy.shutdown()
    return _node_figures(args, proc, wall, t0, published_c, grids_c, diag_c, answers_c, rss, faults_played, n_q)


def _node_figures(args: argparse.Namespace, proc: subprocess.Popen, wall: float, t0: float,
                  published: dict[int, tuple[float, bool]], grids: dict[int, float],
                  diag: dict[int, tuple[float, dict[str, str]]], answers: list[dict[str, Any]],
                  rss: list[tuple[float, float]], faults: list[dict[str, Any]], n_q: int) -> dict[str, Any]:
    """Figures of the node soak. Time counts from the node's first frame (loading is not the soak); each frame lost
    is put down to the node's counters (/diagnostics, read when each frame leaves) moving near the time its image
    was published: input drops (the node's bounded inbox was full), or fewer front images received than published
    (DDS, best effort); a loss near which neither moved is unaccounted."""
    import bisect

    if not diag:
        raise SystemExit(f"the node produced no frame in {wall:.0f} s (its log: drives/soak-faults-*/node.log)")
    first = min(t for t, _ in diag.values())
    series = sorted((t, _counter(v, "/input_drops"), _counter(v, f"received {FRONT[:-len('/compressed')]}"),
                     _counter(v, "/failed_frames"), _counter(v, "/lag_skips")) for t, v in diag.values())
    times = [x[0] for x in series]

    def at(t: float, k: int) -> int:  # a counter's value at wall time t (0 before the first frame)
        i = bisect.bisect_right(times, t)
        return series[i - 1][k] if i else 0

    sent = sorted(tp for tp, _ in published.values())
    frames = []
    for stamp, (t_arr, values) in sorted(diag.items()):
        pub = published.get(stamp)  # the frame's /diagnostics leaves after its grid: every frame has one
        frames.append({"t": t_arr - first, "stamp_ns": stamp, "grid": stamp in grids,
                       "latency_ms": (t_arr - pub[0]) * 1e3 if pub is not None else None, "rss_mb": None,
                       "total_ms": float(values.get("mpnp_edge/processing_time/total_ms", "nan"))})
    lost = {"node input drops": 0, "node lag skips (max_input_lag_s)": 0, "DDS (not received by the node)": 0,
            "failed frames": 0, "unaccounted": 0}
    lost_at: list[float] = []
    for stamp, (tp, clean) in published.items():
        if not clean or stamp in diag:
            continue
        lost_at.append(tp - first)
        a, b = tp - 2.0, tp + 10.0  # the node's callbacks may run a few seconds after publication when it is busy
        n_sent = bisect.bisect_right(sent, b) - bisect.bisect_right(sent, a)
        if at(b, 1) > at(a, 1):
            lost["node input drops"] += 1
        elif at(b, 4) > at(a, 4):
            lost["node lag skips (max_input_lag_s)"] += 1
        elif at(b, 2) - at(a, 2) < n_sent:
            lost["DDS (not received by the node)"] += 1
        elif at(b, 3) > at(a, 3):
            lost["failed frames"] += 1
        else:
            lost["unaccounted"] += 1
    since = first - t0  # rss and wall are counted from t0
    rss = [(t - since, m) for t, m in rss if t >= since]
    per_minute = windows(frames, "t", 60.0)
    rss_windows = {w["window"]: w for w in windows([{"t": t, "rss_mb": m} for t, m in rss], "t", 60.0)}
    for w in per_minute:  # the node's RSS, sampled each second, and lost frames by when their image was sent
        r = rss_windows.get(w["window"], {})
        w["rss_mb_end"], w["rss_mb_max"] = r.get("rss_mb_end"), r.get("rss_mb_max")
        w["lost"] = sum(1 for t in lost_at if int(t // 60) == w["window"])
    last = series[-1]
    refused = sum(1 for a in answers if a.get("refused"))
    n_lost = len(lost_at)
    return {
        "mode": "node", "minutes": args.minutes, "frames": len(diag), "wall_s": wall - since, "per_minute": per_minute,
        "rss_mb": rss, "faults": faults, "frame_records": frames,
        "lost_causes": ", ".join(f"{k} {n}" for k, n in lost.items()) + f" (node counters at the end: input drops "
                       f"{last[1]} messages, lag skips {last[4]} messages, front images received {last[2]} of "
                       f"{len(published)} sent, failed frames {last[3]})",
        "targets": targets(per_minute, rss, n_lost, n_lost - lost["unaccounted"]),
        "extra": {"node exit": proc.poll(), "faults played": sum(1 for f in faults if f["fault"] != "clean"),
                  "passes": len(faults), "grids": len(grids), "node loading (s)": round(since, 1),
                  "questions sent / answered / refused (rate limit)": f"{n_q} / {len(answers) - refused} / {refused}",
                  "node processing total_ms p50 / p95": f"{pct([f['total_ms'] for f in frames], 50) or 0:.0f} / "
                                                       f"{pct([f['total_ms'] for f in frames], 95) or 0:.0f}"},
    }


def _counter(values: dict[str, str], suffix: str) -> int:
    """A counter of the node's /diagnostics (keys "<status name>/<key>"), 0 where absent."""
    return int(next((v for k, v in values.items() if k.endswith(suffix)), 0))


# ---------------------------------------------------------------- main

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("runtime", help="frames through the runtime with the LLM")
    r.add_argument("--frames", type=int, default=10_000, help="frames to play [10000]")
    r.add_argument("--rate", type=float, default=10.0, help="frames per second into the queue [10]")
    n = sub.add_parser("node", help="edge node under a looping replay with faults")
    n.add_argument("--minutes", type=float, default=30.0, help="replay length [30]")
    n.add_argument("--fault-every-s", type=float, default=60.0, help="one fault pass this often [60]")
    n.add_argument("--ros-args", nargs=argparse.REMAINDER, default=[], dest="ros_args", metavar="ARG",
                   help="last on the line: the node's ROS arguments, e.g. -p max_input_lag_s:=0.0 [defaults]")
    for q in (r, n):
        q.add_argument("--drive", help="drive to loop [drives/soak-10s, generated once]")
        q.add_argument("--drive-seconds", type=float, default=10.0, help="length of the generated drive [10]")
        q.add_argument("--json", help="write the figures here [soak-<mode>.json]")
    args = p.parse_args()
    doc = soak_runtime(args) if args.mode == "runtime" else soak_node(args)
    doc["note"] = f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    Path(args.json or f"soak-{args.mode}.json").write_text(json.dumps(doc, indent=1))
    print_report(f"soak {args.mode}", doc)
    return 0 if doc["targets"]["lost_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
