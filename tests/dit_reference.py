"""Reference-side helpers for the transformer tests: tiny and full-size configs, a randomised reference LTXModel
saved as an official checkpoint, random reference inputs, and converters from our inputs/perturbations to the
reference's."""

import copy
import dataclasses
import math

import mlx.core as mx
import numpy as np
import torch
from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier
from ltx_core.guidance.perturbations import (BatchedPerturbationConfig, Perturbation as RefPerturbation,
                                             PerturbationConfig, PerturbationType)
from ltx_core.model.transformer import LTXModelConfigurator, Modality as RefModality
from ltx_core.tools import AudioLatentTools, VideoLatentTools
from ltx_core.types import AudioLatentShape, VideoLatentShape

from ltx_mlx.models.transformer import Modality
from reference import prefixed_state_dict, randomize_, save_official_checkpoint

ASSERTED = {
    "dropout": 0.0, "attention_bias": True, "num_vector_embeds": None, "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000, "use_linear_projection": False, "only_cross_attention": False,
    "cross_attention_norm": True, "double_self_attention": False, "upcast_attention": False,
    "standardization_norm": "rms_norm", "norm_elementwise_affine": False, "qk_norm": "rms_norm",
    "positional_embedding_type": "rope", "use_audio_video_cross_attention": True, "share_ff": False,
    "av_cross_ada_norm": True, "use_middle_indices_grid": True,
}


def tiny_config(version: str) -> dict:
    """Metadata-shaped `transformer` sections at tiny sizes, deliberately unlike each other."""
    t = dict(ASSERTED, in_channels=8, out_channels=8, audio_in_channels=8, audio_out_channels=8, norm_eps=1e-6,
             positional_embedding_max_pos=[20, 2048, 2048], audio_positional_embedding_max_pos=[20],
             timestep_scale_multiplier=1000, av_ca_timestep_scale_multiplier=1000.0, rope_type="split",
             frequencies_precision="float64", positional_embedding_theta=10000.0, caption_channels=24)
    if version == "2":  # video 2x16 (split pad 1), audio 4x4: cross RoPE grouped by the video head count
        t.update(num_attention_heads=2, attention_head_dim=16, audio_num_attention_heads=4,
                 audio_attention_head_dim=4, num_layers=2)
    elif version == "2.3":
        t.update(num_attention_heads=4, attention_head_dim=12, audio_num_attention_heads=2,
                 audio_attention_head_dim=12, num_layers=3, positional_embedding_theta=7000.0,
                 in_channels=12, out_channels=12, caption_channels=3840,
                 apply_gated_attention=True, cross_attention_adaln=True, caption_proj_before_connector=True,
                 caption_projection_first_linear=False, caption_projection_second_linear=False,
                 caption_proj_input_norm=False, text_encoder_norm_type="per_token_rms")
    elif version == "2.3-interleaved":  # code-default rope/precision/av multiplier, other max_pos
        t.update(num_attention_heads=2, attention_head_dim=16, audio_num_attention_heads=2,
                 audio_attention_head_dim=8, num_layers=2, rope_type="interleaved",
                 frequencies_precision="float32", av_ca_timestep_scale_multiplier=1,
                 positional_embedding_max_pos=[16, 1024, 1536], audio_positional_embedding_max_pos=[24],
                 apply_gated_attention=True, cross_attention_adaln=True, caption_proj_before_connector=True)
    elif version.startswith("2-single-frequency"):  # one frequency per axis: video 8 // (2·3), audio and cross 2 // 2
        t.update(num_attention_heads=1, attention_head_dim=8, audio_num_attention_heads=1, audio_attention_head_dim=2,
                 num_layers=2, frequencies_precision="float32", rope_type=version.rsplit("-", 1)[1])
    else:
        raise ValueError(version)
    t["cross_attention_dim"] = t["num_attention_heads"] * t["attention_head_dim"]
    t["audio_cross_attention_dim"] = t["audio_num_attention_heads"] * t["audio_attention_head_dim"]
    return t


# Real metadata (spec 1.3; third-party reported): the reference builds these on the meta device.
FULL_BASE = dict(
    ASSERTED, attention_head_dim=128, audio_attention_head_dim=64, audio_cross_attention_dim=2048,
    audio_num_attention_heads=32, audio_out_channels=128, audio_in_channels=128, audio_positional_embedding_max_pos=[20],
    av_ca_timestep_scale_multiplier=1000.0, caption_channels=3840, connector_attention_head_dim=128,
    connector_num_learnable_registers=128, connector_positional_embedding_max_pos=[4096], cross_attention_dim=4096,
    frequencies_precision="float64", in_channels=128, norm_eps=1e-6, num_attention_heads=32, num_layers=48,
    out_channels=128, positional_embedding_max_pos=[20, 2048, 2048], positional_embedding_theta=10000.0,
    rope_type="split", timestep_scale_multiplier=1000)
FULL = {
    "ltx-2": dict(FULL_BASE, connector_num_attention_heads=30, connector_num_layers=2),
    "ltx-2.3": dict(FULL_BASE, connector_num_attention_heads=32, connector_num_layers=8,
                    audio_connector_num_attention_heads=32, audio_connector_attention_head_dim=64,
                    connector_apply_gated_attention=True, apply_gated_attention=True, cross_attention_adaln=True,
                    caption_proj_before_connector=True, caption_projection_first_linear=False,
                    caption_projection_second_linear=False, caption_proj_input_norm=False),
}


def build_reference(transformer_cfg: dict, seed: int = 1):
    model = LTXModelConfigurator.from_config({"transformer": copy.deepcopy(transformer_cfg)})
    model = model.to_empty(device="cpu")
    randomize_(model, seed=seed, std=0.15)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif "scale_shift_table" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return model.eval()


