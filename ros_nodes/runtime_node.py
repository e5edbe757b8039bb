"""`edge node`: the runtime as a managed (lifecycle) ROS 2 node, a thin adapter over edge.runtime.Runtime.

Lifecycle (rclpy.lifecycle, driven with the standard `~/change_state` service or `ros2 lifecycle set`):
  configure   validate the parameters (ros_nodes/parameters.py), load the rig, perception models, engines, LLM
              and aligners; create the publishers
  activate    subscribe to the sensors and questions, start the worker thread: frames flow
  deactivate  unsubscribe and stop the worker; everything loaded stays loaded (activate again loads nothing)
  cleanup / shutdown  release the models and publishers
A transition that fails on bad input (a parameter, a missing checkpoint) returns FAILURE with the reason logged;
an unexpected exception returns ERROR, logged with its traceback; the process keeps running either way. With the
parameter `autostart` (default true) the node configures and activates itself at start, as `edge node` always did.

Topics (relative, so `--ros-args -r FROM:=TO` and `__ns` apply; shown in the root namespace):
  in   fisheye/<cam>/image_raw[/compressed], camera/front/image_raw[/compressed] (raw Image or CompressedImage, per
       `camera_transport`), ultrasonic/<sensor>, audio/raw (the built-ins'; any installed modality plugin's topics
       too: ros_nodes.node_io.inputs), odom: best effort, keep last 5 (sensor QoS)
       mpnp/question  std_msgs/String, plain text (reliable)
  out  perception/bev_occupancy  nav_msgs/OccupancyGrid (base_link, stamp = the header stamp of the reference
       camera frame it was computed from); mpnp/plan, mpnp/answer  std_msgs/String JSON (reliable);
       /diagnostics  stream health and per-stage processing times
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import os
import importlib
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import yaml

from edge.errors import ConfigError
from edge.names import BACKENDS, POLICIES
from ros_nodes import node_io as io
from ros_nodes import split_io
from ros_nodes.parameters import NODE_NAME, PARAM_FILE

READY = "edge node: subscribed"  # printed once a node is active (ros_nodes/launch_commands.RUNTIME_READY)
ROLES = ("composite", "perception", "llm")  # the whole runtime in one node, or the split graph's two nodes
PERCEPTION_NODE = "mpnp_edge_perception"


def make_node(lifecycle_base: type, role: str = "composite") -> type:
    """The node class of a role: the LLM node (ros_nodes/llm_node.py) or this module's runtime node."""
    if role == "llm":
        from ros_nodes.llm_node import make_llm_node

        return make_llm_node(lifecycle_base)
    return make_runtime_node(lifecycle_base, role == "perception")


