"""Audio plugin: a 4-microphone window -> log-mel spectra + GCC-PHAT inter-channel delays -> event class
(none / siren / horn), direction (front / left / rear / right) and LLM tokens.

Why both features: log-mel carries *what* (siren wail, horn harmonics), GCC-PHAT carries *where* (time
differences of arrival between microphone pairs, whitened so the loud low-frequency road noise does not dominate).
Features are computed in numpy once per window (they are also what the training cache stores), the network is
small and runs on the features. Training (its own head): the event and the side it comes from (`event_targets`),
half of each batch windows with an event, microphones relabelled (a square array turned by 90 degrees or mirrored)
so every direction is seen with every event, not only where the scenarios put sirens.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from edge.drives.qa import side_of  # the QA templates' rule, so training targets and answers agree
from edge.encoders.base import (ClassScores, Columns, Cost, Diagnostics, EncoderOutput, InputError, ModalityEncoder,
                                TrainingRows, count_macs, n_params)
from edge.encoders.config import AUDIO_EVENTS, DIRECTIONS, PerceptionConfig
from edge.encoders.scene_tokens import AUDIO_TOKENS, audio_tokens
from edge.frames import Frame

N_FFT, HOP, N_MELS, MAX_LAG, SEGMENTS = 512, 320, 32, 20, 12
GCC_BAND_HZ = (300.0, 3000.0)
PAIRS = tuple(combinations(range(4), 2))
FEATURES = ("logmel", "gcc", "gcc_avg")
EVAL_BATCH = 64
Footprint = tuple[float, float, float, float]  # the vehicle body: x_min, x_max, y_min, y_max (Rig.footprint)


def mel_filterbank(rate: int, n_fft: int = N_FFT, n_mels: int = N_MELS, f_lo: float = 100.0, f_hi: float = 8000.0
                   ) -> np.ndarray:
    """(n_mels, n_fft//2+1) triangular filters on the HTK mel scale."""
    def mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    edges = hz(np.linspace(mel(f_lo), mel(min(f_hi, rate / 2)), n_mels + 2))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
    fb = np.zeros((n_mels, freqs.size), np.float32)
    for m in range(n_mels):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        fb[m] = np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
    return fb


_FB_CACHE: dict[int, np.ndarray] = {}


def audio_features(pcm: np.ndarray, rate: int = 16000) -> dict[str, np.ndarray]:
    """(4, N) int16 or float PCM -> {'logmel': (4, 32, T), 'gcc': (6, SEGMENTS, 2*MAX_LAG+1), 'gcc_avg': (6, 41)}."""
    x = np.asarray(pcm)
    if x.ndim != 2 or x.shape[0] != 4:
        raise InputError(f"audio: expected (4 microphones, samples), got shape {x.shape}")
    x = x.astype(np.float32) / (32768.0 if x.dtype == np.int16 else 1.0)
    if not np.isfinite(x).all():
        raise InputError("audio: window contains NaN or inf")
    n_frames = 1 + (x.shape[1] - N_FFT) // HOP
    if n_frames < SEGMENTS:
        raise InputError(f"audio: window of {x.shape[1]} samples is too short ({SEGMENTS * HOP + N_FFT} needed)")
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n_frames)[:, None]
    spec = np.fft.rfft(x[:, idx] * np.hanning(N_FFT).astype(np.float32), axis=-1)        # (4, T, F)
    fb = _FB_CACHE.setdefault(rate, mel_filterbank(rate))
    power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
    logmel = np.log(power @ fb.T + 1e-6).transpose(0, 2, 1)                                # (4, 32, T)
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / rate)
    band = (freqs >= GCC_BAND_HZ[0]) & (freqs <= GCC_BAND_HZ[1])
    seg = np.array_split(np.arange(n_frames), SEGMENTS)
    gcc = np.zeros((len(PAIRS), SEGMENTS, 2 * MAX_LAG + 1), np.float32)
    gcc_avg = np.zeros((len(PAIRS), 2 * MAX_LAG + 1), np.float32)
    for p, (i, j) in enumerate(PAIRS):
        cross = spec[i] * np.conj(spec[j]) * band                                          # (T, F)
        segs = np.stack([cross[s].sum(0) for s in seg] + [cross.sum(0)])
        phat = segs / (np.abs(segs) + 1e-9)
        cc = np.fft.irfft(phat, n=N_FFT, axis=-1)
        cc = np.concatenate([cc[:, -MAX_LAG:], cc[:, :MAX_LAG + 1]], axis=-1)             # lags -L..L
        gcc[p], gcc_avg[p] = cc[:-1], cc[-1]
    return {"logmel": logmel.astype(np.float32), "gcc": gcc, "gcc_avg": gcc_avg}


