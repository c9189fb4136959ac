"""Shared pieces of the pipeline parity tests: sizes, tolerance, injected noise, random text contexts, and the
fixtures (tiny dev pipeline + reference transformer; the reference's audio-shape patch)."""

from dataclasses import replace

import mlx.core as mx
import pytest
import torch
from ltx_core.model.transformer import LTXModelConfigurator, X0Model as RefX0Model
from ltx_core.model.transformer import timestep_embedding
from ltx_core.types import AudioLatentShape

import ltx_mlx
from convert_fixtures import official_tensors
from dit_reference import pinned_timestep_embedding
from ltx_mlx.text_encoder import TextContext
from pipeline_fixtures import AUDIO_TOKEN_WIDTH, VIDEO_LATENT_CHANNELS, convert_folder, write_pipeline_checkpoints

TOL = 5e-6  # measured <= 1.8e-6 x max|ref| over the distilled, guided, hq, a2v and retake stages
H, W, FRAMES, FPS = 64, 128, 17, 24.0
CONTEXT_TOKENS = 16


@pytest.fixture(autouse=True)
def _reference_setup(monkeypatch):
    monkeypatch.setattr(timestep_embedding, "get_timestep_embedding", pinned_timestep_embedding)
    # The reference hard-wires the real audio latent (8 channels x 16 bins); ours reads the tiny audio VAE's.
    original = AudioLatentShape.from_video_pixel_shape
    monkeypatch.setattr(AudioLatentShape, "from_video_pixel_shape",
                        staticmethod(lambda shape, **kw: original(shape, channels=2, mel_bins=16)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parity")
    _, dev, gemma, upsampler, lora = write_pipeline_checkpoints(tmp)
    pipe = ltx_mlx.load(convert_folder(dev, tmp / "dev-mlx", gemma, upsampler, lora))
    tensors, config = official_tensors("2.3", 30, in_channels=VIDEO_LATENT_CHANNELS,
                                       out_channels=VIDEO_LATENT_CHANNELS, audio_in_channels=AUDIO_TOKEN_WIDTH,
                                       audio_out_channels=AUDIO_TOKEN_WIDTH)
    ref = LTXModelConfigurator.from_config({"transformer": config["transformer"]}).to_empty(device="cpu")
    prefix = "model.diffusion_model."
    state = {k[len(prefix):]: v for k, v in tensors.items()
             if k.startswith(prefix) and "embeddings_connector" not in k}
    ref.load_state_dict(state, strict=True)
    return pipe, RefX0Model(ref.eval()), config["transformer"]


def contexts(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, CONTEXT_TOKENS, cfg["cross_attention_dim"], generator=g)
    a = torch.randn(1, CONTEXT_TOKENS, cfg["audio_cross_attention_dim"], generator=g)
    return (v, a), TextContext(mx.array(v.numpy()), mx.array(a.numpy()), mx.ones((1, CONTEXT_TOKENS)))


class InjectedNoiser:
    """The reference noiser's blend with given noise instead of its generator's draws."""

    def __init__(self, noises):
        self.noises = list(noises)

    def __call__(self, latent_state, noise_scale=1.0):
        noise = self.noises.pop(0)
        mask = latent_state.denoise_mask * noise_scale
        return replace(latent_state, latent=(noise * mask + latent_state.latent * (1 - mask)).to(torch.float32))


def stage_noise(seed, video_tokens, audio_tokens):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, video_tokens, VIDEO_LATENT_CHANNELS, generator=g),
            torch.randn(1, audio_tokens, AUDIO_TOKEN_WIDTH, generator=g))


def as_noise(v, a):
    return {"video": mx.array(v.numpy()), "audio": mx.array(a.numpy())}
