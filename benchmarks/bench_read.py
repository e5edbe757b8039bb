"""Read + decode + synchronise throughput, in simulated seconds per wall-clock second (target >= 20x real time).

    python benchmarks/bench_read.py [BAG] [--duration 60] [--slop 0.05] [--workers 2] [--reduce 1] [--json]

Without BAG a synthetic bag with the default rig's streams is written first (4 fisheye 640x480 JPEG at 10 Hz, front
camera 640x384 JPEG at 10 Hz, 12 ultrasonic at 20 Hz, 4-channel 16 kHz audio in 40 ms chunks, odometry at 50 Hz).
`build_synthetic_bag` is also what the tests use to make small bags without the drive generator.
"""

from __future__ import annotations

import argparse
import json
import os
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edge.drives import messages as M  # noqa: E402
from edge.drives import topics as T  # noqa: E402
from edge.drives.bag import BagWriter  # noqa: E402

ULTRASONIC_NAMES: tuple[str, ...] = tuple(
    f"{end}_{side}_{pos}" for end in ("front", "rear") for side, pos in
    (("left", "side"), ("left", "corner"), ("left", "center"), ("right", "center"), ("right", "corner"),
     ("right", "side"))
)
START_NS = 1_700_000_000_000_000_000
_FISHEYE_K = np.array([[230.0, 0, 320.0], [0, 230.0, 240.0], [0, 0, 1]])
_FRONT_K = np.array([[560.0, 0, 320.5], [0, 560.0, 191.5], [0, 0, 1]])


def frame_marker(img: np.ndarray) -> int:
    """The frame index mod 32 painted by `_render` into the top-left 16x16 block (steps of 8 survive JPEG)."""
    return int(round(float(np.median(img[2:14, 2:14, 1])) / 8.0)) % 32


def _render(base: np.ndarray, index: int) -> np.ndarray:
    img = np.roll(base, shift=(index * 3) % base.shape[1], axis=1).copy()
    img[:16, :16] = (0, (index % 32) * 8, 0)  # green channel = 8 * (index mod 32), identifies the frame
    return img


