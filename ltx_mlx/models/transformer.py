"""The LTX-2 / LTX-2.3 audio-video diffusion transformer (the reference's `LTXModel` and `X0Model`).

Two token streams, video and audio, run through the same blocks: self-attention, text cross-attention,
audio↔video cross-attention and a feed-forward, each modulated by AdaLN tables driven by the timestep.
LTX-2.3 adds gated attention, AdaLN on the text cross-attention and moves the caption projection out of
the transformer; all of it is switched by the checkpoint's `config["transformer"]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .perturbations import Perturbations, PerturbationType
from .activations import gelu_tanh, maybe_compile
from .base import BaseConfig, check_choice
from .rope import ROPE_TYPES, RopeTable, apply_rope, rope_table

PREFIX = "model.diffusion_model."
# Text-side modules stored under the transformer's prefix; the text encoder loads them.
CONNECTOR_PREFIXES = (PREFIX + "video_embeddings_connector.", PREFIX + "audio_embeddings_connector.")

# Keys whose values the reference asserts (anything else is a model it cannot build either).
_REQUIRED_VALUES = {
    "dropout": 0.0, "attention_bias": True, "num_vector_embeds": None, "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000, "use_linear_projection": False, "only_cross_attention": False,
    "cross_attention_norm": True, "double_self_attention": False, "upcast_attention": False,
    "standardization_norm": "rms_norm", "norm_elementwise_affine": False, "qk_norm": "rms_norm",
    "positional_embedding_type": "rope", "use_audio_video_cross_attention": True, "share_ff": False,
    "av_cross_ada_norm": True, "use_middle_indices_grid": True,
}
_ATTENTION_TYPES = ("default", "pytorch", "xformers", "flash_attention_3")  # backends; all the same math here


@dataclass
class TransformerConfig(BaseConfig):
    """`config["transformer"]` of an official checkpoint; absent keys take the reference's code defaults."""

    num_attention_heads: int = 32
    attention_head_dim: int = 128
    in_channels: int = 128
    out_channels: int = 128
    num_layers: int = 48
    cross_attention_dim: int = 4096
    norm_eps: float = 1e-6
    attention_type: str = "default"
    positional_embedding_theta: float = 10000.0
    positional_embedding_max_pos: list = field(default_factory=lambda: [20, 2048, 2048])
    timestep_scale_multiplier: float = 1000
    use_middle_indices_grid: bool = True
    audio_num_attention_heads: int = 32
    audio_attention_head_dim: int = 64
    audio_in_channels: int = 128
    audio_out_channels: int = 128
    audio_cross_attention_dim: int = 2048
    audio_positional_embedding_max_pos: list = field(default_factory=lambda: [20])
    av_ca_timestep_scale_multiplier: float = 1
    rope_type: str = "interleaved"
    frequencies_precision: str | None = None
    apply_gated_attention: bool = False
    cross_attention_adaln: bool = False
    caption_proj_before_connector: bool = False
    caption_channels: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        for key, expected in _REQUIRED_VALUES.items():
            if d.get(key) != expected:
                raise ValueError(f"transformer config: {key} is {d.get(key)!r}, but LTX-2 transformers need "
                                 f"{expected!r} (the reference asserts it); this is not an LTX-2/LTX-2.3 checkpoint")
        # null values take the code defaults, as absent keys do
        return super().from_dict({k: v for k, v in d.items() if v is not None})

    def validate(self):
        check_choice("transformer config", "rope_type", self.rope_type, ROPE_TYPES)
        check_choice("transformer config", "attention_type", self.attention_type, _ATTENTION_TYPES)
        if self.cross_attention_dim != self.inner_dim:
            raise ValueError(f"transformer config: cross_attention_dim ({self.cross_attention_dim}) must equal "
                             f"num_attention_heads x attention_head_dim ({self.inner_dim})")
        if self.audio_cross_attention_dim != self.audio_inner_dim:
            raise ValueError(f"transformer config: audio_cross_attention_dim ({self.audio_cross_attention_dim}) must "
                             f"equal audio heads x head dim ({self.audio_inner_dim})")
        if self.has_caption_projection and not self.caption_channels:
            raise ValueError("transformer config: caption_channels is needed when the caption projection lives in "
                             "the transformer (caption_proj_before_connector false)")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def audio_inner_dim(self) -> int:
        return self.audio_num_attention_heads * self.audio_attention_head_dim

    @property
    def double_precision_rope(self) -> bool:
        return self.frequencies_precision == "float64"

    @property
    def has_caption_projection(self) -> bool:
        return not self.caption_proj_before_connector

    @property
    def adaln_coefficient(self) -> int:
        return 9 if self.cross_attention_adaln else 6


