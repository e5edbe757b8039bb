"""`edge calibrate intrinsics | extrinsics | import | export | check | render` (docs/calibration.md)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.calibration.errors import CalibrationError


def register(sub: argparse._SubParsersAction) -> None:
    cal = sub.add_parser("calibrate", help="camera intrinsics and extrinsics, calibration file import/export, checks")
    cmds = cal.add_subparsers(dest="calibrate_command", metavar="ACTION")
    cmds.required = True

    p = cmds.add_parser("intrinsics", help="solve a camera's intrinsics from board views; writes camera_info YAML")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of images of the board")
    src.add_argument("--bag", help="rosbag2 bag with the camera's images (with --topic)")
    p.add_argument("--topic", help="image topic in --bag (sensor_msgs/Image or CompressedImage)")
    p.add_argument("--every", type=int, default=1, help="use every N-th bag frame [1]")
    p.add_argument("--board", required=True, help="inner corners COLSxROWS, e.g. 9x6 (10x7 squares)")
    p.add_argument("--square", type=float, required=True, help="square side in metres")
    p.add_argument("--charuco", metavar="DICT", help="ChArUco board with this ArUco dictionary, e.g. DICT_5X5_100")
    p.add_argument("--marker", type=float, help="ChArUco marker side in metres")
    p.add_argument("--model", required=True, help="equidistant (fisheye; 'fisheye' accepted) or plumb_bob")
    p.add_argument("--name", default="camera", help="camera_name written in the file [camera]")
    p.add_argument("--out", required=True, help="camera_info YAML to write")
    p.add_argument("--picture", help="coverage picture PNG [OUT with .coverage.png]")
    p.add_argument("--report", help="also write the summary and per-view errors as JSON here")
    p.set_defaults(func=_intrinsics)

    p = cmds.add_parser("extrinsics", help="camera poses in base_link from boards on the ground; writes a rig YAML")
    p.add_argument("--rig", help="rig YAML with the cameras' intrinsics [calibration/default_rig.yaml]")
    p.add_argument("--targets", required=True, help="targets YAML: boards, their poses, the images (see docs)")
    p.add_argument("--out", required=True, help="rig YAML to write")
    p.set_defaults(func=_extrinsics)

    p = cmds.add_parser("import", help="camera_info or Kalibr camchain YAML into a validated rig YAML")
    p.add_argument("files", nargs="+", help="camera_info YAML (one camera) or Kalibr camchain YAML files")
    p.add_argument("--as", dest="as_", action="append", default=[],
                   help="rig camera for each file (or each camchain camera, in order): fisheye/front, camera/front")
    p.add_argument("--rig", help="base rig YAML the cameras go into [calibration/default_rig.yaml]")
    p.add_argument("--out", required=True, help="rig YAML to write")
    p.set_defaults(func=_import)

    p = cmds.add_parser("export", help="a rig's cameras as camera_info YAML files, or one Kalibr camchain")
    p.add_argument("--rig", help="rig YAML [calibration/default_rig.yaml]")
    p.add_argument("--format", choices=("camera_info", "kalibr"), default="camera_info", help="[camera_info]")
    p.add_argument("--cameras", nargs="*", help="which cameras (fisheye/front ...) [all]")
    p.add_argument("--out", required=True, help="folder (camera_info) or file (kalibr) to write")
    p.set_defaults(func=_export)

    p = cmds.add_parser("check", help="reproject boards of known pose through a rig: flags misaligned cameras")
    p.add_argument("--rig", help="rig YAML to check [calibration/default_rig.yaml]")
    p.add_argument("--targets", required=True, help="targets YAML (images as files or drive times)")
    p.add_argument("--bag", help="drive whose frames the targets name by bag_time_s")
    p.add_argument("--max-px", type=float, default=2.0, help="RMS above which a camera is flagged [2.0]")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_check)

    p = cmds.add_parser("render", help="synthetic board views with exact truth (for trying the tools)")
    p.add_argument("out", help="folder to write PNG views and truth.yaml into")
    p.add_argument("--model", default="equidistant", help="equidistant (800x600 fisheye) or plumb_bob [equidistant]")
    p.add_argument("--views", type=int, default=20, help="number of views [20]")
    p.add_argument("--seed", type=int, default=0, help="random seed [0]")
    p.add_argument("--board", default="9x6", help="inner corners [9x6]")
    p.add_argument("--square", type=float, default=0.04, help="square side, metres [0.04]")
    p.add_argument("--noise", type=float, default=2.0, help="grey-level noise sigma [2]")
    p.set_defaults(func=_render)


# ---------------------------------------------------------------- intrinsics

def _intrinsics(args: argparse.Namespace) -> int:
    from edge.calibration import rigio
    from edge.calibration.boards import detect, parse_board
    from edge.calibration.formats import CameraCalibration, camera_info_dict, dump_yaml, write_text_atomic
    from edge.calibration.intrinsics import calibrate_intrinsics, normalize_model
    from edge.calibration.sources import bag_images, folder_images

    model = normalize_model(args.model)  # unknown names fail before any image is read
    board = parse_board(args.board, args.square, args.charuco, args.marker)
    if args.bag and not args.topic:
        raise CalibrationError("--bag needs --topic (the camera's image topic)")
    t0 = time.perf_counter()
    frames = bag_images(args.bag, args.topic, args.every) if args.bag else folder_images(args.images)
    detections, size, total = [], None, 0
    for name, img in frames:
        total += 1
        shape = img.shape[1], img.shape[0]
        if size is None:
            size = shape
        elif shape != size:
            raise CalibrationError(f"{name}: image is {shape[0]}x{shape[1]}, the others {size[0]}x{size[1]}; "
                                   "calibrate one camera (one resolution) at a time")
        d = detect(img, board, name)
        if d is not None:
            detections.append(d)
    print(f"board found in {len(detections)} of {total} images ({time.perf_counter() - t0:.1f} s)")
    assert size is not None
    result = calibrate_intrinsics(detections, board, model, size[0], size[1], images_total=total)
    cal = CameraCalibration(args.name, size[0], size[1], model, result.K, result.D, np.eye(3))
    # The rig validator must accept the result (principal point, monotonic lens) before anything is written.
    data, _ = rigio.load_rig_data(None)
    kind = "fisheye" if model == "equidistant" else "camera"
    target = next(iter(data[kind]))
    rigio.set_intrinsics(data, kind, target, cal)
    rigio.validate(data, args.out)
    out = Path(args.out)
    write_text_atomic(out, dump_yaml(camera_info_dict(cal)))
    picture = Path(args.picture) if args.picture else out.with_suffix(".coverage.png")
    _picture(result, picture)
    _print_summary(result, out, picture, time.perf_counter() - t0)
    if args.report:
        write_text_atomic(Path(args.report), json.dumps(_report(result), indent=2))
    return 0


def _picture(result: Any, path: Path) -> None:
    from edge.calibration import coverage

    cam = result.camera()
    rays, ok = cam.unproject(np.stack(np.meshgrid(np.arange(result.width), np.arange(result.height)), -1).reshape(-1, 2)
                             .astype(np.float64))
    circle = (ok & (rays[:, 2] > np.cos(np.radians(85)))).reshape(result.height, result.width)
    c = result.coverage
    title = (f"{result.model}  RMS {result.rms:.3f} px  views {len(result.used_views)}/{len(result.views)}  "
             f"cells {c.cell_fraction:.0%}  max {c.max_angle_deg:.0f} deg\n"
             + ("TRUSTED" if result.trusted else "NOT TRUSTED: " + result.problems[0][:70]))
    coverage.picture(path, result.width, result.height,
                     [(v.name, v.corners, np.nan_to_num(v.errors, nan=0.0), v.used) for v in result.views], title,
                     circle if result.model == "equidistant" else None)


def _print_summary(r: Any, out: Path, picture: Path, seconds: float) -> None:
    K, D = r.K, r.D
    print(f"model {r.model}: fx {K[0, 0]:.3f} fy {K[1, 1]:.3f} cx {K[0, 2]:.3f} cy {K[1, 2]:.3f} "
          f"D [{', '.join(f'{x:.6g}' for x in D)}]")
    print("1-sigma: " + ", ".join(f"{k} {v:.3g}" for k, v in r.std.items()))
    print(f"RMS reprojection {r.rms:.3f} px over {len(r.used_views)} views"
          + (f" ({r.corners_dropped} mis-detected corners left out)" if r.corners_dropped else ""))
    c = r.coverage
    print(f"coverage: {c.cell_fraction:.0%} of the usable image cells, {c.angle_fraction:.0%} of the field up to "
          f"{c.angle_limit_deg:.0f} deg, corners up to {c.max_angle_deg:.0f} deg off-axis")
    for v in r.views:
        state = f"RMS {v.rms:.3f} px" if v.used else f"DROPPED: {v.reason}"
        print(f"  {v.name}: {len(v.ids)} corners, {state}")
    for n in r.notes:
        print(f"  note: {n}")
    if r.trusted:
        print("verdict: TRUSTED (RMS, coverage and parameter uncertainty within limits)")
    else:
        print("verdict: NOT TRUSTED: " + "; ".join(r.problems))
    print(f"wrote {out} and {picture} ({seconds:.1f} s)")


def _report(r: Any) -> dict[str, Any]:
    return {
        "model": r.model, "width": r.width, "height": r.height, "K": r.K.tolist(), "D": [float(x) for x in r.D],
        "rms_px": r.rms, "std": r.std, "trusted": r.trusted, "problems": r.problems, "notes": r.notes,
        "coverage": vars(r.coverage),
        "views": [{"name": v.name, "used": v.used, "reason": v.reason, "rms_px": v.rms, "corners": len(v.ids)}
                  for v in r.views],
    }


# ---------------------------------------------------------------- extrinsics, check

def _rig_cameras(data: dict[str, Any], rig_path: Path) -> tuple[dict, dict]:
    from edge.sensors.rig import load_rig

    rig = load_rig(rig_path)
    cams = {("fisheye", n): c for n, c in rig.fisheye.items()}
    cams.update({("camera", n): c for n, c in rig.cameras.items()})
    return cams, {ref: c.T_base_cam for ref, c in cams.items()}


def _extrinsics(args: argparse.Namespace) -> int:
    from edge.calibration import rigio
    from edge.calibration.check import image_loader
    from edge.calibration.extrinsics import detect_shots, load_targets, solve_extrinsics

    data, rig_path = rigio.load_rig_data(args.rig)
    cams, prior = _rig_cameras(data, rig_path)
    shots = load_targets(args.targets)
    dets = detect_shots(shots, image_loader(None))
    poses = solve_extrinsics(cams, shots, dets, prior)
    for ref, p in sorted(poses.items()):
        rigio.set_extrinsics(data, ref[0], ref[1], p.T_base_cam)
    rigio.write_rig(data, args.out)
    for ref, p in sorted(poses.items()):
        xyz, rpy = rigio.body_xyz_rpy(p.T_base_cam)
        via = f", chained through {', '.join(p.chained)}" if p.chained else ""
        print(f"{ref[0]}/{ref[1]}: xyz [{', '.join(f'{x:.4f}' for x in xyz)}] m, rpy [{', '.join(f'{x:.3f}' for x in rpy)}] "
              f"deg; residual RMS {p.rms_px:.3f} px over {p.n_points} corners ({', '.join(p.shots)}{via})")
    print(f"wrote {args.out}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from edge.calibration import rigio
    from edge.calibration.check import image_loader
    from edge.calibration.extrinsics import check_against_targets, detect_shots, load_targets

    data, rig_path = rigio.load_rig_data(args.rig)
    cams, poses = _rig_cameras(data, rig_path)
    shots = load_targets(args.targets)
    dets = detect_shots(shots, image_loader(args.bag))
    rows = check_against_targets(cams, poses, shots, dets, args.max_px)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            verdict = "ok" if r["ok"] else "OUT OF ALIGNMENT: recalibrate its extrinsics (edge calibrate extrinsics)"
            print(f"{r['camera']}: RMS {r['rms_px']:.2f} px through the rig (a fresh solve: {r['solved_rms_px']:.2f} px, "
                  f"moves it {r['rotation_deg']:.2f} deg / {r['translation_m'] * 100:.1f} cm): {verdict}")
    return 0 if all(r["ok"] for r in rows) else 1


# ---------------------------------------------------------------- import / export

def _import(args: argparse.Namespace) -> int:
    from edge.calibration import rigio
    from edge.calibration.formats import FormatError, read_camchain, read_camera_info

    data, _ = rigio.load_rig_data(args.rig)
    names = list(args.as_)
    done = []
    for f in args.files:
        text = Path(f).read_text(encoding="utf-8") if Path(f).exists() else ""
        if "cam0:" in text:
            chain = read_camchain(f)
            prev_ref, prev_T = None, None
            for i, cal in enumerate(chain):
                ref = rigio.ref_for(cal, names.pop(0) if names else None)
                rigio.set_intrinsics(data, *ref, cal)
                if i == 0:  # the chain is anchored on cam0's pose in the base rig
                    T = rigio.camera_pose(data, *ref)
                else:
                    T = prev_T @ np.linalg.inv(cal.T_cn_cnm1)
                    rigio.set_extrinsics(data, *ref, T)
                prev_ref, prev_T = ref, T
                done.append(f"{ref[0]}/{ref[1]} ({cal.model}{', pose from T_cn_cnm1' if i else ''})")
        else:
            if not Path(f).exists():
                raise FormatError(f"{f}: file not found")
            cal = read_camera_info(f)
            ref = rigio.ref_for(cal, names.pop(0) if names else None)
            rigio.set_intrinsics(data, *ref, cal)
            done.append(f"{ref[0]}/{ref[1]} ({cal.model})")
    if names:
        raise CalibrationError(f"more --as names than cameras in the files ({', '.join(names)} left over)")
    rigio.write_rig(data, args.out)
    print(f"imported {', '.join(done)}; wrote {args.out} (validated)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from edge.calibration import rigio
    from edge.calibration.formats import camchain_dict, dump_yaml, write_camera_info, write_text_atomic

    data, _ = rigio.load_rig_data(args.rig)
    refs = [rigio.parse_ref(c) for c in args.cameras] if args.cameras else rigio.all_cameras(data)
    out = Path(args.out)
    if args.format == "kalibr":
        chain = [(rigio.rig_camera(data, *r), rigio.camera_pose(data, *r)) for r in refs]
        write_text_atomic(out, dump_yaml(camchain_dict(chain)))
        print(f"wrote {out} ({len(chain)} cameras, chained T_cn_cnm1)")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for r in refs:
        path = out / f"{r[0]}_{r[1]}.yaml"
        write_camera_info(rigio.rig_camera(data, *r), path)
        print(f"wrote {path}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from edge.calibration.boards import parse_board
    from edge.calibration.intrinsics import normalize_model
    from edge.calibration.synthetic import fisheye_truth, pinhole_truth, render_views, write_rendered

    model = normalize_model(args.model)
    board = parse_board(args.board, args.square)
    cam = fisheye_truth() if model == "equidistant" else pinhole_truth()
    rs = render_views(cam, board, args.views, args.seed, args.noise)
    write_rendered(rs, Path(args.out))
    print(f"wrote {args.views} {model} views ({cam.width}x{cam.height}) and truth.yaml to {args.out}")
    return 0