def save_reference(path, model, transformer_cfg: dict, model_version: str, extra: dict | None = None):
    tensors = prefixed_state_dict(model, "model.diffusion_model.")
    tensors.update(extra or {})
    return save_official_checkpoint(path, tensors, {"transformer": transformer_cfg, "vae": {"latent_channels": 8}},
                                    model_version)


def fake_side_tensors() -> dict:
    """Text-connector keys under the transformer prefix and VAE keys: a transformer load must leave them."""
    g = torch.Generator().manual_seed(5)
    return {
        "model.diffusion_model.video_embeddings_connector.learnable_registers": torch.randn(4, 8, generator=g),
        "model.diffusion_model.video_embeddings_connector.transformer_1d_blocks.0.attn1.to_q.weight":
            torch.randn(8, 8, generator=g),
        "model.diffusion_model.audio_embeddings_connector.learnable_registers": torch.randn(4, 8, generator=g),
        "vae.decoder.conv_in.conv.weight": torch.randn(4, 8, 3, 3, 3, generator=g),
        "vae.per_channel_statistics.mean-of-means": torch.randn(8, generator=g),
    }


def ref_perturbations(per_sample) -> BatchedPerturbationConfig:
    return BatchedPerturbationConfig([
        PerturbationConfig([RefPerturbation(PerturbationType[p.type.name], None if p.blocks is None else list(p.blocks))
                            for p in sample]) for sample in per_sample])


def make_inputs(cfg, batch=1, fps=24.0, seed=0, frames=3, h=2, w=3, audio_frames=7):
    g = torch.Generator().manual_seed(seed)
    C, AC = cfg["in_channels"], cfg["audio_in_channels"]
    vshape = VideoLatentShape(batch, C, frames, h, w)
    vstate = VideoLatentTools(VideoLatentPatchifier(1), vshape, fps=fps).create_initial_state(
        "cpu", torch.float32, torch.randn(tuple(vshape.to_torch_shape()), generator=g))
    ashape = AudioLatentShape(batch, 2, audio_frames, AC // 2)
    astate = AudioLatentTools(AudioPatchifier(1), ashape).create_initial_state(
        "cpu", torch.float32, torch.randn(tuple(ashape.to_torch_shape()), generator=g))
    projected = not cfg.get("caption_proj_before_connector", False)
    vctx_dim = cfg["caption_channels"] if projected else cfg["cross_attention_dim"]
    actx_dim = cfg["caption_channels"] if projected else cfg["audio_cross_attention_dim"]
    sigma = torch.linspace(0.8, 0.55, batch)
    vmask, amask = vstate.denoise_mask, astate.denoise_mask
    video = RefModality(latent=vstate.latent, sigma=sigma, timesteps=vmask * sigma[:, None, None],
                        positions=vstate.positions, context=torch.randn(batch, 5, vctx_dim, generator=g))
    audio = RefModality(latent=astate.latent, sigma=sigma.flip(0) * 0.9, timesteps=amask * sigma.flip(0)[:, None, None] * 0.9,
                        positions=astate.positions, context=torch.randn(batch, 6, actx_dim, generator=g))
    return video, audio, g


def conditioned(video: RefModality, audio: RefModality, g, hw: int):
    """Random per-token denoise masks, the first latent frame fully clean (image conditioning), a [0,1]
    self-attention mask with hard zeros, and an integer text-context mask."""
    B, T, _ = video.latent.shape
    vmask = torch.rand(B, T, 1, generator=g)
    vmask[:, :hw] = 0.0
    amask = torch.rand(B, audio.latent.shape[1], 1, generator=g)
    att = torch.rand(B, T, T, generator=g)
    att[att < 0.2] = 0.0
    att[:, torch.arange(T), torch.arange(T)] = 1.0
    ctx_mask = torch.ones(B, video.context.shape[1], dtype=torch.int64)
    ctx_mask[:, -2:] = 0
    video = dataclasses.replace(video, timesteps=vmask * video.sigma[:, None, None], attention_mask=att,
                                context_mask=ctx_mask)
    audio = dataclasses.replace(audio, timesteps=amask * audio.sigma[:, None, None])
    return video, audio


def _mx(t):
    if t is None:
        return None
    if t.dtype in (torch.int64, torch.int32, torch.bool):
        return mx.array(t.numpy())
    return mx.array(t.detach().float().numpy()).astype(mx.bfloat16 if t.dtype == torch.bfloat16 else mx.float32)


def to_ours(m: RefModality | None) -> Modality | None:
    if m is None:
        return None
    return Modality(latent=_mx(m.latent), sigma=_mx(m.sigma), timesteps=_mx(m.timesteps), positions=_mx(m.positions),
                    context=_mx(m.context), enabled=m.enabled, context_mask=_mx(m.context_mask),
                    attention_mask=_mx(m.attention_mask))


def np32(x) -> np.ndarray:
    return np.array(x.astype(mx.float32)) if isinstance(x, mx.array) else x.detach().float().numpy()


def pinned_timestep_embedding(timesteps, embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=1, scale=1,
                              max_period=10000):
    """The reference's sinusoid with its 128 frequencies correctly rounded.

    torch's float32 exp (MKL here, Sleef elsewhere) is off by one ulp in 2 of the 128 frequencies; multiplied by
    t ~ 800 that moves the model's output by ~1e-5 of its range, which is platform noise, not the model.
    """
    half = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32) / (half - downscale_freq_shift)
    args = scale * (timesteps[:, None].float() * torch.exp(exponent.double()).float()[None])
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    return torch.cat([emb[:, half:], emb[:, :half]], dim=-1) if flip_sin_to_cos else emb
