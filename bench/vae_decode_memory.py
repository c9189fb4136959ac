"""Memory model of the video VAE decode: measured peaks of the FULL-SIZE decoder (random weights) and a fit.

Runs the real LTX-2.3 (default) or LTX-2 decoder architecture in float32 on the default device at a few small
sizes, untiled and tiled/streamed, with `mx.get_peak_memory()` reset before each run (weights excluded), with
every convolution run one output frame at a time (`video_vae.CONV_CHUNK_BYTES = 0`; the unfold buffer of
MLX's CPU convolution then scales with one frame's area, not with the frame count), and fits

    activations ≈ a · (frames × H × W) + c · (H × W) + b

on the untiled runs. A tiled, streamed decode holds one tile's activations plus the output buffers of two
time groups (frames × H × W × (3 + 1) each, and the chunk being yielded); the tiled runs check that. It
predicts 768×512×121 and 1536×1024×121, untiled and tiled with `TilingConfig.default()`. bf16 halves every
term (same element counts, 2 bytes); predicted, not measured, since bf16 convolutions are scalar loops on
x86 CPUs.

    python bench/vae_decode_memory.py [--version 2|2.3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ltx_mlx, not an installed one
from ltx_mlx.models import video_vae
from ltx_mlx.models.vae_tiling import (SpatialTilingConfig, TemporalTilingConfig, TilingConfig, decode_tiles,
                                       tiled_decode)
from ltx_mlx.models.video_vae import VideoDecoder, VideoVAEConfig

BLOCKS = {
    "2": [["res_x", {"num_layers": 5, "inject_noise": False}], ["compress_all", {"residual": True, "multiplier": 2}],
          ["res_x", {"num_layers": 5, "inject_noise": False}], ["compress_all", {"residual": True, "multiplier": 2}],
          ["res_x", {"num_layers": 5, "inject_noise": False}], ["compress_all", {"residual": True, "multiplier": 2}],
          ["res_x", {"num_layers": 5, "inject_noise": False}]],
    "2.3": [["res_x", {"num_layers": 4}], ["compress_space", {"multiplier": 2}], ["res_x", {"num_layers": 6}],
            ["compress_time", {"multiplier": 2}], ["res_x", {"num_layers": 4}], ["compress_all", {"multiplier": 1}],
            ["res_x", {"num_layers": 2}], ["compress_all", {"multiplier": 2}], ["res_x", {"num_layers": 2}]],
}
GB = 1e9


def full_decoder(version: str) -> VideoDecoder:
    cfg = VideoVAEConfig.from_dict({"latent_channels": 128, "decoder_base_channels": 128, "timestep_conditioning": False,
                                    "spatial_padding_mode": "zeros" if version == "2.3" else "reflect",
                                    "decoder_blocks": BLOCKS[version]})
    return VideoDecoder(cfg)


def latent_shape(frames: int, height: int, width: int) -> tuple:
    return (1, (frames - 1) // 8 + 1, height // 32, width // 32, 128)


def measure(decoder: VideoDecoder, size: tuple, tiling: TilingConfig | None) -> tuple[float, float]:
    z = mx.random.normal(latent_shape(*size))
    mx.eval(z)
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    t = time.time()
    if tiling is None:
        mx.eval(decoder(z))
    else:
        for chunk in tiled_decode(decoder, z, tiling):
            del chunk  # streamed: each chunk would be written out and dropped
    return (mx.get_peak_memory() - base) / GB, time.time() - t


def tiled_overheads(size: tuple, tiling: TilingConfig, itemsize: int = 4) -> tuple[tuple, float]:
    """(largest tile's latent shape, bytes of the streamed output buffers: two groups of frames × (3 + 1) + a chunk)."""
    frames, height, width = size
    tiles = decode_tiles(latent_shape(*size), tiling, 8, 32)
    biggest = max(tiles, key=lambda t: np.prod([s.stop - s.start for s in t.source]))
    tile = (1, *[s.stop - s.start for s in biggest.source], 128)
    group_frames = max((t.target[0].stop or frames) - t.target[0].start for t in tiles)
    return tile, group_frames * height * width * (2 * 4 + 3) * itemsize / GB


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--version", choices=sorted(BLOCKS), default="2.3")
    args = p.parse_args(argv)
    video_vae.CONV_CHUNK_BYTES = 0
    decoder = full_decoder(args.version)
    mx.eval(decoder.parameters())
    weights = sum(v.nbytes for _, v in tree_flatten(decoder.parameters()))
    print(f"LTX-{args.version} full-size decoder, random weights, float32, device {mx.default_device()}; "
          f"weights {weights / GB:.2f} GB (not counted below); convolutions one output frame at a time")

    untiled = [(9, 64, 64), (17, 64, 64), (9, 128, 128), (17, 128, 128)]
    small = TilingConfig(SpatialTilingConfig(64, 32), TemporalTilingConfig(24, 8))
    tiled = [(41, 64, 64), (41, 96, 96)]
    rows = []
    print(f"{'mode':8} {'frames x H x W':>16} {'pixel-frames':>12} {'peak act GB':>11} {'s':>6}")
    for mode, sizes, tiling in (("untiled", untiled, None), ("tiled", tiled, small)):
        for size in sizes:
            peak, secs = measure(decoder, size, tiling)
            rows.append((mode, size, peak))
            print(f"{mode:8} {'%d x %d x %d' % size:>16} {np.prod(size):12d} {peak:11.3f} {secs:6.1f}")

    fit = [(s, pk) for m, s, pk in rows if m == "untiled"]
    A = np.array([[f * h * w, h * w, 1.0] for (f, h, w), _ in fit])
    y = np.array([pk for _, pk in fit])
    (a, c, b), *_ = np.linalg.lstsq(A, y, rcond=None)
    print(f"\nfit (untiled): activations = {a * GB:.1f} B x frames*H*W + {c * GB:.1f} B x H*W + {b:.3f} GB   "
          f"(residuals {', '.join('%+.3f' % r for r in y - A @ [a, c, b])} GB)")

    def predict(size, tiling):
        if tiling is None:
            f, h, w = size
            return a * f * h * w + c * h * w + b
        tile, buffers = tiled_overheads(size, tiling)
        return a * ((tile[1] - 1) * 8 + 1) * tile[2] * 32 * tile[3] * 32 + c * tile[2] * 32 * tile[3] * 32 + b + buffers

    print("tiled check (measured vs predicted):",
          ", ".join(f"{'%dx%dx%d' % s}: {pk:.3f} vs {predict(s, small):.3f} GB" for m, s, pk in rows if m == "tiled"))
    print(f"\nprediction, LTX-{args.version} decoder, activations only (float32; bf16 is half):")
    for size in ((121, 512, 768), (121, 1024, 1536)):
        tile, buffers = tiled_overheads(size, TilingConfig.default())
        untiled_gb, tiled_gb = predict(size, None), predict(size, TilingConfig.default())
        print(f"  {size[2]}x{size[1]}x{size[0]}: untiled {untiled_gb:6.2f} GB (bf16 {untiled_gb / 2:5.2f}); "
              f"tiled+streamed, default 512px/64 + 64f/24 (largest tile {tile[1]}x{tile[2]}x{tile[3]} latents, "
              f"output buffers {buffers:.2f} GB): {tiled_gb:5.2f} GB (bf16 {tiled_gb / 2:5.2f})")


if __name__ == "__main__":
    main()
