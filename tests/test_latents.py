"""Latent shapes, patchifiers, token positions and RoPE tables against the reference (ltx_core tools and rope)."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier
from ltx_core.model.transformer.rope import (LTXRopeType, apply_rotary_emb, generate_freq_grid_np,
                                             generate_freq_grid_pytorch, precompute_freqs_cis)
from ltx_core.tools import AudioLatentTools, VideoLatentTools
from ltx_core.types import AudioLatentShape, VideoLatentShape, VideoPixelShape

from ltx_mlx.latents import (audio_latent_length, audio_positions, patchify_audio, patchify_video, unpatchify_audio,
                             unpatchify_video, video_latent_shape, video_positions)
from ltx_mlx.models.rope import apply_rope, frequency_grid, rope_table

from reference import to_np


@pytest.mark.parametrize("frames,height,width,fps", [(121, 512, 768, 24.0), (97, 704, 1216, 25.0),
                                                     (9, 64, 96, 30000 / 1001), (1, 32, 64, 8.0), (50, 100, 70, 48.0)])
def test_latent_shapes(frames, height, width, fps):
    px = VideoPixelShape(batch=1, frames=frames, height=height, width=width, fps=fps)
    ref = VideoLatentShape.from_pixel_shape(px)
    assert video_latent_shape(frames, height, width) == (ref.frames, ref.height, ref.width)
    assert audio_latent_length(frames, fps) == AudioLatentShape.from_video_pixel_shape(px).frames
    other = AudioLatentShape.from_video_pixel_shape(px, sample_rate=22050, hop_length=256, audio_latent_downsample_factor=2)
    assert audio_latent_length(frames, fps, sample_rate=22050, hop_length=256, downsample=2) == other.frames


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="too small"):
        video_latent_shape(9, 16, 64)
    with pytest.raises(ValueError, match="fps"):
        audio_latent_length(9, 0)
    with pytest.raises(ValueError, match="tokens"):
        unpatchify_video(mx.zeros((1, 10, 8)), 2, 2, 3)


@pytest.mark.parametrize("fps,dtype", [(24.0, torch.float32), (24.0, torch.bfloat16), (30000 / 1001, torch.bfloat16),
                                       (25.0, torch.float32), (12.5, torch.bfloat16)])
def test_video_positions_match_reference(fps, dtype):
    shape = VideoLatentShape(2, 8, 16, 16, 24)
    ref = VideoLatentTools(VideoLatentPatchifier(1), shape, fps=fps).create_initial_state("cpu", dtype).positions
    ours = video_positions(2, 16, 16, 24, fps, dtype=mx.bfloat16 if dtype == torch.bfloat16 else mx.float32)
    assert ours.dtype == (mx.bfloat16 if dtype == torch.bfloat16 else mx.float32)
    np.testing.assert_array_equal(to_np(ours), to_np(ref))


def test_audio_positions_match_reference():
    for sr, hop, ds, frames in ((16000, 160, 4, 126), (22050, 256, 2, 33)):
        shape = AudioLatentShape(2, 8, frames, 16)
        tools = AudioLatentTools(AudioPatchifier(1, sample_rate=sr, hop_length=hop, audio_latent_downsample_factor=ds),
                                 shape)
        ref = tools.create_initial_state("cpu", torch.float32).positions
        np.testing.assert_array_equal(to_np(audio_positions(2, frames, sr, hop, ds)), to_np(ref))


@pytest.mark.parametrize("patch", [1, 2])
def test_patchifiers_match_reference(patch):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(2, 6, 3, 4, 6, generator=g)
    ref = VideoLatentPatchifier(patch).patchify(v)
    ours = patchify_video(mx.array(v.numpy()), patch)
    np.testing.assert_array_equal(to_np(ours), to_np(ref))
    cl = patchify_video(mx.array(v.permute(0, 2, 3, 4, 1).numpy()), patch, channels_last=True)
    np.testing.assert_array_equal(to_np(cl), to_np(ref))
    back = unpatchify_video(ours, 3, 4, 6, patch)
    np.testing.assert_array_equal(to_np(back), v.numpy())
    assert unpatchify_video(ours, 3, 4, 6, patch, channels_last=True).shape == (2, 3, 4, 6, 6)

    a = torch.randn(2, 8, 7, 16, generator=g)
    ref_a = AudioPatchifier(1).patchify(a)
    ours_a = patchify_audio(mx.array(a.numpy()))
    np.testing.assert_array_equal(to_np(ours_a), to_np(ref_a))
    np.testing.assert_array_equal(to_np(patchify_audio(mx.array(a.permute(0, 2, 3, 1).numpy()), True)), to_np(ref_a))
    ref_back = AudioPatchifier(1).unpatchify(ref_a, AudioLatentShape(2, 8, 7, 16))
    np.testing.assert_array_equal(to_np(unpatchify_audio(ours_a, 8, 16)), to_np(ref_back))


def _as_reference_layout(table, rope_type):
    """Our (cos, signed sin) → the reference's precompute_freqs_cis layout."""
    if rope_type == "split":
        cos = np.array(table.cos[:, :, :, 0].astype(mx.float32)).transpose(0, 2, 1, 3)
        sin = np.array(table.sin[:, :, :, 1].astype(mx.float32)).transpose(0, 2, 1, 3)
    else:
        cos = np.repeat(np.array(table.cos[..., 0].astype(mx.float32)), 2, axis=-1)
        sin = np.repeat(np.array(table.sin[..., 1].astype(mx.float32)), 2, axis=-1)
    return cos, sin


