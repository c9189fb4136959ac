"""Tiny but complete official-format LTX-2 / LTX-2.3 models built from the live reference: one combined
checkpoint (transformer, text projection, video VAE, audio VAE, vocoder), a Gemma-3 folder, LoRA files,
deterministic inputs for every component, and convert.py run in-process."""

import copy
from pathlib import Path

import mlx.core as mx
import numpy as np
import torch
from safetensors.torch import save_file

from audio_fixtures import V1 as HIFIGAN
from audio_fixtures import V2 as BIGVGAN_BWE
from audio_fixtures import audio_cfg, reference_vocoder
from dit_reference import build_reference as build_transformer
from dit_reference import tiny_config
from ltx_core.model.audio_vae import AudioDecoderConfigurator, AudioEncoderConfigurator
from ltx_core.text_encoders.gemma.embeddings_connector import (AudioEmbeddings1DConnectorConfigurator,
                                                              Embeddings1DConnectorConfigurator)
from ltx_core.text_encoders.gemma.embeddings_processor import EmbeddingsProcessor
from ltx_core.text_encoders.gemma.feature_extractor import FeatureExtractorV1, FeatureExtractorV2
from ltx_mlx.cli.convert import main
from ltx_mlx.latents import audio_positions, video_positions
from ltx_mlx.models.text_projection import PREFIXES
from ltx_mlx.models.transformer import Modality
from reference import prefixed_state_dict, randomize_, save_official_checkpoint
from text_fixtures import TINY_TEXT, save_gemma_folder, tiny_gemma
from vae_fixtures import TINY_UPSAMPLER, build_upsampler, vae_config
from vae_fixtures import build_reference as build_video_vae

GEMMA_HIDDEN = TINY_TEXT["hidden_size"]
GEMMA_STATES = TINY_TEXT["num_hidden_layers"] + 1
VERSIONS = {"2": "2.0.0", "2.3": "2.3.0"}
# Every width a multiple of 32 (video 64, audio 32, FFs 256/128), so group size 32 quantizes every block linear.
DIMS = dict(num_attention_heads=2, attention_head_dim=32, audio_num_attention_heads=2, audio_attention_head_dim=16)


