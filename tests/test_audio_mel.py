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


import mlx.core as mx
import pytest
import scipy.signal
import torch
from reference import assert_parity, randomize_, save_official_checkpoint, to_mx, to_np

from ltx_mlx.audio import AudioProcessor, as_stereo, decode_audio, encode_audio, resample, slaney_mel_filters, \
    stft_magnitude


def direct_resample(x: np.ndarray, orig: int, new: int) -> np.ndarray:
    """torchaudio's sinc_interp_hann written as its defining sum, in float64, one output sample per row."""
    base = min(orig, new) * 0.99
    n_out = -(-len(x) * new // orig)
    t = base * (np.arange(len(x))[None, :] / orig - np.arange(n_out)[:, None] / new)
    h = np.sinc(t) * np.cos(np.pi * np.clip(t, -6, 6) / 12) ** 2 * base / orig
    return h @ x.astype(np.float64)


def test_slaney_filterbank_matches_the_formula():
    ours = slaney_mel_filters(513, 16000, 0.0, 8000.0, 64)
    ref = slaney_mel_filterbank(513, 16000, 8000.0, 64).T
    assert ours.shape == (513, 64)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6 * ref.max())
    # Slaney normalisation: every triangle has unit area in Hz (2/(hi−lo) × (hi−lo)/2).
    centre_bins = ours.argmax(axis=0)
    assert np.all(np.diff(centre_bins) >= 0) and np.count_nonzero(ours.sum(axis=0)) == 64


@pytest.mark.parametrize("orig,new,n", [(44100, 16000, 3001), (48000, 16000, 2400), (22050, 16000, 1000),
                                        (8000, 16000, 777), (16001, 16000, 500)])
def test_resample_matches_the_defining_sum(orig, new, n):
    x = np.random.default_rng(0).standard_normal((2, n)).astype(np.float32)
    ours = np.array(resample(mx.array(x), orig, new))
    assert ours.shape == (2, math.ceil(n * new / orig))
    for c in range(2):
        ref = direct_resample(x[c], orig, new)
        assert np.abs(ours[c] - ref).max() <= 1e-5 * np.abs(ref).max()


def test_resample_keeps_tones_and_suppresses_aliases():
    sr, n = 44100, 44100
    t = np.arange(n) / sr
    one_k = np.array(resample(mx.array(np.sin(2 * np.pi * 1000 * t).astype(np.float32)), sr, 16000))
    assert one_k.shape == (16000,)
    inner = slice(200, -200)
    expected = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    tone_err = np.abs(one_k[inner] - expected[inner]).max()
    assert tone_err < 5e-3
    assert np.argmax(np.abs(np.fft.rfft(one_k))) == 1000  # 1 Hz bins over 1 s
    ten_k = np.array(resample(mx.array(np.sin(2 * np.pi * 10000 * t).astype(np.float32)), sr, 16000))
    rms = np.sqrt(np.mean(ten_k[inner] ** 2))
    assert rms < 1e-2 * np.sqrt(0.5), f"10 kHz tone leaks through as a 6 kHz alias: rms {rms:.2e}"
    print(f"resample 44.1k→16k: 1 kHz max error {tone_err:.1e}; 10 kHz alias at {20 * np.log10(rms / np.sqrt(0.5)):.0f} dB")
    assert resample(mx.zeros((3, 7)), 16000, 16000).shape == (3, 7)