ROPE_CASES = [  # (positions kind, dtype, dim, heads, rope_type, float64 grid, theta)
    ("video", torch.float32, 4096, 32, "split", True, 10000.0),
    ("video", torch.bfloat16, 4096, 32, "split", True, 10000.0),  # the reference's bf16 position arithmetic
    ("video", torch.bfloat16, 4096, 32, "interleaved", False, 10000.0),
    ("video", torch.float32, 96, 4, "interleaved", True, 500.0),
    ("video", torch.float32, 32, 2, "split", False, 10000.0),
    ("audio", torch.float32, 2048, 32, "split", True, 10000.0),
    ("cross", torch.bfloat16, 2048, 32, "split", True, 10000.0),
    ("audio", torch.float32, 64, 4, "interleaved", False, 7000.0),
]


@pytest.mark.parametrize("kind,dtype,dim,heads,rope_type,f64,theta", ROPE_CASES)
def test_rope_tables_match_reference(kind, dtype, dim, heads, rope_type, f64, theta):
    if kind == "audio":
        positions = AudioLatentTools(AudioPatchifier(1), AudioLatentShape(1, 8, 126, 16)).create_initial_state(
            "cpu", torch.float32).positions
        max_pos = [20]
    else:
        shape = VideoLatentShape(1, 8, 16, 16, 24)
        positions = VideoLatentTools(VideoLatentPatchifier(1), shape, fps=30000 / 1001).create_initial_state(
            "cpu", dtype).positions[:, :, ::5]  # a spread of tokens over the whole 121x512x768 grid
        max_pos = [20, 2048, 2048]
        if kind == "cross":
            positions, max_pos = positions[:, 0:1], [20]
    grid = generate_freq_grid_np if f64 else generate_freq_grid_pytorch
    ref_cos, ref_sin = precompute_freqs_cis(positions, dim, torch.float32, theta, max_pos, True, heads,
                                            LTXRopeType(rope_type), grid)
    ours_pos = mx.array(positions.float().numpy()).astype(mx.bfloat16 if dtype == torch.bfloat16 else mx.float32)
    table = rope_table(ours_pos, dim, theta, max_pos, heads, rope_type, f64)
    cos, sin = _as_reference_layout(table, rope_type)
    assert cos.shape == tuple(ref_cos.shape)
    err = max(np.abs(cos - ref_cos.numpy()).max(), np.abs(sin - ref_sin.numpy()).max())
    if f64:
        assert err <= 2e-7, f"RoPE table differs by {err:.2e}"  # measured 6.0e-8 (an ulp of 1)
    else:
        # torch's float32 pow is within an ulp of ours in a few frequencies; an ulp of ω ~ 1.5e4 rad is 1e-3
        n = positions.shape[1]
        ref_grid = generate_freq_grid_pytorch(theta, n, dim).numpy()
        ours_grid = np.array(frequency_grid(theta, n, dim, False))
        assert np.abs(ours_grid / ref_grid - 1).max() <= 1.2e-7, "float32 frequency grid off by more than an ulp"
        assert (ours_grid != ref_grid).mean() <= 0.02
        assert err <= 5e-4, f"RoPE table differs by {err:.2e}"  # measured <= 2.4e-4

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, positions.shape[2], dim, generator=g)
    ref_q = apply_rotary_emb(q, (ref_cos, ref_sin), LTXRopeType(rope_type))
    ours_q = apply_rope(mx.array(q.numpy()), table)
    tol = 3e-7 if f64 else 5e-4  # measured <= 1.2e-7 / 1.7e-4 (the one-ulp frequencies above)
    assert np.abs(np.array(ours_q) - ref_q.numpy()).max() <= tol * np.abs(ref_q.numpy()).max()


