"""Time of `edge calibrate intrinsics` on 20 rendered views of an 800x600 fisheye (issue 15 target: under 30 s on
this machine), with the accuracy against the truth the views were rendered from.

    .venv/bin/python benchmarks/bench_calibrate.py [--views 20] [--seed 3]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from edge.calibration.boards import Board, detect
from edge.calibration.intrinsics import calibrate_intrinsics
from edge.calibration.synthetic import fisheye_truth, render_views


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=20)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    board, truth = Board(9, 6, 0.04), fisheye_truth()
    t = time.perf_counter()
    rs = render_views(truth, board, args.views, args.seed)
    render_s = time.perf_counter() - t
    t = time.perf_counter()
    dets = [d for d in (detect(img, board, str(k)) for k, img in enumerate(rs.images)) if d is not None]
    detect_s = time.perf_counter() - t
    t = time.perf_counter()
    r = calibrate_intrinsics(dets, board, "equidistant", truth.width, truth.height)
    solve_s = time.perf_counter() - t
    th, ph = np.meshgrid(np.radians(np.linspace(0, 75, 76)), np.linspace(-math.pi, math.pi, 73))
    rays = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1).reshape(-1, 3)
    a, _ = truth.project(rays, within_image=False)
    b, _ = r.camera().project(rays, within_image=False)
    err = np.linalg.norm(a - b, axis=1)
    off = np.degrees(np.arctan2(np.hypot(rays[:, 0], rays[:, 1]), rays[:, 2]))
    print(f"{len(dets)} views of {truth.width}x{truth.height}: detection {detect_s:.2f} s + solve {solve_s:.2f} s = "
          f"{detect_s + solve_s:.2f} s (target < 30 s); rendering took {render_s:.2f} s")
    print(f"fx {100 * (r.K[0, 0] / truth.K[0, 0] - 1):+.3f} %  fy {100 * (r.K[1, 1] / truth.K[1, 1] - 1):+.3f} %  "
          f"principal point off by {np.hypot(*(r.K[:2, 2] - truth.K[:2, 2])):.2f} px  RMS {r.rms:.3f} px")
    print(f"projection error: max {err[off <= 60].max():.3f} px up to 60 deg, {err.max():.3f} px up to 75 deg")


if __name__ == "__main__":
    main()