def permute_features(feats: dict[str, np.ndarray], perm: list[int]) -> dict[str, np.ndarray]:
    """Features of the same window with microphones relabelled new[k] = old[perm[k]] (augmentation: with a square
    array a cyclic shift is a 90-degree turn of the scene, a swap a mirror)."""
    out = {"logmel": feats["logmel"][..., perm, :, :]}
    pair_index = {pq: n for n, pq in enumerate(PAIRS)}
    src, flip = [], []
    for a, b in PAIRS:
        i, j = perm[a], perm[b]
        src.append(pair_index[(min(i, j), max(i, j))])
        flip.append(i > j)
    for key in ("gcc", "gcc_avg"):
        f = feats[key]
        parts = [np.flip(f[..., s, :, :] if key == "gcc" else f[..., s, :], -1) if fl else
                 (f[..., s, :, :] if key == "gcc" else f[..., s, :]) for s, fl in zip(src, flip)]
        out[key] = np.stack(parts, axis=-3 if key == "gcc" else -2)
    return out


# Relabelling that turns the scene by +90 degrees (front -> left) and mirrors it (left <-> right), for the
# rig's microphone order FL, FR, RR, RL (calibration/default_rig.yaml).
ROTATE_PERM = [1, 2, 3, 0]
MIRROR_PERM = [1, 0, 3, 2]
MIRROR_DIR = [0, 3, 2, 1]


def _transform_perm(k: int, mirror: bool) -> tuple[list[int], list[int]]:
    """Microphone relabelling and direction map for a k x 90 degree turn, then an optional mirror."""
    perm, dmap = [0, 1, 2, 3], [0, 1, 2, 3]
    for _ in range(k):
        perm = [perm[p] for p in ROTATE_PERM]
        dmap = [(d + 1) % 4 for d in dmap]
    if mirror:
        perm = [perm[p] for p in MIRROR_PERM]
        dmap = [MIRROR_DIR[d] for d in dmap]
    return perm, dmap


def event_targets(events: list[dict[str, Any]] | None, footprint: Footprint) -> tuple[int, int]:
    """(event id, direction id or -1) of the events sounding at a frame: siren wins over horn; none -> (0, -1)."""
    if not events:
        return 0, -1
    by_class = {e["class"]: e for e in events if e.get("class") in AUDIO_EVENTS}
    for name in ("siren", "horn"):
        if name in by_class:
            e = by_class[name]
            return AUDIO_EVENTS.index(name), DIRECTIONS.index(side_of(e["x"], e["y"], footprint))
    return 0, -1


def steering_matrix(mic_xy: np.ndarray, rate: int, n_angles: int = 72, speed: float = 343.0) -> np.ndarray:
    """(pairs, lags, angles) linear-interpolation weights: SRP-PHAT(angle) = sum over pairs of the GCC-PHAT value at
    the delay a far-field source at that bearing (around the array centre, counter-clockwise from +x) produces."""
    th = 2 * np.pi * np.arange(n_angles) / n_angles
    u = np.stack([np.cos(th), np.sin(th)], 1)
    lags = np.arange(-MAX_LAG, MAX_LAG + 1)
    w = np.zeros((len(PAIRS), lags.size, n_angles), np.float32)
    for p, (i, j) in enumerate(PAIRS):
        tau = np.clip((mic_xy[j] - mic_xy[i]) @ u.T / speed * rate, -MAX_LAG, MAX_LAG)  # peak lag = t_i - t_j
        lo = np.floor(tau).astype(int)
        frac = tau - lo
        for a in range(n_angles):
            w[p, lo[a] + MAX_LAG, a] += 1 - frac[a]
            if lo[a] < MAX_LAG:
                w[p, lo[a] + MAX_LAG + 1, a] += frac[a]
    return w


