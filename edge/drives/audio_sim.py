"""Microphone-array audio: road noise plus sirens and horns propagated from moving sources.

Each microphone hears the source signal delayed by its own distance / speed of sound and attenuated as 1/r,
so inter-channel time differences carry the direction (what GCC-PHAT recovers downstream).
"""

from __future__ import annotations

import math

import numpy as np

from edge.drives.world import World
from edge.sensors.rig import MicrophoneArray

SPEED_OF_SOUND = 343.0
FULL_SCALE = 32767.0


def siren_wave(t: np.ndarray) -> np.ndarray:
    """A 'wail' siren: 650..1550 Hz sweep every 4 s, with odd harmonics (a buzzy horn driver)."""
    period = 4.0
    f = 650.0 + 900.0 * (0.5 - 0.5 * np.cos(2 * math.pi * t / period))
    # Integral of f: closed form keeps the phase continuous at any sample rate.
    phase = 2 * math.pi * (650.0 * t + 450.0 * (t - period / (2 * math.pi) * np.sin(2 * math.pi * t / period)))
    return 0.7 * np.sin(phase) + 0.2 * np.sin(3 * phase) + 0.1 * np.sin(5 * phase)


def horn_wave(t: np.ndarray) -> np.ndarray:
    """A dual-tone car horn (about 420 and 510 Hz) with harmonics."""
    return sum(a * np.sin(2 * math.pi * f * t) for f, a in ((420, 0.5), (510, 0.4), (840, 0.15), (1020, 0.1)))


class AudioSimulator:
    """Renders any time span of the drive's audio: (channels, samples) int16, continuous across calls."""

    def __init__(self, world: World, mics: MicrophoneArray, seed: int) -> None:
        self.world, self.mics = world, mics
        self.fs = mics.sample_rate_hz
        rng = np.random.default_rng((seed, 77))
        n_low = int(world.duration * 400) + 8
        # Road and wind noise: slow and medium-rate random sequences interpolated per sample (continuous).
        self._low = rng.normal(0, 1, (len(mics.positions), n_low))
        self._mid = rng.normal(0, 1, (len(mics.positions), int(world.duration * 3000) + 8))
        self._rng = np.random.default_rng((seed, 78))

    def _ego_at(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        e = self.world.ego
        return np.interp(t, e.times, e.x), np.interp(t, e.times, e.y), np.interp(t, e.times, e.yaw)

    def render(self, t0: float, n: int) -> np.ndarray:
        t = t0 + np.arange(n) / self.fs
        speed = np.abs(np.interp(t, self.world.ego.times, self.world.ego.v))
        low = np.stack([np.interp(t * 400, np.arange(self._low.shape[1]), ch) for ch in self._low])
        mid = np.stack([np.interp(t * 3000, np.arange(self._mid.shape[1]), ch) for ch in self._mid])
        out = (0.004 + 0.006 * speed) * (1.5 * low + 0.6 * mid) + 0.002 * self._rng.normal(0, 1, (len(low), n))
        active = [e for e in self.world.audio_events if e[1] - 0.5 < t[-1] and e[2] + 0.5 > t[0]]
        if active:
            ex, ey, eyaw = self._ego_at(t)
            c, s = np.cos(eyaw), np.sin(eyaw)
            for kind, start, end, actor_id in active:
                actor = self.world.actor(actor_id)
                src = actor.positions(t)
                wave = siren_wave if kind == "siren" else horn_wave
                level = 4.0 if kind == "siren" else 1.5
                for m, (mx, my, _) in enumerate(self.mics.positions):
                    px, py = ex + c * mx - s * my, ey + s * mx + c * my
                    d = np.hypot(src[:, 0] - px, src[:, 1] - py)
                    emit = t - d / SPEED_OF_SOUND
                    gate = np.clip((emit - start) / 0.05, 0, 1) * np.clip((end - emit) / 0.05, 0, 1)
                    out[m] += level * gate * wave(emit) / np.maximum(d, 1.0)
        return np.clip(out * FULL_SCALE * 0.5, -FULL_SCALE, FULL_SCALE).astype(np.int16)
