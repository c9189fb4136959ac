"""Vocoders (LTX-2 HiFi-GAN, LTX-2.3 BigVGAN-v2 + BWE): parity with the live reference, full-size coverage, bad input."""

import copy
import math

import mlx.core as mx
import numpy as np
import pytest
import torch
from audio_fixtures import AMP, BWE, V1, V2, reference_vocoder
from reference import assert_parity, save_official_checkpoint, to_mx, to_np

from ltx_core.model.audio_vae import VocoderConfigurator
from ltx_mlx.weights.checkpoint import CheckpointError, parameter_shapes
from ltx_mlx.models.vocoder import (ConvTranspose1d, Vocoder, VocoderConfig, VocoderWithBWE, _sin_squared, build_vocoder, conv1d_valid, sanitize)
from loading import load_official

V1_ODD = {"vocoder": {"resblock": "1", "stereo": True, "upsample_initial_channel": 16, "upsample_rates": [4, 3],
                      "upsample_kernel_sizes": [8, 7], "resblock_kernel_sizes": [3, 4],
                      "resblock_dilation_sizes": [[1, 2, 3], [2, 1, 4]], "output_sampling_rate": 11111,
                      "use_tanh_at_final": False, "use_bias_at_final": False}}
# 120 samples per frame: the BWE stage must pad the 16 kHz signal to a multiple of its hop (80).
V2_ODD_HOP = {"vocoder": {"vocoder": {**AMP, "upsample_initial_channel": 32, "upsample_rates": [5, 3, 2, 2, 2],
                                      "upsample_kernel_sizes": [11, 7, 4, 4, 4]}, "bwe": BWE}}
CONFIGS = {"hifigan": V1, "hifigan_odd": V1_ODD, "bigvgan_bwe": V2, "bigvgan_bwe_odd_hop": V2_ODD_HOP}


def write_checkpoint(path, config, seed=0):
    voc = reference_vocoder(config, seed)
    tensors = {"vocoder." + k: v for k, v in voc.state_dict().items()}
    tensors["audio_vae.decoder.conv_in.conv.weight"] = torch.zeros(2)  # other components share the file
    save_official_checkpoint(path, tensors, config, "2.3.0" if "bwe" in config["vocoder"] else "2.0.0")
    return voc


@pytest.mark.parametrize("name", list(CONFIGS))
def test_vocoder_parity(tmp_path, name):
    config = CONFIGS[name]
    ref = write_checkpoint(tmp_path / "ltx.safetensors", config)
    ours = load_official(tmp_path / "ltx.safetensors", "vocoder")
    assert type(ours) is (VocoderWithBWE if "bwe" in config["vocoder"] else Vocoder)
    mel = torch.randn(2, 2, 21, 64, generator=torch.Generator().manual_seed(1)) - 2
    with torch.no_grad():
        expected = ref(mel)
    got = ours(to_mx(mel))
    err = assert_parity(got, expected, 2.5e-6, name)  # measured <= 9.1e-7
    assert ours.output_sampling_rate == ref.output_sampling_rate
    wav = to_np(expected)
    assert wav.std() > 1e-3 and (np.abs(wav) >= 1).mean() < 0.5, "degenerate test signal"
    msg = f"vocoder {name}: {tuple(got.shape)} @ {ours.output_sampling_rate} Hz, rel err {err:.2e}"
    if isinstance(ours, VocoderWithBWE):  # also the 16 kHz stage alone, where no final clamp can hide errors
        with torch.no_grad():
            low = ref.vocoder(mel)
        msg += f", 16 kHz stage rel err {assert_parity(ours.vocoder(to_mx(mel)), low, 2e-6, name + ' stage 1'):.2e}"  # <= 6.9e-7
    print(msg)


def test_fast_conv_formulations_match_torch():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 37, generator=g)
    for d, k in ((2, 3), (3, 7), (5, 4)):
        w = torch.randn(5, 6, k, generator=g)
        ref = torch.nn.functional.conv1d(x, w, dilation=d)
        ours = conv1d_valid(to_mx(x).transpose(0, 2, 1), to_mx(w).transpose(0, 2, 1), d)
        # float32 sums of the same products in another order: 0 in most runs, 1.4e-7 in one clean-clone CI run
        assert_parity(ours.transpose(0, 2, 1), ref, 1e-6, f"dilated conv d={d} k={k}")  # measured 0..1.4e-7
    for s, k, p in ((2, 4, 1), (3, 7, 2), (5, 11, 3), (4, 3, 0)):
        m = torch.nn.ConvTranspose1d(6, 5, k, s, padding=p)
        ours = ConvTranspose1d(6, 5, k, s, p)
        ours.update({"weight": sanitize({"ups.0.weight": to_mx(m.weight)})["ups.0.weight"], "bias": to_mx(m.bias)})
        with torch.no_grad():
            ref = m(x)
        assert_parity(ours(to_mx(x).transpose(0, 2, 1)).transpose(0, 2, 1), ref, 4e-7, f"conv transpose s={s} k={k}")  # 1.3e-7