def test_stft_mel_matches_scipy_and_the_formula():
    x = np.random.default_rng(1).standard_normal((2, 16000 + 77)).astype(np.float32) * 0.3
    mel = AudioProcessor(16000, 64, 160, 1024)(x[None], 16000)
    assert mel.shape == (1, 2, 1 + x.shape[1] // 160, 64)
    _, _, Z = scipy.signal.stft(x, nperseg=1024, noverlap=1024 - 160, window="hann", boundary="even",
                                padded=False, detrend=False, scaling="spectrum")
    mag = np.abs(Z) * scipy.signal.get_window("hann", 1024).sum()  # undo scipy's amplitude scaling
    ref = np.einsum("mf,cft->ctm", slaney_mel_filterbank(513, 16000, 8000.0, 64), mag)
    ours = np.exp(np.array(mel[0]))
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-5 * ref.max()
    np.testing.assert_allclose(np.array(mel[0]), np.log(np.maximum(ref, 1e-5)), atol=1e-3)


def test_parseval_and_sine_peaks():
    n_fft, hop, sr = 1024, 160, 16000
    x = np.random.default_rng(2).standard_normal(8000).astype(np.float32)
    mag = np.array(stft_magnitude(mx.array(x), n_fft, hop)).astype(np.float64)
    frame = 20  # centred: frame f covers x[f·hop − 512, f·hop + 512)
    seg = x[frame * hop - n_fft // 2: frame * hop + n_fft // 2] * scipy.signal.get_window("hann", n_fft)
    weights = np.full(n_fft // 2 + 1, 2.0)
    weights[[0, -1]] = 1.0
    np.testing.assert_allclose((weights * mag[frame] ** 2).sum(), n_fft * (seg.astype(np.float64) ** 2).sum(),
                               rtol=1e-5)
    fb = slaney_mel_filterbank(513, sr, 8000.0, 64)
    centres = np.linspace(0, sr / 2, 513)[fb.argmax(axis=1)]
    proc = AudioProcessor(sr, 64, hop, n_fft)
    for f in (300.0, 1000.0, 2500.0, 6000.0):
        tone = np.sin(2 * np.pi * f * np.arange(sr) / sr).astype(np.float32)
        mel = np.array(proc(np.stack([tone, 0.5 * tone]), sr))[0]
        peak = mel[:, 10:-10].mean(axis=1).argmax(axis=-1)
        assert np.all(np.abs(centres[peak] - f) <= np.abs(centres - f).min() + 1e-9) or \
            np.all(np.abs(peak - np.abs(centres - f).argmin()) <= 1), (f, peak)
        assert mel[1, 50].max() == pytest.approx(mel[0, 50].max() + np.log(0.5), abs=1e-4)


def test_channels_and_lengths():
    proc = AudioProcessor(16000, 64, 160, 1024)
    one_second = np.random.default_rng(3).standard_normal((2, 44100)).astype(np.float32) * 0.1
    assert proc(one_second, 44100).shape == (1, 2, 101, 64)
    with pytest.warns(UserWarning, match="mono audio given.*duplicated"):
        mono = proc(one_second[:1], 44100)
    np.testing.assert_array_equal(np.array(mono[0, 0]), np.array(mono[0, 1]))
    with pytest.warns(UserWarning, match="mono"):
        assert as_stereo(np.zeros(10)).shape == (1, 2, 10)
    for bad in (np.zeros((3, 100)), np.zeros((1, 6, 100)), np.zeros((100, 2)), np.zeros((1, 1, 2, 100))):
        with pytest.raises(ValueError, match="1 or 2 channels"):
            as_stereo(bad)
    with pytest.raises(ValueError, match="too short"):
        proc(np.zeros((2, 300)), 16000)
    with pytest.raises(ValueError, match="positive integers"):
        resample(mx.zeros((2, 100)), 44100.5, 16000)
    with pytest.raises(ValueError, match="no mel_bins"):
        AudioProcessor(16000, None, 160, 1024)


def test_encode_and_decode_audio_match_the_reference(tmp_path):
    from test_audio_vae import CONFIGS as VAE_CONFIGS, write_checkpoint as write_vae
    from test_vocoder import V2, reference_vocoder

    from ltx_core.model.audio_vae import decode_audio as ref_decode_audio
    from ltx_mlx.models.audio_vae import load_audio_decoder, load_audio_encoder
    from ltx_mlx.models.vocoder import load_vocoder

    vae_path, voc_path = tmp_path / "vae.safetensors", tmp_path / "voc.safetensors"
    enc, dec = write_vae(vae_path, VAE_CONFIGS["released"])
    voc = reference_vocoder(V2)
    save_official_checkpoint(voc_path, {"vocoder." + k: v for k, v in voc.state_dict().items()}, V2, "2.3.0")
    wav = np.random.default_rng(4).standard_normal((2, 11025)).astype(np.float32) * 0.1
    encoder = load_audio_encoder(vae_path)
    latent = encode_audio(wav, 22050, encoder)
    mel = AudioProcessor.from_config(encoder.config)(wav, 22050)
    with torch.no_grad():
        ref_latent = enc(torch.tensor(np.array(mel)))
    assert_parity(latent, ref_latent, 5e-6, "encode_audio")  # measured 2.0e-6

    ours_wav, rate = decode_audio(latent, load_audio_decoder(vae_path), load_vocoder(voc_path))
    with torch.no_grad():
        ref = ref_decode_audio(ref_latent, dec, voc)
    assert rate == ref.sampling_rate == 48000 and ours_wav.dtype == mx.float32 and ours_wav.ndim == 2
    err = assert_parity(ours_wav, ref.waveform, 1e-6, "decode_audio")  # measured 3.8e-7
    print(f"decode_audio (tiny VAE + BigVGAN/BWE): {tuple(ours_wav.shape)} @ {rate} Hz, rel err {err:.2e}")
