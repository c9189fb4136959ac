"""Tiny official-format LTX checkpoints whose components fit together into the pipelines (transformer
channels = video VAE latent channels, audio tokens = audio VAE z x latent mel bins), with a x2 spatial upsampler
and a distilled LoRA, converted once per session with convert.py."""

from pathlib import Path

from convert_fixtures import VERSIONS, write_lora, write_official, write_upsamplers
from dit_reference import tiny_config

VIDEO_LATENT_CHANNELS = 8  # vae_fixtures.vae_config
AUDIO_TOKEN_WIDTH = 2 * 16  # audio_cfg: z_channels 2, 64 mel bins / 4


def pipeline_overrides(version: str) -> dict:
    return dict(in_channels=VIDEO_LATENT_CHANNELS, out_channels=VIDEO_LATENT_CHANNELS,
                audio_in_channels=AUDIO_TOKEN_WIDTH, audio_out_channels=AUDIO_TOKEN_WIDTH)


def lora_modules(version: str) -> dict:
    t = tiny_config(version)
    v = t["num_attention_heads"] * t["attention_head_dim"]
    a = t["audio_num_attention_heads"] * t["audio_attention_head_dim"]
    shapes = {}
    for i in range(t["num_layers"]):
        for m in ("to_q", "to_k", "to_v"):
            shapes[f"transformer_blocks.{i}.attn1.{m}"] = (v, v)
            shapes[f"transformer_blocks.{i}.audio_attn1.{m}"] = (a, a)
    return shapes


def write_pipeline_checkpoints(tmp: Path, version: str = "2.3"):
    """(distilled checkpoint, dev checkpoint, gemma folder, x2 upsampler, distilled LoRA) in `tmp`."""
    overrides = pipeline_overrides(version)
    distilled, gemma, _ = write_official(tmp, version, seed=0, name=f"ltx-{version}-tiny-distilled.safetensors",
                                         **overrides)
    dev, _, _ = write_official(tmp, version, seed=30, name=f"ltx-{version}-tiny-dev.safetensors", **overrides)
    ups = write_upsamplers(tmp, version)
    shapes = lora_modules(version)
    lora = write_lora(tmp / f"ltx-{version}-tiny-distilled-lora.safetensors", shapes, sorted(shapes), 2, seed=5)
    return distilled, dev, gemma, ups["spatial_upsampler_x2"][1], lora


def convert_folder(src: Path, out: Path, gemma: Path, upsampler: Path, lora: Path | None = None) -> Path:
    from ltx_mlx.cli.convert import main as convert_main

    argv = ["--checkpoint-path", str(src), "--gemma-root", str(gemma), "--spatial-upsampler-path", str(upsampler),
            "--mlx-path", str(out), "--dtype", "float32", "--quiet"]
    if lora is not None:
        argv += ["--distilled-lora", str(lora), "0.8"]
    assert convert_main(argv) == 0
    return out


__all__ = ["VERSIONS", "convert_folder", "write_pipeline_checkpoints"]
