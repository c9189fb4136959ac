"""Mel front end against an independent numpy/scipy restatement of what the reference computes (mel_reference.py),
which is itself checked against the defining resampling sum, scipy's STFT and closed forms; the reference's audio
encoder is fed by the reference's own AudioProcessor running on that restatement, never by our mel."""

import math

import mlx.core as mx
import numpy as np
import pytest
import scipy.signal
import torch
from mel_reference import TORCHAUDIO, direct_resample, log_mel, slaney_mel_filterbank, use_in_reference
from mel_reference import resample as reference_resample
from mel_reference import stft_magnitude as reference_stft
from reference import assert_parity, save_official_checkpoint

from ltx_mlx.audio import AudioProcessor, as_stereo, decode_audio, encode_audio, resample, slaney_mel_filters, \
    stft_magnitude
from loading import load_official


def test_slaney_filterbank_matches_the_formula():
    ours = slaney_mel_filters(513, 16000, 0.0, 8000.0, 64)
    ref = slaney_mel_filterbank(513, 16000, 8000.0, 64).T
    assert ours.shape == (513, 64)
    err = np.abs(ours - ref).max() / ref.max()
    assert err <= 1e-6, err  # measured 4.4e-8: float32 storage
    # Slaney normalisation: every triangle has unit area in Hz (2/(hi−lo) × (hi−lo)/2).
    centre_bins = ours.argmax(axis=0)
    assert np.all(np.diff(centre_bins) >= 0) and np.count_nonzero(ours.sum(axis=0)) == 64


@pytest.mark.parametrize("orig,new,n", [(44100, 16000, 3001), (48000, 16000, 2400), (22050, 16000, 1000),
                                        (8000, 16000, 777), (16001, 16000, 500)])
def test_resample_matches_the_defining_sum(orig, new, n):
    x = np.random.default_rng(0).standard_normal((2, n)).astype(np.float32)
    ref = np.stack([direct_resample(x[c], orig, new) for c in range(2)])
    ours = np.array(resample(mx.array(x), orig, new))
    assert ours.shape == ref.shape == (2, math.ceil(n * new / orig))
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err <= 1e-6, err  # measured ≤ 1.9e-7 (3.3e-7 on longer clips): float32 accumulation
    if orig != 16001:  # torchaudio's filter bank for 16001 → 16000 would be 16000 × 16015 taps
        polyphase = reference_resample(x, orig, new)  # the restatement the mel tests use is the same sum
        assert np.abs(polyphase - ref).max() <= 1e-12 * np.abs(ref).max()


def test_resample_length_rounds_like_torchaudio():
    # 180697 · 160 / 441 = 65559.002…, which float32 rounds to 65559: the reference keeps 65559 samples, not 65560.
    x = np.random.default_rng(5).standard_normal((1, 180697)).astype(np.float32)
    ours = np.array(resample(mx.array(x), 44100, 16000))
    ref = reference_resample(x, 44100, 16000)
    assert ours.shape == ref.shape == (1, 65559)
    assert np.abs(ours - ref).max() <= 1e-6 * np.abs(ref).max()
    assert np.array(resample(mx.zeros((1, 180696)), 44100, 16000)).shape == (1, 65559)  # exact ceil there


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