# ---------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Modality:
    """One stream's input, as the reference's `Modality`.

    latent `(B, T, C)` patchified tokens; sigma `(B,)` the step's noise level; timesteps `(B, T)` or `(B, T, 1)`
    per-token `denoise_mask · sigma`; positions `(B, n_axes, T, 2)` bounds; context `(B, S, D)` text
    embeddings; context_mask `(B, S)` integer/bool keep-mask (or an additive float bias);
    attention_mask `(B, T, T)` self-attention strengths in [0, 1].
    """

    latent: mx.array
    sigma: mx.array
    timesteps: mx.array
    positions: mx.array
    context: mx.array
    enabled: bool = True
    context_mask: mx.array | None = None
    attention_mask: mx.array | None = None


# ---------------------------------------------------------------------------------------------- modules


def rms(x: mx.array, eps: float) -> mx.array:
    return mx.fast.rms_norm(x, None, eps)


@maybe_compile
def modulate(x_norm: mx.array, scale: mx.array, shift: mx.array) -> mx.array:
    return x_norm * (1 + scale) + shift


@maybe_compile
def gated_residual(x: mx.array, h: mx.array, gate: mx.array) -> mx.array:
    return x + h * gate


class Attention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int, eps: float, gated: bool):
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads, self.dim_head = heads, dim_head
        self.q_norm = nn.RMSNorm(inner, eps=eps)
        self.k_norm = nn.RMSNorm(inner, eps=eps)
        self.to_q = nn.Linear(query_dim, inner)
        self.to_k = nn.Linear(context_dim, inner)
        self.to_v = nn.Linear(context_dim, inner)
        if gated:
            self.to_gate_logits = nn.Linear(query_dim, heads)
        self.to_out = [nn.Linear(inner, query_dim), nn.Identity()]

    def __call__(self, x, context=None, mask=None, pe: RopeTable | None = None, k_pe: RopeTable | None = None,
                 keep: mx.array | None = None, passthrough: bool = False):
        """`passthrough`: STG for the whole batch (output = to_v(context)); `keep` (B,1,1): per sample."""
        context = x if context is None else context
        B, T, _ = x.shape
        H, D = self.heads, self.dim_head
        v = self.to_v(context)
        if passthrough:
            out = v.reshape(B, T, H, D)
        else:
            q = self.q_norm(self.to_q(x))
            k = self.k_norm(self.to_k(context))
            if pe is not None:
                q = apply_rope(q, pe)
                k = apply_rope(k, pe if k_pe is None else k_pe)
            out = self._attend(q, k, v, mask)  # (B, T, H, D), strided
            if keep is not None:
                out = mx.where(keep[..., None] > 0, out, v.reshape(B, T, H, D))
        if "to_gate_logits" in self:
            out = out * (2 * mx.sigmoid(self.to_gate_logits(x)))[..., None]
        return self.to_out[0](out.reshape(B, T, H * D))

    def _attend(self, q, k, v, mask):
        B, T, _ = q.shape
        H, D = self.heads, self.dim_head
        q, k, v = (t.reshape(B, -1, H, D).transpose(0, 2, 1, 3) for t in (q, k, v))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(D), mask=mask)
        return out.transpose(0, 2, 1, 3)


