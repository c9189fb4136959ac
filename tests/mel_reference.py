"""The reference's mel front end, written independently in numpy/scipy (float64), and a torchaudio stand-in built on it.

The reference (ltx_core.model.audio_vae.ops.AudioProcessor) computes
    torchaudio.functional.resample(waveform, rate, target)           # defaults: sinc_interp_hann, width 6, rolloff 0.99
    torchaudio.transforms.MelSpectrogram(**its own arguments)(x)      # centred reflect-padded STFT, |.|, Slaney mel
    log(clamp(mel, 1e-5)), then (B, C, mels, T) -> (B, C, T, mels)
torchaudio cannot load beside the test torch, so the functions below restate what those two torchaudio calls
compute, from their definitions (not from ltx_mlx.audio), and `TORCHAUDIO` exposes them under torchaudio's
names and signatures so that the reference's own AudioProcessor can run on them: its arguments are then read
from the reference itself, and an option the stand-in does not implement is refused rather than ignored.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import scipy.signal

LOG_FLOOR = 1e-5


# ---------------------------------------------------------------------------------------------- resampling


def sinc_kernels(orig: int, new: int, lowpass_filter_width: int = 6, rolloff: float = 0.99):
    """torchaudio's polyphase filter bank for rates already divided by their gcd: (new, 2·width + orig) taps.

    Row p holds the weights of inputs n·orig − width + k (k = 0 … 2·width + orig − 1) for output n·new + p:
    a windowed sinc cut at rolloff × the lower Nyquist, its argument clamped to ±width before both the sinc
    and the Hann window are evaluated (so the taps beyond it are sinc(width)·cos²(π/2), zero).
    """
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    k = np.arange(-width, width + orig) / orig
    t = (k[None, :] - np.arange(new)[:, None] / new) * base
    t = np.clip(t, -lowpass_filter_width, lowpass_filter_width)
    window = np.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    return np.sinc(t) * window * base / orig, width


def resampled_length(n: int, orig: int, new: int) -> int:
    # torchaudio takes ceil(new·n/orig) of a float32 tensor: for long inputs the float32 rounding can land on
    # the integer below, one sample shorter than the exact ceiling (e.g. 180697 samples at 44.1 kHz → 16 kHz).
    return int(math.ceil(np.float32(new * n / orig)))


def resample(x: np.ndarray, orig_freq: int, new_freq: int, lowpass_filter_width: int = 6,
             rolloff: float = 0.99) -> np.ndarray:
    """(..., N) float64: zero-pad (width, width + orig), strided correlation with every phase, interleave, crop."""
    if orig_freq == new_freq:
        return np.asarray(x, dtype=np.float64)
    g = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // g, int(new_freq) // g
    kernels, width = sinc_kernels(orig, new, lowpass_filter_width, rolloff)
    x = np.asarray(x, dtype=np.float64)
    lead, n = x.shape[:-1], x.shape[-1]
    padded = np.pad(x.reshape(-1, n), [(0, 0), (width, width + orig)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernels.shape[1], axis=1)[:, ::orig]
    y = np.einsum("rsk,pk->rsp", windows, kernels).reshape(padded.shape[0], -1)
    return y[:, :resampled_length(n, orig, new)].reshape(*lead, -1)


def direct_resample(x: np.ndarray, orig: int, new: int, lowpass_filter_width: int = 6,
                    rolloff: float = 0.99) -> np.ndarray:
    """The defining sum y[j] = Σ_i x[i]·h(i/orig − j/new) over every input sample (small inputs only)."""
    base = min(orig, new) * rolloff
    t = base * (np.arange(len(x))[None, :] / orig - np.arange(resampled_length(len(x), orig, new))[:, None] / new)
    t = np.clip(t, -lowpass_filter_width, lowpass_filter_width)
    h = np.sinc(t) * np.cos(np.pi * t / (2 * lowpass_filter_width)) ** 2 * base / orig
    return h @ np.asarray(x, dtype=np.float64)


# ---------------------------------------------------------------------------------------------- mel spectrogram


def hz_to_mel(f: float) -> float:
    """Slaney's scale: linear below 1 kHz (3 mels / 200 Hz), logarithmic above (27 mels per factor 6.4)."""
    return f / (200.0 / 3.0) if f < 1000.0 else 15.0 + math.log(f / 1000.0) / (math.log(6.4) / 27.0)


def mel_to_hz(m: float) -> float:
    return m * (200.0 / 3.0) if m < 15.0 else 1000.0 * math.exp((m - 15.0) * math.log(6.4) / 27.0)


