"""Gemma-3 text model (the LTX text encoder), returning every hidden state.

Follows Hugging Face transformers' `Gemma3TextModel` as the reference pipelines run it (SDPA attention):
scaled embeddings, interleaved sliding-window (local) and full (global) layers with their own RoPE bases,
`(1 + weight)` RMSNorms, q/k norms, grouped KV heads and a GELU-tanh MLP. Position ids are `arange(T)`,
pads included, exactly as HF uses them for the reference's left-padded prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .activations import gelu_tanh
from .base import BaseConfig

# Key layouts of Hugging Face Gemma-3 folders: multimodal (transformers < 4.52 and >= 4.52) and text-only.
GEMMA_PREFIXES = ("language_model.model.", "model.language_model.", "model.")
# The vision tower, its projector and the (tied) LM head are never used to encode prompts: dropped on purpose.
IGNORED_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.",
                    "lm_head.", "language_model.lm_head.")


@dataclass
class Gemma3Config(BaseConfig):
    # Defaults are transformers' Gemma3TextConfig defaults: saved config.json files omit values equal to them.
    vocab_size: int = 262_208
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    hidden_activation: str = "gelu_pytorch_tanh"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_local_base_freq: float = 10_000.0
    rope_scaling: dict | None = None
    attention_bias: bool = False
    query_pre_attn_scalar: float = 256
    sliding_window: int = 4096
    sliding_window_pattern: int = 6
    layer_types: list[str] | None = None
    use_bidirectional_attention: bool = False
    bos_token_id: int = 2
    quantization: dict | None = None

    def __post_init__(self):
        if self.layer_types is None:
            # Older configs carry only the pattern: every `pattern`-th layer is global.
            p = self.sliding_window_pattern
            self.layer_types = ["sliding_attention" if (i + 1) % p else "full_attention"
                                for i in range(self.num_hidden_layers)]

    def validate(self):
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"Gemma config: {len(self.layer_types)} layer_types for {self.num_hidden_layers} layers")
        unknown = set(self.layer_types) - {"sliding_attention", "full_attention"}
        if unknown:
            raise ValueError(f"Gemma config: unknown layer types {sorted(unknown)} in layer_types (expected "
                             "'sliding_attention' or 'full_attention')")
        if self.hidden_activation not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise ValueError(f"Gemma config: hidden_activation {self.hidden_activation!r} is not supported "
                             "(Gemma-3 uses gelu_pytorch_tanh)")
        if self.use_bidirectional_attention:
            raise ValueError("Gemma config: use_bidirectional_attention=True (an embedding-model variant) is not "
                             "the causal Gemma-3 that LTX uses")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"Gemma config: num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")
        rope_type(self.rope_scaling)

    @property
    def num_hidden_states(self) -> int:
        return self.num_hidden_layers + 1


def rope_type(rope_scaling: dict | None) -> str:
    kind = "default" if not rope_scaling else rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if kind not in ("default", "linear"):
        raise ValueError(f"Gemma config: rope_scaling type {kind!r} is not supported (Gemma-3 uses 'linear')")
    return kind


class RMSNorm(nn.Module):
    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = mx.zeros((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        # HF Gemma: normalise and scale by (1 + w) in float32, then cast back.
        scale = 1.0 + self.weight.astype(mx.float32)
        return mx.fast.rms_norm(x.astype(mx.float32), scale, self.eps).astype(x.dtype)


def rope_tables(T: int, head_dim: int, base: float, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin `(T, head_dim)` for positions arange(T), float32 rounding as transformers computes them."""
    f32 = np.float32
    exponent = np.arange(0, head_dim, 2).astype(f32) / f32(head_dim)
    inv_freq = f32(1.0) / (float(base) ** exponent.astype(np.float64)).astype(f32)
    inv_freq = inv_freq / f32(factor)
    angles = np.arange(T).astype(f32)[:, None] * inv_freq[None, :]
    angles = np.concatenate([angles, angles], axis=-1).astype(np.float64)
    return np.cos(angles).astype(f32), np.sin(angles).astype(f32)


