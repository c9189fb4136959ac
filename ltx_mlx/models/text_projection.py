"""Gemma hidden states -> LTX video/audio contexts: feature extractor (V1 / V2) and embeddings connectors.

Reference: ltx_core/text_encoders/gemma/{feature_extractor, embeddings_connector, embeddings_processor}.py.
The weights live in the official LTX checkpoint under `text_embedding_projection.` (feature extractor) and
`model.diffusion_model.{video,audio}_embeddings_connector.`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from .base import BaseConfig, check_choice
from .rope import ROPE_TYPES, RopeTable, rope_table
from .transformer import Attention, FeedForward  # the connectors' blocks are the DiT's

FEATURE_EXTRACTOR_PREFIX = "text_embedding_projection."
VIDEO_CONNECTOR_PREFIX = "model.diffusion_model.video_embeddings_connector."
AUDIO_CONNECTOR_PREFIX = "model.diffusion_model.audio_embeddings_connector."
# our module name -> the official key prefix
PREFIXES = {"feature_extractor.": FEATURE_EXTRACTOR_PREFIX, "video_connector.": VIDEO_CONNECTOR_PREFIX,
            "audio_connector.": AUDIO_CONNECTOR_PREFIX}

# The four transformer-config keys that select the V2 (LTX-2.3) feature extractor, with the only values it supports.
V2_KEYS = {"caption_proj_before_connector": True, "caption_projection_first_linear": False,
           "caption_proj_input_norm": False, "caption_projection_second_linear": False}


def feature_extractor_version(transformer: dict) -> int:
    """1 when none of the V2 keys are present, 2 when all are with the expected values (the reference's rule)."""
    present = V2_KEYS.keys() & transformer.keys()
    if not present:
        return 1
    if present != V2_KEYS.keys():
        raise ValueError("transformer config: partial V2 text-projection config, missing "
                         + ", ".join(sorted(V2_KEYS.keys() - present)))
    wrong = [f"{k}={transformer[k]!r} (expected {v!r})" for k, v in V2_KEYS.items() if transformer[k] != v]
    if wrong:
        raise ValueError("transformer config: unsupported text-projection variant: " + ", ".join(wrong))
    return 2


@dataclass
class ConnectorConfig(BaseConfig):
    num_attention_heads: int
    attention_head_dim: int
    num_layers: int
    positional_embedding_max_pos: list
    rope_type: str = "interleaved"
    double_precision_rope: bool = False
    apply_gated_attention: bool = False
    num_learnable_registers: int = 128
    positional_embedding_theta: float = 10000.0

    @classmethod
    def from_dict(cls, t: dict, audio: bool = False) -> "ConnectorConfig":
        # Audio reads audio_connector_* and falls back to connector_*; the rest is shared (as in the reference).
        def get(name, default):
            value = t.get(f"connector_{name}", default)
            return t.get(f"audio_connector_{name}", value) if audio else value

        return super().from_dict(dict(
            num_attention_heads=get("num_attention_heads", 30), attention_head_dim=get("attention_head_dim", 128),
            num_layers=get("num_layers", 2),
            positional_embedding_max_pos=list(t.get("connector_positional_embedding_max_pos", [1])),
            rope_type=t.get("rope_type", "interleaved"),
            double_precision_rope=t.get("frequencies_precision", False) == "float64",
            apply_gated_attention=bool(t.get("connector_apply_gated_attention", False)),
            # the reference hard-wires 128; real files carry the same number in this key
            num_learnable_registers=int(t.get("connector_num_learnable_registers") or 128)))

    def validate(self):
        check_choice("transformer config (text connectors)", "rope_type", self.rope_type, ROPE_TYPES)

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


@dataclass
class TextProjectionConfig(BaseConfig):
    version: int
    embedding_dim: int  # Gemma hidden size
    num_states: int  # Gemma layers + 1 (the embeddings)
    video_dim: int  # feature-extractor output dims (V1: both equal embedding_dim)
    audio_dim: int
    video_connector: ConnectorConfig
    audio_connector: ConnectorConfig

    @classmethod
    def from_dict(cls, transformer: dict, embedding_dim: int, num_states: int) -> "TextProjectionConfig":
        version = feature_extractor_version(transformer)
        if version == 1:
            video_dim = audio_dim = embedding_dim
        else:
            video_dim = transformer["num_attention_heads"] * transformer["attention_head_dim"]
            audio_dim = transformer["audio_num_attention_heads"] * transformer["audio_attention_head_dim"]
        return cls(version, embedding_dim, num_states, video_dim, audio_dim,
                   ConnectorConfig.from_dict(transformer), ConnectorConfig.from_dict(transformer, audio=True))


# ---------------------------------------------------------------------------------------------- feature extractors

class FeatureExtractorV1(nn.Module):
    """LTX-2: per sample and per layer, masked mean / range normalisation x 8, one projection for both."""

    def __init__(self, embedding_dim: int, num_states: int):
        super().__init__()
        self.aggregate_embed = nn.Linear(embedding_dim * num_states, embedding_dim, bias=False)

    @staticmethod
    def normalize(x: mx.array, valid: mx.array) -> mx.array:
        B, T, D = x.shape
        x32 = x.astype(mx.float32)
        n = valid.astype(mx.float32).sum(axis=1).reshape(B, 1, 1)
        mean = mx.where(valid, x32, 0.0).sum(axis=(1, 2), keepdims=True) / (n * D + 1e-6)
        hi = mx.where(valid, x32, -mx.inf).max(axis=(1, 2), keepdims=True)
        lo = mx.where(valid, x32, mx.inf).min(axis=(1, 2), keepdims=True)
        return (8 * (x32 - mean) / (hi - lo + 1e-6)).astype(x.dtype)

    def __call__(self, states: list[mx.array], mask: mx.array) -> tuple[mx.array, mx.array]:
        valid = mask.astype(mx.bool_)[..., None]
        normed = stack_features([self.normalize(x, valid) for x in states], valid)
        features = self.aggregate_embed(normed)
        return features, features


class FeatureExtractorV2(nn.Module):
    """LTX-2.3: per-token RMS normalisation, separate video / audio projections scaled by sqrt(out / in)."""

    def __init__(self, embedding_dim: int, num_states: int, video_dim: int, audio_dim: int):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.video_aggregate_embed = nn.Linear(embedding_dim * num_states, video_dim, bias=True)
        self.audio_aggregate_embed = nn.Linear(embedding_dim * num_states, audio_dim, bias=True)

    def __call__(self, states: list[mx.array], mask: mx.array) -> tuple[mx.array, mx.array]:
        valid = mask.astype(mx.bool_)[..., None]
        normed = stack_features([mx.fast.rms_norm(x, None, 1e-6) for x in states], valid)
        out = []
        for proj in (self.video_aggregate_embed, self.audio_aggregate_embed):
            scale = math.sqrt(proj.weight.shape[0] / self.embedding_dim)
            out.append(proj(normed * scale))
        return out[0], out[1]


def stack_features(normed: list[mx.array], valid: mx.array) -> mx.array:
    """(B, T, D) per state -> (B, T, D*L) with feature index d*L + l (hidden-dim major), pads zeroed."""
    x = mx.stack(normed, axis=-1)
    B, T, D, L = x.shape
    x = x.reshape(B, T, D * L)
    return mx.where(valid, x, mx.zeros_like(x))


# ---------------------------------------------------------------------------------------------------- connectors

class TransformerBlock1D(nn.Module):
    def __init__(self, cfg: ConnectorConfig):
        super().__init__()
        self.attn1 = Attention(cfg.inner_dim, None, cfg.num_attention_heads, cfg.attention_head_dim, 1e-6,
                               cfg.apply_gated_attention)
        self.ff = FeedForward(cfg.inner_dim)

    def __call__(self, x: mx.array, pe: RopeTable) -> mx.array:
        x = x + self.attn1(mx.fast.rms_norm(x, None, 1e-6), pe=pe)
        return x + self.ff(mx.fast.rms_norm(x, None, 1e-6))


class Embeddings1DConnector(nn.Module):
    def __init__(self, cfg: ConnectorConfig):
        super().__init__()
        self.config = cfg
        self.transformer_1d_blocks = [TransformerBlock1D(cfg) for _ in range(cfg.num_layers)]
        self.learnable_registers = mx.zeros((cfg.num_learnable_registers, cfg.inner_dim))

    def replace_padding_with_registers(self, x: mx.array, mask: mx.array) -> mx.array:
        """Valid tokens move to the front (in order); position p >= n_valid gets register[p % R]. Per sample."""
        B, T, C = x.shape
        R = self.learnable_registers.shape[0]
        if T % R:
            raise ValueError(f"the text length {T} must be a multiple of the connector's {R} registers "
                             f"(use a tokenizer max_length that is a multiple of {R}, e.g. 1024)")
        valid = mask.astype(mx.bool_)
        pos = mx.arange(T)
        order = mx.argsort(mx.where(valid, pos, pos + T), axis=1)
        moved = mx.take_along_axis(x, order[..., None], axis=1)
        registers = mx.tile(self.learnable_registers, (T // R, 1)).astype(x.dtype)
        n_valid = valid.sum(axis=1, keepdims=True)
        return mx.where((pos[None] < n_valid)[..., None], moved, registers[None])

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        x = self.replace_padding_with_registers(x, mask)
        c = self.config
        # token index t at every position, float32 whatever x's dtype (as the reference's arange grid)
        positions = mx.arange(x.shape[1], dtype=mx.float32)[None, None]
        pe = rope_table(positions, c.inner_dim, c.positional_embedding_theta, c.positional_embedding_max_pos,
                        c.num_attention_heads, c.rope_type, c.double_precision_rope, use_middle=False, dtype=x.dtype)
        for block in self.transformer_1d_blocks:
            x = block(x, pe)
        return mx.fast.rms_norm(x, None, 1e-6)


class TextProjection(nn.Module):
    """Feature extractor + video and audio connectors (the reference's EmbeddingsProcessor)."""

    def __init__(self, cfg: TextProjectionConfig):
        super().__init__()
        self.config = cfg
        if cfg.version == 1:
            self.feature_extractor = FeatureExtractorV1(cfg.embedding_dim, cfg.num_states)
        else:
            self.feature_extractor = FeatureExtractorV2(cfg.embedding_dim, cfg.num_states, cfg.video_dim, cfg.audio_dim)
        self.video_connector = Embeddings1DConnector(cfg.video_connector)
        self.audio_connector = Embeddings1DConnector(cfg.audio_connector)

    def __call__(self, states: list[mx.array], mask: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """Gemma hidden states + the (left-padded) token mask -> (video context, audio context, context mask).

        The context mask is all ones, as the reference returns it: registers fill the padded positions.
        """
        if len(states) != self.config.num_states:
            raise ValueError(f"the text projection takes {self.config.num_states} Gemma hidden states, got {len(states)}")
        video, audio = self.feature_extractor(states, mask)
        video = self.video_connector(video, mask)
        audio = self.audio_connector(audio, mask)
        return video, audio, mx.ones(mask.shape, dtype=mx.int32)


def route_key(key: str) -> str | None:
    """Our name for an official checkpoint key of the text projection; None for every other key."""
    for ours, prefix in PREFIXES.items():
        if key.startswith(prefix):
            return ours + key[len(prefix):]
    return None
