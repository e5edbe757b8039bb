"""The mPnP-style QA table in one command (`edge eval qa --table DIR`): train every configuration, evaluate, report.

Conditions (rows of mPnP's main table, with our sensors): Day (fisheye + camera, trained on day QA), Night (the
same day aligners, no adaptation), Night adding ultrasonic + audio (`edge adapt --add`, day aligners kept frozen),
Night switching to ultrasonic + audio (`edge adapt --switch`). Methods: mPnP at each N of the grid, the full-LLM
baseline (connections into every block + LoRA on every k/v), the input-prefix baseline, and text only (LoRA, no
modality). Every training runs in its own process (`edge train aligners` / `edge adapt`), so its peak memory is
its own; finished runs are reused, so an interrupted table resumes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge.llm.qa_model import RUN_FILE

DAY_MODS = ("fisheye", "camera")
NIGHT_MODS = ("ultrasonic", "audio")
CONDITIONS = ("Day", "Night", "Night + add", "Night switch")
BASELINE_ROWS = ("blind prior", "text only")  # in every block: what no sensor scores on the same items
# The templates the ultrasonic + audio setup should answer at night as well as the cameras by day (issue 10):
# distances, free/blocked and counts within the ultrasonic range, and whether reversing is safe.
NEAR_FIELD_PREFIXES = ("distance_", "clear_", "count_", "reverse_")


def _edge(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "edge.cli", *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")


def _run_dir(root: Path, label: str, seed: int, first_seed: int) -> Path:
    d = root / label.replace(" ", "_").replace("=", "").replace("+", "_")
    return d if seed == first_seed else d.with_name(f"{d.name}_seed{seed}")


def plan(args: argparse.Namespace) -> list[dict]:
    """Every (condition, method, seed) cell: the run to train (command, and the run it starts from) and what it is
    evaluated on. N = all is the full-LLM row (connections into every block, LoRA on every k/v); the chosen N and
    the full LLM are trained with every seed of --seeds, the others with the first."""
    root = Path(args.table) / "runs"
    seeds = list(getattr(args, "seeds", None) or [args.seed])
    lora = getattr(args, "mpnp_lora_rank", 0) or 0
    mpnp = "mPnP+LoRA" if lora else "mPnP"
    methods = [(f"{mpnp} N={n}", "mpnp", n) for n in args.n] + [("full LLM", "full", 30), ("input prefix", "prefix", 30)]
    cells = []
    for label, method, n in methods:
        many = method == "full" or (method == "mpnp" and n == args.chosen_n)
        for seed in seeds if many else seeds[:1]:
            common = ["--epochs", args.epochs, "--seed", seed, "--threads", args.threads, "--quiet",
                      "--perception", args.perception, "--cache-dir", args.cache_dir, "--drives-dir", args.drives_dir]
            d = _run_dir(root, label, seed, seeds[0])
            extra = ["--lora-rank", lora] if method == "mpnp" and lora else []
            day_cmd = ["train", "aligners", "--out", d / "day", "--method", method, "--n-blocks", n,
                       "--modalities", *DAY_MODS, "--lighting", "day", "--max-items", args.day_items, *extra, *common]
            adapt = ["--from", d / "day", "--n-blocks", n, "--samples", args.adapt_samples, *common,
                     "--epochs", args.adapt_epochs]  # the later --epochs wins: adaptation has its own
            base = dict(method=label, n=n, seed=seed)
            cells += [
                dict(base, condition="Day", run=d / "day", cmd=day_cmd, after=None, lighting="day", trained=True),
                dict(base, condition="Night", run=d / "day", cmd=day_cmd, after=None, lighting="night", trained=False),
                dict(base, condition="Night + add", run=d / "add", after=d / "day", lighting="night", trained=True,
                     # --train-lora: the table's "add" retrains the day run's LoRA too, as when table_v3 was run
                     # (edge adapt --add keeps a carried-over LoRA frozen by default since)
                     cmd=["adapt", "--out", d / "add", "--add", *NIGHT_MODS, "--train-lora", *adapt]),
                dict(base, condition="Night switch", run=d / "switch", after=d / "day", lighting="night",
                     trained=True, cmd=["adapt", "--out", d / "switch", "--switch", ",".join(DAY_MODS),
                                        ",".join(NIGHT_MODS), *adapt]),
            ]
    common = ["--epochs", args.epochs, "--seed", seeds[0], "--threads", args.threads, "--quiet",
              "--perception", args.perception, "--cache-dir", args.cache_dir, "--drives-dir", args.drives_dir]
    t = root / "text_only"
    text_day = ["train", "aligners", "--out", t / "day", "--method", "text", "--n-blocks", 8, "--lighting", "day",
                "--max-items", args.day_items, *common]
    text_night = ["train", "aligners", "--out", t / "night", "--method", "text", "--n-blocks", 8, "--lighting", "night",
                  "--max-items", args.adapt_samples, *common, "--epochs", args.adapt_epochs]
    text = dict(method="text only", n=8, seed=seeds[0], after=None, trained=True)
    cells += [dict(text, condition="Day", run=t / "day", cmd=text_day, lighting="day"),
              dict(text, condition="Night", run=t / "day", cmd=text_day, lighting="night", trained=False)]
    cells += [dict(text, condition=c, run=t / "night", cmd=text_night, lighting="night") for c in CONDITIONS[2:]]
    skip = [str(root / k) for k in args.skip]
    return [c for c in cells if not any(str(c["run"]).startswith(k) for k in skip)]


def _train_all(cells: list[dict], jobs: int) -> None:
    """Train every run not finished yet, `jobs` at a time, each after the run it starts from (one process each)."""
    todo = {str(c["run"]): c for c in cells if not (Path(c["run"]) / RUN_FILE).exists()}
    done: dict[str, Future] = {}
    with ThreadPoolExecutor(max(1, jobs)) as pool, tqdm(total=len(todo), desc="train runs", unit="run") as bar:
        def one(cell: dict) -> None:
            if cell["after"] is not None and str(cell["after"]) in done:
                done[str(cell["after"])].result()  # re-raises the parent's failure
            tqdm.write(f"edge {' '.join(map(str, cell['cmd']))}")
            _edge(cell["cmd"])
            bar.update(1)
        # parents are submitted first, so a child waiting on its parent never holds the only worker it needs
        for run, cell in sorted(todo.items(), key=lambda kv: kv[1]["after"] is not None):
            done[run] = pool.submit(one, cell)
        for f in done.values():
            f.result()


def _evaluate_all(cells: list[dict], args: argparse.Namespace) -> dict[tuple[str, str], dict]:
    """EM/F1 of every (run, lighting) on the same held-out items, `--jobs` evaluations at a time (each one
    `edge eval qa` process, which draws the items exactly as the table does)."""
    out_dir = Path(args.table) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = sorted({(str(c["run"]), c["lighting"]) for c in cells if c["run"] is not None})

    def one(key: tuple[str, str]) -> tuple[tuple[str, str], dict]:
        run, light = key
        path = out_dir / (run.replace("/", "__") + f"--{light}.json")
        if not path.exists():
            _edge(["eval", "qa", run, "--lighting", light, "--eval-items", args.eval_items, "--seed", args.seed,
                   "--threads", args.threads, "--quiet", "--perception", args.perception, "--cache-dir",
                   args.cache_dir, "--drives-dir", args.drives_dir, "--drives", *args.drives,
                   "--train-drives", *args.train_drives, "--json", path])
        return key, json.loads(path.read_text())[run]

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        return dict(tqdm(pool.map(one, keys), total=len(keys), desc="evaluate", unit="run"))


def run_table(args: argparse.Namespace) -> int:
    from edge.llm.prior import BlindPrior
    from edge.llm.qa_data import build_dataset

    out = Path(args.table)
    out.mkdir(parents=True, exist_ok=True)
    cells = plan(args)
    _train_all(cells, args.jobs)
    results = _evaluate_all(cells, args)
    data = build_dataset(args.drives, perception_dir=args.perception, drives_dir=args.drives_dir,
                         cache_dir=args.cache_dir, progress=not args.quiet)
    train = build_dataset(args.train_drives, perception_dir=args.perception, drives_dir=args.drives_dir,
                          cache_dir=args.cache_dir, progress=not args.quiet)
    prior = BlindPrior.fit(train)
    for c in cells:
        res = results[(str(c["run"]), c["lighting"])]
        rec = json.loads((Path(c["run"]) / RUN_FILE).read_text())
        c.update(em=res["all"]["em"], f1=res["all"]["f1"], n_eval=res["all"]["n"],
                 kinds={k: v["em"] for k, v in res["kind"].items()},
                 flops=rec["train_flops"], flops_paper=rec.get("train_flops_paper", rec["train_flops"]),
                 trunk_share=rec.get("trunk_share", 1.0), lora_rank=rec.get("lora_rank", 0), seconds=rec["train_seconds"],
                 peak_mb=rec["peak_rss_mb"], added_mb=rec["train_added_rss_mb"], items=rec["items"],
                 samples_seen=rec["samples_seen"], n_blocks=rec["n_blocks"])
    for cond in CONDITIONS:  # the blind prior on exactly the items each block is scored on
        light = "day" if cond == "Day" else "night"
        items = data.filter(lighting=[light]).subset(args.eval_items, args.seed)
        res = prior.report(items)
        cells.append(dict(condition=cond, method="blind prior", n=0, n_blocks=0, seed=None, run=None, lighting=light,
                          trained=False, em=res["all"]["em"], f1=res["all"]["f1"], n_eval=res["all"]["n"],
                          kinds={k: v["em"] for k, v in res["kind"].items()}))
    rows = [{k: (str(v) if isinstance(v, Path) else v) for k, v in c.items() if k not in ("cmd", "after")}
            for c in cells]
    settings = {k: getattr(args, k) for k in ("n", "epochs", "adapt_epochs", "day_items", "adapt_samples", "eval_items",
                                              "seed", "seeds", "drives", "train_drives", "mpnp_lora_rank")}
    (out / "table.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
    return report(out, args.chosen_n)


def report(out: Path, chosen_n: int) -> int:
    """table.md and table.png from table.json (re-runnable without training or evaluating again)."""
    saved = json.loads((out / "table.json").read_text())
    rows, settings = saved["rows"], saved["settings"]
    md = markdown(rows, settings, chosen_n)
    (out / "table.md").write_text(md)
    plot(rows, out / "table.png")
    print(md)
    return 0


def _order(rows: list[dict]) -> list[dict]:
    """Each condition's block: the blind prior and text only first, then the methods as planned."""
    out = []
    for cond in CONDITIONS:
        block = [r for r in rows if r["condition"] == cond]
        base = sorted((r for r in block if r["method"] in BASELINE_ROWS), key=lambda r: BASELINE_ROWS.index(r["method"]))
        out += base + [r for r in block if r["method"] not in BASELINE_ROWS]
    return out


