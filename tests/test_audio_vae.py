"""Audio VAE encoder/decoder: parity with the live reference at tiny sizes, full-size key/shape coverage, bad input."""

import copy

import mlx.core as mx
import numpy as np
import pytest
import torch
from audio_fixtures import AUDIO_VAE_CONFIGS, audio_cfg, write_audio_vae
from reference import assert_parity, save_official_checkpoint, to_mx

from ltx_core.model.audio_vae import AudioDecoderConfigurator, AudioEncoderConfigurator
from ltx_mlx.weights.checkpoint import CheckpointError, parameter_shapes
from ltx_mlx.models.audio_vae import AudioDecoder, AudioEncoder, AudioVAEConfig, sanitize
from loading import load_official


@pytest.mark.parametrize("name", list(AUDIO_VAE_CONFIGS))
def test_encode_decode_parity(tmp_path, name):
    config = AUDIO_VAE_CONFIGS[name]
    path = tmp_path / "ltx.safetensors"
    enc, dec = write_audio_vae(path, config)
    ours_enc, ours_dec = load_official(path, "audio_encoder"), load_official(path, "audio_decoder")

    g = torch.Generator().manual_seed(3)
    mel = torch.randn(2, 2, 97, 64, generator=g) * 2 - 4
    with torch.no_grad():
        ref_lat = enc(mel)
        latent = torch.randn(ref_lat.shape, generator=g)
        ref_mel = dec(latent)
    lat = ours_enc(to_mx(mel))
    out = ours_dec(to_mx(latent))
    axis = config["audio_vae"]["model"]["params"]["ddconfig"]["causality_axis"]
    causal = axis is not None
    assert tuple(lat.shape) == (2, 2, 25 if axis == "height" else 24, 16)
    assert tuple(out.shape) == (2, 2, 4 * lat.shape[2] - (3 if causal else 0), 64)
    e1 = assert_parity(lat, ref_lat, 6e-6, f"{name} encoder")  # measured <= 2.3e-6
    e2 = assert_parity(out, ref_mel, 9e-6, f"{name} decoder")  # measured <= 3.6e-6
    print(f"audio VAE {name}: encoder rel err {e1:.2e}, decoder rel err {e2:.2e}")


def test_decoder_length_is_4t_minus_3(tmp_path):
    path = tmp_path / "ltx.safetensors"
    _, dec = write_audio_vae(path, AUDIO_VAE_CONFIGS["released"])
    ours = load_official(path, "audio_decoder")
    for T in (1, 2, 7):
        latent = torch.randn(1, 2, T, 16)
        with torch.no_grad():
            ref = dec(latent)
        got = ours(to_mx(latent))
        assert got.shape == (1, 2, 4 * T - 3, 64) == tuple(ref.shape)
        assert_parity(got, ref, 5e-6, f"decoder T={T}")  # measured <= 2.0e-6


def test_config_reads_file_values_not_code_defaults():
    cfg = AudioVAEConfig.from_dict(audio_cfg(ch=128, z=8)["audio_vae"])
    assert (cfg.mid_block_add_attention, cfg.attn_resolutions, cfg.mel_bins) == (False, (), 64)
    bare = AudioVAEConfig.from_dict({})
    assert (bare.mid_block_add_attention, bare.attn_resolutions, bare.ch) == (True, (8, 16, 32), 128)
    variables_only = {"model": {"params": {"ddconfig": {}}}, "variables": {"mel_bins": 32}}
    assert AudioVAEConfig.from_dict(variables_only).mel_bins == 32
    with pytest.raises(ValueError, match="attn_resolutions is null"):
        AudioVAEConfig.from_dict(audio_cfg(attn_resolutions=None)["audio_vae"])
    with pytest.raises(ValueError, match="GroupNorm"):
        AudioVAEConfig.from_dict(audio_cfg(norm_type="group")["audio_vae"])


def _meta_shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _sanitized_shapes(shapes):
    # mx.zeros is lazy: the shapes come out of sanitize without allocating full-size tensors.
    return {k: tuple(v.shape) for k, v in sanitize({k: mx.zeros(s) for k, s in shapes.items()}).items()}


@pytest.mark.parametrize("attention", [False, True])
def test_full_size_keys_and_shapes(attention):
    dd = {"ch": 128, "z": 8, "num_res_blocks": 2}
    config = audio_cfg(dd["ch"], dd["z"], num_res_blocks=2)
    if attention:  # the code defaults: attention in the mid blocks (and at resolutions never reached)
        del config["audio_vae"]["model"]["params"]["ddconfig"]["mid_block_add_attention"]
        del config["audio_vae"]["model"]["params"]["ddconfig"]["attn_resolutions"]
    with torch.device("meta"):
        enc = AudioEncoderConfigurator.from_config(config)
        dec = AudioDecoderConfigurator.from_config(config)
    cfg = AudioVAEConfig.from_dict(config["audio_vae"])
    for ref, ours in ((enc, AudioEncoder(cfg)), (dec, AudioDecoder(cfg))):
        expected = _sanitized_shapes(_meta_shapes(ref))
        assert parameter_shapes(ours) == expected
    n_enc = sum(np.prod(s) for s in parameter_shapes(AudioEncoder(cfg)).values())
    assert (n_enc > 20e6) and (attention or n_enc < 22e6)


def test_bad_inputs_and_files(tmp_path):
    path = tmp_path / "ltx.safetensors"
    write_audio_vae(path, AUDIO_VAE_CONFIGS["released"])
    enc, dec = load_official(path, "audio_encoder"), load_official(path, "audio_decoder")
    with pytest.raises(ValueError, match=r"\(batch, 2, frames, 64\)"):
        enc(mx.zeros((1, 2, 50, 80)))
    with pytest.raises(ValueError, match=r"\(batch, 2, frames, 64\)"):
        enc(mx.zeros((1, 1, 50, 64)))
    with pytest.raises(ValueError, match="mel bins do not match"):
        dec(mx.zeros((1, 2, 5, 8)))
    with pytest.raises(ValueError, match="latent"):
        dec(mx.zeros((1, 3, 5, 16)))

    wrong = copy.deepcopy(AUDIO_VAE_CONFIGS["released"])
    wrong["audio_vae"]["model"]["params"]["ddconfig"]["num_res_blocks"] = 2
    enc_ref = AudioEncoderConfigurator.from_config(AUDIO_VAE_CONFIGS["released"])
    tensors = {"audio_vae.encoder." + k: torch.zeros(v.shape) for k, v in enc_ref.state_dict().items()}
    save_official_checkpoint(tmp_path / "bad.safetensors", tensors, wrong)
    with pytest.raises(CheckpointError, match="missing"):
        load_official(tmp_path / "bad.safetensors", "audio_encoder")
