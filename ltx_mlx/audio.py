"""Audio in and out of the latent space, without torch/torchaudio.

In: stereo waveform at any rate → windowed-sinc resampling to the VAE's rate (torchaudio's
`sinc_interp_hann`, lowpass width 6, rolloff 0.99) → centred STFT (Hann, reflect padding) →
Slaney mel magnitude → log(clamp(·, 1e-5)) → (B, 2, T, n_mels) → audio VAE encoder.
Out: audio latent → audio VAE decoder → vocoder → waveform (2, N) float32 and its sample rate.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import mlx.core as mx
import numpy as np

LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99


@lru_cache(maxsize=16)
def _sinc_taps(orig: int, new: int) -> tuple[np.ndarray, np.ndarray, int]:
    """For rates divided by their gcd: per output phase p, the first input offset and the 2·width + 1 taps.

    Output sample j = n·new + p sits at input position j·orig/new; inputs farther than `width` samples
    fall outside the Hann window (|t| ≥ 6), so only those taps are kept, whatever orig/new is.
    """
    base = min(orig, new) * ROLLOFF
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig / base)
    phase = np.arange(new)
    offset = phase * orig // new
    m = np.arange(-width, width + 1)
    t = ((offset[:, None] + m[None, :]) / orig - phase[:, None] / new) * base
    window = np.cos(np.clip(t, -LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH) * np.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
    return offset, (np.sinc(t) * window * base / orig).astype(np.float32), width


def resample(waveform: mx.array, orig_rate: int, new_rate: int) -> mx.array:
    """Band-limited (Hann-windowed sinc) resampling along the last axis; output length ceil(N · new / orig).

    The ceiling is taken of N · new / orig rounded to float32, as torchaudio does: past a few seconds at
    44.1 kHz that rounding sometimes lands on the integer below, and the reference's output is one sample shorter.
    """
    if int(orig_rate) != orig_rate or int(new_rate) != new_rate or orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive integers, got {orig_rate} → {new_rate}")
    if orig_rate == new_rate:
        return waveform
    g = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // g, int(new_rate) // g
    offset, taps, width = _sinc_taps(orig, new)
    lead, N = waveform.shape[:-1], waveform.shape[-1]
    n_out = math.ceil(np.float32(new * N / orig))
    frames = -(-n_out // new)
    x = mx.pad(waveform.reshape(-1, N).astype(mx.float32), [(0, 0), (width, width + 1)])
    centre = (np.arange(frames)[:, None] * orig + offset[None, :]).reshape(-1)[:n_out] + width
    taps = np.tile(taps, (frames, 1))[:n_out]
    y = sum(mx.take(x, mx.array(centre + m), axis=1) * mx.array(taps[:, m + width])
            for m in range(-width, width + 1))
    return y.reshape(*lead, n_out).astype(waveform.dtype)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    logstep = math.log(6.4) / 27.0
    return np.where(f < 1000.0, f * 3.0 / 200.0, 15.0 + np.log(np.maximum(f, 1e-12) / 1000.0) / logstep)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    logstep = math.log(6.4) / 27.0
    return np.where(m < 15.0, m * 200.0 / 3.0, 1000.0 * np.exp(logstep * (m - 15.0)))


@lru_cache(maxsize=8)
def slaney_mel_filters(n_freqs: int, sample_rate: int, f_min: float, f_max: float, n_mels: int) -> np.ndarray:
    """(n_freqs, n_mels) Slaney-scale triangles with Slaney (area) normalisation."""
    freqs = np.linspace(0, sample_rate // 2, n_freqs)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2))
    rise = (freqs[:, None] - edges[None, :-2]) / np.diff(edges)[None, :-1]
    fall = (edges[None, 2:] - freqs[:, None]) / np.diff(edges)[None, 1:]
    triangles = np.maximum(0.0, np.minimum(rise, fall))
    return (triangles * (2.0 / (edges[2:] - edges[:-2]))[None, :]).astype(np.float32)


def stft_magnitude(x: mx.array, n_fft: int, hop_length: int) -> mx.array:
    """|STFT| of (..., N), centred with reflect padding and a periodic Hann window → (..., frames, n_fft/2 + 1)."""
    half = n_fft // 2
    N = x.shape[-1]
    if N <= half:
        raise ValueError(f"audio too short for the mel front end: {N} samples after resampling, need more "
                         f"than {half}")
    lead = x.shape[:-1]
    x = x.reshape(-1, N)
    x = mx.concatenate([x[:, 1: half + 1][:, ::-1], x, x[:, N - half - 1: N - 1][:, ::-1]], axis=1)
    rows, L = x.shape
    frames = mx.as_strided(x, (rows, (L - n_fft) // hop_length + 1, n_fft), (L, hop_length, 1))
    window = mx.array((0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32))
    spec = mx.abs(mx.fft.rfft(frames * window, axis=-1))
    return spec.reshape(*lead, *spec.shape[-2:])


def as_stereo(waveform) -> mx.array:
    """(batch, channels, samples) or (channels, samples) or (samples,) → (batch, 2, samples) float32."""
    x = mx.array(waveform) if not isinstance(waveform, mx.array) else waveform
    if x.ndim == 1:
        x = x[None]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[1] not in (1, 2):
        raise ValueError(f"audio must be (channels, samples) or (batch, channels, samples) with 1 or 2 channels "
                         f"(mono or stereo), got shape {tuple(np.shape(waveform))}; mix it down to stereo first")
    if x.shape[1] == 1:
        warnings.warn("mono audio given: the LTX-2 audio VAE is stereo only, so the channel is duplicated into "
                      "left and right", stacklevel=3)
        x = mx.concatenate([x, x], axis=1)
    return x.astype(mx.float32)


class AudioProcessor:
    """Waveform → log-mel front end of the audio VAE (its rate, hop, FFT size and mel bins from the config)."""

    def __init__(self, sample_rate: int, mel_bins: int, hop_length: int, n_fft: int):
        if not mel_bins:
            raise ValueError("the audio VAE config gives no mel_bins (ddconfig.mel_bins / preprocessing.mel."
                             "n_mel_channels / variables.mel_bins)")
        self.sample_rate, self.mel_bins, self.hop_length, self.n_fft = sample_rate, mel_bins, hop_length, n_fft

    @classmethod
    def from_config(cls, cfg) -> "AudioProcessor":
        """From an `AudioVAEConfig`."""
        return cls(cfg.sampling_rate, cfg.mel_bins, cfg.hop_length, cfg.n_fft)

    def __call__(self, waveform, sample_rate: int) -> mx.array:
        """Waveform (see `as_stereo`) at `sample_rate` → log-mel (B, 2, 1 + N'//hop, mel_bins) float32."""
        x = resample(as_stereo(waveform), sample_rate, self.sample_rate)
        mag = stft_magnitude(x, self.n_fft, self.hop_length)
        fb = slaney_mel_filters(self.n_fft // 2 + 1, self.sample_rate, 0.0, self.sample_rate / 2.0, self.mel_bins)
        return mx.log(mx.maximum(mag @ mx.array(fb), 1e-5))


def encode_audio(waveform, sample_rate: int, encoder) -> mx.array:
    """Waveform → normalised audio latent (B, z, T', F') with an `AudioEncoder`."""
    mel = AudioProcessor.from_config(encoder.config)(waveform, sample_rate)
    return encoder(mel.astype(encoder.conv_in.conv.weight.dtype))


def decode_audio(latent: mx.array, decoder, vocoder) -> tuple[mx.array, int]:
    """Audio latent (1, z, T, F) → (waveform (2, N) float32, sample rate); a batch keeps its leading axis."""
    wav = vocoder(decoder(latent)).astype(mx.float32)
    if wav.shape[0] == 1:
        wav = wav[0]
    return wav, vocoder.output_sampling_rate