class GELUProj(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def __call__(self, x):
        return gelu_tanh(self.proj(x))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = [GELUProj(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)]

    def __call__(self, x):
        return self.net[2](self.net[0](x))


def timestep_sinusoid(t: mx.array, dim: int = 256, max_period: float = 10000.0) -> mx.array:
    """`[cos(t·f), sin(t·f)]`, f_i = exp(−ln(max_period)·i/half), in float32."""
    half = dim // 2
    exponent = (np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32)) / np.float32(half)
    # correctly rounded: t·f reaches ~1000 rad, so one ulp of f shows in the output (libm/MKL exps differ there)
    freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)
    args = t.astype(mx.float32)[:, None] * mx.array(freqs)[None]
    return mx.concatenate([mx.cos(args), mx.sin(args)], axis=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def __call__(self, x):
        return self.linear_2(nn.silu(self.linear_1(x)))


class CombinedTimestepEmbedding(nn.Module):
    """PixArt-α combined timestep embedding without the size embedding (the DiT's AdaLN and the video VAE's)."""

    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(256, dim)

    def __call__(self, t: mx.array, dtype: mx.Dtype) -> mx.array:
        return self.timestep_embedder(timestep_sinusoid(t).astype(dtype))


class AdaLayerNormSingle(nn.Module):
    """timestep → (coefficient·dim modulation rows, the embedded timestep)."""

    def __init__(self, dim: int, coefficient: int):
        super().__init__()
        self.emb = CombinedTimestepEmbedding(dim)
        self.linear = nn.Linear(dim, coefficient * dim)

    def __call__(self, t: mx.array, dtype) -> tuple[mx.array, mx.array]:
        embedded = self.emb(t, dtype)
        return self.linear(nn.silu(embedded)), embedded


class TextProjection(nn.Module):
    def __init__(self, in_features: int, hidden: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)

    def __call__(self, x):
        return self.linear_2(gelu_tanh(self.linear_1(x)))


# ---------------------------------------------------------------------------------------------- block


@dataclass
class StreamArgs:
    """One stream inside the blocks (the reference's `TransformerArgs`)."""

    x: mx.array
    context: mx.array
    context_mask: mx.array | None
    timesteps: mx.array  # (B, T|1, coefficient, inner)
    embedded_timestep: mx.array  # (B, T|1, inner)
    pe: RopeTable
    enabled: bool = True
    prompt_timestep: mx.array | None = None  # (B, 1, 2, inner)
    self_attention_mask: mx.array | None = None
    cross_pe: RopeTable | None = None
    cross_scale_shift_timestep: mx.array | None = None  # (B, 1, 4, inner)
    cross_gate_timestep: mx.array | None = None  # (B, 1, 1, inner)


def _ada(table: mx.array, timesteps: mx.array, rows: slice) -> list[mx.array]:
    values = table[rows].astype(timesteps.dtype) + timesteps[:, :, rows]
    return [values[:, :, i] for i in range(values.shape[2])]


class TransformerBlock(nn.Module):
    def __init__(self, idx: int, c: TransformerConfig):
        super().__init__()
        self.idx, self.eps, self.cross_attention_adaln = idx, c.norm_eps, c.cross_attention_adaln
        V, A, gated = c.inner_dim, c.audio_inner_dim, c.apply_gated_attention
        vh, vd = c.num_attention_heads, c.attention_head_dim
        ah, ad = c.audio_num_attention_heads, c.audio_attention_head_dim
        self.attn1 = Attention(V, None, vh, vd, c.norm_eps, gated)
        self.attn2 = Attention(V, c.cross_attention_dim, vh, vd, c.norm_eps, gated)
        self.ff = FeedForward(V)
        self.scale_shift_table = mx.zeros((c.adaln_coefficient, V))
        self.audio_attn1 = Attention(A, None, ah, ad, c.norm_eps, gated)
        self.audio_attn2 = Attention(A, c.audio_cross_attention_dim, ah, ad, c.norm_eps, gated)
        self.audio_ff = FeedForward(A)
        self.audio_scale_shift_table = mx.zeros((c.adaln_coefficient, A))
        self.audio_to_video_attn = Attention(V, A, ah, ad, c.norm_eps, gated)
        self.video_to_audio_attn = Attention(A, V, ah, ad, c.norm_eps, gated)
        self.scale_shift_table_a2v_ca_audio = mx.zeros((5, A))
        self.scale_shift_table_a2v_ca_video = mx.zeros((5, V))
        if c.cross_attention_adaln:
            self.prompt_scale_shift_table = mx.zeros((2, V))
            self.audio_prompt_scale_shift_table = mx.zeros((2, A))

    def _self_and_text(self, s: StreamArgs, attn1, attn2, table, prompt_table, skip: PerturbationType, perturbations):
        x = s.x
        shift, scale, gate = _ada(table, s.timesteps, slice(0, 3))
        every, keep = perturbations.keep_mask(skip, self.idx, x.dtype)
        h = attn1(modulate(rms(x, self.eps), scale, shift), pe=s.pe, mask=s.self_attention_mask,
                  keep=keep, passthrough=every)
        x = gated_residual(x, h, gate)
        if self.cross_attention_adaln:
            shift_q, scale_q, gate_q = _ada(table, s.timesteps, slice(6, 9))
            shift_kv, scale_kv = _ada(prompt_table, s.prompt_timestep, slice(0, 2))
            context = modulate(s.context, scale_kv, shift_kv)
            x = gated_residual(x, attn2(modulate(rms(x, self.eps), scale_q, shift_q), context, s.context_mask), gate_q)
        else:
            x = x + attn2(rms(x, self.eps), s.context, s.context_mask)
        return x

    def _feed_forward(self, x, s: StreamArgs, ff, table):
        shift, scale, gate = _ada(table, s.timesteps, slice(3, 6))
        return gated_residual(x, ff(modulate(rms(x, self.eps), scale, shift)), gate)

    def _av_values(self, table, s: StreamArgs, rows: slice):
        scale, shift = _ada(table[:4], s.cross_scale_shift_timestep, rows)
        (gate,) = _ada(table[4:], s.cross_gate_timestep, slice(0, 1))
        return scale, shift, gate

    def __call__(self, video: StreamArgs | None, audio: StreamArgs | None, perturbations: Perturbations):
        vx = video.x if video is not None else None
        ax = audio.x if audio is not None else None
        run_v = video is not None and video.enabled and vx.size > 0
        run_a = audio is not None and audio.enabled and ax.size > 0
        run_a2v = run_v and audio is not None and ax.size > 0
        run_v2a = run_a and video is not None and vx.size > 0

        if run_v:
            vx = self._self_and_text(video, self.attn1, self.attn2, self.scale_shift_table,
                                     getattr(self, "prompt_scale_shift_table", None), PerturbationType.SKIP_VIDEO_SELF_ATTN,
                                     perturbations)
        if run_a:
            ax = self._self_and_text(audio, self.audio_attn1, self.audio_attn2, self.audio_scale_shift_table,
                                     getattr(self, "audio_prompt_scale_shift_table", None), PerturbationType.SKIP_AUDIO_SELF_ATTN,
                                     perturbations)

        if run_a2v or run_v2a:
            # both directions read the states after text cross-attention; A→V runs first
            vn, an = rms(vx, self.eps), rms(ax, self.eps)
            skip_all, _ = perturbations.keep_mask(PerturbationType.SKIP_A2V_CROSS_ATTN, self.idx, vx.dtype)
            if run_a2v and not skip_all:
                v_scale, v_shift, v_gate = self._av_values(self.scale_shift_table_a2v_ca_video, video, slice(0, 2))
                a_scale, a_shift, _ = self._av_values(self.scale_shift_table_a2v_ca_audio, audio, slice(0, 2))
                h = self.audio_to_video_attn(modulate(vn, v_scale, v_shift), modulate(an, a_scale, a_shift),
                                             pe=video.cross_pe, k_pe=audio.cross_pe)
                vx = self._gated(vx, h, v_gate, PerturbationType.SKIP_A2V_CROSS_ATTN, perturbations)
            skip_all, _ = perturbations.keep_mask(PerturbationType.SKIP_V2A_CROSS_ATTN, self.idx, ax.dtype)
            if run_v2a and not skip_all:
                a_scale, a_shift, a_gate = self._av_values(self.scale_shift_table_a2v_ca_audio, audio, slice(2, 4))
                v_scale, v_shift, _ = self._av_values(self.scale_shift_table_a2v_ca_video, video, slice(2, 4))
                h = self.video_to_audio_attn(modulate(an, a_scale, a_shift), modulate(vn, v_scale, v_shift),
                                             pe=audio.cross_pe, k_pe=video.cross_pe)
                ax = self._gated(ax, h, a_gate, PerturbationType.SKIP_V2A_CROSS_ATTN, perturbations)

        if run_v:
            vx = self._feed_forward(vx, video, self.ff, self.scale_shift_table)
        if run_a:
            ax = self._feed_forward(ax, audio, self.audio_ff, self.audio_scale_shift_table)
        return vx, ax

    def _gated(self, x, h, gate, skip: PerturbationType, perturbations: Perturbations):
        _, keep = perturbations.keep_mask(skip, self.idx, h.dtype)
        return gated_residual(x, h, gate) if keep is None else x + h * gate * keep


# ---------------------------------------------------------------------------------------------- model


def _per_token_embedding(adaln: AdaLayerNormSingle, t: mx.array, dtype) -> tuple[mx.array, mx.array]:
    """AdaLN of per-token timesteps `(B, T)`, evaluated once per distinct value.

    Returns `(B, T|1, coefficient·dim)` modulation rows and `(B, T|1, dim)` embedded timesteps; T collapses
    to 1 when every sample has a single timestep (no conditioning tokens).
    """
    values = np.array(t.astype(mx.float32))
    if (values == values[:, :1]).all():
        rows, embedded = adaln(mx.array(values[:, 0]), dtype)
        return rows[:, None], embedded[:, None]
    unique, inverse = np.unique(values, return_inverse=True)
    rows, embedded = adaln(mx.array(unique), dtype)
    index = mx.array(inverse.reshape(values.shape).astype(np.int32))
    return rows[index], embedded[index]


def _per_sample(value, B: int) -> mx.array:
    """A scalar or `(B,)` sigma as a float32 `(B,)` array."""
    value = mx.array(value, dtype=mx.float32) if not isinstance(value, mx.array) else value.astype(mx.float32)
    if value.size not in (1, B):
        raise ValueError(f"sigma must be a scalar or one value per sample ({B}), got shape {value.shape}")
    return mx.broadcast_to(value.reshape(-1), (B,))


def _self_attention_bias(mask: mx.array | None, dtype) -> mx.array | None:
    """[0, 1] strengths → additive bias `(B, 1, T, T)`: log(m), and the dtype's minimum where m ≤ 0."""
    if mask is None:
        return None
    info = mx.finfo(dtype)
    m = mask.astype(mx.float32) if mask.dtype not in (mx.float32, mx.float64) else mask
    log = mx.log(mx.maximum(m, info.smallest_normal)).astype(dtype)
    return mx.where(m > 0, log, mx.array(info.min, dtype=dtype))[:, None]


def _context_bias(mask: mx.array | None, dtype) -> mx.array | None:
    if mask is None:
        return None
    if mx.issubdtype(mask.dtype, mx.floating):
        return mask.astype(dtype)  # already an additive bias
    bias = (mask.astype(dtype) - 1) * mx.finfo(dtype).max
    return bias.reshape(mask.shape[0], 1, -1, mask.shape[-1])


# From this many tokens per forward (batch x (video + audio)) each block is evaluated on its own: a 48-block
# LTX-2.3 forward at 1024 tokens is ~40 TFLOP, seconds on any Mac; one block of it is tens of milliseconds.
EVAL_PER_BLOCK_TOKENS = 1024


class LTXModel(nn.Module):
    """Velocity model: `model(video, audio, perturbations) -> (video velocity, audio velocity)`."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = c = config
        V, A, coef = c.inner_dim, c.audio_inner_dim, c.adaln_coefficient
        self.patchify_proj = nn.Linear(c.in_channels, V)
        self.adaln_single = AdaLayerNormSingle(V, coef)
        self.scale_shift_table = mx.zeros((2, V))
        self.proj_out = nn.Linear(V, c.out_channels)
        self.audio_patchify_proj = nn.Linear(c.audio_in_channels, A)
        self.audio_adaln_single = AdaLayerNormSingle(A, coef)
        self.audio_scale_shift_table = mx.zeros((2, A))
        self.audio_proj_out = nn.Linear(A, c.audio_out_channels)
        if c.cross_attention_adaln:
            self.prompt_adaln_single = AdaLayerNormSingle(V, 2)
            self.audio_prompt_adaln_single = AdaLayerNormSingle(A, 2)
        if c.has_caption_projection:
            self.caption_projection = TextProjection(c.caption_channels, V)
            self.audio_caption_projection = TextProjection(c.caption_channels, A)
        self.av_ca_video_scale_shift_adaln_single = AdaLayerNormSingle(V, 4)
        self.av_ca_audio_scale_shift_adaln_single = AdaLayerNormSingle(A, 4)
        self.av_ca_a2v_gate_adaln_single = AdaLayerNormSingle(V, 1)
        self.av_ca_v2a_gate_adaln_single = AdaLayerNormSingle(A, 1)
        self.transformer_blocks = [TransformerBlock(i, c) for i in range(c.num_layers)]
        # Low-memory mode: an iterator factory over the blocks that loads each one's weights for its turn
        # (ltx_mlx.weights.stream.BlockStream); None: every block resident.
        self.block_stream = None
        self.eval_per_block_tokens = EVAL_PER_BLOCK_TOKENS

    # -- preprocessing (the reference's TransformerArgsPreprocessor)

    def _prepare(self, m: Modality, other: Modality | None, audio: bool) -> StreamArgs:
        c = self.config
        p = "audio_" if audio else ""
        inner = c.audio_inner_dim if audio else c.inner_dim
        heads = c.audio_num_attention_heads if audio else c.num_attention_heads
        max_pos = c.audio_positional_embedding_max_pos if audio else c.positional_embedding_max_pos
        dtype = m.latent.dtype
        self._check(m, "audio" if audio else "video", len(max_pos))
        x = getattr(self, p + "patchify_proj")(m.latent)
        B, T = x.shape[:2]
        timesteps = m.timesteps.reshape(B, -1) * c.timestep_scale_multiplier
        rows, embedded = _per_token_embedding(getattr(self, p + "adaln_single"), timesteps, dtype)
        sigma = _per_sample(m.sigma, B) * c.timestep_scale_multiplier
        prompt = None
        if c.cross_attention_adaln:
            prompt = getattr(self, p + "prompt_adaln_single")(sigma, dtype)[0].reshape(B, 1, 2, inner)
        context = m.context
        if c.has_caption_projection:
            context = getattr(self, p + "caption_projection")(context)
        args = StreamArgs(
            x=x, context=context.reshape(B, -1, inner), context_mask=_context_bias(m.context_mask, dtype),
            timesteps=rows.reshape(B, rows.shape[1], -1, inner), embedded_timestep=embedded,
            pe=self._rope(m.positions, inner, max_pos, heads, dtype, c.use_middle_indices_grid),
            enabled=m.enabled, prompt_timestep=prompt,
            self_attention_mask=_self_attention_bias(m.attention_mask, dtype))
        if other is not None:
            self._prepare_cross(args, m, other, audio, heads)
        return args

    def _check(self, m: Modality, name: str, n_axes: int):
        c = self.config
        audio = name == "audio"
        channels = c.audio_in_channels if audio else c.in_channels
        context_dim = c.caption_channels if c.has_caption_projection else (c.audio_inner_dim if audio else c.inner_dim)
        if m.latent.ndim != 3 or m.latent.shape[-1] != channels:
            raise ValueError(f"{name} latent must be patchified tokens (B, T, {channels}), got {m.latent.shape}")
        B, T, _ = m.latent.shape
        if m.positions.shape != (B, n_axes, T, 2):
            raise ValueError(f"{name} positions must be (B, {n_axes}, T, 2) = {(B, n_axes, T, 2)} [start, end) bounds, "
                             f"got {m.positions.shape}")
        if m.timesteps.size not in (B, B * T):
            raise ValueError(f"{name} timesteps must be (B, T) or (B, T, 1) per token, got {m.timesteps.shape}")
        if m.context.ndim != 3 or m.context.shape[0] != B or m.context.shape[-1] != context_dim:
            raise ValueError(f"{name} context must be (B, S, {context_dim}) for this checkpoint, got {m.context.shape}")
        if m.attention_mask is not None and m.attention_mask.shape != (B, T, T):
            raise ValueError(f"{name} attention_mask must be (B, T, T) = {(B, T, T)}, got {m.attention_mask.shape}")

    def _rope(self, positions, dim, max_pos, heads, dtype, use_middle=True) -> RopeTable:
        c = self.config
        return rope_table(positions, dim, c.positional_embedding_theta, max_pos, heads, c.rope_type,
                          c.double_precision_rope, use_middle, dtype)

    def _prepare_cross(self, args: StreamArgs, m: Modality, other: Modality, audio: bool, heads: int):
        c = self.config
        B = args.x.shape[0]
        dtype = m.latent.dtype
        cross_max = max(c.positional_embedding_max_pos[0], c.audio_positional_embedding_max_pos[0])
        args.cross_pe = self._rope(m.positions[:, 0:1], c.audio_cross_attention_dim, [cross_max], heads, dtype)
        s = _per_sample(other.sigma, B) * c.timestep_scale_multiplier
        factor = c.av_ca_timestep_scale_multiplier / c.timestep_scale_multiplier
        scale_shift = self.av_ca_audio_scale_shift_adaln_single if audio else self.av_ca_video_scale_shift_adaln_single
        gate = self.av_ca_v2a_gate_adaln_single if audio else self.av_ca_a2v_gate_adaln_single
        inner = args.x.shape[-1]
        args.cross_scale_shift_timestep = scale_shift(s, dtype)[0].reshape(B, 1, 4, inner)
        args.cross_gate_timestep = gate(s * factor, dtype)[0].reshape(B, 1, 1, inner)

    def _output(self, x, embedded, table, proj_out):
        shift = table[0].astype(x.dtype) + embedded
        scale = table[1].astype(x.dtype) + embedded
        x = mx.fast.layer_norm(x, None, None, self.config.norm_eps)
        return proj_out(x * (1 + scale) + shift)

    def __call__(self, video: Modality | None, audio: Modality | None,
                 perturbations: Perturbations | None = None) -> tuple[mx.array | None, mx.array | None]:
        if video is None and audio is None:
            raise ValueError("LTXModel needs a video or an audio input (both are None)")
        B = (video or audio).latent.shape[0]
        if perturbations is None:
            perturbations = Perturbations([[] for _ in range(B)])
        if len(perturbations.per_sample) != B:
            raise ValueError(f"perturbations describe {len(perturbations.per_sample)} samples, the batch has {B}")
        v = self._prepare(video, audio, audio=False) if video is not None else None
        a = self._prepare(audio, video, audio=True) if audio is not None else None
        vx, ax = (v.x if v else None), (a.x if a else None)
        tokens = sum(x.shape[0] * x.shape[1] for x in (vx, ax) if x is not None)
        each = self.block_stream is not None or tokens >= self.eval_per_block_tokens
        blocks = self.transformer_blocks if self.block_stream is None else self.block_stream(self.transformer_blocks)
        for block in blocks:
            if v is not None:
                v.x = vx
            if a is not None:
                a.x = ax
            vx, ax = block(v, a, perturbations)
            if each:  # one block per evaluation: no GPU command runs for seconds (the macOS watchdog)
                mx.eval([x for x in (vx, ax) if x is not None])
        vout = self._output(vx, v.embedded_timestep, self.scale_shift_table, self.proj_out) if v else None
        aout = self._output(ax, a.embedded_timestep, self.audio_scale_shift_table, self.audio_proj_out) if a else None
        return vout, aout


def to_denoised(latent: mx.array, velocity: mx.array, timesteps: mx.array) -> mx.array:
    """x0 = x − v·t per token, in float32, cast back to the latent's dtype."""
    t = timesteps.astype(mx.float32)
    if t.ndim == latent.ndim - 1:
        t = t[..., None]
    return (latent.astype(mx.float32) - velocity.astype(mx.float32) * t).astype(latent.dtype)


class X0Model(nn.Module):
    """Wraps the velocity model: returns denoised latents (what the samplers consume)."""

    def __init__(self, velocity_model: LTXModel):
        super().__init__()
        self.velocity_model = velocity_model

    def __call__(self, video: Modality | None, audio: Modality | None, perturbations: Perturbations | None = None):
        vx, ax = self.velocity_model(video, audio, perturbations)
        return (to_denoised(video.latent, vx, video.timesteps) if vx is not None else None,
                to_denoised(audio.latent, ax, audio.timesteps) if ax is not None else None)


# ---------------------------------------------------------------------------------------------- loading
