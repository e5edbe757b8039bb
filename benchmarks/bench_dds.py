"""Occupancy and answer latency over DDS against in-process, on one drive in one run (ros2_benchmark's method:
preloaded playback, stamp-matched latency).

    python benchmarks/bench_dds.py                                   # a 10 s parking drive, generated here
    python benchmarks/bench_dds.py --drive drives/day-to-night-seed0 --json bench_dds.json
    python benchmarks/bench_dds.py --rate 0.25          # frames 400 ms apart: no graph falls behind here

Latency is transport plus processing plus any backlog: a graph whose frames take longer than the frame period falls
behind and its latency grows with the drive (the in-process frame time is printed to tell).

Three graphs, one after the other, each fed the same drive at `--rate` (1x) with the same parameters (`policy` pinned to
`all`, default `all`: the adaptive scheduler measures its own costs in each process and may choose other plans,
which would compare plans, not transports), the LLM on, a question every `--ask-every` s:
  in-process  the node's own path without DDS: edge.runtime.Runtime built as the node builds it, fed by
              ros_nodes.node_io.Pipeline (same frame clock, `max_input_delay_s` window and `max_input_lag_s` skip),
              the drive's messages handed in at `--rate` from memory by this process
  composite   `edge node` over DDS, fed by `edge replay`
  split       `edge node --role perception` + `edge node --role llm` over DDS, fed by `edge replay`
Occupancy latency, stamp-matched (docs/ros.md's rule: a grid carries the header stamp of the front fisheye image
it was computed from): the time this process received the grid minus the time it received (in-process: handed
in) the front fisheye image with that stamp. Grids carrying the frame clock's own tick (image lost) are counted
and left out. The first `--warmup-s` s of each drive (the runtime's calibration on its first frame) are left out
of all three. Answer latency: question published (in-process: asked) to the answer received.

Occupancy rate (issue 14: >= 95 % while the LLM answers a question every second, `--ask-every 1`): grids received
as a share of the drive's frames (one per front fisheye image), beside the frames the graph processed (its
/diagnostics: one per frame) and the plans it published, since a plan without a BEV modality makes frames without
a grid. `--logs DIR` keeps each node's stderr (its plan changes and losses).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.drives import topics as T  # noqa: E402
from edge.drives.bag import open_bag  # noqa: E402
from edge.drives.sync import cdr_header_stamp  # noqa: E402

FRONT = T.fisheye_image_topic("front") + T.COMPRESSED_SUFFIX
QUESTION = "is the left side clear?"
TARGETS_MS = {"composite": 3.0, "split": 10.0}  # p50 occupancy latency over in-process (issue 14)


class Record:
    """Arrival times (monotonic s): front images by stamp, grids by stamp, questions and answers in order."""

    def __init__(self) -> None:
        self.front: dict[int, float] = {}
        self.grids: dict[int, float] = {}
        self.asked: list[float] = []
        self.answered: list[float] = []
        self.refused: list[str] = []
        self.plans: list[str] = []  # the plans published (modalities+...), in order: a frame without a BEV modality
        # in its plan makes no grid, which is not a lost frame
        self.frame_ms: list[float] = []  # each frame's processing time (Runtime's timings_ms total; over DDS: the
        # node's /diagnostics, mpnp_edge/processing_time total_ms), to tell transport from compute

    def occupancy_ms(self, warmup_s: float) -> tuple[list[float], int]:
        if not self.front:
            return [], len(self.grids)
        start = min(self.front) + int(warmup_s * 1e9)
        lat = [1e3 * (t - self.front[s]) for s, t in sorted(self.grids.items()) if s in self.front and s >= start]
        return lat, sum(s not in self.front for s in self.grids)

    def answer_ms(self) -> list[float]:
        return [1e3 * (b - a) for a, b in zip(self.asked, self.answered)]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


# ---------------------------------------------------------------- in-process
def run_in_process(bag: Path, policy: str, ask_every: float, rate: float) -> Record:
    from edge.drives.replay import Player, ReplayConfig
    from ros_nodes import node_io as io
    from ros_nodes.parameters import validate
    from ros_nodes.runtime_node import build_runtime

    cfg = validate({"policy": policy}, "bench_dds")
    runtime, rig = build_runtime(cfg)
    rec = Record()
    lock = threading.Lock()

    def publish(result: Any) -> None:
        now = time.monotonic()
        rec.frame_ms.append(result.timings_ms.get("total", float("nan")))
        if result.decision.changed:
            rec.plans.append(f"{'+'.join(result.plan.modalities) or 'none'} ({result.decision.reason})")
        if result.occupancy_grid() is not None:
            rec.grids[result.stamp_ns] = now
        with lock:
            for a in result.answers:
                rec.answered.append(now)

    pipeline = io.Pipeline(runtime, io.stream_types(rig), publish, lambda: None, cfg.max_input_delay_s,
                           cfg.max_input_lag_s)
    by_topic = {"/" + i.name: i for i in io.inputs(rig, {b: ("compressed",) for b in io.camera_bases(rig)})}
    player = Player(bag, ReplayConfig(rate=rate, topics=[t for t in by_topic if t in open_bag(bag).topics], raw=True))
    pipeline.start()
    next_ask = time.monotonic() + ask_every
    try:
        for m in player:
            now = time.monotonic()
            if m.topic == FRONT:
                rec.front[cdr_header_stamp(m.msg)] = now
            sub = by_topic[m.topic]
            pipeline.put(sub.stream, sub.msgtype, m.msg)
            if now >= next_ask:
                with lock:
                    rec.asked.append(time.monotonic())
                runtime.ask(QUESTION)
                next_ask = now + ask_every
        time.sleep(1.0 + cfg.max_input_delay_s)  # the last frames leave the reordering window
        end = time.monotonic() + 30
        while len(rec.answered) < len(rec.asked) and time.monotonic() < end:
            time.sleep(0.1)
    finally:
        pipeline.stop()
        runtime.close()
    return rec


# ---------------------------------------------------------------- over DDS
class Node:
    def __init__(self, args: list[str], env: dict[str, str], name: str, log: Path | None = None) -> None:
        self.name, self.ready = name, threading.Event()
        self.log = log.open("w") if log is not None else None  # the node's whole stderr, where asked (--logs)
        self.proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "node", *args], cwd=ROOT, env=env,
                                     stderr=subprocess.PIPE, text=True)
        self.tail: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.tail = (self.tail + [line])[-30:]
            if self.log is not None:
                self.log.write(line)
                self.log.flush()
            if "edge node: subscribed" in line:
                self.ready.set()
            if "autostart stopped" in line:  # configure or activate failed; the node stays up
                self.proc.send_signal(signal.SIGINT)

    def wait_ready(self, timeout_s: float = 600) -> None:
        end = time.monotonic() + timeout_s
        while not self.ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"{self.name} did not start:\n{''.join(self.tail)}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_over_dds(bag: Path, graph: str, policy: str, ask_every: float, params: Path, rate: float,
                 logs: Path | None = None) -> Record:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import OccupancyGrid
    from sensor_msgs.msg import CompressedImage
    from std_msgs.msg import String

    from ros_nodes.qos import reliable_qos, sensor_qos

    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(150, 230)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               RMW_IMPLEMENTATION="rmw_fastrtps_cpp", PYTHONUNBUFFERED="1")
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "RMW_IMPLEMENTATION")})
    common = ["--params-file", str(params), "--policy", policy]
    roles = [["--role", "perception"], ["--role", "llm"]] if graph == "split" else [[]]
    names = [f"{graph} {' '.join(r)}".strip() for r in roles]
    nodes = [Node(common + r, env, n, logs / (n.replace(" ", "_").replace("-", "") + ".log") if logs else None)
             for r, n in zip(roles, names)]
    rec = Record()
    context = rclpy.Context()
    rclpy.init(context=context)
    client = rclpy.create_node("bench_dds", context=context)
    client.create_subscription(CompressedImage, FRONT, lambda d: rec.front.setdefault(cdr_header_stamp(d),
                                                                                       time.monotonic()),
                               sensor_qos(), raw=True)
    client.create_subscription(OccupancyGrid, T.OUT_BEV, lambda g: rec.grids.setdefault(
        g.header.stamp.sec * 10**9 + g.header.stamp.nanosec, time.monotonic()), reliable_qos())

    def on_answer(m: Any) -> None:
        reply = json.loads(m.data)
        if "refused" in reply:
            rec.refused.append(reply["refused"])
            rec.asked.pop(len(rec.answered))  # not answered: no latency
        else:
            rec.answered.append(time.monotonic())

    client.create_subscription(String, T.ANSWER, on_answer, reliable_qos())
    def on_plan(m: Any) -> None:
        plan = json.loads(m.data)
        rec.plans.append(f"{'+'.join(plan['modalities']) or 'none'} ({plan.get('reason', '')})")

    client.create_subscription(String, T.OUT_PLAN, on_plan, reliable_qos())  # matches latched publishers too

    def on_diagnostics(d: Any) -> None:
        for status in d.status:
            if status.name == "mpnp_edge/processing_time":
                rec.frame_ms += [float(v.value) for v in status.values if v.key == "total_ms"]

    client.create_subscription(DiagnosticArray, T.DIAGNOSTICS, on_diagnostics, reliable_qos())
    question = client.create_publisher(String, T.QUESTION, reliable_qos())
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(client)
    try:
        for n in nodes:
            n.wait_ready()
        topics = [t for t in open_bag(bag).topics if not t.startswith("/ground_truth") and not t.endswith("camera_info")]
        replay = subprocess.Popen([sys.executable, "-m", "edge.cli", "replay", str(bag), "--rate", str(rate),
                                   "--wait-for-subscribers", "120", "--topics", *topics], cwd=ROOT, env=env,
                                  stderr=subprocess.DEVNULL)
        next_ask = None
        while replay.poll() is None:
            executor.spin_once(timeout_sec=0.01)
            now = time.monotonic()
            if rec.front and next_ask is None:
                next_ask = now + ask_every
            if next_ask is not None and now >= next_ask:
                rec.asked.append(time.monotonic())
                question.publish(String(data=QUESTION))
                next_ask = now + ask_every
        settle, end = time.monotonic() + 2.0, time.monotonic() + 30.0  # last grids; answers still being made
        while time.monotonic() < settle or (len(rec.answered) < len(rec.asked) and time.monotonic() < end):
            executor.spin_once(timeout_sec=0.05)
    finally:
        for n in nodes:
            n.stop()
        executor.shutdown()
        client.destroy_node()
        rclpy.shutdown(context=context)
    return rec


# ---------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drive", type=Path, help="a drive (bag directory) [a generated parking-day drive, seed 0]")
    ap.add_argument("--drive-seconds", type=float, default=10.0, help="length of the generated drive [10]")
    ap.add_argument("--policy", default="all", choices=("all", "camera", "adaptive"))
    ap.add_argument("--rate", type=float, default=1.0, help="playback rate, x real time [1: 10 Hz frames]")
    ap.add_argument("--ask-every", type=float, default=2.0, help="seconds between questions [2]")
    ap.add_argument("--warmup-s", type=float, default=1.0, help="drive seconds left out at the start [1]")
    ap.add_argument("--graphs", nargs="+", default=["in-process", "composite", "split"])
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--logs", type=Path, help="write each node's stderr into this directory")
    args = ap.parse_args()
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_dds_"))
    bag = args.drive
    if bag is None:
        from edge.drives.generate import generate_drive

        bag = generate_drive(tmp / "drive", seed=0, duration=args.drive_seconds, scenario="parking-day", progress=False).path
    params = tmp / "bench.param.yaml"  # questions may come every ask-every s: the gate must not refuse them
    params.write_text(f"/**:\n  ros__parameters:\n    questions_every_s: {args.ask_every / 2:g}\n")
    drive_frames = open_bag(bag).topics[FRONT].count  # the frame clock's ticks: one per front image
    out: dict[str, Any] = {"drive": str(bag), "drive_frames": drive_frames, "policy": args.policy, "rate": args.rate, "ask_every_s": args.ask_every,
                           "graphs": {}}
    for graph in args.graphs:
        print(f"bench_dds: {graph} ...", file=sys.stderr, flush=True)
        rec = run_in_process(bag, args.policy, args.ask_every, args.rate) if graph == "in-process" else \
            run_over_dds(bag, graph, args.policy, args.ask_every, params, args.rate, args.logs)
        occ, unmatched = rec.occupancy_ms(args.warmup_s)
        ans = rec.answer_ms()
        out["graphs"][graph] = {"grids": len(rec.grids), "frames_processed": len(rec.frame_ms),
                                "occupancy_rate": len(rec.grids) / drive_frames,  # the target: >= 0.95 while
                                "plans": rec.plans,  # the LLM answers (issue 14)
                                "matched": len(occ), "unmatched_stamps": unmatched,
                                "occupancy_p50_ms": pct(occ, 50), "occupancy_p95_ms": pct(occ, 95),
                                "answers": len(ans), "refused": rec.refused,
                                "answer_p50_ms": pct(ans, 50), "answer_p95_ms": pct(ans, 95)}
        print(f"bench_dds: {graph} plans: {' -> '.join(rec.plans)}", file=sys.stderr, flush=True)
        if rec.frame_ms:
            out["graphs"][graph]["frame_p50_ms"] = pct(rec.frame_ms[10:], 50)  # after calibration's first frames
            print(f"bench_dds: {graph} frame time p50 {pct(rec.frame_ms[10:], 50):.0f} ms, frame period "
                  f"{100 / args.rate:.0f} ms", file=sys.stderr, flush=True)
    base = out["graphs"].get("in-process")
    print(f"| graph | frames processed / drive frames | grids (matched) = share of drive frames | occupancy p50 / p95 "
          f"ms | vs in-process p50 | answers | answer p50 / p95 ms |")
    print("|---|---|---|---|---|---|---|")
    for graph, g in out["graphs"].items():
        vs = ""
        if base and graph != "in-process":
            g["p50_minus_in_process_ms"] = g["occupancy_p50_ms"] - base["occupancy_p50_ms"]
            g["p50_ratio_to_in_process"] = g["occupancy_p50_ms"] / base["occupancy_p50_ms"]
            g["p95_ratio_to_in_process"] = g["occupancy_p95_ms"] / base["occupancy_p95_ms"]
            target = TARGETS_MS.get(graph)
            g["target_met"] = bool(g["p50_minus_in_process_ms"] <= target) if target else None
            vs = (f"{g['p50_minus_in_process_ms']:+.1f} ms (x{g['p50_ratio_to_in_process']:.2f}); target "
                  f"+{target:g} ms {'met' if g['target_met'] else 'MISSED'}")
        refused = f" ({len(g['refused'])} refused)" if g["refused"] else ""
        print(f"| {graph} | {g['frames_processed']} / {drive_frames} | {g['grids']} ({g['matched']}) = "
              f"{g['occupancy_rate']:.0%} | {g['occupancy_p50_ms']:.1f} / {g['occupancy_p95_ms']:.1f} "
              f"| {vs} | {g['answers']}{refused} | {g['answer_p50_ms']:.0f} / {g['answer_p95_ms']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