def slaney_mel_filterbank(n_freqs: int, sample_rate: int, f_max: float, n_mels: int,
                          f_min: float = 0.0) -> np.ndarray:
    """(n_mels, n_freqs) Slaney-scale triangles over the bins linspace(0, sr // 2), each scaled to unit area."""
    lo_mel, hi_mel = hz_to_mel(f_min), hz_to_mel(f_max)
    edges = [mel_to_hz(lo_mel + (hi_mel - lo_mel) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    freqs = [(sample_rate // 2) * j / (n_freqs - 1) for j in range(n_freqs)]
    fb = np.zeros((n_mels, n_freqs))
    for i in range(n_mels):
        lo, centre, hi = edges[i], edges[i + 1], edges[i + 2]
        for j, f in enumerate(freqs):
            if lo <= f <= centre:
                fb[i, j] = (f - lo) / (centre - lo)
            elif centre < f <= hi:
                fb[i, j] = (hi - f) / (hi - centre)
        fb[i] *= 2.0 / (hi - lo)
    return fb


def stft_magnitude(x: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """(..., N) → (..., n_fft // 2 + 1, 1 + N // hop): frame t centred on sample t·hop (reflect padding),
    periodic Hann window as long as the FFT, magnitude of the one-sided spectrum, no normalisation."""
    x = np.asarray(x, dtype=np.float64)
    lead, n = x.shape[:-1], x.shape[-1]
    padded = np.pad(x.reshape(-1, n), [(0, 0), (n_fft // 2, n_fft // 2)], mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=1)[:, ::hop_length]
    spec = np.abs(np.fft.rfft(frames * scipy.signal.get_window("hann", n_fft, fftbins=True), axis=-1))
    return np.swapaxes(spec, -1, -2).reshape(*lead, n_fft // 2 + 1, -1)


def mel_spectrogram(x: np.ndarray, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, f_min: float,
                    f_max: float) -> np.ndarray:
    """(..., N) → (..., n_mels, frames) Slaney-normalised mel magnitude."""
    fb = slaney_mel_filterbank(n_fft // 2 + 1, sample_rate, f_max, n_mels, f_min)
    return np.einsum("mf,...ft->...mt", fb, stft_magnitude(x, n_fft, hop_length))


def log_mel(waveform: np.ndarray, sample_rate: int, target_rate: int, n_mels: int, hop_length: int,
            n_fft: int) -> np.ndarray:
    """What the reference's AudioProcessor.waveform_to_mel computes: (B, C, N) → (B, C, frames, n_mels)."""
    x = resample(waveform, sample_rate, target_rate)
    mel = mel_spectrogram(x, target_rate, n_fft, hop_length, n_mels, 0.0, target_rate / 2.0)
    return np.swapaxes(np.log(np.maximum(mel, LOG_FLOOR)), -1, -2)


# ---------------------------------------------------------------------------------------------- torchaudio stand-in


def _torch_resample(waveform, orig_freq, new_freq, lowpass_filter_width=6, rolloff=0.99,
                    resampling_method="sinc_interp_hann", beta=None):
    import torch

    if resampling_method != "sinc_interp_hann" or beta is not None:
        raise NotImplementedError(f"mel_reference implements sinc_interp_hann only, not {resampling_method}")
    if orig_freq == new_freq:
        return waveform
    y = resample(waveform.detach().cpu().double().numpy(), orig_freq, new_freq, lowpass_filter_width, rolloff)
    return torch.from_numpy(y).to(waveform.dtype)


class _MelSpectrogram:
    """torchaudio.transforms.MelSpectrogram's signature and defaults; what is not implemented is refused."""

    def __init__(self, sample_rate=16000, n_fft=400, win_length=None, hop_length=None, f_min=0.0, f_max=None,
                 pad=0, n_mels=128, window_fn=None, power=2.0, normalized=False, wkwargs=None, center=True,
                 pad_mode="reflect", onesided=None, norm=None, mel_scale="htk"):
        import torch

        supported = dict(win_length=(win_length in (None, n_fft)), pad=(pad == 0),
                         window_fn=(window_fn in (None, torch.hann_window)), power=(power == 1.0),
                         normalized=(normalized is False), wkwargs=(not wkwargs), center=(center is True),
                         pad_mode=(pad_mode == "reflect"), onesided=(onesided in (None, True)),
                         norm=(norm == "slaney"), mel_scale=(mel_scale == "slaney"))
        refused = [k for k, ok in supported.items() if not ok]
        if refused:
            raise NotImplementedError(f"mel_reference's MelSpectrogram does not implement {refused}")
        self.sample_rate, self.n_fft, self.n_mels, self.f_min = sample_rate, n_fft, n_mels, f_min
        self.hop_length = hop_length if hop_length is not None else n_fft // 2
        self.f_max = f_max if f_max is not None else float(sample_rate // 2)

    def __call__(self, waveform):
        import torch

        mel = mel_spectrogram(waveform.detach().cpu().double().numpy(), self.sample_rate, self.n_fft,
                              self.hop_length, self.n_mels, self.f_min, self.f_max)
        return torch.from_numpy(mel).to(waveform.dtype)


TORCHAUDIO = SimpleNamespace(functional=SimpleNamespace(resample=_torch_resample),
                             transforms=SimpleNamespace(MelSpectrogram=_MelSpectrogram))


def use_in_reference(monkeypatch) -> None:
    """Let the reference's AudioProcessor (and so its encode_audio) run on this module instead of torchaudio."""
    from ltx_core.model.audio_vae import ops

    monkeypatch.setattr(ops, "torchaudio", TORCHAUDIO)
