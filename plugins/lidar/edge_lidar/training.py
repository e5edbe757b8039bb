"""Train the LiDAR encoder, and a fusion head over fisheye, ultrasonic and LiDAR, on drives generated on a LiDAR rig.

    python -m edge_lidar.training --drives D1 D2 ... --eval E --rig edge_lidar/rigs/lidar_rig.yaml --out DIR

Why this way: the shipped fisheye and ultrasonic encoders stay as they are (frozen; their features are computed
once per sample), so only the LiDAR encoder and the fusion head learn. The fusion head starts from the shipped one
(BevFusionHead.widened: the LiDAR's columns at zero), so without a LiDAR it starts out as the shipped head; modality
dropout teaches it every subset. DIR receives lidar.safetensors and fusion.safetensors (the core's checkpoint
format: config and module in the metadata), the built-ins' files as links to the shipped ones, and training.json:
the training record and the BEV metrics (edge.perception.metrics) on the held-out drive for the shipped head and the
new one per subset. Not eval.json: that name is the runtime's quality table, written by the core's
`edge eval perception --model DIR --rig RIG --json DIR/eval.json` in its own format (the scheduler reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from edge.drives.sync import SyncConfig, Synchronizer
from edge.encoders.config import BEV_CLASSES
from edge.encoders.stack import PerceptionStack
from edge.modalities.builtin import BUILTINS, FISHEYE, ULTRASONIC
from edge.perception.batches import COARSE_FACTOR
from edge.perception.labels import IGNORE, bev_targets, coarsen
from edge.perception.metrics import BevMetrics, near_mask
from edge.perception.train import TrainConfig, class_weights, lr_at
from edge.sensors.rig import load_rig

from edge_lidar.encoder import LidarEncoder
from edge_lidar.plugin import LIDAR

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "perception"  # the core's, beside this editable checkout
BEV = ("fisheye", "ultrasonic", "lidar")  # the fusion head's inputs, registry order
# which BEV modalities a training sample keeps (modality dropout), with their odds
SUBSETS = ((("fisheye", "ultrasonic", "lidar"), 0.3), (("lidar",), 0.2), (("fisheye", "ultrasonic"), 0.15),
           (("fisheye",), 0.1), (("ultrasonic", "lidar"), 0.1), (("fisheye", "lidar"), 0.1), (("ultrasonic",), 0.05))


@dataclass
class Samples:
    """Per sample: the frozen encoders' features, the LiDAR raster, which were present, the BEV targets."""

    fisheye: np.ndarray  # (N, 24, nx/2, ny/2) float16
    ultrasonic: np.ndarray  # (N, 16, nx/2, ny/2) float16
    raster: np.ndarray  # (N, 3, nx, ny) uint8, the ultrasonic raster (the fusion's detail)
    lidar: np.ndarray  # (N, 4, nx, ny) float16, the pillar raster
    present: np.ndarray  # (N, 3) bool, BEV order
    targets: np.ndarray  # (N, nx, ny) uint8 class ids

    def __len__(self) -> int:
        return len(self.targets)