def apply_rope(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    half = x.shape[-1] // 2
    rotated = mx.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: Gemma3Config, layer_idx: int):
        super().__init__()
        self.is_sliding = cfg.layer_types[layer_idx] == "sliding_attention"
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.scale = cfg.query_pre_attn_scalar ** -0.5
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        # transformers' Gemma3Attention stores attn_logit_softcapping but never applies it; neither do we.

    def __call__(self, x, cos, sin, mask, rows):
        B, T, _ = x.shape
        q = self.q_proj(x).reshape(B, T, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(B, T, self.n_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, T, self.n_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        # Queries that may attend to nothing (left pads) get 0, as torch's SDPA returns for fully masked rows.
        out = mx.where(rows, out, mx.zeros_like(out))
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: Gemma3Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def __call__(self, x):
        return self.down_proj(gelu_tanh(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Gemma3Config, layer_idx: int):
        super().__init__()
        eps = cfg.rms_norm_eps
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps)

    def __call__(self, x, cos, sin, mask, rows):
        h = self.self_attn(self.input_layernorm(x), cos, sin, mask, rows)
        x = x + self.post_attention_layernorm(h)
        h = self.mlp(self.pre_feedforward_layernorm(x))
        return x + self.post_feedforward_layernorm(h)


class Gemma3TextModel(nn.Module):
    def __init__(self, cfg: Gemma3Config):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = [DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)]
        self.layer_stream = None  # low-memory mode: loads each layer's weights for its turn (weights/stream.py)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def _masks(self, attention_mask: mx.array, T: int, dtype) -> dict[bool, tuple[mx.array, mx.array]]:
        """Additive masks (B,1,T,T) and attended-row flags (B,1,T,1) for global (False) and sliding (True) layers."""
        q = mx.arange(T)[:, None]
        k = mx.arange(T)[None, :]
        keys_ok = attention_mask.astype(mx.bool_)[:, None, None, :]
        causal = (k <= q)[None, None] & keys_ok
        out = {}
        for sliding in (False, True):
            allowed = causal & (q - k < self.config.sliding_window)[None, None] if sliding else causal
            additive = mx.where(allowed, mx.array(0.0, dtype), mx.array(mx.finfo(dtype).min, dtype))
            out[sliding] = additive, allowed.any(axis=-1, keepdims=True)
        return out

    def _rope(self, T: int, dtype) -> dict[bool, tuple[mx.array, mx.array]]:
        cfg = self.config
        factor = float(cfg.rope_scaling["factor"]) if rope_type(cfg.rope_scaling) == "linear" else 1.0
        out = {}
        for sliding, base, scale in ((False, cfg.rope_theta, factor), (True, cfg.rope_local_base_freq, 1.0)):
            cos, sin = rope_tables(T, cfg.head_dim, base, scale)
            out[sliding] = mx.array(cos).astype(dtype), mx.array(sin).astype(dtype)
        return out

    def embed(self, input_ids: mx.array) -> mx.array:
        h = self.embed_tokens(input_ids)
        # HF keeps sqrt(hidden) as a float32 buffer and casts it to the weight dtype (bf16: 61.97 -> 62.0).
        return h * mx.array(math.sqrt(self.config.hidden_size), dtype=mx.float32).astype(h.dtype)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array | None = None,
                 eval_each_layer: bool = False) -> list[mx.array]:
        """All hidden states: [scaled embeddings, layer 1 … layer N-1 outputs, final-normed layer N output]."""
        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = mx.ones((B, T), dtype=mx.int32)
        h = self.embed(input_ids)
        masks, ropes = self._masks(attention_mask, T, h.dtype), self._rope(T, h.dtype)
        states = [h]
        layers = self.layers if self.layer_stream is None else self.layer_stream(self.layers)
        for layer in layers:
            sliding = layer.self_attn.is_sliding
            h = layer(h, *ropes[sliding], *masks[sliding])
            if eval_each_layer or self.layer_stream is not None:  # one layer per command buffer on large inputs
                mx.eval(h)
            states.append(h)
        states[-1] = self.norm(h)
        return states


def route_key(key: str) -> str | None:
    """Our parameter name for a Hugging Face Gemma-3 key; None for tensors dropped on purpose."""
    if key.startswith(IGNORED_PREFIXES):
        return None
    for prefix in GEMMA_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """HF keys (any of the three layouts) -> ours; the names below the prefix are already HF's."""
    out = {}
    for key, value in weights.items():
        name = route_key(key)
        if name is not None:
            out[name] = value
    return out