def make_runtime_node(lifecycle_base: type, perception_only: bool = False) -> type:
    """The node class on rclpy's LifecycleNode (imported late: `edge` without ROS must not import rclpy).

    `perception_only`: the split graph's perception node, /mpnp_edge_perception: no LLM, no questions; it
    publishes each frame's modality tokens (ros_nodes/split_io.py) for the LLM node, and its plans latched
    (transient local) so that an LLM node started later learns the camera pruning in force."""
    from rclpy.lifecycle import TransitionCallbackReturn as R

    from ros_nodes.lifecycle import managed_base

    class RuntimeNode(managed_base(lifecycle_base)):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(PERCEPTION_NODE if perception_only else NODE_NAME, **kwargs)
            self.runtime: Any = None
            self.rig: Any = None
            self.pipeline: io.Pipeline | None = None
            self.gate: io.QuestionGate | None = None
            self.transports: io.TransportChoice | None = None
            self.tally = io.Tally()
            self._pending: dict[str, Any] = {}
            self._lock = threading.Lock()

        # ------------------------------------------------------------ transitions (ros_nodes/lifecycle.py)
        def _configure(self) -> Any:
            cfg = self.validated_parameters()
            from nav_msgs.msg import OccupancyGrid
            from std_msgs.msg import String
            from diagnostic_msgs.msg import DiagnosticArray
            from ros_nodes.qos import question_qos, reliable_qos

            runtime, rig = build_runtime(cfg, with_llm=not perception_only)
            if runtime.answerer is not None and not runtime.answerer.aligners:
                self.get_logger().warning(f"no aligners in {cfg.aligner_dir}: answers without modality context")
            self.cfg, self.runtime, self.rig = cfg, runtime, rig
            self._pubs = {"bev": self.create_lifecycle_publisher(OccupancyGrid, io.OUT_BEV, reliable_qos()),
                          "plan": self.create_lifecycle_publisher(String, io.OUT_PLAN, reliable_qos(
                              latched=perception_only)),
                          "diag": self.create_lifecycle_publisher(DiagnosticArray, io.DIAGNOSTICS, reliable_qos())}
            if perception_only:
                from sensor_msgs.msg import Image

                for m in runtime.modalities:  # what this stack built: an installed plugin off the rig has no topic
                    self._pubs[f"tokens/{m}"] = self.create_lifecycle_publisher(Image, split_io.token_topic(m),
                                                                                reliable_qos())
            else:
                self._pubs["answer"] = self.create_lifecycle_publisher(String, io.ANSWER, question_qos())
            self.state = "inactive"
            self.get_logger().info(f"configured: policy {cfg.policy}, backend {runtime.stack.backend}, "
                                   f"LLM {'on' if runtime.answerer else 'off'}")
            return R.SUCCESS

        def _activate(self, state: Any) -> Any:
            from std_msgs.msg import String
            from ros_nodes.qos import question_qos, reliable_qos, sensor_qos

            self._apply_pending()
            self.runtime.queue.clear()  # nothing from before a deactivate is processed now
            self.transports = io.TransportChoice(self._discover_transports())
            chosen = self.transports.chosen
            forms = {b: (f,) if f else ("raw", "compressed") for b, f in chosen.items()}
            subscriptions = io.inputs(self.rig, forms)
            self.pipeline = io.Pipeline(self.runtime, io.stream_types(self.rig), self._publish, self._apply_pending,
                                        self.cfg.max_input_delay_s, self.cfg.max_input_lag_s)
            self.tally = io.Tally(losses=self.pipeline.losses)
            for sub in subscriptions:
                module, name = io.message_class(sub.msgtype)
                cls = getattr(importlib.import_module(module), name)
                self._subs.append(self.create_subscription(cls, sub.name, self._on_sensor(sub), sensor_qos(), raw=True))
            if not perception_only:  # the split graph's LLM node takes the questions
                self._subs.append(self.create_subscription(String, io.QUESTION, self._on_question, question_qos()))
            self.gate = io.QuestionGate(self.runtime.answerer is not None, self.cfg.questions_every_s)
            result = self._activate_publishers(state)  # activates the lifecycle publishers
            self.pipeline.start()
            self.state = "active"
            cams = ", ".join(f"{b.strip('/').removesuffix('/image_raw')} {f or 'first to arrive'}" for b, f in chosen.items())
            print(f"{READY} to {len(subscriptions)} sensor topics (cameras: {cams}); publishing "
                  f"{', '.join(self._outputs())}, "
                  f"{io.DIAGNOSTICS}", file=sys.stderr, flush=True)
            return result

        def _outputs(self) -> list[str]:
            """The resolved output topics (remaps and namespace applied), for the ready line."""
            if perception_only:
                return [self.resolve_topic_name(t) for t in (io.OUT_BEV, io.OUT_PLAN)] + \
                    [self.resolve_topic_name(split_io.TOKENS_PREFIX.rstrip("/")) + "/<modality>"]
            return [self.resolve_topic_name(t) for t in (io.OUT_BEV, io.OUT_PLAN, io.ANSWER)]

        def _discover_transports(self) -> dict[str, str | None]:
            """camera_transport raw/compressed: that form; auto: the form published now (raw preferred), else
            undecided (both subscribed, the first to deliver is kept)."""
            bases = io.camera_bases(self.rig)
            if self.cfg.camera_transport != "auto":
                return {b: self.cfg.camera_transport for b in bases}
            out: dict[str, str | None] = {}
            for b in bases:
                raw = self.count_publishers(self.resolve_topic_name(b.lstrip("/")))
                compressed = self.count_publishers(self.resolve_topic_name((b + "/compressed").lstrip("/")))
                out[b] = "raw" if raw else "compressed" if compressed else None
            return out

        def _stop_io(self) -> None:
            self._destroy_subscriptions()
            if self.pipeline is not None:
                self.pipeline.stop()  # the frame in hand finishes and is published
                self.pipeline = None
                self.tally.flush(final=True)

        def release(self) -> Any:
            """Stop the flow and drop the models and publishers (cleanup, shutdown, error, exit)."""
            self._stop_io()
            self._destroy_publishers()
            if self.runtime is not None and hasattr(self.runtime, "close"):
                self.runtime.close()
            self.runtime = self.cfg = None
            self.state = "unconfigured"
            return R.SUCCESS

        # ------------------------------------------------------------ parameters
        def _accept_parameters(self, changes: dict[str, Any], cfg: Any) -> None:
            if self.cfg is not None:  # applied between frames by _apply_pending
                with self._lock:
                    self._pending.update(changes)

        def _apply_pending(self) -> None:
            """Dynamic parameters take effect between frames (on the worker) or at activate."""
            with self._lock:
                changes, self._pending = self._pending, {}
            if not changes or self.runtime is None:
                return
            self.cfg = self.cfg.model_copy(update=changes)
            s, cfg = self.runtime.scheduler, self.cfg
            s.policy, s.dwell, s.quality_per_ms, s.answer_weight = (cfg.policy, cfg.dwell_frames, cfg.quality_per_ms,
                                                                    cfg.answer_weight)
            s.budget = dataclasses.replace(s.budget, latency_ms=cfg.budget_ms, memory_mb=cfg.budget_mb)
            if self.gate is not None:
                self.gate.every_s = cfg.questions_every_s
            if self.pipeline is not None:
                self.pipeline.lag.max_lag_s = cfg.max_input_lag_s
            self.get_logger().info("parameters applied: " + ", ".join(f"{k}={v}" for k, v in changes.items()))

        # ------------------------------------------------------------ data
        def _on_sensor(self, sub: io.Input) -> Any:
            def callback(data: bytes) -> None:
                pipeline, transports = self.pipeline, self.transports  # a deactivate may be under way
                if pipeline is not None and (sub.transport is None or transports.accept(sub.stream, sub.transport)):
                    pipeline.put(sub.stream, sub.msgtype, data)
            return callback

        def _on_question(self, msg: Any) -> None:
            runtime, gate = self.runtime, self.gate
            if runtime is None or gate is None:
                return
            refused = gate.refusal(msg.data)
            if refused is None:
                runtime.ask(msg.data)
                return
            from std_msgs.msg import String

            now = self.get_clock().now().nanoseconds
            self._pubs["answer"].publish(String(data=io.answer_json(now, msg.data, "", [], refused)))

        def _publish(self, result: Any) -> None:
            from std_msgs.msg import String

            grid = io.grid_msg(result, self.runtime.stack.cfg.bev_grid)
            if grid is not None:
                self._pubs["bev"].publish(grid)
            if perception_only:  # every frame's tokens, stamped as its grid, for the LLM node
                stamp = io.stamp_msg(result.stamp_ns)
                for m, tokens in result.tokens.items():
                    self._pubs[f"tokens/{m}"].publish(split_io.token_msg(stamp, tokens))
            if result.decision.changed:
                self._pubs["plan"].publish(String(data=io.plan_json(result)))
            self.tally.add(result, grid is not None)
            for a in result.answers:
                self._pubs["answer"].publish(String(data=io.answer_json(
                    a.get("data_stamp_ns", result.stamp_ns), a["question"], a["response"], a["modalities"],
                    error=a.get("error"))))
            self._pubs["diag"].publish(io.diagnostics_msg(result, self.pipeline, self.runtime.dropped,
                                                          self.transports.ignored))

    return RuntimeNode


