"""The report of `edge run`: report.json (per frame: plan, answers, occupancy, timings, memory) and report.html.

Streamed so that nothing is lost: `start(DIR)` writes a report.json marked partial (reason "running") and opens
DIR/frames.jsonl, to which `add` appends each frame's record (one JSON object per line, flushed) as it is made;
`write` ends it with the summary, `partial` false, or `partial` true and the reason when the run was interrupted
or failed. A process killed outright (no `write`) leaves the stub report.json (and a report.html that says so) and
every finished frame's line; `read_report` merges the two, and `recover` (`edge report DIR`) writes the summary and
report.html from them.

The HTML is self-contained (inline SVG plots, BEV images as data URIs): a modality timeline against the lighting
the cameras saw, latency per stage, memory, and BEV occupancy beside ground truth at a few instants.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from edge.encoders.config import BEV_CLASSES, PerceptionConfig
from edge.errors import ReportError
from edge.modalities.interface import ModalityPlugin
from edge.modalities.registry import registry
from edge.perception.labels import IGNORE, bev_targets
from edge.perception.metrics import near_mask, obstacle_binary
from edge.runtime.runtime import FrameResult

CLASS_COLOURS = np.array([[200, 200, 200], [40, 40, 220], [220, 80, 30], [40, 180, 40], [70, 70, 70]], np.uint8)


def stage_order(plugins: Iterable[ModalityPlugin]) -> tuple[str, ...]:
    """Stages in frame order: the BEV modalities, their fusion, the other modalities, attaching tokens to the LLM."""
    plugins = tuple(plugins)
    return ("context+plan", *(p.name for p in plugins if p.bev), "fusion", *(p.name for p in plugins if not p.bev),
            "attach")


FRAMES_FILE = "frames.jsonl"  # beside report.json: one frame record per line, written as the run goes
RUNNING = "running: the process ended before writing its summary; frames.jsonl holds the frames it finished"
RECOVERED = ("recovered by `edge report` from frames.jsonl: the process ended without its summary (killed outright, "
             "out of memory, power lost); {n} frames; BEV snapshots, input degradation spans and answers that "
             "finished after the last frame were not recorded")


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def near_obstacle_iou(pred: np.ndarray, gt: np.ndarray, near: np.ndarray) -> float | None:
    """Obstacle-vs-free IoU within the near mask (ground-truth unknown cells excluded), as the perception card."""
    valid = near & (gt != IGNORE) & (gt != BEV_CLASSES.index("unknown"))
    if not valid.any():
        return None
    p, g = obstacle_binary(pred)[valid], obstacle_binary(gt)[valid]
    union = np.logical_or(p == 1, g == 1).sum()
    return float(np.logical_and(p == 1, g == 1).sum() / union) if union else None


def _score(answers: list[dict[str, Any]]) -> None:
    """Scored as `edge eval qa` scores (normalised exact match), beside the blind prior's answer."""
    for a in answers:
        if "answer" in a:
            from edge.llm.qa_text import exact_match  # only runs that answer need the LLM package

            a["correct"] = bool(exact_match(a["response"], str(a["answer"])))
            if a.get("blind_prior"):  # what always answering the template's majority answer would score
                a["prior_correct"] = bool(exact_match(a["blind_prior"], str(a["answer"])))


def _budget_summary(frames: list[dict[str, Any]], config: dict[str, Any], answers: list[dict[str, Any]]
                    ) -> dict[str, Any]:
    """The end-to-end budget (share of frames within it, overall and after the first 2 s), the cheapest plan when
    none fit, and the answers' own latency against the answering budget."""
    out: dict[str, Any] = {}
    budget = config.get("budget_ms")
    if budget and frames:
        within = [x["timings_ms"]["total"] <= budget for x in frames]
        settled = [w for w, x in zip(within, frames) if x["t"] >= 2.0]
        misses = [x["budget_miss"] for x in frames if x.get("budget_miss")]
        out["budget"] = {"latency_ms": budget, "percentile": config.get("budget_percentile", 95.0),
                         "share_within": float(np.mean(within)),
                         "share_within_after_2s": float(np.mean(settled)) if settled else float(np.mean(within)),
                         "frames_unmet": len(misses), "unmet": misses[-1] if misses else None}
    lat = [a["latency_ms"] for a in answers if "latency_ms" in a]
    if lat:
        out["answer_latency_ms"] = {"p50": percentile(lat, 50), "p95": percentile(lat, 95), "max": max(lat)}
        out["answers_within_budget"] = float(np.mean([bool(a.get("within_budget", True)) for a in answers]))
    return out