def _mean_over_seeds(rows: list[dict], cond: str, method: str) -> dict | None:
    """The row of (condition, method), its EM and per-template EM averaged over the seeds it was trained with."""
    same = [r for r in rows if r["condition"] == cond and r["method"] == method]
    if not same:
        return None
    kinds = sorted({k for r in same for k in r["kinds"]})
    return dict(same[0], em=float(np.mean([r["em"] for r in same])), seeds=[r.get("seed") for r in same],
                kinds={k: float(np.mean([r["kinds"].get(k, 0.0) for r in same])) for k in kinds})


def markdown(rows: list[dict], settings: dict, chosen_n: int) -> str:
    prior = {r["condition"]: r for r in rows if r["method"] == "blind prior"}
    lines = [f"Settings: {json.dumps(settings)}", "",
             "N = all is the full-LLM row (connections into every block, LoRA on every k/v). EM on the same held-out "
             "items in each block; 'vs prior' is the gain over the blind prior of that block.", "",
             "| condition | method | N | seed | EM | vs prior | F1 | training TFLOPs (executed) | TFLOPs (paper's "
             "accounting) | training s | peak RSS MB | added by training MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in _order(rows):
        p = prior.get(r["condition"])
        gain = f"{r['em'] - p['em']:+.1f}" if p and r is not p else ""
        if r["method"] == "blind prior":
            cost = "no training | | | | "
        elif not r["trained"]:
            cost = "no training (day run) | | | | "
        else:
            cost = (f"{r['flops'] / 1e12:.2f} | {r['flops_paper'] / 1e12:.2f} | {r['seconds']:.0f} | {r['peak_mb']:.0f} | "
                    f"{r['added_mb']:.0f}")
        n = "all" if r["method"] == "full LLM" else ("" if r["method"] == "blind prior" else r["n_blocks"])
        seed = "" if r.get("seed") is None else r["seed"]
        lines.append(f"| {r['condition']} | {r['method']} | {n} | {seed} | {r['em']:.1f} | {gain} | {r['f1']:.1f} | {cost} |")
    lines += ["", *per_template(rows, chosen_n), "", *targets(rows, chosen_n)]
    return "\n".join(lines) + "\n"


def _chosen(rows: list[dict], chosen_n: int) -> str:
    mine = sorted({r["method"] for r in rows if r["method"].startswith("mPnP") and r["n_blocks"] == chosen_n})
    return mine[0] if mine else f"mPnP N={chosen_n}"


def per_template(rows: list[dict], chosen_n: int) -> list[str]:
    """EM per template in each block: blind prior, text only, the chosen N (mean over seeds) and the full LLM."""
    me = _chosen(rows, chosen_n)
    cols = ("blind prior", "text only", me, "full LLM")
    out = []
    for cond in CONDITIONS:
        got = {m: _mean_over_seeds(rows, cond, m) for m in cols}
        if got[me] is None:
            continue
        kinds = sorted({k for r in got.values() if r for k in r["kinds"]})
        out += [f"Per template, {cond} (EM %; {me} and full LLM averaged over their seeds):", "",
                "| template | " + " | ".join(cols) + " | chosen N above its prior |", "|---" * (len(cols) + 2) + "|"]
        for k in kinds:
            vals = [got[m]["kinds"].get(k) if got[m] else None for m in cols]
            above = "" if vals[0] is None or vals[2] is None else ("yes" if vals[2] > vals[0] else "NO")
            out.append(f"| {k} | " + " | ".join("" if v is None else f"{v:.0f}" for v in vals) + f" | {above} |")
        out.append("")
    return out


def _near_field(kinds: dict[str, float]) -> float:
    vals = [v for k, v in kinds.items() if k.startswith(NEAR_FIELD_PREFIXES)]
    return float(np.mean(vals)) if vals else float("nan")


def targets(rows: list[dict], chosen_n: int) -> list[str]:
    """The issue's targets at the chosen N (mean over its seeds), computed from the rows: met or MISSED."""
    me, full = _chosen(rows, chosen_n), "full LLM"
    out = [f"Targets at N={chosen_n} ({me}, mean over its seeds):"]
    day, prior_day = _mean_over_seeds(rows, "Day", me), _mean_over_seeds(rows, "Day", "blind prior")
    if day and prior_day:
        gain = day["em"] - prior_day["em"]
        below = [k for k, p in prior_day["kinds"].items() if day["kinds"].get(k, 0.0) <= p]
        out.append(f"- Day: EM {day['em']:.1f} vs blind prior {prior_day['em']:.1f} ({gain:+.1f} points; target >= +30: "
                   f"{'met' if gain >= 30 else 'MISSED'}); templates at or below their prior: "
                   f"{', '.join(below) if below else 'none'} ({'met' if not below else 'MISSED'})")
    for cond in CONDITIONS:
        a, b = _mean_over_seeds(rows, cond, me), _mean_over_seeds(rows, cond, full)
        if not a or not b:
            continue
        if not a["trained"]:  # the day aligners at night, before any adaptation: why adaptation exists
            out.append(f"- {cond} (not adapted, for reference): EM {a['em']:.1f} vs full LLM {b['em']:.1f}")
            continue
        fr, er, tr = b["flops"] / a["flops"], b["flops_paper"] / a["flops_paper"], b["seconds"] / a["seconds"]
        mr = 1 - a["added_mb"] / b["added_mb"] if b["added_mb"] > 0 else float("nan")
        pr = 1 - a["peak_mb"] / b["peak_mb"]
        out.append(f"- {cond} against the full LLM: EM {a['em']:.1f} vs {b['em']:.1f} ({a['em'] - b['em']:+.1f} points; "
                   f"target >= -2: {'met' if a['em'] - b['em'] >= -2 else 'MISSED'}); training FLOPs {fr:.2f}x lower as "
                   f"executed (target >= 3.7x: {'met' if fr >= 3.7 else 'MISSED'}), {er:.2f}x by the paper's "
                   f"accounting, measured time {tr:.2f}x lower; memory added by training {100 * mr:.1f} % lower, total "
                   f"peak RSS {100 * pr:.1f} % lower (target >= 30 %: {'met' if mr >= 0.3 else 'MISSED'} on added, "
                   f"{'met' if pr >= 0.3 else 'MISSED'} on total)")
    sw = _mean_over_seeds(rows, "Night switch", me)
    if day and sw:
        a, b = _near_field(sw["kinds"]), _near_field(day["kinds"])
        out.append(f"- Night switch (ultrasonic + audio) vs Day (fisheye + camera) on the near-field templates "
                   f"({', '.join(p.rstrip('_') for p in NEAR_FIELD_PREFIXES)}, mean EM per template): {a:.1f} vs "
                   f"{b:.1f} (target >=: {'met' if a >= b else 'MISSED'}); all templates {sw['em']:.1f} vs {day['em']:.1f}")
    return out


def plot(rows: list[dict], path: Path) -> None:
    """EM against N per condition (mPnP lines) with the baselines as markers; drawn with OpenCV (no extra dependency)."""
    w, h, m = 900, 520, 70
    img = np.full((h, w, 3), 255, np.uint8)
    ns = sorted({r["n_blocks"] for r in rows if r["method"].startswith("mPnP")})
    if not ns:
        return
    xs = {n: m + int((w - 2 * m - 230) * (np.log2(n) - np.log2(ns[0])) / max(1e-9, np.log2(ns[-1]) - np.log2(ns[0])))
          for n in ns}
    top = max(10.0, max(r["em"] for r in rows) * 1.1)
    y = lambda v: int(h - m - (h - 2 * m) * v / top)  # noqa: E731
    cv2.line(img, (m, h - m), (w - m - 230, h - m), (0, 0, 0), 1)
    cv2.line(img, (m, m), (m, h - m), (0, 0, 0), 1)
    for n, x in xs.items():
        cv2.putText(img, str(n), (x - 8, h - m + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    for v in np.linspace(0, top, 6):
        cv2.putText(img, f"{v:.0f}", (m - 35, y(v) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.putText(img, "N (connected blocks)", (w // 2 - 120, h - 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.putText(img, "QA exact match (%) on held-out drives", (m, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
    colors = {"Day": (0, 140, 255), "Night": (120, 120, 120), "Night + add": (200, 80, 0), "Night switch": (0, 160, 0)}
    markers = {"full LLM": cv2.MARKER_SQUARE, "input prefix": cv2.MARKER_TRIANGLE_UP, "text only": cv2.MARKER_CROSS,
               "blind prior": cv2.MARKER_DIAMOND}
    for i, cond in enumerate(CONDITIONS):
        pts = [(xs[r["n_blocks"]], y(r["em"])) for r in rows
               if r["condition"] == cond and r["method"].startswith("mPnP") and r.get("seed") == rows[0].get("seed")]
        pts.sort()
        if len(pts) > 1:
            cv2.polylines(img, [np.array(pts, np.int32)], False, colors[cond], 2)
        for p in pts:
            cv2.circle(img, p, 4, colors[cond], -1)
        for r in rows:
            if r["condition"] == cond and r["method"] in markers and r.get("seed") in (None, rows[0].get("seed")):
                cv2.drawMarker(img, (w - m - 210 + 30 * list(markers).index(r["method"]), y(r["em"])), colors[cond],
                               markers[r["method"]], 12, 2)
        cv2.putText(img, cond, (w - 150, m + 20 + 22 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colors[cond], 1)
    for j, (name, mk) in enumerate(markers.items()):
        cv2.drawMarker(img, (w - 150, m + 130 + 22 * j), (0, 0, 0), mk, 10, 1)
        cv2.putText(img, name, (w - 135, m + 134 + 22 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.imwrite(str(path), img)
