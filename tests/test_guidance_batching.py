"""A guided step's passes batched into one forward (`transformer_fn(batch=True)`) equal the separate passes within
float32 rounding: CFG (another prompt, of another length), STG, modality isolation and a step where one guider skips
(the passes with equal enabled modalities share a forward); and through a whole guided run on a tiny dev
checkpoint."""

from dataclasses import replace

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

import ltx_mlx
from dit_reference import tiny_config
from ltx_mlx.conditioning import AudioLatentTools, VideoLatentTools
from ltx_mlx.diffusion import MultiModalGuider, MultiModalGuiderParams, guidance_passes
from ltx_mlx.models import transformer
from ltx_mlx.models.transformer import LTXModel, TransformerConfig, X0Model
from ltx_mlx.pipelines import common
from ltx_mlx.pipelines.common import transformer_fn
from ltx_mlx.text_encoder import TextContext
from pipeline_fixtures import convert_folder, write_pipeline_checkpoints


@pytest.fixture(scope="module")
def dev_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batching")
    _, dev, gemma, upsampler, lora = write_pipeline_checkpoints(tmp)
    return convert_folder(dev, tmp / "dev-mlx", gemma, upsampler, lora)


def test_batched_guidance_equals_separate_passes(dev_folder, monkeypatch):
    real_denoise, real_forward = common.Generation.denoise, transformer.X0Model.__call__
    latents, batches = {}, {}

    def denoise(self, *args, **kwargs):
        out = real_denoise(self, *args, **kwargs)
        latents[self.batch_guidance] = [np.array(x) for x in out]
        return out

    def forward(self, video, audio, perturbations=None):
        batches.setdefault(current, []).append(video.latent.shape[0])
        return real_forward(self, video, audio, perturbations)

    monkeypatch.setattr(common.Generation, "denoise", denoise)
    monkeypatch.setattr(transformer.X0Model, "__call__", forward)
    for current in (False, True):
        ltx_mlx.load(dev_folder).generate("a cat walks on the beach at sunset", pipeline="one-stage", height=64,
                                          width=64, num_frames=9, seed=4, num_inference_steps=4, progress=False,
                                          video_guidance={"stg_blocks": [1]}, audio_guidance={"stg_blocks": [1]},
                                          batch_guidance=current)
    assert set(batches[False]) == {1} and set(batches[True]) == {4}  # CFG + STG + modality: 4 passes a step
    assert len(batches[False]) == 4 * len(batches[True])
    for ref, got in zip(latents[False], latents[True]):
        scale = np.abs(ref).max()
        assert scale > 0 and np.abs(got - ref).max() <= 1e-5 * scale


def test_batch_guidance_must_be_a_bool(dev_folder):
    with pytest.raises(TypeError, match="batch_guidance must be True or False"):
        ltx_mlx.load(dev_folder).generate("x", pipeline="one-stage", batch_guidance="yes")


TOL = 1e-5  # × max|separate|


class Counting:
    """The model, recording the batch size of every forward."""

    def __init__(self, model):
        self.model, self.batches = model, []

    def __call__(self, video, audio, perturbations):
        self.batches.append(video.latent.shape[0])
        return self.model(video, audio, perturbations)


def tiny_model(seed=0) -> X0Model:
    cfg = TransformerConfig.from_dict(tiny_config("2.3"))
    model = LTXModel(cfg)
    keys = mx.random.split(mx.random.key(seed), len(tree_flatten(model.parameters())))
    model.update(tree_unflatten([(k, 0.3 * mx.random.normal(v.shape, key=key))
                                 for (k, v), key in zip(tree_flatten(model.parameters()), keys)]))
    mx.eval(model.parameters())
    return X0Model(model)


def states(cfg):
    rng = np.random.default_rng(1)
    vt = VideoLatentTools.from_pixel_shape(1, 17, 96, 128, 24.0, channels=cfg["in_channels"], scale_factors=(8, 32, 32))
    video = vt.create_initial_state()
    T = video.latent.shape[1]
    mask = rng.random((1, T, 1)).astype(np.float32)
    mask[:, :vt.token_count // 3] = 0.0  # a clean conditioning frame
    video = replace(video, latent=mx.array(rng.standard_normal(video.latent.shape).astype(np.float32)),
                    denoise_mask=mx.array(mask))
    audio = AudioLatentTools(1, 2, 7, cfg["audio_in_channels"] // 2, 16000, 160, 4).create_initial_state()
    audio = replace(audio, latent=mx.array(rng.standard_normal(audio.latent.shape).astype(np.float32)))
    return video, audio


def context(cfg, S, seed) -> TextContext:
    rng = np.random.default_rng(seed)
    v = mx.array(rng.standard_normal((1, S, cfg["cross_attention_dim"])).astype(np.float32))
    a = mx.array(rng.standard_normal((1, S, cfg["audio_cross_attention_dim"])).astype(np.float32))
    return TextContext(v, a, mx.ones((1, S), dtype=mx.int32))


def worst(batched, separate) -> float:
    err = 0.0
    for b, s in zip(batched, separate):
        for x, y in zip(b, s):
            assert x.shape == y.shape
            err = max(err, float(mx.abs(x - y).max()) / float(mx.abs(y).max()))
    return err


GUIDED = MultiModalGuiderParams(cfg_scale=3.0, stg_scale=1.0, stg_blocks=[1], modality_scale=3.0, rescale_scale=0.7)


@pytest.mark.parametrize("negative_length", [6, 9], ids=["equal-length", "padded"])
def test_batched_passes_equal_separate_passes(negative_length):
    cfg = tiny_config("2.3")
    model = Counting(tiny_model())
    video, audio = states(cfg)
    positive, negative = context(cfg, 6, 2), context(cfg, negative_length, 3)
    skipping = replace(GUIDED, skip_step=1, stg_blocks=[0, 2])  # skips odd steps: audio off in 3 of the 4 passes
    for video_guider, audio_guider, step, batches in ((GUIDED, GUIDED, 0, [4]), (GUIDED, skipping, 1, [3, 1])):
        passes = guidance_passes(MultiModalGuider(video_guider), MultiModalGuider(audio_guider), step)
        assert len(passes) == 4
        separate = transformer_fn(model, positive, negative, batch=False)(video, audio, 0.7, passes)
        model.batches.clear()
        batched = transformer_fn(model, positive, negative, batch=True)(video, audio, 0.7, passes)
        assert model.batches == batches
        err = worst(batched, separate)
        print(f"step {step}, negative of {negative_length} tokens, forwards of {batches}: "
              f"max|batched - separate| = {err:.2e} x max|separate|")
        assert err <= TOL
        cond = separate[0]
        for other in separate[1:]:  # every pass really differs from the conditional one (the test is not blind)
            assert max(float(mx.abs(o - c).max()) for o, c in zip(other, cond)) > 1e-2
