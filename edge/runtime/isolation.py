"""Crash isolation: a modality whose stage raised is detached, retried later, and its span reported.

PerceptionStack.run catches each stage's exception (PerceptionOutput.failures); here the runtime keeps the failing
modality out of the next frames for a back-off that doubles with each consecutive failure (1, 2, 4 ... up to
`max_backoff` frames), then tries it again: a transient fault recovers, a permanent one costs one try per back-off.
Each detached span is a degradation record (kind "detached"); the first failure of each modality a diagnostic line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge.drives.sync import Degradation  # the report's degradation record, one shape for every kind
from edge.runtime.stages import FUSION, fuses


@dataclass
class _Detached:
    error: str
    first_ns: int
    last_ns: int
    frames: int = 1
    fails: int = 1
    skip: int = 1


@dataclass
class Detacher:
    max_backoff: int = 32
    diagnostics: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # closed spans
    _open: dict[str, _Detached] = field(default_factory=dict)
    _reported: set[str] = field(default_factory=set)

    def allowed(self, modalities: tuple[str, ...], stamp_ns: int) -> tuple[str, ...]:
        """The plan's modalities less those still in their back-off (which count this frame as detached)."""
        keep = []
        for m in modalities:
            d = self._open.get(m)
            if d is not None and d.skip > 0:
                d.skip -= 1
                d.last_ns, d.frames = stamp_ns, d.frames + 1
            else:
                keep.append(m)
        return tuple(keep)

    def observe(self, stamp_ns: int, tried: tuple[str, ...], failures: dict[str, str]) -> None:
        """After the frame: open or extend the spans of the stages that raised, close those of the ones that ran."""
        failed = {stage.split("@")[0]: error for stage, error in failures.items()}
        for m, error in failed.items():
            d = self._open.get(m)
            if d is None:
                self._open[m] = _Detached(error, stamp_ns, stamp_ns)
            else:
                d.fails += 1
                d.skip = min(2 ** (d.fails - 1), self.max_backoff)
                d.last_ns, d.error = stamp_ns, error
                d.frames += 1
            if m not in self._reported:
                self._reported.add(m)
                self.diagnostics.append(f"{m}: detached at {stamp_ns} ns after an exception ({error}); the others "
                                        f"continue and {m} is retried (every span is in the report)")
        ran = set(tried) - set(failed)
        if fuses(ran):  # the fusion head ran too (it is no plan modality: never held out)
            ran.add(FUSION)
        for m in sorted(ran):
            if m not in failed and m in self._open:
                self.records.append(self._record(m, self._open.pop(m)))

    def open_records(self) -> list[dict[str, Any]]:
        """Closed spans and those still open (the drive ended inside them)."""
        return self.records + [self._record(m, d) for m, d in self._open.items()]

    @staticmethod
    def _record(m: str, d: _Detached) -> dict[str, Any]:
        return Degradation("detached", m, d.frames, d.first_ns, d.last_ns,
                           f"left out after an exception ({d.error}); retried with back-off").as_dict()
