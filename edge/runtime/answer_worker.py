"""Answers off the frame path: the LLM generates in a thread of its own, so BEV frames keep their rate.

Why: generating inside the frame that carried the question stretched that frame to the LLM's time (the demo's
frame p99 was 198 ms against a p50 of 40 ms). A question is bound, at the frame it was asked at, to that frame's
plan (its aligner set) and a copy of that frame's tokens; the worker attaches exactly those and answers. The answer
carries the stamp of the data it used (`data_stamp_ns`) and its own latency, from the question being asked to
the answer being ready, judged against the answering budget. Only this thread touches the LLM.

The thread also runs at a lower OS priority (`nice`, default 10). Why: generating off the frame path was not enough
on a 2-core machine. An LLM that always had a question waiting took a core for the whole drive, and frames on 2
encoder threads then waited at every parallel region for the thread it had preempted: in `edge eval scheduler --llm`
2-thread stages measured 268-385 ms, and the scheduler fell back to audio alone. Perception has a frame rate to keep
and the LLM a 1 s answer budget, so the core goes to the frames first and the LLM takes what they leave
(benchmarks/bench_answer_priority.py measures both: frame p95 6.1x quiet at nice 0, 0.9x at 10, answers as many).
Linux gives each thread its own nice value, and raising it needs no privilege. Where that fails (another OS, a
sandbox), the worker still runs, at the process's priority, and says so once.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass
class _Job:
    questions: list[dict[str, Any]]
    plan: Any
    tokens: dict[str, torch.Tensor]
    stamp_ns: int


class AnswerWorker:
    """One thread answering questions in the order they were asked."""

    def __init__(self, answerer: Any, budget_ms: float, threads: int = 1, nice: int = 10) -> None:
        if not 0 <= nice <= 19:
            raise ValueError(f"answer_nice must be in 0..19 (0: the frames' priority), got {nice!r}")
        self.answerer, self.budget_ms, self.threads, self.nice = answerer, budget_ms, threads, nice
        self.nice_applied: bool | None = None  # set by the thread once it has tried
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._done: deque[dict[str, Any]] = deque()
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._run, name="edge-answers", daemon=True)
        self._thread.start()

    def submit(self, questions: list[dict[str, Any]], plan: Any, tokens: dict[str, torch.Tensor],
               stamp_ns: int) -> None:
        """Answer `questions` on this frame's plan and tokens (copied: the frame path goes on)."""
        with self._lock:
            self._pending += len(questions)
        self._jobs.put(_Job(questions, plan, {m: t.detach().clone() for m, t in tokens.items()}, stamp_ns))

    def collect(self) -> list[dict[str, Any]]:
        """Answers finished since the last call."""
        out = []
        while self._done:
            out.append(self._done.popleft())
        return out

    @property
    def pending(self) -> int:
        return self._pending

    def finish(self, timeout_s: float = 600.0) -> list[dict[str, Any]]:
        """Wait until every submitted question is answered (or `timeout_s`); the answers not yet collected."""
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0, timeout=timeout_s)
        return self.collect()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        # before any parallel region: OpenMP workers this thread starts inherit its nice value
        self.nice_applied = lower_thread_priority(self.nice)
        torch.set_num_threads(self.threads)  # per OS thread: the frame path keeps its own count
        while (job := self._jobs.get()) is not None:
            for q in job.questions:
                self._done.append(self._answer(job, q))
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _answer(self, job: _Job, q: dict[str, Any]) -> dict[str, Any]:
        meta = {k: v for k, v in q.items() if not k.startswith("_")}
        t = time.perf_counter()
        try:
            self.answerer.apply(job.plan, job.tokens)
            text, error = self.answerer.answer(q["question"]), None
        except Exception as exc:  # noqa: BLE001 - one failed answer must not stop the runtime
            log.error("answering %r failed: %s: %s", q["question"], exc.__class__.__name__, exc)
            text, error = "", f"{exc.__class__.__name__}: {exc}"
        done = time.perf_counter()
        latency = (done - q.get("_asked", t)) * 1e3
        out = {**meta, "response": text, "latency_ms": latency, "generate_ms": (done - t) * 1e3,
               "within_budget": latency <= self.budget_ms, "data_stamp_ns": job.stamp_ns,
               "modalities": sorted(self.answerer.attached),
               "blind_prior": self.answerer.prior.get(str(q.get("kind")), "")}
        if error:
            out["error"] = error
        return out


def lower_thread_priority(nice: int) -> bool:
    """Raise the calling OS thread's nice value by `nice` (Linux: per thread). Returns whether it took effect."""
    if nice == 0:
        return True
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        return True
    except (AttributeError, OSError) as exc:  # no setpriority (Windows) or not allowed: run at the frames' priority
        log.warning("answers run at the frames' priority (could not lower the LLM thread's: %s)", exc)
        return False