def test_bf16_positions_matter():
    """Sanity of the quirk test above: rounding positions to bf16 really changes the table."""
    pos32 = video_positions(1, 16, 16, 24, 24.0)
    pos16 = video_positions(1, 16, 16, 24, 24.0, dtype=mx.bfloat16)
    a = rope_table(pos32, 4096, 10000.0, [20, 2048, 2048], 32, "split", True)
    b = rope_table(pos16, 4096, 10000.0, [20, 2048, 2048], 32, "split", True)
    assert float(mx.abs(a.cos - b.cos).max()) > 0.5


def test_rope_rejects_bad_input():
    with pytest.raises(ValueError, match="rope_type"):
        rope_table(video_positions(1, 2, 2, 2, 24.0), 32, 10000.0, [20, 2048, 2048], 2, "spiral", True)
    with pytest.raises(ValueError, match="max_pos"):
        rope_table(video_positions(1, 2, 2, 2, 24.0), 32, 10000.0, [20], 2, "split", True)


@pytest.mark.parametrize("kind,dim,heads,rope_type", [("video", 8, 1, "split"), ("video", 6, 1, "interleaved"),
                                                      ("audio", 2, 1, "split"), ("audio", 2, 1, "interleaved")])
def test_single_frequency_per_axis_float32_grid(kind, dim, heads, rope_type):
    """dim // (2·axes) == 1 with the float32 grid: torch's linspace(0, 1, 1) is [0], so ω = π/2, not θ·π/2."""
    if kind == "audio":
        positions = AudioLatentTools(AudioPatchifier(1), AudioLatentShape(1, 8, 9, 16)).create_initial_state(
            "cpu", torch.float32).positions
        max_pos = [20]
    else:
        positions = VideoLatentTools(VideoLatentPatchifier(1), VideoLatentShape(1, 8, 3, 2, 3),
                                     fps=24.0).create_initial_state("cpu", torch.float32).positions
        max_pos = [20, 2048, 2048]
    n = positions.shape[1]
    ref_grid = generate_freq_grid_pytorch(10000.0, n, dim).numpy()
    np.testing.assert_array_equal(np.array(frequency_grid(10000.0, n, dim, False)), ref_grid)
    ref_cos, ref_sin = precompute_freqs_cis(positions, dim, torch.float32, 10000.0, max_pos, True, heads,
                                            LTXRopeType(rope_type), generate_freq_grid_pytorch)
    cos, sin = _as_reference_layout(rope_table(mx.array(positions.numpy()), dim, 10000.0, max_pos, heads, rope_type,
                                               False), rope_type)
    assert cos.shape == tuple(ref_cos.shape)
    assert max(np.abs(cos - ref_cos.numpy()).max(), np.abs(sin - ref_sin.numpy()).max()) <= 1e-6