class ReportBuilder:
    """Accumulates frames (with the sample's ground truth where the drive has it) and writes the report."""

    def __init__(self, cfg: PerceptionConfig | None, footprint: tuple[float, float, float, float] | None,
                 meta: dict[str, Any], plugins: Iterable[ModalityPlugin] | None = None) -> None:
        """`cfg` and `footprint` place the near-field mask that frames are scored in; `recover` passes None (it
        adds no frame, only rewrites those recorded). `plugins`: the modalities whose declared extras (`record`)
        and ground truth (`truth`) frame records hold, in this order (None: the registry's)."""
        self.cfg, self.meta = cfg, meta
        self.plugins = tuple(registry() if plugins is None else plugins)
        # what the summary's duty, its stages and the timeline list: the modalities the run could plan (the stack's
        # encoders: edge run passes runtime.stack.plugins), not every installed plugin (a LiDAR on the default rig)
        self.modalities: tuple[str, ...] = tuple(p.name for p in self.plugins)
        self.stages: tuple[str, ...] = stage_order(self.plugins)
        self.near = near_mask(cfg, footprint) if cfg is not None and footprint is not None else None
        self.frames: list[dict[str, Any]] = []
        self.switches: list[dict[str, Any]] = []
        self.snapshots: list[tuple[float, np.ndarray, np.ndarray | None]] = []
        self._t0: int | None = None
        self.degradations: list[dict[str, Any]] = []  # bad input data, with spans (edge.drives.sync.Degradation)
        self.diagnostics: list[str] = []
        self.partial_reason: str | None = None  # why the report stops short of the drive's end (None: it does not)
        self._dir: Path | None = None  # where frames stream to, after start()
        self._stream: IO[str] | None = None

    def start(self, directory: str | Path) -> Path:
        """Begin streaming into `directory`: frames.jsonl truncated and opened, report.json written as a partial
        report with no frames (reason `RUNNING`) until `write` replaces it."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self._dir = out
        self._stream = (out / FRAMES_FILE).open("w", encoding="utf-8")
        doc = self._doc(RUNNING)
        _write_atomic(out / "report.json", json.dumps(doc, indent=1, default=_jsonable))
        _write_atomic(out / "report.html", self._html(doc))  # replaced at the end; says how to recover if not
        return out

    def add(self, r: FrameResult, ground_truth: Any = None) -> dict[str, Any]:
        if self.near is None:
            raise ValueError("ReportBuilder.add: built without a perception config (a recovered report)")
        self._t0 = r.stamp_ns if self._t0 is None else self._t0
        t = (r.stamp_ns - self._t0) / 1e9
        gt_classes = bev_targets(ground_truth.bev, self.cfg) if ground_truth is not None and ground_truth.bev else None
        frame: dict[str, Any] = {
            "t": round(t, 3), "stamp_ns": r.stamp_ns, "source_stamps": r.source_stamps,
            # camera_keep: the plan's keep ratio (Plan.keep), under the name report readers know
            "plan": {"modalities": list(r.plan.modalities), "n_blocks": r.plan.n_blocks,
                     "camera_keep": r.plan.keep, "backend": r.plan.backend, "aligners": r.plan.aligners,
                     "threads": r.plan.threads},
            "lighting": r.context.lighting, "glare_cameras": r.context.glare_cameras,
            "streams_healthy": {k: v.healthy for k, v in r.context.streams.items()},
            "audio_level_db": round(r.context.audio_level_db, 1), "ego_speed": round(r.context.ego_speed, 2),
            "timings_ms": {k: round(v, 2) for k, v in r.timings_ms.items()}, "rss_mb": round(r.rss_mb, 1),
            "bev_modalities": r.modalities_used, "answers": r.answers, "diagnostics": r.diagnostics,
        }
        if r.decision.predicted_ms is not None:
            frame["predicted_ms"] = round(r.decision.predicted_ms, 2)  # the plan's, at the budget percentile
        if r.decision.budget_miss:
            frame["budget_miss"] = r.decision.budget_miss  # no plan fit: the cheapest ran
        if r.probes_ms:
            frame["probes_ms"] = {k: round(v, 2) for k, v in r.probes_ms.items()}  # after the frame, not in it
        _score(r.answers)
        if r.bev_classes is not None:
            near = r.bev_classes[self.near]
            frame["occupancy_near5m"] = {name: int((near == i).sum()) for i, name in enumerate(BEV_CLASSES)}
            if gt_classes is not None:
                frame["obstacle_iou_near5m"] = near_obstacle_iou(r.bev_classes, gt_classes, self.near)
        for p in self.plugins:  # each modality's declared extras, when it ran (the audio event)
            extras = r.extras.get(p.name)
            if p.record and extras is not None:
                frame[p.record_name] = {k: extras[k] for k in p.record}
        if ground_truth is not None:
            frame["gt"] = {"lighting": (ground_truth.conditions or {}).get("lighting")}
            for p in self.plugins:  # each modality's declared ground truth (the audio events sounding)
                if p.truth is not None:
                    frame["gt"].update(p.truth(ground_truth))
        if r.decision.changed:
            self.switches.append({"t": round(t, 3), "stamp_ns": r.stamp_ns, "plan": r.plan.describe(),
                                  "reason": r.decision.reason})
            frame["plan_change"] = self.switches[-1]  # in the frame's line too, so that `recover` finds it
        if r.bev_classes is not None and (not self.snapshots or t - self.snapshots[-1][0] >= 10.0):
            self.snapshots.append((t, r.bev_classes, gt_classes))
        self.frames.append(frame)
        if self._stream is not None:  # one line per frame, flushed: a crash loses at most the frame being made
            self._stream.write(json.dumps(frame, default=_jsonable) + "\n")
            self._stream.flush()
        return frame

    def add_answers(self, answers: list[dict[str, Any]]) -> None:
        """Answers that finished after the last frame (answering runs off the frame path): kept with it in
        report.json (its line in frames.jsonl was written before they came)."""
        if answers and self.frames:
            _score(answers)
            self.frames[-1]["answers"].extend(answers)

    def add_degradations(self, records: list[dict[str, Any]], diagnostics: list[str]) -> None:
        """What was wrong with the input (Synchronizer.degradations / .diagnostics), listed with time spans."""
        self.degradations += records
        self.diagnostics += [d for d in diagnostics if d not in self.diagnostics]

    # ---------------------------------------------------------------- summary
    def summary(self) -> dict[str, Any]:
        f = self.frames
        total = [x["timings_ms"]["total"] for x in f]
        stages = {}
        for stage in self.stages:
            vals = [v for x in f for k, v in x["timings_ms"].items() if k == stage or k.startswith(stage + "@")]
            if vals:
                stages[stage] = {"p50": percentile(vals, 50), "p99": percentile(vals, 99), "mean": float(np.mean(vals))}
        ious = [x["obstacle_iou_near5m"] for x in f if x.get("obstacle_iou_near5m") is not None]
        answers = [a for x in f for a in x["answers"]]
        exact = [a["correct"] for a in answers if "correct" in a]
        prior = [a["prior_correct"] for a in answers if "prior_correct" in a]
        busy = {m: float(np.mean([m in x["plan"]["modalities"] for x in f])) if f else 0.0
                for m in self.modalities}
        return {
            "frames": len(f), "switches": len(self.switches),
            "latency_ms": {"min": min(total, default=None), "p50": percentile(total, 50), "p95": percentile(total, 95),
                           "p99": percentile(total, 99), "max": max(total, default=None),
                           "jitter_std": float(np.std(total)) if total else None},
            "stages_ms": stages, "peak_rss_mb": max((x["rss_mb"] for x in f), default=None),
            "obstacle_iou_near5m_mean": float(np.mean(ious)) if ious else None,
            "modality_duty": busy,
            "mean_compute_ms": float(np.mean([sum(v for k, v in x["timings_ms"].items() if k not in ("total",))
                                              for x in f])) if f else None,
            "questions": len(answers), "exact_match": float(np.mean(exact)) if exact else None,
            "blind_prior_exact_match": float(np.mean(prior)) if prior else None,
            **_budget_summary(f, self.meta.get("config") or {}, answers),
            "partial": self.partial_reason is not None, "partial_reason": self.partial_reason,
        }

    def write(self, directory: str | Path | None = None, partial_reason: str | None = None) -> Path:
        """Write report.json (replacing the stub atomically) and report.html; `partial_reason` says why the report
        stops short (an interrupt, an exception). Ends the frames stream; without one, frames.jsonl is written
        whole, so every report directory has it."""
        out = Path(directory) if directory is not None else self._dir
        if out is None:
            raise ValueError("ReportBuilder.write: no directory given and start() was not called")
        out.mkdir(parents=True, exist_ok=True)
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if out != self._dir:
            _write_atomic(out / FRAMES_FILE, "".join(json.dumps(f, default=_jsonable) + "\n" for f in self.frames))
        doc = self._doc(partial_reason)
        _write_atomic(out / "report.json", json.dumps(doc, indent=1, default=_jsonable))
        _write_atomic(out / "report.html", self._html(doc))
        return out

    def _doc(self, partial_reason: str | None) -> dict[str, Any]:
        self.partial_reason = partial_reason
        meta = {"python": platform.python_version(), "machine": platform.machine(),  # the recorded ones win: a
                "processor": platform.processor(), **self.meta}  # recovered report keeps its run's machine
        return {"meta": meta, "summary": self.summary(), "switches": self.switches, "degradations": self._spans(),
                "diagnostics": self.diagnostics, "frames_file": FRAMES_FILE, "frames": self.frames}

    # ---------------------------------------------------------------- html
    def _html(self, doc: dict[str, Any]) -> str:
        s = doc["summary"]
        rows = "".join(f"<tr><td>{sw['t']:.1f} s</td><td>{html.escape(sw['plan'])}</td><td>{html.escape(sw['reason'])}</td></tr>"
                       for sw in self.switches)
        answers = "".join(
            f"<tr><td>{x['t']:.1f} s</td><td>{html.escape(a['question'])}</td><td>{html.escape(a['response'])}</td>"
            f"<td>{html.escape(str(a.get('answer', '')))}</td></tr>" for x in self.frames for a in x["answers"])
        lat = s["latency_ms"]
        fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
        partial = (f"<p style='color:#b00'><b>Partial report</b>: {html.escape(s['partial_reason'])}</p>"
                   if s["partial"] else "")
        if s["partial_reason"] == RUNNING:
            partial += ("<p>If the run is no longer going, <code>edge report DIR</code> rebuilds report.json's "
                        "summary and this page from frames.jsonl.</p>")
        degraded = "".join(
            f"<tr><td>{html.escape(d['kind'])}</td><td>{html.escape(str(d['source']))}</td><td>{d['count']}</td>"
            f"<td>{fmt(d.get('first_s'))}</td><td>{fmt(d.get('last_s'))}</td><td>{html.escape(d['detail'])}</td></tr>"
            for d in doc["degradations"])
        return f"""<!doctype html><html><head><meta charset="utf-8"><title>mpnp-edge run report</title>
