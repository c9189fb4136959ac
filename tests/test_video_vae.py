"""Video VAE encoder/decoder: parity with the live reference at tiny LTX-2 / LTX-2.3-shaped configs, loaded from
official-format files; full-size key/shape coverage on torch's meta device; bad input."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from ltx_core.model.video_vae import VideoDecoderConfigurator, VideoEncoderConfigurator
from ltx_core.model.video_vae import decode_video as ref_decode_video
from reference import assert_parity, save_official_checkpoint, to_np
from vae_fixtures import (LTX2_DECODER, UNUSED_STATS, build_reference, cf, cl, save_vae, torch_noise, uint8_mismatches,
                          vae_config)

from ltx_mlx.weights.checkpoint import CheckpointError, SafetensorsFile, parameter_shapes
from ltx_mlx.models import video_vae
from ltx_mlx.models.video_vae import VideoDecoder, VideoEncoder, VideoVAEConfig, decode_video, sanitize
from loading import load_official


@pytest.mark.parametrize("version", ["2", "2.3"])
def test_encoder_parity(tmp_path, version):
    config = vae_config(version)
    enc, dec = build_reference(config)
    path = save_vae(tmp_path / "vae.safetensors", config, enc, dec)
    ours = load_official(path, "video_encoder")
    x = torch.rand(1, 3, 17, 64, 96, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ref = enc(x)
    got = ours(cl(x))
    assert got.shape == (1, 3, 2, 3, 8)
    err = assert_parity(cf(got), ref, 5e-6, f"LTX-{version} encode")  # measured <= 1.9e-6
    print(f"LTX-{version} encode rel err {err:.2e}")


DECODER_VARIANTS = {
    "2-reflect": ("2", {}),
    "2.3-zeros": ("2.3", {}),
    "2.3-causal": ("2.3", {"causal_decoder": True}),
    "2.3-reflect": ("2.3", {"spatial_padding_mode": "reflect"}),
    "2-timestep-noise": ("2", {"timestep_conditioning": True, "decoder_blocks": [
        [n, dict(p, inject_noise=True) if n == "res_x" else p] for n, p in LTX2_DECODER]}),
    "2.3-timestep-causal": ("2.3", {"timestep_conditioning": True, "causal_decoder": True}),
}


@pytest.mark.parametrize("variant", list(DECODER_VARIANTS))
def test_decoder_parity(tmp_path, variant):
    version, overrides = DECODER_VARIANTS[variant]
    config = vae_config(version, **overrides)
    enc, dec = build_reference(config, seed=3)
    if "noise" in variant:  # per_channel_scale starts at zero; make the injected noise matter
        with torch.no_grad():
            for k, p in dec.named_parameters():
                if "per_channel_scale" in k:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(5)) * 0.5)
    path = save_vae(tmp_path / "vae.safetensors", config, enc, dec)
    ours = load_official(path, "video_decoder")
    z = torch.randn(1, 8, 3, 2, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = dec(z, generator=torch.Generator().manual_seed(7))
        ref_u8 = next(ref_decode_video(z, dec, None, generator=torch.Generator().manual_seed(7)))
    got = ours(cl(z), noise=torch_noise(torch.Generator().manual_seed(7)))
    assert got.shape == (1, 17, 64, 96, 3)
    err = assert_parity(cf(got), ref, 6e-6, f"decode {variant}")  # measured <= 2.5e-6
    got_u8 = next(decode_video(cl(z), ours, noise=torch_noise(torch.Generator().manual_seed(7))))
    assert got_u8.dtype == mx.uint8 and got_u8.shape == (17, 64, 96, 3)
    n = uint8_mismatches(got_u8, ref_u8, to_np(ref)[0].transpose(1, 2, 3, 0))
    print(f"decode {variant}: rel err {err:.2e}, uint8 mismatches {n} of {got_u8.size}")
    if "timestep" in variant:  # the noise really is drawn and used: another noise stream changes the output
        other = ours(cl(z), noise=torch_noise(torch.Generator().manual_seed(8)))
        assert float(mx.abs(other - got).max()) > 1e-3


def test_decoder_key_noise_is_reproducible(tmp_path):
    config = vae_config("2.3", timestep_conditioning=True)
    enc, dec = build_reference(config)
    ours = load_official(save_vae(tmp_path / "v.safetensors", config, enc, dec), "video_decoder")
    z = mx.random.normal((1, 2, 2, 2, 8))
    a, b = ours(z, key=mx.random.key(5)), ours(z, key=mx.random.key(5))
    c = ours(z, key=mx.random.key(6))
    assert float(mx.abs(a - b).max()) == 0.0 and float(mx.abs(a - c).max()) > 1e-4


def test_unused_statistics_are_dropped_and_file_is_shared(tmp_path):
    config = vae_config("2.3")
    enc, dec = build_reference(config)
    sf = SafetensorsFile(save_vae(tmp_path / "v.safetensors", config, enc, dec))
    assert {f"vae.per_channel_statistics.{n}" for n in UNUSED_STATS} <= set(sf.keys())
    e, d = load_official(sf.path, "video_encoder"), load_official(sf.path, "video_decoder")
    np.testing.assert_array_equal(np.array(e.per_channel_statistics["std-of-means"]),
                                  enc.per_channel_statistics.get_buffer("std-of-means").numpy())
    np.testing.assert_array_equal(np.array(d.per_channel_statistics["mean-of-means"]),
                                  enc.per_channel_statistics.get_buffer("mean-of-means").numpy())
    # a statistics key we do not know is not silently dropped
    tensors = {"vae.decoder." + k: v for k, v in dec.state_dict().items() if not k.startswith("per_channel")}
    tensors.update({"vae." + k: v for k, v in dec.state_dict().items() if k.startswith("per_channel")})
    tensors["vae.per_channel_statistics.std-of-stds"] = torch.ones(8)
    save_official_checkpoint(tmp_path / "x.safetensors", tensors, config)
    with pytest.raises(CheckpointError, match="std-of-stds"):
        load_official(tmp_path / "x.safetensors", "video_decoder")


# The block types real files do not use but the reference builds: res_x_y (shortcut), plain strided compress_*,
# compress_all_x_y, a residual compress_all with multiplier 1, group_norm and per-channel log-variance.
OTHER_BLOCKS = dict(
    latent_channels=32, decoder_base_channels=8, norm_layer="group_norm", latent_log_var="per_channel",
    encoder_blocks=[["res_x_y", {"multiplier": 2}], ["compress_time", {}], ["compress_space", {}],
                    ["compress_all", {}], ["compress_all_x_y", {"multiplier": 2}], ["res_x", 1]],
    decoder_blocks=[["res_x", 1], ["compress_all", {"residual": True, "multiplier": 1}], ["compress_time", {}],
                    ["compress_space", {}], ["res_x_y", {"multiplier": 2}], ["compress_all", {}]])


@pytest.mark.parametrize("chunk_bytes", [None, 1])
def test_other_block_types_and_frame_chunked_convs(tmp_path, monkeypatch, chunk_bytes):
    if chunk_bytes:  # every convolution then runs one output frame at a time, each evaluated on its own
        monkeypatch.setattr(video_vae, "CONV_CHUNK_BYTES", chunk_bytes)
    else:  # one lazy graph for the whole model (what tracing / mx.compile needs)
        monkeypatch.setattr(video_vae, "EVAL_EACH_CONV", False)
    config = vae_config("2.3", **OTHER_BLOCKS)
    enc, dec = build_reference(config, seed=21)
    path = save_vae(tmp_path / "vae.safetensors", config, enc, dec)
    x = torch.rand(1, 3, 17, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = torch.randn(1, 32, 3, 2, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref_z, ref_x = enc(x), dec(z)
    e1 = assert_parity(cf(load_official(path, "video_encoder")(cl(x))), ref_z, 3e-6,
                       "encode, other blocks")  # measured <= 1.1e-6
    e2 = assert_parity(cf(load_official(path, "video_decoder")(cl(z))), ref_x, 3e-6, "decode, other blocks")
    print(f"other block types (chunk bytes {chunk_bytes}): encode {e1:.2e}, decode {e2:.2e}")


# ---------------------------------------------------------------------------------------------------------
# Full size on the meta device

FULL_2 = {"dims": 3, "in_channels": 3, "out_channels": 3, "latent_channels": 128, "patch_size": 4,
          "norm_layer": "pixel_norm", "latent_log_var": "uniform", "causal_decoder": False,
          "timestep_conditioning": False, "decoder_base_channels": 128,
          "encoder_blocks": [["res_x", {"num_layers": 4}], ["compress_space_res", {"multiplier": 2}],
                             ["res_x", {"num_layers": 6}], ["compress_time_res", {"multiplier": 2}],
                             ["res_x", {"num_layers": 6}], ["compress_all_res", {"multiplier": 2}],
                             ["res_x", {"num_layers": 2}], ["compress_all_res", {"multiplier": 2}],
                             ["res_x", {"num_layers": 2}]],
          "decoder_blocks": [["res_x", {"num_layers": 5, "inject_noise": False}],
                             ["compress_all", {"residual": True, "multiplier": 2}],
                             ["res_x", {"num_layers": 5, "inject_noise": False}],
                             ["compress_all", {"residual": True, "multiplier": 2}],
                             ["res_x", {"num_layers": 5, "inject_noise": False}],
                             ["compress_all", {"residual": True, "multiplier": 2}],
                             ["res_x", {"num_layers": 5, "inject_noise": False}]]}
FULL_23 = dict(FULL_2, spatial_padding_mode="zeros",
               encoder_blocks=[["res_x", {"num_layers": 4}], ["compress_space_res", {"multiplier": 2}],
                               ["res_x", {"num_layers": 6}], ["compress_time_res", {"multiplier": 2}],
                               ["res_x", {"num_layers": 4}], ["compress_all_res", {"multiplier": 2}],
                               ["res_x", {"num_layers": 2}], ["compress_all_res", {"multiplier": 1}],
                               ["res_x", {"num_layers": 2}]],
               decoder_blocks=[["res_x", {"num_layers": 4}], ["compress_space", {"multiplier": 2}],
                               ["res_x", {"num_layers": 6}], ["compress_time", {"multiplier": 2}],
                               ["res_x", {"num_layers": 4}], ["compress_all", {"multiplier": 1}],
                               ["res_x", {"num_layers": 2}], ["compress_all", {"multiplier": 2}],
                               ["res_x", {"num_layers": 2}]])


def meta_shapes(module: torch.nn.Module) -> dict:
    """The reference state dict through our sanitize, with zero-stride numpy stand-ins (no memory)."""
    stand_ins = {k: np.broadcast_to(np.zeros((), np.float32), tuple(v.shape)) for k, v in module.state_dict().items()}
    return {k: tuple(v.shape) for k, v in sanitize(stand_ins).items()}


@pytest.mark.parametrize("name,vae,params", [("LTX-2", FULL_2, (694, 528)), ("LTX-2.3", FULL_23, (319, 407)),
                                             ("LTX-2.3 timestep", dict(FULL_23, timestep_conditioning=True), None)])
def test_full_size_keys_and_shapes(name, vae, params):
    with torch.device("meta"):
        enc = VideoEncoderConfigurator.from_config({"vae": vae})
        dec = VideoDecoderConfigurator.from_config({"vae": vae})
    cfg = VideoVAEConfig.from_dict(vae)
    ours_enc, ours_dec = VideoEncoder(cfg), VideoDecoder(cfg)
    assert parameter_shapes(ours_enc) == meta_shapes(enc)
    assert parameter_shapes(ours_dec) == meta_shapes(dec)
    if params:
        got = tuple(round(sum(int(np.prod(s)) for s in parameter_shapes(m).values()) / 1e6) for m in (ours_enc, ours_dec))
        assert got == params


# ---------------------------------------------------------------------------------------------------------
# Bad input

def test_bad_input_is_a_clear_error(tmp_path):
    cfg = VideoVAEConfig.from_dict(vae_config("2.3")["vae"])
    enc, dec = VideoEncoder(cfg), VideoDecoder(cfg)
    with pytest.raises(ValueError, match=r"18 frames.*8k\+1.*crop to 17"):
        enc(mx.zeros((1, 18, 64, 64, 3)))
    with pytest.raises(ValueError, match="multiples of 32"):
        enc(mx.zeros((1, 9, 64, 80, 3)))
    with pytest.raises(ValueError, match=r"\(B, F, H, W, 3\)"):
        enc(mx.zeros((1, 9, 64, 64, 4)))
    with pytest.raises(ValueError, match=r"\(B, F', H', W', 8\)"):
        dec(mx.zeros((1, 2, 2, 2, 16)))
    with pytest.raises(ValueError, match="'attn_res_x' is not supported"):
        VideoDecoder(VideoVAEConfig.from_dict(dict(vae_config("2.3")["vae"], decoder_blocks=[
            ["attn_res_x", {"num_layers": 1, "attention_head_dim": 8}]])))
    with pytest.raises(ValueError, match="'compress_weird' is not supported"):
        VideoEncoder(VideoVAEConfig.from_dict(dict(vae_config("2.3")["vae"], encoder_blocks=[["compress_weird", {}]])))
    with pytest.raises(ValueError, match="dims=2"):
        VideoVAEConfig.from_dict({"dims": 2})
    # a file without the VAE
    save_official_checkpoint(tmp_path / "t.safetensors", {"model.diffusion_model.x": torch.zeros(1)},
                             {"transformer": {}})
    with pytest.raises(CheckpointError, match="holds no video decoder weights"):
        load_official(tmp_path / "t.safetensors", "video_decoder")
    save_official_checkpoint(tmp_path / "s.safetensors", {"vae.decoder.x": torch.zeros(1)}, {"transformer": {}})
    with pytest.raises(CheckpointError, match="no 'vae' section"):
        load_official(tmp_path / "s.safetensors", "video_decoder")
