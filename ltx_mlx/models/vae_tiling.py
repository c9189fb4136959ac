"""Tiled video VAE decoding (streamed, chunk by chunk in time), blended like the reference's tiled decode.

Decoding splits the latent into overlapping tiles in time and space, decodes each tile, weights it with a
separable trapezoid mask and divides by the summed weights. Tiles are visited time-group by time-group and a
group's frames are yielded as soon as the next group has blended into their overlap, so memory is bounded by
one tile's activations plus two groups of output frames, however long the video is.

Tile shapes follow the reference's split, since any other split changes the blended output: along a
spatial axis all tiles but the last have one size; in time the first tile has `size` latent frames, the
middle ones `size + 1` (they start one frame early for causal context) and the last ends at the video's end.
So a video decodes with at most 3 × 2 × 2 distinct tile shapes, whatever its length.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import mlx.core as mx
import numpy as np

# The decoder's source of random draws: noise(shape) -> array.
Noise = Callable[[tuple], mx.array]


@dataclass(frozen=True)
class SpatialTilingConfig:
    tile_size_in_pixels: int
    tile_overlap_in_pixels: int = 0

    def __post_init__(self):
        size, overlap = self.tile_size_in_pixels, self.tile_overlap_in_pixels
        if size < 64 or size % 32 or overlap % 32 or not 0 <= overlap < size:
            raise ValueError(f"spatial tiling {size} px / overlap {overlap} px: the tile must be >= 64 px, and both "
                             "multiples of 32 with the overlap smaller than the tile")


@dataclass(frozen=True)
class TemporalTilingConfig:
    tile_size_in_frames: int
    tile_overlap_in_frames: int = 0

    def __post_init__(self):
        size, overlap = self.tile_size_in_frames, self.tile_overlap_in_frames
        if size < 16 or size % 8 or overlap % 8 or not 0 <= overlap < size:
            raise ValueError(f"temporal tiling {size} frames / overlap {overlap}: the tile must be >= 16 frames, and "
                             "both multiples of 8 with the overlap smaller than the tile")


@dataclass(frozen=True)
class TilingConfig:
    spatial_config: SpatialTilingConfig | None = None
    temporal_config: TemporalTilingConfig | None = None

    @classmethod
    def default(cls) -> "TilingConfig":
        return cls(SpatialTilingConfig(512, 64), TemporalTilingConfig(64, 24))


class Interval(NamedTuple):
    start: int
    end: int
    left: int  # blend ramp lengths
    right: int


def split_symmetric(length: int, size: int, overlap: int) -> list[Interval]:
    if length <= size:
        return [Interval(0, length, 0, 0)]
    if overlap >= size:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile size {size}")
    n = (length + size - 2 * overlap - 1) // (size - overlap)
    starts = [i * (size - overlap) for i in range(n)]
    return [Interval(s, length if i == n - 1 else s + size, overlap if i else 0, overlap if i < n - 1 else 0)
            for i, s in enumerate(starts)]


def split_temporal_latents(length: int, size: int, overlap: int) -> list[Interval]:
    """Later tiles start one latent frame earlier (causal context) and ramp over it."""
    tiles = split_symmetric(length, size, overlap)
    if len(tiles) == 1:
        return tiles
    return tiles[:1] + [Interval(t.start - 1, t.end, t.left + 1, t.right) for t in tiles[1:]]


def trapezoid_mask(length: int, left: int, right: int, left_from_zero: bool = False) -> np.ndarray:
    """Linear ramps that exclude their 0 and 1 end points (the left one starts at 0 when `left_from_zero`)."""
    left, right = max(0, min(left, length)), max(0, min(right, length))
    mask = np.ones(length, np.float32)
    if left:
        ramp = np.linspace(0.0, 1.0, left + 1)[:-1] if left_from_zero else np.linspace(0.0, 1.0, left + 2)[1:-1]
        mask[:left] *= ramp.astype(np.float32)
    if right:
        mask[length - right:] *= np.linspace(1.0, 0.0, right + 2)[1:-1].astype(np.float32)
    return mask


class Tile(NamedTuple):
    source: tuple[slice, slice, slice]  # F, H, W in the input
    target: tuple[slice, slice, slice]  # F, H, W in the output
    masks: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]

    def mask(self) -> mx.array:
        """(1, F, H, W, 1) separable blend mask."""
        m = np.ones((1, 1, 1), np.float32)
        for axis, m1 in enumerate(self.masks):
            if m1 is not None:
                shape = [1, 1, 1]
                shape[axis] = m1.shape[0]
                m = m * m1.reshape(shape)
        return mx.array(m)[None, ..., None]


def _tiles(axes: list[tuple[list[Interval], list[slice], list[np.ndarray | None]]]) -> list[Tile]:
    """Every combination of per-axis intervals, time-major like the reference's product."""
    tiles = []
    for combo in itertools.product(*[range(len(a[0])) for a in axes]):
        src = tuple(slice(a[0][i].start, a[0][i].end) for a, i in zip(axes, combo))
        dst = tuple(a[1][i] for a, i in zip(axes, combo))
        tiles.append(Tile(src, dst, tuple(a[2][i] for a, i in zip(axes, combo))))
    return tiles


def _whole(length: int) -> tuple[list[Interval], list[slice], list[None]]:
    return [Interval(0, length, 0, 0)], [slice(0, None)], [None]


