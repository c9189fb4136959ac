"""Tiled, streamed decoding vs the reference's tiled_decode (same tiling params)."""

import pytest
import torch
from ltx_core.model.video_vae import SpatialTilingConfig as RefSpatial
from ltx_core.model.video_vae import TemporalTilingConfig as RefTemporal
from ltx_core.model.video_vae import TilingConfig as RefTiling
from reference import assert_parity, to_np
from vae_fixtures import build_reference, cf, cl, save_vae, torch_noise, uint8_mismatches, vae_config

from ltx_mlx.models.vae_tiling import (SpatialTilingConfig, TemporalTilingConfig, TilingConfig, decode_tiles, tiled_decode)
from ltx_mlx.models.video_vae import decode_video
from loading import load_official

# 41 frames of 96x128 px (latent 6x3x4) with 64 px / 32 px and 24 / 8 frame tiles: 3 x 2 x 3 = 18 tiles.
TILE = dict(spatial=(64, 32), temporal=(24, 8))


def tilings(spatial=TILE["spatial"], temporal=TILE["temporal"]):
    ours = TilingConfig(SpatialTilingConfig(*spatial), TemporalTilingConfig(*temporal))
    ref = RefTiling(spatial_config=RefSpatial(*spatial), temporal_config=RefTemporal(*temporal))
    return ours, ref


class CountingDecoder:
    """Forwards to a decoder and counts tile decodes (to see that chunks stream out early)."""

    def __init__(self, decoder):
        self.decoder, self.calls = decoder, 0

    def __getattr__(self, name):
        return getattr(self.decoder, name)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.decoder(*args, **kwargs)


@pytest.mark.parametrize("version,overrides", [("2", {}), ("2.3", {"timestep_conditioning": True})])
def test_tiled_decode_parity(tmp_path, version, overrides):
    config = vae_config(version, **overrides)
    enc, dec = build_reference(config, seed=11)
    ours = load_official(save_vae(tmp_path / "v.safetensors", config, enc, dec), "video_decoder")
    z = torch.randn(1, 8, 6, 3, 4, generator=torch.Generator().manual_seed(4))
    our_tiling, ref_tiling = tilings()
    with torch.no_grad():
        ref_chunks = list(dec.tiled_decode(z, ref_tiling, generator=torch.Generator().manual_seed(9)))
    counting = CountingDecoder(ours)
    stream = tiled_decode(counting, cl(z), our_tiling, noise=torch_noise(torch.Generator().manual_seed(9)))
    first = next(stream)
    assert counting.calls == 2 * 2 * 3  # the first chunk is out after two time groups, not after all 18 tiles
    chunks = [first, *stream]
    assert counting.calls == 18
    assert [c.shape[1] for c in chunks] == [c.shape[2] for c in ref_chunks] == [8, 16, 17]
    err = max(assert_parity(cf(c), r, 7e-6, f"tiled chunk {i}") for i, (c, r) in enumerate(zip(chunks, ref_chunks)))  # <= 2.8e-6
    full = torch.cat(ref_chunks, dim=2)
    assert full.shape == (1, 3, 41, 96, 128)
    # the tiling really changes the result (blending of independently decoded tiles)
    with torch.no_grad():
        whole = dec(z, generator=torch.Generator().manual_seed(9))
    assert float((whole - full).abs().max()) > 1e-3

    # the reference's decode_video conversion of its tiled chunks (run for real in test_video_vae)
    ref_u8 = [(((c + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).to(torch.uint8)[0].permute(1, 2, 3, 0) for c in ref_chunks]
    u8 = list(decode_video(cl(z), ours, our_tiling, noise=torch_noise(torch.Generator().manual_seed(9))))
    n = sum(uint8_mismatches(a, b, to_np(r)[0].transpose(1, 2, 3, 0)) for a, b, r in zip(u8, ref_u8, ref_chunks))
    print(f"tiled decode LTX-{version} {overrides}: 18 tiles, 3 chunks, rel err {err:.2e}, "
          f"uint8 mismatches {n} of {sum(a.size for a in u8)}")


def test_tile_shapes_follow_the_reference_split():
    tiles = decode_tiles((1, 16, 16, 24, 128), TilingConfig.default(), 8, 32)  # 768x512, 121 frames
    assert len(tiles) == 3 * 2 * 2
    sizes = sorted({tuple(s.stop - s.start for s in t.source) for t in tiles})
    # time tiles after the first start one latent early (8, 9, 9, ...); the last tile of an axis ends at its end
    assert sizes == [(f, h, w) for f in (7, 8, 9) for h in (7, 11) for w in (10, 16)]


def test_tiling_config_validation():
    with pytest.raises(ValueError, match="multiples of 32"):
        SpatialTilingConfig(100, 32)
    with pytest.raises(ValueError, match="overlap smaller"):
        TemporalTilingConfig(32, 32)
    with pytest.raises(ValueError, match=">= 16 frames"):
        TemporalTilingConfig(8, 0)