def transformer_config(version: str, **overrides) -> dict:
    t = tiny_config(version)
    t.update(overrides)
    t["cross_attention_dim"] = t["num_attention_heads"] * t["attention_head_dim"]
    t["audio_cross_attention_dim"] = t["audio_num_attention_heads"] * t["audio_attention_head_dim"]
    t.update(connector_num_layers=1, connector_positional_embedding_max_pos=[4096],
             connector_num_learnable_registers=128, caption_channels=GEMMA_HIDDEN)  # as real files: Gemma's width
    if version == "2":  # V1 text path: Gemma-wide connectors, caption projection inside the transformer
        t.update(connector_num_attention_heads=2,
                 connector_attention_head_dim=GEMMA_HIDDEN // 2)
    else:  # V2: connectors as wide as the video / audio streams, gated
        t.update(connector_num_attention_heads=t["num_attention_heads"],
                 connector_attention_head_dim=t["attention_head_dim"],
                 audio_connector_num_attention_heads=t["audio_num_attention_heads"],
                 audio_connector_attention_head_dim=t["audio_attention_head_dim"], connector_apply_gated_attention=True)
    return t


def text_projection_tensors(t: dict, seed: int) -> dict:
    cfg = {"transformer": t}
    width = GEMMA_HIDDEN * GEMMA_STATES
    if "caption_proj_before_connector" in t:
        fe = FeatureExtractorV2(torch.nn.Linear(width, t["cross_attention_dim"]), GEMMA_HIDDEN,
                                torch.nn.Linear(width, t["audio_cross_attention_dim"]))
    else:
        fe = FeatureExtractorV1(torch.nn.Linear(width, GEMMA_HIDDEN, bias=False), is_av=True)
    proc = EmbeddingsProcessor(feature_extractor=fe, video_connector=Embeddings1DConnectorConfigurator.from_config(cfg),
                               audio_connector=AudioEmbeddings1DConnectorConfigurator.from_config(cfg))
    randomize_(proc, seed, std=0.1)
    out = {}
    for k, v in proc.state_dict().items():
        head, rest = k.split(".", 1)
        out[PREFIXES[head + "."] + rest] = v
    return out


def vae_tensors(prefix: str, enc, dec) -> dict:
    out = {}
    for part, module in (("encoder.", enc), ("decoder.", dec)):
        for k, v in module.state_dict().items():
            out[(prefix + k) if k.startswith("per_channel_statistics.") else prefix + part + k] = v
    return out


def official_tensors(version: str, seed: int = 0, **transformer_overrides) -> tuple[dict, dict]:
    """(tensors, metadata config) of a complete tiny official checkpoint."""
    t = transformer_config(version, **transformer_overrides)
    video = vae_config(version)
    audio = audio_cfg()
    vocoder = copy.deepcopy(HIFIGAN if version == "2" else BIGVGAN_BWE)
    config = {"transformer": t, **video, **audio, **vocoder}
    tensors = prefixed_state_dict(build_transformer(t, seed=seed + 1), "model.diffusion_model.")
    tensors.update(text_projection_tensors(t, seed + 2))
    tensors.update(vae_tensors("vae.", *build_video_vae(video, seed + 3)))
    tensors["vae.per_channel_statistics.mean-of-stds"] = torch.rand(8)  # carried by real files, unused
    audio_enc = randomize_(AudioEncoderConfigurator.from_config(audio), seed + 4, std=0.05).eval()
    audio_dec = randomize_(AudioDecoderConfigurator.from_config(audio), seed + 5, std=0.05).eval()
    audio_dec.per_channel_statistics.load_state_dict(audio_enc.per_channel_statistics.state_dict())
    tensors.update(vae_tensors("audio_vae.", audio_enc, audio_dec))
    tensors.update({"vocoder." + k: v for k, v in reference_vocoder(vocoder, seed + 6).state_dict().items()})
    return tensors, config


def write_official(tmp_path, version: str, seed: int = 0, name: str | None = None, transform=None,
                   **transformer_overrides):
    """A complete tiny official checkpoint + Gemma folder; `transform(tensors)` may edit the tensors first."""
    tensors, config = official_tensors(version, seed, **transformer_overrides)
    if transform is not None:
        tensors = transform(tensors)
    ckpt = tmp_path / (name or f"ltx-{version}-tiny.safetensors")
    save_official_checkpoint(ckpt, tensors, config, VERSIONS[version])
    gemma = tmp_path / "gemma"
    if not gemma.exists():
        save_gemma_folder(tiny_gemma("multimodal", seed=seed + 7), gemma)
    return ckpt, gemma, config


UPSAMPLERS = {  # folder name -> (kind, flat config)
    "2": {"spatial_upsampler_x2": ("spatial", dict(TINY_UPSAMPLER, spatial_upsample=True))},
    "2.3": {"spatial_upsampler_x2": ("spatial", dict(TINY_UPSAMPLER, spatial_upsample=True)),
            "spatial_upsampler_x1.5": ("spatial", dict(TINY_UPSAMPLER, spatial_upsample=True, rational_resampler=True,
                                                        spatial_scale=1.5)),
            "temporal_upsampler_x2": ("temporal", dict(TINY_UPSAMPLER, spatial_upsample=False, temporal_upsample=True))},
}


def write_upsamplers(tmp_path, version: str, seed: int = 20) -> dict:
    """Official upsampler files (flat config, unprefixed keys): folder name -> (kind, path)."""
    out = {}
    for i, (name, (kind, config)) in enumerate(UPSAMPLERS[version].items()):
        path = tmp_path / f"ltx-{version}-{name}.safetensors"
        build_upsampler(config, path, seed + i)
        out[name] = (kind, path)
    return out


def upsampler_args(upsamplers: dict) -> list:
    return [a for kind, path in upsamplers.values() for a in (f"--{kind}-upsampler-path", path)]


def write_lora(path, shapes: dict, modules: list[str], rank: int, seed: int, metadata: dict | None = None):
    """A LoRA in the official naming for `modules`, shaped as `shapes[module]` = (out, in)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in modules:
        o, i = shapes[m]
        out[f"diffusion_model.{m}.lora_A.weight"] = torch.randn(rank, i, generator=g) * 0.2
        out[f"diffusion_model.{m}.lora_B.weight"] = torch.randn(o, rank, generator=g) * 0.2
    save_file(out, str(path), metadata=metadata or {})
    return path


# ---------------------------------------------------------------------------------------------- inputs


def transformer_inputs(cfg: dict, seed: int = 0):
    rng = np.random.default_rng(seed)
    F, H, W, AT = 2, 2, 3, 5
    C, AC = cfg["in_channels"], cfg["audio_in_channels"]
    projected = not cfg.get("caption_proj_before_connector", False)
    vdim = cfg["caption_channels"] if projected else cfg["cross_attention_dim"]
    adim = cfg["caption_channels"] if projected else cfg["audio_cross_attention_dim"]

    def r(*shape):
        return mx.array(rng.standard_normal(shape).astype(np.float32))

    sigma_v, sigma_a = mx.array([0.7]), mx.array([0.6])
    video = Modality(latent=r(1, F * H * W, C), sigma=sigma_v, timesteps=mx.full((1, F * H * W), 0.7),
                     positions=video_positions(1, F, H, W, 24.0), context=r(1, 4, vdim))
    audio = Modality(latent=r(1, AT, AC), sigma=sigma_a, timesteps=mx.full((1, AT), 0.6),
                     positions=audio_positions(1, AT), context=r(1, 4, adim))
    return video, audio


def component_outputs(name: str, model, config: dict, seed: int = 0) -> list[mx.array]:
    """Deterministic outputs of one component on fixed random inputs (float32)."""
    rng = np.random.default_rng(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return mx.array((rng.standard_normal(shape) * scale + shift).astype(np.float32))

    if name == "transformer":
        out = model(*transformer_inputs(config["transformer"], seed))
    elif name == "text_projection":
        mask = mx.array((np.arange(128) >= 128 - 9).astype(np.int32))[None]
        out = model([r(1, 128, GEMMA_HIDDEN) for _ in range(GEMMA_STATES)], mask)
    elif name == "gemma":
        out = model(mx.array(rng.integers(4, 60, (1, 9)).astype(np.int32)))
    elif name == "video_encoder":
        out = model(r(1, 9, 32, 32, 3, scale=0.5))
    elif name == "video_decoder":
        out = model(r(1, 2, 1, 1, 8))
    elif name == "audio_encoder":
        out = model(r(1, 2, 17, 64, scale=2, shift=-4))
    elif name == "audio_decoder":
        out = model(r(1, 2, 5, 16))
    elif name == "vocoder":
        out = model(r(1, 2, 6, 64, shift=-2))
    elif "upsampler" in name:
        out = model(r(1, 3, 4, 6, 8))
    else:
        raise ValueError(name)
    out = [o for o in (out if isinstance(out, (list, tuple)) else [out]) if o is not None]
    mx.eval(out)
    return out


# ---------------------------------------------------------------------------------------------- convert.py CLI


def run_cli(*args) -> tuple[int, str]:
    """(exit code, stderr) of `convert.py args` run in-process."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args] + ["--quiet"])
    return rc, err.getvalue()


def assert_clean_failure(rc, err, out: Path, *phrases):
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("convert.py: error: ") and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial")]