def test_cpu_sin_squared_is_float32_exact():
    z = np.concatenate([np.linspace(-7, 7, 100001), np.random.default_rng(0).uniform(-2000, 2000, 100000)])
    z = z.astype(np.float32)
    ours = np.array(_sin_squared(mx.array(z)))
    exact = np.sin(z.astype(np.float64)) ** 2
    assert np.abs(ours - exact).max() < 5e-7
    assert _sin_squared(mx.array(z[:5]).astype(mx.bfloat16)).dtype == mx.bfloat16
    print(f"CPU sin²: max abs error {np.abs(ours - exact).max():.1e} over |z| ≤ 2000")


def test_selection_follows_the_reference():
    for config in (V1, V2):
        ref_kind = type(VocoderConfigurator.from_config(config)).__name__
        assert type(build_vocoder(config)).__name__ == ref_kind
    bad = [{"vocoder": {**V1["vocoder"], "resblock": "AMP1"}},
           {"vocoder": {**V1["vocoder"], "stereo": False}},
           {"vocoder": {"vocoder": {**V2["vocoder"]["vocoder"], "activation": "snake"}, "bwe": BWE}},
           {"vocoder": {"vocoder": V2["vocoder"]["vocoder"], "bwe": {**BWE, "resblock": "1"}}}]
    for config in bad:
        with pytest.raises(ValueError):
            VocoderConfigurator.from_config(config)
        with pytest.raises(ValueError, match="this vocoder needs"):
            build_vocoder(config)
    no_rate = copy.deepcopy(V2)
    del no_rate["vocoder"]["bwe"]["input_sampling_rate"]
    with pytest.raises(ValueError, match="input_sampling_rate"):
        build_vocoder(no_rate)
    assert VocoderConfig.from_dict({"resblock": "1", "stereo": True}).vocoder.upsample_initial_channel == 1024


def _sanitized_shapes(module):
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    return {k: tuple(v.shape) for k, v in sanitize({k: mx.zeros(s) for k, s in shapes.items()}).items()}


FULL_V1 = {"vocoder": {"resblock": "1", "stereo": True, "upsample_initial_channel": 1024}}
FULL_COMMON = {"resblock": "AMP1", "stereo": True, "activation": "snakebeta", "use_tanh_at_final": False,
               "use_bias_at_final": False}
FULL_V2 = {"vocoder": {
    "vocoder": dict(FULL_COMMON, upsample_initial_channel=1536, upsample_rates=[5, 2, 2, 2, 2, 2],
                    upsample_kernel_sizes=[11, 4, 4, 4, 4, 4]),
    "bwe": dict(FULL_COMMON, upsample_initial_channel=512, upsample_rates=[6, 5, 2, 2, 2],
                upsample_kernel_sizes=[12, 11, 4, 4, 4], apply_final_activation=False, input_sampling_rate=16000,
                output_sampling_rate=48000, hop_length=80, n_fft=512, win_size=512, num_mels=64)}}


@pytest.mark.parametrize("name,config,millions", [("LTX-2 HiFi-GAN", FULL_V1, 56), ("LTX-2.3 BigVGAN+BWE", FULL_V2, 128)])
def test_full_size_keys_and_shapes(name, config, millions):
    with torch.device("meta"):
        ref = VocoderConfigurator.from_config(config)
    ours = build_vocoder(config)
    assert parameter_shapes(ours) == _sanitized_shapes(ref)
    n = sum(math.prod(s) for k, s in parameter_shapes(ours).items() if "basis" not in k and "filter" not in k)
    assert abs(n / 1e6 - millions) < 1.5, f"{name}: {n / 1e6:.1f} M parameters"


def test_bad_inputs_and_files(tmp_path):
    write_checkpoint(tmp_path / "ltx.safetensors", V1)
    voc = load_official(tmp_path / "ltx.safetensors", "vocoder")
    for shape in ((1, 2, 10, 80), (1, 10, 64), (1, 1, 10, 64)):
        with pytest.raises(ValueError, match=r"stereo log-mel of shape \(batch, 2, frames, 64\)"):
            voc(mx.zeros(shape))
    ref = reference_vocoder(V1)
    tensors = {"vocoder." + k: v for k, v in ref.state_dict().items() if "resblocks.14" not in k}
    save_official_checkpoint(tmp_path / "cut.safetensors", tensors, V1)
    with pytest.raises(CheckpointError, match="missing: resblocks.14"):
        load_official(tmp_path / "cut.safetensors", "vocoder")
    save_official_checkpoint(tmp_path / "other.safetensors", {"vocoder." + k: v for k, v in ref.state_dict().items()},
                             V2)
    with pytest.raises(CheckpointError, match="vocoder"):
        load_official(tmp_path / "other.safetensors", "vocoder")
