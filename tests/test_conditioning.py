"""Latent states and conditioning items against ltx_core.tools / ltx_core.conditioning / ltx_pipelines helpers:
masks, positions, latents and attention masks must be equal (float32, and bf16 positions)."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from ltx_core import conditioning as rc
from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier
from ltx_core.tools import AudioLatentTools as RefAudioTools
from ltx_core.tools import VideoLatentTools as RefVideoTools
from ltx_core.types import AudioLatentShape, VideoLatentShape
from ltx_pipelines.retake import TemporalRegionMask as RefTemporalRegionMask
from ltx_pipelines.utils import helpers as ref_helpers
from ltx_pipelines.utils.args import ImageConditioningInput as RefImageInput
from PIL import Image

from ltx_mlx import conditioning as c
from ltx_mlx.media import load_image_conditioning
from ltx_mlx.pipelines.params import PIPELINES
from ltx_mlx.pipelines.settings import ImageConditioningInput, check_images

B, C, F, H, W = 2, 8, 4, 3, 5
DTYPES = {torch.float32: mx.float32, torch.bfloat16: mx.bfloat16}


def _tools(fps=24.0, frames=F, height=H, width=W, batch=B):
    ref = RefVideoTools(VideoLatentPatchifier(1), VideoLatentShape(batch, C, frames, height, width), fps=fps)
    return c.VideoLatentTools(batch, C, frames, height, width, fps), ref


def _latent(shape, seed):
    """Reference-layout (B, C, F, H, W) torch latent and its channels-last MLX copy."""
    t = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return mx.array(t.permute(0, 2, 3, 4, 1).numpy()), t


def _assert_same(ours: c.LatentState, theirs):
    for name in ("latent", "denoise_mask", "positions", "clean_latent", "attention_mask"):
        a, b = getattr(ours, name), getattr(theirs, name)
        if b is None:
            assert a is None, f"{name}: reference has none"
            continue
        assert a is not None, f"{name}: reference has one, ours none"
        assert a.dtype == DTYPES[b.dtype], f"{name}: dtype {a.dtype} vs {b.dtype}"
        assert tuple(a.shape) == tuple(b.shape), f"{name}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
        np.testing.assert_array_equal(np.array(a.astype(mx.float32)), b.float().numpy(), err_msg=name)


def _states(dtype=torch.float32, fps=24.0, **kw):
    ours_tools, ref_tools = _tools(fps, **kw)
    return ours_tools.create_initial_state(DTYPES[dtype]), ref_tools.create_initial_state("cpu", dtype), ours_tools, \
        ref_tools


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fps", [24.0, 25.0, 24000 / 1001])
def test_initial_video_state(dtype, fps):
    ours, theirs, tools, ref_tools = _states(dtype, fps)
    _assert_same(ours, theirs)
    z, zt = _latent((B, C, F, H, W), 1)
    _assert_same(tools.create_initial_state(DTYPES[dtype], z),
                 ref_tools.create_initial_state("cpu", dtype, zt.to(dtype)))
    with pytest.raises(ValueError, match="initial video latent"):
        tools.create_initial_state(mx.float32, mx.zeros((B, F, H, W + 1, C)))


def test_initial_audio_state_and_clear():
    ref = RefAudioTools(AudioPatchifier(1), AudioLatentShape(B, 8, 13, 16))
    ours = c.AudioLatentTools(B, 8, 13, 16)
    z = torch.randn(B, 8, 13, 16, generator=torch.Generator().manual_seed(3))
    for dtype in (torch.float32, torch.bfloat16):
        z_ours = mx.array(z.numpy().transpose(0, 2, 3, 1))  # channels-last (B, T, M, C)
        s, t = ours.create_initial_state(DTYPES[dtype], z_ours), ref.create_initial_state("cpu", dtype, z.to(dtype))
        _assert_same(s, t)
        _assert_same(ours.clear_conditioning(s), ref.clear_conditioning(t))
    np.testing.assert_array_equal(np.array(ours.unpatchify(s.latent).astype(mx.float32)).transpose(0, 3, 1, 2),
                                  ref.unpatchify(t).latent.float().numpy())
    with pytest.raises(ValueError, match=r"\(B, T, M, C\)"):
        ours.create_initial_state(mx.float32, mx.array(z.numpy()))  # the reference's (B, C, T, M) is refused


@pytest.mark.parametrize("latent_idx,frames,strength", [(0, 1, 1.0), (0, 1, 0.7), (2, 1, 0.35), (1, 3, 1.0)])
def test_image_by_latent_index(latent_idx, frames, strength):
    for dtype in (torch.float32, torch.bfloat16):
        ours, theirs, tools, ref_tools = _states(dtype)
        z, zt = _latent((B, C, frames, H, W), 5)
        ours = c.VideoConditionByLatentIndex(z.astype(DTYPES[dtype]), strength, latent_idx).apply_to(ours, tools)
        theirs = rc.VideoConditionByLatentIndex(zt.to(dtype), strength, latent_idx).apply_to(theirs, ref_tools)
        _assert_same(ours, theirs)


@pytest.mark.parametrize("frame_idx", [0, 1, 8, 17, 120])
@pytest.mark.parametrize("fps", [24.0, 25.0, 24000 / 1001])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keyframes(frame_idx, fps, dtype):
    ours, theirs, tools, ref_tools = _states(dtype, fps)
    for i, (idx, frames, strength) in enumerate([(frame_idx, 1, 0.8), (frame_idx + 16, 2, 1.0)]):
        z, zt = _latent((B, C, frames, H, W), 10 + i)
        ours = c.VideoConditionByKeyframeIndex(z.astype(DTYPES[dtype]), idx, strength).apply_to(ours, tools)
        theirs = rc.VideoConditionByKeyframeIndex(zt.to(dtype), idx, strength).apply_to(theirs, ref_tools)
        _assert_same(ours, theirs)
    assert ours.positions.dtype == mx.float32  # appended fp32 positions promote a bf16 state, as the reference
    _assert_same(tools.clear_conditioning(ours), ref_tools.clear_conditioning(theirs))
    np.testing.assert_array_equal(np.array(tools.unpatchify(ours.latent[:, :tools.token_count]).astype(mx.float32)),
                                  ref_tools.unpatchify(ref_tools.clear_conditioning(theirs)).latent.permute(
                                      0, 2, 3, 4, 1).float().numpy())


def test_keyframe_position_example():
    tools = c.VideoLatentTools(1, C, 16, 1, 1, 24.0)
    state = c.VideoConditionByKeyframeIndex(mx.zeros((1, 1, 1, 1, C)), 120, 1.0).apply_to(
        tools.create_initial_state(), tools)
    np.testing.assert_allclose(np.array(state.positions[0, 0, -1]), [5.0, 5.0 + 1 / 3], rtol=1e-6)


@pytest.mark.parametrize("downscale", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_video_and_attention_masks(downscale, dtype):
    ours, theirs, tools, ref_tools = _states(dtype, 25.0)
    md = DTYPES[dtype]
    z1, t1 = _latent((B, C, 2, H, W), 20)
    z2, t2 = _latent((B, C, 1, H, W), 21)
    z3, t3 = _latent((B, C, 1, H, W), 22)
    m = 2 * H * W
    per_token = torch.rand(m, generator=torch.Generator().manual_seed(4))
    per_batch = torch.rand(1, H * W, generator=torch.Generator().manual_seed(5))
    # (ours, reference): ref video with a (M,) mask, keyframe (mask extended with 1s), ref with (1, M), scalar
    steps = [
        (c.ConditioningItemAttentionStrengthWrapper(c.VideoConditionByReferenceLatent(z1.astype(md), downscale, 0.9),
                                                    mx.array(per_token.numpy())),
         rc.ConditioningItemAttentionStrengthWrapper(rc.VideoConditionByReferenceLatent(t1.to(dtype), downscale, 0.9),
                                                     per_token)),
        (c.VideoConditionByKeyframeIndex(z2.astype(md), 9, 0.6),
         rc.VideoConditionByKeyframeIndex(t2.to(dtype), 9, 0.6)),
        (c.ConditioningItemAttentionStrengthWrapper(c.VideoConditionByReferenceLatent(z3.astype(md), downscale),
                                                    mx.array(per_batch.numpy())),
         rc.ConditioningItemAttentionStrengthWrapper(rc.VideoConditionByReferenceLatent(t3.to(dtype), downscale),
                                                     per_batch)),
        (c.ConditioningItemAttentionStrengthWrapper(c.VideoConditionByKeyframeIndex(z2.astype(md), 30, 1.0), 0.3),
         rc.ConditioningItemAttentionStrengthWrapper(rc.VideoConditionByKeyframeIndex(t2.to(dtype), 30, 1.0), 0.3)),
    ]
    for mine, ref in steps:
        ours, theirs = mine.apply_to(ours, tools), ref.apply_to(theirs, ref_tools)
        _assert_same(ours, theirs)
    n = tools.token_count
    assert ours.attention_mask.shape == (B, n + 5 * H * W, n + 5 * H * W)
    assert float(ours.attention_mask[0, n:n + m, n + m + H * W:].max()) == 0  # earlier refs ↔ new refs
    cleared = tools.clear_conditioning(ours)
    assert cleared.attention_mask is None and cleared.latent.shape[1] == n


def test_attention_mask_shapes_rejected():
    ours, _, tools, _ = _states()
    z, _ = _latent((B, C, 1, H, W), 1)
    with pytest.raises(ValueError, match="attention mask"):
        c.ConditioningItemAttentionStrengthWrapper(c.VideoConditionByReferenceLatent(z), mx.ones((3, H * W))).apply_to(
            ours, tools)


@pytest.mark.parametrize("start,end", [(0.0, 0.0), (0.0, 0.3), (0.2, 0.5), (0.33, 10.0), (0.04, 0.0417)])
@pytest.mark.parametrize("fps", [24.0, 24000 / 1001])
def test_retake_masks(start, end, fps):
    tools, ref_tools = _tools(fps, frames=6, height=2, width=2)
    ours, theirs = tools.create_initial_state(), ref_tools.create_initial_state("cpu", torch.float32)
    _assert_same(c.TemporalRegionMask(start, end, fps).apply_to(ours, tools),
                 RefTemporalRegionMask(start, end, fps).apply_to(theirs, ref_tools))
    audio = c.AudioLatentTools(B, 8, 20, 16)
    ref_audio = RefAudioTools(AudioPatchifier(1), AudioLatentShape(B, 8, 20, 16))
    a, ta = audio.create_initial_state(), ref_audio.create_initial_state("cpu", torch.float32)
    masked = c.TemporalRegionMask(start, end, fps).apply_to(a, audio)
    _assert_same(masked, RefTemporalRegionMask(start, end, fps).apply_to(ta, ref_audio))
    assert 0 < float(masked.denoise_mask.sum()) < masked.denoise_mask.size or start == end or end > 1


def _encoder_pair():
    """The same exact toy 'VAE encoder' in both frameworks: every 32nd pixel, channels picked to make C."""
    pick = [i % 3 for i in range(C)]

    def ours(x):  # (1, 1, h, w, 3) -> (1, 1, h/32, w/32, C)
        return x[:, :, ::32, ::32][..., mx.array(pick)]

    def theirs(x):  # (1, 3, 1, h, w) -> (1, C, 1, h/32, w/32)
        return x[:, pick, :, ::32, ::32]

    return ours, theirs


@pytest.mark.parametrize("helper", ["combined_image_conditionings", "image_conditionings_by_adding_guiding_latent",
                                    "image_conditionings_by_replacing_latent"])
def test_user_images_mapping(tmp_path, helper):
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (70 + i * 30, 90, 3)).astype(np.uint8)).save(tmp_path / f"{i}.png")
    frames_idx = [0, 2] if helper == "image_conditionings_by_replacing_latent" else [0, 17]
    images = [(str(tmp_path / "0.png"), frames_idx[0], 1.0), (str(tmp_path / "1.png"), frames_idx[1], 0.75)]
    height, width, frames, fps = 64, 96, 25, 24.0
    enc_ours, enc_ref = _encoder_pair()
    inputs = [ImageConditioningInput(*im) for im in images]
    latents = [enc_ours(load_image_conditioning(im.path, height, width, crf=im.crf)) for im in inputs]
    ours_items = getattr(c, helper)(inputs, latents)
    ref_items = getattr(ref_helpers, helper)([RefImageInput(*im) for im in images], height, width, enc_ref,
                                             torch.float32, "cpu")
    assert [type(x).__name__ for x in ours_items] == [type(x).__name__ for x in ref_items]
    tools = c.VideoLatentTools.from_pixel_shape(1, frames, height, width, fps, channels=C)
    ref_tools = RefVideoTools(VideoLatentPatchifier(1), VideoLatentShape(1, C, 4, 2, 3), fps=fps)
    ours = c.apply_conditionings(tools.create_initial_state(), ours_items, tools)
    theirs = ref_helpers.state_with_conditionings(ref_tools.create_initial_state("cpu", torch.float32), ref_items,
                                                  ref_tools)
    _assert_same(ours, theirs)


def test_bad_conditioning_inputs(tmp_path):
    ours, _, tools, _ = _states()
    z, _ = _latent((B, C, 1, H, W), 1)
    with pytest.raises(ValueError, match="strength"):
        c.VideoConditionByKeyframeIndex(z, 8, 1.5)
    with pytest.raises(ValueError, match="valid: 0..3"):
        c.VideoConditionByLatentIndex(z, 1.0, 4).apply_to(ours, tools)
    with pytest.raises(ValueError, match="same|size"):
        c.VideoConditionByLatentIndex(mx.zeros((B, 1, H, W + 1, C)), 1.0, 0).apply_to(ours, tools)
    with pytest.raises(ValueError, match="channels-last"):
        c.VideoConditionByKeyframeIndex(mx.zeros((B, 1, H, W, C + 1)), 8, 1.0).apply_to(ours, tools)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    spec = PIPELINES["one-stage"]
    with pytest.raises(ValueError, match="outside the video"):
        check_images([ImageConditioningInput(str(tmp_path / "a.png"), 25, 1.0)], 25, spec)
    with pytest.raises(ValueError, match="does not exist"):
        check_images([ImageConditioningInput(str(tmp_path / "b.png"), 0, 1.0)], 25, spec)
    with pytest.raises(ValueError, match="strength"):
        check_images([ImageConditioningInput(str(tmp_path / "a.png"), 0, -0.1)], 25, spec)
    check_images([ImageConditioningInput(str(tmp_path / "a.png"), 24, 0.0)], 25, spec)


@pytest.mark.parametrize("shape,latent", [((2, 17, 64, 96), (3, 2, 3)), ((1, 9, 50, 70), (2, 3, 4)),
                                          ((1, 1, 40, 40), (1, 3, 3))])
def test_ic_lora_mask_downsampling(shape, latent):
    from ltx_pipelines.ic_lora import ICLoraPipeline

    mask = torch.rand(shape, generator=torch.Generator().manual_seed(9))
    theirs = ICLoraPipeline._downsample_mask_to_latent(mask[:, None], VideoLatentShape(shape[0], C, *latent))
    ours = c.downsample_mask_to_latent(mask.numpy(), *latent)
    assert tuple(ours.shape) == tuple(theirs.shape)
    err = float(np.abs(np.array(ours) - theirs.numpy()).max())
    print(f"IC-LoRA mask {shape} -> {latent}: max |diff| {err:.2e}")
    assert err <= 1e-6
    with pytest.raises(ValueError, match="latent frames"):
        c.downsample_mask_to_latent(np.zeros((1, 11, 8, 8)), 4, 1, 1)


def test_conditioned_tokens_survive_the_sampler():
    """Our states drive ltx_mlx.diffusion: strength-1 tokens stay exactly clean through noise and Euler steps."""
    from ltx_mlx.diffusion import DISTILLED_SIGMA_VALUES, GaussianNoiser, euler_denoising_loop

    tools = c.VideoLatentTools(1, C, F, H, W, 24.0)
    audio_tools = c.AudioLatentTools(1, 8, 7, 16)
    image, key = mx.random.normal((1, 1, H, W, C)), mx.random.normal((1, 1, H, W, C))
    items = [c.VideoConditionByLatentIndex(image, 1.0, 0), c.VideoConditionByKeyframeIndex(key, 16, 1.0)]
    noiser = GaussianNoiser(0)
    video = noiser(c.apply_conditionings(tools.create_initial_state(), items, tools))
    audio = noiser(audio_tools.create_initial_state())

    def denoise(v, a, sigmas, i):
        return mx.random.normal(v.latent.shape), mx.random.normal(a.latent.shape)

    for video, audio in euler_denoising_loop(DISTILLED_SIGMA_VALUES, video, audio, denoise):
        mx.eval(video.latent, audio.latent)
    n, per_frame = tools.token_count, H * W
    np.testing.assert_array_equal(np.array(video.latent[:, n:]), np.array(key.reshape(1, -1, C)))
    out = tools.unpatchify(tools.clear_conditioning(video).latent)
    assert out.shape == (1, F, H, W, C)
    np.testing.assert_array_equal(np.array(out[:, :1]), np.array(image))
    assert float(mx.abs(video.latent[:, per_frame:n]).max()) > 0
