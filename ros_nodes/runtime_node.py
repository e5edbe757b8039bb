"""`edge node`: the runtime as a ROS 2 node (a thin adapter over edge.runtime.Runtime).

Subscribes to the sensor topics of DESIGN.md (raw CDR, sensor QoS), assembles time-aligned samples with the same
synchroniser as bag replay, runs the runtime in a worker thread and publishes:
  /perception/bev_occupancy  nav_msgs/OccupancyGrid (base_link, stamp = the sample's stamp)
  /mpnp/plan                 std_msgs/String, JSON {stamp_ns, modalities, n_blocks, camera_keep, backend, aligners, reason}
  /mpnp/answer               std_msgs/String, JSON {stamp_ns, question, answer, modalities}
  /diagnostics               diagnostic_msgs/DiagnosticArray (stream health, queue drops)
Questions arrive on /mpnp/question (std_msgs/String, plain text).
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
from pathlib import Path
from typing import Any

from edge.drives import topics as T
from edge.drives.bag import BagMessage
from edge.drives.sync import SampleAssembler, SyncConfig, build_samples, cdr_header_stamp
from edge.sensors.rig import load_rig

DEFAULT_ALIGNERS = Path(__file__).resolve().parents[1] / "models" / "aligners"  # not cwd-relative: ros2 launch
SENSOR_TYPES = {T.COMPRESSED_IMAGE: ("sensor_msgs.msg", "CompressedImage"), T.IMAGE: ("sensor_msgs.msg", "Image"),
                T.RANGE: ("sensor_msgs.msg", "Range"), T.ODOMETRY: ("nav_msgs.msg", "Odometry")}


def sensor_topics(rig: Any) -> dict[str, str]:
    """Topic -> type the node subscribes to (compressed camera streams, as recorded and replayed)."""
    out = {T.fisheye_image_topic(c) + T.COMPRESSED_SUFFIX: T.COMPRESSED_IMAGE for c in rig.fisheye}
    if "front" in rig.cameras:
        out[T.FRONT_CAMERA_IMAGE + T.COMPRESSED_SUFFIX] = T.COMPRESSED_IMAGE
    out.update({T.ultrasonic_topic(s.name): T.RANGE for s in rig.ultrasonic})
    out[T.AUDIO] = T.IMAGE
    out[T.ODOM] = T.ODOMETRY
    return out


def run_node(args: argparse.Namespace) -> int:
    import importlib

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from nav_msgs.msg import OccupancyGrid
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
    from rclpy.node import Node
    from std_msgs.msg import String

    from edge.runtime.runtime import Runtime
    from edge.runtime.scheduler import Budget
    from ros_nodes.qos import reliable_qos, sensor_qos

    rig = load_rig(args.rig)
    answerer = None
    if not args.no_llm:
        from edge.runtime.answerer import make_answerer

        answerer = make_answerer(args.aligners, None, 8)
    runtime = Runtime(policy=args.policy, budget=Budget(latency_ms=args.budget_ms), answerer=answerer, rig=rig,
                      backend=args.backend)
    topics = sensor_topics(rig)
    assembler = SampleAssembler(topics, SyncConfig(image_reduce=runtime.stack.cfg.image_reduce, ground_truth=False),
                                source="ros")
    inbox: queue.Queue[BagMessage] = queue.Queue(maxsize=2000)

    rclpy.init(args=["edge node", "--ros-args", *args.ros_args] if args.ros_args else ["edge node"])
    node = Node("mpnp_edge_runtime")
    pub_bev = node.create_publisher(OccupancyGrid, T.OUT_BEV, reliable_qos())
    pub_plan = node.create_publisher(String, T.OUT_PLAN, reliable_qos())
    pub_answer = node.create_publisher(String, T.ANSWER, reliable_qos())
    pub_diag = node.create_publisher(DiagnosticArray, T.DIAGNOSTICS, reliable_qos())
    dropped_in = [0]

    def on_sensor(topic: str, msgtype: str) -> Any:
        def callback(data: bytes) -> None:
            try:
                # The header stamp orders the stream (replayed drives carry their recording time).
                stamp = cdr_header_stamp(data)
                if stamp is not None:
                    inbox.put_nowait(BagMessage(topic, msgtype, stamp, data))
            except queue.Full:  # the runtime is far behind: drop, never block the executor
                dropped_in[0] += 1
        return callback

    for topic, msgtype in topics.items():
        mod, name = SENSOR_TYPES[msgtype]
        node.create_subscription(getattr(importlib.import_module(mod), name), topic, on_sensor(topic, msgtype),
                                 sensor_qos(), raw=True)
    node.create_subscription(String, T.QUESTION, lambda m: runtime.ask(m.data), reliable_qos())

    def stamp_of(ns: int) -> Any:
        from builtin_interfaces.msg import Time
        return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)

    def publish(result: Any) -> None:
        grid = result.occupancy_grid()
        if grid is not None:
            g = runtime.stack.cfg.bev_grid
            msg = OccupancyGrid()
            msg.header.stamp, msg.header.frame_id = stamp_of(result.stamp_ns), "base_link"
            msg.info.resolution, msg.info.width, msg.info.height = float(g.resolution), g.nx, g.ny
            msg.info.origin.position.x, msg.info.origin.position.y = float(g.x_min), float(g.y_min)
            msg.info.origin.orientation.w = 1.0
            msg.data = grid.ravel().tolist()
            pub_bev.publish(msg)
        if result.decision.changed:
            plan = result.plan
            pub_plan.publish(String(data=json.dumps({
                "stamp_ns": result.stamp_ns, "modalities": list(plan.modalities), "n_blocks": plan.n_blocks,
                "camera_keep": plan.camera_keep, "backend": plan.backend, "aligners": plan.aligners,
                "reason": result.decision.reason})))
        for a in result.answers:
            pub_answer.publish(String(data=json.dumps({"stamp_ns": result.stamp_ns, "question": a["question"],
                                                       "answer": a["response"], "modalities": a["modalities"]})))
        diag = DiagnosticArray()
        diag.header.stamp = stamp_of(result.stamp_ns)
        for name, h in result.context.streams.items():
            status = DiagnosticStatus(name=f"mpnp_edge/{name}", hardware_id=name,
                                      level=DiagnosticStatus.OK if h.healthy else DiagnosticStatus.WARN,
                                      message="healthy" if h.healthy else "silent or dropping")
            status.values = [KeyValue(key="staleness_s", value=f"{h.staleness_s:.3f}"),
                             KeyValue(key="dropout_rate", value=f"{h.dropout_rate:.3f}"),
                             KeyValue(key="input_drops", value=str(dropped_in[0] + runtime.dropped))]
            diag.status.append(status)
        pub_diag.publish(diag)

    stop = threading.Event()

    def incoming() -> Any:
        """Sensor messages until shutdown; what is still queued then is not waited for."""
        while not stop.is_set():
            try:
                msg = inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            yield msg

    def work() -> None:
        for sample in build_samples(assembler.feed(incoming()), assembler, assembler.cfg, []):
            runtime.submit(sample)
            for result in runtime.drain():
                if stop.is_set():
                    return
                publish(result)

    worker = threading.Thread(target=work, name="edge-runtime", daemon=True)
    worker.start()
    print(f"edge node: subscribed to {len(topics)} sensor topics; publishing {T.OUT_BEV}, {T.OUT_PLAN}, "
          f"{T.ANSWER}, {T.DIAGNOSTICS}", file=sys.stderr, flush=True)
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Order matters: the worker finishes the frame in hand before the publishers it uses are destroyed, and
        # the executor's threads are joined before the context goes away (else the process aborts on exit).
        stop.set()
        worker.join(timeout=30)
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    print("edge node: stopped", file=sys.stderr, flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("node", help="run the runtime as a ROS 2 node on live or replayed topics")
    p.add_argument("--rig", default=None, help="rig YAML [calibration/default_rig.yaml]")
    p.add_argument("--policy", default="adaptive", choices=("adaptive", "camera", "all"))
    p.add_argument("--budget-ms", type=float, default=100.0)
    p.add_argument("--aligners", default=str(DEFAULT_ALIGNERS), help="aligner checkpoints [models/aligners]")
    p.add_argument("--no-llm", action="store_true", help="perception and scheduling only")
    p.add_argument("--backend", default="eager", choices=("eager", "onnxruntime", "tensorrt"),
                   help="encoders' network parts on this backend (engines built and cached at start) [eager]")
    p.add_argument("--ros-args", nargs=argparse.REMAINDER, default=[], dest="ros_args", metavar="ARG",
                   help="ROS 2 arguments for rclpy, last on the line, as any ROS 2 executable takes them "
                        "(e.g. -p use_sim_time:=true, -r /audio/raw:=/mic/raw)")
    p.set_defaults(func=run_node)