def build_runtime(cfg: Any, with_llm: bool = True) -> tuple[Any, Any]:
    """(edge.runtime.Runtime, rig) as the node configures them from its parameters (a RuntimeConfig); the LLM
    only when `with_llm` and cfg.use_llm. benchmarks/bench_dds.py builds its in-process baseline with this too."""
    from edge.runtime.runtime import Runtime
    from edge.runtime.scheduler import Budget
    from edge.sensors.rig import load_rig

    rig = load_rig(cfg.rig)
    answerer = None
    if cfg.use_llm and with_llm:
        from edge.runtime.answerer import make_answerer

        answerer = make_answerer(cfg.aligner_dir, cfg.llm, cfg.max_new_tokens)
    budget = Budget(cfg.budget_ms, cfg.budget_mb, cfg.budget_percentile, cfg.answer_budget_ms)
    runtime = Runtime(cfg.perception_dir, cfg.policy, budget, answerer, dwell=cfg.dwell_frames,
                      quality_per_ms=cfg.quality_per_ms, rig=rig, backend=cfg.backend,
                      engine_cache=cfg.engine_cache, max_estimate_age_s=cfg.max_estimate_age_s,
                      max_changes_per_min=cfg.max_plan_changes_per_min, adapt_threads=cfg.adapt_threads,
                      answer_nice=cfg.answer_nice)
    runtime.scheduler.answer_weight = cfg.answer_weight
    return runtime, rig


