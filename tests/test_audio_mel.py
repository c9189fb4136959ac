"""Mel front end, checked against an independent implementation (scipy STFT + Slaney formula) and closed forms."""

import math

import numpy as np


def slaney_mel_filterbank(n_freqs: int, sample_rate: int, f_max: float, n_mels: int) -> np.ndarray:
    """(n_mels, n_freqs) Slaney-scale, Slaney-normalised triangles, written from the formula, one filter at a time."""

    def hz_to_mel(f):
        return f / (200.0 / 3.0) if f < 1000.0 else 15.0 + math.log(f / 1000.0) / (math.log(6.4) / 27.0)

    def mel_to_hz(m):
        return m * (200.0 / 3.0) if m < 15.0 else 1000.0 * math.exp((m - 15.0) * math.log(6.4) / 27.0)

    top = hz_to_mel(f_max)
    edges = [mel_to_hz(top * i / (n_mels + 1)) for i in range(n_mels + 2)]
    freqs = [sample_rate / 2 * j / (n_freqs - 1) for j in range(n_freqs)]
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
