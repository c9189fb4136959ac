"""The one table of model components, which conversion and loading both read.

For each kind: where its tensors live in the official files (`route`: official key → reference-named key,
None for keys of other components), the `sanitize` of its model file, how its model is built from the
config stored with it in a converted folder (`build`), and which layers quantization may touch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import mlx.nn as nn

from ..models import audio_vae, gemma3, text_projection, transformer, upsampler, video_vae, vocoder
from .checkpoint import CheckpointError
from .quantize import decoder_layer_linears, transformer_block_linears


@dataclass(frozen=True)
class Kind:
    name: str
    build: Callable[[dict], nn.Module]  # the component's stored config -> an untrained (lazy) model
    sanitize: Callable[[dict], dict] | None  # reference names/layouts -> ours; None where they already agree
    route: Callable[[str], str | None]
    quantizable: Callable | None = None  # quantize_model's `select`; None: never quantized

    def convert(self, weights: dict) -> dict:
        return self.sanitize(weights) if self.sanitize else dict(weights)


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


def _text_projection(c: dict) -> nn.Module:
    cfg = text_projection.TextProjectionConfig.from_dict(c["transformer"], c["embedding_dim"], c["num_states"])
    # The reference ignores the config's register count; the stored tensors fix it (see `component_config`).
    video_r, audio_r = c["registers"]
    cfg = dataclasses.replace(
        cfg, video_connector=dataclasses.replace(cfg.video_connector, num_learnable_registers=video_r),
        audio_connector=dataclasses.replace(cfg.audio_connector, num_learnable_registers=audio_r))
    return text_projection.TextProjection(cfg)


def _vae(cls, config_cls):
    return lambda c: cls(config_cls.from_dict(c))


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("transformer", lambda c: transformer.LTXModel(transformer.TransformerConfig.from_dict(c)),
         None, _strip(transformer.PREFIX, transformer.CONNECTOR_PREFIXES), transformer_block_linears),
    Kind("text_projection", _text_projection, None, text_projection.route_key),
    Kind("video_encoder", _vae(video_vae.VideoEncoder, video_vae.VideoVAEConfig), video_vae.sanitize,
         _vae_part(video_vae.ENCODER_PREFIX, video_vae.STATISTICS_PREFIX)),
    Kind("video_decoder", _vae(video_vae.VideoDecoder, video_vae.VideoVAEConfig), video_vae.sanitize,
         _vae_part(video_vae.DECODER_PREFIX, video_vae.STATISTICS_PREFIX)),
    Kind("audio_encoder", _vae(audio_vae.AudioEncoder, audio_vae.AudioVAEConfig), audio_vae.sanitize,
         _vae_part(audio_vae.ENCODER_PREFIX, audio_vae.STATISTICS_PREFIX)),
    Kind("audio_decoder", _vae(audio_vae.AudioDecoder, audio_vae.AudioVAEConfig), audio_vae.sanitize,
         _vae_part(audio_vae.DECODER_PREFIX, audio_vae.STATISTICS_PREFIX)),
    Kind("vocoder", lambda c: vocoder.build_vocoder({"vocoder": c}), vocoder.sanitize, _strip(vocoder.VOCODER_PREFIX)),
    # Gemma keys stay Hugging Face names until `sanitize` (which also drops the vision tower and LM head).
    Kind("gemma", lambda c: gemma3.Gemma3TextModel(gemma3.Gemma3Config.from_dict(c)), gemma3.sanitize,
         lambda key: key if gemma3.route_key(key) is not None else None, decoder_layer_linears),
    Kind("spatial_upsampler", lambda c: upsampler.LatentUpsampler(upsampler.UpsamplerConfig.from_dict(c)),
         upsampler.sanitize, lambda key: key),
    Kind("temporal_upsampler", lambda c: upsampler.LatentUpsampler(upsampler.UpsamplerConfig.from_dict(c)),
         upsampler.sanitize, lambda key: key),
)}

# The components of an official single-file checkpoint, in the order they are written, with the section of its
# metadata config that each one is built from.
CHECKPOINT_KINDS = {"transformer": "transformer", "text_projection": "transformer", "video_encoder": "vae",
                    "video_decoder": "vae", "audio_encoder": "audio_vae", "audio_decoder": "audio_vae",
                    "vocoder": "vocoder"}
UPSAMPLER_KINDS = ("spatial_upsampler", "temporal_upsampler")
QUANTIZABLE = tuple(k.name for k in KINDS.values() if k.quantizable is not None)


def build(kind: str, config: dict) -> nn.Module:
    """An untrained (lazily initialised) model of `kind` from its stored config."""
    if kind not in KINDS:
        raise CheckpointError(f"unknown component kind {kind!r}; this folder was written by another ltx-mlx version: "
                              "convert the model again")
    try:
        return KINDS[kind].build(config)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{kind.replace('_', ' ')}: unsupported or invalid config ({e})") from None


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
