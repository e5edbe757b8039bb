"""`edge node --role llm`: the split graph's LLM node, /mpnp_edge_llm, a thin lifecycle adapter over
edge.runtime.answerer (the LLM and its aligner sets) and edge.runtime.answer_worker (generation on a thread of its
own, never on the executor: the callbacks only check, queue and publish).

  in   perception/tokens/<modality>  sensor_msgs/Image 32FC1 (ros_nodes/split_io.py), from the perception node
       mpnp/plan                     std_msgs/String JSON, transient local: the camera pruning in force
       mpnp/question                 std_msgs/String
  out  mpnp/answer                   std_msgs/String JSON, one per question (docs/ros.md): answered with the tokens
       of the newest complete frame (its stamp is the answer's `stamp_ns`), or `refused` with the reason: no LLM,
       no tokens received yet, no aligner set for the modalities received, MAX_QUEUED questions already waiting,
       or sooner than `questions_every_s` after the last one accepted.
       diagnostics                   diagnostic_msgs/DiagnosticArray, with each answer and every second:
       `mpnp_edge/llm/tokens` (age of each modality's latest tokens, counts) and, with an answer,
       `mpnp_edge/llm/processing_time` (total_ms, generate_ms, wait_ms) (split_io.llm_diagnostics_msg).

Parameters: the same declared set as the runtime node (one parameters file serves the graph); this node reads
use_llm, llm, aligner_dir, max_new_tokens, answer_budget_ms, answer_nice and questions_every_s (the last at runtime too).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from ros_nodes import node_io as io
from ros_nodes import split_io

LLM_NODE = "mpnp_edge_llm"
MAX_QUEUED = 4  # questions accepted and not yet answered; more are refused at once (the LLM's backlog bound)
READY = "edge node: subscribed"  # ros_nodes/runtime_node.READY: `edge launch` waits for it


def make_llm_node(lifecycle_base: type) -> type:
    from rclpy.lifecycle import TransitionCallbackReturn as R

    from ros_nodes.lifecycle import managed_base

    class LLMNode(managed_base(lifecycle_base)):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(LLM_NODE, **kwargs)
            self.answerer: Any = None
            self.worker: Any = None
            self.gate: io.QuestionGate | None = None
            self.frames = split_io.TokenFrames()
            self.camera_keep = 1.0
            self.counts = {"answered": 0, "refused": 0}
            self._timer: Any = None
            self._health_timer: Any = None
            self._lock = threading.Lock()  # the answer publisher: timer and question callbacks

        # ------------------------------------------------------------ transitions (ros_nodes/lifecycle.py)
        def _configure(self) -> Any:
            cfg = self.validated_parameters()
            from std_msgs.msg import String

            from ros_nodes.qos import question_qos, reliable_qos

            if cfg.use_llm:
                from edge.runtime.answer_worker import AnswerWorker
                from edge.runtime.answerer import make_answerer

                self.answerer = make_answerer(cfg.aligner_dir, cfg.llm, cfg.max_new_tokens)
                self.worker = AnswerWorker(self.answerer, cfg.answer_budget_ms, nice=cfg.answer_nice)
            self.cfg = cfg
            from diagnostic_msgs.msg import DiagnosticArray

            self._pubs = {"answer": self.create_lifecycle_publisher(String, io.ANSWER, question_qos()),
                          "diag": self.create_lifecycle_publisher(DiagnosticArray, io.DIAGNOSTICS, reliable_qos())}
            self.state = "inactive"
            sets = ", ".join(s.name for s in self.answerer.aligner_sets()) if self.answerer else "none"
            self.get_logger().info(f"configured: LLM {'on' if self.answerer else 'off'}, aligner sets {sets}")
            return R.SUCCESS

        def _activate(self, state: Any) -> Any:
            from edge.runtime.scheduler import MODALITIES
            from sensor_msgs.msg import Image
            from std_msgs.msg import String

            from ros_nodes.qos import question_qos, reliable_qos

            self.frames = split_io.TokenFrames()
            for m in MODALITIES:
                self._subs.append(self.create_subscription(Image, split_io.token_topic(m), self._on_tokens(m),
                                                           reliable_qos()))
            self._subs.append(self.create_subscription(String, io.OUT_PLAN, self._on_plan, reliable_qos(latched=True)))
            self._subs.append(self.create_subscription(String, io.QUESTION, self._on_question, question_qos()))
            self.gate = io.QuestionGate(self.answerer is not None, self.cfg.questions_every_s)
            self._timer = self.create_timer(0.05, self._publish_answers)
            self._health_timer = self.create_timer(1.0, self._publish_health)
            result = self._activate_publishers(state)
            self.state = "active"
            print(f"{READY} to {len(MODALITIES)} token topics "
                  f"({self.resolve_topic_name(split_io.TOKENS_PREFIX.rstrip('/'))}/<modality>) and "
                  f"{self.resolve_topic_name(io.QUESTION)}; publishing {self.resolve_topic_name(io.ANSWER)}",
                  file=sys.stderr, flush=True)
            return result

        def _stop_io(self) -> None:
            self._destroy_subscriptions()
            for timer in (self._timer, self._health_timer):
                if timer is not None:
                    self.destroy_timer(timer)
            self._timer = self._health_timer = None

        def release(self) -> Any:
            self._stop_io()
            if self.worker is not None:
                self.worker.close()
            self._destroy_publishers()
            self.worker, self.answerer, self.cfg = None, None, None
            if self.state != "unconfigured":
                print(f"edge node: llm: {self.counts['answered']} answered, {self.counts['refused']} refused, "
                      f"{self.frames.received} token messages received", file=sys.stderr, flush=True)
            self.state = "unconfigured"
            return R.SUCCESS

        # ------------------------------------------------------------ parameters
        def _accept_parameters(self, changes: dict[str, Any], cfg: Any) -> None:
            if self.gate is not None:
                self.gate.every_s = cfg.questions_every_s

        # ------------------------------------------------------------ data
        def _on_tokens(self, modality: str) -> Any:
            def callback(msg: Any) -> None:
                try:
                    tokens = split_io.tokens_from_msg(msg)
                except ValueError as exc:
                    self.get_logger().warning(f"{split_io.token_topic(modality)}: {exc}; message ignored",
                                              throttle_duration_sec=10.0)
                    return
                self.frames.add(modality, msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec, tokens)
            return callback

        def _on_plan(self, msg: Any) -> None:
            try:
                self.camera_keep = float(json.loads(msg.data).get("camera_keep", 1.0))
            except (ValueError, TypeError, AttributeError):
                self.get_logger().warning(f"{io.OUT_PLAN}: not a plan: {msg.data[:80]!r}", throttle_duration_sec=10.0)

        def _on_question(self, msg: Any) -> None:
            """Checks only (microseconds): the LLM runs on the answer worker's thread."""
            question, gate = msg.data, self.gate
            if gate is None:
                return
            from edge.runtime.scheduler import Plan

            refused = None if (self.answerer is not None and question.strip()) else gate.refusal(question)
            frame = self.frames.latest()
            chosen = None
            if refused is None and frame is None:
                refused = (f"no modality tokens received yet on "
                           f"{self.resolve_topic_name(split_io.TOKENS_PREFIX.rstrip('/'))}/<modality>: "
                           "is the perception node running?")
            if refused is None:
                chosen = split_io.choose_aligner_set(self.answerer.aligner_sets(), frame[1], self.camera_keep)
                if chosen is None:
                    loaded = "; ".join(f"{s.name}: {'+'.join(s.modalities)}" for s in self.answerer.aligner_sets())
                    refused = (f"no aligner set for the modalities received ({', '.join(sorted(frame[1])) or 'none'}"
                               f", camera keep {self.camera_keep:g}); loaded sets: {loaded or 'none'}")
            if refused is None and self.worker.pending >= MAX_QUEUED:
                refused = f"queue full: {self.worker.pending} questions waiting (at most {MAX_QUEUED})"
            if refused is None:
                refused = gate.refusal(question)
            if refused is not None:
                self._reply(io.answer_json(frame[0] if frame else self.get_clock().now().nanoseconds, question, "",
                                           [], refused))
                self.counts["refused"] += 1
                return
            stamp, tokens = frame
            plan = Plan(tuple(m for m in tokens if m in chosen.modalities), self.answerer.n_blocks,
                        self.camera_keep, aligners=chosen.name)
            self.worker.submit([{"question": question, "_asked": time.perf_counter()}], plan, tokens, stamp)

        def _publish_answers(self) -> None:
            if self.worker is None:
                return
            for a in self.worker.collect():
                self.counts["answered"] += 1
                self._reply(io.answer_json(a["data_stamp_ns"], a["question"], a["response"], a["modalities"],
                                           error=a.get("error")))
                self._publish_health(a)

        def _publish_health(self, answer: dict[str, Any] | None = None) -> None:
            from edge.runtime.scheduler import MODALITIES

            pub = self._pubs.get("diag")
            if pub is not None:
                pub.publish(split_io.llm_diagnostics_msg(
                    self.get_clock().now().to_msg(), split_io.token_ages(self.frames, MODALITIES), dict(self.counts),
                    self.worker.pending if self.worker is not None else 0, answer))

        def _reply(self, text: str) -> None:
            from std_msgs.msg import String

            with self._lock:
                pub = self._pubs.get("answer")
                if pub is not None:
                    pub.publish(String(data=text))

    return LLMNode