# ---------------------------------------------------------------------------------------------------------
# Decoding

def decode_tiles(latent_shape: tuple, tiling: TilingConfig, time_factor: int, space_factor: int) -> list[Tile]:
    """Tiles of a (B, F', H', W', C) latent and where each lands in the decoded video."""
    _, F, H, W, _ = latent_shape
    axes = [_whole(F), _whole(H), _whole(W)]
    if tiling.spatial_config is not None:
        size = tiling.spatial_config.tile_size_in_pixels // space_factor
        overlap = tiling.spatial_config.tile_overlap_in_pixels // space_factor
        for axis, length in ((1, H), (2, W)):
            # the short side gets proportionally smaller tiles (Python's round, as the reference)
            tile = max(max(2, overlap + 1), round(size * length / max(H, W)))
            iv = split_symmetric(length, tile, overlap)
            axes[axis] = (iv, [slice(t.start * space_factor, t.end * space_factor) for t in iv],
                          [trapezoid_mask((t.end - t.start) * space_factor, t.left * space_factor,
                                          t.right * space_factor) for t in iv])
    if tiling.temporal_config is not None:
        size = tiling.temporal_config.tile_size_in_frames // time_factor
        overlap = tiling.temporal_config.tile_overlap_in_frames // time_factor
        iv = split_temporal_latents(F, size, overlap)
        targets = [slice(t.start * time_factor, 1 + (t.end - 1) * time_factor) for t in iv]
        masks = [trapezoid_mask(s.stop - s.start, 0 if t.left == 0 else 1 + (t.left - 1) * time_factor,
                                t.right * time_factor, True) for t, s in zip(iv, targets)]
        axes[0] = (iv, targets, masks)
    return _tiles(axes)


def gaussian_noise(key: mx.array | None = None) -> Noise:
    """The decoder's noise source: successive draws from `key` (or the global MLX seed), one stream for all tiles."""
    state = [key]

    def draw(shape):
        if state[0] is None:
            return mx.random.normal(tuple(shape))
        state[0], sub = mx.random.split(state[0])
        return mx.random.normal(tuple(shape), key=sub)

    return draw


def _decode_group(decoder, z, group: list[Tile], video_shape, timestep, noise):
    """Weighted sum of one time group's tiles: (buffer, weights) for its frames."""
    B, _, H, W, C = video_shape
    frames = group[0].target[0]
    n = (frames.stop if frames.stop is not None else video_shape[1]) - frames.start
    buffer = mx.zeros((B, n, H, W, C), dtype=z.dtype)
    weights = mx.zeros((1, n, H, W, 1), dtype=z.dtype)
    for tile in group:
        decoded = decoder(z[(slice(None), *tile.source)], timestep, noise=noise)
        mask = tile.mask().astype(z.dtype)
        t = min(n, decoded.shape[1])
        hs, ws = tile.target[1], tile.target[2]
        buffer[:, :t, hs, ws] += decoded[:, :t] * mask[:, :t]
        weights[:, :t, hs, ws] += mask[:, :t]
        mx.eval(buffer, weights)  # one tile's decode at a time: a group's tiles never share one graph
    return buffer, weights


def tiled_decode(decoder, z: mx.array, tiling: TilingConfig, timestep=None, key: mx.array | None = None,
                 noise=None) -> Iterator[mx.array]:
    """Decode normalised latents (B, F', H', W', C) tile by tile; yields (B, frames, H, W, 3) chunks in order."""
    decoder.check_input(z)
    noise = noise or gaussian_noise(key)
    tf, sf = decoder.time_factor, decoder.space_factor
    B, F, H, W, _ = z.shape
    video_shape = (B, (F - 1) * tf + 1, H * sf, W * sf, decoder.cfg.out_channels)
    tiles = decode_tiles(z.shape, tiling, tf, sf)
    groups = [list(g) for _, g in itertools.groupby(tiles, key=lambda t: (t.target[0].start, t.target[0].stop))]
    prev = prev_w = prev_frames = None
    for group in groups:
        frames = group[0].target[0]
        buffer, weights = _decode_group(decoder, z, group, video_shape, timestep, noise)
        if prev is not None:
            prev_stop = prev_frames.start + prev.shape[1]
            if prev_stop > frames.start:  # blend the overlap into both sides
                n, o = prev_stop - frames.start, frames.start - prev_frames.start
                prev[:, o:] += buffer[:, :n]
                prev_w[:, o:] += weights[:, :n]
                buffer[:, :n] = prev[:, o:]
                weights[:, :n] = prev_w[:, o:]
            chunk = (prev / mx.maximum(prev_w, 1e-8))[:, : frames.start - prev_frames.start]
            # the chunk leaves computed, and this group's buffers no longer hold the previous group's alive
            mx.eval(chunk, buffer, weights)
            yield chunk
        prev, prev_w, prev_frames = buffer, weights, frames
    chunk = prev / mx.maximum(prev_w, 1e-8)
    mx.eval(chunk)  # every chunk leaves computed: a consumer may drop it unread (bench/vae_decode_memory.py does)
    yield chunk


# ---------------------------------------------------------------------------------------------------------
# Encoding

MIN_SPATIAL_OVERLAP, MIN_TEMPORAL_OVERLAP = 64, 16