# ---------------------------------------------------------------- command line
CLI_PARAMETERS = {"rig": "rig", "policy": "policy", "budget_ms": "budget_ms", "aligners": "aligner_dir",
                  "backend": "backend"}


def ros_arguments(args: argparse.Namespace) -> list[str]:
    """The node's --ros-args block: the parameters file, then the CLI options given (as -p), then the user's
    own --ros-args (last wins, so the command line overrides the file)."""
    out = ["--ros-args"]
    if args.params_file:
        out += ["--params-file", ros_params_file(args.params_file)]
    for dest, key in CLI_PARAMETERS.items():
        value = getattr(args, dest)
        if value is not None:
            out += ["-p", f"{key}:={value}"]
    if args.no_llm:
        out += ["-p", "use_llm:=false"]
    if args.managed:
        out += ["-p", "autostart:=false"]
    return out + list(args.ros_args)


def ros_params_file(path: str) -> str:
    """A ROS parameters file as given; `edge run`'s flat YAML (the same keys) wrapped into one for all nodes."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(path, "<file>", f"cannot be read: {exc.strerror}") from None
    except yaml.YAMLError:
        raise ConfigError(path, "<syntax>", "invalid YAML") from None
    if isinstance(data, dict) and any(isinstance(v, dict) and "ros__parameters" in v for v in data.values()):
        return path
    if data is not None and not isinstance(data, dict):
        raise ConfigError(path, "<root>", "expected a mapping at the top level")
    wrapped = tempfile.NamedTemporaryFile("w", suffix=".param.yaml", prefix="edge_node_", delete=False)
    with wrapped:
        yaml.safe_dump({"/**": {"ros__parameters": data or {}}}, wrapped)
    atexit.register(os.unlink, wrapped.name)
    return wrapped.name


def make_executor() -> Any:
    """rclpy's EventsExecutor (C++; rclpy.experimental since Jazzy's 7.1 releases) where it exists, else the
    MultiThreadedExecutor.

    Why: the Python executors rebuild their wait set from every subscription, QoS event, service and timer on each
    wake-up, holding the GIL while they do. At the default rig's ~480 messages a second, the main thread spent a whole
    core on it (`top -H`: 100 %, half of it in futex calls), and the frame worker, which needs the GIL between torch
    ops, got what was left. On the 2-core machine, `python benchmarks/soak.py node --minutes 1` (7 Dec 2026, same code
    otherwise): with the MultiThreadedExecutor 130 frames of 700, 75 grids, processing p50 / p95 90 / 962 ms, 4 of
    13 questions answered, 26 s to the first frame; with the EventsExecutor 696 frames, 696 grids, 55 / 71 ms, 13 of
    13, 2.3 s. Every callback of this node only queues or answers at once, so one executor thread is enough."""
    try:
        from rclpy.experimental import EventsExecutor
    except ImportError:  # an rclpy without it (Humble, early Jazzy builds)
        from rclpy.executors import MultiThreadedExecutor

        return MultiThreadedExecutor(num_threads=2)
    return EventsExecutor()


def run_node(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.impl.implementation_singleton import rclpy_implementation
    from rclpy.lifecycle import LifecycleNode
    from rclpy.lifecycle import TransitionCallbackReturn as R

    rclpy.init(args=["edge node", *ros_arguments(args)])
    node = make_node(LifecycleNode, args.role)()
    executor = make_executor()
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value:
            if node.trigger_configure() != R.SUCCESS or node.trigger_activate() != R.SUCCESS:
                print(f"edge node: autostart stopped in state {node.state} (reason logged above); the node stays "
                      "up: fix the parameter and drive it with its lifecycle services", file=sys.stderr, flush=True)
        else:
            print(f"edge node: unconfigured, waiting for lifecycle transitions on "
                  f"{node.get_fully_qualified_name()}/change_state", file=sys.stderr, flush=True)
        # Not executor.spin(): under load the suite saw a node not exit within 60 s of SIGINT, with nothing printed
        # (cause not pinned down); a wait that misses the shutdown's wake-up would do that, and waking every 0.5 s
        # to check the context costs nothing.
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.5)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except rclpy_implementation.RCLError:
        if rclpy.ok():  # a real failure while running
            raise
        # SIGINT shut the context down between two waits: rclpy raises RCLError ("failed to initialize wait set:
        # the given context is not valid") instead of ExternalShutdownException; the same orderly stop follows
    finally:
        # Order matters: the worker finishes the frame in hand before the publishers it uses are destroyed, and
        # the executor's threads are joined before the context goes away (else the process aborts on exit).
        node.release()
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    print("edge node: stopped", file=sys.stderr, flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("node", help="run the runtime as a managed ROS 2 node on live or replayed topics",
                       description="Options below set the node's ROS parameters (docs/ros.md lists them all); "
                                   "the command line overrides --params-file.")
    p.add_argument("--params-file", default=None, metavar="YAML",
                   help=f"parameters: a ROS 2 parameters file or edge run's YAML config [{PARAM_FILE.name}'s defaults]")
    p.add_argument("--rig", default=None, help="rig YAML (parameter rig) [calibration/default_rig.yaml]")
    p.add_argument("--policy", default=None, choices=POLICIES, help="parameter policy [adaptive]")
    p.add_argument("--budget-ms", type=float, default=None, help="parameter budget_ms [100]")
    p.add_argument("--aligners", default=None, help="aligner checkpoints (parameter aligner_dir) [models/aligners]")
    p.add_argument("--no-llm", action="store_true", help="perception and scheduling only (use_llm:=false)")
    p.add_argument("--backend", default=None, choices=BACKENDS,
                   help="encoders' network parts on this backend (parameter backend) [eager]")
    p.add_argument("--role", default="composite", choices=ROLES,
                   help="composite: the whole runtime in one node; perception / llm: the split graph's perception "
                        "node (sensors -> occupancy, plan, modality tokens) or LLM node (questions -> answers) "
                        "[composite]")
    p.add_argument("--managed", action="store_true",
                   help="start unconfigured and wait for lifecycle transitions (autostart:=false)")
    p.add_argument("--ros-args", nargs=argparse.REMAINDER, default=[], dest="ros_args", metavar="ARG",
                   help="ROS 2 arguments for rclpy, last on the line, as any ROS 2 executable takes them "
                        "(e.g. -p use_sim_time:=true, -r audio/raw:=/mic/raw, --params-file F)")
    p.set_defaults(func=run_node)