def _bases(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth textured image (compresses like a camera frame, unlike white noise)."""
    small = rng.integers(0, 255, (h // 16, w // 16, 3)).astype(np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), (0, 0), 2)


def build_synthetic_bag(
    out: str | Path, duration_s: float = 2.0, *, seed: int = 0, camera_hz: float = 10.0, ultrasonic_hz: float = 20.0,
    audio_rate: int = 16000, audio_chunk_ms: int = 40, odom_hz: float = 50.0, compressed: bool = True,
    omit: Iterable[str] = (), jitter_ms: float = 0.0, ground_truth: bool = True, storage: str = "mcap",
    compression: str = "zstd", fisheye_size: tuple[int, int] = (640, 480), front_size: tuple[int, int] = (640, 384),
    ultrasonic_names: Iterable[str] = ULTRASONIC_NAMES,
) -> Path:
    """Write a drive-shaped bag with the default rig's streams; returns its path.

    `omit` drops topics (exact names); header stamps get +-jitter_ms uniform noise (bag time = header stamp).
    Each image carries its frame index (`frame_marker`), each range reading = 1 + 0.01 * index, each audio
    chunk's samples = its chunk index (all channels), so tests can check what the readers pair up.
    """
    rng = np.random.default_rng(seed)
    omit = set(omit)
    out = Path(out)
    fw, fh = fisheye_size
    cw, ch = front_size
    fisheye_base = {cam: _bases(rng, fh, fw) for cam in T.FISHEYE_CAMERAS}
    front_base = _bases(rng, ch, cw)
    msgs: list[tuple[int, int, str, str, object]] = []  # (bag time, order, topic, type, msg)
    seq = 0

    def add(topic: str, msgtype: str, t: int, msg: object) -> None:
        nonlocal seq
        if topic not in omit:
            seq += 1
            msgs.append((t, seq, topic, msgtype, msg))

    def jit() -> int:
        return int(rng.uniform(-jitter_ms, jitter_ms) * 1e6) if jitter_ms else 0

    def image(t: int, frame: str, img: np.ndarray) -> tuple[str, object]:
        if compressed:
            return T.COMPRESSED_IMAGE, M.compressed_image(t, frame, img, quality=85)
        return T.IMAGE, M.raw_image(t, frame, img)

    suffix = T.COMPRESSED_SUFFIX if compressed else ""
    n_cam = int(round(duration_s * camera_hz))
    for i in range(n_cam):
        base_t = START_NS + int(i * 1e9 / camera_hz)
        for cam in T.FISHEYE_CAMERAS:
            t = base_t + jit()
            mt, msg = image(t, f"fisheye_{cam}_optical_frame", _render(fisheye_base[cam], i))
            add(T.fisheye_image_topic(cam) + suffix, mt, t, msg)
            add(T.fisheye_info_topic(cam), T.CAMERA_INFO, t, M.camera_info(
                t, f"fisheye_{cam}_optical_frame", fw, fh, _FISHEYE_K, [0.05, -0.01, 0.002, -0.0005], "equidistant"))
        t = base_t + jit()
        mt, msg = image(t, "camera_front_optical_frame", _render(front_base, i))
        add(T.FRONT_CAMERA_IMAGE + suffix, mt, t, msg)
        add(T.FRONT_CAMERA_INFO, T.CAMERA_INFO, t, M.camera_info(
            t, "camera_front_optical_frame", cw, ch, _FRONT_K, [-0.12, 0.05, 0.0005, -0.0003, 0.0], "plumb_bob"))
        if ground_truth:
            grid = np.zeros((40, 40), np.int8)
            grid[i % 40, :] = 100
            add(T.GT_BEV, T.OCCUPANCY_GRID, base_t, M.occupancy_grid(base_t, "base_link", grid, 0.25, (-5.0, -5.0)))
            add(T.GT_OBJECTS, T.MARKER_ARRAY, base_t, M.marker_array_boxes(base_t, "base_link", [
                {"class": "car", "id": 1, "x": 4.0 + 0.1 * i, "y": 2.0, "length": 4.5, "width": 1.8, "height": 1.5}]))
            add(T.GT_AUDIO_EVENTS, T.MARKER_ARRAY, base_t, M.marker_array_events(base_t, "base_link", [
                {"class": "siren", "id": 0, "x": -20.0, "y": 5.0}] if i % 2 else []))
            add(T.GT_CONDITIONS, T.STRING, base_t, M.string_json({"light": "day", "frame": i}, stamp_ns=base_t))
            if i % 5 == 0:
                add(T.GT_QA, T.STRING, base_t, M.string_json(
                    {"question": "Is reversing safe?", "answer": "yes", "frame": i}, stamp_ns=base_t))
    names = list(ultrasonic_names)
    for i in range(int(round(duration_s * ultrasonic_hz))):
        base_t = START_NS + int(i * 1e9 / ultrasonic_hz)
        for k, name in enumerate(names):
            t = base_t + jit()
            r = 1.0 + 0.01 * i
            add(T.ultrasonic_topic(name), T.RANGE, t, M.range_msg(
                t, f"ultrasonic_{name}", r if k != 0 or i % 10 else math.inf, math.radians(60), 0.15, 5.5))
    chunk = audio_rate * audio_chunk_ms // 1000
    for i in range(int(round(duration_s * 1000 / audio_chunk_ms))):
        t = START_NS + i * audio_chunk_ms * 1_000_000
        add(T.AUDIO, T.IMAGE, t, M.audio_chunk(t, "mic_array", np.full((4, chunk), i, dtype=np.int16)))
    for i in range(int(round(duration_s * odom_hz))):
        t = START_NS + int(i * 1e9 / odom_hz)
        add(T.ODOM, T.ODOMETRY, t, M.odometry(t, "odom", "base_link", 0.1 * i, 0.0, 0.0, 5.0, 0.0, 0.0))
    msgs.sort(key=lambda m: (m[0], m[1]))
    with BagWriter(out, compression=compression, storage=storage) as w:
        for t, _, topic, mt, msg in msgs:
            w.write(topic, mt, t, msg)
    return out


def run(bag: Path, slop_s: float, workers: int, reduce: int = 1, ground_truth: bool = True) -> dict[str, float]:
    from edge.drives.sync import SyncConfig, synchronized_samples

    cfg = SyncConfig(slop_s=slop_s, decode_workers=workers, image_reduce=reduce, ground_truth=ground_truth)
    t0 = time.perf_counter()
    cpu0 = time.process_time()  # all threads of this process: barely moved by other jobs on the machine
    n = 0
    first = last = None
    present = 0
    for s in synchronized_samples(bag, cfg):
        n += 1
        first = s.stamp_ns if first is None else first
        last = s.stamp_ns
        present += sum(1 for img in s.data["fisheye"].values() if img is not None)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    sim = (last - first) / 1e9 if n > 1 else 0.0
    return {"samples": n, "simulated_s": sim, "wall_s": wall, "ratio_to_real_time": sim / wall if wall else 0.0,
            "cpu_s": cpu, "simulated_s_per_cpu_s": sim / cpu if cpu else 0.0, "fisheye_images_decoded": present,
            "load_avg": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bag", nargs="?", help="rosbag2 bag directory (default: generate a day-to-night drive)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of synthetic drive [60]")
    ap.add_argument("--slop", type=float, default=0.05, help="approximate-time slop in seconds [0.05]")
    ap.add_argument("--workers", type=int, default=2, help="image decode threads [2]")
    ap.add_argument("--reduce", type=int, default=1, help="decode images 2/4/8 times smaller [1: full size]")
    ap.add_argument("--no-ground-truth", action="store_true", help="skip /ground_truth (the runtime's data path)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.bag:
            bag = Path(args.bag)
        else:
            from edge.drives.generate import generate_drive

            print(f"generating a {args.duration:.0f} s day-to-night drive ...", file=sys.stderr)
            bag = generate_drive(Path(tmp) / "drive", seed=3, duration=args.duration, scenario="day-to-night").path
        res = run(bag, args.slop, args.workers, args.reduce, ground_truth=not args.no_ground_truth)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        size = "full-size" if args.reduce == 1 else f"1/{args.reduce}-size"
        print(f"{res['samples']} samples ({size} images), {res['simulated_s']:.1f} s simulated in {res['wall_s']:.2f} s wall: "
              f"{res['ratio_to_real_time']:.1f}x real time (target >= 20x); {res['simulated_s_per_cpu_s']:.1f} "
              f"simulated s per CPU s; load average {res['load_avg']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
