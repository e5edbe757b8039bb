"""Record tests/data/perception_reference.npz: the perception stack's outputs on the five cases of
tests/test_stack_reference.py, with the shipped models/perception weights.

Re-record only when the outputs are meant to change (new shipped weights), never to make a refactor pass:
`.venv/bin/python tests/data/record_perception_reference.py`, and say in the commit why the numbers moved.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from edge.drives.generate import generate_drive  # noqa: E402
from edge.drives.sync import SyncConfig, Synchronizer  # noqa: E402
from edge.encoders import PerceptionStack  # noqa: E402
from test_stack_reference import CASES, cells  # noqa: E402  (the cases the test replays)


def record(out: Path) -> None:
    stack = PerceptionStack.load(ROOT / "models" / "perception")
    with tempfile.TemporaryDirectory() as tmp:
        bag = Path(tmp) / "yard"
        generate_drive(bag, 11, 1.5, "yard-day", progress=False)
        samples = list(Synchronizer(bag, SyncConfig(image_reduce=stack.cfg.image_reduce, ground_truth=False)))
    arrays: dict[str, np.ndarray] = {"cases": np.array(json.dumps(CASES))}
    for case, (index, use, keep, drop) in enumerate(CASES):
        sample = samples[index]
        if drop:
            sample = sample.with_data(fisheye={**sample.data["fisheye"], drop: None})
        res = stack.run(sample, use, {"camera": keep} if keep is not None else None)
        p = f"c{case}/"
        arrays[p + "modalities"] = np.array(",".join(res.modalities))
        arrays[p + "bev_classes"] = np.asarray(res.bev_classes)
        arrays[p + "bev_probs"] = cells(res.bev_probs)
        arrays[p + "bev_sums"] = np.asarray(res.bev_probs.sum((1, 2)))
        for name, tokens in res.tokens.items():
            arrays[p + f"tokens/{name}"] = np.asarray(tokens[..., ::8] if name == "camera" else tokens)
        if "fisheye" in res.alone:
            arrays[p + "alone/fisheye"] = cells(res.alone["fisheye"])
            arrays[p + "alone_sums/fisheye"] = np.asarray(res.alone["fisheye"].sum((1, 2)))
        for name, extras in res.outputs.items():
            for key, value in extras.items():
                arrays[p + f"{name}/{key}"] = np.array(value) if isinstance(value, str) else np.asarray(value)
        for name in ("fisheye", "ultrasonic"):
            if name not in use:
                continue
            bev = stack.encoders[name].encode(sample).bev
            arrays[p + f"enc/{name}/bev"] = cells(bev.features[0])
            arrays[p + f"enc/{name}/bev_sums"] = np.asarray(bev.features[0].sum((1, 2)))
            if bev.detail is not None:
                arrays[p + f"enc/{name}/detail"] = cells(bev.detail[0], 4)
                arrays[p + f"enc/{name}/detail_sums"] = np.asarray(bev.detail[0].sum((1, 2)))
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({len(arrays)} arrays)")


if __name__ == "__main__":
    record(ROOT / "tests" / "data" / "perception_reference.npz")