def collect(drives: list[Path], stack: PerceptionStack, stride: int) -> Samples:
    """Every `stride`-th synchronised frame with BEV ground truth of the drives."""
    cfg, g = stack.cfg, stack.cfg.bev_grid
    enc: LidarEncoder = stack.encoders["lidar"]  # type: ignore[assignment]
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("fisheye", "ultrasonic", "raster", "lidar", "present",
                                                           "targets")}
    zeros = {"fisheye": np.zeros((stack.encoders["fisheye"].bev_channels, g.nx // 2, g.ny // 2), np.float16),
             "ultrasonic": np.zeros((stack.encoders["ultrasonic"].bev_channels, g.nx // 2, g.ny // 2), np.float16)}
    for bag in drives:
        for i, frame in enumerate(Synchronizer(bag, SyncConfig(image_reduce=cfg.image_reduce))):
            gt = frame.ground_truth
            if i % stride or gt is None or gt.bev is None:
                continue
            with torch.no_grad():
                fe = stack.encoders["fisheye"].encode(frame)
                us = stack.encoders["ultrasonic"].encode(frame)
            points = enc.preprocess(frame)
            cols["fisheye"].append(fe.bev.features[0].numpy().astype(np.float16) if fe else zeros["fisheye"])
            cols["ultrasonic"].append(us.bev.features[0].numpy().astype(np.float16) if us else zeros["ultrasonic"])
            cols["raster"].append(us.bev.detail[0].numpy().astype(np.uint8) if us else
                                  np.zeros((3, g.nx, g.ny), np.uint8))
            cols["lidar"].append(enc.pillars(points)[0].numpy().astype(np.float16) if points is not None else
                                 np.zeros((4, g.nx, g.ny), np.float16))
            cols["present"].append(np.array([fe is not None, us is not None, points is not None]))
            cols["targets"].append(bev_targets(gt.bev, cfg))
    return Samples(**{k: np.stack(v) for k, v in cols.items()})


def subsets(rng: np.random.Generator, present: np.ndarray) -> np.ndarray:
    """(B, 3) which modalities each sample keeps: a subset drawn from SUBSETS, of those present; never none."""
    odds = np.array([p for _, p in SUBSETS])
    picks = rng.choice(len(SUBSETS), len(present), p=odds / odds.sum())
    use = np.array([[name in SUBSETS[k][0] for name in BEV] for k in picks]) & present
    empty = ~use.any(1)
    use[empty] = present[empty]
    return use


def head_outputs(stack: PerceptionStack, s: Samples, idx: np.ndarray, use: np.ndarray) -> tuple[Tensor, Tensor]:
    """The fusion head's (coarse, fine) logits for samples `idx` with the modalities `use` (B, 3)."""
    (li,) = stack.encoders["lidar"].features(torch.from_numpy(s.lidar[idx]).float())  # type: ignore[operator]
    flags = [torch.from_numpy(use[:, k].copy()) for k in range(len(BEV))]
    assert stack.fusion is not None
    return stack.fusion.forward_masked(torch.from_numpy(s.fisheye[idx]).float(),
                                       torch.from_numpy(s.ultrasonic[idx]).float(), li,
                                       torch.from_numpy(s.raster[idx]).float(), *flags)


def train(stack: PerceptionStack, s: Samples, steps: int, batch: int, seed: int, log_every: int = 50
          ) -> list[dict[str, float]]:
    """AdamW on the LiDAR encoder and the fusion head (the core's schedule: warm-up then cosine)."""
    cfg = TrainConfig(steps=steps, batch=batch, seed=seed)
    params = [*stack.encoders["lidar"].parameters(), *stack.fusion.parameters()]  # type: ignore[union-attr]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    known = np.flatnonzero((s.targets != IGNORE).any((1, 2)))
    weights = class_weights(s.targets[known])
    history = []
    stack.encoders["lidar"].train()
    stack.fusion.train()  # type: ignore[union-attr]
    for step in range(steps):
        rng = np.random.default_rng((seed, step))
        torch.manual_seed(seed * 1_000_003 + step)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        idx = rng.choice(known, batch)
        coarse, fine = head_outputs(stack, s, idx, subsets(rng, s.present[idx]))
        targets = torch.from_numpy(s.targets[idx].astype(np.int64))
        low = torch.from_numpy(coarsen(s.targets[idx], COARSE_FACTOR).astype(np.int64))
        loss = nn.functional.cross_entropy(fine, targets, weights, ignore_index=IGNORE) + \
            0.5 * nn.functional.cross_entropy(coarse, low, weights, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            history.append({"step": step, "loss": round(float(loss.detach()), 4)})
            print(f"step {step} loss {float(loss.detach()):.4f}", flush=True)
    stack.eval()
    return history


@torch.no_grad()
def evaluate(stack: PerceptionStack, shipped: PerceptionStack, s: Samples, batch: int = 16
             ) -> dict[str, dict[str, object]]:
    """BEV metrics on `s`: the shipped head over fisheye + ultrasonic, and the new one for each subset."""
    near = near_mask(stack.cfg, stack.footprint)
    runs = {"shipped fisheye+ultrasonic": None, "fisheye+ultrasonic": (1, 1, 0), "lidar": (0, 0, 1),
            "fisheye+ultrasonic+lidar": (1, 1, 1), "fisheye+lidar": (1, 0, 1)}
    out = {}
    for name, mask in runs.items():
        metrics = BevMetrics(near)
        for start in range(0, len(s), batch):
            idx = np.arange(start, min(start + batch, len(s)))
            if mask is None:
                assert shipped.fusion is not None
                fine = shipped.fusion.forward_masked(
                    torch.from_numpy(s.fisheye[idx]).float(), torch.from_numpy(s.ultrasonic[idx]).float(),
                    torch.from_numpy(s.raster[idx]).float(), torch.from_numpy(s.present[idx, 0].copy()),
                    torch.from_numpy(s.present[idx, 1].copy()))[1]
            else:
                use = s.present[idx] & np.array(mask, bool)
                fine = head_outputs(stack, s, idx, use)[1]
            metrics.add(s.targets[idx], fine.argmax(1).numpy().astype(np.uint8))
        out[name] = metrics.summary()
    return out


def save(stack: PerceptionStack, out: Path, shipped: Path, extra: dict[str, str]) -> None:
    """lidar.safetensors and fusion.safetensors as PerceptionStack.save writes them; links to the shipped
    built-ins' files, so that PerceptionStack.load(out) with the installed plugins finds every module."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {"config": stack.cfg.to_json(), "classes": json.dumps(BEV_CLASSES), **extra}
    for name in ("lidar", "fusion"):
        sd = {k: v.detach().contiguous().clone() for k, v in stack.module(name).state_dict().items()}
        save_file(sd, str(out / stack.weights_file(name)), metadata={**meta, "module": name})
    for plugin in BUILTINS:
        link = out / plugin.weights
        if not link.exists():
            link.symlink_to(os.path.relpath(shipped / plugin.weights, out))


def start_fusion(shipped: PerceptionStack, stack: PerceptionStack) -> None:
    """`stack`'s fusion head (fisheye, ultrasonic, LiDAR) from `shipped`'s (fisheye, ultrasonic), widened by the
    core (edge.encoders.fusion.BevFusionHead.widened): without the LiDAR it gives the shipped head's outputs."""
    assert stack.fusion is not None and shipped.fusion is not None and stack.fusion.names == BEV
    stack.fusion.load_state_dict(stack.fusion.widened(shipped.fusion.state_dict(), shipped.fusion.names))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--drives", nargs="+", type=Path, required=True, help="training bags (generated on the rig)")
    p.add_argument("--eval", nargs="+", type=Path, required=True, help="held-out bags")
    p.add_argument("--rig", type=Path, required=True, help="the rig the drives were generated on (with a LiDAR)")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--shipped", type=Path, default=SHIPPED, help=f"the core's model directory [{SHIPPED}]")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--stride", type=int, default=2, help="use every N-th synchronised frame [2]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rig = load_rig(args.rig)
    shipped = PerceptionStack.load(args.shipped, rig=rig, modules=("fisheye", "ultrasonic", "fusion"),
                                   plugins=(FISHEYE, ULTRASONIC))
    stack = PerceptionStack(shipped.cfg, rig, plugins=(FISHEYE, ULTRASONIC, LIDAR))
    for name in ("fisheye", "ultrasonic"):
        stack.module(name).load_state_dict(shipped.module(name).state_dict())
    start_fusion(shipped, stack)
    stack.eval()
    started = time.time()
    data = collect(args.drives, stack, args.stride)
    held = collect(args.eval, stack, args.stride)
    print(f"{len(data)} training and {len(held)} held-out samples in {time.time() - started:.0f} s", flush=True)
    history = train(stack, data, args.steps, args.batch, args.seed)
    result = evaluate(stack, shipped, held)
    provenance = {"drives": [str(d) for d in args.drives], "eval": [str(d) for d in args.eval], "rig": str(args.rig),
                  "steps": args.steps, "batch": args.batch, "stride": args.stride, "seed": args.seed,
                  "samples": len(data), "held_out": len(held), "wall_s": round(time.time() - started),
                  "history": history}
    save(stack, args.out, args.shipped, {"training": json.dumps(provenance)})
    (args.out / "training.json").write_text(json.dumps({"training": provenance, "held_out": result}, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
