"""Video VAE and latent upsampler helpers: tiny configs, randomised reference models, official-format files."""

import mlx.core as mx
import numpy as np
import torch
from ltx_core.model.upsampler import LatentUpsamplerConfigurator
from ltx_core.model.video_vae import VideoDecoderConfigurator, VideoEncoderConfigurator
from reference import randomize_, save_official_checkpoint, to_mx

# Tiny block lists shaped like the real ones (spec 2.1): same block types, strides and multipliers, 1 layer each.
LTX2_ENCODER = [["res_x", {"num_layers": 1}], ["compress_space_res", {"multiplier": 2}], ["res_x", {"num_layers": 1}],
                ["compress_time_res", {"multiplier": 2}], ["res_x", {"num_layers": 1}],
                ["compress_all_res", {"multiplier": 2}], ["res_x", {"num_layers": 1}],
                ["compress_all_res", {"multiplier": 2}], ["res_x", {"num_layers": 1}]]
LTX2_DECODER = [["res_x", {"num_layers": 1, "inject_noise": False}], ["compress_all", {"residual": True, "multiplier": 2}],
                ["res_x", {"num_layers": 1, "inject_noise": False}], ["compress_all", {"residual": True, "multiplier": 2}],
                ["res_x", {"num_layers": 1, "inject_noise": False}], ["compress_all", {"residual": True, "multiplier": 2}],
                ["res_x", {"num_layers": 1, "inject_noise": False}]]
LTX23_ENCODER = [["res_x", {"num_layers": 1}], ["compress_space_res", {"multiplier": 2}], ["res_x", {"num_layers": 1}],
                 ["compress_time_res", {"multiplier": 2}], ["res_x", {"num_layers": 1}],
                 ["compress_all_res", {"multiplier": 2}], ["res_x", {"num_layers": 1}],
                 ["compress_all_res", {"multiplier": 1}], ["res_x", {"num_layers": 1}]]
LTX23_DECODER = [["res_x", {"num_layers": 1}], ["compress_space", {"multiplier": 2}], ["res_x", {"num_layers": 1}],
                 ["compress_time", {"multiplier": 2}], ["res_x", {"num_layers": 1}], ["compress_all", {"multiplier": 1}],
                 ["res_x", {"num_layers": 1}], ["compress_all", {"multiplier": 2}], ["res_x", {"num_layers": 1}]]
UNUSED_STATS = ("channel", "mean-of-stds", "mean-of-stds_over_std-of-means")


def vae_config(version: str, **overrides) -> dict:
    cfg = {"dims": 3, "in_channels": 3, "out_channels": 3, "latent_channels": 8, "patch_size": 4,
           "norm_layer": "pixel_norm", "latent_log_var": "uniform", "causal_decoder": False,
           "timestep_conditioning": False, "decoder_base_channels": 4}
    if version == "2":  # padding key absent: encoder zeros, decoder reflect (the code defaults)
        cfg.update(encoder_blocks=LTX2_ENCODER, decoder_blocks=LTX2_DECODER)
    else:
        cfg.update(encoder_blocks=LTX23_ENCODER, decoder_blocks=LTX23_DECODER, spatial_padding_mode="zeros")
    cfg.update(overrides)
    return {"vae": cfg}


def build_reference(config: dict, seed: int = 0):
    enc = randomize_(VideoEncoderConfigurator.from_config(config), seed, std=0.05).eval()
    dec = randomize_(VideoDecoderConfigurator.from_config(config), seed + 1, std=0.05).eval()
    dec.per_channel_statistics.load_state_dict(enc.per_channel_statistics.state_dict())
    return enc, dec


def save_vae(path, config: dict, enc, dec, model_version="2.3.0"):
    """An official-format file: `vae.encoder.*`, `vae.decoder.*`, shared `vae.per_channel_statistics.*` (+ extras)."""
    tensors = {}
    for prefix, module in (("vae.encoder.", enc), ("vae.decoder.", dec)):
        for k, v in module.state_dict().items():
            tensors[("vae." + k) if k.startswith("per_channel_statistics.") else prefix + k] = v
    C = config["vae"]["latent_channels"]
    for name in UNUSED_STATS:
        tensors["vae.per_channel_statistics." + name] = torch.rand(C)
    tensors["model.diffusion_model.other.weight"] = torch.zeros(2)  # other components share the file
    save_official_checkpoint(path, tensors, config, model_version)
    return path


def torch_noise(gen: torch.Generator):
    """Our decoder's noise source, drawing from a torch generator in the reference's order and layout."""
    def draw(shape):
        if len(shape) == 5:
            B, F, H, W, C = shape
            return to_mx(torch.randn((B, C, F, H, W), generator=gen).permute(0, 2, 3, 4, 1))
        return to_mx(torch.randn(tuple(shape), generator=gen))
    return draw


def cl(t: torch.Tensor) -> mx.array:
    """(B, C, F, H, W) torch -> (B, F, H, W, C) mlx."""
    return to_mx(t.permute(0, 2, 3, 4, 1))


def cf(x: mx.array) -> np.ndarray:
    return np.array(x).transpose(0, 4, 1, 2, 3)


def uint8_mismatches(ours: mx.array, ref: torch.Tensor, video_f32: np.ndarray) -> int:
    """Differing uint8 values; every one must sit at a truncation boundary of the reference's float value."""
    a, b = np.array(ours).astype(np.int32), ref.numpy().astype(np.int32)
    assert a.shape == b.shape
    bad = a != b
    if bad.any():
        assert np.abs(a - b).max() == 1
        scaled = np.clip((video_f32 + 1) / 2, 0, 1) * 255
        assert np.abs(scaled[bad] - np.round(scaled[bad])).max() < 1e-3, "uint8 mismatch away from a boundary"
    return int(bad.sum())


TINY_UPSAMPLER = dict(in_channels=8, mid_channels=32, num_blocks_per_stage=1, dims=3)


def build_upsampler(config: dict, path, seed=0):
    ref = randomize_(LatentUpsamplerConfigurator.from_config(config), seed, std=0.05).eval()
    save_official_checkpoint(path, ref.state_dict(), config)  # flat config, no key prefix
    return ref
