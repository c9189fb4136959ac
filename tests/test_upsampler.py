"""Latent upsamplers: parity with the live reference per variant, loaded from their own official-format files (flat
metadata config, unprefixed keys); the un-normalise -> upsample -> normalise step; full-size key/shape coverage."""

import numpy as np
import pytest
import torch
from ltx_core.model.upsampler import LatentUpsamplerConfigurator
from ltx_core.model.upsampler import upsample_video as ref_upsample_video
from ltx_core.model.video_vae import VideoEncoderConfigurator
from reference import assert_parity, randomize_, save_official_checkpoint, to_mx
from vae_fixtures import TINY_UPSAMPLER, build_upsampler, cf, cl, vae_config

from ltx_mlx.weights.checkpoint import CheckpointError, parameter_shapes
from ltx_mlx.models.upsampler import LatentUpsampler, UpsamplerConfig, sanitize, upsample_video
from ltx_mlx.models.video_vae import PerChannelStatistics
from loading import load_upsampler

VARIANTS = {
    "spatial x2": (dict(spatial_upsample=True), (3, 8, 12)),
    "rational x1.5": (dict(spatial_upsample=True, rational_resampler=True, spatial_scale=1.5), (3, 6, 9)),
    "rational x0.75": (dict(spatial_upsample=True, rational_resampler=True, spatial_scale=0.75), (3, 3, 5)),
    "rational x2": (dict(spatial_upsample=True, rational_resampler=True, spatial_scale=2.0), (3, 8, 12)),
    "rational x4": (dict(spatial_upsample=True, rational_resampler=True, spatial_scale=4.0), (3, 16, 24)),
    "temporal x2": (dict(spatial_upsample=False, temporal_upsample=True), (5, 4, 6)),
    "spatial+temporal x2": (dict(spatial_upsample=True, temporal_upsample=True), (5, 8, 12)),
    "2-D spatial x2": (dict(spatial_upsample=True, dims=2), (3, 8, 12)),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_upsampler_parity(tmp_path, variant):
    overrides, out_fhw = VARIANTS[variant]
    config = dict(TINY_UPSAMPLER, **overrides)
    ref = build_upsampler(config, tmp_path / "up.safetensors")
    ours = load_upsampler(tmp_path / "up.safetensors")
    x = torch.randn(1, 8, 3, 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(x)
    got = ours(cl(x))
    assert got.shape == (1, *out_fhw, 8)
    err = assert_parity(cf(got), want, 5e-6, variant)  # measured <= 1.9e-6
    print(f"upsampler {variant}: rel err {err:.2e}")


def test_upsample_video_uses_the_vae_statistics(tmp_path):
    ref = build_upsampler(dict(TINY_UPSAMPLER), tmp_path / "up.safetensors", seed=2)
    enc = randomize_(VideoEncoderConfigurator.from_config(vae_config("2.3")), 3)
    stats = PerChannelStatistics(8)
    for name in ("mean-of-means", "std-of-means"):
        stats[name] = to_mx(enc.per_channel_statistics.get_buffer(name))
    x = torch.randn(1, 8, 2, 3, 4, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = ref_upsample_video(x, enc, ref)
    got = upsample_video(cl(x), stats, load_upsampler(tmp_path / "up.safetensors"))
    err = assert_parity(cf(got), want, 1e-6, "upsample_video")  # measured 3.4e-7
    print(f"upsample_video: rel err {err:.2e}")


FULL = dict(in_channels=128, mid_channels=512, num_blocks_per_stage=4, dims=3)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_full_size_keys_and_shapes(variant):
    config = dict(FULL, **{k: v for k, v in VARIANTS[variant][0].items()})
    with torch.device("meta"):
        ref = LatentUpsamplerConfigurator.from_config(config)
    stand_ins = {k: np.broadcast_to(np.zeros((), np.float32), tuple(v.shape)) for k, v in ref.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in sanitize(stand_ins).items()}
    ours = LatentUpsampler(UpsamplerConfig.from_dict(config))
    assert parameter_shapes(ours) == want
    if variant == "spatial x2":
        assert round(sum(int(np.prod(s)) for s in want.values()) / 1e6) == 126


def test_bad_input_and_files(tmp_path):
    with pytest.raises(ValueError, match="scale 3.0 is not supported"):
        UpsamplerConfig.from_dict(dict(TINY_UPSAMPLER, rational_resampler=True, spatial_scale=3.0))
    with pytest.raises(ValueError, match="spatial_upsample or temporal_upsample"):
        UpsamplerConfig.from_dict(dict(TINY_UPSAMPLER, spatial_upsample=False))
    with pytest.raises(ValueError, match="dims=2 supports only"):
        UpsamplerConfig.from_dict(dict(TINY_UPSAMPLER, dims=2, temporal_upsample=True))
    ours = LatentUpsampler(UpsamplerConfig.from_dict(TINY_UPSAMPLER))
    with pytest.raises(ValueError, match=r"\(B, F, H, W, 8\)"):
        ours(to_mx(torch.zeros(1, 3, 4, 6, 16)))
    save_official_checkpoint(tmp_path / "vae.safetensors", {"vae.decoder.x": torch.zeros(1)}, {"vae": {}})
    with pytest.raises(CheckpointError, match="not a latent upsampler file"):
        load_upsampler(tmp_path / "vae.safetensors")
    ref = randomize_(LatentUpsamplerConfigurator.from_config(TINY_UPSAMPLER), 0)
    sd = ref.state_dict()
    sd.pop("final_conv.bias")
    save_official_checkpoint(tmp_path / "cut.safetensors", sd, TINY_UPSAMPLER)
    with pytest.raises(CheckpointError, match="final_conv.bias"):
        load_upsampler(tmp_path / "cut.safetensors")