<style>body{{font-family:sans-serif;margin:24px;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}h2{{margin-top:28px}}</style></head><body>
<h1>Run report</h1>{partial}<p>{html.escape(str(doc['meta'].get('bag', '')))} &middot; {s['frames']} frames &middot;
{s['switches']} plan changes &middot; latency p50 {fmt(lat['p50'])} ms, p99 {fmt(lat['p99'])} ms &middot;
peak memory {fmt(s['peak_rss_mb'])} MB &middot; obstacle IoU within 5 m {fmt(s['obstacle_iou_near5m_mean'])}</p>
<h2>Modalities against lighting</h2>{self._timeline_svg()}
<h2>Latency per stage</h2>{self._latency_svg()}
<h2>Memory</h2>{self._line_svg([x['rss_mb'] for x in self.frames], 'MB')}
<h2>BEV occupancy (left) and ground truth (right)</h2>{self._snapshots_html()}
<h2>Plan changes</h2><table><tr><th>time</th><th>plan</th><th>reason</th></tr>{rows}</table>
<h2>Answers</h2><table><tr><th>time</th><th>question</th><th>answer</th><th>ground truth</th></tr>{answers}</table>
<h2>Input degradations</h2><table><tr><th>kind</th><th>source</th><th>count</th><th>from</th><th>to</th><th>detail</th>
</tr>{degraded or '<tr><td colspan="6">none</td></tr>'}</table>
</body></html>"""

    def _spans(self) -> list[dict[str, Any]]:
        """Degradation records with their span also in seconds from the report's first frame."""
        t0 = self._t0
        return [{**d, **{f"{k[:-3]}_s": round((d[k] - t0) / 1e9, 3) for k in ("first_ns", "last_ns")
                         if t0 is not None and d.get(k) is not None}} for d in self.degradations]

    def _times(self) -> list[float]:
        return [x["t"] for x in self.frames]

    def _timeline_svg(self, w: int = 1000) -> str:
        ts = self._times()
        if not ts:
            return "<p>no frames</p>"
        span = max(ts[-1], 1e-6)
        x = lambda t: 90 + (w - 100) * t / span  # noqa: E731
        light = {"day": "#ffe680", "dusk": "#f0a050", "night": "#303050", "unknown": "#aaa"}
        parts = [f'<text x="0" y="22" font-size="12">lighting</text>']
        for a, b in zip(self.frames, self.frames[1:] + [self.frames[-1]]):
            parts.append(f'<rect x="{x(a["t"]):.1f}" y="10" width="{max(x(b["t"]) - x(a["t"]), 1):.1f}" height="16" '
                         f'fill="{light.get(a["lighting"], "#aaa")}"/>')
        for i, m in enumerate(self.modalities):
            y = 40 + 22 * i
            parts.append(f'<text x="0" y="{y + 12}" font-size="12">{m}</text>')
            for a, b in zip(self.frames, self.frames[1:] + [self.frames[-1]]):
                if m in a["plan"]["modalities"]:
                    parts.append(f'<rect x="{x(a["t"]):.1f}" y="{y}" width="{max(x(b["t"]) - x(a["t"]), 1):.1f}" '
                                 f'height="16" fill="#3a7"/>')
        h = 40 + 22 * len(self.modalities) + 20
        parts.append(f'<text x="90" y="{h - 4}" font-size="11">0 s</text><text x="{w - 40}" y="{h - 4}" '
                     f'font-size="11">{span:.0f} s</text>')
        return f'<svg width="{w}" height="{h}">{"".join(parts)}</svg>'

    def _latency_svg(self, w: int = 1000, h: int = 200) -> str:
        ts = self._times()
        if not ts:
            return ""
        colours = ["#888", "#36c", "#c63", "#6a3", "#a3a", "#3aa", "#aa3"]
        top = max(max(sum(v for k, v in f["timings_ms"].items() if k != "total") for f in self.frames), 1e-6)
        span = max(ts[-1], 1e-6)
        parts, legend = [], []
        base = np.zeros(len(ts))
        for stage, colour in zip(self.stages, itertools.cycle(colours)):  # more stages with more plugins
            vals = np.array([sum(v for k, v in f["timings_ms"].items() if k == stage or k.startswith(stage + "@"))
                             for f in self.frames])
            if not vals.any():
                continue
            upper = base + vals
            pts = [(40 + (w - 50) * t / span, h - 20 - (h - 30) * v / top) for t, v in zip(ts, upper)]
            low = [(40 + (w - 50) * t / span, h - 20 - (h - 30) * v / top) for t, v in zip(ts, base)]
            poly = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts + low[::-1])
            parts.append(f'<polygon points="{poly}" fill="{colour}" opacity="0.8"/>')
            legend.append(f'<tspan fill="{colour}">&#9632; {stage}</tspan> ')
            base = upper
        parts.append(f'<text x="0" y="14" font-size="11">{top:.0f} ms</text><text x="0" y="{h - 20}" font-size="11">0</text>')
        return f'<svg width="{w}" height="{h}">{"".join(parts)}</svg><div style="font-size:12px"><svg width="{w}" ' \
               f'height="16"><text x="40" y="12" font-size="12">{"".join(legend)}</text></svg></div>'

    def _line_svg(self, values: list[float], unit: str, w: int = 1000, h: int = 120) -> str:
        ts = self._times()
        if not values:
            return ""
        lo, hi = min(values), max(values)
        hi = hi if hi > lo else lo + 1
        span = max(ts[-1], 1e-6)
        pts = " ".join(f"{40 + (w - 50) * t / span:.1f},{h - 15 - (h - 25) * (v - lo) / (hi - lo):.1f}"
                       for t, v in zip(ts, values))
        return (f'<svg width="{w}" height="{h}"><polyline points="{pts}" fill="none" stroke="#36c"/>'
                f'<text x="0" y="12" font-size="11">{hi:.0f} {unit}</text>'
                f'<text x="0" y="{h - 15}" font-size="11">{lo:.0f}</text></svg>')

    def _snapshots_html(self) -> str:
        cells = []
        for t, pred, gt in self.snapshots[:8]:
            imgs = [self._bev_png(pred)] + ([self._bev_png(gt)] if gt is not None else [])
            tags = "".join(f'<img src="data:image/png;base64,{b}" width="200" style="margin-right:4px"/>' for b in imgs)
            cells.append(f"<div style='display:inline-block;margin:6px'>{tags}<br/><small>{t:.0f} s</small></div>")
        return "".join(cells) or "<p>no BEV output</p>"

    @staticmethod
    def _bev_png(classes: np.ndarray) -> str:
        """(nx, ny) classes -> PNG with x (forward) up and y (left) to the left, as a driver sees the map."""
        c = np.where(classes == IGNORE, 4, classes).astype(np.intp)
        img = CLASS_COLOURS[c][::-1, ::-1]  # rows: x from front to back; columns: y from left to right
        img = cv2.resize(img, (img.shape[1] * 2, img.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
        ok, buf = cv2.imencode(".png", img)
        return base64.b64encode(buf.tobytes()).decode() if ok else ""


def read_report(directory: str | Path) -> dict[str, Any]:
    """report.json of `directory`; when it is the stub of a run that died without its summary, with the frames
    that run finished taken from frames.jsonl (a torn last line, from a kill mid-write, is left out)."""
    out = Path(directory)
    doc = json.loads((out / "report.json").read_text())
    frames_file = out / doc.get("frames_file", FRAMES_FILE)
    if doc["summary"].get("partial") and frames_file.exists():
        frames = []
        for line in frames_file.read_text(encoding="utf-8").splitlines():
            try:
                frames.append(json.loads(line))
            except json.JSONDecodeError:
                break
        if len(frames) > len(doc["frames"]):
            doc["frames"] = frames
            doc["summary"]["frames"] = len(frames)
    return doc


def recover(directory: str | Path) -> tuple[Path, int]:
    """report.json's summary and report.html rebuilt from frames.jsonl, for a run that died without writing them
    (`edge report DIR`). Returns the directory and the number of frames recovered; frames.jsonl is left as it is.
    A complete report, or a directory without one, is a ReportError naming the file."""
    out = Path(directory)
    stub = out / "report.json"
    if not stub.is_file():
        raise ReportError(f"{stub}: no such report (is {out} the directory `edge run` wrote to?)")
    try:
        doc = read_report(out)
    except (json.JSONDecodeError, KeyError) as exc:
        raise ReportError(f"{stub}: not a report of `edge run`: {exc}") from exc
    reason = doc["summary"].get("partial_reason")
    if reason != RUNNING:
        state = f"partial ({reason})" if reason else "complete"
        raise ReportError(f"{stub}: the run wrote its summary already ({state}); nothing to recover")
    builder = ReportBuilder(None, None, doc["meta"], _recorded_plugins(doc))
    builder.frames = doc["frames"]
    builder.switches = [f["plan_change"] for f in builder.frames if "plan_change" in f]
    builder._dir = out  # frames.jsonl stays as recorded (a torn last line included)
    builder.write(out, partial_reason=RECOVERED.format(n=len(builder.frames)))
    return out, len(builder.frames)


def _recorded_plugins(doc: dict[str, Any]) -> tuple[ModalityPlugin, ...] | None:
    """The plugins of the run a report recorded: the stub's summary, written at the start, has a duty of 0 for
    each modality the run could plan (ReportBuilder.modalities), in order; None (the registry's) where it has no
    duty, or names a modality not installed now."""
    names = list((doc.get("summary") or {}).get("modality_duty") or {})
    installed = {p.name: p for p in registry()}
    if not names or any(n not in installed for n in names):
        return None
    return tuple(installed[n] for n in names)


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename: a reader (or a crash) never sees half a report."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
