"""The perception stack built from the plugins gives what the code before it gave (issue 11, milestone 2).

tests/data/perception_reference.npz holds the stack's outputs with the shipped models/perception weights on five
cases of one small generated drive (edge.drives.generate: yard-day, seed 11, 1.5 s; frames 10-14, the ones with
an audio window): every modality, the camera at keep 0.5 and 0.25, fisheye alone, ultrasonic alone, a fisheye
camera missing. Recorded per case: the fused BEV classes (all cells), its posterior and each BEV modality's own
(every 8th cell, and per-class sums over the whole grid), every modality's LLM tokens (the camera's every 8th
slot), the audio and camera outputs, and each BEV encoder's features (every 8th cell, per-channel sums) and the
ultrasonic raster. It was first recorded by the code before encoders were built from the plugins (commit 76c7878:
one attribute and one code path per modality, exactly two BEV inputs), and the plugin-built stack matched it; it
was re-recorded, by tests/data/record_perception_reference.py, only when the shipped weights changed (version 3,
fine-tuned on the yard drives), after that recorder had reproduced the first fixture exactly on the old weights,
and when the fisheye and ultrasonic tokens gained their side identity slots (122-126; nothing else moved).

Why a recorded fixture rather than a frozen copy of the old code: the old path is ~200 lines across the stack and
the fusion head; the fixture pins what matters (the numbers the runtime, the report and the QA data read) and
keeps no dead code. Tolerances are tight (float32 noise of a different CPU's kernels), the class ids exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.drives.generate import generate_drive
from edge.drives.sync import SyncConfig, Synchronizer
from edge.encoders import PerceptionStack

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = np.load(ROOT / "tests" / "data" / "perception_reference.npz")
CASES = json.loads(str(REFERENCE["cases"]))  # [frame index, modalities used, camera keep, fisheye camera removed]
TOL = dict(rtol=1e-4, atol=1e-5)


def cells(a: np.ndarray | torch.Tensor, step: int = 8) -> np.ndarray:
    return np.asarray(a)[..., ::step, ::step]


@pytest.fixture(scope="module")
def stack() -> PerceptionStack:
    return PerceptionStack.load(ROOT / "models" / "perception")


@pytest.fixture(scope="module")
def samples(stack: PerceptionStack, tmp_path_factory: pytest.TempPathFactory) -> list:
    bag = tmp_path_factory.mktemp("reference") / "yard"
    generate_drive(bag, 11, 1.5, "yard-day", progress=False)
    return list(Synchronizer(bag, SyncConfig(image_reduce=stack.cfg.image_reduce, ground_truth=False)))


def close(got: np.ndarray | torch.Tensor | float, key: str) -> None:
    np.testing.assert_allclose(np.asarray(got, np.float64), REFERENCE[key].astype(np.float64), err_msg=key, **TOL)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_outputs_equal_the_code_before_the_plugins(stack: PerceptionStack, samples: list, case: int) -> None:
    index, use, keep, drop = CASES[case]
    sample = samples[index]
    if drop:
        sample = sample.with_data(fisheye={**sample.data["fisheye"], drop: None})
    out = stack.run(sample, use, {"camera": keep} if keep is not None else None)
    p = f"c{case}/"
    assert ",".join(out.modalities) == str(REFERENCE[p + "modalities"])
    assert np.array_equal(out.bev_classes, REFERENCE[p + "bev_classes"])
    close(cells(out.bev_probs), p + "bev_probs")
    close(out.bev_probs.sum((1, 2)), p + "bev_sums")
    want_tokens = sorted(k.split("/")[-1] for k in REFERENCE.files if k.startswith(p + "tokens/"))
    assert sorted(out.tokens) == want_tokens
    for name, tokens in out.tokens.items():
        close(tokens[..., ::8] if name == "camera" else tokens, p + f"tokens/{name}")
    assert ("fisheye" in out.alone) == (p + "alone/fisheye" in REFERENCE.files)
    if "fisheye" in out.alone:  # the runtime's witness for the range sensors
        close(cells(out.alone["fisheye"]), p + "alone/fisheye")
        close(out.alone["fisheye"].sum((1, 2)), p + "alone_sums/fisheye")
    for name, extras in out.outputs.items():
        for key, value in extras.items():
            ref = REFERENCE[p + f"{name}/{key}"]
            if ref.dtype.kind == "U":
                assert value == str(ref), (name, key)
            else:
                close(value, p + f"{name}/{key}")
    assert sorted(out.outputs) == sorted({k.split("/")[1] for k in REFERENCE.files
                                          if k.startswith(p) and k.split("/")[1] in ("audio", "camera")})
    for name in ("fisheye", "ultrasonic"):  # the BEV encoders' own outputs
        if name not in use:
            continue
        bev = stack.encoders[name].encode(sample).bev
        close(cells(bev.features[0]), p + f"enc/{name}/bev")
        close(bev.features[0].sum((1, 2)), p + f"enc/{name}/bev_sums")
        if bev.detail is not None:
            close(cells(bev.detail[0], 4), p + f"enc/{name}/detail")
            close(bev.detail[0].sum((1, 2)), p + f"enc/{name}/detail_sums")