def build(cfg: PerceptionConfig, rig: Any, table_cache: str | None = None) -> AudioEncoder:
    """The audio plugin's encoder factory (edge.modalities.builtin.AUDIO.encoder): the rig's microphones, centred."""
    mic = np.asarray(rig.microphones.positions)[:, :2]
    return AudioEncoder(cfg, mic - mic.mean(0), rig.footprint())


class AudioEncoder(ModalityEncoder):
    """Audio features -> event logits (B, 3), direction logits (B, 4), tokens (B, n_tokens, d_enc).

    Direction uses a fixed SRP-PHAT layer (steered response over 72 bearings from the GCC-PHAT of every time
    segment, the array geometry built in) pooled over time by attention from the event features, so the
    segments where the siren or horn is actually audible decide where it is.

    Network part for engines: `forward` on the numpy features (the FFTs stay in numpy, as in training).
    `footprint` (the vehicle body) places an event's side in its training targets."""

    name = "audio"
    head_batch = 64  # windows per training step (cheap)

    def __init__(self, cfg: PerceptionConfig, mic_xy: np.ndarray | None = None, footprint: Footprint | None = None
                 ) -> None:
        super().__init__()
        self.cfg = cfg
        self.footprint = footprint
        if mic_xy is None:  # the default rig's square array (FL, FR, RR, RL), 0.30 m side
            mic_xy = np.array([[0.15, 0.15], [0.15, -0.15], [-0.15, -0.15], [-0.15, 0.15]])
        self.register_buffer("steer", torch.from_numpy(steering_matrix(np.asarray(mic_xy, np.float64)[:, :2],
                                                                       cfg.audio_rate)), persistent=False)
        n_ang = self.steer.shape[-1]
        self.seg_attn = nn.Conv1d(128, 1, 1)
        self.srp_head = nn.Sequential(nn.Conv1d(2, 16, 5, padding=2, padding_mode="circular"), nn.ReLU(inplace=True),
                                      nn.Conv1d(16, 16, 5, padding=2, padding_mode="circular"), nn.ReLU(inplace=True))
        self.srp_out = nn.Linear(16 * n_ang, 64)
        self.spec = nn.Sequential(
            nn.Conv2d(4, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d((2, 1)),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d((2, 1)),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True))
        n_lag = 2 * MAX_LAG + 1
        self.gcc = nn.Sequential(nn.Linear(len(PAIRS) * n_lag, 96), nn.ReLU(inplace=True), nn.Linear(96, 64))
        self.gcc_avg = nn.Sequential(nn.Linear(len(PAIRS) * n_lag, 96), nn.ReLU(inplace=True), nn.Linear(96, 64))
        self.temporal = nn.Sequential(
            nn.Conv1d(32 * (N_MELS // 4) // 4 + 64, 128, 3, padding=1), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
            nn.Conv1d(128, 128, 3, padding=1), nn.BatchNorm1d(128), nn.ReLU(inplace=True))
        self.event_head = nn.Linear(256, len(AUDIO_EVENTS))
        self.dir_head = nn.Sequential(nn.Linear(256 + 64 + 64, 128), nn.ReLU(inplace=True), nn.Linear(128, len(DIRECTIONS)))
        self.token_proj = nn.Linear(128, cfg.d_enc)
        self.pos = nn.Parameter(torch.randn(1, cfg.tokens["audio"], cfg.d_enc) * 0.02)
        self.register_buffer("mean", torch.zeros(1), persistent=True)   # log-mel normalisation from training data
        self.register_buffer("std", torch.ones(1), persistent=True)

    @property
    def n_tokens(self) -> int:
        """LLM tokens per window (edge/encoders/scene_tokens.py: the event and direction posteriors)."""
        return AUDIO_TOKENS

    def preprocess(self, sample: Frame, diag: Diagnostics | None = None) -> dict[str, np.ndarray] | None:
        pcm = sample.get("audio")
        if pcm is None:
            return None
        return audio_features(pcm, self.cfg.audio_rate)

    def forward(self, logmel: Tensor, gcc: Tensor, gcc_avg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """logmel (B, 4, 32, T), gcc (B, 6, S, 41), gcc_avg (B, 6, 41) -> (event logits, direction logits, tokens)."""
        s = gcc.shape[2]
        x = self.spec((logmel - self.mean) / self.std)                       # (B, 32, 8, T)
        x = nn.functional.adaptive_avg_pool2d(x, (2, s)).flatten(1, 2)          # (B, 64, S)
        g = self.gcc(gcc.permute(0, 2, 1, 3).flatten(2)).transpose(1, 2)        # (B, 64, S)
        h = self.temporal(torch.cat([x, g], 1))                                 # (B, 128, S)
        pooled = torch.cat([h.mean(-1), h.amax(-1)], 1)
        event = self.event_head(pooled)
        srp_seg = torch.einsum("bpsl,pla->bsa", gcc, self.steer)                # (B, S, A)
        srp_avg = torch.einsum("bpl,pla->ba", gcc_avg, self.steer)              # (B, A)
        att = torch.softmax(self.seg_attn(h), -1)                               # (B, 1, S)
        srp = torch.cat([(att @ srp_seg), srp_avg[:, None]], 1)                 # (B, 2, A)
        srp_feat = self.srp_out(self.srp_head(srp).flatten(1))
        direction = self.dir_head(torch.cat([pooled, self.gcc_avg(gcc_avg.flatten(1)), srp_feat], 1))
        tok = nn.functional.adaptive_avg_pool1d(h, self.pos.shape[1]).transpose(1, 2)
        return event, direction, self.token_proj(tok) + self.pos

    def encode(self, sample: Frame, diag: Diagnostics | None = None, setting: float | None = None
               ) -> EncoderOutput | None:
        """One frame -> tokens and extras {'event', 'event_prob', 'direction', 'direction_prob'}, or None without
        audio."""
        feats = self.preprocess(sample, diag)
        if feats is None:
            return None
        t = {k: torch.from_numpy(v)[None] for k, v in feats.items()}
        with torch.no_grad():
            ev, dr, tok = self.run_network("", self, t["logmel"], t["gcc"], t["gcc_avg"])
        pe, pd = torch.softmax(ev, -1)[0], torch.softmax(dr, -1)[0]
        return EncoderOutput(audio_tokens(pe.numpy(), pd.numpy(), self.cfg.d_enc)[None], extras={
            "event": AUDIO_EVENTS[int(pe.argmax())], "event_prob": float(pe.max()),
            "direction": DIRECTIONS[int(pd.argmax())], "direction_prob": float(pd.max())})

    def training_sample(self, sample: Frame, diag: Diagnostics | None = None) -> dict[str, np.ndarray]:
        """Its features (float16; a silent window's when absent), whether the window is there, the event and
        direction targets."""
        if self.footprint is None:
            raise InputError("audio: an encoder built without the vehicle footprint has no direction targets")
        feats = self.preprocess(sample, diag)
        present = feats is not None
        if feats is None:
            feats = audio_features(np.zeros((4, int(round(self.cfg.audio_rate * self.cfg.audio_window_s))), np.int16))
        gt = sample.ground_truth
        event, direction = event_targets(gt.audio_events if gt else None, self.footprint)
        return {**{k: feats[k].astype(np.float16) for k in FEATURES}, "present": np.asarray(present),
                "event": np.asarray(event), "direction": np.asarray(direction)}

    def init_from_data(self, rows: TrainingRows) -> None:
        """The log-mel normalisation (buffers saved with the weights) from the training windows."""
        idx = np.flatnonzero(rows.columns["present"])
        lm = rows.columns["logmel"][idx].astype(np.float32) if len(idx) else np.zeros(1)
        self.mean.fill_(float(lm.mean()))
        self.std.fill_(float(lm.std() + 1e-3))

    def training_batch(self, columns: Columns, idx: np.ndarray, rng: np.random.Generator | None) -> dict[str, Tensor]:
        """Features and targets of rows `idx`; with `rng`, the microphones relabelled by a random turn and mirror."""
        feats = {k: columns[k][idx].astype(np.float32) for k in FEATURES}
        direction = columns["direction"][idx].copy()
        if rng is not None:
            perm, dmap = _transform_perm(int(rng.integers(0, 4)), bool(rng.integers(0, 2)))
            feats = permute_features(feats, perm)
            direction = np.where(direction >= 0, np.asarray(dmap)[np.clip(direction, 0, 3)], -1)
        out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feats.items()}
        out["event"] = torch.from_numpy(columns["event"][idx].astype(np.int64))
        out["direction"] = torch.from_numpy(direction.astype(np.int64))
        return out

    def head_losses(self, rows: TrainingRows, batch: int, rng: np.random.Generator) -> dict[str, Tensor]:
        """Event and direction cross-entropy; half the batch windows with an event (they are rare in drives)."""
        c = rows.columns
        windows = np.flatnonzero(c["present"])
        if not len(windows):
            return {}
        events = windows[c["event"][windows] > 0]
        n_ev = min(len(events), batch // 2)
        idx = np.concatenate([rng.choice(events, n_ev) if n_ev else np.zeros(0, int),
                              rng.choice(windows, batch - n_ev)])
        a = self.training_batch(c, idx, rng)
        event, direction, _ = self(a["logmel"], a["gcc"], a["gcc_avg"])
        out = {"audio_event": nn.functional.cross_entropy(event, a["event"])}
        if bool((a["direction"] >= 0).any()):
            out["audio_dir"] = nn.functional.cross_entropy(direction, a["direction"], ignore_index=-1)
        return out

    def head_scores(self, rows: TrainingRows) -> dict[str, ClassScores | float]:
        windows = np.flatnonzero(rows.columns["present"])
        events, directions = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for start in range(0, len(windows), EVAL_BATCH):
            a = self.training_batch(rows.columns, windows[start:start + EVAL_BATCH], None)
            event, direction, _ = self(a["logmel"], a["gcc"], a["gcc_avg"])
            events.append(event.argmax(1).numpy())
            directions.append(direction.argmax(1).numpy())
        return {"audio_event": ClassScores(AUDIO_EVENTS, rows.columns["event"][windows], np.concatenate(events)),
                "audio_direction": ClassScores(DIRECTIONS, rows.columns["direction"][windows],
                                               np.concatenate(directions))}

    def network_inputs(self, variant: str = "", seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """Features of a seeded noise window of the configured length (real feature statistics, not random ones)."""
        n = int(round(self.cfg.audio_rate * self.cfg.audio_window_s))
        pcm = (np.random.default_rng(seed).normal(0, 2000, (4, n))).astype(np.int16)
        f = audio_features(pcm, self.cfg.audio_rate)
        return tuple(torch.from_numpy(f[k])[None] for k in ("logmel", "gcc", "gcc_avg"))  # type: ignore[return-value]

    def cost(self) -> Cost:
        f = audio_features(np.zeros((4, int(self.cfg.audio_rate * self.cfg.audio_window_s)), np.int16))
        t = {k: torch.from_numpy(v)[None] for k, v in f.items()}
        was = self.training
        self.eval()
        macs = count_macs(self, lambda: self(t["logmel"], t["gcc"], t["gcc_avg"]))
        self.train(was)
        return Cost(n_params(self), macs, self.n_tokens, self.cfg.d_enc)