def test_reference_stft_matches_scipy():
    x = np.random.default_rng(1).standard_normal((2, 16000 + 77)) * 0.3
    _, _, Z = scipy.signal.stft(x, nperseg=1024, noverlap=1024 - 160, window="hann", boundary="even",
                                padded=False, detrend=False, scaling="spectrum")
    scipy_mag = np.abs(Z) * scipy.signal.get_window("hann", 1024).sum()  # undo scipy's amplitude scaling
    ref = reference_stft(x, 1024, 160)
    assert ref.shape == scipy_mag.shape == (2, 513, 1 + x.shape[1] // 160)
    assert np.abs(ref - scipy_mag).max() <= 1e-12 * ref.max()


@pytest.mark.parametrize("rate,n", [(44100, 44100), (48000, 30000), (22050, 20000), (16000, 16000), (8000, 9000)])
def test_log_mel_matches_the_independent_front_end(rate, n):
    """Ours vs mel_reference.log_mel on a batch of 2 stereo clips with a silent stretch (the log floor)."""
    x = np.random.default_rng(rate).standard_normal((2, 2, n)).astype(np.float32) * 0.1
    x[..., n // 3: n // 3 + n // 5] = 0
    ours = np.array(AudioProcessor(16000, 64, 160, 1024)(x, rate)).astype(np.float64)
    ref = log_mel(x, rate, 16000, 64, 160, 1024)
    assert ours.shape == ref.shape == (2, 2, 1 + math.ceil(n * 16000 / rate) // 160, 64)
    mel, peak = np.exp(ref), np.exp(ref).max()
    lin = np.abs(np.exp(ours) - mel).max() / peak
    assert lin <= 1e-6, lin  # measured ≤ 2.6e-7 of the peak
    # In the log domain an element's error is its absolute error over its value (down to the 1e-5 floor).
    bound = 1e-6 + 4e-7 * peak / np.maximum(mel, 1e-5)
    worst = (np.abs(ours - ref) / bound).max()
    assert worst <= 1.0, worst  # measured ≤ 0.21
    assert (ref == np.log(1e-5)).any() and np.abs(ours[ref == np.log(1e-5)] - np.log(1e-5)).max() < 1e-6
    print(f"log-mel @ {rate} Hz: linear err {lin:.1e} of the peak, log err {np.abs(ours - ref).max():.1e} "
          f"(≤ {worst:.2f} of the float32 bound)")


def test_reference_audio_processor_runs_on_the_independent_version(monkeypatch):
    """The reference's own AudioProcessor, its torchaudio calls answered by mel_reference: its arguments are then
    the reference's, and anything it asks for that mel_reference does not implement raises."""
    from ltx_core.model.audio_vae import AudioProcessor as RefAudioProcessor
    from ltx_core.types import Audio

    use_in_reference(monkeypatch)
    x = np.random.default_rng(6).standard_normal((1, 2, 22050)).astype(np.float32) * 0.2
    ref = RefAudioProcessor(16000, 64, 160, 1024).waveform_to_mel(Audio(torch.from_numpy(x), 44100))
    assert ref.dtype == torch.float32 and tuple(ref.shape) == (1, 2, 51, 64)
    np.testing.assert_allclose(ref.numpy(), log_mel(x, 44100, 16000, 64, 160, 1024), rtol=0, atol=2e-6)
    with pytest.raises(NotImplementedError, match="power"):
        TORCHAUDIO.transforms.MelSpectrogram(sample_rate=16000, n_fft=1024, norm="slaney", mel_scale="slaney")
    with pytest.raises(NotImplementedError, match="kaiser"):
        TORCHAUDIO.functional.resample(torch.zeros(10), 2, 1, resampling_method="sinc_interp_kaiser")


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


def test_encode_and_decode_audio_match_the_reference(tmp_path, monkeypatch):
    """Waveform → latent → waveform: ours end to end vs the reference's encode_audio (its AudioProcessor on
    mel_reference) and decode_audio."""
    from audio_fixtures import AUDIO_VAE_CONFIGS as VAE_CONFIGS, V2, reference_vocoder, write_audio_vae as write_vae

    from ltx_core.model.audio_vae import decode_audio as ref_decode_audio
    from ltx_core.model.audio_vae import encode_audio as ref_encode_audio
    from ltx_core.types import Audio

    use_in_reference(monkeypatch)
    vae_path, voc_path = tmp_path / "vae.safetensors", tmp_path / "voc.safetensors"
    enc, dec = write_vae(vae_path, VAE_CONFIGS["released"])
    voc = reference_vocoder(V2)
    save_official_checkpoint(voc_path, {"vocoder." + k: v for k, v in voc.state_dict().items()}, V2, "2.3.0")
    wav = np.random.default_rng(4).standard_normal((2, 22050)).astype(np.float32) * 0.1
    latent = encode_audio(wav, 44100, load_official(vae_path, "audio_encoder"))
    with torch.no_grad():
        ref_latent = ref_encode_audio(Audio(torch.from_numpy(wav[None]), 44100), enc)
    err = assert_parity(latent, ref_latent, 5e-6, "encode_audio")  # measured 1.9e-6
    print(f"encode_audio (0.5 s at 44.1 kHz, tiny VAE): {tuple(latent.shape)}, rel err {err:.2e}")

    ours_wav, rate = decode_audio(latent, load_official(vae_path, "audio_decoder"), load_official(voc_path, "vocoder"))
    with torch.no_grad():
        ref = ref_decode_audio(ref_latent, dec, voc)
    assert rate == ref.sampling_rate == 48000 and ours_wav.dtype == mx.float32 and ours_wav.ndim == 2
    err = assert_parity(ours_wav, ref.waveform, 1e-6, "decode_audio")  # measured 3.8e-7
    print(f"decode_audio (tiny VAE + BigVGAN/BWE): {tuple(ours_wav.shape)} @ {rate} Hz, rel err {err:.2e}")
