"""The components of an LTX model, as conversion writes them and loading rebuilds them.

Each component has a name (its folder in a converted model), the official keys that belong to it
(`route`: official key → reference-named key, None for other keys), the `sanitize` of its model file,
a `build` from the converted folder's config, and the layers quantization may touch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import mlx.nn as nn

from .checkpoint import CheckpointError
from ..models import audio_vae, text_projection, transformer, upsampler, video_vae, vocoder
from ..models.gemma3 import Gemma3Config, Gemma3TextModel
from ..models.gemma3 import route_key as gemma_route
from ..models.gemma3 import sanitize as gemma_sanitize
from .quantize import decoder_layer_linears, transformer_block_linears


@dataclass(frozen=True)
class Component:
    name: str
    route: Callable[[str], str | None]
    sanitize: Callable[[dict], dict]
    quantizable: Callable | None = None  # quantize_model's `select`; None: never quantized


def _strip(prefix: str, exclude: tuple[str, ...] = ()):
    def route(key: str) -> str | None:
        if key.startswith(prefix) and not key.startswith(exclude):
            return key[len(prefix):]
        return None
    return route


def _vae_part(prefix: str, statistics: str):
    """A VAE encoder or decoder: its own keys plus the statistics both halves share."""
    def route(key: str) -> str | None:
        if key.startswith(prefix):
            return key[len(prefix):]
        if key.startswith(statistics):
            return "per_channel_statistics." + key[len(statistics):]
        return None
    return route


# Components of the official single-file checkpoint, in the order they are written.
CHECKPOINT_COMPONENTS = (
    Component("transformer", _strip(transformer.PREFIX, transformer.CONNECTOR_PREFIXES), transformer.sanitize,
              transformer_block_linears),
    Component("text_projection", text_projection.route_key, text_projection.sanitize),
    Component("video_encoder", _vae_part(video_vae.ENCODER_PREFIX, video_vae.STATISTICS_PREFIX), video_vae.sanitize),
    Component("video_decoder", _vae_part(video_vae.DECODER_PREFIX, video_vae.STATISTICS_PREFIX), video_vae.sanitize),
    Component("audio_encoder", _vae_part(audio_vae.ENCODER_PREFIX, audio_vae.STATISTICS_PREFIX), audio_vae.sanitize),
    Component("audio_decoder", _vae_part(audio_vae.DECODER_PREFIX, audio_vae.STATISTICS_PREFIX), audio_vae.sanitize),
    Component("vocoder", _strip(vocoder.VOCODER_PREFIX), vocoder.sanitize),
)
# Gemma keys stay Hugging Face names until `sanitize` (which also drops the vision tower and LM head).
GEMMA = Component("gemma", lambda key: key if gemma_route(key) is not None else None, gemma_sanitize,
                  decoder_layer_linears)
# The official checkpoint's config section each component is built from.
CONFIG_SECTION = {"transformer": "transformer", "text_projection": "transformer", "video_encoder": "vae",
                  "video_decoder": "vae", "audio_encoder": "audio_vae", "audio_decoder": "audio_vae",
                  "vocoder": "vocoder"}


UPSAMPLER_KINDS = ("spatial_upsampler", "temporal_upsampler")


def upsampler_config(config: dict, kind: str, path: str) -> upsampler.UpsamplerConfig:
    """The flat config of an upsampler file, checked against the role it is given."""
    if not config or any(k in config for k in ("transformer", "vae")):
        raise CheckpointError(f"{path} is not a latent upsampler file: its metadata has no flat upsampler config "
                              "(keys like mid_channels, spatial_upsample)")
    try:
        cfg = upsampler.UpsamplerConfig.from_dict(config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    if kind == "spatial_upsampler" and not cfg.spatial_upsample:
        raise CheckpointError(f"{path} is a temporal upsampler: pass it with --temporal-upsampler-path")
    if kind == "temporal_upsampler" and not cfg.temporal_upsample:
        raise CheckpointError(f"{path} is a spatial upsampler: pass it with --spatial-upsampler-path")
    return cfg


def upsampler_name(kind: str, cfg: upsampler.UpsamplerConfig) -> str:
    """Folder name: the kind and its factor, e.g. spatial_upsampler_x2, spatial_upsampler_x1.5."""
    scale = float(cfg.spatial_scale) if cfg.spatial_upsample and cfg.rational_resampler else 2.0
    return f"{kind}_x{scale:g}"


UPSAMPLER = Component("upsampler", lambda key: key if key.startswith(upsampler.PREFIX) else None, upsampler.sanitize)


def build(kind: str, config: dict, gemma_config: Gemma3Config | None = None,
          text_dims: dict | None = None, upsampler_config: dict | None = None) -> nn.Module:
    """An untrained (lazily initialised) component model; `config` is the official metadata config."""
    section = CONFIG_SECTION.get(kind)
    if section is not None and section not in config:
        raise CheckpointError(f"the checkpoint's metadata config has no {section!r} section, which the "
                              f"{kind.replace('_', ' ')} needs; this is not a complete LTX-2/LTX-2.3 checkpoint")
    try:
        if kind == "transformer":
            return transformer.LTXModel(transformer.TransformerConfig.from_dict(config["transformer"]))
        if kind == "text_projection":
            cfg = text_projection.TextProjectionConfig.from_dict(
                config["transformer"], text_dims["embedding_dim"], text_dims["num_states"])
            return text_projection.TextProjection(cfg)
        if kind in ("video_encoder", "video_decoder"):
            cfg = video_vae.VideoVAEConfig.from_dict(config["vae"])
            return (video_vae.VideoEncoder if kind == "video_encoder" else video_vae.VideoDecoder)(cfg)
        if kind in ("audio_encoder", "audio_decoder"):
            cfg = audio_vae.AudioVAEConfig.from_dict(config["audio_vae"])
            return (audio_vae.AudioEncoder if kind == "audio_encoder" else audio_vae.AudioDecoder)(cfg)
        if kind == "vocoder":
            return vocoder.build_vocoder(config)
        if kind == "gemma":
            return Gemma3TextModel(gemma_config)
        if kind in UPSAMPLER_KINDS:
            return upsampler.LatentUpsampler(upsampler.UpsamplerConfig.from_dict(upsampler_config))
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{kind.replace('_', ' ')}: unsupported or invalid config ({e})") from None
    raise ValueError(f"unknown component kind {kind!r}")
