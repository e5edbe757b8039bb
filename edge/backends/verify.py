"""Build-time (and load-time) verification: an engine must reproduce eager PyTorch on a probe input.

Why at load too: the key covers weights, code, shapes and versions, but the comparison costs one call of each and
catches what a key cannot (a miscompiled engine, a TensorRT tactic that misbehaves on this particular device).
"""

from __future__ import annotations

from torch import Tensor

from edge.backends.base import RunFn, Tolerance, VerificationError


def max_abs_errors(got: tuple[Tensor, ...], expected: tuple[Tensor, ...]) -> list[float]:
    return [float((g.detach().to("cpu").double() - e.detach().to("cpu").double()).abs().max()) if e.numel() else 0.0
            for g, e in zip(got, expected)]


def verify(label: str, run: RunFn, probe: tuple[Tensor, ...], expected: tuple[Tensor, ...],
           tolerance: Tolerance) -> list[float]:
    """Run the engine on the probe and compare with the eager outputs; returns the max abs error per output.

    Raises VerificationError naming the module and engine (`label`, e.g. 'fusion: onnxruntime engine') when an
    output's count, shape or values are off."""
    got = run(*probe)
    if len(got) != len(expected):
        raise VerificationError(f"{label} refused: it returns {len(got)} outputs, eager PyTorch {len(expected)}")
    for i, (g, e) in enumerate(zip(got, expected)):
        if tuple(g.shape) != tuple(e.shape):
            raise VerificationError(f"{label} refused: output {i} has shape {tuple(g.shape)}, eager PyTorch "
                                    f"{tuple(e.shape)}")
    errs = max_abs_errors(got, expected)
    for i, (err, e) in enumerate(zip(errs, expected)):
        limit = tolerance.limit(e.float())
        if not err <= limit:  # NaN fails too
            raise VerificationError(f"{label} refused: output {i} differs from eager PyTorch by {err:.3g} "
                                    f"(max abs) on the probe input, more than the {limit:.3g} allowed")
    return errs
