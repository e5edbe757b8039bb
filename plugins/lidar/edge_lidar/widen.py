"""A fusion head over more BEV modalities, started from a trained one: the weights the two heads share are copied
and the new inputs' columns of the two layers that read the inputs start at zero.

Why: the shipped fusion head was trained over the fisheye and ultrasonic; a head that also takes the LiDAR then
starts out giving exactly the shipped head's output when the LiDAR is absent, and training only has to learn what
the LiDAR adds (tests/test_lidar_training.py checks the equality).
"""

from __future__ import annotations

import torch

from edge.encoders.fusion import BevFusionHead


def input_columns(head: BevFusionHead) -> dict[tuple[str, str], list[int]]:
    """The channels of the head's input tensor: ("feat", name) -> its feature channels, ("flag", name) -> its
    presence flag (edge.encoders.fusion.BevFusionHead.forward_masked's concatenation order)."""
    cols: dict[tuple[str, str], list[int]] = {}
    at = 0
    for i in head.inputs:
        cols[("feat", i.name)] = list(range(at, at + i.channels))
        at += i.channels
    for i in head.inputs:
        cols[("flag", i.name)] = [at]
        at += 1
    return cols


def widen(trained: BevFusionHead, wider: BevFusionHead) -> None:
    """Copy `trained` into `wider` (in place), whose inputs include every one of `trained`'s with the same
    channels. ValueError when they do not."""
    old, new = input_columns(trained), input_columns(wider)
    for key, cols in old.items():
        if key not in new or len(new[key]) != len(cols):
            raise ValueError(f"widen: input {key} of the trained head is not in the wider one with its channels")
    src = [c for key in old for c in old[key]]
    dst = [c for key in old for c in new[key]]
    cin_old, cin_new = len(src), sum(len(c) for c in new.values())
    state = trained.state_dict()
    target = wider.state_dict()
    for name, value in state.items():
        if name not in target:
            raise ValueError(f"widen: the wider head has no {name}")
        if target[name].shape == value.shape:
            target[name] = value.clone()
            continue
        if value.dim() != 4 or value.shape[1] < cin_old:
            raise ValueError(f"widen: {name} {tuple(value.shape)} cannot be mapped to {tuple(target[name].shape)}")
        rest = value.shape[1] - cin_old  # the refine layer also reads the coarse stage's output after the inputs
        w = torch.zeros_like(target[name])
        w[:, dst + list(range(cin_new, cin_new + rest))] = value[:, src + list(range(cin_old, cin_old + rest))]
        target[name] = w
    wider.load_state_dict(target)
